"""The real CLI's and providers' rules (tests.engine_rules) applied to what the program registers."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import yaml

from tests.conftest import Run, short_name
from tests.engine_rules import (
    CREATED,
    DELETED,
    REPLACED,
    RETAINED,
    UNCHANGED,
    UPDATED,
    by_action,
    classify,
    config_violations,
    diff_runs,
    protection_violations,
    readme_config_sets,
)
from tests.tools import REPO_ROOT, readme_blocks

STACKS = sorted(p.name.split(".")[1] for p in REPO_ROOT.glob("Pulumi.*.yaml"))
PROJECT = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())


def setup_commands() -> str:
    """The README's set-up block: the first bash block under "Set up and run"."""
    return readme_blocks("Set up and run")[0]


# --- The CLI's config check ----------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_the_cli_accepts_every_committed_stack(stack: str) -> None:
    doc = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())
    assert config_violations(PROJECT, doc, readme_config_sets(setup_commands())) == []


def test_the_readme_sets_every_required_secret() -> None:
    required = {k for k, v in PROJECT["config"].items() if v.get("secret")}
    assert required == {"dockerhubToken"}
    assert required <= readme_config_sets(setup_commands())
    assert "dockerhubUser" in readme_config_sets(setup_commands())


def test_the_config_check_fails_on_declarations_without_defaults() -> None:
    # The committed files as they were before every optional key got its `default: ""`.
    without_defaults = copy.deepcopy(PROJECT)
    optional = [k for k, v in without_defaults["config"].items() if v.get("default") in ("", [])]
    for key in optional:
        del without_defaults["config"][key]["default"]
    for stack in STACKS:
        doc = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())
        unset = {k for k in optional if f"gitops-bootstrap:{k}" not in (doc.get("config") or {})}
        found = config_violations(without_defaults, doc, readme_config_sets(setup_commands()))
        assert unset and {p.split(":")[0] for p in found} == unset - readme_config_sets(setup_commands()), stack


def test_the_config_check_fails_where_the_cli_would() -> None:
    # The declarations this project shipped before: optional keys without a default, which
    # the stack files left unset; and the two mistakes the CLI refuses outright.
    project = {
        "name": "gitops-bootstrap",
        "config": {
            "argocdVersion": {"type": "string", "default": "v3.5.1"},
            "argocdExternalUrl": {"type": "string"},
            "gitlabGroup": {"type": "string"},
            "slackWebhookUrl": {"type": "string", "secret": True, "default": ""},
            "argocdHa": {"type": "boolean", "default": ""},
        },
    }
    stack = {"config": {"gitops-bootstrap:gitlabGroup": "acme"}}
    found = config_violations(project, stack)
    assert [p.split(":")[0] for p in found] == ["argocdExternalUrl", "slackWebhookUrl", "argocdHa"]
    assert config_violations(project, stack, {"argocdExternalUrl"}) == found[1:]


# --- Editions ------------------------------------------------------------------------------


@pytest.mark.parametrize("enterprise", [True, False])
def test_branch_protection_uses_only_this_editions_arguments(program: Callable[..., Run], enterprise: bool) -> None:
    run = program(gitlab={"enterprise": enterprise})
    assert run.error is None, run.error
    protections = run.of_type("branchProtection:BranchProtection")
    # Both default branches and the manifest project's pipeline branch.
    assert len(protections) == 3
    for res in protections:
        assert protection_violations(res["inputs"], enterprise) == [], res["name"]
        # The same arguments on the other edition are refused: the rule can fail.
        assert protection_violations(res["inputs"], not enterprise)
    levels = {short_name(r["name"]): r["inputs"] for r in protections}
    manifest = levels["manifest-default-branch"]
    if enterprise:
        assert manifest["allowedToPushes"] == [{"accessLevel": "no one"}]
        assert manifest["allowedToMerges"] == [{"accessLevel": "maintainer"}]
    else:
        assert (manifest["pushAccessLevel"], manifest["mergeAccessLevel"]) == ("no one", "maintainer")


def test_gitlab_com_is_enterprise_edition(dev: Run) -> None:
    # The demo stack points at gitlab.com, whose /metadata answers enterprise: true.
    assert [i["token"] for i in dev.report["invokes"]].count("gitlab:index/getMetadata:getMetadata") == 1
    for res in dev.of_type("branchProtection:BranchProtection"):
        assert protection_violations(res["inputs"], enterprise=True) == []


