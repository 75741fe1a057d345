"""Progressive delivery: Argo Rollouts from its pinned manifest, and a starter chart that renders a
Rollout for canary and blue-green, valid against the upstream CRD schema and allowed by the AppProject."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from components.app_project import app_project_spec, project_refusals
from components.chart import COMMIT_ANNOTATION, DIGEST_ANNOTATION, ChartSpec
from components.rollouts import (
    DELIVERY_STRATEGIES,
    ROLLOUTS_IMAGE,
    ROLLOUTS_NAMESPACE,
    ROLLOUTS_SHA256,
    prepare_rollouts,
)
from tests.conftest import ARGO_ROLLOUTS_MANIFEST, Run
from tests.engine_rules import CREATED, REPLACED, UNCHANGED, diff_runs
from tests.test_chart import KUBE_VERSION, NAMESPACE, assert_valid_kubernetes, render, write_chart
from tests.tools import bump_chart, missing

ROLLOUTS_PARENT = "gitops:argo:Rollouts"
REPO = "git@gitlab.com:acme-user/gitops-demo-chart.git"
# README.txt beside the pinned manifest: 15 documents of these kinds.
UPSTREAM_KINDS = {"ClusterRole": 4, "ClusterRoleBinding": 1, "ConfigMap": 1, "CustomResourceDefinition": 5}
UPSTREAM_KINDS |= {"Deployment": 1, "Secret": 1, "Service": 1, "ServiceAccount": 1}


def upstream() -> list[dict[str, Any]]:
    if not ARGO_ROLLOUTS_MANIFEST.is_file():
        missing("../shared/upstream/argo-rollouts/v1.9.1/install.yaml")
    data = ARGO_ROLLOUTS_MANIFEST.read_bytes()
    assert hashlib.sha256(data).hexdigest() == ROLLOUTS_SHA256
    return [d for d in yaml.safe_load_all(data) if d]


def rollout_schema() -> dict[str, Any]:
    crd = next(
        d for d in upstream() if d["kind"] == "CustomResourceDefinition" and d["metadata"]["name"] == "rollouts.argoproj.io"
    )
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


# --------------------------------------------------------------------------- the install


def test_prepare_sets_namespace_and_release_image_and_leaves_the_input_alone() -> None:
    docs = upstream()
    before = copy.deepcopy(docs)
    prepared = prepare_rollouts(docs, "rollouts-system")
    assert docs == before
    assert len(prepared) == sum(UPSTREAM_KINDS.values())
    for obj in prepared:
        namespaced = obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition")
        assert obj["metadata"].get("namespace") == ("rollouts-system" if namespaced else None), obj["metadata"]["name"]
    binding = next(o for o in prepared if o["kind"] == "ClusterRoleBinding")
    assert [s["namespace"] for s in binding["subjects"]] == ["rollouts-system"]
    controller = next(o for o in prepared if o["kind"] == "Deployment")
    assert [c["image"] for c in controller["spec"]["template"]["spec"]["containers"]] == [ROLLOUTS_IMAGE]
    assert ":latest" in yaml.safe_dump(before) and ":latest" not in yaml.safe_dump(prepared)


@pytest.mark.parametrize("strategy", ["canary", "blueGreen"])
def test_canary_and_blue_green_install_argo_rollouts(program: Callable[..., Run], strategy: str) -> None:
    run = program({"deliveryStrategy": strategy})
    assert run.error is None, run.error
    component = next(r for r in run.resources if r["type"] == ROLLOUTS_PARENT)
    children = [r for r in run.children(component["urn"]) if r["name"] != "argo-rollouts-namespace"]
    kinds: dict[str, int] = {}
    for child in children:
        kinds[child["inputs"]["kind"]] = kinds.get(child["inputs"]["kind"], 0) + 1
    assert kinds == UPSTREAM_KINDS
    namespace = run.named("argo-rollouts-namespace")["inputs"]["metadata"]["name"]
    assert namespace == ROLLOUTS_NAMESPACE
    controller = next(c for c in children if c["inputs"]["kind"] == "Deployment")["inputs"]
    assert controller["spec"]["template"]["spec"]["containers"][0]["image"] == ROLLOUTS_IMAGE
    # The first sync needs the Rollout CRD; destroy deletes the Application before the controller.
    application = run.named("application")
    assert {c["urn"] for c in children} <= set(application["dependencies"])
    # Switching back to rolling, or destroy, leaves the CRDs: deleting one would delete every
    # Rollout and the app's pods with it.
    for child in children:
        assert child["retain_on_delete"] is (child["inputs"]["kind"] == "CustomResourceDefinition"), child["name"]
    # The seeded chart says which strategy it renders.
    values = yaml.safe_load(run.named("chart/values.yaml")["inputs"]["content"])
    assert values["strategy"] == strategy


def test_rolling_installs_no_argo_rollouts(dev: Run) -> None:
    assert [r for r in dev.resources if r["type"] == ROLLOUTS_PARENT] == []
    assert yaml.safe_load(dev.named("chart/values.yaml")["inputs"]["content"])["strategy"] == "rolling"


def test_a_tampered_mirror_registers_nothing(program: Callable[..., Run], tmp_path: Path) -> None:
    mirror = tmp_path / "install.yaml"
    mirror.write_bytes(
        ARGO_ROLLOUTS_MANIFEST.read_bytes().replace(b":latest", b":v9.9.9") if ARGO_ROLLOUTS_MANIFEST.is_file() else b"x"
    )
    run = program({"deliveryStrategy": "canary", "argoRolloutsManifest": str(mirror)})
    assert run.error is not None and run.resources == []
    assert "checksum mismatch" in run.error["message"] and "argoRolloutsManifest" in run.error["message"]


def test_switching_an_existing_stack_to_canary_rewrites_no_chart_file(program: Callable[..., Run], dev: Run) -> None:
    canary = program({"deliveryStrategy": "canary"})
    changes = diff_runs(dev.resources, canary.resources)
    chart = {c.name: c.action for c in changes.values() if c.name.startswith("chart/")}
    assert chart and set(chart.values()) == {UNCHANGED}
    assert {c.action for c in changes.values()} <= {UNCHANGED, CREATED, "updated"}
    assert not [c for c in changes.values() if c.action == REPLACED]
    created = [c for c in changes.values() if c.action == CREATED]
    assert created and all("argo-rollouts" in c.name or c.type.startswith("kubernetes:apiextensions") for c in created)


# --------------------------------------------------------------------------- the chart


def chart_objects(helm: ModuleType, tmp_path: Path, spec: ChartSpec, released: bool) -> list[dict[str, Any]]:
    chart_dir = write_chart(spec, tmp_path / spec.strategy / str(released))
    if released:
        bump_chart(chart_dir / "Chart.yaml", "main-4f2a9c1e", "sha256:" + "4f" * 32, "4f2a9c1e" + "0" * 32)
    return render(helm, chart_dir)


@pytest.mark.parametrize("strategy", DELIVERY_STRATEGIES)
@pytest.mark.parametrize("released", [False, True])
def test_each_strategy_renders_valid_objects(
    helm: ModuleType, kubernetes_validate: ModuleType, tmp_path: Path, strategy: str, released: bool
) -> None:
    spec = ChartSpec(name="webapp", image_repository="docker.io/acme/webapp", strategy=strategy)
    objects = chart_objects(helm, tmp_path, spec, released)
    kinds = sorted(o["kind"] for o in objects)
    workload_kind = "Deployment" if strategy == "rolling" else "Rollout"
    services = 2 if strategy == "blueGreen" else 1
    assert kinds == sorted([workload_kind, *["Service"] * services])
    workload = next(o for o in objects if o["kind"] == workload_kind)
    assert workload["spec"]["replicas"] == (1 if released else 0)
    image = workload["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith("@sha256:" + "4f" * 32) == released
    if workload_kind == "Rollout":
        jsonschema.validate(workload, rollout_schema())
        assert_valid_kubernetes(kubernetes_validate, [o for o in objects if o["kind"] != "Rollout"])
    else:
        assert_valid_kubernetes(kubernetes_validate, objects)
    # Argo CD's AppProject for the app allows every kind every strategy renders.
    project = app_project_spec(REPO, NAMESPACE)
    for obj in objects:
        assert project_refusals(project, REPO, NAMESPACE, obj) == [], obj["kind"]


def test_canary_steps_and_blue_green_services(helm: ModuleType, tmp_path: Path) -> None:
    canary = chart_objects(helm, tmp_path, ChartSpec("webapp", "docker.io/acme/webapp", strategy="canary"), True)
    steps = next(o for o in canary if o["kind"] == "Rollout")["spec"]["strategy"]["canary"]["steps"]
    weights = [s["setWeight"] for s in steps if "setWeight" in s]
    assert weights == sorted(weights) and len(weights) >= 2 and all(0 < w < 100 for w in weights)
    assert all("pause" in steps[i + 1] for i, s in enumerate(steps) if "setWeight" in s)

    for seconds, enabled in ((0, False), (300, True)):
        spec = ChartSpec("webapp", "docker.io/acme/webapp", strategy="blueGreen", auto_promotion_seconds=seconds)
        objects = chart_objects(helm, tmp_path / str(seconds), spec, True)
        rollout = next(o for o in objects if o["kind"] == "Rollout")
        blue_green = rollout["spec"]["strategy"]["blueGreen"]
        services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
        assert set(services) == {blue_green["activeService"], blue_green["previewService"]} == {"webapp", "webapp-preview"}
        selector = rollout["spec"]["selector"]["matchLabels"]
        assert all(s["spec"]["selector"] == selector for s in services.values())
        assert blue_green["autoPromotionEnabled"] is enabled
        assert blue_green.get("autoPromotionSeconds") == (seconds or None)


def test_an_unknown_strategy_fails_the_render(helm: ModuleType, tmp_path: Path) -> None:
    chart_dir = write_chart(ChartSpec("webapp", "docker.io/acme/webapp"), tmp_path)
    with pytest.raises(Exception, match="strategy must be rolling, canary or blueGreen"):
        render(helm, chart_dir, {"strategy": "cannary"})


def test_the_release_annotations_still_drive_the_rollout(helm: ModuleType, tmp_path: Path) -> None:
    spec = ChartSpec("webapp", "docker.io/acme/webapp", strategy="canary")
    chart_dir = write_chart(spec, tmp_path)
    bump_chart(chart_dir / "Chart.yaml", "main-1", "sha256:" + "ab" * 32, "ab" * 20)
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    assert meta["annotations"] == {DIGEST_ANNOTATION: "sha256:" + "ab" * 32, COMMIT_ANNOTATION: "ab" * 20}
    rollout = next(o for o in render(helm, chart_dir) if o["kind"] == "Rollout")
    assert rollout["spec"]["template"]["spec"]["containers"][0]["image"] == "docker.io/acme/webapp:main-1@sha256:" + "ab" * 32
    assert KUBE_VERSION
