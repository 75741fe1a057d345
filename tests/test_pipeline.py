"""The rendered app pipeline: schema, gitlab-ci-local, shellcheck, and real runs of its jobs.

The manifest jobs run their own script lines against a loopback sshd serving a bare
chart repository and a loopback HTTP server standing in for the GitLab MR API. For the
"push-options" mode the bare repository records the push options it receives.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml

from components.chart import ChartSpec, render_chart
from components.pipeline import (
    BRANCH_PREFIX,
    ENVIRONMENT_MANIFEST,
    ENVIRONMENT_MERGE_REQUEST,
    JOB_BUILD,
    JOB_BUILD_CHECK,
    JOB_OPEN_MR,
    JOB_UPDATE_MANIFEST,
    JOBS,
    MANIFEST_DOTENV,
    MERGE_REQUEST_VIA,
    SECRET_VARIABLES,
    STAGES,
    PipelineSpec,
    job_scripts,
    merge_request_jobs,
    pipeline_jobs,
    pipeline_stages,
    render_pipeline,
    required_variables,
)
from tests.tools import missing, require_tool

SSHD = "/usr/sbin/sshd"
PROJECT_ID = "4242"
GITLAB_TOKEN = "glpat-TestOnlyToken-9f3k2"
DOCKERHUB_TOKEN = "dXNlcjpka2NyX3BhdF9UZXN0T25seS04ZDJq"  # base64("user:dckr_pat_TestOnly-8d2j")
# A hand-written Chart.yaml for the appVersion spellings the job must read.
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
# What each mode's pipeline must consist of, spelled out rather than taken from the module.
EXPECTED_JOBS: dict[str, list[tuple[str, str]]] = {
    API: [("build-image", "build"), ("update-manifest", "update-manifest"), ("open-merge-request", "open-mr")],
    PUSH_OPTIONS: [("build-image", "build"), ("update-manifest", "update-manifest")],
}
EXPECTED_VARIABLES: dict[str, set[str]] = {
    API: {"DOCKERHUB_TOKEN", "SSH_PRIVATE_KEY", "SSH_KNOWN_HOSTS", "GITLAB_PRIVATE_TOKEN"},
    PUSH_OPTIONS: {"DOCKERHUB_TOKEN", "SSH_PRIVATE_KEY", "SSH_KNOWN_HOSTS"},
}
# Merge-request pipelines, in both modes.
EXPECTED_MR_JOBS: list[tuple[str, str]] = [("build-check", "build")]
MODE_JOBS = [(mode, job) for mode, jobs in EXPECTED_JOBS.items() for job, _ in [*jobs, *EXPECTED_MR_JOBS]]


def make_spec(**overrides: Any) -> PipelineSpec:
    values: dict[str, Any] = {
        "image_repository": "docker.io/acme/webapp",
        "manifest_ssh_url": "git@gitlab.com:acme/gitops-demo-chart.git",
        "manifest_project_id": PROJECT_ID,
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


def test_modes_are_exactly_the_two_ways() -> None:
    assert MERGE_REQUEST_VIA == (API, PUSH_OPTIONS)
    assert set(EXPECTED_JOBS) == set(MERGE_REQUEST_VIA)
    assert make_spec().merge_request_via == API
    assert list(JOBS) == [job for job, _ in EXPECTED_JOBS[API]]
    assert list(STAGES) == [stage for _, stage in EXPECTED_JOBS[API]]


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
def test_rendered_file_passes_gitlab_ci_schema(tmp_path: Path, mode: str) -> None:
    check = require_tool("check-jsonschema")
    ci_file = tmp_path / ".gitlab-ci.yml"
    ci_file.write_text(render_pipeline(make_spec(merge_request_via=mode)))
    result = subprocess.run(
        [
            check,
            "--builtin-schema",
            "vendor.gitlab-ci",
            "--data-transform",
            "gitlab-ci",
            str(ci_file),
        ],
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
    expected_jobs = [job for job, _ in EXPECTED_JOBS[mode]]
    assert document["stages"] == [stage for _, stage in EXPECTED_JOBS[mode]]
    assert list(pipeline_stages(spec)) == document["stages"]
    assert list(pipeline_jobs(spec)) == expected_jobs
    mr_jobs = [job for job, _ in EXPECTED_MR_JOBS]
    assert [key for key in document if key not in ("stages", "variables", *mr_jobs)] == expected_jobs
    assert list(merge_request_jobs(spec)) == mr_jobs
    check = document[JOB_BUILD_CHECK]
    assert check["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert check["image"] == document[JOB_BUILD]["image"] and check["stage"] == "build"
    # No credential, no push, no environment.
    check_text = "\n".join(check["script"])
    assert "push=false" in check_text and "push=true" not in check_text and "--export-cache" not in check_text
    assert not any(f"${name}" in check_text or f"${{{name}}}" in check_text for name in SECRET_VARIABLES)
    assert "environment" not in check
    variables = document["variables"]
    assert variables["IMAGE_TAG"] == "$CI_COMMIT_REF_SLUG-$CI_COMMIT_SHORT_SHA"
    assert variables["IMAGE_REPOSITORY"] == "docker.io/acme/webapp"
    assert variables["MANIFEST_PROJECT_ID"] == PROJECT_ID
    assert variables["MANIFEST_SSH_URL"] == "git@gitlab.com:acme/gitops-demo-chart.git"
    assert variables["MANIFEST_DEFAULT_BRANCH"] == "main"
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
    build = document[JOB_BUILD]
    assert build["image"]["entrypoint"] == [""]
    assert re.fullmatch(r"moby/buildkit:v\d+\.\d+\.\d+-rootless", build["image"]["name"])
    assert build["variables"]["BUILDKITD_FLAGS"] == "--oci-worker-no-process-sandbox"
    assert build["interruptible"] is True
    clone = [line for line in document[JOB_UPDATE_MANIFEST]["script"] if " clone " in line]
    assert len(clone) == 1
    assert '--depth 1 --branch "$MANIFEST_DEFAULT_BRANCH"' in clone[0]
    assert "ssh-keyscan" not in render_pipeline(spec)
    for job in expected_jobs[1:]:
        assert re.fullmatch(r"alpine:\d+\.\d+\.\d+", document[job]["image"])
        assert document[job]["retry"]["max"] >= 1
    # Only the API mode hands a dotenv report to a later job.
    artifacts = document[JOB_UPDATE_MANIFEST].get("artifacts")
    if mode == API:
        assert artifacts == {"reports": {"dotenv": MANIFEST_DOTENV}}
        assert document[JOB_OPEN_MR]["needs"] == [{"job": JOB_UPDATE_MANIFEST, "artifacts": True}]
    else:
        assert artifacts is None
        assert MANIFEST_DOTENV not in render_pipeline(spec)


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
def test_no_secret_in_rendered_file(mode: str) -> None:
    spec = make_spec(merge_request_via=mode)
    text = render_pipeline(spec)
    for secret in (
        GITLAB_TOKEN,
        DOCKERHUB_TOKEN,
        "BEGIN OPENSSH PRIVATE KEY",
        "glpat-",
        "dckr_pat",
    ):
        assert secret not in text
    # Secrets are only referenced, and never handed to echo or to a traced shell.
    for job, lines in job_scripts(spec).items():
        for line in lines:
            assert "set -x" not in line, (job, line)
            for name in SECRET_VARIABLES:
                if name in line:
                    assert not re.search(r"\becho\b[^;|]*\$\{?" + name, line), (
                        job,
                        line,
                    )


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
    pushes = [line for line in lines if "git push" in line]
    assert len(pushes) == 1
    push = pushes[0]
    for option in (
        "-o merge_request.create ",
        '-o "merge_request.target=$MANIFEST_DEFAULT_BRANCH" ',
        '-o "merge_request.title=Deploy image tag $IMAGE_TAG" ',
        "-o merge_request.remove_source_branch ",
    ):
        assert option in push
    assert '--force-with-lease="refs/heads/$MANIFEST_BRANCH:$REMOTE_SHA"' in push
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


def _gitlab_ci_local(cwd: Path, home: Path, *args: str) -> str:
    tool = require_tool("gitlab-ci-local")
    env = {**os.environ, "HOME": str(home)}
    env.pop("CI", None)  # gitlab-ci-local must treat the temp dir as a local checkout
    result = subprocess.run(
        [tool, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(params=MERGE_REQUEST_VIA)
def ci_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ci_checkout(tmp_path: Path, ci_mode: str) -> Path:
    checkout = tmp_path / "app"
    checkout.mkdir()
    (checkout / ".gitlab-ci.yml").write_text(render_pipeline(make_spec(merge_request_via=ci_mode)))
    git("init", "-q", "-b", "main", cwd=checkout)
    git("add", ".gitlab-ci.yml", cwd=checkout)
    git(
        "-c", "user.name=Dev", "-c", "user.email=dev@example.invalid",
        "commit", "-q", "-m", "Add pipeline",
        cwd=checkout,
    )  # fmt: skip
    return checkout


def test_gitlab_ci_local_lists_jobs_in_stage_order(ci_checkout: Path, ci_mode: str, tmp_path: Path) -> None:
    out = _gitlab_ci_local(ci_checkout, tmp_path / "home", "--list-csv")
    rows = [line.split(";") for line in out.strip().splitlines()]
    header, jobs = rows[0], rows[1:]
    name_col, stage_col, when_col = (
        header.index("name"),
        header.index("stage"),
        header.index("when"),
    )
    assert [(row[name_col], row[stage_col]) for row in jobs] == EXPECTED_JOBS[ci_mode]
    assert all(row[when_col] == "on_success" for row in jobs)

    listed = _gitlab_ci_local(ci_checkout, tmp_path / "home", "--list")
    positions = [listed.index(job) for job, _ in EXPECTED_JOBS[ci_mode]]
    assert positions == sorted(positions)
    assert (JOB_OPEN_MR in listed) == (ci_mode == API)


def test_gitlab_ci_local_skips_jobs_off_default_branch(ci_checkout: Path, ci_mode: str, tmp_path: Path) -> None:
    git("checkout", "-q", "-b", "feature/x", cwd=ci_checkout)
    out = _gitlab_ci_local(ci_checkout, tmp_path / "home", "--list-csv")
    assert out.strip().splitlines()[1:] == []
    everything = json.loads(_gitlab_ci_local(ci_checkout, tmp_path / "home", "--list-json"))
    expected = {job: "never" for job, _ in [*EXPECTED_JOBS[ci_mode], *EXPECTED_MR_JOBS]}
    assert {job["name"]: job["when"] for job in everything} == expected


def test_gitlab_ci_local_preview_keeps_stages_and_jobs(ci_checkout: Path, ci_mode: str, tmp_path: Path) -> None:
    preview = yaml.safe_load(_gitlab_ci_local(ci_checkout, tmp_path / "home", "--preview"))
    stages = [stage for stage in preview["stages"] if not stage.startswith(".")]
    assert stages == [stage for _, stage in EXPECTED_JOBS[ci_mode]]
    for job, stage in EXPECTED_JOBS[ci_mode]:
        assert preview[job]["stage"] == stage
    if ci_mode == API:
        assert stages == list(STAGES)
        assert preview[JOB_OPEN_MR]["needs"][0]["job"] == JOB_UPDATE_MANIFEST
    else:
        assert JOB_OPEN_MR not in preview
        assert "artifacts" not in preview[JOB_UPDATE_MANIFEST]


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
class FakeMergeRequestApi:
    """Answers POST /projects/:id/merge_requests like GitLab: 201, then 409 for an open one."""

    base_url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    open_source_branches: set[str] = field(default_factory=set)
    forced_status: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler_for(api: FakeMergeRequestApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length).decode()
            if self.headers.get("Content-Type", "").startswith("application/json"):
                form = {k: str(v) for k, v in json.loads(raw).items()}
            else:
                form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
            request = RecordedRequest("POST", self.path, dict(self.headers.items()), form)
            with api.lock:
                api.requests.append(request)
                if api.forced_status is not None:
                    self._answer(api.forced_status, {"message": "forced failure"})
                    return
                match = re.fullmatch(r"/api/v4/projects/([^/]+)/merge_requests", self.path)
                if not match:
                    self._answer(404, {"message": "404 Not Found"})
                    return
                if self.headers.get("PRIVATE-TOKEN") != GITLAB_TOKEN:
                    self._answer(401, {"message": "401 Unauthorized"})
                    return
                if not form.get("source_branch") or not form.get("target_branch"):
                    self._answer(400, {"message": "source_branch and target_branch required"})
                    return
                if form["source_branch"] in api.open_source_branches:
                    self._answer(
                        409,
                        {"message": ["Another open merge request already exists for this source branch"]},
                    )
                    return
                api.open_source_branches.add(form["source_branch"])
                self._answer(201, {"iid": len(api.open_source_branches), "state": "opened"})

    return Handler


@pytest.fixture
def mr_api() -> Iterator[FakeMergeRequestApi]:
    api = FakeMergeRequestApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(api))
    server.timeout = 5
    api.base_url = f"http://127.0.0.1:{server.server_address[1]}/api/v4"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------- running jobs


@dataclass
class Manifest:
    bare: Path
    head: str


def starter_chart(app_version: str = "0.0.0") -> dict[str, str]:
    """The project's own starter chart, as the manifest project is seeded with it."""
    return render_chart(
        ChartSpec(
            name="webapp",
            image_repository="docker.io/acme/webapp",
            app_version=app_version,
        )
    )


