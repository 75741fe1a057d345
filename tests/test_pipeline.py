"""The rendered app pipeline: schema, gitlab-ci-local, shellcheck, and real runs of its jobs.

The jobs run their own script lines: the build against a recording stand-in for
`buildctl-daemonless.sh` that writes BuildKit's metadata file, the manifest job against a
loopback sshd serving a bare chart repository, an app repository with real history, and a
loopback HTTP server standing in for GitLab's merge request API. For the "push-options"
mode the bare repository records the push options it receives.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import pwd
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from components.chart import COMMIT_ANNOTATION, DIGEST_ANNOTATION, ChartSpec, render_chart
from components.pipeline import (
    DIGEST_FILE,
    ENVIRONMENT_MANIFEST,
    JOB_BUILD,
    JOB_BUILD_CHECK,
    JOB_UPDATE_MANIFEST,
    JOBS,
    MERGE_REQUEST_VIA,
    SECRET_VARIABLES,
    STAGES,
    PipelineSpec,
    job_scripts,
    merge_request_jobs,
    pipeline_images,
    pipeline_jobs,
    pipeline_stages,
    render_pipeline,
    required_variables,
)
from tests.tools import bump_chart, loopback_api, missing, require_tool

SSHD = "/usr/sbin/sshd"
PROJECT_ID = "4242"
GITLAB_TOKEN = "glpat-TestOnlyToken-9f3k2"
DOCKERHUB_TOKEN = "dXNlcjpka2NyX3BhdF9UZXN0T25seS04ZDJq"  # base64("user:dckr_pat_TestOnly-8d2j")
DEPLOY_BRANCH = "gitops-deploy-test"
# A hand-written Chart.yaml from before digests were recorded: no annotations.
CHART_SEED = """\
apiVersion: v2
name: webapp
description: Test chart for the manifest repository
type: application
version: 0.1.0
appVersion: "0.0.0"
"""
RUN_TIMEOUT = 120
API = "api"
PUSH_OPTIONS = "push-options"
# The pipeline, spelled out rather than taken from the module: the same two jobs in both modes.
EXPECTED_JOBS: list[tuple[str, str]] = [("build-image", "build"), ("update-manifest", "update-manifest")]
EXPECTED_VARIABLES: dict[str, set[str]] = {
    API: {"DOCKERHUB_TOKEN", "SSH_PRIVATE_KEY", "SSH_KNOWN_HOSTS", "GITLAB_PRIVATE_TOKEN"},
    PUSH_OPTIONS: {"DOCKERHUB_TOKEN", "SSH_PRIVATE_KEY", "SSH_KNOWN_HOSTS"},
}
# Merge-request pipelines, in both modes.
EXPECTED_MR_JOBS: list[tuple[str, str]] = [("build-check", "build")]
MODE_JOBS = [(mode, job) for mode in MERGE_REQUEST_VIA for job, _ in [*EXPECTED_JOBS, *EXPECTED_MR_JOBS]]
# Commands that install packages at run time; no job may run one.
PACKAGE_INSTALLS = re.compile(r"\b(apk add|apt-get install|apt install|yum install|dnf install|pip install|npm install)\b")


def make_spec(**overrides: Any) -> PipelineSpec:
    values: dict[str, Any] = {
        "image_repository": "docker.io/acme/webapp",
        "manifest_ssh_url": "git@gitlab.com:acme/gitops-demo-chart.git",
        "manifest_project_id": PROJECT_ID,
        "deploy_branch": DEPLOY_BRANCH,
        "bot_name": "Chart Bot",
        "bot_email": "chart-bot@example.invalid",
    }
    values.update(overrides)
    return PipelineSpec(**values)


def git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"git {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- static checks


def test_both_modes_run_two_jobs() -> None:
    assert MERGE_REQUEST_VIA == (API, PUSH_OPTIONS)
    assert make_spec().merge_request_via == API
    assert list(JOBS) == [job for job, _ in EXPECTED_JOBS]
    assert list(STAGES) == [stage for _, stage in EXPECTED_JOBS]


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
def test_rendered_file_passes_gitlab_ci_schema(tmp_path: Path, mode: str) -> None:
    check = require_tool("check-jsonschema")
    ci_file = tmp_path / ".gitlab-ci.yml"
    ci_file.write_text(render_pipeline(make_spec(merge_request_via=mode)))
    result = subprocess.run(
        [check, "--builtin-schema", "vendor.gitlab-ci", "--data-transform", "gitlab-ci", str(ci_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
def test_document_shape(mode: str) -> None:
    spec = make_spec(merge_request_via=mode)
    document = yaml.safe_load(render_pipeline(spec))
    expected_jobs = [job for job, _ in EXPECTED_JOBS]
    assert document["stages"] == [stage for _, stage in EXPECTED_JOBS]
    assert list(pipeline_stages(spec)) == document["stages"]
    assert list(pipeline_jobs(spec)) == expected_jobs
    mr_jobs = [job for job, _ in EXPECTED_MR_JOBS]
    assert [key for key in document if key not in ("stages", "variables", *mr_jobs)] == expected_jobs
    assert list(merge_request_jobs(spec)) == mr_jobs
    check = document[JOB_BUILD_CHECK]
    assert check["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert check["image"] == document[JOB_BUILD]["image"] and check["stage"] == "build"
    # No credential, no cache, no push, no environment.
    check_text = "\n".join(check["script"])
    assert "push=false" in check_text and "push=true" not in check_text and "cache" not in check_text
    assert not any(f"${name}" in check_text or f"${{{name}}}" in check_text for name in SECRET_VARIABLES)
    assert "environment" not in check
    variables = document["variables"]
    assert variables["IMAGE_TAG"] == "$CI_COMMIT_REF_SLUG-$CI_COMMIT_SHORT_SHA"
    assert variables["IMAGE_REPOSITORY"] == "docker.io/acme/webapp"
    # The layer cache lives in the app project's own registry, not beside the image.
    assert variables["CACHE_REPOSITORY"] == "$CI_REGISTRY_IMAGE/buildcache"
    assert variables["MANIFEST_PROJECT_ID"] == PROJECT_ID
    assert variables["MANIFEST_SSH_URL"] == "git@gitlab.com:acme/gitops-demo-chart.git"
    assert variables["MANIFEST_DEFAULT_BRANCH"] == "main"
    assert variables["DEPLOY_BRANCH"] == DEPLOY_BRANCH
    assert variables["CHART_FILE"] == "Chart.yaml"
    assert not set(SECRET_VARIABLES) & set(variables)
    for job in [*expected_jobs, *mr_jobs]:
        assert "only" not in document[job] and "except" not in document[job]
        if job in expected_jobs:
            assert document[job]["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
        assert set(SECRET_VARIABLES).isdisjoint(document[job].get("variables", {}))
        # Each job stops on its own deadline, well under the project's default hour.
        minutes = int(re.fullmatch(r"(\d+) minutes", document[job]["timeout"]).group(1))  # type: ignore[union-attr]
        assert 1 <= minutes <= 30
        assert document[job]["retry"]["max"] >= 1
    build = document[JOB_BUILD]
    assert build["image"]["entrypoint"] == [""]
    assert re.fullmatch(r"moby/buildkit:v0\.(\d+)\.\d+-rootless@sha256:[0-9a-f]{64}", build["image"]["name"])
    assert build["variables"]["BUILDKITD_FLAGS"] == "--oci-worker-no-process-sandbox"
    assert build["interruptible"] is True
    # The digest as a plain file: no dotenv report, whose lines would become update-manifest's variables.
    assert build["artifacts"] == {"paths": [DIGEST_FILE]}
    update = document[JOB_UPDATE_MANIFEST]
    assert update["needs"] == [{"job": JOB_BUILD, "artifacts": True}]
    # No checkout of the runner's (the job clones the app's history itself); one writer of the
    # deploy branch at a time.
    assert update["variables"] == {"GIT_STRATEGY": "none"}
    assert update["resource_group"]
    assert update["environment"] == {"name": ENVIRONMENT_MANIFEST, "action": "prepare"}
    assert re.fullmatch(r"buildpack-deps:[a-z]+-scm@sha256:[0-9a-f]{64}", update["image"])
    clones = [line for line in [*update["before_script"], *update["script"]] if " clone " in line]
    assert len(clones) == 2
    assert '--depth 1 --branch "$MANIFEST_DEFAULT_BRANCH" "$MANIFEST_SSH_URL"' in clones[1]
    # The app's history: its default branch only, no tags, from GitLab rather than the runner's copy.
    assert '--bare --single-branch --no-tags --branch "$CI_DEFAULT_BRANCH" "$CI_REPOSITORY_URL"' in clones[0]
    assert "ssh-keyscan" not in render_pipeline(spec)


def test_every_image_is_pinned_by_digest_and_no_job_installs_packages() -> None:
    for mode in MERGE_REQUEST_VIA:
        spec = make_spec(merge_request_via=mode)
        document = yaml.safe_load(render_pipeline(spec))
        images = set()
        for job in (*pipeline_jobs(spec), *merge_request_jobs(spec)):
            image = document[job]["image"]
            images.add(image["name"] if isinstance(image, dict) else image)
        assert images == set(pipeline_images(spec))
        for image in images:
            assert re.fullmatch(r"[a-z0-9./-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}", image), image
        for job, lines in job_scripts(spec).items():
            for line in lines:
                assert not PACKAGE_INSTALLS.search(line), (job, line)
    # A tag alone is refused.
    with pytest.raises(ValueError, match="pinned by digest"):
        make_spec(tools_image="buildpack-deps:bookworm-scm")
    with pytest.raises(ValueError, match="pinned by digest"):
        make_spec(buildkit_image="moby/buildkit:v0.33.0-rootless")


def test_cache_repository_is_configurable() -> None:
    document = yaml.safe_load(render_pipeline(make_spec(cache_repository="registry.example.com/team/cache")))
    assert document["variables"]["CACHE_REPOSITORY"] == "registry.example.com/team/cache"
    # "off": an empty CACHE_REPOSITORY, which the build job reads as "no cache".
    assert yaml.safe_load(render_pipeline(make_spec(cache_repository="off")))["variables"]["CACHE_REPOSITORY"] == ""
    with pytest.raises(ValueError, match="cache_repository"):
        make_spec(cache_repository="registry.example.com/team/cache@sha256:00")


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
def test_no_secret_in_rendered_file(mode: str) -> None:
    spec = make_spec(merge_request_via=mode)
    text = render_pipeline(spec)
    for secret in (GITLAB_TOKEN, DOCKERHUB_TOKEN, "BEGIN OPENSSH PRIVATE KEY", "glpat-", "dckr_pat"):
        assert secret not in text
    # Secrets are only referenced, and never handed to echo or to a traced shell.
    for job, lines in job_scripts(spec).items():
        for line in lines:
            assert "set -x" not in line, (job, line)
            for name in SECRET_VARIABLES:
                if name in line:
                    assert not re.search(r"\becho\b[^;|]*\$\{?" + name, line), (job, line)


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
def test_required_variables_are_those_the_file_reads(mode: str) -> None:
    spec = make_spec(merge_request_via=mode)
    text = render_pipeline(spec)
    referenced = {name for name in SECRET_VARIABLES if re.search(r"\$\{?" + name + r"\b", text)}
    assert set(required_variables(spec)) == EXPECTED_VARIABLES[mode] == referenced
    assert len(required_variables(spec)) == len(EXPECTED_VARIABLES[mode])
    assert SECRET_VARIABLES == tuple(sorted(EXPECTED_VARIABLES[API], key=SECRET_VARIABLES.index))


def test_push_options_file_never_mentions_the_api_token() -> None:
    text = render_pipeline(make_spec(merge_request_via=PUSH_OPTIONS))
    assert "GITLAB_PRIVATE_TOKEN" not in text
    assert "PRIVATE-TOKEN" not in text and "merge_requests" not in text
    assert "GITLAB_PRIVATE_TOKEN" in render_pipeline(make_spec())


def test_push_options_ride_on_the_manifest_push() -> None:
    lines = job_scripts(make_spec(merge_request_via=PUSH_OPTIONS))[JOB_UPDATE_MANIFEST]
    pushes = [line for line in lines if "merge_request.create" in line]
    assert len(pushes) == 1
    push = pushes[0]
    for option in (
        "-o merge_request.create ",
        '-o "merge_request.target=$MANIFEST_DEFAULT_BRANCH" ',
        '-o "merge_request.title=Deploy $IMAGE_TAG" ',
        "-o merge_request.remove_source_branch ",
    ):
        assert option in push
    assert '--force-with-lease="refs/heads/$DEPLOY_BRANCH:$REMOTE_SHA"' in push
    assert not any("merge_request." in line for line in job_scripts(make_spec())[JOB_UPDATE_MANIFEST])


@pytest.mark.parametrize(
    "overrides",
    [
        {"merge_request_via": "API"},
        {"merge_request_via": "push_options"},
        {"merge_request_via": ""},
        {"image_repository": "docker.io/acme/webapp:latest"},
        {"image_repository": ""},
        {"manifest_ssh_url": "https://gitlab.com/acme/chart.git"},
        {"manifest_project_id": "12 34"},
        {"bot_email": "nobody"},
        {"network_retries": 0},
        {"deploy_branch": "main"},
        {"deploy_branch": "-x"},
    ],
)
def test_spec_rejects_bad_values(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_spec(**overrides)


def test_spec_accepts_both_ssh_url_forms() -> None:
    for url in (
        "git@gitlab.com:acme/gitops-demo-chart.git",
        "ssh://git@gitlab.example.com:2222/acme/chart.git",
    ):
        assert yaml.safe_load(render_pipeline(make_spec(manifest_ssh_url=url)))["variables"]["MANIFEST_SSH_URL"] == url


def test_shellcheck_covers_every_job() -> None:
    for mode in MERGE_REQUEST_VIA:
        jobs = set(job_scripts(make_spec(merge_request_via=mode)))
        assert jobs == {job for job_mode, job in MODE_JOBS if job_mode == mode}


@pytest.mark.parametrize(("mode", "job"), MODE_JOBS)
def test_job_script_passes_shellcheck(mode: str, job: str, tmp_path: Path) -> None:
    shellcheck = require_tool("shellcheck")
    script = tmp_path / f"{job}.sh"
    # A runner stops at the first failing line, as `set -e` does.
    script.write_text("set -e\n" + "\n".join(job_scripts(make_spec(merge_request_via=mode))[job]) + "\n")
    result = subprocess.run(
        [shellcheck, "-s", "sh", "-S", "style", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- gitlab-ci-local


def app_repo(tmp_path: Path, spec: PipelineSpec) -> tuple[Path, str]:
    """An app repository on main whose only commit adds the rendered pipeline; and its image tag."""
    app = tmp_path / "app"
    app.mkdir()
    git("init", "-q", "-b", "main", cwd=app)
    (app / ".gitlab-ci.yml").write_text(render_pipeline(spec))
    git("add", ".gitlab-ci.yml", cwd=app)
    git(
        "-c", "user.name=Dev", "-c", "user.email=dev@example.invalid",
        "commit", "-q", "-m", "Add pipeline",
        cwd=app,
    )  # fmt: skip
    return app, "main-" + git("rev-parse", "--short=8", "HEAD", cwd=app).strip()


def _gitlab_ci_local(cwd: Path, home: Path, *args: str, path_prefix: Path | None = None) -> str:
    tool = require_tool("gitlab-ci-local")
    env = {**os.environ, "HOME": str(home)}
    env.pop("CI", None)  # gitlab-ci-local must treat the temp dir as a local checkout
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    result = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=180, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(params=MERGE_REQUEST_VIA)
def ci_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ci_checkout(tmp_path: Path, ci_mode: str) -> Path:
    return app_repo(tmp_path, make_spec(merge_request_via=ci_mode))[0]


def test_gitlab_ci_local_lists_jobs_in_stage_order(ci_checkout: Path, tmp_path: Path) -> None:
    out = _gitlab_ci_local(ci_checkout, tmp_path / "home", "--list-csv")
    rows = [line.split(";") for line in out.strip().splitlines()]
    header, jobs = rows[0], rows[1:]
    name_col, stage_col, when_col = header.index("name"), header.index("stage"), header.index("when")
    assert [(row[name_col], row[stage_col]) for row in jobs] == EXPECTED_JOBS
    assert all(row[when_col] == "on_success" for row in jobs)
    listed = _gitlab_ci_local(ci_checkout, tmp_path / "home", "--list")
    positions = [listed.index(job) for job, _ in EXPECTED_JOBS]
    assert positions == sorted(positions)


def test_gitlab_ci_local_skips_jobs_off_default_branch(ci_checkout: Path, tmp_path: Path) -> None:
    git("checkout", "-q", "-b", "feature/x", cwd=ci_checkout)
    out = _gitlab_ci_local(ci_checkout, tmp_path / "home", "--list-csv")
    assert out.strip().splitlines()[1:] == []
    everything = json.loads(_gitlab_ci_local(ci_checkout, tmp_path / "home", "--list-json"))
    expected = {job: "never" for job, _ in [*EXPECTED_JOBS, *EXPECTED_MR_JOBS]}
    assert {job["name"]: job["when"] for job in everything} == expected


def test_gitlab_ci_local_preview_keeps_stages_and_jobs(ci_checkout: Path, tmp_path: Path) -> None:
    preview = yaml.safe_load(_gitlab_ci_local(ci_checkout, tmp_path / "home", "--preview"))
    stages = [stage for stage in preview["stages"] if not stage.startswith(".")]
    assert stages == [stage for _, stage in EXPECTED_JOBS] == list(STAGES)
    for job, stage in EXPECTED_JOBS:
        assert preview[job]["stage"] == stage
    assert preview[JOB_UPDATE_MANIFEST]["needs"][0]["job"] == JOB_BUILD


def test_gitlab_ci_local_runs_only_the_build_check_for_merge_requests(ci_checkout: Path, tmp_path: Path) -> None:
    git("checkout", "-q", "-b", "feature/x", cwd=ci_checkout)
    args = ["--variable", "CI_PIPELINE_SOURCE=merge_request_event", "--variable", "CI_MERGE_REQUEST_IID=7"]
    out = _gitlab_ci_local(ci_checkout, tmp_path / "home", "--list-json", *args)
    # A warning about the overridden predefined variable comes first, on stdout.
    everything = json.loads(out[out.index("\n[") + 1 :] if not out.startswith("[") else out)
    running = {job["name"] for job in everything if job["when"] != "never"}
    assert running == {job for job, _ in EXPECTED_MR_JOBS}


# --------------------------------------------------------------------------- loopback services


@dataclass
class SshServer:
    port: int
    client_key: Path
    known_hosts: Path
    wrong_known_hosts: Path
    log: Path

    def url(self, repo: Path) -> str:
        # sshd authenticates the account of this process, whatever $USER says.
        return f"ssh://{pwd.getpwuid(os.getuid()).pw_name}@127.0.0.1:{self.port}{repo}"


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        timeout=30,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().split()[1]


def _wait_for_banner(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-2.0"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("sshd did not answer in time")


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    if not os.access(SSHD, os.X_OK):
        missing("OpenSSH server (/usr/sbin/sshd)")
    for tool in ("ssh", "ssh-keygen", "git"):
        require_tool(tool)
    try:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    except PermissionError:
        missing("a writable /run/sshd (run as root)")
    base = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(base / "host_ed25519", "test-host")
    wrong_pub = _keygen(base / "wrong_host_ed25519", "wrong-host")
    _keygen(base / "client_ed25519", "test-client")
    authorized = base / "authorized_keys"
    shutil.copy(base / "client_ed25519.pub", authorized)
    port = free_port()
    known = base / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} ssh-ed25519 {host_pub}\n")
    wrong = base / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{port} ssh-ed25519 {wrong_pub}\n")
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {base / 'host_ed25519'}",
                f"PidFile {base / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    log = base / "sshd.log"
    with log.open("wb") as log_handle:
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=log_handle,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_banner(port, process, time.monotonic() + 15)
        yield SshServer(port, base / "client_ed25519", known, wrong, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]


@dataclass
class MergeRequest:
    iid: int
    source_branch: str
    target_branch: str
    title: str
    description: str
    state: str = "opened"


@dataclass
class FakeMergeRequestApi:
    """Answers GitLab's merge request calls as GitLab does: create (201, or 409 for a branch with
    an open one), list by source branch and state, and update title and description."""

    base_url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    merge_requests: list[MergeRequest] = field(default_factory=list)
    forced_status: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def opened(self) -> list[MergeRequest]:
        return [mr for mr in self.merge_requests if mr.state == "opened"]

    def creates(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST"]


def _handler_for(api: FakeMergeRequestApi) -> type[BaseHTTPRequestHandler]:
    collection = re.compile(r"/api/v4/projects/([^/]+)/merge_requests")
    single = re.compile(r"/api/v4/projects/([^/]+)/merge_requests/(\d+)")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _read(self, method: str) -> tuple[str, dict[str, str]]:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length).decode() if length else ""
            if self.headers.get("Content-Type", "").startswith("application/json"):
                form = {k: str(v) for k, v in json.loads(raw).items()}
            else:
                form = {k: v[-1] for k, v in parse_qs(raw or url.query, keep_blank_values=True).items()}
            api.requests.append(RecordedRequest(method, url.path, dict(self.headers.items()), form))
            return url.path, form

        def _refused(self) -> bool:
            if api.forced_status is not None:
                self._answer(api.forced_status, {"message": "forced failure"})
                return True
            if self.headers.get("PRIVATE-TOKEN") != GITLAB_TOKEN:
                self._answer(401, {"message": "401 Unauthorized"})
                return True
            return False

        def do_POST(self) -> None:
            with api.lock:
                path, form = self._read("POST")
                if self._refused():
                    return
                if not collection.fullmatch(path):
                    self._answer(404, {"message": "404 Not Found"})
                    return
                if not form.get("source_branch") or not form.get("target_branch"):
                    self._answer(400, {"message": "source_branch and target_branch required"})
                    return
                if any(mr.source_branch == form["source_branch"] for mr in api.opened()):
                    self._answer(409, {"message": ["Another open merge request already exists for this source branch"]})
                    return
                mr = MergeRequest(
                    len(api.merge_requests) + 1,
                    form["source_branch"],
                    form["target_branch"],
                    form.get("title", ""),
                    form.get("description", ""),
                )
                api.merge_requests.append(mr)
                self._answer(201, {"id": 9000 + mr.iid, "iid": mr.iid, "state": mr.state})

        def do_GET(self) -> None:
            with api.lock:
                path, form = self._read("GET")
                if self._refused():
                    return
                if not collection.fullmatch(path):
                    self._answer(404, {"message": "404 Not Found"})
                    return
                found = [
                    # GitLab lists the MR's own id first; nested objects carry ids of their own.
                    {"id": 9000 + mr.iid, "iid": mr.iid, "title": mr.title, "milestone": {"id": 1, "iid": 77}}
                    for mr in api.merge_requests
                    if mr.source_branch == form.get("source_branch") and mr.state == form.get("state", mr.state)
                ]
                self._answer(200, found)

        def do_PUT(self) -> None:
            with api.lock:
                path, form = self._read("PUT")
                if self._refused():
                    return
                match = single.fullmatch(path)
                mr = next((m for m in api.merge_requests if match and m.iid == int(match.group(2))), None)
                if mr is None:
                    self._answer(404, {"message": "404 Not Found"})
                    return
                mr.title = form.get("title", mr.title)
                mr.description = form.get("description", mr.description)
                self._answer(200, {"iid": mr.iid, "title": mr.title})

    return Handler


@pytest.fixture
def mr_api() -> Iterator[FakeMergeRequestApi]:
    api = FakeMergeRequestApi()
    with loopback_api(_handler_for(api)) as base_url:
        api.base_url = base_url
        yield api


# --------------------------------------------------------------------------- running jobs


@dataclass
class Manifest:
    bare: Path
    head: str


def starter_chart(app_version: str | None = None) -> dict[str, str]:
    """The project's own starter chart, as the manifest project is seeded with it."""
    spec = ChartSpec(name="webapp", image_repository="docker.io/acme/webapp")
    return render_chart(spec if app_version is None else ChartSpec(spec.name, spec.image_repository, app_version))


