"""Deploy feedback: Argo CD notifications that post a GitLab commit status, and optionally a Slack message, per sync.

Pure module: no Pulumi. It writes the keys this program owns in `argocd-notifications-cm`
(one webhook service per destination, one template per state, four triggers), names the keys
it owns in `argocd-notifications-secret`, and gives the annotations an Application subscribes
with. Per-app values (the GitLab project id) come from the Application's own annotations, so
the shared ConfigMap does not change when an app is added.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import yaml

DEPLOY_STATUS_PROJECT_TOKEN = "project-token"
DEPLOY_STATUS_TOKEN = "token"
DEPLOY_STATUS_OFF = "off"
DEPLOY_STATUS_MODES: tuple[str, ...] = (DEPLOY_STATUS_PROJECT_TOKEN, DEPLOY_STATUS_TOKEN, DEPLOY_STATUS_OFF)

# Webhook services in argocd-notifications-cm (`service.webhook.<name>`).
GITLAB_SERVICE = "gitops-gitlab-status"
SLACK_SERVICE = "gitops-slack"
# Keys in argocd-notifications-secret, referenced from the services as `$<key>`.
GITLAB_TOKEN_KEY = "gitops-gitlab-status-token"
SLACK_URL_KEY = "gitops-slack-webhook-url"
# The Application annotations that carry the manifest project's id for the status path, and
# the ref the status is filed under (see _status_body).
PROJECT_ANNOTATION = "gitops-bootstrap/gitlab-project-id"
REF_ANNOTATION = "gitops-bootstrap/gitlab-status-ref"
SUBSCRIBE_PREFIX = "notifications.argoproj.io/subscribe"

# The revision a sync is working on (while it runs), and the one it synced (afterwards).
RUNNING_REVISION = ".app.status.operationState.operation.sync.revision"
SYNCED_REVISION = ".app.status.operationState.syncResult.revision"


@dataclass(frozen=True)
class Trigger:
    """One trigger: when it fires, the commit status it posts, and what it says."""

    name: str
    when: str
    state: str
    description: str
    revision: str
    once_per: str | None = None


_HAS_OPERATION = "app.status.operationState != nil"
_ONCE_PER_SYNC = "app.status.operationState?.syncResult?.revision"
# GitLab's commit status states are pending, running, success, failed and canceled. Each
# trigger fires once per revision: a self-heal re-sync of a deployed revision must not post
# `running` again over its `success`, which nothing would follow.
TRIGGERS: tuple[Trigger, ...] = (
    Trigger(
        "on-sync-running",
        f"{_HAS_OPERATION} and app.status.operationState.phase in ['Running']",
        "running",
        "Argo CD is syncing",
        RUNNING_REVISION,
        once_per="app.status.operationState?.operation?.sync?.revision",
    ),
    Trigger(
        "on-deployed",
        # Argo CD's own catalog condition (notifications_catalog/triggers/on-deployed.yaml): the
        # phase turns Succeeded before health is recomputed, so an earlier Healthy must not count.
        f"{_HAS_OPERATION} and app.status.operationState.phase in ['Succeeded'] and app.status.health.status == 'Healthy'"
        " and (!time.Parse(app.status.health.lastTransitionTime).Add(1 * time.Minute)"
        ".Before(time.Parse(app.status.operationState.finishedAt))"
        " or time.Parse(app.status.health.lastTransitionTime).Before(time.Parse(app.status.operationState.startedAt)))",
        "success",
        "Deployed and healthy",
        SYNCED_REVISION,
        once_per=_ONCE_PER_SYNC,
    ),
    Trigger(
        "on-sync-failed",
        f"{_HAS_OPERATION} and app.status.operationState.phase in ['Error', 'Failed']",
        "failed",
        "The sync failed",
        SYNCED_REVISION,
        once_per=_ONCE_PER_SYNC,
    ),
    Trigger(
        "on-health-degraded",
        f"{_HAS_OPERATION} and app.status.health.status == 'Degraded'",
        "failed",
        "Deployed, but the app is degraded",
        SYNCED_REVISION,
        once_per=_ONCE_PER_SYNC,
    ),
)


@dataclass(frozen=True)
class FeedbackSpec:
    """Where deploy feedback goes: GitLab's API (None: no commit status), Slack, and Argo CD's URL for links."""

    gitlab_api_url: str | None
    slack: bool = False
    argocd_url: str | None = None
    # One commit-status service per token: "" for the stack's one token (deployStatus=token, or a
    # single-app stack's project token), a manifest repository's suffix for each project token.
    status_suffixes: tuple[str, ...] = ("",)

    @property
    def enabled(self) -> bool:
        """Whether any notification is configured."""
        return self.gitlab_api_url is not None or self.slack

    def services(self, status_suffix: str = "") -> tuple[str, ...]:
        """The webhook services an Application whose manifest project has ``status_suffix`` subscribes to."""
        return tuple(
            s for s, on in ((GITLAB_SERVICE + status_suffix, self.gitlab_api_url is not None), (SLACK_SERVICE, self.slack)) if on
        )

    def status_suffix(self, repository_suffix: str) -> str:
        """The commit-status service suffix for a manifest repository: its own where it has a token of its own."""
        return repository_suffix if repository_suffix in self.status_suffixes else ""


def gitlab_api_url(base_url: str | None) -> str:
    """GitLab's REST API root from the provider's `gitlab:baseUrl` (gitlab.com when unset)."""
    url = (base_url or "https://gitlab.com/api/v4").rstrip("/")
    return url if url.endswith("/api/v4") else f"{url}/api/v4"


def is_gitlab_com(base_url: str | None) -> bool:
    """Whether the provider talks to gitlab.com, whose tier the API does not tell."""
    return (urlparse(base_url or "https://gitlab.com/").hostname or "") in ("gitlab.com", "www.gitlab.com")


def deploy_status_mode(configured: str, base_url: str | None) -> str:
    """The effective `deployStatus`: as set, or off on gitlab.com (project tokens need Premium) and project-token elsewhere."""
    if configured:
        return configured
    return DEPLOY_STATUS_OFF if is_gitlab_com(base_url) else DEPLOY_STATUS_PROJECT_TOKEN


def template_name(trigger: Trigger) -> str:
    """The template a trigger sends."""
    return f"gitops-{trigger.name}"


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=4096)


def _status_body(trigger: Trigger, argocd_url: str | None) -> str:
    body = {
        "state": trigger.state,
        # GitLab files a status under a ref and lets only users who may push to or merge into
        # that ref post it (Ci::CreateCommitStatusService, Ci::PipelinePolicy#can_update_branch?).
        # Left out, the ref is the protected default branch, where a Developer token gets 403;
        # the app's deploy branch is unprotected, and the merged commit came from it.
        # A raw `...` string in the template: the body is JSON, which would escape double quotes.
        "ref": f"{{{{index .app.metadata.annotations `{REF_ANNOTATION}`}}}}",
        # One status per app: apps that share a manifest repository never overwrite each other's.
        "name": "argocd/{{.app.metadata.name}}",
        "description": trigger.description,
    }
    if argocd_url:
        body["target_url"] = "{{.context.argocdUrl}}/applications/{{.app.metadata.namespace}}/{{.app.metadata.name}}"
    return json.dumps(body)


def _slack_body(trigger: Trigger, argocd_url: str | None) -> str:
    text = f"{{{{.app.metadata.name}}}}: {trigger.description} (revision {{{{{trigger.revision}}}}})"
    if argocd_url:
        text += " {{.context.argocdUrl}}/applications/{{.app.metadata.namespace}}/{{.app.metadata.name}}"
    return json.dumps({"text": text})


def notifications_config(spec: FeedbackSpec) -> dict[str, str]:
    """The keys this program writes into `argocd-notifications-cm` (empty when feedback is off)."""
    if not spec.enabled:
        return {}
    data: dict[str, str] = {}
    if spec.argocd_url:
        data["context"] = _dump({"argocdUrl": spec.argocd_url})
    if spec.gitlab_api_url is not None:
        for suffix in spec.status_suffixes:
            data[f"service.webhook.{GITLAB_SERVICE}{suffix}"] = _dump(
                {
                    "url": spec.gitlab_api_url,
                    "headers": [
                        {"name": "PRIVATE-TOKEN", "value": f"${GITLAB_TOKEN_KEY}{suffix}"},
                        {"name": "Content-Type", "value": "application/json"},
                    ],
                }
            )
    if spec.slack:
        data[f"service.webhook.{SLACK_SERVICE}"] = _dump(
            {"url": f"${SLACK_URL_KEY}", "headers": [{"name": "Content-Type", "value": "application/json"}]}
        )
    project = f"{{{{index .app.metadata.annotations `{PROJECT_ANNOTATION}`}}}}"
    for trigger in TRIGGERS:
        webhook: dict[str, Any] = {}
        if spec.gitlab_api_url is not None:
            for suffix in spec.status_suffixes:
                webhook[GITLAB_SERVICE + suffix] = {
                    "method": "POST",
                    "path": f"/projects/{project}/statuses/{{{{{trigger.revision}}}}}",
                    "body": _status_body(trigger, spec.argocd_url),
                }
        if spec.slack:
            webhook[SLACK_SERVICE] = {"method": "POST", "body": _slack_body(trigger, spec.argocd_url)}
        data[f"template.{template_name(trigger)}"] = _dump({"webhook": webhook})
        condition: dict[str, Any] = {"when": trigger.when, "send": [template_name(trigger)]}
        if trigger.once_per:
            condition["oncePer"] = trigger.once_per
        data[f"trigger.{trigger.name}"] = _dump([condition])
    return data


def secret_keys(spec: FeedbackSpec) -> tuple[str, ...]:
    """The keys this program writes into `argocd-notifications-secret`."""
    status = tuple(GITLAB_TOKEN_KEY + suffix for suffix in spec.status_suffixes) if spec.gitlab_api_url is not None else ()
    return (*status, *((SLACK_URL_KEY,) if spec.slack else ()))


def subscription_annotations(spec: FeedbackSpec, project_id: str, status_ref: str, status_suffix: str = "") -> dict[str, str]:
    """The Application's annotations: its project id and status ref, and a subscription per trigger and service."""
    if not spec.enabled:
        return {}
    annotations = {f"{SUBSCRIBE_PREFIX}.{t.name}.{service}": "" for t in TRIGGERS for service in spec.services(status_suffix)}
    if spec.gitlab_api_url is not None:
        annotations[PROJECT_ANNOTATION] = project_id
        annotations[REF_ANNOTATION] = status_ref
    return annotations