def seed_manifest(root: Path, chart_yaml: str | None = None) -> Manifest:
    files = starter_chart()
    if chart_yaml is not None:
        files["Chart.yaml"] = chart_yaml
    bare = root / "chart.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    work = root / "seed"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    for name, content in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(content)
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
        dotenv = self.project_dir / MANIFEST_DOTENV
        if job == JOB_OPEN_MR and dotenv.exists():
            for line in dotenv.read_text().splitlines():
                key, _, value = line.partition("=")
                env[key] = value
        env.update(self.secrets)
        env.update(self.overrides)
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


@pytest.fixture
def runner_factory(tmp_path: Path, ssh_server: SshServer, mr_api: FakeMergeRequestApi) -> Iterator[Any]:
    require_tool("curl")
    counter = iter(range(1, 1000))

    def make(manifest: Manifest, short_sha: str, known_hosts: Path | None = None, merge_request_via: str = API) -> Runner:
        index = next(counter)
        project = tmp_path / f"project-{index}"
        home = tmp_path / f"home-{index}"
        project.mkdir()
        home.mkdir()
        # File variables: the job receives paths; GitLab's files end in a newline.
        key_file = tmp_path / f"SSH_PRIVATE_KEY-{index}"
        key_material = ssh_server.client_key.read_text()
        key_file.write_text(key_material if key_material.endswith("\n") else key_material + "\n")
        key_file.chmod(0o644)  # as a runner writes it; the job must tighten its own copy
        hosts_file = tmp_path / f"SSH_KNOWN_HOSTS-{index}"
        shutil.copy(known_hosts or ssh_server.known_hosts, hosts_file)
        spec = make_spec(manifest_ssh_url=ssh_server.url(manifest.bare), merge_request_via=merge_request_via)
        secrets = {
            "SSH_PRIVATE_KEY": str(key_file),
            "SSH_KNOWN_HOSTS": str(hosts_file),
            "GITLAB_PRIVATE_TOKEN": GITLAB_TOKEN,
            "DOCKERHUB_TOKEN": DOCKERHUB_TOKEN,
        }
        return Runner(
            spec=spec,
            project_dir=project,
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
                "CI_COMMIT_SHORT_SHA": short_sha,
                "CI_COMMIT_SHA": short_sha + "0" * (40 - len(short_sha)),
                "CI_API_V4_URL": mr_api.base_url,
            },
            # Keep the retry loop bounded but quick under test.
            overrides={"RETRY_DELAY": "0"},
            never_printed=[line for line in key_material.splitlines()[1:-1] if len(line) > 20],
        )

    yield make