# --- The CLI version ------------------------------------------------------------------------


def test_an_old_cli_refuses_to_run_the_program(dev: Run) -> None:
    assert PROJECT["requiredPulumiVersion"] == ">=3.272.0"
    calls = dev.report["required_pulumi_version"]
    # Checked once, before the program reads any config or registers anything.
    assert calls == [{"range": ">=3.272.0", "config_reads_before": 0, "resources_before": 0}]


# --- Diffs as the engine computes them ------------------------------------------------------

WEBHOOK = {"argocdExternalUrl": "https://argocd.example.com"}


def credentials(run: Run) -> set[str]:
    """What a rotation must replace on this stack: key pairs, deploy keys, token, webhook secret.

    The GitLab webhook too: the provider replaces a hook on any change (a new token
    included), create-before-delete, so the new hook exists before the old one goes.
    """
    names = {"argocd-repo-key", "ci-push-key", "argocd-deploy-key", "ci-deploy-key"}
    present = {short_name(r["name"]) for r in run.resources}
    return names | ({"mr-token", "argocd-webhook-secret", "argocd-webhook"} & present)


def by_role(changes: dict, action: str) -> set[str]:
    """``by_action`` with a manifest project's resources by role (``argocd-deploy-key``), not by its path."""
    return {short_name(name) for name in by_action(changes, action)}


def assert_safe(changes: dict, allowed_replacements: set[str]) -> None:
    replaced = by_role(changes, REPLACED)
    assert replaced <= allowed_replacements, sorted(replaced - allowed_replacements)
    assert not [c.name for c in changes.values() if c.delete_first]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_rotation_replaces_credentials_only(program: Callable[..., Run], stack: str) -> None:
    first, second = program({"credentialsEpoch": "1"}, stack=stack), program({"credentialsEpoch": "2"}, stack=stack)
    assert first.error is None and second.error is None
    changes = diff_runs(first.resources, second.resources)
    expected = credentials(second)
    assert by_role(changes, REPLACED) == expected
    assert_safe(changes, expected)
    assert not by_role(changes, CREATED) and not by_role(changes, DELETED)
    urns = {short_name(r["name"]): r["urn"] for r in second.resources}
    consumers = {
        "manifest-repo": "argocd-deploy-key",
        "ssh-private-key": "ci-deploy-key",
        "gitlab-private-token": "mr-token",
        "argocd-secret": "argocd-webhook-secret",
    }
    for consumer, credential in consumers.items():
        if credential not in expected:
            continue
        # An in-place update that waits for the new credential; the old one is deleted last
        # (create-before-delete is the engine's default, and no credential turns it off).
        assert changes[urns[consumer]].action == UPDATED, consumer
        assert urns[credential] in second.named(consumer)["dependencies"], (consumer, credential)
    for name in expected:
        assert second.named(name)["delete_before_replace"] is False


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pytest.mark.parametrize(
    "change",
    [{"argocdReconciliationTimeout": "300s"}, {"argocdExternalUrl": "https://cd.example.org"}],
    ids=["reconciliation-timeout", "external-url"],
)
def test_argocd_settings_replace_no_kubernetes_object(program: Callable[..., Run], stack: str, change: dict[str, str]) -> None:
    first, second = program(stack=stack), program(change, stack=stack)
    assert first.error is None and second.error is None
    changes = diff_runs(first.resources, second.resources)
    kube = {c.name for c in changes.values() if c.type.startswith("kubernetes:") and c.action == REPLACED}
    assert kube == set()
    assert not [c.name for c in changes.values() if c.delete_first]
    updated = by_role(changes, UPDATED)
    assert "argocd-cm" in updated
    if "argocdExternalUrl" in change and stack == "dev":
        # A first public URL adds the webhook and its secret, and writes only that key.
        assert {"argocd-webhook", "argocd-webhook-secret"} <= by_role(changes, CREATED)
        assert "argocd-secret" in updated


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_upgrade_replaces_nothing(program: Callable[..., Run], stack: str) -> None:
    old, new = program({"argocdVersion": "v3.4.7"}, stack=stack), program({"argocdVersion": "v3.5.1"}, stack=stack)
    assert old.error is None and new.error is None
    changes = diff_runs(old.resources, new.resources)
    assert by_role(changes, REPLACED) == set()
    assert by_role(changes, UPDATED), "the upgrade changes the workloads in place"


