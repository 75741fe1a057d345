"""Registering a parsed Kubernetes object as its typed pulumi-kubernetes resource."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pulumi
from pulumi_kubernetes.apiextensions import CustomResource

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
