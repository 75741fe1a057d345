"""A manifest project as the stack owns it once, however many apps keep their charts in it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gitlab as gitlab

from components.apps import ManifestRepositorySpec, legacy_aliases
from components.credentials import key_pair
from components.gitlab_access import deploy_key, project_token
from components.gitlab_host import HostFacts, protection_args
from components.gitlab_projects import ProjectInfo, project
from components.settings import GitLabSettings

PROJECT_TYPE = "gitlab:index/project:Project"
KEY_TYPE = "tls:index/privateKey:PrivateKey"


@dataclass(frozen=True)
class ManifestRepositoryArgs:
    """The project and what the stack's Argo CD and notifications need of it."""

    spec: ManifestRepositorySpec
    gitlab: GitLabSettings
    host: HostFacts
    stack: str
    epoch: int
    webhook_url: str | None = None
    webhook_secret: pulumi.Input[str] | None = None
    # A bot account's provider that registers deploy keys (gitlab_access.deploy_key_options).
    deploy_key_provider: pulumi.ProviderResource | None = None
    # deployStatus=project-token: a token on this project for Argo CD's commit statuses.
    status_token: bool = False
    enterprise: bool = False


class ManifestRepository(pulumi.ComponentResource):
    """The manifest project, Argo CD's read-only deploy key, the webhook, the status token and the locked default branch.

    Apps sharing the project each bring their own chart, push key and branches; this is what
    they share. It goes when no app names the project any more, and `projectsOnDestroy` says how.
    """

    project: ProjectInfo
    argocd_private_key: pulumi.Output[str]
    argocd_deploy_key: gitlab.DeployKey
    status_token: gitlab.ProjectAccessToken | None
    protection: gitlab.BranchProtection | None

    def __init__(self, name: str, args: ManifestRepositoryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:gitlab:ManifestRepository", name, None, opts)
        self._args = args
        spec = args.spec
        # The suffix of this repository's notification service and secret key ("" in a single-app stack).
        self.service_suffix = spec.service_suffix
        p = spec.prefix
        stack, project_name = pulumi.get_stack(), pulumi.get_project()

        def moved(old_parent: str, child_type: str, old_name: str) -> pulumi.ResourceOptions:
            # A single-app stack held these under other components; the alias keeps them (no replacement).
            return pulumi.ResourceOptions(
                parent=self,
                aliases=legacy_aliases(spec.single_app_names, stack, project_name, old_parent, child_type, old_name),
            )

        keys = key_pair(f"{p}argocd-repo-key", args.epoch, moved("credentials", KEY_TYPE, "argocd-repo-key"))
        self.argocd_private_key = keys.private_key
        self.argocd_public_key = keys.public_key
        self.project = project(
            f"{p}manifest-project",
            "Helm chart that Argo CD deploys; changed only through merge requests.",
            spec.project,
            args.gitlab,
            args.host.adopted.get(spec.config_key) if spec.project.adopted else None,
            args.host.namespace_id,
            moved("projects", PROJECT_TYPE, "manifest-project"),
        )
        manifest_id = self.project.id
        # One read-only key per project and stack: Argo CD reads every chart in it with it.
        self.argocd_deploy_key = deploy_key(
            f"{p}argocd-deploy-key",
            manifest_id,
            f"argocd-{args.stack}",
            keys.public_key,
            False,
            moved("access", "gitlab:index/deployKey:DeployKey", "argocd-deploy-key"),
            args.deploy_key_provider,
        )
        self.status_token = None
        if args.status_token:
            self.status_token = project_token(
                f"{p}deploy-status-token",
                manifest_id,
                f"gitops-bootstrap-status-{args.stack}{spec.suffix}",
                "Argo CD notifications: commit statuses for deploys of the manifest project.",
                args.gitlab.token_expiry_days,
                args.gitlab.token_rotate_before_days,
                args.epoch,
                moved("access", "gitlab:index/projectAccessToken:ProjectAccessToken", "deploy-status-token"),
            )
        self.hook: gitlab.ProjectHook | None = None
        if args.webhook_url is not None and args.webhook_secret is not None:
            self.hook = gitlab.ProjectHook(
                f"{p}argocd-webhook",
                project=manifest_id,
                url=args.webhook_url,
                token=pulumi.Output.secret(args.webhook_secret),
                push_events=True,
                merge_requests_events=False,
                enable_ssl_verification=True,
                opts=moved("access", "gitlab:index/projectHook:ProjectHook", "argocd-webhook"),
            )
        self.protection = None

    def lock(self, after: Sequence[pulumi.Resource]) -> None:
        """Protect the default branch once the charts seeded into it are committed; then the component is complete.

        Every deploy is a merge request that a maintainer (or, with manifestMergeAccess=admin, an
        administrator) merges; CI pushes only side branches, and its token (Developer) cannot merge here.
        An adopted project keeps the protection its team set up.
        """
        args, spec = self._args, self._args.spec
        if not self.project.adopted:
            retain = args.gitlab.projects_on_destroy == "retain"
            aliases = legacy_aliases(
                spec.single_app_names,
                pulumi.get_stack(),
                pulumi.get_project(),
                "protections",
                "gitlab:index/branchProtection:BranchProtection",
                "manifest-default-branch",
            )
            opts = pulumi.ResourceOptions(parent=self, retain_on_delete=retain, depends_on=list(after), aliases=aliases)
            self.protection = gitlab.BranchProtection(
                f"{spec.prefix}manifest-default-branch",
                project=self.project.id,
                branch=self.project.default_branch,
                allow_force_push=False,
                **protection_args(args.enterprise, push="no one", merge=args.gitlab.manifest_merge_access),
                # After the seeded charts (depends_on): once nobody may push, not even the program can commit.
                # With projectsOnDestroy=retain the project stays as it is, protection included.
                opts=opts,
            )
        self.register_outputs({"projectId": self.project.id, "webUrl": self.project.web_url, "apps": list(spec.apps)})
