"""One app, everything it gets: its GitLab side (project, keys, variables, pipeline, starter files) and its cluster side."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.app import AppDeployment, AppDeploymentArgs
from components.apps import app_names, legacy_aliases
from components.chart import ChartSpec
from components.credentials import key_pair
from components.gitlab_access import AccessArgs, GitLabAccess
from components.gitlab_content import (
    BranchProtections,
    DeliveryPipeline,
    DeliveryPipelineArgs,
    StarterApp,
    StarterAppArgs,
    StarterChart,
    StarterChartArgs,
)
from components.gitlab_host import (
    HostFacts,
    chart_file,
    chart_let_go,
    chart_seed_branch,
    deploy_branch,
    protect_build_cache,
    seed_starter_app,
)
from components.gitlab_projects import app_project
from components.manifest_repository import ManifestRepository
from components.notifications import FeedbackSpec, subscription_annotations
from components.rollouts import needs_rollouts
from components.settings import AppSettings, GitLabSettings, RegistrySettings


@dataclass(frozen=True)
class GitOpsAppArgs:
    """One app's settings, the shared pieces it builds on, and the stack-wide settings it needs."""

    app: AppSettings
    repository: ManifestRepository
    gitlab: GitLabSettings
    host: HostFacts
    stack: str
    epoch: int
    registry: RegistrySettings
    argocd: pulumi.Resource
    argocd_namespace: str
    feedback: FeedbackSpec
    # Argo Rollouts, installed when any app's strategy needs it.
    rollouts: pulumi.Resource | None = None
    deploy_key_provider: pulumi.ProviderResource | None = None


