"""Argo Rollouts installed from its verified upstream manifest, for canary and blue-green deploys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.argocd_manifest import order_for_apply
from components.kube import register_install


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
        # Deleting the Rollout CRD deletes every Rollout, and with them the app's pods. A stack
        # switched back to `rolling` (or destroyed) while a chart still renders a Rollout must
        # not take the running app down: the CRDs stay in the cluster. The controller
        # Deployment is awaited, so it is up before any Rollout syncs.
        _, _, workloads = register_install(order_for_apply(args.objects), ns, child, retain_crds=True)
        self.workloads = list(workloads.values())
        self.register_outputs({"namespace": ns.metadata.name, "version": args.version})