def chart_at(bare: Path, ref: str) -> dict[str, Any]:
    return yaml.safe_load(git("--git-dir", str(bare), "show", f"{ref}:Chart.yaml"))


def test_update_manifest_and_open_mr_end_to_end(tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi) -> None:
    manifest = seed_manifest(tmp_path)
    runner: Runner = runner_factory(manifest, "a1b2c3d4")
    tag = "main-a1b2c3d4"
    branch = f"{BRANCH_PREFIX}{tag}"

    update = runner.run(JOB_UPDATE_MANIFEST)
    assert update.returncode == 0, update.stderr
    after_first = refs(manifest.bare)
    assert set(after_first) == {"refs/heads/main", f"refs/heads/{branch}"}
    assert after_first["refs/heads/main"] == manifest.head
    assert chart_at(manifest.bare, branch)["appVersion"] == tag
    # Only the appVersion line changed; the rest of the chart is byte-for-byte the seed.
    diff = git("--git-dir", str(manifest.bare), "diff", "--unified=0", "main", branch)
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == ['-appVersion: "0.0.0"', f'+appVersion: "{tag}"']
    # One bot commit straight on top of the default branch.
    log = git("--git-dir", str(manifest.bare), "log", "--format=%P|%an|%ae", f"main..{branch}")
    assert log.strip().splitlines() == [f"{manifest.head}|Chart Bot|chart-bot@example.invalid"]
    assert (runner.project_dir / MANIFEST_DOTENV).read_text() == "MANIFEST_MR_NEEDED=true\n"

    open_mr = runner.run(JOB_OPEN_MR)
    assert open_mr.returncode == 0, open_mr.stderr
    assert len(mr_api.requests) == 1
    request = mr_api.requests[0]
    assert request.path == f"/api/v4/projects/{PROJECT_ID}/merge_requests"
    assert request.headers.get("PRIVATE-TOKEN") == GITLAB_TOKEN
    assert request.form["source_branch"] == branch
    assert request.form["target_branch"] == "main"
    assert tag in request.form["title"]
    assert request.form["remove_source_branch"] == "true"

    # A re-run of both jobs for the same tag succeeds and changes nothing.
    assert runner.run(JOB_UPDATE_MANIFEST).returncode == 0
    assert refs(manifest.bare) == after_first
    rerun_mr = runner.run(JOB_OPEN_MR)
    assert rerun_mr.returncode == 0, rerun_mr.stderr
    assert len(mr_api.requests) == 2
    assert mr_api.requests[1].form["source_branch"] == branch
    assert mr_api.open_source_branches == {branch}
    assert "already open" in rerun_mr.stdout


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


