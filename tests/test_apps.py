"""Many apps on one Argo CD: the `apps` setting, isolation between apps, names that never move."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.apps import manifest_repositories
from components.notifications import GITLAB_SERVICE, GITLAB_TOKEN_KEY, PROJECT_ANNOTATION, REF_ANNOTATION
from components.settings import KEEP_NAMES_FIELD, SettingsError, parse_settings
from tests.conftest import Run, base_config, run_program, short_name, stack_config
from tests.engine_rules import (
    CREATED,
    DELETED,
    REPLACED,
    RETAINED,
    UNCHANGED,
    UPDATED,
    AliasError,
    by_action,
    diff_runs,
    engine_urns,
    resolve_aliases,
)
from tests.test_notifications import SELF_HOSTED, notifications_cm
from tests.tools import REPO_ROOT, missing

SECRET = frozenset({"dockerhubToken"})
# The last release before apps had a component each: a one-app stack created by it must
# upgrade to this version without a replacement.
PREVIOUS_RELEASE = "e7195094625e8bf638737c994bea36a98cda952c"
TEAMS = ("orders", "payments", "storefront")
APP_KEYS = ("appName", "appNamespace", "appProject", "manifestProject", "chartPath")


def teams_apps() -> list[dict[str, Any]]:
    """The example stack's `apps` list."""
    apps: list[dict[str, Any]] = json.loads(stack_config("teams")["apps"])
    return apps


def with_apps(apps: list[dict[str, Any]]) -> dict[str, str | None]:
    """Overrides of the example stack that set its `apps` list."""
    return {"apps": json.dumps(apps)}


def parse(raw: Mapping[str, str | None]) -> Any:
    return parse_settings(raw, "teams", secret_keys=SECRET)


def problems(raw: Mapping[str, str | None]) -> list[str]:
    with pytest.raises(SettingsError) as info:
        parse(raw)
    return info.value.keys


# --- Settings ------------------------------------------------------------------------------


def test_the_example_stack_has_three_apps_two_on_one_manifest_project() -> None:
    settings = parse(base_config("teams"))
    assert [a.name for a in settings.apps] == list(TEAMS)
    assert [a.namespace for a in settings.apps] == list(TEAMS)
    assert not any(a.single_app_names for a in settings.apps)
    repos = manifest_repositories(settings.apps)
    assert [(r.key, r.apps) for r in repos] == [
        ("platform-charts", ("orders", "payments")),
        ("storefront-chart", ("storefront",)),
    ]
    assert settings.apps[1].port == 9090 and settings.apps[2].strategy == "canary"
    # Stack-wide defaults reach each app unless it sets its own.
    assert {a.merge_request_via for a in settings.apps} == {"push-options"}


def test_the_single_app_keys_are_one_app_with_its_old_names() -> None:
    single = parse_settings(base_config("dev"), "dev", secret_keys=SECRET)
    assert len(single.apps) == 1 and single.apps[0].single_app_names and single.apps[0].config_path == ""
    # The same app as an `apps` entry that keeps the single app's names.
    raw = base_config("dev")
    entry = {
        "name": raw.pop("appName"),
        "namespace": raw.pop("appNamespace"),
        "appProject": raw.pop("appProject"),
        "manifestProject": raw.pop("manifestProject"),
        "chartPath": raw.pop("chartPath"),
        KEEP_NAMES_FIELD: True,
    }
    listed = parse_settings({**raw, "apps": json.dumps([entry])}, "dev", secret_keys=SECRET)
    assert listed.apps[0].config_path == "apps[0]"
    assert {**vars(listed.apps[0]), "config_path": ""} == vars(single.apps[0])


