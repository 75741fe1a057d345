"""Shared fixtures: the demo stack's config and runs of the real program under mocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import REPO_ROOT, SHARED

PROJECT = "gitops-bootstrap"
# Test secrets shaped like the real ones.
TEST_DOCKERHUB_TOKEN = "dckr_pat_Zq3xT9vLmN2pR8sKw4YbJ7hGfD1"
ARGO_CD = SHARED / "upstream" / "argo-cd"


def shared_manifest(version: str, ha: bool = False) -> Path | None:
    """The team's mirror of an upstream manifest, or None where ../shared is absent."""
    path = ARGO_CD / version / ("ha/install.yaml" if ha else "install.yaml")
    return path if path.is_file() else None


def stack_config(stack: str) -> dict[str, str]:
    """A stack file's project config as the engine hands it to the program: strings, lists as JSON."""
    doc = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())
    config: dict[str, str] = {}
    for key, value in (doc.get("config") or {}).items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, dict)):
            text = json.dumps(value)
        else:
            text = str(value)
        config[key.removeprefix(f"{PROJECT}:")] = text
    return config


@dataclass
class Run:
    """What one program run registered."""

    report: dict[str, Any]

    @property
    def error(self) -> dict[str, Any] | None:
        return self.report["error"]

    @property
    def resources(self) -> list[dict[str, Any]]:
        return self.report["resources"]

    @property
    def outputs(self) -> dict[str, Any]:
        return self.report["outputs"]

    def of_type(self, suffix: str) -> list[dict[str, Any]]:
        """Resources whose type token ends with ``suffix``."""
        return [r for r in self.resources if r["type"].endswith(suffix)]

    def named(self, name: str, type_suffix: str = "") -> dict[str, Any]:
        """The one resource with this logical name (and type suffix)."""
        found = [r for r in self.resources if r["name"] == name and r["type"].endswith(type_suffix)]
        assert len(found) == 1, f"expected one resource named {name!r}, found {len(found)}"
        return found[0]

    def by_urn(self) -> dict[str, dict[str, Any]]:
        return {r["urn"]: r for r in self.resources}

    def children(self, parent_urn: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["parent"] == parent_urn]


def base_config(stack: str = "dev") -> dict[str, str]:
    """The stack's committed config plus test secrets and the shared manifest mirror."""
    config = stack_config(stack)
    config["dockerhubToken"] = TEST_DOCKERHUB_TOKEN
    version = config.get("argocdVersion", "v3.5.1")
    mirror = shared_manifest(version, config.get("argocdHa") == "true")
    if mirror is not None and "argocdManifest" not in config:
        config["argocdManifest"] = str(mirror)
    return config


def run_program(
    overrides: dict[str, str | None] | None = None,
    stack: str = "dev",
    preview: bool = False,
) -> Run:
    """Run ``__main__.py`` under mocks in a fresh process with the stack's config and overrides.

    An override of None removes the key. Where ``argocdVersion`` or ``argocdHa`` is
    overridden, the mirror follows unless ``argocdManifest`` is overridden too.
    """
    overrides = dict(overrides or {})
    config = base_config(stack)
    if ("argocdVersion" in overrides or "argocdHa" in overrides) and "argocdManifest" not in overrides:
        version = overrides.get("argocdVersion") or config.get("argocdVersion", "v3.5.1")
        ha = (overrides.get("argocdHa") or config.get("argocdHa")) == "true"
        mirror = shared_manifest(version, ha)
        overrides["argocdManifest"] = str(mirror) if mirror else None
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    job = {"config": config, "secret_keys": ["dockerhubToken"], "stack": stack, "preview": preview}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        env = dict(os.environ)
        env.setdefault("GITOPS_BOOTSTRAP_CACHE", str(Path(tmp) / "cache"))
        proc = subprocess.run(
            [sys.executable, "-m", "tests.mockrun", str(out)],
            input=json.dumps(job),
            text=True,
            capture_output=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        report = json.loads(out.read_text())
    report["stderr"] = proc.stderr
    return Run(report)


_CACHE: dict[str, Run] = {}


@pytest.fixture(scope="session")
def program() -> Iterator[Callable[..., Run]]:
    """Run the program with overrides; identical runs are shared across tests."""

    def runner(overrides: dict[str, str | None] | None = None, stack: str = "dev", preview: bool = False) -> Run:
        key = json.dumps([overrides, stack, preview], sort_keys=True)
        if key not in _CACHE:
            _CACHE[key] = run_program(overrides, stack, preview)
        return _CACHE[key]

    yield runner


@pytest.fixture(scope="session")
def dev(program: Callable[..., Run]) -> Run:
    """The demo stack, run once."""
    run = program()
    assert run.error is None, run.error and run.error["traceback"]
    return run
