"""Least-privilege access between the projects, CI and Argo CD: keys, token, variables, hook."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gitlab as gitlab

from components.gitlab_projects import ProjectInfo
from components.pipeline import API_TOKEN_VARIABLE, SSH_KEY_VARIABLE, VARIABLE_ENVIRONMENTS
from components.settings import docker_auth

# The merge-request step needs the API; developer is the lowest role that may open MRs.
MR_TOKEN_SCOPES = ["api"]
MR_TOKEN_ROLE = "developer"


def project_token(
    name: str,
    project: pulumi.Input[str],
    token_name: str,
    description: str,
    expiry_days: int,
    rotate_before_days: int,
    epoch: int,
    opts: pulumi.ResourceOptions,
) -> gitlab.ProjectAccessToken:
    """A Developer token with scope api on ``project``, rotated by `pulumi up` before it expires."""
    return gitlab.ProjectAccessToken(
        name,
        project=project,
        name=token_name,
        description=description,
        # Developer with scope api: the lowest role and scope that may open merge requests
        # (mr-token) and post commit statuses (deploy-status-token).
        scopes=MR_TOKEN_SCOPES,
        access_level=MR_TOKEN_ROLE,
        # Sets expires_at too, and lets `pulumi up` rotate the token before it expires.
        rotation_configuration={"expiration_days": expiry_days, "rotate_before_days": rotate_before_days},
        # A new epoch replaces the token; create-before-delete keeps the old one valid
        # until its consumer (GITLAB_PRIVATE_TOKEN, the notifications Secret) holds the new one.
        opts=opts.merge(pulumi.ResourceOptions(replacement_trigger=epoch)),
    )


@dataclass(frozen=True)
class AccessArgs:
    """Who gets access to what, and the secrets involved."""

    stack: str
    app: ProjectInfo
    manifest: ProjectInfo
    ci_public_key: pulumi.Input[str]
    ci_private_key: pulumi.Input[str]
    dockerhub_user: str
    dockerhub_token: pulumi.Input[str]
    known_hosts: tuple[str, ...]
    hide_variables: bool
    token_expiry_days: int
    token_rotate_before_days: int
    epoch: int
    # "api": a project access token opens merge requests; "push-options": git push does.
    merge_request_via: str = "api"
    # A provider that authenticates as a bot account: it registers the deploy keys, so the
    # bot (a Developer on the manifest project) owns them, not the person running `pulumi up`.
    deploy_key_provider: pulumi.ProviderResource | None = None
    # Logical-name prefix and the suffix of key titles and token names (apps.AppNames).
    prefix: str = ""
    suffix: str = ""


def deploy_key(
    name: str,
    project: pulumi.Input[str],
    title: str,
    public_key: pulumi.Input[str],
    can_push: bool,
    opts: pulumi.ResourceOptions,
    provider: pulumi.ProviderResource | None,
) -> gitlab.DeployKey:
    """A deploy key, registered by the bot account's provider when there is one.

    A key's owner is whoever registers it: GitLab opens push-option merge requests as that
    user (git_access_actor.rb), so whoever holds the CI key acts as its owner. Titles carry the
    stack (and app) so that two stacks or apps sharing a project never collide.
    """
    return gitlab.DeployKey(
        name,
        project=project,
        title=title,
        key=public_key,
        can_push=can_push,
        opts=opts.merge(pulumi.ResourceOptions(provider=provider)) if provider else opts,
    )


class GitLabAccess(pulumi.ComponentResource):
    """One app's push key and access token on the manifest project, and its CI variables on the app project."""

    def __init__(self, name: str, args: AccessArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:gitlab:Access", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        manifest_id = args.manifest.id
        p = args.prefix

        self.ci_deploy_key = deploy_key(
            f"{p}ci-deploy-key",
            manifest_id,
            f"ci-push-{args.stack}{args.suffix}",
            args.ci_public_key,
            True,
            child,
            args.deploy_key_provider,
        )

        self.mr_token: gitlab.ProjectAccessToken | None = None
        if args.merge_request_via == "api":
            self.mr_token = project_token(
                f"{p}mr-token",
                manifest_id,
                f"gitops-bootstrap-mr-{args.stack}{args.suffix}",
                "Opens merge requests from the app project's pipeline.",
                args.token_expiry_days,
                args.token_rotate_before_days,
                args.epoch,
                child,
            )

        # Always a bool: `hidden` is Optional+Computed and RequiresReplace without
        # UseStateForUnknown, so an unset value plans as unknown on any other change and
        # replaces the variable (resource_gitlab_project_variable.go).
        hidden = args.hide_variables
        app_id = args.app.id
        # GitLab allows one variable per key and scope, so a replaced variable (toggling
        # `hidden` forces one) must be deleted before its successor is created. A new value
        # alone is an in-place update, so rotation never goes through this.
        variable = child.merge(pulumi.ResourceOptions(delete_before_replace=True))
        auth = pulumi.Output.secret(args.dockerhub_token).apply(lambda t: docker_auth(args.dockerhub_user, t))
        self.variables = [
            gitlab.ProjectVariable(
                f"{p}dockerhub-token",
                project=app_id,
                key="DOCKERHUB_TOKEN",
                value=auth,
                masked=True,
                protected=True,
                hidden=hidden,
                # Expanded, not raw: the value is checked against GitLab's expanded masking
                # rule before anything is applied (settings.is_maskable).
                raw=False,
                description="base64 of <Docker Hub user>:<token>, for the image push.",
                opts=variable,
            ),
            gitlab.ProjectVariable(
                f"{p}ssh-private-key",
                project=app_id,
                key=SSH_KEY_VARIABLE,
                value=pulumi.Output.secret(args.ci_private_key),
                variable_type="file",
                # Only the job that declares this environment (update-manifest) receives it.
                environment_scope=VARIABLE_ENVIRONMENTS[SSH_KEY_VARIABLE],
                # GitLab refuses to mask multi-line values; protected keeps it to the default branch.
                masked=False,
                protected=True,
                # Hidden needs masked, which a multi-line value cannot be.
                hidden=False,
                raw=True,
                description="Private half of the manifest project's push deploy key.",
                # Switch CI to a rotated key only once GitLab accepts it as a deploy key.
                opts=variable.merge(pulumi.ResourceOptions(depends_on=[self.ci_deploy_key])),
            ),
            gitlab.ProjectVariable(
                f"{p}ssh-known-hosts",
                project=app_id,
                key="SSH_KNOWN_HOSTS",
                value="\n".join(args.known_hosts) + "\n",
                variable_type="file",
                masked=False,
                protected=False,
                hidden=False,
                raw=True,
                description="GitLab's SSH host keys; CI never trusts a key on first use.",
                opts=variable,
            ),
        ]

        if self.mr_token is not None:
            token_value: pulumi.Output[str] = pulumi.Output.secret(self.mr_token.token.apply(str))
            self.variables.append(
                gitlab.ProjectVariable(
                    f"{p}gitlab-private-token",
                    project=app_id,
                    key=API_TOKEN_VARIABLE,
                    value=token_value,
                    # Only the job that declares this environment (update-manifest) receives it.
                    environment_scope=VARIABLE_ENVIRONMENTS[API_TOKEN_VARIABLE],
                    masked=True,
                    protected=True,
                    hidden=hidden,
                    # GitLab's own token format (glpat-…) meets the expanded masking rule.
                    raw=False,
                    description="Manifest project access token (api, developer) for opening merge requests.",
                    opts=variable,
                )
            )

        self.register_outputs({"mrTokenExpiresAt": self.mr_token.expires_at if self.mr_token else None})
