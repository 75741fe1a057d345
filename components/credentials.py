"""Generated credentials: the Argo CD and CI key pairs and the webhook secret."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_random as random
import pulumi_tls as tls


def _with_newline(key: str) -> str:
    # OpenSSH refuses a private key file whose last line lacks its newline.
    return key if key.endswith("\n") else key + "\n"


@dataclass(frozen=True)
class CredentialsArgs:
    """Rotation epoch and which optional credentials are needed."""

    epoch: int
    webhook: bool


class Credentials(pulumi.ComponentResource):
    """ED25519 key pairs for Argo CD (read-only) and CI (push), and the webhook secret.

    Bumping ``epoch`` replaces every credential. Replacement is create-before-delete (the
    engine's default, so no ``delete_before_replace``): consumers are updated to the new
    value while the old one still exists, and the old one is deleted last.
    """

    def __init__(self, name: str, args: CredentialsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:credentials:Credentials", name, None, opts)
        # replacement_trigger: the keys have no input that could change, so the epoch is
        # what tells the engine to replace them.
        rotate = pulumi.ResourceOptions(parent=self, replacement_trigger=args.epoch)
        argocd_key = tls.PrivateKey("argocd-repo-key", algorithm="ED25519", opts=rotate)
        ci_key = tls.PrivateKey("ci-push-key", algorithm="ED25519", opts=rotate)

        self.argocd_private_key: pulumi.Output[str] = pulumi.Output.secret(argocd_key.private_key_openssh.apply(_with_newline))
        self.argocd_public_key: pulumi.Output[str] = argocd_key.public_key_openssh.apply(str.strip)
        self.ci_private_key: pulumi.Output[str] = pulumi.Output.secret(ci_key.private_key_openssh.apply(_with_newline))
        self.ci_public_key: pulumi.Output[str] = ci_key.public_key_openssh.apply(str.strip)

        self.webhook_secret: pulumi.Output[str] | None = None
        if args.webhook:
            webhook = random.RandomPassword(
                "argocd-webhook-secret",
                length=40,
                special=False,
                keepers={"epoch": str(args.epoch)},
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.webhook_secret = pulumi.Output.secret(webhook.result)

        self.register_outputs({"argocdPublicKey": self.argocd_public_key, "ciPublicKey": self.ci_public_key})