@pytest.mark.parametrize(
    ("apps", "keys"),
    [
        ([{"name": "orders", "namespace": "Orders"}], ["apps[0].namespace"]),
        (
            [{"name": "orders"}, {"name": "orders", "namespace": "orders-2", "appProject": "o2", "manifestProject": "o2-chart"}],
            # Its derived image repository is the other's too.
            ["apps[1].name", "apps[1].imageRepository"],
        ),
        (
            [{"name": "orders"}, {"name": "billing", "imageRepository": "docker.io/gitopsdemo/orders"}],
            ["apps[1].imageRepository"],
        ),
        (
            [{"name": "orders"}, {"name": "billing", "buildCacheRepository": "docker.io/gitopsdemo/orders"}],
            ["apps[1].buildCacheRepository"],
        ),
        (
            [
                {"name": "orders", "buildCacheRepository": "registry.example.com/cache"},
                {"name": "billing", "buildCacheRepository": "registry.example.com/cache"},
            ],
            ["apps[1].buildCacheRepository"],
        ),
        (
            [{"name": "orders", "manifestProject": "my_charts"}, {"name": "billing", "manifestProject": "My-Charts"}],
            ["apps[1].manifestProject"],
        ),
        (
            [
                {"name": "orders", "manifestProject": "charts", "chartPath": "orders"},
                {"name": "billing", "adoptManifestProject": "acme/platform/charts", "chartPath": "billing"},
            ],
            ["apps[1].adoptManifestProject"],
        ),
        ([{"name": "orders"}, {"name": "billing", "appProject": "Orders-App"}], ["apps[1].appProject"]),
        ([{"name": "orders", "appProject": True}], ["apps[0].appProject"]),
        ([{"name": "orders", "appProject": "orders", "manifestProject": "Orders"}], ["apps[0].manifestProject"]),
        (
            [{"name": "orders", "adoptAppProject": "acme/platform/orders", "manifestProject": "orders"}],
            ["apps[0].manifestProject"],
        ),
        ([{"name": "orders", "port": "http"}], ["apps[0].port"]),
        ([{"name": "orders", "buildRunnerTags": "buildkit"}], ["apps[0].buildRunnerTags"]),
        (
            [{"name": "orders", "buildRunnerTags": ["buildkit", "x"], "buildCheckRunnerTags": ["buildkit"]}],
            ["apps[0].buildCheckRunnerTags"],
        ),
        ([{"name": "orders"}, {"name": "billing", "namespace": "orders"}], ["apps[1].namespace"]),
        ([{"name": "orders"}, {"name": "billing", "appProject": "orders-app"}], ["apps[1].appProject"]),
        ([{"name": "orders", "manifestProject": "c"}, {"name": "billing", "manifestProject": "c"}], ["apps[1].chartPath"]),
        (
            [
                {"name": "orders", "manifestProject": "c", "chartPath": "charts"},
                {"name": "billing", "manifestProject": "c", "chartPath": "charts/billing"},
            ],
            ["apps[1].chartPath"],
        ),
        ([{"name": "orders"}, {"name": "billing", "appProject": "orders-chart"}], ["apps[1].appProject"]),
        ([{"name": "orders", "nmae": "x"}], ["apps[0].nmae"]),
        ([{"namespace": "orders"}], ["apps[0].name"]),
        (["orders"], ["apps[0]"]),
        ([{"name": "orders", "namespace": "argocd"}], ["apps[0].namespace"]),
        ([{"name": "orders", "namespace": "kube-system"}], ["apps[0].namespace"]),
        ([{"name": "orders", "imageRepository": "docker.io/someone-else/orders"}], ["apps[0].imageRepository"]),
        ([{"name": "orders", "port": 70000}], ["apps[0].port"]),
        ([{"name": "orders", "deliveryStrategy": "bluegreen"}], ["apps[0].deliveryStrategy"]),
        ([{"name": "orders", "mergeRequestVia": "email"}], ["apps[0].mergeRequestVia"]),
        ([{"name": "Orders"}], ["apps[0].namespace", "apps[0].name", "apps[0].imageRepository"]),
        (
            [{"name": "orders", KEEP_NAMES_FIELD: True}, {"name": "billing", KEEP_NAMES_FIELD: True}],
            [f"apps[1].{KEEP_NAMES_FIELD}"],
        ),
    ],
)
def test_bad_app_entries_are_named_by_their_path(apps: list[Any], keys: list[str]) -> None:
    raw = {**base_config("teams"), "apps": json.dumps(apps)}
    assert problems(raw) == keys


def test_a_field_without_a_value_is_unset() -> None:
    # `chartPath:` with nothing after it is YAML null: the default, never the text "None".
    entry = {"name": "orders", "chartPath": None, "appProject": None, KEEP_NAMES_FIELD: None}
    app = parse({**base_config("teams"), "apps": json.dumps([entry])}).apps[0]
    assert (app.chart_path, app.app_project.path, app.single_app_names) == (".", "orders-app", False)


