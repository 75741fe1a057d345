"""Locating external test tools and shared data; a missing tool skips locally and fails in CI."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
VENV_BIN = Path(sys.executable).parent


def in_ci() -> bool:
    """True when running under CI, where every tool must be present."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(what: str) -> None:
    """Skip the calling test on a laptop, fail it in CI."""
    if in_ci():
        pytest.fail(f"{what} is required when CI=true")
    pytest.skip(f"{what} is not available")


def require_tool(name: str) -> str:
    """Path of an executable from the venv, node_modules/.bin or PATH; skip or fail if absent."""
    candidates = [
        VENV_BIN / name,
        # checkov pins older packaging than Pulumi accepts, so it has a venv of its own.
        REPO_ROOT / "venv-checkov" / "bin" / name,
        REPO_ROOT / "node_modules" / ".bin" / name,
    ]
    extra = os.environ.get("GITOPS_TOOLS_BIN")
    if extra:
        candidates.insert(0, Path(extra) / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    missing(f"the `{name}` tool")
    raise AssertionError("unreachable")


def readme_blocks(section: str | None = None) -> list[str]:
    """The README's ```bash blocks, all of them or those under the ``## section`` heading."""
    text = (REPO_ROOT / "README.md").read_text()
    if section is not None:
        text = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def bump_chart(chart_file: Path, tag: str, digest: str, commit: str, expect_success: bool = True) -> str:
    """Write a build into a Chart.yaml with the app pipeline's own release lines, run by sh; their stderr."""
    import subprocess

    from components.pipeline import chart_helpers, release_lines

    script = "\n".join([*chart_helpers(), *release_lines()]) + "\n"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CHART": str(chart_file),
        "WORK_DIR": str(chart_file.parent),
        "IMAGE_TAG": tag,
        "IMAGE_DIGEST": digest,
        "CI_COMMIT_SHA": commit,
        "CHART_FILE": chart_file.name,
    }
    result = subprocess.run(["sh", "-e", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode == 0) == expect_success, f"the release lines on {chart_file}: {result.stderr}"
    return result.stderr


@contextlib.contextmanager
def loopback_api(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a free loopback port for the duration; yields its ``/api/v4`` base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v4"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
