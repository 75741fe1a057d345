"""Argo Rollouts from its pinned upstream manifest, for the canary and blue-green delivery strategies.

Pure module: no Pulumi. The manifest is the file in the repository at the release tag (its
sha256 is pinned); it names the controller image `:latest`, so the image is set to the release
tag here, as the namespace is.
"""

from __future__ import annotations

from typing import Any

from components.argocd_manifest import is_namespaced

ROLLOUTS_VERSION = "v1.9.1"
ROLLOUTS_URL = f"https://raw.githubusercontent.com/argoproj/argo-rollouts/{ROLLOUTS_VERSION}/manifests/install.yaml"
ROLLOUTS_SHA256 = "2701f5ff276e2a41b41d4d7cf8beeb7a62c6c850a34b71f031a29bbb656d543b"
ROLLOUTS_IMAGE = f"quay.io/argoproj/argo-rollouts:{ROLLOUTS_VERSION}"
ROLLOUTS_NAMESPACE = "argo-rollouts"
# The controller's Deployment and container, both named argo-rollouts upstream.
CONTROLLER = "argo-rollouts"

STRATEGY_ROLLING = "rolling"
STRATEGY_CANARY = "canary"
STRATEGY_BLUE_GREEN = "blueGreen"
DELIVERY_STRATEGIES: tuple[str, ...] = (STRATEGY_ROLLING, STRATEGY_CANARY, STRATEGY_BLUE_GREEN)


def needs_rollouts(strategy: str) -> bool:
    """Whether a strategy renders an Argo Rollouts `Rollout`."""
    return strategy != STRATEGY_ROLLING


def prepare_rollouts(docs: list[dict[str, Any]], namespace: str = ROLLOUTS_NAMESPACE) -> list[dict[str, Any]]:
    """Upstream objects made ready to apply: in ``namespace``, with the controller image at the release tag.

    The input is not modified; changed parts are copied.
    """
    prepared = []
    for source in docs:
        obj = dict(source)
        meta = obj["metadata"] = dict(obj.get("metadata") or {})
        if is_namespaced(obj):
            meta["namespace"] = namespace
        if obj["kind"] == "ClusterRoleBinding" and obj.get("subjects"):
            # The upstream subject names the argo-rollouts namespace.
            obj["subjects"] = [{**s, "namespace": namespace} if s.get("kind") == "ServiceAccount" else s for s in obj["subjects"]]
        if obj["kind"] == "Deployment" and meta["name"] == CONTROLLER:
            spec = obj["spec"] = dict(obj["spec"])
            template = spec["template"] = dict(spec["template"])
            pod = template["spec"] = dict(template["spec"])
            pod["containers"] = [{**c, "image": ROLLOUTS_IMAGE} if c["name"] == CONTROLLER else c for c in pod["containers"]]
        prepared.append(obj)
    return prepared
