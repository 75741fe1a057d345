"""Registering a parsed Kubernetes object as its typed pulumi-kubernetes resource."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pulumi
from pulumi_kubernetes.apiextensions import CustomResource

from components.argocd_manifest import WORKLOAD_KINDS, is_namespaced

# API group → pulumi_kubernetes module, for the groups Argo CD's manifests use.
_GROUP_MODULES = {
    "": "core",
    "apps": "apps",
    "batch": "batch",
    "policy": "policy",
    "rbac.authorization.k8s.io": "rbac",
    "apiextensions.k8s.io": "apiextensions",
    "networking.k8s.io": "networking",
    "autoscaling": "autoscaling",
    "admissionregistration.k8s.io": "admissionregistration",
    "scheduling.k8s.io": "scheduling",
}
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _resource_class(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return _GROUP_MODULES.get(group, ""), version


def register_object(name: str, obj: dict[str, Any], opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """Register ``obj`` under logical ``name`` with the typed class for its kind.

    Typed classes carry the provider's await logic (Deployments wait for rollout) and
    secret handling (Secret data); kinds without one become a ``CustomResource``.
    """
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    module, version = _resource_class(obj["apiVersion"])
    if module:
        cls = getattr(importlib.import_module(f"pulumi_kubernetes.{module}.{version}"), obj["kind"], None)
        if cls is not None:
            # Typed classes take top-level fields in snake case; nested dicts pass through as-is.
            kwargs = {_CAMEL.sub("_", k).lower(): v for k, v in body.items()}
            resource: pulumi.CustomResource = cls(name, opts=opts, **kwargs)
            return resource
    extra = sorted(set(body) - {"metadata", "spec"})
    if extra:
        raise ValueError(f"{obj['kind']}/{name}: custom resources may only carry metadata and spec, not {extra}")
    return CustomResource(
        name,
        api_version=obj["apiVersion"],
        kind=obj["kind"],
        metadata=body.get("metadata"),
        spec=body.get("spec"),
        opts=opts,
    )


def register_install(
    objects: list[dict[str, Any]],
    namespace: pulumi.Resource,
    opts: pulumi.ResourceOptions,
    retain_crds: bool = False,
) -> tuple[list[pulumi.Resource], list[pulumi.Resource], dict[str, pulumi.CustomResource]]:
    """Register an upstream install's objects (already in apply order); its CRDs, config and workloads.

    The order decides destroy too: workloads go first, then their config and RBAC, then the
    CRDs, then the namespace. ``retain_crds`` leaves the CRDs in the cluster on delete.
    """
    crds: list[pulumi.Resource] = []
    config: list[pulumi.Resource] = []
    workloads: dict[str, pulumi.CustomResource] = {}
    for obj in objects:
        kind, obj_name = obj["kind"], obj["metadata"]["name"]
        if kind == "CustomResourceDefinition":
            # CRDs depend on the namespace only so that destroy removes them before it.
            deps: list[pulumi.Resource] = [namespace]
        elif kind in WORKLOAD_KINDS:
            # Workloads come after their config and RBAC, and are deleted before them.
            deps = [namespace, *crds, *config]
        else:
            # Everything else after the CRDs, so destroy deletes the CRDs after them.
            deps = [namespace, *crds] if is_namespaced(obj) else list(crds)
        retain = retain_crds and kind == "CustomResourceDefinition"
        resource = register_object(obj_name, obj, opts.merge(pulumi.ResourceOptions(depends_on=deps, retain_on_delete=retain)))
        if kind == "CustomResourceDefinition":
            crds.append(resource)
        elif kind in WORKLOAD_KINDS:
            workloads[obj_name] = resource
        else:
            config.append(resource)
    return crds, config, workloads