def test_apps_must_be_a_list_without_secrets() -> None:
    raw = {**base_config("teams"), "apps": '{"name": "orders"}'}
    assert problems(raw) == ["apps"]
    with pytest.raises(SettingsError, match="holds no secrets") as info:
        parse_settings(base_config("teams"), "teams", secret_keys=SECRET | {"apps"})
    assert info.value.keys == ["apps"]


def test_a_single_app_key_beside_apps_is_refused() -> None:
    # The CLI merges Pulumi.yaml's defaults in, so only a value other than the default can be told apart.
    raw = {**base_config("teams"), "appNamespace": "gitops-demo", "appName": "shop"}
    assert problems(raw) == ["appName"]


# --- Three apps under mocks ------------------------------------------------------------------


@pytest.fixture(scope="module")
def teams(program: Callable[..., Run]) -> Run:
    run = program(stack="teams")
    assert run.error is None, run.error and run.error["traceback"]
    return run


def k8s(run: Run, kind: str) -> list[dict[str, Any]]:
    return [r["inputs"] for r in run.resources if r["custom"] and r["inputs"].get("kind") == kind]


def owner_app(run: Run, record: dict[str, Any]) -> str | None:
    """The app whose component a resource sits under, if any."""
    by_urn = run.by_urn()
    while record is not None:
        if record["type"] == "gitops:app:App":
            return str(record["name"])
        record = by_urn.get(record["parent"])  # type: ignore[assignment]
    return None


def test_each_app_gets_one_component_with_everything(teams: Run) -> None:
    assert {r["name"] for r in teams.of_type("gitops:app:App")} == set(TEAMS)
    for app in TEAMS:
        names = {r["name"] for r in teams.resources if owner_app(teams, r) == app and r["type"] != "gitops:app:App"}
        # Exactly what one app gets, each named after the app.
        for suffix in (
            "app-project",
            "ci-push-key",
            "ci-deploy-key",
            "ssh-private-key",
            "dockerhub-token",
            "app-default-branch",
            "pipeline-branch",
            "pipeline-file",
            "app-namespace",
            "argocd-project",
            "manifest-repo",
            "application",
            "chart/Chart.yaml",
            "app/README.md",
        ):
            assert f"{app}-{suffix}" in names, (app, suffix)
        assert all(n.startswith(f"{app}-") for n in names), names


def test_app_projects_never_cross_apps(teams: Run) -> None:
    projects = {p["metadata"]["name"]: p["spec"] for p in k8s(teams, "AppProject")}
    assert set(projects) == set(TEAMS)
    for name, spec in projects.items():
        assert spec["destinations"] == [{"server": "https://kubernetes.default.svc", "namespace": name}]
    applications = {a["metadata"]["name"]: a["spec"] for a in k8s(teams, "Application")}
    for name, spec in applications.items():
        assert spec["project"] == name and spec["destination"]["namespace"] == name
        assert spec["source"]["path"] == {"orders": "orders", "payments": "payments", "storefront": "."}[name]
    repos = {name: spec["sourceRepos"] for name, spec in projects.items()}
    # Two apps on one manifest project share its URL (isolated by namespace only); the third shares nothing.
    assert repos["orders"] == repos["payments"]
    assert not set(repos["storefront"]) & set(repos["orders"])


def test_one_repository_secret_per_app_project_and_one_read_key_per_manifest_project(teams: Run) -> None:
    secrets = {s["metadata"]["name"]: s for s in k8s(teams, "Secret") if s["metadata"]["name"].startswith("repo-")}
    assert set(secrets) == {f"repo-{app}" for app in TEAMS}
    for app, secret in secrets.items():
        assert secret["stringData"]["project"] == app.removeprefix("repo-")
    shared = secrets["repo-orders"]["stringData"], secrets["repo-payments"]["stringData"]
    assert shared[0]["url"] == shared[1]["url"] and shared[0]["sshPrivateKey"] == shared[1]["sshPrivateKey"]
    alone = secrets["repo-storefront"]["stringData"]
    assert alone["url"] != shared[0]["url"] and alone["sshPrivateKey"] != shared[0]["sshPrivateKey"]
    keys = teams.of_type("gitlab:index/deployKey:DeployKey")
    read_only = [k for k in keys if not k["inputs"]["canPush"]]
    push = [k for k in keys if k["inputs"]["canPush"]]
    assert len(read_only) == 2 and len({k["inputs"]["project"] for k in read_only}) == 2
    assert len(push) == 3 and {k["inputs"]["title"] for k in push} == {f"ci-push-teams+{app}" for app in TEAMS}
    # Every private key stays secret in the repository Secrets.
    for secret in teams.of_type("core/v1:Secret"):
        if secret["inputs"]["metadata"]["name"].startswith("repo-"):
            assert "stringData.sshPrivateKey" in secret["secret_paths"] or "stringData" in secret["secret_paths"]