def seed_manifest(root: Path, chart_yaml: str | None = None) -> Manifest:
    files = starter_chart()
    if chart_yaml is not None:
        files["Chart.yaml"] = chart_yaml
    return seed_repository(root, "chart", files)


def seed_repository(root: Path, name: str, files: dict[str, str]) -> Manifest:
    """A bare manifest repository whose main branch holds ``files`` in one commit."""
    bare = root / f"{name}.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    work = root / f"{name}-seed"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    for path, content in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(content)
    git("add", ".", cwd=work)
    git(
        "-c", "user.name=Seeder", "-c", "user.email=seed@example.invalid",
        "commit", "-q", "-m", "Seed chart",
        cwd=work,
    )  # fmt: skip
    git("push", "-q", str(bare), "main:main", cwd=work)
    return Manifest(bare, git("--git-dir", str(bare), "rev-parse", "main").strip())


def refs(bare: Path) -> dict[str, str]:
    out = git("--git-dir", str(bare), "for-each-ref", "--format=%(refname) %(objectname)")
    return dict(line.split(" ", 1) for line in out.splitlines())


def chart_at(bare: Path, ref: str) -> dict[str, Any]:
    chart: dict[str, Any] = yaml.safe_load(git("--git-dir", str(bare), "show", f"{ref}:Chart.yaml"))
    return chart


