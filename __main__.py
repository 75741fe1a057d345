"""gitops-bootstrap: Argo CD, the app and manifest projects on GitLab, and the pipeline between them."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_gitlab as gitlab
import pulumi_kubernetes as k8s

# First of all: an older CLI ignores the `replacement_trigger` option that credential rotation
# relies on (pulumi/pulumi 20850, 20936, 20940), so it must refuse to run this program rather than
# rotate nothing. `requiredPulumiVersion` in Pulumi.yaml covers CLIs from 3.219; this call fails
# on any CLI without the RequirePulumiVersion check.
pulumi.require_pulumi_version(">=3.272.0")

from components import manifest_source
from components.app import AppDeployment, AppDeploymentArgs
from components.argo_rollouts import ArgoRollouts, ArgoRolloutsArgs
from components.argocd import ArgoCd, ArgoCdArgs
from components.argocd_manifest import Overlays, prepare_objects
from components.chart import ChartSpec
from components.credentials import Credentials, CredentialsArgs
from components.gitlab_access import AccessArgs, GitLabAccess
from components.gitlab_content import (
    BranchProtections,
    DeliveryPipeline,
    DeliveryPipelineArgs,
    StarterApp,
    StarterAppArgs,
    StarterChart,
    StarterChartArgs,
    chart_repo_path,
)
from components.gitlab_host import (
    HostFacts,
    adoption_warnings,
    cache_warnings,
    deploy_branch,
    host_problems,
    protect_build_cache,
    seed_starter_app,
)
from components.gitlab_projects import GitLabProjects, read_host
from components.kubeconfig import read_contexts
from components.notifications import (
    DEPLOY_STATUS_OFF,
    DEPLOY_STATUS_PROJECT_TOKEN,
    DEPLOY_STATUS_TOKEN,
    GITLAB_TOKEN_KEY,
    SLACK_URL_KEY,
    FeedbackSpec,
    deploy_status_mode,
    gitlab_api_url,
    notifications_config,
    subscription_annotations,
)
from components.rollouts import (
    ROLLOUTS_NAMESPACE,
    ROLLOUTS_SHA256,
    ROLLOUTS_VERSION,
    needs_rollouts,
    prepare_rollouts,
)
from components.settings import KEYS, SecretStr, Settings, SettingsError, parse_settings


def read_settings() -> Settings:
    """Read every declared config key once and validate them together."""
    config = pulumi.Config()
    project = pulumi.get_project()
    raw = {key.name: config.get(key.name) for key in KEYS}
    secret_keys = {key.name for key in KEYS if pulumi.runtime.is_config_secret(f"{project}:{key.name}")}
    try:
        return parse_settings(
            raw, pulumi.get_stack(), secret_keys=secret_keys, kube_contexts=read_contexts(os.environ, Path.home())
        )
    except SettingsError as exc:
        # Raised before any resource is registered, so a bad key changes nothing.
        raise pulumi.RunError(str(exc)) from None


@dataclass(frozen=True)
class GitLabInstance:
    """The GitLab provider's own settings (`gitlab:*`), which a second provider must repeat."""

    base_url: str | None
    cacert_file: str | None
    insecure: bool | None


def read_gitlab_instance() -> GitLabInstance:
    """Read the provider's instance settings once."""
    config = pulumi.Config("gitlab")
    return GitLabInstance(config.get("baseUrl"), config.get("cacertFile"), config.get_bool("insecure"))


def read_gitlab(settings: Settings, instance: GitLabInstance) -> HostFacts:
    """The GitLab instance's edition and existing projects; stops on an archived project in the way."""
    host = read_host(settings.gitlab)
    problems = host_problems(host, settings.gitlab, instance.base_url)
    if problems:
        raise pulumi.RunError(str(SettingsError(problems)))
    # The program changes no adopted project's settings; `pulumi preview` says where they leave holes.
    for warning in adoption_warnings(host):
        pulumi.log.warn(f"adopted project {warning}")
    for warning in cache_warnings(host, settings.gitlab, settings.app.cache_repository):
        pulumi.log.warn(warning)
    return host


def deploy_key_provider(settings: Settings, instance: GitLabInstance) -> gitlab.Provider | None:
    """A GitLab provider that acts as the bot account set in deployKeyOwnerToken, if any."""
    token = settings.gitlab.deploy_key_owner_token
    if token is None:
        return None
    # Same instance as the default provider; only the identity differs.
    return gitlab.Provider(
        "deploy-key-owner",
        token=pulumi.Output.secret(token.reveal()),
        base_url=instance.base_url,
        cacert_file=instance.cacert_file,
        insecure=instance.insecure,
    )


@dataclass(frozen=True)
class Feedback:
    """Deploy feedback as this stack runs it: the effective deployStatus and where notifications go."""

    mode: str
    spec: FeedbackSpec
    token: SecretStr | None
    slack_url: SecretStr | None


