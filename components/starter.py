"""The starter web app committed into newly created app projects, and the contract it meets.

The app's files live in the repository under ``starter/app/``; they are committed as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

STARTER_APP_DIR: Path = Path(__file__).resolve().parent.parent / "starter" / "app"

STARTER_APP_PORT = 8080
STARTER_APP_UID = 10001
STARTER_APP_HEALTH_PATH = "/healthz"
"""The starter app's contract: its container port, the UID/GID its image runs as, and its
health path. The starter chart's defaults (containerPort, runAsUser/runAsGroup, probe path)
must match them, or a project's first deploy runs an app its chart cannot reach or probe."""


def starter_app_files() -> dict[str, str]:
    """Every file of the starter app, by path relative to ``starter/app`` ("/"-separated), sorted.

    Bytecode caches are left out: they are local artefacts, never part of the app.
    """
    files: dict[str, str] = {}
    for path in STARTER_APP_DIR.rglob("*"):
        relative = path.relative_to(STARTER_APP_DIR)
        if not path.is_file() or "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        files[relative.as_posix()] = path.read_text(encoding="utf-8")
    return dict(sorted(files.items()))


# The lines that carry the port, by file: (text as committed here, with {port} for the port).
_PORT_LINES: dict[str, tuple[str, ...]] = {
    "Dockerfile": ("    PORT={port}", "EXPOSE {port}", "http://127.0.0.1:{port}/"),
    "README.md": ("port **{port}**",),
}


def substitute(path: str, text: str, pattern: str, replacement: str, count: int | None = 1) -> str:
    """``text`` with each match of the regex ``pattern`` (multiline) replaced by ``replacement``.

    Raises unless there are exactly ``count`` matches (at least one for None): a starter file
    that has drifted from what the program expects must fail loudly, not be half-templated.
    """
    result, found = re.subn(pattern, lambda _: replacement, text, flags=re.MULTILINE)
    if (count is not None and found != count) or found == 0:
        raise ValueError(f"starter file {path}: expected {count or 'some'} match(es) of {pattern!r}, found {found}")
    return result


def render_starter_app(port: int = STARTER_APP_PORT) -> dict[str, str]:
    """The starter app's files for an app that listens on ``port`` (the chart's containerPort)."""
    files = starter_app_files()
    for path, patterns in _PORT_LINES.items():
        for pattern in patterns:
            old, new = pattern.format(port=STARTER_APP_PORT), pattern.format(port=port)
            files[path] = substitute(path, files[path], re.escape(old), new)
    return files