def expected_push_options(tag: str) -> list[str]:
    return [
        "merge_request.create",
        "merge_request.target=main",
        f"merge_request.title=Deploy image tag {tag}",
        "merge_request.remove_source_branch",
    ]


def test_push_options_open_the_merge_request_without_a_token(
    tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi
) -> None:
    manifest = seed_manifest(tmp_path)
    log = record_push_options(manifest)
    runner: Runner = runner_factory(manifest, "b0a710ad", merge_request_via=PUSH_OPTIONS)
    assert "GITLAB_PRIVATE_TOKEN" not in runner.secrets
    tag = "main-b0a710ad"
    branch = f"{BRANCH_PREFIX}{tag}"

    runner.predefined["CI_JOB_URL"] = "https://gitlab.example.invalid/acme/app/-/jobs/101"
    update = runner.run(JOB_UPDATE_MANIFEST)
    assert update.returncode == 0, update.stderr
    assert set(refs(manifest.bare)) == {"refs/heads/main", f"refs/heads/{branch}"}
    assert refs(manifest.bare)["refs/heads/main"] == manifest.head
    assert chart_at(manifest.bare, branch)["appVersion"] == tag
    assert pushes_logged(log) == [expected_push_options(tag)]
    assert not (runner.project_dir / MANIFEST_DOTENV).exists()
    assert mr_api.requests == []

    # A re-run for the same tag succeeds and asks again; GitLab keeps the one open MR.
    runner.predefined["CI_JOB_URL"] = "https://gitlab.example.invalid/acme/app/-/jobs/102"
    rerun = runner.run(JOB_UPDATE_MANIFEST)
    assert rerun.returncode == 0, rerun.stderr
    assert set(refs(manifest.bare)) == {"refs/heads/main", f"refs/heads/{branch}"}
    assert refs(manifest.bare)["refs/heads/main"] == manifest.head
    assert chart_at(manifest.bare, branch)["appVersion"] == tag
    assert pushes_logged(log) == [expected_push_options(tag)] * 2
    # Still a single bot commit on top of the default branch, now from the second job.
    commits = git("--git-dir", str(manifest.bare), "log", "--format=%P|%B", f"main..{branch}")
    assert commits.count(f"{manifest.head}|") == 1
    assert "jobs/102" in commits and "jobs/101" not in commits
    assert mr_api.requests == []