def read_feedback(settings: Settings, instance: GitLabInstance) -> Feedback:
    """Resolve deployStatus for this GitLab host; warn when deploys report nowhere."""
    mode = deploy_status_mode(settings.feedback.deploy_status, instance.base_url)
    if mode == DEPLOY_STATUS_OFF:
        pulumi.log.warn(
            "deployStatus is off: a merged deploy reports no commit status in GitLab; see the README's"
            " 'Deploy feedback' for turning it on (on gitlab.com Free: deployStatus=token)"
        )
    spec = FeedbackSpec(
        gitlab_api_url=None if mode == DEPLOY_STATUS_OFF else gitlab_api_url(instance.base_url),
        slack=settings.feedback.slack_webhook_url is not None,
        argocd_url=settings.argocd.external_url,
    )
    return Feedback(mode, spec, settings.feedback.deploy_status_token, settings.feedback.slack_webhook_url)


def notification_secrets(feedback: Feedback, access: GitLabAccess) -> dict[str, pulumi.Input[str]]:
    """The values for the keys this program owns in argocd-notifications-secret, all secret."""
    values: dict[str, pulumi.Input[str]] = {}
    if feedback.mode == DEPLOY_STATUS_PROJECT_TOKEN and access.status_token is not None:
        values[GITLAB_TOKEN_KEY] = pulumi.Output.secret(access.status_token.token)
    elif feedback.mode == DEPLOY_STATUS_TOKEN and feedback.token is not None:
        values[GITLAB_TOKEN_KEY] = pulumi.Output.secret(feedback.token.reveal())
    if feedback.slack_url is not None:
        values[SLACK_URL_KEY] = pulumi.Output.secret(feedback.slack_url.reveal())
    return values


def read_rollouts_manifest(settings: Settings) -> list[dict[str, Any]]:
    """The verified Argo Rollouts manifest; a bad mirror stops the program before it registers anything more."""
    try:
        return manifest_source.load_manifest(settings.delivery.rollouts_manifest_source, ROLLOUTS_SHA256, "argoRolloutsManifest")
    except manifest_source.ManifestError as exc:
        raise pulumi.RunError(str(exc)) from None


settings = read_settings()
argocd_settings = settings.argocd
try:
    upstream = manifest_source.load_manifest(argocd_settings.manifest_source, argocd_settings.manifest_sha256)
except manifest_source.ManifestError as exc:
    raise pulumi.RunError(str(exc)) from None
# Read and verified before anything is registered, like Argo CD's: a bad mirror changes nothing.
rollouts_upstream = read_rollouts_manifest(settings) if needs_rollouts(settings.delivery.strategy) else []
# The parsed manifest (about 200,000 objects) lives for the whole run; freezing it keeps the
# garbage collector from rescanning it on every collection while resources are registered.
gc.freeze()
gitlab_instance = read_gitlab_instance()
gitlab_host = read_gitlab(settings, gitlab_instance)
webhook_url = f"{argocd_settings.external_url}/api/webhook" if argocd_settings.external_url else None
feedback = read_feedback(settings, gitlab_instance)

# One explicit provider: server-side apply is required (the ApplicationSet CRD is larger
# than the 256 KiB last-applied annotation that client-side apply writes).
# Secrets and ConfigMaps are updated in place, not replaced: a replaced object with a fixed
# name is deleted first (pulumi-kubernetes provider.go, Diff), which would wipe the keys Argo
# CD writes into argocd-secret itself and leave Argo CD without its repository credential
# in between. Turning these on for an existing stack updates only the provider.
kubernetes = k8s.Provider(
    "k8s",
    enable_server_side_apply=True,
    enable_secret_mutable=True,
    enable_config_map_mutable=True,
    context=settings.kube_context,
)
k8s_opts = pulumi.ResourceOptions(providers=[kubernetes])

credentials = Credentials("credentials", CredentialsArgs(epoch=settings.credentials_epoch, webhook=webhook_url is not None))
projects = GitLabProjects("gitlab", settings.gitlab, gitlab_host, settings.stack)
chart = StarterChart(
    "starter-chart",
    StarterChartArgs(
        manifest=projects.manifest,
        chart=ChartSpec(
            name=settings.app.name,
            image_repository=settings.app.image_repository,
            container_port=settings.app.port,
            strategy=settings.delivery.strategy,
            auto_promotion_seconds=settings.delivery.auto_promotion_seconds,
        ),
        chart_path=settings.app.chart_path,
    ),
)
protections = BranchProtections(
    "branch-protection",
    projects.app,
    projects.manifest,
    manifest_after=chart.files,
    retain=settings.gitlab.projects_on_destroy == "retain",
    enterprise=gitlab_host.enterprise,
    manifest_merge=settings.gitlab.manifest_merge_access,
)
access = GitLabAccess(
    "access",
    AccessArgs(
        stack=settings.stack,
        app=projects.app,
        manifest=projects.manifest,
        argocd_public_key=credentials.argocd_public_key,
        ci_public_key=credentials.ci_public_key,
        ci_private_key=credentials.ci_private_key,
        dockerhub_user=settings.registry.user,
        dockerhub_token=pulumi.Output.secret(settings.registry.token.reveal()),
        known_hosts=settings.gitlab.ssh_known_hosts,
        hide_variables=settings.gitlab.hide_ci_variables,
        token_expiry_days=settings.gitlab.token_expiry_days,
        token_rotate_before_days=settings.gitlab.token_rotate_before_days,
        epoch=settings.credentials_epoch,
        merge_request_via=settings.gitlab.merge_request_via,
        webhook_url=webhook_url,
        webhook_secret=credentials.webhook_secret,
        deploy_key_provider=deploy_key_provider(settings, gitlab_instance),
        status_token=feedback.mode == DEPLOY_STATUS_PROJECT_TOKEN,
    ),
)

