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
from components.apps import manifest_repositories
from components.argo_rollouts import ArgoRollouts, ArgoRolloutsArgs
from components.argocd import ArgoCd, ArgoCdArgs
from components.argocd_manifest import Overlays, prepare_objects
from components.credentials import Credentials, CredentialsArgs
from components.gitlab_ca import CaError, read_ca_bundle, tls_certs_key
from components.gitlab_host import HostFacts, adoption_warnings, cache_warnings, host_problems
from components.gitlab_projects import check_runners, read_host
from components.gitops_app import GitOpsApp, GitOpsAppArgs
from components.kubeconfig import read_contexts
from components.manifest_repository import ManifestRepository, ManifestRepositoryArgs
from components.notifications import (
    DEPLOY_STATUS_OFF,
    DEPLOY_STATUS_PROJECT_TOKEN,
    DEPLOY_STATUS_TOKEN,
    GITLAB_TOKEN_KEY,
    SLACK_URL_KEY,
    FeedbackSpec,
    deploy_status_mode,
    gitlab_api_url,
    is_gitlab_com,
    notifications_config,
)
from components.rollouts import (
    ROLLOUTS_NAMESPACE,
    ROLLOUTS_SHA256,
    ROLLOUTS_VERSION,
    needs_rollouts,
    prepare_rollouts,
)
from components.settings import KEYS, SecretStr, Settings, SettingsError, parse_settings, undeclared_problems


def stack_config_keys() -> set[str]:
    """Every key the stack's config holds, declared or not (``project:key``).

    The CLI hands the program its whole config in the ``PULUMI_CONFIG`` environment (mocks and
    the Automation API set it with ``set_all_config``), and accepts keys that Pulumi.yaml does
    not declare (pulumi/pulumi `TestUntypedStackConfigValuesDoNeedProjectDeclaration`).
    """
    return set(pulumi.runtime.config.CONFIG.get()) | set(pulumi.runtime.get_config_env())


def read_settings() -> Settings:
    """Read every declared config key once and validate them together, refusing keys nobody declares."""
    config = pulumi.Config()
    project = pulumi.get_project()
    raw = {key.name: config.get(key.name) for key in KEYS}
    secret_keys = {key.name for key in KEYS if pulumi.runtime.is_config_secret(f"{project}:{key.name}")}
    try:
        return parse_settings(
            raw,
            pulumi.get_stack(),
            secret_keys=secret_keys,
            kube_contexts=read_contexts(os.environ, Path.home()),
            undeclared=undeclared_problems(stack_config_keys(), project),
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
    # The argocd-tls-certs-cm entry (host, PEM bundle) for the CA cacert_file holds, which Argo CD
    # must trust for the same host; empty without one.
    tls_certs: tuple[tuple[str, str], ...] = ()


def read_gitlab_instance() -> GitLabInstance:
    """Read the provider's instance settings once; a CA bundle Argo CD could not use stops the program."""
    config = pulumi.Config("gitlab")
    base_url, cacert_file = config.get("baseUrl"), config.get("cacertFile")
    try:
        tls_certs = ((tls_certs_key(gitlab_api_url(base_url)), read_ca_bundle(cacert_file)),) if cacert_file else ()
    except CaError as exc:
        raise pulumi.RunError(str(SettingsError([exc.problem]))) from None
    return GitLabInstance(base_url, cacert_file, config.get_bool("insecure"), tls_certs)


def read_gitlab(settings: Settings, instance: GitLabInstance) -> HostFacts:
    """The GitLab instance's edition and existing projects; stops on an archived project in the way."""
    host = read_host(settings.gitlab, settings.apps, settings.stack)
    problems = host_problems(host, settings.gitlab, instance.base_url)
    if problems:
        raise pulumi.RunError(str(SettingsError(problems)))
    # The program changes no adopted project's settings; `pulumi preview` says where they leave holes.
    for warning in adoption_warnings(host):
        pulumi.log.warn(f"adopted project {warning}")
    for app in settings.apps:
        for warning in cache_warnings(host, app):
            pulumi.log.warn(warning)
    # Runners that build the default branch must not also run merge requests' code or the deploy job.
    check_runners(settings.apps, hosted=is_gitlab_com(instance.base_url))
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


def read_feedback(settings: Settings, instance: GitLabInstance, repository_suffixes: tuple[str, ...]) -> Feedback:
    """Resolve deployStatus for this GitLab host; warn when deploys report nowhere.

    With project tokens, each manifest project has a token and a status service of its own.
    """
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
        status_suffixes=repository_suffixes if mode == DEPLOY_STATUS_PROJECT_TOKEN else ("",),
    )
    return Feedback(mode, spec, settings.feedback.deploy_status_token, settings.feedback.slack_webhook_url)


