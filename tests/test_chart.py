"""The starter chart lints, renders with real Helm, and follows a release written by the pipeline's own lines."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from components.chart import COMMIT_ANNOTATION, DIGEST_ANNOTATION, UNRELEASED, ChartSpec, render_chart, starter_chart_files
from tests.tools import bump_chart, missing

KUBE_VERSION = "1.33"
RELEASE = "webapp"
NAMESPACE = "apps"

SPECS = [
    ChartSpec(name="webapp", image_repository="docker.io/acme/webapp"),
    # Non-defaults everywhere, and a version that YAML would read as a float if it were unquoted.
    ChartSpec(
        name="shop-api",
        image_repository="registry.example.com:5000/team/shop-api",
        app_version="1.10",
        container_port=9000,
        replicas=3,
        health_path="/healthz",
    ),
]

# Things that must never be committed to a manifest repository.
SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"),
    re.compile(r"\bdckr_pat_[A-Za-z0-9_-]{20,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"(?i)\b(password|passwd|secret|token|api[_-]?key)\b\s*[:=]\s*\S+"),
    re.compile(r'"auths"\s*:'),
]


def load(module: str) -> ModuleType:
    """Import a test-only library; skip locally, fail in CI, when it is absent."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"the Python package `{module}`")
        raise


def write_chart(spec: ChartSpec, root: Path) -> Path:
    chart_dir = root / spec.name
    for rel, text in render_chart(spec).items():
        path = chart_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return chart_dir


DIGEST = "sha256:" + "4f" * 32
COMMIT = "4f2a9c1e" + "0" * 32


def release(chart_dir: Path, tag: str, digest: str = DIGEST) -> None:
    """Write a build into the chart the way the app pipeline's job does."""
    bump_chart(chart_dir / "Chart.yaml", tag, digest, COMMIT)


