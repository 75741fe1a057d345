"""Argo Rollouts installed from its verified upstream manifest, for canary and blue-green deploys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.argocd_manifest import WORKLOAD_KINDS, is_namespaced, order_for_apply
from components.kube import register_object


@dataclass(frozen=True)
class ArgoRolloutsArgs:
    """What to install: the prepared upstream objects (rollouts.prepare_rollouts) into one namespace."""

    namespace: str
    version: str
    objects: list[dict[str, Any]]


class ArgoRollouts(pulumi.ComponentResource):
    """The Argo Rollouts namespace and every upstream object, applied server-side; its controller is awaited."""

    def __init__(self, name: str, args: ArgoRolloutsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:argo:Rollouts", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = k8s.core.v1.Namespace("argo-rollouts-namespace", metadata={"name": args.namespace}, opts=child)
        crds: list[pulumi.Resource] = []
        config: list[pulumi.Resource] = []
        self.workloads: list[pulumi.Resource] = []
        for obj in order_for_apply(args.objects):
            kind = obj["kind"]
            if kind == "CustomResourceDefinition":
                # Only on the namespace, so that destroy removes the CRDs (and every Rollout) before it.
                deps: list[pulumi.Resource] = [ns]
            elif kind in WORKLOAD_KINDS:
                # The controller after its RBAC and config, and deleted before them.
                deps = [ns, *crds, *config]
            else:
                deps = [ns, *crds] if is_namespaced(obj) else list(crds)
            # Deleting the Rollout CRD deletes every Rollout, and with them the app's pods. A stack
            # switched back to `rolling` (or destroyed) while a chart still renders a Rollout must
            # not take the running app down: the CRDs stay in the cluster.
            retain = kind == "CustomResourceDefinition"
            # Typed Deployments wait for their rollout, so the controller is up before any Rollout syncs.
            resource = register_object(
                obj["metadata"]["name"], obj, child.merge(pulumi.ResourceOptions(depends_on=deps, retain_on_delete=retain))
            )
            if kind == "CustomResourceDefinition":
                crds.append(resource)
            elif kind in WORKLOAD_KINDS:
                self.workloads.append(resource)
            else:
                config.append(resource)
        self.register_outputs({"namespace": ns.metadata.name, "version": args.version})