def notification_secrets(feedback: Feedback, repositories: list[ManifestRepository]) -> dict[str, pulumi.Input[str]]:
    """The values for the keys this program owns in argocd-notifications-secret, all secret."""
    values: dict[str, pulumi.Input[str]] = {}
    if feedback.mode == DEPLOY_STATUS_PROJECT_TOKEN:
        for repository in repositories:
            if repository.status_token is not None:
                values[GITLAB_TOKEN_KEY + repository.service_suffix] = pulumi.Output.secret(repository.status_token.token)
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
# Argo Rollouts is installed once for the stack when any app's strategy needs it.
wants_rollouts = any(needs_rollouts(app.strategy) for app in settings.apps)
# Read and verified before anything is registered, like Argo CD's: a bad mirror changes nothing.
rollouts_upstream = read_rollouts_manifest(settings) if wants_rollouts else []
# The parsed manifest (about 200,000 objects) lives for the whole run; freezing it keeps the
# garbage collector from rescanning it on every collection while resources are registered.
gc.freeze()
gitlab_instance = read_gitlab_instance()
gitlab_host = read_gitlab(settings, gitlab_instance)
webhook_url = f"{argocd_settings.external_url}/api/webhook" if argocd_settings.external_url else None
repository_specs = manifest_repositories(settings.apps)
feedback = read_feedback(settings, gitlab_instance, tuple(spec.service_suffix for spec in repository_specs))

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
key_owner = deploy_key_provider(settings, gitlab_instance)
# Each manifest project once, however many apps keep their charts in it.
repositories = {
    spec.key: ManifestRepository(
        spec.component_name,
        ManifestRepositoryArgs(
            spec=spec,
            gitlab=settings.gitlab,
            host=gitlab_host,
            stack=settings.stack,
            epoch=settings.credentials_epoch,
            webhook_url=webhook_url,
            webhook_secret=credentials.webhook_secret,
            deploy_key_provider=key_owner,
            status_token=feedback.mode == DEPLOY_STATUS_PROJECT_TOKEN,
            enterprise=gitlab_host.enterprise,
        ),
    )
    for spec in repository_specs
}

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
                # Deploy feedback (and any HTTPS Git) verifies a self-managed GitLab by its own CA.
                tls_certs=gitlab_instance.tls_certs,
            ),
        ),
        read_admin_password=argocd_settings.read_admin_password,
        kube_context=settings.kube_context,
        webhook_secret=credentials.webhook_secret,
        notification_secrets=notification_secrets(feedback, list(repositories.values())),
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
    if wants_rollouts
    else None
)

apps: dict[str, GitOpsApp] = {}
for app_settings in settings.apps:
    apps[app_settings.name] = GitOpsApp(
        app_settings.name,
        GitOpsAppArgs(
            app=app_settings,
            repository=repositories[app_settings.manifest_project.key],
            gitlab=settings.gitlab,
            host=gitlab_host,
            stack=settings.stack,
            epoch=settings.credentials_epoch,
            registry=settings.registry,
            argocd=argocd,
            argocd_namespace=argocd_settings.namespace,
            feedback=feedback.spec,
            rollouts=rollouts,
            deploy_key_provider=key_owner,
        ),
        opts=k8s_opts,
    )
# Each manifest project's default branch is locked once the charts seeded into it are committed,
# and before any app's first pipeline can open a deploy merge request.
for spec in repository_specs:
    repositories[spec.key].lock(
        after=[file for name in spec.apps if apps[name].chart.seed_branch is None for file in apps[name].chart.files]
    )
for app in apps.values():
    app.finish(app.repository.protection)

pulumi.export("argocdNamespace", argocd.namespace)
pulumi.export("argocdVersion", argocd_settings.version)
if argocd.admin_password is not None:
    pulumi.export("argocdAdminPassword", argocd.admin_password)
pulumi.export("argocdPortForward", argocd.port_forward_command)
pulumi.export("argocdUrl", argocd_settings.external_url or "https://localhost:8080")
if webhook_url:
    pulumi.export("webhookUrl", webhook_url)
pulumi.export(
    "apps",
    {
        name: {
            "namespace": app.deployment.namespace,
            "appProjectId": app.project.id,
            "appProjectWebUrl": app.project.web_url,
            "appProjectSshUrl": app.project.ssh_url,
            "manifestProjectWebUrl": app.repository.project.web_url,
            "chartPath": app.settings.chart_path,
            "ciDeployPublicKey": app.ci_public_key,
        }
        for name, app in apps.items()
    },
)
if len(settings.apps) == 1:
    # A one-app stack's outputs, as they have always been.
    only = next(iter(apps.values()))
    pulumi.export("appNamespace", only.deployment.namespace)
    pulumi.export("argocdDeployPublicKey", only.repository.argocd_public_key)
    pulumi.export("ciDeployPublicKey", only.ci_public_key)
    for prefix, project in (("app", only.project), ("manifest", only.repository.project)):
        pulumi.export(f"{prefix}ProjectId", project.id)
        pulumi.export(f"{prefix}ProjectWebUrl", project.web_url)
        pulumi.export(f"{prefix}ProjectSshUrl", project.ssh_url)
