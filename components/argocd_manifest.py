"""Data transforms on Argo CD's upstream objects: namespace, bindings and config overlays.

Pure code: the upstream file is never edited; each change is a function of the parsed
objects, so an upgrade is a new digest and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

UPSTREAM_NAMESPACE = "argocd"
CLUSTER_SCOPED_KINDS = frozenset(
    {
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Namespace",
        "PriorityClass",
        "StorageClass",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "APIService",
    }
)
# Kinds whose objects Argo CD's own workloads need before they can become ready.
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})
# Workloads that read the argocd-cm overlay only at start-up (timeout.reconciliation reaches
# them through an environment variable), so they must roll when it changes.
READS_ARGOCD_CM_AT_START = frozenset({("Deployment", "argocd-repo-server"), ("StatefulSet", "argocd-application-controller")})
CONFIG_HASH_ANNOTATION = "gitops-bootstrap/argocd-cm-overlay"


@dataclass(frozen=True)
class Overlays:
    """Settings layered onto the upstream ConfigMaps."""

    reconciliation_timeout: str = "120s"
    reconciliation_jitter: str = "60s"
    external_url: str | None = None
    extra_known_hosts: tuple[str, ...] = field(default_factory=tuple)
    # Keys this program owns in argocd-notifications-cm (notifications.notifications_config).
    notifications: tuple[tuple[str, str], ...] = ()
    # Host -> PEM CA bundle in argocd-tls-certs-cm (gitlab_ca): a self-managed GitLab's own CA.
    tls_certs: tuple[tuple[str, str], ...] = ()


def overlay_hash(overlays: Overlays) -> str:
    """A short digest of the argocd-cm overlay, which changes whenever the overlay does."""
    text = json.dumps([overlays.reconciliation_timeout, overlays.external_url, overlays.reconciliation_jitter])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_namespaced(obj: dict[str, Any]) -> bool:
    """Whether an object lives in a namespace."""
    return obj["kind"] not in CLUSTER_SCOPED_KINDS


def _merge_known_hosts(upstream: str, extra: Iterable[str]) -> str:
    lines = upstream.splitlines()
    present = {line.strip() for line in lines}
    lines += [line for line in extra if line.strip() not in present]
    return "\n".join(lines).rstrip("\n") + "\n"


def prepare_objects(docs: list[dict[str, Any]], namespace: str, overlays: Overlays) -> list[dict[str, Any]]:
    """Upstream objects made ready to apply into ``namespace`` with ``overlays``.

    Every namespaced object gets ``metadata.namespace``; ClusterRoleBinding subjects that
    hard-code the upstream namespace point at ``namespace`` instead; ``argocd-cm`` and
    ``argocd-ssh-known-hosts-cm`` carry the overlays. The input is not modified: changed
    parts are copied, the rest (the large CRD and workload specs) is shared.
    """
    return [_prepare(obj, namespace, overlays) for obj in docs]


def _prepare(source: dict[str, Any], namespace: str, overlays: Overlays) -> dict[str, Any]:
    obj = dict(source)
    meta = obj["metadata"] = dict(obj.get("metadata") or {})
    kind, name = obj["kind"], meta["name"]
    if is_namespaced(obj):
        meta["namespace"] = namespace
    if kind in ("ClusterRoleBinding", "RoleBinding") and obj.get("subjects"):
        obj["subjects"] = [
            {**s, "namespace": namespace} if s.get("namespace") == UPSTREAM_NAMESPACE else s for s in obj["subjects"]
        ]
    if kind == "ConfigMap" and name == "argocd-cm":
        data = obj["data"] = dict(obj.get("data") or {})
        data["timeout.reconciliation"] = overlays.reconciliation_timeout
        data["timeout.reconciliation.jitter"] = overlays.reconciliation_jitter
        if overlays.external_url:
            data["url"] = overlays.external_url
    if (kind, name) in READS_ARGOCD_CM_AT_START:
        spec = obj["spec"] = dict(obj["spec"])
        template = spec["template"] = dict(spec["template"])
        pod_meta = template["metadata"] = dict(template.get("metadata") or {})
        pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), CONFIG_HASH_ANNOTATION: overlay_hash(overlays)}
    if kind == "ConfigMap" and name == "argocd-notifications-cm" and overlays.notifications:
        # Server-side apply owns only the keys sent: Argo CD's and the team's other keys stay.
        obj["data"] = {**(obj.get("data") or {}), **dict(overlays.notifications)}
    if kind == "ConfigMap" and name == "argocd-tls-certs-cm" and overlays.tls_certs:
        # Only these keys are sent; certificates others add for other hosts stay theirs.
        obj["data"] = {**(obj.get("data") or {}), **dict(overlays.tls_certs)}
    if kind == "ConfigMap" and name == "argocd-ssh-known-hosts-cm" and overlays.extra_known_hosts:
        data = obj["data"] = dict(obj.get("data") or {})
        data["ssh_known_hosts"] = _merge_known_hosts(data.get("ssh_known_hosts", ""), overlays.extra_known_hosts)
    return obj


def order_for_apply(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects sorted so CRDs come first and workloads last, upstream order otherwise."""

    def rank(obj: dict[str, Any]) -> int:
        if obj["kind"] == "CustomResourceDefinition":
            return 0
        if obj["kind"] in WORKLOAD_KINDS:
            return 2
        return 1

    return sorted(objects, key=rank)
