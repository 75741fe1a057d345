"""The starter app committed into new app projects: its image lints clean, and it serves as the chart expects."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import components.starter
from components.starter import (
    STARTER_APP_DIR,
    STARTER_APP_HEALTH_PATH,
    STARTER_APP_PORT,
    STARTER_APP_UID,
    starter_app_files,
)
from tests.tools import in_ci, missing, require_tool

DOCKERFILE = STARTER_APP_DIR / "Dockerfile"
EXPECTED_FILES = {".dockerignore", "Dockerfile", "README.md", "server.py"}
DIGEST_RE = re.compile(r"@sha256:[0-9a-f]{64}$")


def instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            result.append((keyword.upper(), " ".join(args.split())))
    return result


def dockerfile_values(keyword: str) -> list[str]:
    return [args for kw, args in instructions(DOCKERFILE.read_text()) if kw == keyword]


# -- the image ------------------------------------------------------------------------------


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    hadolint = require_tool("hadolint")
    # An empty cwd, HOME and XDG_CONFIG_HOME, so no local .hadolint.yaml can ignore a rule.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}

    def lint(path: Path) -> list[dict[str, Any]]:
        proc = subprocess.run(
            [hadolint, "--no-color", "--format", "json", str(path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        findings: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
        assert proc.returncode == (1 if findings else 0), proc.stderr
        return findings

    assert lint(DOCKERFILE) == []
    # The same binary does report a bad one: untagged base, root user, shell-form CMD.
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("FROM python\nUSER root\nCMD python app.py\n")
    assert {"DL3006", "DL3002", "DL3025"} <= {f["code"] for f in lint(bad)}


def test_checkov_dockerfile_checks_pass(tmp_path: Path) -> None:
    # Imported here: the scanner tests' module pulls in the chart and pipeline test modules,
    # which the rest of this file does not need.
    from tests.test_scanners import checkov, failed_ids

    report = checkov(STARTER_APP_DIR, "dockerfile")
    assert failed_ids(report) == set()
    assert report["summary"]["passed"] >= 10
    # checkov's quiet output lists failures only; show the USER and HEALTHCHECK checks do run
    # on this Dockerfile by dropping those instructions from a copy and watching them fail.
    kept = [f"{kw} {args}\n" for kw, args in instructions(DOCKERFILE.read_text()) if kw not in {"USER", "HEALTHCHECK"}]
    (tmp_path / "Dockerfile").write_text("".join(kept))
    assert {"CKV_DOCKER_2", "CKV_DOCKER_3"} <= failed_ids(checkov(tmp_path, "dockerfile"))


def test_every_base_image_is_pinned_by_digest() -> None:
    images = [next(word for word in args.split() if not word.startswith("--")) for args in dockerfile_values("FROM")]
    assert images, "the Dockerfile has no FROM"
    for image in images:
        assert DIGEST_RE.search(image), f"{image} is not pinned by digest"


def test_the_image_meets_the_chart_contract() -> None:
    (user,) = dockerfile_values("USER")
    assert user == f"{STARTER_APP_UID}:{STARTER_APP_UID}"
    (expose,) = dockerfile_values("EXPOSE")
    assert expose == str(STARTER_APP_PORT)
    env = " ".join(dockerfile_values("ENV"))
    assert f"PORT={STARTER_APP_PORT}" in env.split()
    assert "PYTHONDONTWRITEBYTECODE=1" in env.split()
    (healthcheck,) = dockerfile_values("HEALTHCHECK")
    assert f"http://127.0.0.1:{STARTER_APP_PORT}{STARTER_APP_HEALTH_PATH}" in healthcheck
    assert dockerfile_values("ARG") == ["COMMIT_HASH=unknown"]
    assert "COMMIT_HASH=${COMMIT_HASH}" in env.split()
    # Exec form, so the server is PID 1 and gets the SIGTERM that stops the pod.
    (cmd,) = dockerfile_values("CMD")
    assert json.loads(cmd)[0] == "python"


# -- the files the program commits -------------------------------------------------------------


def test_starter_app_files_are_the_files_on_disk() -> None:
    files = starter_app_files()
    assert set(files) == EXPECTED_FILES
    assert list(files) == sorted(files)
    for name, text in files.items():
        assert text == (STARTER_APP_DIR / name).read_text(encoding="utf-8"), name


def test_starter_app_files_walks_subdirectories_and_skips_bytecode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "__pycache__" / "mod.cpython-313.pyc").write_bytes(b"\x00")
    (tmp_path / "pkg" / "mod.py").write_text("X = 1\n")
    (tmp_path / "stray.pyc").write_bytes(b"\x00")
    (tmp_path / "b.txt").write_text("b\n")
    monkeypatch.setattr(components.starter, "STARTER_APP_DIR", tmp_path)
    assert starter_app_files() == {"b.txt": "b\n", "pkg/mod.py": "X = 1\n"}


# -- the server --------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    """Status and body of a GET, 4xx and 5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (a local http URL)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(**extra: str) -> dict[str, str]:
    """A clean environment: nothing like PYTHONDONTWRITEBYTECODE or PORT leaks in from the caller."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", **extra}


@contextmanager
def serving(command: list[str], port: int, **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """Run the server until it answers its health path; on exit make sure it is gone."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, f"the server exited early: {proc.communicate()}"
            try:
                get(f"http://127.0.0.1:{port}{STARTER_APP_HEALTH_PATH}")
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start listening"
                time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, as the kubelet sends; the exit code and what the server logged."""
    proc.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("the server did not exit within 5 s of SIGTERM")
    assert stderr == "", stderr
    return proc.returncode, stdout


def test_the_server_serves_and_stops_on_sigterm() -> None:
    if not port_is_free(STARTER_APP_PORT):
        pytest.fail(f"port {STARTER_APP_PORT} is in use on this machine; the server's default port is needed")
    commit = "0123abcd4567ef89"
    server = str(STARTER_APP_DIR / "server.py")
    base = f"http://127.0.0.1:{STARTER_APP_PORT}"
    # No PORT in the environment: the default must be the chart's port.
    with serving([sys.executable, server], STARTER_APP_PORT, env=server_env(COMMIT_HASH=commit)) as proc:
        assert get(base + STARTER_APP_HEALTH_PATH) == (200, "ok\n")
        status, body = get(base + "/")
        assert status == 200
        assert "starter-app" in body and commit in body
        assert get(base + "/nope")[0] == 404
        code, log = stop(proc)
    assert code == 0
    for line in (f'"GET {STARTER_APP_HEALTH_PATH} HTTP/1.1" 200', '"GET / HTTP/1.1" 200', '"GET /nope HTTP/1.1" 404'):
        assert line in log, log


def test_commit_defaults_to_unknown() -> None:
    port = free_port()
    with serving([sys.executable, str(STARTER_APP_DIR / "server.py")], port, env=server_env(PORT=str(port))) as proc:
        status, body = get(f"http://127.0.0.1:{port}/")
        code, _ = stop(proc)
    assert (status, code) == (200, 0)
    assert "commit unknown" in body


def interpreter_for(uid: int) -> str | None:
    """A Python that ``uid`` may run (a pyenv build under a private /root is not one)."""
    candidates = [os.path.realpath(sys.executable), shutil.which("python3"), "/usr/bin/python3"]
    for candidate in dict.fromkeys(c for c in candidates if c):
        try:
            probe = subprocess.run(
                [candidate, "-c", "pass"], user=uid, group=uid, extra_groups=[], capture_output=True, check=False
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    return None


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every entry under ``root``: its mode and, for files, a hash of its bytes."""
    entries = {}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        entries[path.relative_to(root).as_posix()] = (path.stat().st_mode, digest)
    return entries