def test_push_options_refused_by_gitlab_fails_the_job(tmp_path: Path, runner_factory: Any) -> None:
    manifest = seed_manifest(tmp_path)
    log = record_push_options(manifest)
    runner: Runner = runner_factory(manifest, "0ddba110", merge_request_via=PUSH_OPTIONS)
    Path(f"{log}.refuse").touch()
    update = runner.run(JOB_UPDATE_MANIFEST)
    assert update.returncode != 0
    assert "remote: Error encountered with push options" in update.stdout + update.stderr
    assert "GitLab did not open the merge request" in update.stderr
    # Once GitLab accepts, a re-run succeeds: it pushes, and so asks, again.
    Path(f"{log}.refuse").unlink()
    runner.predefined["CI_JOB_URL"] = "https://gitlab.example.invalid/acme/app/-/jobs/7"
    rerun = runner.run(JOB_UPDATE_MANIFEST)
    assert rerun.returncode == 0, rerun.stderr
    assert pushes_logged(log) == [expected_push_options("main-0ddba110")] * 2


def test_push_options_default_branch_already_at_tag_pushes_nothing(tmp_path: Path, runner_factory: Any) -> None:
    manifest = seed_manifest(tmp_path, CHART_SEED.replace('"0.0.0"', '"main-5eed5eed"'))
    log = record_push_options(manifest)
    runner: Runner = runner_factory(manifest, "5eed5eed", merge_request_via=PUSH_OPTIONS)
    update = runner.run(JOB_UPDATE_MANIFEST)
    assert update.returncode == 0, update.stderr
    assert "main already has appVersion main-5eed5eed" in update.stdout
    assert set(refs(manifest.bare)) == {"refs/heads/main"}
    assert pushes_logged(log) == []
    assert not (runner.project_dir / MANIFEST_DOTENV).exists()


def test_ssh_key_file_is_copied_with_tight_mode(tmp_path: Path, runner_factory: Any) -> None:
    manifest = seed_manifest(tmp_path)
    runner: Runner = runner_factory(manifest, "0badcafe")
    key_path = Path(runner.secrets["SSH_PRIVATE_KEY"])
    assert runner.run(JOB_UPDATE_MANIFEST).returncode == 0
    # The runner's file is left as given; ssh accepted the job's own 0400 copy.
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o644
    assert f"refs/heads/{BRANCH_PREFIX}main-0badcafe" in refs(manifest.bare)


