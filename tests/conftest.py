"""Shared fixtures: the demo stack's config and runs of the real program under mocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.tools import REPO_ROOT, SHARED

PROJECT = "gitops-bootstrap"
# Test secrets shaped like the real ones.
TEST_DOCKERHUB_TOKEN = "dckr_pat_Zq3xT9vLmN2pR8sKw4YbJ7hGfD1"
# What the README's set-up commands add to a stack: the user's Docker Hub name and token.
TEST_DOCKERHUB_USER = "gitopsdemo"
# The contexts in the kubeconfig the test runs see: the ones the committed stacks pin.
TEST_KUBE_CONTEXTS = ("kind-gitops", "prod-cluster", "kind-platform")
ARGO_CD = SHARED / "upstream" / "argo-cd"
# The team's mirror of the pinned Argo Rollouts manifest; without it the program downloads the
# pinned URL and checks the same sha256.
ARGO_ROLLOUTS_MANIFEST = SHARED / "upstream" / "argo-rollouts" / "v1.9.1" / "install.yaml"


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


# What a manifest project's component names its children after: `<project path slug>-<role>`.
REPO_ROLES = (
    "manifest-project",
    "argocd-deploy-key",
    "argocd-repo-key",
    "manifest-default-branch",
    "deploy-status-token",
    "argocd-webhook",
)


def short_name(name: str) -> str:
    """A logical name without its manifest project's prefix (``gitops-demo-chart-argocd-deploy-key`` → ``argocd-deploy-key``)."""
    return next((role for role in REPO_ROLES if name.endswith(f"-{role}")), name)


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
        """The one resource with this logical name (and type suffix).

        A manifest project's resources are named after its path (``gitops-demo-chart-argocd-deploy-key``);
        where no resource has the exact name, the one whose name ends in ``-<name>`` is taken.
        """
        typed = [r for r in self.resources if r["type"].endswith(type_suffix)]
        found = [r for r in typed if r["name"] == name] or [r for r in typed if r["name"].endswith(f"-{name}")]
        assert len(found) == 1, f"expected one resource named {name!r}, found {len(found)}"
        return found[0]

    def role(self, name: str) -> str:
        """The logical name of the one resource ``named(name)`` finds."""
        return str(self.named(name)["name"])

    def by_urn(self) -> dict[str, dict[str, Any]]:
        return {r["urn"]: r for r in self.resources}

    def children(self, parent_urn: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["parent"] == parent_urn]


def base_config(stack: str = "dev") -> dict[str, str]:
    """The stack's committed config plus what the README's set-up adds, and the shared manifest mirror."""
    config = stack_config(stack)
    config.setdefault("dockerhubUser", TEST_DOCKERHUB_USER)
    config["dockerhubToken"] = TEST_DOCKERHUB_TOKEN
    version = config.get("argocdVersion", "v3.5.1")
    mirror = shared_manifest(version, config.get("argocdHa") == "true")
    if mirror is not None and "argocdManifest" not in config:
        config["argocdManifest"] = str(mirror)
    if ARGO_ROLLOUTS_MANIFEST.is_file() and "argoRolloutsManifest" not in config:
        config["argoRolloutsManifest"] = str(ARGO_ROLLOUTS_MANIFEST)
    return config


def write_kubeconfig(path: Path, contexts: tuple[str, ...] = TEST_KUBE_CONTEXTS) -> Path:
    """A kubeconfig with one cluster and user per context, as kind or k3d write them."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": c, "cluster": {"server": f"https://127.0.0.1:{6443 + i}"}} for i, c in enumerate(contexts)],
        "users": [{"name": c, "user": {"token": "test"}} for c in contexts],
        "contexts": [{"name": c, "context": {"cluster": c, "user": c}} for c in contexts],
        "current-context": contexts[0] if contexts else "",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


# One path for every run: the provider records $KUBECONFIG among its inputs, and two runs of one
# stack must see the same one, as on a user's machine.
TEST_KUBECONFIG = write_kubeconfig(Path(tempfile.gettempdir()) / "gitops-bootstrap-tests-kubeconfig")


def run_program(
    overrides: Mapping[str, str | None] | None = None,
    stack: str = "dev",
    preview: bool = False,
    gitlab: dict[str, Any] | None = None,
    secret_keys: tuple[str, ...] = ("dockerhubToken",),
    root: str | None = None,
    previous: list[str] | None = None,
) -> Run:
    """Run ``__main__.py`` under mocks in a fresh process with the stack's config and overrides.

    An override of None removes the key. Where ``argocdVersion`` or ``argocdHa`` is
    overridden, the mirror follows unless ``argocdManifest`` is overridden too. ``gitlab``
    describes the GitLab instance the invokes see (``tests.mockrun.GitLabWorld``).
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
    job = {
        "config": config,
        "secret_keys": list(secret_keys),
        "stack": stack,
        "preview": preview,
        "gitlab": gitlab,
        "previous": previous or [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        env = dict(os.environ)
        env.setdefault("GITOPS_BOOTSTRAP_CACHE", str(Path(tmp) / "cache"))
        env["KUBECONFIG"] = str(TEST_KUBECONFIG)
        proc = subprocess.run(
            [sys.executable, "-m", "tests.mockrun", str(out)],
            input=json.dumps(job),
            text=True,
            capture_output=True,
            cwd=root or REPO_ROOT,
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

    def runner(*args: Any, **kwargs: Any) -> Run:
        """``run_program`` with the same arguments, cached per argument list."""
        key = json.dumps([args, kwargs], sort_keys=True)
        if key not in _CACHE:
            _CACHE[key] = run_program(*args, **kwargs)
        return _CACHE[key]

    yield runner


@pytest.fixture(scope="session")
def dev(program: Callable[..., Run]) -> Run:
    """The demo stack, run once."""
    run = program()
    assert run.error is None, run.error and run.error["traceback"]
    return run


@pytest.fixture(scope="session")
def api(program: Callable[..., Run]) -> Run:
    """The demo stack with merge requests opened through a project access token."""
    run = program({"mergeRequestVia": "api"})
    assert run.error is None, run.error and run.error["traceback"]
    return run


@pytest.fixture(scope="session")
def helm() -> ModuleType:
    """Helm's renderer (helm-python-sdk)."""
    from tests.test_chart import load

    return load("helm_python")


@pytest.fixture(scope="session")
def kubernetes_validate() -> ModuleType:
    """The kubernetes-validate package."""
    from tests.test_chart import load

    return load("kubernetes_validate")
