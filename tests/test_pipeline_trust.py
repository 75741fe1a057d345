"""The deploy job's trust boundary: what a build or a runner's leftovers can make `update-manifest` do.

`build-image` runs the app's Dockerfile, so everything it can write is hostile input to
`update-manifest`, which holds the deploy key and, in `api` mode, the API token. These tests run
the real job scripts (the loopback sshd, the merge request API stand-in and real git histories
of `tests/test_pipeline.py`) with a build that writes hostile lines into every file it can reach,
and with app histories rewritten under the job.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.chart import COMMIT_ANNOTATION, DIGEST_ANNOTATION
from components.pipeline import (
    DIGEST_FILE,
    JOB_BUILD,
    JOB_UPDATE_MANIFEST,
    MERGE_REQUEST_VIA,
    ancestry_helpers,
    pipeline_document,
)
from tests.test_pipeline import (
    API,
    DEPLOY_BRANCH,
    PUSH_OPTIONS,
    AppRepo,
    FakeMergeRequestApi,
    assert_proposes,
    bot_branches,
    expected_push_options,
    fake_digest,
    git,
    make_app,
    make_spec,
    mr_api,
    pushes_logged,
    record_push_options,
    refs,
    runner_factory,
    seed_manifest,
    ssh_server,
    starter_chart,
)
from tests.tools import loopback_api

# Fixtures shared with tests/test_pipeline.py.
__all__ = ["mr_api", "runner_factory", "ssh_server"]

CREDENTIAL_VARIABLES = ("SSH_PRIVATE_KEY", "GITLAB_PRIVATE_TOKEN")


# --------------------------------------------------------------------------- the document


def credential_jobs(document: dict[str, Any]) -> list[str]:
    """Jobs that receive a deploy credential: those declaring the environment the credentials are scoped to."""
    return [name for name, job in document.items() if isinstance(job, dict) and "environment" in job]


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
def test_no_job_holding_a_deploy_credential_takes_a_dotenv_report(mode: str) -> None:
    document = pipeline_document(make_spec(merge_request_via=mode, build_runner_tags=("buildkit",)))
    jobs = credential_jobs(document)
    assert jobs == [JOB_UPDATE_MANIFEST]
    for name in jobs:
        job = document[name]
        for need in job.get("needs", []):
            needed = document[need["job"]]
            assert "reports" not in (needed.get("artifacts") or {}), f"{need['job']} hands {name} a report"
        # No checkout of the runner's, no cache.
        assert job["variables"].get("GIT_STRATEGY") == "none"
        assert "cache" not in job
    assert not any("cache" in job for job in document.values() if isinstance(job, dict))


def pipelines_of(run: Any) -> list[dict[str, Any]]:
    """Every pipeline file the program commits, parsed."""
    files = [r for r in run.of_type("RepositoryFile") if str(r["inputs"].get("filePath", "")).endswith(".gitlab-ci.yml")]
    assert files, "no pipeline file registered"
    return [yaml.safe_load(f["inputs"]["content"]) for f in files]


@pytest.mark.parametrize(
    ("stack", "overrides"),
    [
        ("dev", {}),
        ("dev", {"mergeRequestVia": "api", "buildRunnerTags": '["buildkit"]'}),
        ("prod", {}),
        ("teams", {}),
    ],
)
def test_every_shipped_stack_hands_no_report_to_the_deploy_job(
    program: Callable[..., Any], stack: str, overrides: dict[str, str]
) -> None:
    run = program(overrides, stack=stack)
    assert run.error is None, run.error
    for document in pipelines_of(run):
        assert credential_jobs(document) == [JOB_UPDATE_MANIFEST]
        for job in document.values():
            if isinstance(job, dict):
                assert "reports" not in (job.get("artifacts") or {})
        assert document[JOB_UPDATE_MANIFEST]["variables"]["GIT_STRATEGY"] == "none"


# --------------------------------------------------------------------------- the ancestry check


def history_with_a_rewrite(root: Path) -> tuple[AppRepo, dict[str, str]]:
    """An app repository whose main was rewritten: base → gone (tagged, then force-pushed away) → after.

    Also a merge of two side branches (left, right) on top, neither an ancestor of the other.
    """
    app = make_app(root)
    commits = {"base": app.commit("base"), "gone": app.commit("gone")}
    git("tag", "v-gone", cwd=app.path)
    git("reset", "-q", "--hard", commits["base"], cwd=app.path)
    commits["after"] = app.commit("after")
    git("checkout", "-q", "-b", "left", cwd=app.path)
    commits["left"] = app.commit("left")
    who = ("-c", "user.name=Dev", "-c", "user.email=dev@example.invalid")
    git("checkout", "-q", "-b", "right", commits["after"], cwd=app.path)
    (app.path / "right.txt").write_text("right\n")
    git("add", "right.txt", cwd=app.path)
    git(*who, "commit", "-q", "-m", "right", cwd=app.path)
    commits["right"] = git("rev-parse", "HEAD", cwd=app.path).strip()
    git("checkout", "-q", "main", cwd=app.path)
    git(*who, "merge", "-q", "--no-ff", "-m", "merge", "left", "right", cwd=app.path)
    commits["merge"] = git("rev-parse", "HEAD", cwd=app.path).strip()
    return app, commits


def newer_than(app_git: Path, recorded: str, this: str) -> subprocess.CompletedProcess[str]:
    """Run the job's own `newer_than` on ``app_git`` (its default branch is main)."""
    head = git("--git-dir", str(app_git), "rev-parse", "refs/heads/main").strip()
    call = 'if newer_than "$1" main; then echo "returned 0"; else echo "returned 1"; fi'
    script = "\n".join([*ancestry_helpers(), call]) + "\n"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "APP_GIT": str(app_git),
        "APP_HEAD": head,
        "CI_COMMIT_SHA": this,
        "DEPLOY_BRANCH": DEPLOY_BRANCH,
        "MANIFEST_DEFAULT_BRANCH": "main",
        "CHART_FILE": "Chart.yaml",
    }
    return subprocess.run(
        ["sh", "-e", "-c", script, "sh", recorded], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_ancestry_check_decides_three_ways_on_real_histories(tmp_path: Path) -> None:
    app, c = history_with_a_rewrite(tmp_path)
    # The app's own repository as the job sees it, tags and all: `gone` is still in its object store.
    app_git = app.path / ".git"
    assert git("--git-dir", str(app_git), "cat-file", "-t", c["gone"]).strip() == "commit"

    older = newer_than(app_git, c["base"], c["merge"])
    assert (older.returncode, older.stdout.strip()) == (0, "returned 0")
    same = newer_than(app_git, c["merge"], c["merge"])
    assert same.returncode == 0 and same.stdout.splitlines() == [f"main already carries {c['merge']}", "returned 1"]
    newer = newer_than(app_git, c["merge"], c["after"])
    assert newer.returncode == 0 and newer.stdout.splitlines()[-1] == "returned 1"
    assert f"carries app commit {c['merge']}, which is newer than {c['after']}: leaving it alone" in newer.stdout
    # Unrelated: the job stops and says what to do, instead of proposing nothing for ever.
    for recorded, this, says in (
        (c["gone"], c["merge"], "which is not in the default branch history"),
        ("0123456789abcdef0123456789abcdef01234567", c["merge"], "which is not in the default branch history"),
        (c["left"], c["right"], f"which is neither older nor newer than {c['right']}"),
    ):
        stopped = newer_than(app_git, recorded, this)
        assert stopped.returncode == 1 and "returned" not in stopped.stdout, (recorded, stopped.stdout)
        assert says in stopped.stderr and "re-run this job" in stopped.stderr


def chart_carrying(commit: str) -> str:
    chart = starter_chart(f"main-{commit[:8]}")["Chart.yaml"]
    chart = chart.replace(f'{DIGEST_ANNOTATION}: ""', f'{DIGEST_ANNOTATION}: "{fake_digest(commit)}"')
    return chart.replace(f'{COMMIT_ANNOTATION}: ""', f'{COMMIT_ANNOTATION}: "{commit}"')


def test_a_deployed_commit_rewritten_away_but_still_tagged_stops_the_job(
    tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi
) -> None:
    app, c = history_with_a_rewrite(tmp_path)
    manifest = seed_manifest(tmp_path, chart_carrying(c["gone"]))
    # The runner's checkout fetched the tag as well, as a reused fetch checkout would have.
    runner = runner_factory(manifest, app, c["merge"])
    git("fetch", "-q", "--tags", "origin", cwd=runner.project_dir)
    run = runner.deliver()
    assert run.returncode == 1
    assert f"main carries app commit {c['gone']}, which is not in the default branch history" in run.stderr
    assert bot_branches(manifest) == set() and mr_api.requests == []


def rewrite(app: AppRepo, base: str) -> str:
    """Force-push main back to ``base`` and one new commit on top, as a history rewrite does; the new commit."""
    git("reset", "-q", "--hard", base, cwd=app.path)
    return app.commit("after")


def test_a_proposal_from_rewritten_history_stops_the_job(
    tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi
) -> None:
    app = make_app(tmp_path)
    base = app.commit("base")
    gone = app.commit("gone")
    manifest = seed_manifest(tmp_path)
    assert runner_factory(manifest, app, gone).deliver().returncode == 0
    proposed = refs(manifest.bare)
    # main is force-pushed without `gone`; the next pipeline finds the deploy branch proposing it.
    run = runner_factory(manifest, app, rewrite(app, base)).deliver()
    assert run.returncode == 1
    assert f"{DEPLOY_BRANCH} carries app commit {gone}, which is not in the default branch history" in run.stderr
    assert f"on {DEPLOY_BRANCH}, delete the branch" in run.stderr
    assert refs(manifest.bare) == proposed


def test_a_pipeline_whose_commit_was_rewritten_away_proposes_nothing(
    tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi
) -> None:
    app = make_app(tmp_path)
    base = app.commit("base")
    gone = app.commit("gone")
    manifest = seed_manifest(tmp_path)
    # The pipeline for `gone` starts; main is force-pushed without it before its deploy job runs.
    runner = runner_factory(manifest, app, gone)
    rewrite(app, base)
    run = runner.deliver()
    assert run.returncode == 1
    assert f"{gone} is no longer on main" in run.stderr
    assert bot_branches(manifest) == set() and mr_api.requests == []


# --------------------------------------------------------------------------- a hostile build


@dataclass
class Recorder:
    """A loopback HTTP server that records every request: where a hijacked job would send its token."""

    base_url: str = ""
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def evil_api() -> Iterator[Recorder]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _record(self) -> None:
            recorder.requests.append((self.command, self.path, dict(self.headers.items())))
            self.send_response(201)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = do_PUT = _record  # noqa: N815 (http.server's handler names)

    with loopback_api(Handler) as base_url:
        recorder.base_url = base_url
        yield recorder


def hostile_lines(evil_url: str, marker: Path, evil_repo: Path) -> list[str]:
    """Variable lines that would take over the deploy job if any of them became one of its variables."""
    return [
        "GIT_CONFIG_COUNT=2",
        "GIT_CONFIG_KEY_0=core.hooksPath",
        f"GIT_CONFIG_VALUE_0={marker.parent / 'hooks'}",
        "GIT_CONFIG_KEY_1=core.sshCommand",
        f"GIT_CONFIG_VALUE_1=sh -c 'touch {marker}; exec ssh \"$@\"' ssh",
        f"GIT_SSH_COMMAND=sh -c 'touch {marker}; exec ssh \"$@\"' ssh",
        f"LD_PRELOAD={marker.parent / 'evil.so'}",
        f"CI_API_V4_URL={evil_url}",
        f"MANIFEST_SSH_URL=file://{evil_repo}",
        f"CI_REPOSITORY_URL=file://{evil_repo}",
        "IMAGE_TAG=evil",
        f"IMAGE_DIGEST=sha256:{'e' * 64}",
        "SSH_PRIVATE_KEY=/dev/null",
    ]


def poison_checkout(project: Path, marker: Path) -> None:
    """What a build step can leave in the runner's working copy: git config and hooks that run code."""
    hooks = marker.parent / "hooks"
    hooks.mkdir(exist_ok=True)
    for hook in ("post-checkout", "pre-push", "reference-transaction", "fsmonitor-watchman"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / hook).chmod(0o755)
        (project / ".git" / "hooks" / hook).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (project / ".git" / "hooks" / hook).chmod(0o755)
    run_marker = f"sh -c 'touch {marker}; exec git-upload-pack \"$@\"' git-upload-pack"
    for key, value in (
        ("core.hooksPath", str(hooks)),
        ("core.fsmonitor", f"touch {marker}"),
        ("core.sshCommand", f"touch {marker}; ssh"),
        ("remote.origin.uploadpack", run_marker),
        ("credential.helper", f"!touch {marker}"),
    ):
        git("config", key, value, cwd=project)
    # A shallow marker that makes every older commit look unrelated.
    (project / ".git" / "shallow").write_text(git("rev-parse", "HEAD", cwd=project))


@dataclass
class Tamper:
    """One thing a build step left running writes once the build job has ended."""

    name: str
    digest_file: Callable[[Path, str, list[str]], None] | None
    # What the deploy job must say; None: it must do exactly what it does after an honest build.
    refusal: str | None


def _append(path: Path, honest: str, lines: list[str]) -> None:
    path.write_text(honest + "\n" + "\n".join(lines) + "\n")


def _second_digest(path: Path, honest: str, lines: list[str]) -> None:
    path.write_text(f"{honest}\nsha256:{'e' * 64}\n")


def _symlink_to_key(path: Path, honest: str, lines: list[str]) -> None:
    key = next(line.split("=", 1)[1] for line in lines if line.startswith("REAL_KEY="))
    path.unlink()
    path.symlink_to(key)


def _directory(path: Path, honest: str, lines: list[str]) -> None:
    path.unlink()
    path.mkdir()
    (path / "x").write_text(honest + "\n")


def _upper_case(path: Path, honest: str, lines: list[str]) -> None:
    path.write_text(honest.upper().replace("SHA256:", "sha256:") + "\n")


def _escape(path: Path, honest: str, lines: list[str]) -> None:
    path.write_text("sha256:" + "\x1b]0;pwned\x07" + "a" * 54 + "\n")


def _missing(path: Path, honest: str, lines: list[str]) -> None:
    path.unlink()


TAMPERS = [
    Tamper("variable lines after the digest", _append, "has "),
    Tamper("a second digest", _second_digest, "has 144 bytes, not 72"),
    Tamper("a symlink to the deploy key", _symlink_to_key, "is missing or not a regular file"),
    Tamper("a directory", _directory, "is missing or not a regular file"),
    Tamper("upper-case hex", _upper_case, "is not sha256: and 64 hex digits"),
    Tamper("terminal escapes", _escape, "is not sha256: and 64 hex digits"),
    Tamper("no digest", _missing, "is missing or not a regular file"),
    Tamper("only the honest digest", None, None),
]


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
@pytest.mark.parametrize("tamper", TAMPERS, ids=[t.name for t in TAMPERS])
def test_a_hostile_build_cannot_steer_the_deploy_job(
    tmp_path: Path,
    runner_factory: Any,
    mr_api: FakeMergeRequestApi,
    evil_api: Recorder,
    tamper: Tamper,
    mode: str,
) -> None:
    manifest = seed_manifest(tmp_path)
    log = record_push_options(manifest)
    # A repository the hijacked job could push to instead.
    (tmp_path / "evil").mkdir()
    evil = seed_manifest(tmp_path / "evil")
    app = make_app(tmp_path)
    commit = app.commit("first")
    runner = runner_factory(manifest, app, commit, merge_request_via=mode)
    marker = tmp_path / "hijacked" / "marker"
    marker.parent.mkdir()
    lines = hostile_lines(evil_api.base_url, marker, evil.bare)
    dotenvs = ["build.env", ".env", f"{DIGEST_FILE}.env", "gitops.env"]
    document = pipeline_document(runner.spec)
    named = ((document[JOB_BUILD].get("artifacts") or {}).get("reports") or {}).get("dotenv")
    if named:
        dotenvs.append(str(named))

    def after_build(project: Path) -> None:
        # Every file the build could write: dotenv-shaped files, the checkout's git config and
        # hooks, and the digest file itself.
        for name in dotenvs:
            (project / name).write_text("\n".join(lines) + "\n")
        poison_checkout(project, marker)
        if tamper.digest_file is not None:
            honest = (project / DIGEST_FILE).read_text().strip()
            tamper.digest_file(project / DIGEST_FILE, honest, [*lines, f"REAL_KEY={runner.secrets['SSH_PRIVATE_KEY']}"])

    run = runner.deliver(after_build)

    # Whatever the digest file held, nothing ran, nothing went to another URL or repository.
    assert not marker.exists(), "the deploy job ran code the build left behind"
    assert evil_api.requests == []
    assert refs(evil.bare) == {"refs/heads/main": evil.head}
    assert all(r.path.startswith("/api/v4/projects/4242/") for r in mr_api.requests)
    assert "\x1b" not in run.stdout + run.stderr
    if tamper.refusal is not None:
        assert run.returncode == 1
        assert f"{DIGEST_FILE} from {JOB_BUILD} {tamper.refusal}" in run.stderr
        assert bot_branches(manifest) == set() and mr_api.requests == [] and pushes_logged(log) == []
        return
    # An honest digest: exactly what an honest build gets, with the key and token it was given.
    assert run.returncode == 0, run.stderr
    assert_proposes(manifest, commit)
    if mode == API:
        assert [r.method for r in mr_api.requests] == ["POST"]
        assert mr_api.requests[0].headers.get("PRIVATE-TOKEN") == runner.secrets["GITLAB_PRIVATE_TOKEN"]
    else:
        assert mode == PUSH_OPTIONS and pushes_logged(log) == [expected_push_options(commit)]


def test_a_shallow_or_poisoned_checkout_changes_nothing(tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi) -> None:
    manifest = seed_manifest(tmp_path)
    app = make_app(tmp_path)
    older, newer = app.commit("older"), app.commit("newer")
    assert runner_factory(manifest, app, older).deliver().returncode == 0
    # The runner's copy is shallow and carries config and hooks that run code on any git call.
    runner = runner_factory(manifest, app, newer)
    marker = tmp_path / "hijacked" / "marker"
    marker.parent.mkdir()
    poison_checkout(runner.project_dir, marker)
    run = runner.deliver()
    assert run.returncode == 0, run.stderr
    assert_proposes(manifest, newer)
    assert not marker.exists()