def test_wrong_host_key_fails_and_pushes_nothing(
    tmp_path: Path,
    runner_factory: Any,
    ssh_server: SshServer,
    mr_api: FakeMergeRequestApi,
) -> None:
    manifest = seed_manifest(tmp_path)
    before = refs(manifest.bare)
    runner: Runner = runner_factory(manifest, "deadbeef", known_hosts=ssh_server.wrong_known_hosts)
    update = runner.run(JOB_UPDATE_MANIFEST)
    assert update.returncode != 0
    assert "Host key verification failed" in update.stderr
    assert refs(manifest.bare) == before
    assert mr_api.requests == []


def test_stale_branch_for_same_tag_is_replaced(tmp_path: Path, runner_factory: Any) -> None:
    manifest = seed_manifest(tmp_path)
    tag = "main-5ca1ab1e"
    branch = f"{BRANCH_PREFIX}{tag}"
    # Someone left the bot branch pointing at the unchanged chart.
    git("--git-dir", str(manifest.bare), "branch", branch, "main")
    runner: Runner = runner_factory(manifest, "5ca1ab1e")
    update = runner.run(JOB_UPDATE_MANIFEST)
    assert update.returncode == 0, update.stderr
    assert chart_at(manifest.bare, branch)["appVersion"] == tag
    assert refs(manifest.bare)["refs/heads/main"] == manifest.head


@pytest.mark.parametrize(
    "line",
    [
        'appVersion: "main-feedf00d"',
        "appVersion: main-feedf00d",
        "appVersion: 'main-feedf00d'  # set by CI",
    ],
)
def test_default_branch_already_at_tag_needs_no_branch_or_mr(
    tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi, line: str
) -> None:
    manifest = seed_manifest(tmp_path, CHART_SEED.replace('appVersion: "0.0.0"', line))
    runner: Runner = runner_factory(manifest, "feedf00d")
    update = runner.run(JOB_UPDATE_MANIFEST)
    assert update.returncode == 0, update.stderr
    assert set(refs(manifest.bare)) == {"refs/heads/main"}
    assert (runner.project_dir / MANIFEST_DOTENV).read_text() == "MANIFEST_MR_NEEDED=false\n"
    open_mr = runner.run(JOB_OPEN_MR)
    assert open_mr.returncode == 0, open_mr.stderr
    assert mr_api.requests == []


def test_chart_without_app_version_gets_one(tmp_path: Path, runner_factory: Any) -> None:
    manifest = seed_manifest(tmp_path, CHART_SEED.replace('appVersion: "0.0.0"\n', ""))
    runner: Runner = runner_factory(manifest, "c0ffee00")
    update = runner.run(JOB_UPDATE_MANIFEST)
    assert update.returncode == 0, update.stderr
    assert chart_at(manifest.bare, f"{BRANCH_PREFIX}main-c0ffee00")["appVersion"] == "main-c0ffee00"


@pytest.mark.parametrize("status", [400, 403, 422, 500])
def test_open_mr_fails_on_other_statuses(tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi, status: int) -> None:
    manifest = seed_manifest(tmp_path)
    runner: Runner = runner_factory(manifest, "abad1dea")
    mr_api.forced_status = status
    runner.overrides["CI_API_V4_URL"] = mr_api.base_url
    started = time.monotonic()
    open_mr = runner.run(JOB_OPEN_MR)
    assert open_mr.returncode != 0
    assert f"HTTP {status}" in open_mr.stderr
    assert mr_api.requests, "the job never reached the API"
    assert time.monotonic() - started < RUN_TIMEOUT


def test_open_mr_rejected_token_fails(tmp_path: Path, runner_factory: Any, mr_api: FakeMergeRequestApi) -> None:
    manifest = seed_manifest(tmp_path)
    runner: Runner = runner_factory(manifest, "7e57c0de")
    runner.secrets["GITLAB_PRIVATE_TOKEN"] = "glpat-not-the-right-one"
    open_mr = runner.run(JOB_OPEN_MR)
    assert open_mr.returncode != 0
    assert "HTTP 401" in open_mr.stderr
    assert mr_api.requests[0].headers.get("PRIVATE-TOKEN") == "glpat-not-the-right-one"


# --------------------------------------------------------------------------- build job