pipeline = DeliveryPipeline(
    "delivery-pipeline",
    DeliveryPipelineArgs(
        app=projects.app,
        manifest=projects.manifest,
        image_repository=settings.app.image_repository,
        chart_file=chart_repo_path(settings.app.chart_path, "Chart.yaml"),
        merge_request_via=settings.gitlab.merge_request_via,
        ready=[access, *([protections.app] if protections.app else [])],
        stack=settings.stack,
        enterprise=gitlab_host.enterprise,
        build_runner_tags=settings.gitlab.build_runner_tags,
        cache_repository=settings.app.cache_repository,
        protect_cache=protect_build_cache(gitlab_host, settings.gitlab, settings.app.cache_repository),
        retain=settings.gitlab.projects_on_destroy == "retain",
    ),
)

StarterApp(
    "starter-app",
    StarterAppArgs(
        app=projects.app,
        seed=seed_starter_app(gitlab_host, settings.gitlab),
        ready=[access, protections, pipeline, chart],
        port=settings.app.port,
    ),
)

argocd = ArgoCd(
    "argocd",
    ArgoCdArgs(
        namespace=argocd_settings.namespace,
        version=argocd_settings.version,
        objects=prepare_objects(
            upstream,
            argocd_settings.namespace,
            Overlays(
                reconciliation_timeout=argocd_settings.reconciliation_timeout,
                reconciliation_jitter=argocd_settings.reconciliation_jitter,
                external_url=argocd_settings.external_url,
                extra_known_hosts=settings.gitlab.ssh_known_hosts,
                notifications=tuple(notifications_config(feedback.spec).items()),
            ),
        ),
        read_admin_password=argocd_settings.read_admin_password,
        kube_context=settings.kube_context,
        webhook_secret=credentials.webhook_secret,
        notification_secrets=notification_secrets(feedback, access),
    ),
    opts=k8s_opts,
)
# Canary and blue-green charts render a Rollout, which needs Argo Rollouts and its CRDs first.
rollouts = (
    ArgoRollouts(
        "argo-rollouts",
        ArgoRolloutsArgs(
            namespace=ROLLOUTS_NAMESPACE,
            version=ROLLOUTS_VERSION,
            objects=prepare_rollouts(rollouts_upstream),
        ),
        opts=k8s_opts,
    )
    if needs_rollouts(settings.delivery.strategy)
    else None
)
app = AppDeployment(
    "app",
    AppDeploymentArgs(
        name=settings.app.name,
        namespace=settings.app.namespace,
        argocd_namespace=argocd_settings.namespace,
        repo_url=projects.manifest.ssh_url,
        repo_private_key=credentials.argocd_private_key,
        chart_path=settings.app.chart_path,
        target_revision=projects.manifest.default_branch,
        port=settings.app.port,
        argocd=argocd,
        repo_key_registered=[access.argocd_deploy_key],
        repo_content=chart.files,
        requires=[rollouts] if rollouts else [],
        annotations=(
            projects.manifest.id.apply(
                lambda project_id: subscription_annotations(feedback.spec, project_id, deploy_branch(settings.stack))
            )
            if feedback.spec.enabled
            else None
        ),
    ),
    opts=k8s_opts,
)

pulumi.export("argocdNamespace", argocd.namespace)
pulumi.export("argocdVersion", argocd_settings.version)
if argocd.admin_password is not None:
    pulumi.export("argocdAdminPassword", argocd.admin_password)
pulumi.export("argocdPortForward", argocd.port_forward_command)
pulumi.export("argocdUrl", argocd_settings.external_url or "https://localhost:8080")
pulumi.export("appNamespace", app.namespace)
pulumi.export("argocdDeployPublicKey", credentials.argocd_public_key)
pulumi.export("ciDeployPublicKey", credentials.ci_public_key)
for prefix, project in (("app", projects.app), ("manifest", projects.manifest)):
    pulumi.export(f"{prefix}ProjectId", project.id)
    pulumi.export(f"{prefix}ProjectWebUrl", project.web_url)
    pulumi.export(f"{prefix}ProjectSshUrl", project.ssh_url)
if webhook_url:
    pulumi.export("webhookUrl", webhook_url)
