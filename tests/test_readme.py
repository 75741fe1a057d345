"""The README's commands: they parse as bash, and CI runs its test lines verbatim."""

from __future__ import annotations

import subprocess

import pytest

from tests.tools import REPO_ROOT, readme_blocks, require_tool

BLOCKS = readme_blocks()


def test_the_readme_has_its_command_blocks() -> None:
    # Set-up, run, the tests' system tools and test command, and the operational examples.
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_every_command_block_parses_in_bash(block: str) -> None:
    bash = require_tool("bash")
    result = subprocess.run([bash, "-n"], input=block, text=True, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr


def test_bash_n_catches_the_old_placeholder() -> None:
    # The set-up line once held `<your-docker-hub-user>`, which bash reads as a redirection.
    bash = require_tool("bash")
    old = "pulumi config set dockerhubUser <your-docker-hub-user> && pulumi up\n"
    result = subprocess.run([bash, "-n"], input=old, text=True, capture_output=True, check=False)
    assert result.returncode != 0


def test_ci_runs_the_readme_test_lines_verbatim_and_in_order() -> None:
    apt, tests = readme_blocks("Tests")
    assert "\n" not in apt and "\n" not in tests
    assert apt.startswith("apt-get update && apt-get install")
    for tool in ("git", "openssh-server", "curl", "rsync", "nodejs"):
        assert f" {tool}" in apt
    assert "python3 -m venv venv" in tests and "npm ci" in tests and "pytest" in tests
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert apt in ci and tests in ci
    assert ci.index(apt) < ci.index(tests) == len(ci) - 1


def test_the_set_up_exports_the_local_backends_passphrase() -> None:
    first = readme_blocks("Set up and run")[0]
    assert "export PULUMI_CONFIG_PASSPHRASE" in first and "pulumi login --local" in first
    assert first.index("PULUMI_CONFIG_PASSPHRASE") < first.index("pulumi stack select --create")
