"""The code base stays ruff- and mypy-clean."""

from __future__ import annotations

import subprocess

from tests.tools import REPO_ROOT, require_tool


def test_ruff_is_clean() -> None:
    ruff = require_tool("ruff")
    proc = subprocess.run([ruff, "check", "--output-format", "concise", "."], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean() -> None:
    mypy = require_tool("mypy")
    proc = subprocess.run([mypy, "__main__.py", "components", "tests"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
