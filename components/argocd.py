"""Argo CD installed from its verified upstream manifest."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.argocd_manifest import order_for_apply
from components.kube import register_install

ADMIN_SECRET = "argocd-initial-admin-secret"
WEBHOOK_SECRET_KEY = "webhook.gitlab.secret"


def port_forward_command(namespace: str, context: str | None) -> str:
    """The kubectl command that reaches argocd-server, on the stack's own cluster."""
    pinned = f"--context {context} " if context else ""
    return f"kubectl {pinned}port-forward svc/argocd-server -n {namespace} 8080:443"


@dataclass(frozen=True)
class ArgoCdArgs:
    """What to install: prepared upstream objects for one version into one namespace."""

    namespace: str
    version: str
    objects: list[dict[str, Any]]
    read_admin_password: bool = True
    webhook_secret: pulumi.Input[str] | None = None
    # The kubeconfig context the stack pins, repeated in the port-forward command.
    kube_context: str | None = None
    # Keys this program owns in argocd-notifications-secret, with their (secret) values.
    notification_secrets: dict[str, pulumi.Input[str]] | None = None


class ArgoCd(pulumi.ComponentResource):
    """The Argo CD namespace and every upstream object, applied server-side in a safe order."""

    namespace: pulumi.Output[str]
    server: pulumi.CustomResource
    admin_password: pulumi.Output[str] | None

    def __init__(self, name: str, args: ArgoCdArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:argocd:ArgoCd", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        ns = k8s.core.v1.Namespace(
            "argocd-namespace",
            metadata={"name": args.namespace, "labels": {"app.kubernetes.io/part-of": "argocd"}},
            opts=child,
        )
        self.namespace = ns.metadata.name

        prepared = [
            self._with_notification_secrets(self._with_webhook_secret(obj, args.webhook_secret), args.notification_secrets)
            for obj in order_for_apply(args.objects)
        ]
        _, _, workloads = register_install(prepared, ns, child)

        self.server = workloads["argocd-server"]
        self.admin_password = self._read_admin_password(args.namespace) if args.read_admin_password else None
        self.port_forward_command = port_forward_command(args.namespace, args.kube_context)

        outputs: dict[str, Any] = {"namespace": self.namespace, "version": args.version}
        if self.admin_password is not None:
            outputs["adminPassword"] = self.admin_password
        self.register_outputs(outputs)

    @staticmethod
    def _with_webhook_secret(obj: dict[str, Any], secret: pulumi.Input[str] | None) -> dict[str, Any]:
        if secret is None or obj["kind"] != "Secret" or obj["metadata"]["name"] != "argocd-secret":
            return obj
        # Only this key is sent; server-side apply leaves the keys argocd-server writes
        # itself (server.secretkey) to their own field manager, so they survive updates.
        data = pulumi.Output.secret(secret).apply(lambda s: {WEBHOOK_SECRET_KEY: base64.b64encode(s.encode()).decode()})
        return {**obj, "data": data}

    @staticmethod
    def _with_notification_secrets(obj: dict[str, Any], secrets: dict[str, pulumi.Input[str]] | None) -> dict[str, Any]:
        if not secrets or obj["kind"] != "Secret" or obj["metadata"]["name"] != "argocd-notifications-secret":
            return obj

        # Only these keys are sent, so server-side apply leaves every other key to its owner.
        def encoded(values: dict[str, Any]) -> dict[str, str]:
            return {key: base64.b64encode(str(value).encode()).decode() for key, value in values.items()}

        combined: pulumi.Output[dict[str, Any]] = pulumi.Output.all(**secrets)
        data: pulumi.Output[dict[str, str]] = pulumi.Output.secret(combined.apply(encoded))
        return {**obj, "data": data}

    def _read_admin_password(self, namespace: str) -> pulumi.Output[str]:
        # argocd-server creates this Secret at start-up, so it is read only once the server
        # Deployment is ready. The id is derived from the Deployment's output so that a
        # preview of a new stack, where the Secret cannot exist yet, skips the read.
        secret_id = self.server.id.apply(lambda _: f"{namespace}/{ADMIN_SECRET}")
        secret = k8s.core.v1.Secret.get(
            "argocd-initial-admin-secret",
            secret_id,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.server]),
        )
        return pulumi.Output.secret(secret.data.apply(lambda d: base64.b64decode((d or {}).get("password", "")).decode()))