def test_no_name_collides(teams: Run) -> None:
    urns = list(engine_urns(teams.resources).values())
    assert len(urns) == len(set(urns))
    # Cluster objects: (kind, namespace, name); cluster-scoped ones by kind and name.
    objects = Counter(
        (o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        for o in (r["inputs"] for r in teams.resources if r["custom"] and "apiVersion" in r["inputs"])
    )
    assert [key for key, n in objects.items() if n > 1] == []
    # GitLab: per project, deploy-key titles, token names, branches, files and variables.
    found: Counter[tuple[str, ...]] = Counter()
    for r in teams.resources:
        inputs, typ = r["inputs"], r["type"]
        if typ.endswith("deployKey:DeployKey"):
            found[("key", inputs["project"], inputs["title"])] += 1
            found[("key material", inputs["project"], inputs["key"])] += 1
        elif typ.endswith("projectAccessToken:ProjectAccessToken"):
            found[("token", inputs["project"], inputs["name"])] += 1
        elif typ.endswith("branch:Branch"):
            found[("branch", inputs["project"], inputs["name"])] += 1
        elif typ.endswith("repositoryFile:RepositoryFile"):
            found[("file", inputs["project"], inputs["branch"], inputs["filePath"])] += 1
        elif typ.endswith("projectVariable:ProjectVariable"):
            found[("variable", inputs["project"], inputs["key"], inputs.get("environmentScope", "*"))] += 1
        elif typ.endswith("project:Project"):
            found[("project", inputs["path"])] += 1
    assert [key for key, n in found.items() if n > 1] == []
    # Deploy branches and commit statuses: one branch per app, none equal to a pipeline branch.
    deploy = {
        r["name"]: yaml.safe_load(r["inputs"]["content"])["variables"]["DEPLOY_BRANCH"]
        for r in teams.of_type("repositoryFile:RepositoryFile")
        if r["name"].endswith("pipeline-file")
    }
    assert sorted(deploy.values()) == sorted(f"gitops-deploy-teams+{app}" for app in TEAMS)
    branches = {inputs["name"] for inputs in (r["inputs"] for r in teams.of_type("branch:Branch"))}
    assert not branches & set(deploy.values())


def test_rollouts_installed_once_and_only_the_canary_app_waits_for_it(teams: Run) -> None:
    assert len(teams.of_type("gitops:argo:Rollouts")) == 1
    controller = next(r["urn"] for r in teams.of_type("apps/v1:Deployment") if r["name"] == "argo-rollouts")
    waits = {r["name"]: controller in r["dependencies"] for r in teams.of_type("Application") if r["custom"]}
    assert waits == {"orders-application": False, "payments-application": False, "storefront-application": True}


# --- Names that never move -----------------------------------------------------------------


def previous_release(tmp: Path) -> Path:
    """The previous release's program, checked out of this repository's history."""
    target = tmp / "release"
    target.mkdir()
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", PREVIOUS_RELEASE],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        missing(f"git history with {PREVIOUS_RELEASE} and tar ({exc})")
        raise
    return target


def assert_only_the_pipeline_is_updated(changes: dict[str, Any]) -> None:
    """Since the previous release only the pipeline changed (the deploy job's trust boundary): its
    file gets a new commit in place, and takes over a file an earlier destroy left; nothing else is updated."""
    updated = [c for c in changes.values() if c.action == UPDATED]
    assert [(c.name, c.paths) for c in updated] == [("pipeline-file", (("content",), ("overwriteOnCreate",)))]


@pytest.fixture(scope="module")
def release() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield previous_release(Path(tmp))


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pytest.mark.parametrize("overrides", [{}, {"argocdExternalUrl": "https://argocd.example.com", "deployStatus": "project-token"}])
def test_upgrading_a_one_app_stack_replaces_nothing(
    release: Path, program: Callable[..., Run], stack: str, overrides: dict[str, str]
) -> None:
    old = run_program(overrides, stack=stack, root=str(release))
    new = program(overrides, stack=stack, previous=sorted(engine_urns(old.resources).values()))
    assert old.error is None, old.error and old.error["traceback"]
    assert new.error is None, new.error
    changes = diff_runs(old.resources, new.resources)
    assert by_action(changes, REPLACED) == set()
    assert by_action(changes, CREATED) == set() and by_action(changes, DELETED) == set()
    assert_only_the_pipeline_is_updated(changes)
    moved = resolve_aliases(old.resources, new.resources)
    # Found through aliases: the sub-components and everything under them, and the resources
    # that moved between components.
    moved_names = {short_name(r["name"]) for r in new.resources if engine_urns(new.resources)[r["urn"]] in moved}
    assert {"access", "app", "manifest-project", "app-project", "argocd-repo-key", "ci-push-key", "ci-deploy-key"} <= moved_names
    # Without the aliases the same upgrade would replace the projects and every key: the check can fail.
    bare = [{**r, "aliases": [], "alias_urns": []} for r in new.resources]
    unaliased = diff_runs(old.resources, bare)
    # (Deleted, or for prod's retained projects dropped from state: either way no longer this stack's.)
    orphaned = by_action(unaliased, DELETED) | by_action(unaliased, RETAINED)
    assert {"manifest-project", "app-project", "ci-deploy-key"} <= {short_name(n) for n in orphaned}


def dev_app_entry(**fields: Any) -> dict[str, Any]:
    """The demo stack's one app as an `apps` entry that keeps its single-app names."""
    raw = stack_config("dev")
    return {
        "name": raw["appName"],
        "namespace": raw["appNamespace"],
        "appProject": raw["appProject"],
        "manifestProject": raw["manifestProject"],
        KEEP_NAMES_FIELD: True,
        **fields,
    }


def test_moving_a_one_app_stack_into_apps_changes_nothing(program: Callable[..., Run]) -> None:
    entry = dev_app_entry()
    before = program()
    after = program({**{key: None for key in APP_KEYS}, "apps": json.dumps([entry])})
    assert after.error is None, after.error
    changes = diff_runs(before.resources, after.resources)
    assert {c.action for c in changes.values()} == {UNCHANGED}


def test_upgrading_against_the_live_projects_replaces_nothing(release: Path, program: Callable[..., Run]) -> None:
    # The second look at GitLab sees the projects, and the chart on main, that the first run made.
    old = run_program(stack="dev", root=str(release))
    new = program(stack="dev", gitlab=live_world(old), previous=sorted(engine_urns(old.resources).values()))
    assert old.error is None and new.error is None, new.error
    changes = diff_runs(old.resources, new.resources)
    assert {c.action for c in changes.values()} <= {UNCHANGED, UPDATED, RETAINED}
    assert_only_the_pipeline_is_updated(changes)
    # The chart is on main: its files leave the stack's state, and nothing is deleted in GitLab.
    chart_files = {r["name"] for r in old.resources if r["name"].startswith("chart/")}
    assert chart_files and by_action(changes, RETAINED) == chart_files
    assert [i["args"]["filePath"] for i in new.report["invokes"] if i["token"].endswith("getRepositoryFile")] == ["Chart.yaml"]


def test_the_app_that_kept_the_single_app_names_can_leave_a_shared_project(program: Callable[..., Run]) -> None:
    kept = dev_app_entry(chartPath="webapp")
    orders = {"name": "orders", "manifestProject": kept["manifestProject"], "chartPath": "orders"}
    single = {key: None for key in APP_KEYS}
    both = program({**single, "apps": json.dumps([kept, orders])})
    assert both.error is None, both.error
    alone = program({**single, "apps": json.dumps([orders])}, gitlab=live_world(both))
    assert alone.error is None, alone.error
    changes = diff_runs(both.resources, alone.resources)
    # The shared project, its read key and its lock stay as they are; only webapp's own resources go.
    assert by_action(changes, REPLACED) == set() and by_action(changes, CREATED) == set()
    repo = {
        "gitops-demo-chart-manifest-project",
        "gitops-demo-chart-argocd-deploy-key",
        "gitops-demo-chart-manifest-default-branch",
    }
    assert repo <= by_action(changes, UNCHANGED)
    assert "app-project" in by_action(changes, DELETED) and "orders-app-project" in by_action(changes, UNCHANGED)


def live_world(run: Run) -> dict[str, Any]:
    """The GitLab instance after `run` was applied: its created projects, their topics and the files on main."""
    files = run.of_type("repositoryFile:RepositoryFile")
    projects = [
        {
            "path_with_namespace": r["outputs"]["path_with_namespace"],
            "topics": r["inputs"].get("topics", []),
            "files": [
                f["inputs"]["filePath"] for f in files if f["inputs"]["project"] == r["id"] and f["inputs"]["branch"] == "main"
            ],
            "protected_branches": [
                {"name": "main", "push": pushers(p), "merge": ["maintainer"]}
                for p in run.of_type("branchProtection:BranchProtection")
                if p["inputs"]["project"] == r["id"] and p["inputs"]["branch"] == "main"
            ]
            or [{"name": "main", "push": ["maintainer"], "merge": ["maintainer"]}],
        }
        for r in run.of_type("gitlab:index/project:Project")
    ]
    return {"projects": projects}


def pushers(protection: dict[str, Any]) -> list[str]:
    """Who may push under a registered BranchProtection, on either edition."""
    inputs = protection["inputs"]
    return [a["accessLevel"] for a in inputs.get("allowedToPushes") or []] or [inputs.get("pushAccessLevel", "maintainer")]


def test_adding_a_fourth_app_adds_only_its_resources(teams: Run, program: Callable[..., Run]) -> None:
    billing = {"name": "billing", "manifestProject": "platform-charts", "chartPath": "billing"}
    after = program(with_apps([*teams_apps(), billing]), stack="teams", gitlab=live_world(teams))
    assert after.error is None, after.error
    changes = diff_runs(teams.resources, after.resources)
    assert by_action(changes, REPLACED) == set() and by_action(changes, DELETED) == set()
    assert by_action(changes, UPDATED) == set()
    created = by_action(changes, CREATED)
    assert created and all(name.startswith("billing-") for name in created), created
    # platform-charts is locked by now, so the new chart is proposed on a branch for a maintainer to merge.
    seed = after.named("billing-seed-branch")
    assert seed["inputs"]["name"] == "gitops-seed-teams+billing"
    assert {
        f["inputs"]["branch"] for f in after.of_type("repositoryFile:RepositoryFile") if f["name"].startswith("billing-chart/")
    } == {"gitops-seed-teams+billing"}


def test_an_adopted_app_project_on_a_locked_manifest_project_proposes_its_chart(teams: Run, program: Callable[..., Run]) -> None:
    billing = {"name": "billing", "adoptAppProject": "acme/billing", "manifestProject": "platform-charts", "chartPath": "billing"}
    after = program(with_apps([*teams_apps(), billing]), stack="teams", gitlab=live_world(teams))
    assert after.error is None, after.error
    branches = {
        f["inputs"]["branch"] for f in after.of_type("repositoryFile:RepositoryFile") if f["name"].startswith("billing-chart/")
    }
    assert branches == {"gitops-seed-teams+billing"}
    # One question per app on a manifest project that exists: is its Chart.yaml on main?
    asked = [i["args"]["filePath"] for i in after.report["invokes"] if i["token"].endswith("getRepositoryFile")]
    assert sorted(asked) == ["Chart.yaml", "billing/Chart.yaml", "orders/Chart.yaml", "payments/Chart.yaml"]
    # The others' charts are on main, the team's code now: the program registers none of their files.
    assert [
        f["name"]
        for f in after.of_type("repositoryFile:RepositoryFile")
        if "-chart/" in f["name"] and not f["name"].startswith("billing-")
    ] == []


def test_a_failing_chart_look_up_stops_the_program(teams: Run, program: Callable[..., Run]) -> None:
    # A 500 whose URL holds "404" (project 14045, chart svc404) is no answer about the chart.
    world = live_world(teams)
    for project in world["projects"]:
        project["files_error"] = "500 {message: 500 Internal Server Error}"
    billing = {"name": "billing", "manifestProject": "platform-charts", "chartPath": "svc404"}
    run = program(with_apps([*teams_apps(), billing]), stack="teams", gitlab=world)
    assert run.error is not None and "500 Internal Server Error" in run.error["message"]
    assert run.resources == []


def test_a_second_up_of_three_apps_changes_nothing(teams: Run, program: Callable[..., Run]) -> None:
    again = program(stack="teams", gitlab=live_world(teams))
    assert again.error is None, again.error
    changes = diff_runs(teams.resources, again.resources)
    # The seeded charts are on main now: their files only leave the stack's state (retained).
    assert {c.action for c in changes.values()} == {UNCHANGED, RETAINED}
    assert by_action(changes, RETAINED) == {
        r["name"] for r in teams.of_type("repositoryFile:RepositoryFile") if "-chart/" in r["name"]
    }


def test_reordering_apps_changes_nothing(teams: Run, program: Callable[..., Run]) -> None:
    reordered = program(with_apps(list(reversed(teams_apps()))), stack="teams")
    assert reordered.error is None, reordered.error
    assert {c.action for c in diff_runs(teams.resources, reordered.resources).values()} == {UNCHANGED}


def test_removing_an_app_removes_only_its_resources(teams: Run, program: Callable[..., Run]) -> None:
    for gone in ("payments", "storefront"):
        after = program(with_apps([a for a in teams_apps() if a["name"] != gone]), stack="teams", gitlab=live_world(teams))
        assert after.error is None, after.error
        changes = diff_runs(teams.resources, after.resources)
        deleted = by_action(changes, DELETED)
        own = {name for name in deleted if name.startswith(f"{gone}-")}
        assert own, deleted
        assert by_action(changes, REPLACED) == set() and by_action(changes, CREATED) == set()
        shared = {f"platform-charts-{name}" for name in ("manifest-project", "argocd-deploy-key", "manifest-default-branch")}
        if gone == "payments":
            # orders still keeps its chart in platform-charts: the project and its key stay.
            assert not shared & deleted
            assert deleted == own
        else:
            # Nobody names storefront-chart any more: it goes, by projectsOnDestroy (archive here).
            assert "storefront-chart-manifest-project" in deleted
            # The Rollouts install went with the only app that needed it.
            assert "argo-rollouts" in deleted
            assert {name for name in deleted - own if not name.startswith("storefront-chart-")} <= rollouts_names(teams)


def rollouts_names(run: Run) -> set[str]:
    """Logical names of the Argo Rollouts install."""
    by_urn = run.by_urn()
    found = set()
    for record in run.resources:
        parent = by_urn.get(record["parent"])
        if record["type"] == "gitops:argo:Rollouts" or (parent is not None and parent["type"] == "gitops:argo:Rollouts"):
            found.add(record["name"])
    return found


def test_two_resources_claiming_one_old_resource_are_refused() -> None:
    def record(urn: str, aliases: list[dict[str, Any]]) -> dict[str, Any]:
        typ, name = urn.split("::")[2], urn.split("::")[3]
        return {"urn": urn, "type": typ, "name": name, "parent": "", "custom": True, "aliases": aliases}

    prefix = "urn:pulumi:dev::gitops-bootstrap::"
    old = [record(f"{prefix}gitlab:index/project:Project::old", [])]
    new = [record(f"{prefix}gitlab:index/project:Project::{n}", [{"spec": {"name": "old"}}]) for n in ("a", "b")]
    with pytest.raises(AliasError):
        resolve_aliases(old, new)
    assert resolve_aliases(old, new[:1]) == {new[0]["urn"]: old[0]["urn"]}


def test_an_archived_project_in_the_way_is_named_by_its_app_path(program: Callable[..., Run]) -> None:
    world = {"projects": [{"path_with_namespace": "acme/platform/payments-app", "archived": True}]}
    run = program(stack="teams", gitlab=world)
    assert run.error is not None and run.resources == []
    message = run.error["message"]
    assert "apps[1].appProject: acme/platform/payments-app already exists and is archived" in message
    assert "pulumi config set --path 'apps[1].adoptAppProject' acme/platform/payments-app" in message


def test_adopted_projects_are_looked_up_once_however_many_apps_share_them(program: Callable[..., Run]) -> None:
    apps = [
        {"name": "orders", "adoptManifestProject": "acme/charts", "chartPath": "orders"},
        {"name": "payments", "adoptManifestProject": "acme/charts", "chartPath": "payments"},
    ]
    run = program(with_apps(apps), stack="teams")
    assert run.error is None, run.error
    lookups = [i["args"]["pathWithNamespace"] for i in run.report["invokes"] if i["token"].endswith("getProject")]
    assert lookups == ["acme/charts"]
    # Adopted: never registered, so destroy cannot touch it; both apps point Argo CD at it.
    assert not [r for r in run.of_type("project:Project") if "charts" in r["inputs"]["path"]]
    urls = {a["spec"]["source"]["repoURL"] for a in k8s(run, "Application")}
    assert urls == {"git@gitlab.example.test:acme/charts.git"}


def test_each_manifest_project_reports_deploys_with_its_own_token(program: Callable[..., Run]) -> None:
    run = program({"gitlab:baseUrl": SELF_HOSTED}, stack="teams")
    assert run.error is None, run.error
    tokens = {r["name"]: r for r in run.of_type("projectAccessToken:ProjectAccessToken")}
    assert set(tokens) == {"platform-charts-deploy-status-token", "storefront-chart-deploy-status-token"}
    suffixes = {spec.key: spec.service_suffix for spec in manifest_repositories(parse(base_config("teams")).apps)}
    assert len(set(suffixes.values())) == 2 and all(len(suffix) == 9 for suffix in suffixes.values())
    secret = run.named("argocd-notifications-secret")
    assert set(secret["inputs"]["data"]) == {f"{GITLAB_TOKEN_KEY}{suffix}" for suffix in suffixes.values()}
    assert secret["secret_paths"]
    data = notifications_cm(run)
    for suffix in suffixes.values():
        service = yaml.safe_load(data[f"service.webhook.{GITLAB_SERVICE}{suffix}"])
        assert {"name": "PRIVATE-TOKEN", "value": f"${GITLAB_TOKEN_KEY}{suffix}"} in service["headers"]
    projects = {r["name"]: r["outputs"]["id"] for r in run.of_type("project:Project")}
    for app in k8s(run, "Application"):
        name, annotations = app["metadata"]["name"], app["metadata"]["annotations"]
        repo = "storefront-chart" if name == "storefront" else "platform-charts"
        # Its own project's id and token, its own deploy branch as the status ref.
        assert annotations[PROJECT_ANNOTATION] == projects[f"{repo}-manifest-project"]
        assert annotations[REF_ANNOTATION] == f"gitops-deploy-teams+{name}"
        subscriptions = [key for key in annotations if key.startswith("notifications.argoproj.io/subscribe")]
        assert {key.rsplit(".", 1)[1] for key in subscriptions} == {f"{GITLAB_SERVICE}{suffixes[repo]}"}
        # Kubernetes allows 63 characters after the prefix's '/' of an annotation key.
        assert all(len(key.split("/", 1)[1]) <= 63 for key in annotations), sorted(annotations)


def test_one_kubernetes_provider_and_one_bot_provider_however_many_apps(teams: Run, program: Callable[..., Run]) -> None:
    assert [r["name"] for r in teams.of_type("pulumi:providers:kubernetes")] == ["k8s"]
    assert teams.of_type("pulumi:providers:gitlab") == []
    with_bot = program(
        {"deployKeyOwnerToken": "glpat-BotOwnerToken-abc123"},
        stack="teams",
        secret_keys=("dockerhubToken", "deployKeyOwnerToken"),
    )
    assert with_bot.error is None, with_bot.error
    providers = with_bot.of_type("pulumi:providers:gitlab")
    assert [p["name"] for p in providers] == ["deploy-key-owner"]
    reference = f"{providers[0]['urn']}::{providers[0]['id']}"
    # Every deploy key, of every app and repository, is registered through the one bot provider.
    keys = with_bot.of_type("deployKey:DeployKey")
    assert len(keys) == 5 and {k["provider"] for k in keys} == {reference}
    kube = {r["provider"] for r in with_bot.resources if r["custom"] and r["type"].startswith("kubernetes:")}
    assert len(kube) == 1
