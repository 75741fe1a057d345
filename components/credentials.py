"""Generated credentials: ED25519 key pairs and the webhook secret."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_random as random
import pulumi_tls as tls


def _with_newline(key: str) -> str:
    # OpenSSH refuses a private key file whose last line lacks its newline.
    return key if key.endswith("\n") else key + "\n"


@dataclass(frozen=True)
class KeyPair:
    """An ED25519 key pair in OpenSSH form; the private half a secret."""

    private_key: pulumi.Output[str]
    public_key: pulumi.Output[str]


def key_pair(name: str, epoch: int, opts: pulumi.ResourceOptions) -> KeyPair:
    """An ED25519 key pair that bumping ``epoch`` replaces.

    Replacement is create-before-delete (the engine's default, so no ``delete_before_replace``):
    consumers are updated to the new value while the old one still exists, and the old one
    is deleted last.
    """
    # replacement_trigger: the key has no input that could change, so the epoch is what tells
    # the engine to replace it.
    key = tls.PrivateKey(name, algorithm="ED25519", opts=opts.merge(pulumi.ResourceOptions(replacement_trigger=epoch)))
    return KeyPair(
        private_key=pulumi.Output.secret(key.private_key_openssh.apply(_with_newline)),
        public_key=key.public_key_openssh.apply(str.strip),
    )


@dataclass(frozen=True)
class CredentialsArgs:
    """Rotation epoch and whether the webhook secret is needed."""

    epoch: int
    webhook: bool


class Credentials(pulumi.ComponentResource):
    """The stack's GitLab webhook secret, shared by every manifest project's hook and Argo CD.

    The key pairs belong to the repositories (Argo CD's read-only key) and the apps (CI's push key).
    """

    def __init__(self, name: str, args: CredentialsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:credentials:Credentials", name, None, opts)
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
        self.register_outputs({})
