"""Starter Helm chart for the manifest project that Argo CD deploys.

The app pipeline releases a new image by rewriting the single top-level
``appVersion: "<tag>"`` line of Chart.yaml and its two annotations (digest, app commit);
the Deployment runs ``repository:appVersion@digest`` unless ``image.tag`` is set in values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from components.rollouts import DELIVERY_STRATEGIES, STRATEGY_ROLLING
from components.starter import STARTER_APP_HEALTH_PATH, STARTER_APP_PORT, substitute

# The starter chart, as real files that `helm lint` and a reader see as committed. The program
# changes only the lines `render_chart` names: chart name, image repository, port, probes.
STARTER_CHART_DIR = Path(__file__).resolve().parent.parent / "starter" / "chart"
STARTER_NAME = "starter"
STARTER_REPOSITORY = "docker.io/example/starter"
# The starter app's port and health path: the chart's defaults match the app it is seeded for.
STARTER_PORT = STARTER_APP_PORT
STARTER_HEALTH_PATH = STARTER_APP_HEALTH_PATH
# Chart.yaml annotations the app pipeline writes beside appVersion: the digest of the tag it
# pushed (the chart deploys repository:tag@digest) and the app commit it was built from.
DIGEST_ANNOTATION = "gitops-bootstrap/image-digest"
COMMIT_ANNOTATION = "gitops-bootstrap/app-commit"
# The seeded appVersion: no image has been built yet. While Chart.yaml still says this (and
# values set no tag), the Deployment runs no pods, so the first sync is Synced and Healthy
# instead of an ImagePullBackOff; CI's first bump starts them.
UNRELEASED = "unreleased"

# DNS-1035 label (the Service name must be one); 53 leaves room for a release-name prefix.
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,51}[a-z0-9])?$")
# Registry host (optional port) and path components, without a tag or digest.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*$")
# An OCI tag; it also keeps the CI job's sed replacement free of `/`, `&` and quotes.
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ChartSpec:
    """What varies between starter charts: the app's name, image and runtime shape."""

    name: str
    image_repository: str
    app_version: str = UNRELEASED
    container_port: int = STARTER_PORT
    replicas: int = 1
    health_path: str = STARTER_HEALTH_PATH
    # rolling, canary or blueGreen (rollouts.DELIVERY_STRATEGIES), and blueGreen's auto-promotion delay (0: a person).
    strategy: str = STRATEGY_ROLLING
    auto_promotion_seconds: int = 0

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"chart name {self.name!r} must be a DNS-1035 label of at most 53 characters")
        if not _REPOSITORY_RE.fullmatch(self.image_repository):
            raise ValueError(f"image repository {self.image_repository!r} must be a registry path without tag or digest")
        if not _TAG_RE.fullmatch(self.app_version):
            raise ValueError(f"app version {self.app_version!r} is not a valid image tag")
        if not 1 <= self.container_port <= 65535:
            raise ValueError(f"container port {self.container_port} is out of range")
        if self.replicas < 0:
            raise ValueError(f"replicas {self.replicas} must not be negative")
        if self.strategy not in DELIVERY_STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} must be one of {DELIVERY_STRATEGIES}")
        if self.auto_promotion_seconds < 0:
            raise ValueError(f"auto promotion delay {self.auto_promotion_seconds} must not be negative")
        if not self.health_path.startswith("/") or any(c.isspace() for c in self.health_path):
            raise ValueError(f"health path {self.health_path!r} must be an absolute URL path")


def starter_chart_files() -> dict[str, str]:
    """The starter chart's files as they are on disk, keyed by path inside the chart."""
    return {
        path.relative_to(STARTER_CHART_DIR).as_posix(): path.read_text()
        for path in sorted(STARTER_CHART_DIR.rglob("*"))
        if path.is_file()
    }


def render_chart(spec: ChartSpec) -> dict[str, str]:
    """The chart's files, keyed by path relative to the chart directory: the starter chart, named and pointed at the image."""
    files = starter_chart_files()
    for path, text in files.items():
        # Helper names carry the chart name, as Helm expects, so they cannot clash with a subchart's.
        if path.startswith("templates/"):
            text = substitute(path, text, r'"' + STARTER_NAME + r"\.", f'"{spec.name}.', count=None)
        files[path] = text
    chart = files["Chart.yaml"]
    chart = substitute("Chart.yaml", chart, rf"^name: {STARTER_NAME}$", f"name: {spec.name}")
    chart = substitute("Chart.yaml", chart, r"^description: .*$", f"description: Helm chart for {spec.name}, deployed by Argo CD")
    # Quoted so that tags like 1.10 stay strings; the pipeline rewrites this line.
    chart = substitute("Chart.yaml", chart, rf'^appVersion: "{UNRELEASED}"$', f'appVersion: "{spec.app_version}"')
    files["Chart.yaml"] = chart
    values = files["values.yaml"]
    values = substitute("values.yaml", values, r"^replicaCount: 1$", f"replicaCount: {spec.replicas}")
    values = substitute(
        "values.yaml", values, rf"^  repository: {re.escape(STARTER_REPOSITORY)}$", f"  repository: {spec.image_repository}"
    )
    values = substitute("values.yaml", values, rf"^containerPort: {STARTER_PORT}$", f"containerPort: {spec.container_port}")
    values = substitute(
        "values.yaml", values, rf"^    path: {re.escape(STARTER_HEALTH_PATH)}$", f"    path: {spec.health_path}", count=2
    )
    values = substitute("values.yaml", values, rf"^strategy: {STRATEGY_ROLLING}$", f"strategy: {spec.strategy}")
    auto = spec.auto_promotion_seconds > 0
    values = substitute("values.yaml", values, r"^  autoPromotionEnabled: false$", f"  autoPromotionEnabled: {str(auto).lower()}")
    values = substitute(
        "values.yaml", values, r"^  autoPromotionSeconds: 0$", f"  autoPromotionSeconds: {spec.auto_promotion_seconds}"
    )
    files["values.yaml"] = values
    return files
