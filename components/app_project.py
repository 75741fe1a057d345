"""The app's fence in the cluster: its Argo CD AppProject, namespace labels and NetworkPolicies.

Pure code: no Pulumi imports. A merged chart change is applied by Argo CD with the
controller's cluster-wide rights, so what the chart may create is decided here, by the
AppProject (repository, destination and kinds) and by objects the chart cannot touch.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

from components.argocd_manifest import CLUSTER_SCOPED_KINDS

IN_CLUSTER = "https://kubernetes.default.svc"
# Pod Security Admission: the starter chart meets `restricted`; warn and audit say so too.
PSA_LEVEL = "restricted"
PSA_LABELS = {f"pod-security.kubernetes.io/{mode}": PSA_LEVEL for mode in ("enforce", "warn", "audit")} | {
    f"pod-security.kubernetes.io/{mode}-version": "latest" for mode in ("enforce", "warn", "audit")
}
# Kinds the chart may not create although they are namespaced:
# - NetworkPolicy: the program owns the namespace's policies, so a merged change cannot delete
#   or widen them;
# - Role and RoleBinding: a RoleBinding to `cluster-admin` or `admin` inside the namespace would
#   let the app's pods edit their own Namespace object (its PSA labels) and the policies, and
#   from there run privileged pods on the node.
CHART_REFUSED_KINDS = (
    {"group": "networking.k8s.io", "kind": "NetworkPolicy"},
    {"group": "rbac.authorization.k8s.io", "kind": "Role"},
    {"group": "rbac.authorization.k8s.io", "kind": "RoleBinding"},
)
DENY_INGRESS = "default-deny-ingress"
ALLOW_APP_PORT = "allow-app-port"


def app_project_spec(repo_url: str, namespace: str) -> dict[str, Any]:
    """The AppProject's spec: one repository, one namespace on this cluster, no cluster-scoped kinds.

    ``clusterResourceWhitelist`` is left out (none allowed), ``namespaceResourceWhitelist``
    too (an empty list would deny every namespaced kind), and so are ``sourceNamespaces``
    (Applications of this project live only in Argo CD's own namespace).
    """
    return {
        "description": f"Deploys the chart in {repo_url} into {namespace} only.",
        "sourceRepos": [repo_url],
        "destinations": [{"server": IN_CLUSTER, "namespace": namespace}],
        "namespaceResourceBlacklist": [dict(kind) for kind in CHART_REFUSED_KINDS],
    }


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _listed(entries: Iterable[Mapping[str, str]], group: str, kind: str) -> bool:
    return any(fnmatch.fnmatchcase(group, e.get("group", "")) and fnmatch.fnmatchcase(kind, e.get("kind", "")) for e in entries)


def project_refusals(spec: Mapping[str, Any], repo_url: str, destination_namespace: str, obj: Mapping[str, Any]) -> list[str]:
    """Why Argo CD would refuse to sync ``obj`` from ``repo_url`` under this project; empty if allowed.

    Argo CD's documented rules (docs/user-guide/projects.md): the source repository must
    match ``sourceRepos``; the destination must match ``destinations``; a cluster-scoped
    kind needs ``clusterResourceWhitelist``; a namespaced kind must not match
    ``namespaceResourceBlacklist`` and, when ``namespaceResourceWhitelist`` is given, must match it.
    """
    refusals: list[str] = []
    if not any(fnmatch.fnmatchcase(repo_url, pattern) for pattern in spec.get("sourceRepos", [])):
        refusals.append(f"repository {repo_url} is not in sourceRepos")
    kind, group = obj["kind"], _group(obj["apiVersion"])
    if kind in CLUSTER_SCOPED_KINDS:
        if not _listed(spec.get("clusterResourceWhitelist") or [], group, kind):
            refusals.append(f"cluster-scoped {kind} is not in clusterResourceWhitelist")
        return refusals
    namespace = (obj.get("metadata") or {}).get("namespace") or destination_namespace
    if not any(
        fnmatch.fnmatchcase(IN_CLUSTER, d.get("server", "")) and fnmatch.fnmatchcase(namespace, d.get("namespace", ""))
        for d in spec.get("destinations", [])
    ):
        refusals.append(f"namespace {namespace} is not a destination")
    if _listed(spec.get("namespaceResourceBlacklist") or [], group, kind):
        refusals.append(f"{kind} is in namespaceResourceBlacklist")
    whitelist = spec.get("namespaceResourceWhitelist")
    if whitelist is not None and not _listed(whitelist, group, kind):
        refusals.append(f"{kind} is not in namespaceResourceWhitelist")
    return refusals


def network_policies(namespace: str, app_name: str, port: int) -> list[dict[str, Any]]:
    """Deny all ingress in the namespace, then admit ``port`` of the app's pods from inside the cluster."""
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": DENY_INGRESS, "namespace": namespace},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    allow = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": ALLOW_APP_PORT, "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": app_name}},
            "policyTypes": ["Ingress"],
            # Any pod in any namespace of this cluster (an ingress controller, other apps);
            # nothing from outside the cluster's pod network.
            "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": port}]}],
        },
    }
    return [deny, allow]


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    # matchLabels only: the policies here use nothing else.
    assert not selector.get("matchExpressions"), "matchExpressions are not evaluated"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def ingress_allowed(
    policies: Iterable[Mapping[str, Any]],
    pod_labels: Mapping[str, str],
    port: int,
    protocol: str = "TCP",
    source_in_cluster: bool = True,
) -> bool:
    """Whether NetworkPolicy semantics admit a connection to ``port`` of a pod with ``pod_labels``.

    A pod selected by no Ingress policy admits everything; once selected, a connection
    is admitted only if some rule of a selecting policy matches its source and port.
    ``namespaceSelector: {}`` matches every pod in the cluster and no outside address.
    """
    selecting = [
        p
        for p in policies
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"]) and _selects(p["spec"]["podSelector"], pod_labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            sources = rule.get("from")
            source_ok = not sources or any(
                ("namespaceSelector" in peer and source_in_cluster) or ("ipBlock" in peer and not source_in_cluster)
                for peer in sources
            )
            ports = rule.get("ports")
            port_ok = not ports or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)
            if source_ok and port_ok:
                return True
    return False