def buildctl_stub(tmp_path: Path, *lines: str) -> Path:
    """A PATH directory whose buildctl-daemonless.sh only runs ``lines``: a recording stand-in."""
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    stub = stub_dir / "buildctl-daemonless.sh"
    stub.write_text("#!/bin/sh\n" + "".join(f"{line}\n" for line in lines))
    stub.chmod(0o755)
    return stub_dir


def build_runner(tmp_path: Path, stub_dir: Path, secrets: dict[str, str], ref_slug: str) -> Runner:
    """A runner for the build jobs of commit 1234abcd on ``ref_slug``, with the stand-in first on PATH."""
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    return Runner(
        spec=make_spec(),
        project_dir=project,
        home=home,
        secrets=secrets,
        predefined={"CI_COMMIT_REF_SLUG": ref_slug, "CI_COMMIT_SHORT_SHA": "1234abcd", "CI_COMMIT_SHA": "1234abcd" + "0" * 32},
        path_prefix=[str(stub_dir)],
    )


def test_build_job_writes_registry_auth_and_calls_buildctl(tmp_path: Path) -> None:
    """Runs the build script with a recording stand-in for buildctl-daemonless.sh."""
    record = tmp_path / "buildctl-args"
    config_copy = tmp_path / "config-copy.json"
    stub_dir = buildctl_stub(
        tmp_path,
        f'printf "%s\\n" "$@" > "{record}"',
        f'cp "$HOME/.docker/config.json" "{config_copy}"',
        f'stat -c %a "$HOME/.docker/config.json" > "{record}.mode"',
    )
    runner = build_runner(tmp_path, stub_dir, {"DOCKERHUB_TOKEN": DOCKERHUB_TOKEN}, "main")
    assert runner.env_for(JOB_BUILD)["BUILDKITD_FLAGS"] == "--oci-worker-no-process-sandbox"
    build = runner.run(JOB_BUILD)
    assert build.returncode == 0, build.stderr
    config = json.loads(config_copy.read_text())
    assert config == {"auths": {"https://index.docker.io/v1/": {"auth": DOCKERHUB_TOKEN}}}
    assert Path(f"{record}.mode").read_text().strip() == "600"
    args = record.read_text().splitlines()
    assert args[:2] == ["build", "--frontend"] and args[2] == "dockerfile.v0"
    pairs = list(zip(args[1::2], args[2::2], strict=False))
    assert ("--local", "context=.") in pairs and ("--local", "dockerfile=.") in pairs
    assert (
        "--output",
        "type=image,name=docker.io/acme/webapp:main-1234abcd,push=true",
    ) in pairs
    export = dict(pairs)["--export-cache"]
    assert export.startswith("type=registry,ref=docker.io/acme/webapp:buildcache")
    # A failed cache export leaves the pushed image alone.
    assert export.endswith(",ignore-error=true")
    opts = [value for flag, value in pairs if flag == "--opt"]
    assert opts == ["build-arg:COMMIT_HASH=1234abcd", "label:org.opencontainers.image.revision=1234abcd" + "0" * 32]
    assert dict(pairs)["--import-cache"] == "type=registry,ref=docker.io/acme/webapp:buildcache"


@pytest.mark.parametrize("already_released", [False, True])
def test_gitlab_ci_local_shell_run_of_manifest_jobs(
    tmp_path: Path,
    ssh_server: SshServer,
    mr_api: FakeMergeRequestApi,
    already_released: bool,
) -> None:
    """gitlab-ci-local runs both manifest jobs, handing the dotenv report between them."""
    require_tool("rsync")  # gitlab-ci-local copies the checkout with it
    bare = tmp_path / "chart.git"
    app, tag = app_repo(tmp_path, make_spec(manifest_ssh_url=ssh_server.url(bare)))
    seeded_chart = starter_chart(tag)["Chart.yaml"] if already_released else None
    manifest = seed_manifest(tmp_path, seeded_chart)
    assert manifest.bare == bare
    key = tmp_path / "SSH_PRIVATE_KEY"
    shutil.copy(ssh_server.client_key, key)
    # Values that are paths of existing files become file variables.
    # Scoped as the program registers them: each deploy secret to its one job's environment.
    (app / ".gitlab-ci-local-variables.yml").write_text(
        yaml.safe_dump(
            {
                "SSH_PRIVATE_KEY": {"type": "file", "values": {ENVIRONMENT_MANIFEST: key.read_text()}},
                "SSH_KNOWN_HOSTS": str(ssh_server.known_hosts),
                "GITLAB_PRIVATE_TOKEN": {"type": "variable", "values": {ENVIRONMENT_MERGE_REQUEST: GITLAB_TOKEN}},
                "RETRY_DELAY": "0",
            }
        )
    )
    out = _gitlab_ci_local(
        app,
        tmp_path / "home",
        "--force-shell-executor",
        "--variable",
        f"CI_API_V4_URL={mr_api.base_url}",
        JOB_UPDATE_MANIFEST,
        JOB_OPEN_MR,
    )
    assert GITLAB_TOKEN not in out
    branch = f"{BRANCH_PREFIX}{tag}"
    if already_released:
        assert set(refs(manifest.bare)) == {"refs/heads/main"}
        assert mr_api.requests == []
        assert f"No merge request needed for {tag}" in out
    else:
        assert chart_at(manifest.bare, branch)["appVersion"] == tag
        assert [r.form["source_branch"] for r in mr_api.requests] == [branch]
        assert mr_api.requests[0].headers.get("PRIVATE-TOKEN") == GITLAB_TOKEN