class GitOpsApp(pulumi.ComponentResource):
    """Everything one app gets, so that `pulumi preview` reads app by app.

    A single-app stack's app keeps the names and places its resources had before apps had a
    component each: its sub-components alias their old place at the stack's root (children
    inherit the alias), and resources that moved between components alias their old URN.
    """

    def __init__(self, name: str, args: GitOpsAppArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:app:App", name, None, opts)
        app, repo = args.app, args.repository
        names = app_names(app)
        p = names.prefix
        legacy = app.single_app_names
        stack, project = pulumi.get_stack(), pulumi.get_project()
        # Sub-components were at the stack's root in a single-app stack.
        sub = pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(parent=pulumi.ROOT_STACK_RESOURCE)] if legacy else None)

        def moved(old_parent: str, child_type: str, old_name: str) -> pulumi.ResourceOptions:
            # Moved here from another component of a single-app stack: its old URN finds it.
            return pulumi.ResourceOptions(
                parent=self, aliases=legacy_aliases(legacy, stack, project, old_parent, child_type, old_name)
            )

        self.settings = app
        self.repository = repo
        ci_key = key_pair(f"{p}ci-push-key", args.epoch, moved("credentials", "tls:index/privateKey:PrivateKey", "ci-push-key"))
        self.ci_public_key = ci_key.public_key
        self.project = app_project(
            f"{p}app-project",
            app,
            args.gitlab,
            args.host,
            args.stack,
            repo.project,
            names.suffix,
            moved("projects", "gitlab:index/project:Project", "app-project"),
        )
        retain = args.gitlab.projects_on_destroy == "retain"
        self.chart = StarterChart(
            f"{p}starter-chart",
            StarterChartArgs(
                manifest=repo.project,
                chart=ChartSpec(
                    name=app.name,
                    image_repository=app.image_repository,
                    container_port=app.port,
                    strategy=app.strategy,
                    auto_promotion_seconds=app.auto_promotion_seconds,
                ),
                chart_path=app.chart_path,
                prefix=p,
                seed_branch=chart_seed_branch(args.host, app, args.stack, names.suffix),
                let_go=chart_let_go(args.host, app),
            ),
            opts=sub,
        )
        protections = BranchProtections(
            f"{p}branch-protection", self.project, enterprise=args.host.enterprise, retain=retain, prefix=p, opts=sub
        )
        access = GitLabAccess(
            f"{p}access",
            AccessArgs(
                stack=args.stack,
                app=self.project,
                manifest=repo.project,
                ci_public_key=ci_key.public_key,
                ci_private_key=ci_key.private_key,
                dockerhub_user=args.registry.user,
                dockerhub_token=pulumi.Output.secret(args.registry.token.reveal()),
                known_hosts=args.gitlab.ssh_known_hosts,
                hide_variables=args.gitlab.hide_ci_variables,
                token_expiry_days=args.gitlab.token_expiry_days,
                token_rotate_before_days=args.gitlab.token_rotate_before_days,
                epoch=args.epoch,
                merge_request_via=app.merge_request_via,
                deploy_key_provider=args.deploy_key_provider,
                prefix=p,
                suffix=names.suffix,
            ),
            opts=sub,
        )
        pipeline = DeliveryPipeline(
            f"{p}delivery-pipeline",
            DeliveryPipelineArgs(
                app=self.project,
                manifest=repo.project,
                image_repository=app.image_repository,
                chart_file=chart_file(app),
                merge_request_via=app.merge_request_via,
                ready=[access, *([protections.app] if protections.app else [])],
                stack=args.stack,
                enterprise=args.host.enterprise,
                build_runner_tags=app.build_runner_tags,
                build_check_runner_tags=app.build_check_runner_tags,
                deploy_runner_tags=app.deploy_runner_tags,
                cache_repository=app.cache_repository,
                protect_cache=protect_build_cache(args.host, app),
                retain=retain,
                prefix=p,
                suffix=names.suffix,
            ),
            opts=sub,
        )
        self._args, self._names, self._sub = args, names, sub
        self._ready: list[pulumi.Resource] = [access, protections, pipeline, self.chart, repo.argocd_deploy_key]
        if repo.hook is not None:
            self._ready.append(repo.hook)

    def finish(self, manifest_locked: pulumi.Resource | None) -> None:
        """The starter app, whose last commit starts the first pipeline, and the cluster side; then the component is complete.

        Called once the manifest project's default branch is locked (``manifest_locked``), so
        that the first deploy merge request can be merged by a maintainer only.
        """
        args, names, sub = self._args, self._names, self._sub
        app, repo, p = args.app, args.repository, names.prefix
        StarterApp(
            f"{p}starter-app",
            StarterAppArgs(
                app=self.project,
                seed=seed_starter_app(args.host, app),
                # Everything its first pipeline reads, and the locked manifest branch.
                ready=[*self._ready, *([manifest_locked] if manifest_locked else [])],
                port=app.port,
                prefix=p,
            ),
            opts=sub,
        )
        status_suffix = args.feedback.status_suffix(repo.service_suffix)
        status_ref = deploy_branch(args.stack, names.suffix)
        self.deployment = AppDeployment(
            f"{p}app",
            AppDeploymentArgs(
                name=app.name,
                namespace=app.namespace,
                argocd_namespace=args.argocd_namespace,
                repo_url=repo.project.ssh_url,
                repo_private_key=repo.argocd_private_key,
                chart_path=app.chart_path,
                target_revision=repo.project.default_branch,
                port=app.port,
                argocd=args.argocd,
                repo_key_registered=[repo.argocd_deploy_key],
                repo_content=self.chart.files,
                # A Rollout needs Argo Rollouts and its CRDs first, and must go before them.
                requires=[args.rollouts] if args.rollouts is not None and needs_rollouts(app.strategy) else [],
                annotations=(
                    repo.project.id.apply(
                        lambda project_id: subscription_annotations(args.feedback, project_id, status_ref, status_suffix)
                    )
                    if args.feedback.enabled
                    else None
                ),
                prefix=p,
            ),
            opts=sub,
        )
        self.register_outputs(
            {
                "namespace": self.deployment.namespace,
                "appProjectId": self.project.id,
                "appProjectWebUrl": self.project.web_url,
                "deployBranch": status_ref,
            }
        )