@dataclass
class AppRepo:
    """The app project's repository on GitLab, with real history."""

    path: Path

    def commit(self, change: str) -> str:
        (self.path / "app.txt").write_text(change + "\n")
        git("add", "app.txt", cwd=self.path)
        git("-c", "user.name=Dev", "-c", "user.email=dev@example.invalid", "commit", "-q", "-m", change, cwd=self.path)
        return git("rev-parse", "HEAD", cwd=self.path).strip()


def make_app(root: Path) -> AppRepo:
    path = root / "app-repo"
    path.mkdir()
    git("init", "-q", "-b", "main", cwd=path)
    return AppRepo(path)


def fake_digest(commit: str, salt: str = "") -> str:
    """The digest the buildctl stand-in reports for a build of ``commit``: a rebuild (salt) differs."""
    return "sha256:" + hashlib.sha256((commit + salt).encode()).hexdigest()


def buildctl_stub(tmp_path: Path, *lines: str) -> Path:
    """A PATH directory whose buildctl-daemonless.sh runs ``lines`` and, like BuildKit, writes the
    metadata file it is given with the pushed image's digest (``fake_digest``)."""
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir(exist_ok=True)
    stub = stub_dir / "buildctl-daemonless.sh"
    stub.write_text(
        "#!/bin/sh\n"
        + "".join(f"{line}\n" for line in lines)
        + 'meta=""; prev=""\n'
        + 'for arg in "$@"; do if [ "$prev" = "--metadata-file" ]; then meta="$arg"; fi; prev="$arg"; done\n'
        + 'if [ -n "$meta" ]; then\n'
        + '  digest="$(printf \'%s%s\' "$CI_COMMIT_SHA" "${STUB_SALT:-}" | sha256sum | cut -d\' \' -f1)"\n'
        + '  printf \'{\\n  "buildx.build.ref": "stub",\\n  "containerimage.digest": "sha256:%s",\\n'
        + '  "image.name": "%s"\\n}\\n\' "$digest" "$IMAGE_REPOSITORY:$IMAGE_TAG" > "$meta"\n'
        + "fi\n"
    )
    stub.chmod(0o755)
    return stub_dir