def render(
    helm: ModuleType, chart_dir: Path, values: dict[str, Any] | None = None, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(chart_dir))
    try:
        manifests = chart.render(values or {}, name=RELEASE, namespace=namespace)
    finally:
        chart.close()
    objects = [obj for text in manifests.values() for obj in yaml.safe_load_all(text) if obj is not None]
    assert objects, "the chart rendered no objects"
    return objects


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [obj for obj in objects if obj["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def assert_valid_kubernetes(kubernetes_validate: ModuleType, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {KUBE_VERSION}: {err.message}")


@pytest.fixture(params=SPECS, ids=lambda spec: spec.name)
def spec(request: pytest.FixtureRequest) -> ChartSpec:
    result: ChartSpec = request.param
    return result


@pytest.fixture
def chart_dir(spec: ChartSpec, tmp_path: Path) -> Path:
    return write_chart(spec, tmp_path)


def test_chart_yaml_has_quoted_app_version_line(spec: ChartSpec) -> None:
    text = render_chart(spec)["Chart.yaml"]
    # Exactly one line, top level, double-quoted: the sed in CI depends on all three.
    assert re.findall(r"^appVersion:.*$", text, re.MULTILINE) == [f'appVersion: "{spec.app_version}"']
    meta = yaml.safe_load(text)
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == spec.name
    assert meta["appVersion"] == spec.app_version
    assert isinstance(meta["appVersion"], str)


def test_values_leave_the_tag_to_app_version(spec: ChartSpec) -> None:
    values = yaml.safe_load(render_chart(spec)["values.yaml"])
    assert values["image"] == {
        "repository": spec.image_repository,
        "tag": "",
        "digest": "",
        "pullPolicy": "IfNotPresent",
    }
    assert values["replicaCount"] == spec.replicas
    assert values["containerPort"] == spec.container_port


def test_helm_lint_is_clean(helm: ModuleType, chart_dir: Path) -> None:
    report = helm.lint(str(chart_dir), strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # Severity 2 and up are warnings and errors; info ("icon is recommended") is fine.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_rendered_objects_are_valid_kubernetes(helm: ModuleType, kubernetes_validate: ModuleType, chart_dir: Path) -> None:
    objects = render(helm, chart_dir)
    assert sorted(obj["kind"] for obj in objects) == ["Deployment", "Service"]
    assert_valid_kubernetes(kubernetes_validate, objects)


def test_seeded_chart_runs_no_pods_until_the_first_bump(
    helm: ModuleType, kubernetes_validate: ModuleType, tmp_path: Path
) -> None:
    # As the program seeds it: no image has been built, so Argo CD syncs a Deployment with no
    # pods (Healthy) instead of one stuck pulling an image that does not exist.
    seeded = ChartSpec(name="webapp", image_repository="docker.io/acme/webapp")
    assert seeded.app_version == UNRELEASED
    chart_dir = write_chart(seeded, tmp_path)
    before = render(helm, chart_dir)
    assert_valid_kubernetes(kubernetes_validate, before)
    assert only(before, "Deployment")["spec"]["replicas"] == 0
    release(chart_dir, "main-4f2a9c1e")
    after = render(helm, chart_dir)
    assert_valid_kubernetes(kubernetes_validate, after)
    deployment = only(after, "Deployment")
    assert deployment["spec"]["replicas"] == seeded.replicas == 1
    # Pinned to the digest the build pushed; the tag stays readable.
    assert container(after)["image"] == f"docker.io/acme/webapp:main-4f2a9c1e@{DIGEST}"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "main-4f2a9c1e"
    # A tag pinned in values also counts as a real image.
    assert (
        only(render(helm, write_chart(seeded, tmp_path / "pinned"), {"image": {"tag": "v1"}}), "Deployment")["spec"]["replicas"]
        == 1
    )


def test_deployment_runs_the_spec(helm: ModuleType, spec: ChartSpec, chart_dir: Path) -> None:
    objects = render(helm, chart_dir)
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == (0 if spec.app_version == UNRELEASED else spec.replicas)
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == spec.name
    assert labels["app.kubernetes.io/instance"] == RELEASE
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert labels["app.kubernetes.io/version"] == spec.app_version

    main = container(objects)
    assert main["image"] == f"{spec.image_repository}:{spec.app_version}"
    assert main["ports"] == [{"name": "http", "containerPort": spec.container_port, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"] == {"path": spec.health_path, "port": "http"}, probe
    requests = main["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    assert main["resources"]["limits"]["memory"]

    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["readOnlyRootFilesystem"] is True


def test_service_routes_to_the_pods(helm: ModuleType, chart_dir: Path) -> None:
    objects = render(helm, chart_dir)
    deployment = only(objects, "Deployment")
    service = only(objects, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    port_names = {port["name"] for port in container(objects)["ports"]}
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
    assert "http" in port_names


@pytest.mark.parametrize("tag", ["1.2.3", "4f2a9c1e", "2.0"])
def test_release_changes_the_image(
    helm: ModuleType,
    kubernetes_validate: ModuleType,
    spec: ChartSpec,
    chart_dir: Path,
    tag: str,
) -> None:
    before = container(render(helm, chart_dir))["image"]
    assert before == f"{spec.image_repository}:{spec.app_version}"

    release(chart_dir, tag)

    chart_yaml = (chart_dir / "Chart.yaml").read_text()
    meta = yaml.safe_load(chart_yaml)
    assert meta["appVersion"] == tag
    assert meta["annotations"] == {DIGEST_ANNOTATION: DIGEST, COMMIT_ANNOTATION: COMMIT}
    assert helm.lint(str(chart_dir), strict=True)["errors"] == []
    objects = render(helm, chart_dir)
    assert_valid_kubernetes(kubernetes_validate, objects)
    assert container(objects)["image"] == f"{spec.image_repository}:{tag}@{DIGEST}"
    assert only(objects, "Deployment")["metadata"]["labels"]["app.kubernetes.io/version"] == tag
    # Nothing else in Chart.yaml moved.
    original = render_chart(spec)["Chart.yaml"].splitlines()
    changed = [(a, b) for a, b in zip(original, chart_yaml.splitlines(), strict=True) if a != b]
    assert changed == [
        (f'appVersion: "{spec.app_version}"', f'appVersion: "{tag}"'),
        (f'  {DIGEST_ANNOTATION}: ""', f'  {DIGEST_ANNOTATION}: "{DIGEST}"'),
        (f'  {COMMIT_ANNOTATION}: ""', f'  {COMMIT_ANNOTATION}: "{COMMIT}"'),
    ]
    # A second release replaces the first in place.
    release(chart_dir, "2.0.1", "sha256:" + "ab" * 32)
    assert container(render(helm, chart_dir))["image"] == f"{spec.image_repository}:2.0.1@sha256:{'ab' * 32}"
    assert len((chart_dir / "Chart.yaml").read_text().splitlines()) == len(original)


def test_values_tag_overrides_app_version(helm: ModuleType, spec: ChartSpec, chart_dir: Path) -> None:
    release(chart_dir, "main-1")
    # The recorded digest belongs to appVersion's tag: a tag from values drops it.
    objects = render(helm, chart_dir, {"image": {"tag": "pinned"}})
    assert container(objects)["image"] == f"{spec.image_repository}:pinned"
    objects = render(helm, chart_dir, {"image": {"tag": "pinned", "digest": "sha256:" + "cd" * 32}})
    assert container(objects)["image"] == f"{spec.image_repository}:pinned@sha256:{'cd' * 32}"


def test_release_adds_missing_annotations(helm: ModuleType, spec: ChartSpec, chart_dir: Path) -> None:
    # A chart seeded before digests were recorded has no annotations block.
    chart = chart_dir / "Chart.yaml"
    lines = chart.read_text().splitlines()
    chart.write_text("\n".join(line for line in lines if "gitops-bootstrap/" not in line and line != "annotations:") + "\n")
    assert "annotations" not in (yaml.safe_load(chart.read_text()) or {})
    release(chart_dir, "main-2")
    assert yaml.safe_load(chart.read_text())["annotations"] == {DIGEST_ANNOTATION: DIGEST, COMMIT_ANNOTATION: COMMIT}
    assert container(render(helm, chart_dir))["image"] == f"{spec.image_repository}:main-2@{DIGEST}"


def test_starter_chart_files_are_the_rendered_chart() -> None:
    # The files under starter/chart are what a reader and `helm lint` see; the program only renames.
    on_disk = starter_chart_files()
    rendered = render_chart(ChartSpec(name="starter", image_repository="docker.io/example/starter"))
    assert rendered == on_disk
    assert set(on_disk) == {
        "Chart.yaml",
        "values.yaml",
        ".helmignore",
        "templates/_helpers.tpl",
        "templates/deployment.yaml",
        "templates/rollout.yaml",
        "templates/service.yaml",
        "templates/service-preview.yaml",
    }


def test_no_secret_like_values(spec: ChartSpec) -> None:
    for rel, text in render_chart(spec).items():
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{rel} matches {pattern.pattern}"


@pytest.mark.parametrize(
    "sample",
    [
        "password: hunter2hunter2",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "token = glpat-abcdefghijklmnopqrst",
        '{"auths": {}}',
    ],
)
def test_secret_patterns_catch_samples(sample: str) -> None:
    assert any(pattern.search(sample) for pattern in SECRET_PATTERNS)


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "Web_App"},
        {"name": "9lives"},
        {"name": "a" * 54},
        {"image_repository": "docker.io/acme/webapp:1.0"},
        {"image_repository": "docker.io/acme/webapp@sha256:abc"},
        {"image_repository": "Docker.io/Acme/WebApp"},
        {"app_version": "1.0/evil"},
        {"app_version": 'x"y'},
        {"app_version": ""},
        {"container_port": 0},
        {"container_port": 70000},
        {"replicas": -1},
        {"health_path": "healthz"},
    ],
)
def test_spec_rejects_bad_input(changes: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "name": "webapp",
        "image_repository": "docker.io/acme/webapp",
        **changes,
    }
    with pytest.raises(ValueError):
        ChartSpec(**fields)


@pytest.mark.parametrize(
    "annotations",
    [
        # Other indentation, flow style, a second block, a quoted key: the rewrite could produce
        # invalid or duplicate YAML, so the release stops instead.
        "annotations:\n    team: shop\n",
        "annotations: {}\n",
        "annotations: {team: shop}\n",
        "annotations:\n  team: shop\nannotations:\n  other: x\n",
        'annotations:\n  "gitops-bootstrap/image-digest": ""\n',
    ],
)
def test_release_refuses_annotations_it_cannot_rewrite_safely(tmp_path: Path, annotations: str) -> None:
    chart = tmp_path / "Chart.yaml"
    chart.write_text('apiVersion: v2\nname: webapp\nversion: 0.1.0\nappVersion: "1.0.0"\n' + annotations)
    before = chart.read_text()
    stderr = bump_chart(chart, "main-3", DIGEST, COMMIT, expect_success=False)
    assert "reformat this chart's annotations" in stderr
    assert chart.read_text() == before


def test_release_keeps_the_teams_own_annotations(helm: ModuleType, spec: ChartSpec, chart_dir: Path) -> None:
    chart = chart_dir / "Chart.yaml"
    chart.write_text(chart.read_text().replace("annotations:\n", "annotations:\n  team: shop # owner\n"))
    release(chart_dir, "main-4")
    assert yaml.safe_load(chart.read_text())["annotations"] == {
        "team": "shop",
        DIGEST_ANNOTATION: DIGEST,
        COMMIT_ANNOTATION: COMMIT,
    }
    assert helm.lint(str(chart_dir), strict=True)["errors"] == []