def proc_ids(pid: int) -> tuple[set[int], set[int]]:
    """The real, effective, saved and filesystem UIDs and GIDs of a running process."""
    status = Path(f"/proc/{pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
    gids = re.search(r"^Gid:\s+(.*)$", status, re.M)
    assert uids and gids
    return {int(x) for x in uids.group(1).split()}, {int(x) for x in gids.group(1).split()}


def test_the_server_runs_as_the_chart_user_from_a_read_only_directory() -> None:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail(f"CI must run the tests as root to switch to UID {STARTER_APP_UID}")
        pytest.skip(f"switching to UID {STARTER_APP_UID} needs root")
    python = interpreter_for(STARTER_APP_UID)
    if python is None:
        missing(f"a Python interpreter that UID {STARTER_APP_UID} can run")
        return
    port = free_port()
    # Not pytest's tmp_path: its parents are private to root, and the app's user must reach the copy.
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        app = root / "app"
        shutil.copytree(STARTER_APP_DIR, app)
        for path in [app, *app.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        root.chmod(0o555)
        before = snapshot(app)
        try:
            with serving(
                [python, "server.py"],
                port,
                cwd=app,
                env=server_env(PORT=str(port), COMMIT_HASH="ro"),
                user=STARTER_APP_UID,
                group=STARTER_APP_UID,
                extra_groups=[],
            ) as proc:
                assert proc_ids(proc.pid) == ({STARTER_APP_UID}, {STARTER_APP_UID})
                assert get(f"http://127.0.0.1:{port}{STARTER_APP_HEALTH_PATH}") == (200, "ok\n")
                assert "commit ro" in get(f"http://127.0.0.1:{port}/")[1]
                code, _ = stop(proc)
            assert code == 0
            assert snapshot(app) == before
        finally:
            root.chmod(0o700)
