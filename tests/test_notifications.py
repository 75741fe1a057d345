"""Deploy feedback: the notifications config parses, its templates render with Go templates against
an Application shaped by the upstream CRD, the request they make reaches a stand-in for GitLab's
commit status API, and the program registers tokens, subscriptions and keys only where it should.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from components.notifications import (
    DEPLOY_STATUS_OFF,
    DEPLOY_STATUS_PROJECT_TOKEN,
    GITLAB_SERVICE,
    GITLAB_TOKEN_KEY,
    PROJECT_ANNOTATION,
    REF_ANNOTATION,
    SLACK_SERVICE,
    SLACK_URL_KEY,
    SUBSCRIBE_PREFIX,
    TRIGGERS,
    FeedbackSpec,
    deploy_status_mode,
    gitlab_api_url,
    notifications_config,
    secret_keys,
    subscription_annotations,
    template_name,
)
from tests.conftest import ARGO_CD, Run
from tests.tools import loopback_api

SELF_HOSTED = "https://gitlab.example.com/api/v4/"
STATUS_TOKEN = "glpat-StatusOnlyToken-4kd9"
SLACK_URL = "https://hooks.slack.com/services/T0000/B0000/TestOnlyWebhook0"
ARGOCD_URL = "https://argocd.example.com"
# GitLab's commit status states (POST /projects/:id/statuses/:sha).
GITLAB_STATES = {"pending", "running", "success", "failed", "canceled", "skipped"}
PROTECTED_DEFAULT_BRANCH = "main"
FULL = FeedbackSpec(gitlab_api_url="https://gitlab.example.com/api/v4", slack=True, argocd_url=ARGOCD_URL)


# --------------------------------------------------------------------------- pure


def test_the_default_is_off_on_gitlab_com_and_a_project_token_elsewhere() -> None:
    assert deploy_status_mode("", None) == DEPLOY_STATUS_OFF
    assert deploy_status_mode("", "https://gitlab.com/api/v4/") == DEPLOY_STATUS_OFF
    assert deploy_status_mode("", SELF_HOSTED) == DEPLOY_STATUS_PROJECT_TOKEN
    assert deploy_status_mode("token", None) == "token"
    assert gitlab_api_url(SELF_HOSTED) == "https://gitlab.example.com/api/v4"
    assert gitlab_api_url("https://gitlab.example.com") == "https://gitlab.example.com/api/v4"
    assert gitlab_api_url(None) == "https://gitlab.com/api/v4"


def test_config_keys_parse_as_argo_cd_expects() -> None:
    data = notifications_config(FULL)
    triggers = {t.name for t in TRIGGERS}
    assert triggers == {"on-sync-running", "on-deployed", "on-sync-failed", "on-health-degraded"}
    for trigger in TRIGGERS:
        conditions = yaml.safe_load(data[f"trigger.{trigger.name}"])
        assert isinstance(conditions, list) and len(conditions) == 1
        assert conditions[0]["send"] == [template_name(trigger)] and conditions[0]["when"]
        template = yaml.safe_load(data[f"template.{template_name(trigger)}"])
        assert set(template["webhook"]) == {GITLAB_SERVICE, SLACK_SERVICE}
        assert template["webhook"][GITLAB_SERVICE]["method"] == "POST"
    gitlab = yaml.safe_load(data[f"service.webhook.{GITLAB_SERVICE}"])
    assert gitlab["url"] == "https://gitlab.example.com/api/v4"
    assert {"name": "PRIVATE-TOKEN", "value": f"${GITLAB_TOKEN_KEY}"} in gitlab["headers"]
    assert yaml.safe_load(data[f"service.webhook.{SLACK_SERVICE}"])["url"] == f"${SLACK_URL_KEY}"
    assert yaml.safe_load(data["context"]) == {"argocdUrl": ARGOCD_URL}
    # No secret value is ever in the ConfigMap, only references to the Secret's keys.
    assert STATUS_TOKEN not in json.dumps(data) and "hooks.slack.com" not in json.dumps(data)
    assert secret_keys(FULL) == (GITLAB_TOKEN_KEY, SLACK_URL_KEY)


def test_off_configures_nothing() -> None:
    off = FeedbackSpec(gitlab_api_url=None)
    assert notifications_config(off) == {} and secret_keys(off) == () and subscription_annotations(off, "1", "x") == {}


def test_subscriptions_name_the_defined_triggers_and_services() -> None:
    data = notifications_config(FULL)
    annotations = subscription_annotations(FULL, "4242", "gitops-deploy-dev")
    assert annotations.pop(PROJECT_ANNOTATION) == "4242"
    assert annotations.pop(REF_ANNOTATION) == "gitops-deploy-dev"
    for key, value in annotations.items():
        prefix, trigger, service = key.rsplit(".", 2)
        assert prefix == SUBSCRIBE_PREFIX and value == ""
        assert f"trigger.{trigger}" in data and f"service.webhook.{service}" in data
        # A Kubernetes annotation name (after the prefix) has at most 63 characters.
        assert len(key.split("/", 1)[1]) <= 63
    assert len(annotations) == len(TRIGGERS) * 2


# --------------------------------------------------------------------------- against the CRD


def application_schema() -> dict[str, Any]:
    docs = yaml.safe_load_all((ARGO_CD / "v3.5.1" / "install.yaml").read_text())
    crd = next(
        d for d in docs if d and d["kind"] == "CustomResourceDefinition" and d["metadata"]["name"] == "applications.argoproj.io"
    )
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def schema_has(schema: dict[str, Any], path: list[str]) -> bool:
    node = schema
    for part in path:
        properties = node.get("properties") or {}
        if part not in properties:
            return False
        node = properties[part]
    return True


def sample_application(revision: str, phase: str, health: str) -> dict[str, Any]:
    """An Application as the controller reports it mid-sync or after, with the fields the templates read."""
    return {
        "metadata": {
            "name": "webapp",
            "namespace": "argocd",
            "annotations": {PROJECT_ANNOTATION: "4242", REF_ANNOTATION: "gitops-deploy-dev"},
        },
        "status": {
            "operationState": {
                "phase": phase,
                "operation": {"sync": {"revision": revision}},
                "syncResult": {"revision": revision},
                "startedAt": "2026-11-28T10:00:00Z",
                "finishedAt": "2026-11-28T10:00:20Z",
            },
            "health": {"status": health, "lastTransitionTime": "2026-11-28T10:00:30Z"},
        },
    }


def test_every_field_the_templates_and_triggers_read_is_in_the_application_crd() -> None:
    schema = application_schema()
    text = json.dumps(notifications_config(FULL))
    paths = set(re.findall(r"\.app\.([A-Za-z.]+)", text)) | set(re.findall(r"\bapp\.([A-Za-z.]+)", text))
    assert {"status.operationState.phase", "status.health.status", "status.health.lastTransitionTime"} <= paths
    for path in paths:
        parts = path.strip(".").split(".")
        if parts[0] == "metadata":
            continue  # ObjectMeta: name, namespace, annotations
        assert schema_has(schema, parts), path
        # The sample carries it, so rendering below exercises it.
        node: Any = sample_application("x", "Running", "Healthy")
        for part in parts:
            node = node[part]


def render_template(helm: ModuleType, tmp_path: Path, text: str, app: dict[str, Any], context: dict[str, str]) -> str:
    """Render one notification template string with Go templates (Helm's engine), as Argo CD does."""
    chart = Path(tempfile.mkdtemp(dir=tmp_path))
    (chart / "templates").mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: render\nversion: 0.1.0\n")
    # Argo CD passes .app and .context; here they are values.
    body = text.replace(".app.", ".Values.app.").replace(".context.", ".Values.context.")
    (chart / "templates" / "out.yaml").write_text(
        '{{- define "t" -}}' + body + "{{- end -}}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: out\ndata:\n"
        '  text: {{ include "t" . | quote }}\n'
    )
    loaded = helm.Chart.load(str(chart))
    try:
        rendered = loaded.render({"app": app, "context": context}, name="render", namespace="default")
    finally:
        loaded.close()
    out = next(yaml.safe_load(v) for v in rendered.values() if v.strip())
    result: str = out["data"]["text"]
    assert "<no value>" not in result, text
    return result


@dataclass
class StatusApi:
    """Stands in for GitLab's POST /projects/:id/statuses/:sha."""

    base_url: str = ""
    received: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
def status_api() -> Iterator[StatusApi]:
    api = StatusApi()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            api.received.append((self.path, dict(self.headers.items()), body))
            ok = (
                re.fullmatch(r"/api/v4/projects/\d+/statuses/[0-9a-f]{40}", self.path)
                and self.headers.get("PRIVATE-TOKEN") == STATUS_TOKEN
                and body.get("state") in GITLAB_STATES
            )
            # As GitLab: without a ref the status goes to the branch holding the commit, the
            # protected default branch, where a Developer token may neither push nor merge.
            allowed = body.get("ref") not in (None, "", PROTECTED_DEFAULT_BRANCH)
            self.send_response(400 if not ok else 201 if allowed else 403)
            self.end_headers()

    with loopback_api(Handler) as base_url:
        api.base_url = base_url
        yield api


def test_each_template_posts_a_commit_status_gitlab_accepts(helm: ModuleType, tmp_path: Path, status_api: StatusApi) -> None:
    spec = FeedbackSpec(gitlab_api_url=status_api.base_url, slack=True, argocd_url=ARGOCD_URL)
    data = notifications_config(spec)
    service = yaml.safe_load(data[f"service.webhook.{GITLAB_SERVICE}"])
    secrets = {GITLAB_TOKEN_KEY: STATUS_TOKEN}
    # notifications-engine replaces $<key> in a service's config with the Secret's value.
    headers = {h["name"]: re.sub(r"\$([\w-]+)", lambda m: secrets[m.group(1)], h["value"]) for h in service["headers"]}
    revision = "0123456789abcdef0123456789abcdef01234567"
    states = {"on-sync-running": ("Running", "Progressing"), "on-deployed": ("Succeeded", "Healthy")}
    for trigger in TRIGGERS:
        phase, health = states.get(trigger.name, ("Failed", "Degraded"))
        app = sample_application(revision, phase, health)
        webhook = yaml.safe_load(data[f"template.{template_name(trigger)}"])["webhook"]
        path = render_template(helm, tmp_path, webhook[GITLAB_SERVICE]["path"], app, {"argocdUrl": ARGOCD_URL})
        body = render_template(helm, tmp_path, webhook[GITLAB_SERVICE]["body"], app, {"argocdUrl": ARGOCD_URL})
        # What notifications-engine's webhook service sends: POST to the service URL plus the path.
        target = urlsplit(service["url"] + path)
        connection = http.client.HTTPConnection(target.netloc, timeout=10)
        try:
            connection.request("POST", target.path, body=body.encode(), headers=headers)
            assert connection.getresponse().status == 201, (trigger.name, path, body)
        finally:
            connection.close()
        sent = status_api.received[-1][2]
        assert sent == {
            "ref": "gitops-deploy-dev",
            "state": trigger.state,
            "name": "argocd/webapp",
            "description": trigger.description,
            "target_url": f"{ARGOCD_URL}/applications/argocd/webapp",
        }
        assert status_api.received[-1][0] == f"/api/v4/projects/4242/statuses/{revision}"
        slack = json.loads(render_template(helm, tmp_path, webhook[SLACK_SERVICE]["body"], app, {"argocdUrl": ARGOCD_URL}))
        assert slack["text"].startswith("webapp: ") and revision in slack["text"]
    assert len(status_api.received) == len(TRIGGERS)


# --------------------------------------------------------------------------- the program


def notifications_cm(run: Run) -> dict[str, str]:
    data: dict[str, str] = run.named("argocd-notifications-cm")["inputs"].get("data") or {}
    return data


def test_gitlab_com_defaults_to_no_feedback_and_says_so(dev: Run) -> None:
    assert notifications_cm(dev) == {}
    assert not dev.named("argocd-notifications-secret")["inputs"].get("data")
    assert dev.of_type("projectAccessToken:ProjectAccessToken") == []
    assert "annotations" not in dev.named("application")["inputs"]["metadata"]
    assert "deployStatus is off" in dev.report["stderr"]


def test_a_self_hosted_gitlab_gets_a_status_token_and_subscriptions(program: Callable[..., Run]) -> None:
    run = program({"gitlab:baseUrl": SELF_HOSTED})
    assert run.error is None, run.error
    token = run.named("deploy-status-token")
    assert token["inputs"]["scopes"] == ["api"] and token["inputs"]["accessLevel"] == "developer"
    assert token["inputs"]["project"] == run.named("manifest-project")["outputs"]["id"]
    assert token["inputs"]["rotationConfiguration"] == {"expirationDays": 30, "rotateBeforeDays": 7}
    assert "token" in token["additional_secret_outputs"]
    assert token["replacement_trigger"] is not None
    secret = run.named("argocd-notifications-secret")
    assert secret["secret_paths"]
    assert set(secret["inputs"]["data"]) == {GITLAB_TOKEN_KEY}
    assert base64.b64decode(secret["inputs"]["data"][GITLAB_TOKEN_KEY]).decode() == token["outputs"]["token"]
    data = notifications_cm(run)
    assert yaml.safe_load(data[f"service.webhook.{GITLAB_SERVICE}"])["url"] == "https://gitlab.example.com/api/v4"
    annotations = run.named("application")["inputs"]["metadata"]["annotations"]
    assert annotations[PROJECT_ANNOTATION] == run.named("manifest-project")["outputs"]["id"]
    assert annotations[REF_ANNOTATION] == "gitops-deploy-dev"
    assert {k for k in annotations if k.startswith(SUBSCRIBE_PREFIX)} == {
        f"{SUBSCRIBE_PREFIX}.{t.name}.{GITLAB_SERVICE}" for t in TRIGGERS
    }
    assert "deployStatus is off" not in run.report["stderr"]


def test_a_user_token_and_slack_reach_only_the_notifications_secret(program: Callable[..., Run]) -> None:
    run = program(
        {"deployStatus": "token", "deployStatusToken": STATUS_TOKEN, "slackWebhookUrl": SLACK_URL},
        secret_keys=("dockerhubToken", "deployStatusToken", "slackWebhookUrl"),
    )
    assert run.error is None, run.error
    assert run.of_type("projectAccessToken:ProjectAccessToken") == []
    secret = run.named("argocd-notifications-secret")
    values = {k: base64.b64decode(v).decode() for k, v in secret["inputs"]["data"].items()}
    assert values == {GITLAB_TOKEN_KEY: STATUS_TOKEN, SLACK_URL_KEY: SLACK_URL}
    assert secret["secret_paths"]
    # Nowhere else: not in a ConfigMap, an Application, a committed file or an output.
    for res in run.resources:
        if res["name"] == "argocd-notifications-secret":
            continue
        text = json.dumps(res["inputs"]) + json.dumps(res.get("outputs") or {})
        assert STATUS_TOKEN not in text and SLACK_URL not in text, res["name"]
    assert STATUS_TOKEN not in json.dumps(run.outputs) and SLACK_URL not in json.dumps(run.outputs)
    assert f"service.webhook.{SLACK_SERVICE}" in notifications_cm(run)


def test_secrets_set_in_plain_text_are_refused(program: Callable[..., Run]) -> None:
    run = program({"deployStatus": "token", "deployStatusToken": STATUS_TOKEN, "slackWebhookUrl": SLACK_URL})
    assert run.error is not None and run.resources == []
    assert "deployStatusToken" in run.error["message"] and "slackWebhookUrl" in run.error["message"]


def test_feedback_off_changes_no_notification_object(program: Callable[..., Run], dev: Run) -> None:
    off = program({"gitlab:baseUrl": SELF_HOSTED, "deployStatus": "off"})
    assert off.error is None, off.error
    for name in ("argocd-notifications-cm", "argocd-notifications-secret", "application"):
        assert off.named(name)["inputs"] == dev.named(name)["inputs"], name