def without_mutable_settings(run: Run) -> list[dict]:
    """The run's records as a stack that ran before the mutable settings existed left them."""
    records = copy.deepcopy(run.resources)
    for record in records:
        if record["type"] == "pulumi:providers:kubernetes":
            record["inputs"].pop("enableSecretMutable")
            record["inputs"].pop("enableConfigMapMutable")
    return records


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_turning_on_mutable_settings_changes_only_the_provider(program: Callable[..., Run], stack: str) -> None:
    run = program(stack=stack)
    changes = diff_runs(without_mutable_settings(run), run.resources)
    assert by_role(changes, UPDATED) == {"k8s"}
    assert {c.action for c in changes.values() if c.name != "k8s"} == {UNCHANGED}


def test_without_mutable_settings_a_rotation_would_wipe_argocd_secret(program: Callable[..., Run]) -> None:
    # The same rotation diffed by a provider without the settings: the rules catch the bug
    # the settings fix, so the tests above could fail.
    first, second = program({"credentialsEpoch": "1"}, stack="prod"), program({"credentialsEpoch": "2"}, stack="prod")
    old_second = without_mutable_settings(second)
    changes = diff_runs(without_mutable_settings(first), old_second)
    wiped = {c.name for c in changes.values() if c.delete_first}
    assert wiped == {"argocd-secret", "manifest-repo"}


def test_every_variable_passes_hidden_as_a_bool(program: Callable[..., Run], dev: Run) -> None:
    for run in (dev, program({"hideCiVariables": "true"}, stack="prod")):
        variables = run.of_type("projectVariable:ProjectVariable")
        assert variables and all(isinstance(v["inputs"].get("hidden"), bool) for v in variables)
    # The rule the bool avoids: without `hidden`, a new value alone would replace the variable.
    record = copy.deepcopy(dev.named("ssh-private-key"))
    record["inputs"].pop("hidden")
    changed = copy.deepcopy(record)
    changed["inputs"]["value"] = "another key"
    assert classify(record, changed, {}).action == REPLACED
    assert classify(dev.named("ssh-private-key"), {**changed, "inputs": {**changed["inputs"], "hidden": False}}, {}).action == (
        UPDATED
    )


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_second_up_of_a_new_stack_changes_nothing(program: Callable[..., Run], stack: str) -> None:
    # The first run created the app project with the starter marker; the second finds it live.
    first = program(stack=stack)
    app_path = f"{first.named('app-project')['outputs']['path_with_namespace']}"
    second = program(
        stack=stack, gitlab={"projects": [{"path_with_namespace": app_path, "topics": ["gitops-bootstrap-starter"]}]}
    )
    assert first.error is None and second.error is None
    changes = diff_runs(first.resources, second.resources)
    assert {c.action for c in changes.values()} == {UNCHANGED}, [
        (c.name, c.paths) for c in changes.values() if c.action != UNCHANGED
    ]


def test_removing_the_starter_topic_forgets_the_starter_files_without_touching_them(program: Callable[..., Run]) -> None:
    # The README's way out of re-commits after a refresh; also what an app project created before
    # the starter app looks like (no marker), which therefore gets no starter file.
    new = program()
    app_path = new.named("app-project")["outputs"]["path_with_namespace"]
    upgraded = program(gitlab={"projects": [{"path_with_namespace": app_path}]})
    changes = diff_runs(new.resources, upgraded.resources)
    assert by_role(changes, CREATED) == set()
    assert {c.name for c in changes.values() if c.action == RETAINED} == {
        r["name"] for r in new.of_type("repositoryFile:RepositoryFile") if r["name"].startswith("app/")
    }
    # Those would be dropped from state only: the files are retained on delete.
    assert all(r["retain_on_delete"] for r in new.of_type("repositoryFile:RepositoryFile") if r["name"].startswith("app/"))


def test_turning_on_deploy_feedback_updates_in_place(program: Callable[..., Run], dev: Run) -> None:
    on = program(
        {
            "deployStatus": "token",
            "deployStatusToken": "glpat-StatusOnlyToken-4kd9",
            "slackWebhookUrl": "https://hooks.slack.com/x",
        },
        secret_keys=("dockerhubToken", "deployStatusToken", "slackWebhookUrl"),
    )
    assert on.error is None, on.error
    changes = diff_runs(dev.resources, on.resources)
    assert by_role(changes, REPLACED) == set() and by_role(changes, CREATED) == set()
    assert by_role(changes, UPDATED) == {"argocd-notifications-cm", "argocd-notifications-secret", "application"}