def test_gitlab_ci_local_shell_run_with_push_options(tmp_path: Path, ssh_server: SshServer, mr_api: FakeMergeRequestApi) -> None:
    """gitlab-ci-local runs the push-options pipeline's manifest job with no API token defined."""
    require_tool("rsync")
    bare = tmp_path / "chart.git"
    app, tag = app_repo(tmp_path, make_spec(manifest_ssh_url=ssh_server.url(bare), merge_request_via=PUSH_OPTIONS))
    manifest = seed_manifest(tmp_path)
    log = record_push_options(manifest)
    key = tmp_path / "SSH_PRIVATE_KEY"
    shutil.copy(ssh_server.client_key, key)
    (app / ".gitlab-ci-local-variables.yml").write_text(
        yaml.safe_dump(
            {
                "SSH_PRIVATE_KEY": {"type": "file", "values": {ENVIRONMENT_MANIFEST: key.read_text()}},
                "SSH_KNOWN_HOSTS": str(ssh_server.known_hosts),
                "RETRY_DELAY": "0",
            }
        )
    )
    out = _gitlab_ci_local(app, tmp_path / "home", "--force-shell-executor", JOB_UPDATE_MANIFEST)
    assert f"Pushed {BRANCH_PREFIX}{tag} with appVersion {tag}" in out
    assert chart_at(manifest.bare, f"{BRANCH_PREFIX}{tag}")["appVersion"] == tag
    assert pushes_logged(log) == [expected_push_options(tag)]
    assert mr_api.requests == []


def test_build_runner_tags_go_to_the_build_job_only() -> None:
    document = yaml.safe_load(render_pipeline(make_spec(build_runner_tags=("buildkit", "privileged"))))
    assert document[JOB_BUILD]["tags"] == ["buildkit", "privileged"]
    assert "tags" not in document[JOB_UPDATE_MANIFEST]
    assert "tags" not in yaml.safe_load(render_pipeline(make_spec()))[JOB_BUILD]
    with pytest.raises(ValueError, match="build_runner_tags"):
        make_spec(build_runner_tags=(" ",))


def test_gitlab_ci_local_runs_only_the_build_check_for_merge_requests(ci_checkout: Path, ci_mode: str, tmp_path: Path) -> None:
    git("checkout", "-q", "-b", "feature/x", cwd=ci_checkout)
    args = ["--variable", "CI_PIPELINE_SOURCE=merge_request_event", "--variable", "CI_MERGE_REQUEST_IID=7"]
    out = _gitlab_ci_local(ci_checkout, tmp_path / "home", "--list-json", *args)
    # A warning about the overridden predefined variable comes first, on stdout.
    everything = json.loads(out[out.index("\n[") + 1 :] if not out.startswith("[") else out)
    running = {job["name"] for job in everything if job["when"] != "never"}
    assert running == {job for job, _ in EXPECTED_MR_JOBS}


def test_build_check_builds_and_pushes_nothing(tmp_path: Path) -> None:
    """Runs the merge-request build check with a recording stand-in for buildctl-daemonless.sh."""
    record = tmp_path / "buildctl-args"
    stub_dir = buildctl_stub(tmp_path, f'printf "%s\\n" "$@" > "{record}"', f'env > "{record}.env"')
    runner = build_runner(tmp_path, stub_dir, {}, "feature-x")
    home = runner.home
    check = runner.run(JOB_BUILD_CHECK)
    assert check.returncode == 0, check.stderr
    pairs = dict(zip(record.read_text().splitlines()[1::2], record.read_text().splitlines()[2::2], strict=False))
    assert pairs["--output"] == "type=image,name=docker.io/acme/webapp:feature-x-1234abcd,push=false"
    assert "--export-cache" not in pairs
    # No registry login was written, and no deploy credential was in its environment.
    assert not (home / ".docker" / "config.json").exists()
    names = {line.split("=", 1)[0] for line in Path(f"{record}.env").read_text().splitlines() if "=" in line}
    assert not names & set(SECRET_VARIABLES)