def _expand(value: str, env: dict[str, str]) -> str:
    # GitLab expands $VAR / ${VAR} references in `variables:` before the job starts.
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), value)


@dataclass
class JobRun:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Runner:
    """Executes a job's own script lines the way a shell runner does, with its variables."""

    spec: PipelineSpec
    project_dir: Path
    home: Path
    secrets: dict[str, str]
    predefined: dict[str, str]
    overrides: dict[str, str] = field(default_factory=dict)
    path_prefix: list[str] = field(default_factory=list)
    never_printed: list[str] = field(default_factory=list)

    def env_for(self, job: str) -> dict[str, str]:
        document = yaml.safe_load(render_pipeline(self.spec))
        env = {
            "PATH": os.pathsep.join([*self.path_prefix, os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.home),
            **self.predefined,
            "CI_PROJECT_DIR": str(self.project_dir),
        }
        for source in (document["variables"], document[job].get("variables", {})):
            for key, value in source.items():
                env[key] = _expand(str(value), env)
        env.update(self.secrets)
        env.update(self.overrides)
        # `needs: artifacts` hands a needed job's dotenv report over as variables, as GitLab does,
        # above the job's own and predefined ones (none is expected: see the hostile-build tests).
        for need in document[job].get("needs", []):
            dotenv = ((document[need["job"]].get("artifacts") or {}).get("reports") or {}).get("dotenv")
            if need.get("artifacts") and dotenv and (self.project_dir / dotenv).is_file():
                for line in (self.project_dir / dotenv).read_text().splitlines():
                    key, _, value = line.partition("=")
                    env[key] = value
        return env

    def run(self, job: str) -> JobRun:
        script = "\n".join(job_scripts(self.spec)[job]) + "\n"
        result = subprocess.run(
            ["sh", "-e", "-c", script],
            cwd=self.project_dir,
            env=self.env_for(job),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        run = JobRun(result.returncode, result.stdout, result.stderr)
        for secret in (GITLAB_TOKEN, DOCKERHUB_TOKEN, *self.never_printed):
            assert secret not in run.stdout + run.stderr, f"{job} printed a secret"
        return run

    def deliver(self, after_build: Callable[[Path], None] | None = None) -> JobRun:
        """The default branch's pipeline: build-image, then update-manifest with its digest.

        Both run in one project directory, as on a Docker runner that keeps the project's
        working copy in a volume; ``after_build`` stands for what a build step left running does
        to that directory once the build job has ended.
        """
        build = self.run(JOB_BUILD)
        assert build.returncode == 0, build.stderr
        if after_build is not None:
            after_build(self.project_dir)
        return self.run(JOB_UPDATE_MANIFEST)


@pytest.fixture
def runner_factory(tmp_path: Path, ssh_server: SshServer, mr_api: FakeMergeRequestApi) -> Iterator[Any]:
    require_tool("curl")
    counter = iter(range(1, 1000))
    stub_dir = buildctl_stub(tmp_path)

    def make(
        manifest: Manifest,
        app: AppRepo,
        commit: str,
        known_hosts: Path | None = None,
        merge_request_via: str = API,
        **spec_overrides: Any,
    ) -> Runner:
        index = next(counter)
        home = tmp_path / f"home-{index}"
        home.mkdir()
        # File variables: the job receives paths; GitLab's files end in a newline.
        key_file = tmp_path / f"SSH_PRIVATE_KEY-{index}"
        key_material = ssh_server.client_key.read_text()
        key_file.write_text(key_material if key_material.endswith("\n") else key_material + "\n")
        key_file.chmod(0o644)  # as a runner writes it; the job must tighten its own copy
        hosts_file = tmp_path / f"SSH_KNOWN_HOSTS-{index}"
        shutil.copy(known_hosts or ssh_server.known_hosts, hosts_file)
        spec = make_spec(manifest_ssh_url=ssh_server.url(manifest.bare), merge_request_via=merge_request_via, **spec_overrides)
        # The runner's working copy of the app, apart from GitLab's repository (file:// stands in).
        checkout = tmp_path / f"checkout-{index}"
        git("clone", "-q", f"file://{app.path}", str(checkout))
        git("checkout", "-q", "--detach", commit, cwd=checkout)
        secrets = {
            "SSH_PRIVATE_KEY": str(key_file),
            "SSH_KNOWN_HOSTS": str(hosts_file),
            "GITLAB_PRIVATE_TOKEN": GITLAB_TOKEN,
            "DOCKERHUB_TOKEN": DOCKERHUB_TOKEN,
        }
        return Runner(
            spec=spec,
            project_dir=checkout,
            home=home,
            # Only what the project must define: a job reading anything else would fail here.
            secrets={name: secrets[name] for name in required_variables(spec)},
            predefined={
                "CI": "true",
                "GITLAB_CI": "true",
                "CI_COMMIT_BRANCH": "main",
                "CI_DEFAULT_BRANCH": "main",
                "CI_COMMIT_REF_NAME": "main",
                "CI_COMMIT_REF_SLUG": "main",
                "CI_COMMIT_SHORT_SHA": commit[:8],
                "CI_COMMIT_SHA": commit,
                "CI_API_V4_URL": mr_api.base_url,
                "CI_REPOSITORY_URL": f"file://{app.path}",
            },
            # Keep the retry loop bounded but quick under test.
            overrides={"RETRY_DELAY": "0"},
            path_prefix=[str(stub_dir)],
            never_printed=[line for line in key_material.splitlines()[1:-1] if len(line) > 20],
        )

    yield make


def bot_branches(manifest: Manifest) -> set[str]:
    return {ref for ref in refs(manifest.bare) if ref != "refs/heads/main"}


def assert_proposes(manifest: Manifest, commit: str, digest: str | None = None) -> None:
    """The deploy branch proposes the build of ``commit``: tag, digest and app commit, on top of main."""
    chart = chart_at(manifest.bare, DEPLOY_BRANCH)
    assert chart["appVersion"] == f"main-{commit[:8]}"
    assert chart["annotations"] == {DIGEST_ANNOTATION: digest or fake_digest(commit), COMMIT_ANNOTATION: commit}
    log = git("--git-dir", str(manifest.bare), "log", "--format=%P|%an|%ae", f"main..{DEPLOY_BRANCH}")
    assert log.strip().splitlines() == [f"{manifest.head}|Chart Bot|chart-bot@example.invalid"]


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
def test_two_commits_roll_one_branch_and_one_merge_request(
    tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi, mode: str
) -> None:
    manifest = seed_manifest(tmp_path)
    log = record_push_options(manifest)
    app = make_app(tmp_path)
    first, second = app.commit("first"), app.commit("second")

    run = runner_factory(manifest, app, first, merge_request_via=mode).deliver()
    assert run.returncode == 0, run.stderr
    assert bot_branches(manifest) == {f"refs/heads/{DEPLOY_BRANCH}"}
    assert_proposes(manifest, first)
    # Only appVersion and the two annotations changed; the rest of the chart is the seed's.
    diff = git("--git-dir", str(manifest.bare), "diff", "--unified=0", "main", DEPLOY_BRANCH)
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert len(changed) == 6 and all(("appVersion" in line or "gitops-bootstrap/" in line) for line in changed)

    second_runner = runner_factory(manifest, app, second, merge_request_via=mode)
    run = second_runner.deliver()
    assert run.returncode == 0, run.stderr
    assert bot_branches(manifest) == {f"refs/heads/{DEPLOY_BRANCH}"}
    assert_proposes(manifest, second)
    assert refs(manifest.bare)["refs/heads/main"] == manifest.head

    if mode == API:
        # One merge request, opened by the first run and retitled by the second.
        assert [(mr.source_branch, mr.target_branch) for mr in mr_api.merge_requests] == [(DEPLOY_BRANCH, "main")]
        assert mr_api.merge_requests[0].title == f"Deploy main-{second[:8]}"
        assert fake_digest(second) in mr_api.merge_requests[0].description
        assert [r.method for r in mr_api.requests] == ["POST", "POST", "GET", "PUT"]
        assert mr_api.requests[0].form["remove_source_branch"] == "true"
    else:
        # Each push asked for the merge request; GitLab keeps one per source branch.
        assert pushes_logged(log) == [expected_push_options(first), expected_push_options(second)]
        assert mr_api.requests == []

    # A re-run for the same commit changes nothing: no push, no new merge request. In `api` mode
    # it asks for the merge request again (a job cancelled after its push left none), which
    # finds the open one and sets the same title.
    before, pushes = refs(manifest.bare), len(pushes_logged(log))
    titles = [(mr.iid, mr.title, mr.description) for mr in mr_api.merge_requests]
    rerun = second_runner.deliver()
    assert rerun.returncode == 0, rerun.stderr
    assert f"{DEPLOY_BRANCH} already proposes main-{second[:8]}@{fake_digest(second)}" in rerun.stdout
    assert refs(manifest.bare) == before
    assert len(pushes_logged(log)) == pushes
    assert [(mr.iid, mr.title, mr.description) for mr in mr_api.merge_requests] == titles


def test_an_older_build_never_replaces_a_newer_one(tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi) -> None:
    manifest = seed_manifest(tmp_path)
    app = make_app(tmp_path)
    older, newer = app.commit("older"), app.commit("newer")
    assert runner_factory(manifest, app, newer).deliver().returncode == 0
    proposed = refs(manifest.bare)
    # The older commit's pipeline finishes last.
    late = runner_factory(manifest, app, older).deliver()
    assert late.returncode == 0, late.stderr
    assert f"carries app commit {newer}, which is newer than {older}: leaving it alone" in late.stdout
    assert refs(manifest.bare) == proposed
    assert_proposes(manifest, newer)
    assert len(mr_api.creates()) == 1


def test_a_rebuild_with_a_new_digest_updates_the_merge_request(
    tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi
) -> None:
    manifest = seed_manifest(tmp_path)
    app = make_app(tmp_path)
    commit = app.commit("only")
    runner = runner_factory(manifest, app, commit)
    assert runner.deliver().returncode == 0
    # The same tag pushed again by a re-run of the build: a new digest.
    runner.overrides["STUB_SALT"] = "rebuild"
    run = runner.deliver()
    assert run.returncode == 0, run.stderr
    assert_proposes(manifest, commit, fake_digest(commit, "rebuild"))
    assert len(mr_api.merge_requests) == 1
    assert fake_digest(commit, "rebuild") in mr_api.merge_requests[0].description


def test_what_the_default_branch_deploys_is_not_proposed_again(
    tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi
) -> None:
    app = make_app(tmp_path)
    older, merged = app.commit("older"), app.commit("merged")
    # The MR for `merged` was merged: main carries its build.
    chart = starter_chart(f"main-{merged[:8]}")["Chart.yaml"]
    chart = chart.replace(f'{DIGEST_ANNOTATION}: ""', f'{DIGEST_ANNOTATION}: "{fake_digest(merged)}"')
    chart = chart.replace(f'{COMMIT_ANNOTATION}: ""', f'{COMMIT_ANNOTATION}: "{merged}"')
    manifest = seed_manifest(tmp_path, chart)
    for commit in (merged, older):
        run = runner_factory(manifest, app, commit).deliver()
        assert run.returncode == 0, run.stderr
        assert bot_branches(manifest) == set()
    assert mr_api.requests == []
    # A newer commit is proposed as usual.
    newest = app.commit("newest")
    assert runner_factory(manifest, app, newest).deliver().returncode == 0
    assert_proposes(manifest, newest)


def test_an_unknown_recorded_commit_stops_the_job(tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi) -> None:
    app = make_app(tmp_path)
    commit = app.commit("only")
    stranger = "0123456789abcdef0123456789abcdef01234567"
    chart = starter_chart("main-01234567")["Chart.yaml"].replace(f'{COMMIT_ANNOTATION}: ""', f'{COMMIT_ANNOTATION}: "{stranger}"')
    manifest = seed_manifest(tmp_path, chart)
    run = runner_factory(manifest, app, commit).deliver()
    assert run.returncode != 0
    assert f"carries app commit {stranger}, which is not in the default branch history" in run.stderr
    assert bot_branches(manifest) == set()
    assert mr_api.requests == []


def test_a_chart_without_annotations_gets_them(tmp_path: Path, runner_factory: Any) -> None:
    # A chart seeded before digests were recorded, and one with no appVersion at all.
    for index, seed in enumerate((CHART_SEED, CHART_SEED.replace('appVersion: "0.0.0"\n', ""))):
        root = tmp_path / f"case-{index}"
        root.mkdir()
        manifest = seed_manifest(root, seed)
        app = make_app(root)
        commit = app.commit("first")
        run = runner_factory(manifest, app, commit).deliver()
        assert run.returncode == 0, run.stderr
        assert_proposes(manifest, commit)


def test_ssh_key_file_is_copied_with_tight_mode(tmp_path: Path, runner_factory: Any) -> None:
    manifest = seed_manifest(tmp_path)
    app = make_app(tmp_path)
    runner = runner_factory(manifest, app, app.commit("first"))
    key_path = Path(runner.secrets["SSH_PRIVATE_KEY"])
    assert runner.deliver().returncode == 0
    # The runner's file is left as given; ssh accepted the job's own 0400 copy.
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o644
    assert bot_branches(manifest) == {f"refs/heads/{DEPLOY_BRANCH}"}


def test_wrong_host_key_fails_and_pushes_nothing(
    tmp_path: Path, runner_factory: Any, ssh_server: SshServer, mr_api: FakeMergeRequestApi
) -> None:
    manifest = seed_manifest(tmp_path)
    before = refs(manifest.bare)
    app = make_app(tmp_path)
    run = runner_factory(manifest, app, app.commit("first"), known_hosts=ssh_server.wrong_known_hosts).deliver()
    assert run.returncode != 0
    assert "Host key verification failed" in run.stderr
    assert refs(manifest.bare) == before
    assert mr_api.requests == []


@pytest.mark.parametrize("status", [400, 403, 422, 500])
def test_a_failed_merge_request_call_puts_the_branch_back(
    tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi, status: int
) -> None:
    manifest = seed_manifest(tmp_path)
    app = make_app(tmp_path)
    runner = runner_factory(manifest, app, app.commit("first"))
    mr_api.forced_status = status
    started = time.monotonic()
    run = runner.deliver()
    assert run.returncode != 0
    assert f"HTTP {status}" in run.stderr
    assert time.monotonic() - started < RUN_TIMEOUT
    # Put back (here: removed), so a re-run proposes again instead of finding it proposed.
    assert bot_branches(manifest) == set()
    mr_api.forced_status = None
    rerun = runner.deliver()
    assert rerun.returncode == 0, rerun.stderr
    assert len(mr_api.opened()) == 1


def test_an_unreachable_api_puts_the_branch_back_and_a_rerun_opens_the_merge_request(
    tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi
) -> None:
    manifest = seed_manifest(tmp_path)
    app = make_app(tmp_path)
    runner = runner_factory(manifest, app, app.commit("first"))
    # Nothing listens there: curl fails to connect (exit 7) after the push.
    runner.overrides["CI_API_V4_URL"] = f"http://127.0.0.1:{free_port()}/api/v4"
    run = runner.deliver()
    assert run.returncode != 0
    assert "HTTP 000" in run.stderr and "Put gitops-deploy-test back as it was" in run.stderr
    assert bot_branches(manifest) == set()
    del runner.overrides["CI_API_V4_URL"]
    rerun = runner.deliver()
    assert rerun.returncode == 0, rerun.stderr
    assert len(mr_api.opened()) == 1


def test_a_cancelled_job_is_made_good_by_a_rerun(tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi) -> None:
    # Cancelled between its push and its API call: the branch proposes the build, no MR exists.
    manifest = seed_manifest(tmp_path)
    app = make_app(tmp_path)
    commit = app.commit("first")
    git("--git-dir", str(manifest.bare), "update-ref", f"refs/heads/{DEPLOY_BRANCH}", _proposal(tmp_path, manifest, commit))
    assert mr_api.merge_requests == []
    rerun = runner_factory(manifest, app, commit).deliver()
    assert rerun.returncode == 0, rerun.stderr
    assert "already proposes" in rerun.stdout
    assert [mr.source_branch for mr in mr_api.opened()] == [DEPLOY_BRANCH]


def _proposal(tmp_path: Path, manifest: Manifest, commit: str) -> str:
    """A commit on top of main that proposes ``commit``'s build, as the job writes it."""
    work = tmp_path / "proposal"
    git("clone", "-q", str(manifest.bare), str(work))
    bump_chart(work / "Chart.yaml", f"main-{commit[:8]}", fake_digest(commit), commit)
    git("-c", "user.name=Bot", "-c", "user.email=bot@example.invalid", "commit", "-q", "-am", "propose", cwd=work)
    git("push", "-q", str(manifest.bare), f"HEAD:refs/heads/{DEPLOY_BRANCH}-tmp", cwd=work)
    sha = git("rev-parse", "HEAD", cwd=work).strip()
    git("--git-dir", str(manifest.bare), "update-ref", "-d", f"refs/heads/{DEPLOY_BRANCH}-tmp")
    return sha


def test_a_branch_named_like_the_deploy_branch_is_not_mistaken_for_it(
    tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi
) -> None:
    manifest = seed_manifest(tmp_path)
    # Any developer of the manifest project can create this; ls-remote lists it for the pattern too.
    git("--git-dir", str(manifest.bare), "branch", f"x/refs/heads/{DEPLOY_BRANCH}", "main")
    app = make_app(tmp_path)
    commit = app.commit("first")
    run = runner_factory(manifest, app, commit).deliver()
    assert run.returncode == 0, run.stderr
    assert_proposes(manifest, commit)


def test_a_rejected_token_fails(tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi) -> None:
    manifest = seed_manifest(tmp_path)
    app = make_app(tmp_path)
    runner = runner_factory(manifest, app, app.commit("first"))
    runner.secrets["GITLAB_PRIVATE_TOKEN"] = "glpat-not-the-right-one"
    run = runner.deliver()
    assert run.returncode != 0
    assert "HTTP 401" in run.stderr
    assert mr_api.requests[0].headers.get("PRIVATE-TOKEN") == "glpat-not-the-right-one"


# --------------------------------------------------------------------------- push options


def record_push_options(manifest: Manifest) -> Path:
    """Make the bare repo accept push options and log them per push, as GitLab would read them."""
    log = manifest.bare.parent / "push-options.log"
    git("--git-dir", str(manifest.bare), "config", "receive.advertisePushOptions", "true")
    hook = manifest.bare / "hooks" / "post-receive"
    hook.write_text(
        "#!/bin/sh\n"
        f'log="{log}"\n'
        'echo "push GIT_PUSH_OPTION_COUNT=${GIT_PUSH_OPTION_COUNT:-unset}" >> "$log"\n'
        "i=0\n"
        'while [ "$i" -lt "${GIT_PUSH_OPTION_COUNT:-0}" ]; do\n'
        '  eval "value=\\${GIT_PUSH_OPTION_$i}"\n'
        '  echo "option $value" >> "$log"\n'
        "  i=$((i + 1))\n"
        "done\n"
        # Stands in for GitLab refusing the merge request (the push itself still succeeds).
        f'if [ -f "{log}.refuse" ]; then\n'
        "  echo 'WARNINGS:' >&2\n"
        "  echo \"Error encountered with push options 'merge_request.create': Target branch does not exist\" >&2\n"
        "fi\n"
    )
    hook.chmod(0o755)
    return log


def pushes_logged(log: Path) -> list[list[str]]:
    """Options of each logged push, checked against the count the hook saw."""
    pushes: list[tuple[int, list[str]]] = []
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("push GIT_PUSH_OPTION_COUNT="):
            pushes.append((int(line.split("=", 1)[1]), []))
        else:
            assert line.startswith("option "), line
            pushes[-1][1].append(line.removeprefix("option "))
    for count, options in pushes:
        assert count == len(options)
    return [options for _, options in pushes]


def expected_push_options(commit: str) -> list[str]:
    return [
        "merge_request.create",
        "merge_request.target=main",
        f"merge_request.title=Deploy main-{commit[:8]}",
        "merge_request.remove_source_branch",
    ]


def test_push_options_refused_by_gitlab_put_the_branch_back(tmp_path: Path, runner_factory: Any) -> None:
    manifest = seed_manifest(tmp_path)
    log = record_push_options(manifest)
    app = make_app(tmp_path)
    commit = app.commit("first")
    runner = runner_factory(manifest, app, commit, merge_request_via=PUSH_OPTIONS)
    Path(f"{log}.refuse").touch()
    run = runner.deliver()
    assert run.returncode != 0
    assert "remote: Error encountered with push options" in run.stdout + run.stderr
    assert "GitLab did not open the merge request" in run.stderr
    # The branch is gone again (the second push, with no options, deleted it) ...
    assert bot_branches(manifest) == set()
    assert pushes_logged(log) == [expected_push_options(commit), []]
    # ... so once GitLab accepts, a re-run pushes, and so asks, again.
    Path(f"{log}.refuse").unlink()
    rerun = runner.deliver()
    assert rerun.returncode == 0, rerun.stderr
    assert pushes_logged(log) == [expected_push_options(commit), [], expected_push_options(commit)]
    assert_proposes(manifest, commit)


# --------------------------------------------------------------------------- build jobs


def build_runner(tmp_path: Path, stub_dir: Path, secrets: dict[str, str], ref_slug: str, **predefined: str) -> Runner:
    """A runner for the build jobs of commit 1234abcd… on ``ref_slug``, with the stand-in first on PATH."""
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    return Runner(
        spec=make_spec(),
        project_dir=project,
        home=home,
        secrets=secrets,
        predefined={
            "CI_COMMIT_REF_SLUG": ref_slug,
            "CI_COMMIT_SHORT_SHA": "1234abcd",
            "CI_COMMIT_SHA": "1234abcd" + "0" * 32,
            **predefined,
        },
        path_prefix=[str(stub_dir)],
    )


def buildctl_pairs(record: Path) -> list[tuple[str, str]]:
    args = record.read_text().splitlines()
    assert args[:3] == ["build", "--frontend", "dockerfile.v0"]
    return list(zip(args[1::2], args[2::2], strict=False))


def test_build_job_pushes_records_the_digest_and_caches_in_the_project_registry(tmp_path: Path) -> None:
    record = tmp_path / "buildctl-args"
    config_copy = tmp_path / "config-copy.json"
    stub_dir = buildctl_stub(
        tmp_path,
        f'printf "%s\\n" "$@" > "{record}"',
        f'cp "$HOME/.docker/config.json" "{config_copy}"',
        f'stat -c %a "$HOME/.docker/config.json" > "{record}.mode"',
    )
    registry_password = "glcbt-TestOnlyJobToken-77"
    runner = build_runner(
        tmp_path,
        stub_dir,
        {"DOCKERHUB_TOKEN": DOCKERHUB_TOKEN},
        "main",
        CI_REGISTRY="registry.gitlab.example",
        CI_REGISTRY_IMAGE="registry.gitlab.example/acme/webapp",
        CI_REGISTRY_USER="gitlab-ci-token",
        CI_REGISTRY_PASSWORD=registry_password,
    )
    runner.never_printed.append(registry_password)
    assert runner.env_for(JOB_BUILD)["BUILDKITD_FLAGS"] == "--oci-worker-no-process-sandbox"
    build = runner.run(JOB_BUILD)
    assert build.returncode == 0, build.stderr
    # Docker Hub for the image, the job token for the project's registry.
    config = json.loads(config_copy.read_text())
    assert config == {
        "auths": {
            "https://index.docker.io/v1/": {"auth": DOCKERHUB_TOKEN},
            "registry.gitlab.example": {"auth": "Z2l0bGFiLWNpLXRva2VuOmdsY2J0LVRlc3RPbmx5Sm9iVG9rZW4tNzc="},
        }
    }
    assert Path(f"{record}.mode").read_text().strip() == "600"
    pairs = buildctl_pairs(record)
    assert ("--local", "context=.") in pairs and ("--local", "dockerfile=.") in pairs
    assert ("--output", "type=image,name=docker.io/acme/webapp:main-1234abcd,push=true") in pairs
    cache = "registry.gitlab.example/acme/webapp/buildcache"
    # A failed cache export leaves the pushed image alone.
    assert dict(pairs)["--export-cache"] == f"type=registry,ref={cache},mode=max,ignore-error=true"
    assert dict(pairs)["--import-cache"] == f"type=registry,ref={cache}"
    opts = [value for flag, value in pairs if flag == "--opt"]
    assert opts == ["build-arg:COMMIT_HASH=1234abcd", "label:org.opencontainers.image.revision=1234abcd" + "0" * 32]
    # The digest BuildKit reported goes to update-manifest as one line of a plain artifact file.
    digest = fake_digest("1234abcd" + "0" * 32)
    assert (runner.project_dir / DIGEST_FILE).read_text() == f"{digest}\n"
    assert f"Pushed docker.io/acme/webapp:main-1234abcd@{digest}" in build.stdout


def test_build_job_without_a_registry_builds_without_a_cache(tmp_path: Path) -> None:
    record = tmp_path / "buildctl-args"
    config_copy = tmp_path / "config-copy.json"
    stub_dir = buildctl_stub(tmp_path, f'printf "%s\\n" "$@" > "{record}"', f'cp "$HOME/.docker/config.json" "{config_copy}"')
    # The project's container registry is off: GitLab leaves CI_REGISTRY* empty.
    build = build_runner(tmp_path, stub_dir, {"DOCKERHUB_TOKEN": DOCKERHUB_TOKEN}, "main").run(JOB_BUILD)
    assert build.returncode == 0, build.stderr
    assert "without a layer cache" in build.stdout
    flags = {flag for flag, _ in buildctl_pairs(record)}
    assert "--export-cache" not in flags and "--import-cache" not in flags
    assert json.loads(config_copy.read_text()) == {"auths": {"https://index.docker.io/v1/": {"auth": DOCKERHUB_TOKEN}}}


def test_build_job_fails_without_a_digest(tmp_path: Path) -> None:
    # A BuildKit that wrote no metadata: nothing to pin, so no digest file and a failed job.
    stub_dir = buildctl_stub(tmp_path, "exit 0")
    runner = build_runner(tmp_path, stub_dir, {"DOCKERHUB_TOKEN": DOCKERHUB_TOKEN}, "main")
    build = runner.run(JOB_BUILD)
    assert build.returncode != 0
    assert "IMAGE_DIGEST is missing" in build.stderr
    assert not (runner.project_dir / DIGEST_FILE).exists()


def test_build_check_builds_and_pushes_nothing(tmp_path: Path) -> None:
    """The merge-request build check runs the stand-in with push=false and no credential."""
    record = tmp_path / "buildctl-args"
    stub_dir = buildctl_stub(tmp_path, f'printf "%s\\n" "$@" > "{record}"', f'env > "{record}.env"')
    runner = build_runner(tmp_path, stub_dir, {}, "feature-x")
    check = runner.run(JOB_BUILD_CHECK)
    assert check.returncode == 0, check.stderr
    pairs = dict(buildctl_pairs(record))
    assert pairs["--output"] == "type=image,name=docker.io/acme/webapp:feature-x-1234abcd,push=false"
    assert "--export-cache" not in pairs and "--metadata-file" not in pairs
    # No registry login was written, and no deploy credential was in its environment.
    assert not (runner.home / ".docker" / "config.json").exists()
    names = {line.split("=", 1)[0] for line in Path(f"{record}.env").read_text().splitlines() if "=" in line}
    assert not names & set(SECRET_VARIABLES)


def test_build_runner_tags_go_to_the_trusted_build_only() -> None:
    document = yaml.safe_load(render_pipeline(make_spec(build_runner_tags=("buildkit", "privileged"))))
    assert document[JOB_BUILD]["tags"] == ["buildkit", "privileged"]
    # Merge requests run unreviewed Dockerfiles: never on the runners that build the default branch.
    assert "tags" not in document[JOB_BUILD_CHECK]
    assert "tags" not in document[JOB_UPDATE_MANIFEST]
    assert "tags" not in yaml.safe_load(render_pipeline(make_spec()))[JOB_BUILD]
    both = yaml.safe_load(render_pipeline(make_spec(build_runner_tags=("buildkit",), build_check_runner_tags=("untrusted",))))
    assert both[JOB_BUILD]["tags"] == ["buildkit"] and both[JOB_BUILD_CHECK]["tags"] == ["untrusted"]
    with pytest.raises(ValueError, match="build_runner_tags"):
        make_spec(build_runner_tags=(" ",))
    # A runner takes every job whose tags are a subset of its own.
    with pytest.raises(ValueError, match="subset"):
        make_spec(build_runner_tags=("buildkit", "privileged"), build_check_runner_tags=("buildkit",))
    deploy = yaml.safe_load(render_pipeline(make_spec(build_runner_tags=("buildkit",), deploy_runner_tags=("gitops-deploy",))))
    assert deploy[JOB_UPDATE_MANIFEST]["tags"] == ["gitops-deploy"] and "tags" not in deploy[JOB_BUILD_CHECK]
    for build, check, deploy_tags in (((), ("d",), ("d", "x")), (("b",), (), ("b", "d")), (("b", "d"), (), ("d",))):
        with pytest.raises(ValueError, match="subset"):
            make_spec(build_runner_tags=build, build_check_runner_tags=check, deploy_runner_tags=deploy_tags)


# --------------------------------------------------------------------------- gitlab-ci-local runs


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
def test_gitlab_ci_local_shell_run_of_the_pipeline(
    tmp_path: Path, ssh_server: SshServer, mr_api: FakeMergeRequestApi, mode: str
) -> None:
    """gitlab-ci-local runs both jobs, handing the digest over as a plain artifact file."""
    require_tool("rsync")  # gitlab-ci-local copies the checkout with it
    bare = tmp_path / "chart.git"
    app, tag = app_repo(tmp_path, make_spec(manifest_ssh_url=ssh_server.url(bare), merge_request_via=mode))
    manifest = seed_manifest(tmp_path)
    log = record_push_options(manifest)
    key = tmp_path / "SSH_PRIVATE_KEY"
    shutil.copy(ssh_server.client_key, key)
    # Scoped as the program registers them: the deploy secrets to the one job's environment.
    variables: dict[str, Any] = {
        "SSH_PRIVATE_KEY": {"type": "file", "values": {ENVIRONMENT_MANIFEST: key.read_text()}},
        "SSH_KNOWN_HOSTS": str(ssh_server.known_hosts),
        "DOCKERHUB_TOKEN": DOCKERHUB_TOKEN,
        "RETRY_DELAY": "0",
    }
    if mode == API:
        variables["GITLAB_PRIVATE_TOKEN"] = {"type": "variable", "values": {ENVIRONMENT_MANIFEST: GITLAB_TOKEN}}
    (app / ".gitlab-ci-local-variables.yml").write_text(yaml.safe_dump(variables))
    stub_dir = buildctl_stub(tmp_path)
    out = _gitlab_ci_local(
        app,
        tmp_path / "home",
        "--force-shell-executor",
        "--variable",
        f"CI_API_V4_URL={mr_api.base_url}",
        # GitLab's copy of the app repository, which update-manifest clones for the ancestry check.
        "--variable",
        f"CI_REPOSITORY_URL=file://{app}",
        JOB_BUILD,
        JOB_UPDATE_MANIFEST,
        path_prefix=stub_dir,
    )
    assert GITLAB_TOKEN not in out
    commit = git("rev-parse", "HEAD", cwd=app).strip()
    chart = chart_at(manifest.bare, DEPLOY_BRANCH)
    assert chart["appVersion"] == tag
    assert chart["annotations"] == {DIGEST_ANNOTATION: fake_digest(commit), COMMIT_ANNOTATION: commit}
    assert refs(manifest.bare)["refs/heads/main"] == manifest.head
    if mode == API:
        assert [(mr.source_branch, mr.title) for mr in mr_api.merge_requests] == [(DEPLOY_BRANCH, f"Deploy {tag}")]
        assert mr_api.requests[0].headers.get("PRIVATE-TOKEN") == GITLAB_TOKEN
    else:
        assert pushes_logged(log) == [expected_push_options(commit)]
        assert mr_api.requests == []


def seed_shared_manifest(root: Path, charts: dict[str, ChartSpec]) -> Manifest:
    """A manifest project holding several apps' starter charts, each in its own directory."""
    files = {f"{directory}/{name}": text for directory, spec in charts.items() for name, text in render_chart(spec).items()}
    return seed_repository(root, "shared-charts", files)


def test_apps_sharing_a_manifest_project_each_bump_only_their_own_chart(
    tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi, program: Any
) -> None:
    # The pipelines the program commits for the example stack's two apps on platform-charts.
    teams = program(stack="teams")
    assert teams.error is None, teams.error
    rendered = {
        app: yaml.safe_load(teams.named(f"{app}-pipeline-file")["inputs"]["content"])["variables"]
        for app in ("orders", "payments")
    }
    assert rendered["orders"]["MANIFEST_SSH_URL"] == rendered["payments"]["MANIFEST_SSH_URL"]
    assert rendered["orders"]["DEPLOY_BRANCH"] != rendered["payments"]["DEPLOY_BRANCH"]
    charts = {app: posixpath.dirname(rendered[app]["CHART_FILE"]) for app in rendered}
    assert charts == {"orders": "orders", "payments": "payments"}
    manifest = seed_shared_manifest(
        tmp_path,
        {charts[app]: ChartSpec(name=app, image_repository=rendered[app]["IMAGE_REPOSITORY"]) for app in rendered},
    )
    before = {app: chart_file_at(manifest.bare, "main", rendered[app]["CHART_FILE"]) for app in rendered}

    commits = {}
    for app in ("orders", "payments"):
        root = tmp_path / app
        root.mkdir()
        repo = make_app(root)
        commits[app] = repo.commit(f"{app} change")
        runner = runner_factory(
            manifest,
            repo,
            commits[app],
            chart_file=rendered[app]["CHART_FILE"],
            deploy_branch=rendered[app]["DEPLOY_BRANCH"],
            image_repository=rendered[app]["IMAGE_REPOSITORY"],
        )
        # One after the other, as two app projects' pipelines would run.
        result = runner.deliver()
        assert result.returncode == 0, result.stderr

    assert set(refs(manifest.bare)) == {"refs/heads/main", *(f"refs/heads/{rendered[a]['DEPLOY_BRANCH']}" for a in rendered)}
    assert refs(manifest.bare)["refs/heads/main"] == manifest.head
    for app, other in (("orders", "payments"), ("payments", "orders")):
        branch = rendered[app]["DEPLOY_BRANCH"]
        changed = git("--git-dir", str(manifest.bare), "diff", "--name-only", "main", branch).split()
        # Each deploy branch touches its own chart's Chart.yaml and nothing else.
        assert changed == [rendered[app]["CHART_FILE"]]
        bumped = chart_file_at(manifest.bare, branch, rendered[app]["CHART_FILE"])
        assert bumped["appVersion"] == f"main-{commits[app][:8]}"
        assert bumped["annotations"][COMMIT_ANNOTATION] == commits[app]
        assert chart_file_at(manifest.bare, branch, rendered[other]["CHART_FILE"]) == before[other]
    # One merge request per app, each from its own branch.
    assert sorted(mr.source_branch for mr in mr_api.merge_requests) == sorted(rendered[a]["DEPLOY_BRANCH"] for a in rendered)


def chart_file_at(bare: Path, ref: str, path: str) -> dict[str, Any]:
    """A Chart.yaml at ``path`` on ``ref``."""
    chart: dict[str, Any] = yaml.safe_load(git("--git-dir", str(bare), "show", f"{ref}:{path}"))
    return chart
