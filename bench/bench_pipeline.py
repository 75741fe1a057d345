"""Counts the push-to-merge-request path of the generated app pipeline, for this tree and earlier revisions.

Static counts, read off the rendered `.gitlab-ci.yml` of each mode (no runner needed):

* job starts on a push to the default branch;
* package installs per run (script lines that run a package manager);
* network operations per run on the path that opens the first merge request: the runner's
  checkout of the app repository, each git command that talks to the manifest repository,
  each merge request API call, the image push, the deploy job's own clone of the app history, and
  each artifact upload or download (the digest: a dotenv report before, a plain file now)
  (error paths, retries and the "update an open merge request" calls are left out);
* the worst case from merge to sync on the demo stack without a webhook, 2 x
  `timeout.reconciliation` + jitter (the repo-server caches refs for one timeout), from the
  revision's `Pulumi.dev.yaml` and Argo CD's defaults (120 s, 60 s) where it sets none.

Usage (from the repository root)::

    venv/bin/python bench/bench_pipeline.py                 # this tree and b18478d^ (before the second loop)
    venv/bin/python bench/bench_pipeline.py --rev <rev> ... # other revisions
    venv/bin/python bench/bench_pipeline.py --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BRANCH_RULE = "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"
INSTALL = re.compile(r"\b(apk add|apt-get install|apt install|pip install|npm install)\b")
GIT_NETWORK = re.compile(r"\bgit (?:\"\$@\" )?(clone|ls-remote|fetch|push)\b")
# Argo CD's defaults when the stack sets nothing (argocd-cm docs: timeout.reconciliation 120s, jitter 60s).
ARGO_DEFAULT_TIMEOUT, ARGO_DEFAULT_JITTER = 120, 60
PREVIOUS = "b18478d^"


def _seconds(value: str | None, default: int) -> int:
    if not value:
        return default
    match = re.fullmatch(r"(\d+)([smh]?)", value.strip())
    if not match:
        raise ValueError(f"not a duration: {value!r}")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _first_path_lines(lines: list[str]) -> list[str]:
    """Script lines on the first-merge-request path: no helper definitions, no branches for an existing one."""
    kept = []
    for line in lines:
        if re.match(r"^\w+\(\) \{", line):
            continue  # a shell function definition: counted where it is called
        if line.startswith('if [ -n "$REMOTE_SHA" ]'):
            continue  # the deploy branch exists already: not the first merge request
        kept.append(line)
    return kept


def count(document: dict[str, Any]) -> dict[str, Any]:
    """The counts for one rendered pipeline."""

    def on_default_branch(job: Any) -> bool:
        return isinstance(job, dict) and "script" in job and any(r.get("if") == DEFAULT_BRANCH_RULE for r in job.get("rules", []))

    jobs = {name: job for name, job in document.items() if on_default_branch(job)}
    installs = network = 0
    detail: dict[str, int] = {}

    def add(kind: str, n: int = 1) -> None:
        nonlocal network
        detail[kind] = detail.get(kind, 0) + n
        network += n

    for job in jobs.values():
        lines = _first_path_lines([*job.get("before_script", []), *job["script"]])
        text = "\n".join(lines)
        installs += sum(len(INSTALL.findall(line)) for line in lines)
        # The alpine-based jobs installed their tools with apk: one index fetch plus the packages.
        add("package downloads", 2 * sum(len(INSTALL.findall(line)) for line in lines))
        if (job.get("variables") or {}).get("GIT_STRATEGY") != "none":
            add("runner checkout of the app")
        # The deploy job's own clone of the app history (HTTPS, with the job token).
        app_clones = [line for line in lines if "CI_REPOSITORY_URL" in line and GIT_NETWORK.search(line)]
        if app_clones:
            add("clone of the app history", len(app_clones))
        add("git over SSH", sum(len(GIT_NETWORK.findall(line)) for line in lines if line not in app_clones))
        # Merge request API: direct curl calls, or calls of a function that (through others) runs
        # curl; a function that runs several counts once, for the create call of a first MR.
        definitions = {
            match.group(1): match.group(2)
            for line in [*job.get("before_script", []), *job["script"]]
            for match in [re.match(r"^(\w+)\(\) \{(.*)", line)]
            if match
        }
        wrappers = {name for name, body in definitions.items() if re.search(r"\bcurl\b", body)}
        while True:
            more = {name for name, body in definitions.items() if any(re.search(rf"\b{w}\b", body) for w in wrappers)}
            if more <= wrappers:
                break
            wrappers |= more
        api_calls = sum(1 for line in lines if re.search(r"\$\(curl\b|^curl\b", line))
        api_calls += sum(
            1 for line in lines for w in wrappers if re.fullmatch(rf"{w}|.*\$\({w}\b.*", line) and "case" not in line
        )
        add("merge request API", api_calls)
        if "push=true" in text:
            add("image push")
        if job.get("artifacts"):
            add("artifact upload")
        add("artifact download", sum(1 for need in job.get("needs", []) if isinstance(need, dict) and need.get("artifacts")))
    return {"job_starts": len(jobs), "package_installs": installs, "network_operations": network, "detail": detail}


def _render(pipeline: Any, mode: str) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(pipeline.PipelineSpec)}
    kwargs = {
        "image_repository": "docker.io/acme/webapp",
        "manifest_ssh_url": "git@gitlab.com:acme/gitops-demo-chart.git",
        "manifest_project_id": "4242",
    }
    if "merge_request_via" in fields:
        kwargs["merge_request_via"] = mode
    elif mode != "api":
        raise LookupError("no push-options mode")
    return yaml.safe_load(pipeline.render_pipeline(pipeline.PipelineSpec(**kwargs)))


def measure_here() -> dict[str, Any]:
    """Counts for the tree this interpreter imports `components` from (run in a child per revision)."""
    from components import pipeline

    result: dict[str, Any] = {}
    for mode in ("api", "push-options"):
        try:
            result[mode] = count(_render(pipeline, mode))
        except LookupError:
            result[mode] = None
    dev = yaml.safe_load(Path("Pulumi.dev.yaml").read_text())["config"]
    timeout = _seconds(dev.get("gitops-bootstrap:argocdReconciliationTimeout"), ARGO_DEFAULT_TIMEOUT)
    jitter = _seconds(dev.get("gitops-bootstrap:argocdReconciliationJitter"), ARGO_DEFAULT_JITTER)
    result["merge_to_deploy_s"] = {"timeout": timeout, "jitter": jitter, "worst_case": 2 * timeout + jitter}
    return result


def measure(rev: str | None) -> dict[str, Any]:
    """Counts for a git revision (None: the working tree), computed in a child interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        where = ROOT
        if rev is not None:
            where = Path(tmp)
            paths = ["components", "Pulumi.dev.yaml"]
            if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}:starter"], capture_output=True).returncode == 0:
                paths.append("starter")
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *paths], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin"},
        ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", action="append", help=f"git revision to compare (default: {PREVIOUS})")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_here()))
        return
    revisions: list[str | None] = [*(args.rev or [PREVIOUS]), None]
    results = {rev or "this tree": measure(rev) for rev in revisions}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'revision':<14} {'mode':<13} {'job starts':>10} {'installs':>9} {'network ops':>12}  detail")
    for name, result in results.items():
        for mode in ("api", "push-options"):
            counts = result[mode]
            if counts is None:
                print(f"{name:<14} {mode:<13} {'(no such mode)':>33}")
                continue
            detail = ", ".join(f"{k} {v}" for k, v in counts["detail"].items() if v)
            print(
                f"{name:<14} {mode:<13} {counts['job_starts']:>10} {counts['package_installs']:>9}"
                f" {counts['network_operations']:>12}  {detail}"
            )
        merge = result["merge_to_deploy_s"]
        print(f"{name:<14} merge-to-deploy worst case {merge['worst_case']} s (2 x {merge['timeout']} s + {merge['jitter']} s)")


if __name__ == "__main__":
    main()
