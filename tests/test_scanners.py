"""checkov on what the program generates: the rendered starter chart and both app pipelines.

Every failed check must be one the README's security model explains as not applicable.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from components.chart import ChartSpec
from components.pipeline import MERGE_REQUEST_VIA, render_pipeline
from tests.test_chart import render, write_chart
from tests.test_pipeline import make_spec
from tests.tools import REPO_ROOT, bump_chart, require_tool

# What checkov reports that does not apply here, or is a gap the README names, and why; the
# README repeats each reason.
NOT_APPLICABLE = {
    "CKV2_K8S_6": "the NetworkPolicies are the program's, outside the chart, so a merged change cannot remove them",
}


def checkov(directory: Path, framework: str) -> dict:
    tool = require_tool("checkov")
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(
        [tool, "-d", str(directory), "--framework", framework, "-o", "json", "--quiet", "--compact"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    # checkov exits 1 when a check fails; anything else is an error of its own.
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0
    return report


def failed_ids(report: dict) -> set[str]:
    return {check["check_id"] for check in report.get("results", {}).get("failed_checks", [])}


def test_checkov_on_the_rendered_chart(helm: ModuleType, tmp_path: Path) -> None:
    chart_dir = write_chart(ChartSpec(name="webapp", image_repository="docker.io/acme/webapp"), tmp_path / "chart")
    # As it runs pods: after the pipeline's first release, pinned to the pushed digest.
    bump_chart(chart_dir / "Chart.yaml", "main-4f2a9c1e", "sha256:" + "4f" * 32, "4f2a9c1e" + "0" * 32)
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    (rendered / "webapp.yaml").write_text("\n---\n".join(yaml.safe_dump(o) for o in render(helm, chart_dir)))
    report = checkov(rendered, "kubernetes")
    assert report["summary"]["passed"] > 50
    assert failed_ids(report) <= set(NOT_APPLICABLE), failed_ids(report) - set(NOT_APPLICABLE)


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
def test_checkov_on_the_app_pipeline(mode: str, tmp_path: Path) -> None:
    (tmp_path / ".gitlab-ci.yml").write_text(render_pipeline(make_spec(merge_request_via=mode)))
    report = checkov(tmp_path, "gitlab_ci")
    assert report["summary"]["passed"] > 10
    assert failed_ids(report) == set()


def test_checkov_catches_a_bad_pod(tmp_path: Path) -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bad", "namespace": "gitops-demo"},
        "spec": {"containers": [{"name": "c", "image": "nginx", "securityContext": {"privileged": True}}]},
    }
    (tmp_path / "pod.json").write_text(json.dumps(bad))
    assert "CKV_K8S_16" in failed_ids(checkov(tmp_path, "kubernetes"))


def test_the_readme_explains_each_exception() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for check, reason in NOT_APPLICABLE.items():
        line = next((line for line in readme.splitlines() if check in line), "")
        assert reason.split(":")[0].split(",")[0] in line, check
