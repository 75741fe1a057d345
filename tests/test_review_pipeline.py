"""The repository's own GitLab pipeline: valid, the right jobs on the right events, sound scripts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import REPO_ROOT, readme_blocks, require_tool

CI_FILE = REPO_ROOT / ".gitlab-ci.yml"
JOBS = {"test", "preview", "deploy"}
PULUMI_JOBS = ("preview", "deploy")
# Top-level keys of .gitlab-ci.yml that are not jobs.
GLOBAL_KEYS = {
    "stages",
    "variables",
    "workflow",
    "default",
    "include",
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
}
# The shell a GitLab runner picks in each image: bash wherever the image has it.
IMAGE_SHELLS = [
    (re.compile(r"^python:3\.\d+(\.\d+)?-slim-(bookworm|trixie)$"), "bash"),
    (re.compile(r"^pulumi/pulumi-python(-3\.\d+)?:3\.\d+\.\d+$"), "bash"),
]
GIT_IDENTITY = ["-c", "user.name=CI Test", "-c", "user.email=ci-test@example.invalid"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus GitLab's own variables, which would leak into gitlab-ci-local."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GITLAB_"))}
    env.update(extra)
    return env


@pytest.fixture
def ci_repo(tmp_path: Path) -> Path:
    """A scratch git repository on `main` holding only the pipeline file."""
    git = require_tool("git")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(CI_FILE, repo / ".gitlab-ci.yml")
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", ".gitlab-ci.yml"],
        [*GIT_IDENTITY, "commit", "-q", "-m", "pipeline"],
    ):
        subprocess.run([git, *args], cwd=repo, check=True, env=clean_env())
    return repo


def gitlab_ci_local(repo: Path, *args: str) -> str:
    tool = require_tool("gitlab-ci-local")
    result = subprocess.run(
        [tool, "--home", str(repo.parent / "gcl-home"), "--no-color", *args],
        cwd=repo,
        check=False,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def listed_jobs(repo: Path, *args: str) -> dict[str, str]:
    """Job name -> `when` as gitlab-ci-local evaluates the rules (never included)."""
    out = gitlab_ci_local(repo, "--list-json", *args)
    # Warnings about overridden predefined variables come first, on stdout.
    start = out.find("\n[") + 1 if not out.startswith("[") else 0
    return {job["name"]: job["when"] for job in json.loads(out[start:])}


@pytest.fixture
def expanded(ci_repo: Path) -> dict[str, Any]:
    """The pipeline with `extends` resolved, as GitLab would see it."""
    config: dict[str, Any] = yaml.safe_load(gitlab_ci_local(ci_repo, "--preview"))
    return config


def jobs_of(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: body for name, body in config.items() if name not in GLOBAL_KEYS and not name.startswith(".")}


def image_of(job: dict[str, Any]) -> str:
    image = job["image"]
    return str(image["name"] if isinstance(image, dict) else image)


def shell_for(image: str) -> str:
    for pattern, shell in IMAGE_SHELLS:
        if pattern.fullmatch(image):
            return shell
    raise AssertionError(f"no known shell for image {image!r}; add it to IMAGE_SHELLS")


def main_script(job: dict[str, Any]) -> str:
    """before_script and script as one runner shell session, stopping at the first failure."""
    lines = [*job.get("before_script", []), *job["script"]]
    return "set -e\n" + "\n".join(lines) + "\n"


def test_schema_accepts_the_pipeline() -> None:
    tool = require_tool("check-jsonschema")
    result = subprocess.run(
        [
            tool,
            "--builtin-schema",
            "vendor.gitlab-ci",
            "--data-transform",
            "gitlab-ci",
            str(CI_FILE),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gitlab_ci_local_lists_the_three_jobs(ci_repo: Path) -> None:
    assert set(listed_jobs(ci_repo)) == JOBS
    # The plain table as well: its first column holds the jobs that run on a push to main.
    table = gitlab_ci_local(ci_repo, "--list").splitlines()
    header = next(i for i, line in enumerate(table) if line.split()[:1] == ["name"])
    assert {line.split()[0] for line in table[header + 1 :] if line.strip()} == {
        "test",
        "deploy",
    }


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            "push-default-branch",
            {"test": "on_success", "preview": "never", "deploy": "manual"},
        ),
        (
            "push-feature-branch",
            {"test": "on_success", "preview": "never", "deploy": "never"},
        ),
        (
            # Any branch's MR: the branch's own code runs, so the tests only.
            "merge-request",
            {"test": "on_success", "preview": "never", "deploy": "never"},
        ),
        (
            # A protected branch (only maintainers push) with an open MR: the preview runs.
            "push-protected-branch-with-mr",
            {"test": "on_success", "preview": "on_success", "deploy": "never"},
        ),
    ],
)
def test_rules_pick_jobs_per_event(ci_repo: Path, event: str, expected: dict[str, str]) -> None:
    args: list[str] = []
    if event != "push-default-branch":
        git = require_tool("git")
        subprocess.run(
            [git, "checkout", "-q", "-b", "feature"],
            cwd=ci_repo,
            check=True,
            env=clean_env(),
        )
    if event == "merge-request":
        # An MR pipeline has no CI_COMMIT_BRANCH, only the MR variables.
        args = [
            "--unset-variable",
            "CI_COMMIT_BRANCH",
            "--variable",
            "CI_PIPELINE_SOURCE=merge_request_event",
            "--variable",
            "CI_MERGE_REQUEST_IID=7",
        ]
    if event.endswith("-with-mr"):
        args = ["--variable", "CI_OPEN_MERGE_REQUESTS=acme/bootstrap!7"]
        if event.startswith("push-protected"):
            args += ["--variable", "CI_COMMIT_REF_PROTECTED=true"]
    assert listed_jobs(ci_repo, *args) == expected


def test_rules_not_only(expanded: dict[str, Any]) -> None:
    for name, job in jobs_of(expanded).items():
        assert "only" not in job and "except" not in job, name
    assert expanded["preview"]["rules"] == [
        {
            "if": '$CI_COMMIT_BRANCH && $CI_COMMIT_BRANCH != $CI_DEFAULT_BRANCH && $CI_COMMIT_REF_PROTECTED == "true"'
            " && $CI_OPEN_MERGE_REQUESTS"
        }
    ]
    assert expanded["deploy"]["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", "when": "manual"}]
    # An unprotected branch with an open MR gets no branch pipeline: its MR pipeline runs the tests.
    workflow = yaml.safe_load(CI_FILE.read_text())["workflow"]["rules"]
    unprotected_with_mr = '$CI_COMMIT_BRANCH && $CI_OPEN_MERGE_REQUESTS && $CI_COMMIT_REF_PROTECTED != "true"'
    assert {"if": unprotected_with_mr, "when": "never"} in workflow


def test_images_are_pinned(expanded: dict[str, Any]) -> None:
    jobs = jobs_of(expanded)
    assert set(jobs) == JOBS
    for name, job in jobs.items():
        image = image_of(job)
        tag = image.rpartition(":")[2]
        assert tag != image and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
        shell_for(image)
    assert {image_of(jobs[name]) for name in PULUMI_JOBS} == {image_of(jobs["preview"])}
    assert image_of(jobs["preview"]).startswith("pulumi/pulumi-python")


def test_job_scripts_pass_shellcheck(expanded: dict[str, Any], tmp_path: Path) -> None:
    shellcheck = require_tool("shellcheck")
    for name, job in jobs_of(expanded).items():
        shell = shell_for(image_of(job))
        sections = {"main": main_script(job)}
        if job.get("after_script"):
            sections["after"] = "\n".join(job["after_script"]) + "\n"
        for section, text in sections.items():
            path = tmp_path / f"{name}-{section}.sh"
            path.write_text(text)
            result = subprocess.run(
                [shellcheck, "-s", shell, str(path)],
                check=False,
                capture_output=True,
                text=True,
            )
            assert result.returncode == 0, f"{name} ({section}, {shell}):\n{result.stdout}{result.stderr}"


def test_test_job_runs_the_readme_lines(expanded: dict[str, Any]) -> None:
    assert expanded["test"]["script"] == readme_blocks("Tests")


def test_credentials_reach_only_the_pulumi_jobs(expanded: dict[str, Any]) -> None:
    jobs = jobs_of(expanded)
    # The test job declares no environment, so no environment-scoped variable reaches it.
    assert "environment" not in jobs["test"]
    assert jobs["preview"]["environment"] == {"name": "$STACK/preview", "action": "prepare"}
    assert jobs["deploy"]["environment"]["name"] == "$STACK"
    header = CI_FILE.read_text().split("\nstages:", 1)[0]
    for name in ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_BACKEND_URL", "GITLAB_TOKEN", "KUBECONFIG"):
        assert name in header
    assert "protected" in header and 'scope "dev/preview"' in header


def test_deploy_is_serialised_per_stack(expanded: dict[str, Any]) -> None:
    deploy = expanded["deploy"]
    assert "$STACK" in deploy["resource_group"]
    assert expanded["variables"]["STACK"] == "dev"


def test_no_pulumi_cloud_account_needed() -> None:
    text = CI_FILE.read_text()
    assert "PULUMI_ACCESS_TOKEN" not in text
    assert "app.pulumi.com" not in text


@pytest.fixture
def pulumi_stub(tmp_path: Path) -> tuple[Path, Path]:
    """A PATH directory whose `pulumi` only records its arguments, plus the record file."""
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    log = tmp_path / "pulumi.log"
    stub = bin_dir / "pulumi"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$PULUMI_STUB_LOG"\n')
    stub.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    return bin_dir, log


def run_job(
    expanded: dict[str, Any],
    name: str,
    stub: tuple[Path, Path],
    workdir: Path,
    **variables: str,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a Pulumi job's script with a recording `pulumi`, as the runner's shell would."""
    bash = require_tool("bash")
    bin_dir, log = stub
    workdir.mkdir()
    # The job installs requirements.txt; an empty one keeps this offline.
    (workdir / "requirements.txt").write_text("")
    script = workdir / "job.sh"
    script.write_text(main_script(expanded[name]))
    env = clean_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        PULUMI_STUB_LOG=str(log),
        CI_PROJECT_DIR=str(workdir),
    )
    # Pipeline variables in GitLab's precedence, each expanded against those before it.
    for key, value in {
        **expanded["variables"],
        **expanded[name].get("variables", {}),
        **variables,
    }.items():
        env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), str(value))
    env.pop("PULUMI_ACCESS_TOKEN", None)
    result = subprocess.run(
        [bash, str(script)],
        cwd=workdir,
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_pulumi_job_refuses_to_run_without_backend(
    expanded: dict[str, Any], pulumi_stub: tuple[Path, Path], tmp_path: Path
) -> None:
    result, calls = run_job(
        expanded,
        "preview",
        pulumi_stub,
        tmp_path / "job",
        PULUMI_CONFIG_PASSPHRASE="p4ssphrase",
    )
    assert result.returncode != 0
    assert "PULUMI_BACKEND_URL" in result.stderr
    assert calls == []


@pytest.mark.parametrize(
    ("job", "stack", "command"),
    [
        ("preview", None, "preview --diff --non-interactive --stack dev"),
        ("deploy", "prod", "up --yes --non-interactive --stack prod"),
    ],
)
def test_pulumi_job_logs_in_to_the_backend_and_selects_the_stack(
    expanded: dict[str, Any],
    pulumi_stub: tuple[Path, Path],
    tmp_path: Path,
    job: str,
    stack: str | None,
    command: str,
) -> None:
    variables = {
        "PULUMI_BACKEND_URL": "s3://state-bucket/bootstrap",
        "PULUMI_CONFIG_PASSPHRASE": "p4ssphrase",
    }
    if stack:
        variables["STACK"] = stack
    result, calls = run_job(expanded, job, pulumi_stub, tmp_path / "job", **variables)
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == [
        "login s3://state-bucket/bootstrap",
        f"stack select --create {stack or 'dev'}",
        command,
    ]
    # The job's Python is the venv it just built.
    assert (tmp_path / "job" / "venv" / "bin" / "python").exists()
