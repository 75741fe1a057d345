"""A stack's life after the first `up`: destroy and up again, refresh, a lost cluster, an Argo CD upgrade.

Each scenario is two runs of the real program under mocks, with GitLab (and the cluster) as the
first run, a destroy or a refresh left them, diffed by the engine's rules in `tests/engine_rules.py`.
"""

from __future__ import annotations

import copy
import hashlib
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from components.gitlab_host import PIPELINE_FILE
from tests.conftest import ARGO_CD, Run, stack_config
from tests.engine_rules import (
    CREATED,
    DELETED,
    REPLACED,
    RETAINED,
    UNCHANGED,
    UPDATED,
    by_action,
    create_collisions,
    destroy_survivors,
    diff_runs,
    engine_urns,
    refreshed,
)
from tests.test_apps import live_world, teams, teams_apps, with_apps
from tests.tools import REPO_ROOT, missing

# The `teams` fixture of tests/test_apps.py.
__all__ = ["teams"]
ADOPTED_MANIFEST = "acme/platform-charts"
USER = "acme-user"


def manifest_id(run: Run) -> str:
    return str(run.outputs["manifestProjectId"]["value"])


def pipeline_files_left_unprotected(survivors: set[tuple[str, str, str]]) -> list[str]:
    """Pipeline files a destroy leaves on a branch that no surviving protection covers."""
    return [
        name
        for kind, project, name in survivors
        if kind == "file"
        and name.endswith(f":{PIPELINE_FILE}")
        and ("branch protection", project, name.split(":", 1)[0]) not in survivors
    ]


# --------------------------------------------------------------------------- destroy, then up


@pytest.mark.parametrize(
    ("mode", "again"),
    [
        ("delete", {}),
        # An archived app project keeps its path: the README's way back is a new path.
        ("archive", {"appProject": "gitops-demo-app-2"}),
        # A retained one is adopted.
        ("retain", {"adoptAppProject": f"{USER}/gitops-demo-app"}),
    ],
)
def test_destroy_then_up_on_a_kept_manifest_project_creates_nothing_that_exists(
    program: Callable[..., Run], mode: str, again: dict[str, str]
) -> None:
    settings = {"adoptManifestProject": ADOPTED_MANIFEST, "projectsOnDestroy": mode}
    first = program(settings)
    assert first.error is None, first.error
    survivors = destroy_survivors(first.resources)
    # Nothing of the pipeline stays in the kept manifest project, so nothing is left unprotected.
    assert not [s for s in survivors if s[1] == manifest_id(first)], survivors
    assert pipeline_files_left_unprotected(survivors) == []
    # Up again: GitLab holds what the destroy left, and the new run has no state.
    branches = sorted(name for kind, project, name in survivors if kind == "branch" and project == manifest_id(first))
    world = {"projects": [{"path_with_namespace": ADOPTED_MANIFEST, "branches": branches}]}
    second = program({**settings, **again}, gitlab=world)
    assert second.error is None, second.error
    assert create_collisions(second.resources, survivors) == []
    if "adoptAppProject" not in again:
        assert second.named("pipeline-branch")["inputs"]["name"] == "gitops-pipeline-dev"


def test_the_previous_release_s_retained_pipeline_branch_would_collide(program: Callable[..., Run]) -> None:
    # The same check on the branch as earlier releases registered it (retained, its protection not):
    # the destroy leaves the pipeline unprotected and the next up fails creating the branch.
    first = program({"adoptManifestProject": ADOPTED_MANIFEST, "projectsOnDestroy": "delete"})
    old = copy.deepcopy(first.resources)
    for record in old:
        if record["name"] == "pipeline-branch":
            record["retain_on_delete"] = True
    survivors = destroy_survivors(old)
    assert pipeline_files_left_unprotected(survivors) == [f"gitops-pipeline-dev:{PIPELINE_FILE}"]
    assert create_collisions(first.resources, survivors) == ["pipeline-branch: branch gitops-pipeline-dev exists"]


def test_a_branch_an_earlier_release_left_behind_stops_the_program_with_the_fix(program: Callable[..., Run]) -> None:
    world = {"projects": [{"path_with_namespace": ADOPTED_MANIFEST, "branches": ["gitops-pipeline-dev"]}]}
    run = program({"adoptManifestProject": ADOPTED_MANIFEST}, gitlab=world)
    assert run.error is not None and run.resources == []
    message = run.error["message"]
    assert "adoptManifestProject: holds the branch gitops-pipeline-dev already (acme/platform-charts)" in message
    assert "delete it" in message
    # The look-up is asked only where no earlier run of this stack can hold the branch.
    plain = program({"adoptManifestProject": ADOPTED_MANIFEST})
    assert [i["args"]["name"] for i in plain.report["invokes"] if i["token"].endswith("getBranch")] == ["gitops-pipeline-dev"]
    again = program(gitlab=live_world(program()))
    assert not any(i["token"].endswith("getBranch") for i in again.report["invokes"])


def test_an_app_removed_from_a_shared_manifest_project_and_added_back_creates_nothing_that_exists(
    program: Callable[..., Run],
) -> None:
    settings = {"projectsOnDestroy": "delete"}
    first = program(settings, stack="teams")
    assert first.error is None, first.error
    # Removing payments deletes what it owns there, its pipeline branch included.
    others = [app for app in teams_apps() if app["name"] != "payments"]
    removed = program({**settings, **with_apps(others)}, stack="teams", gitlab=live_world(first))
    assert removed.error is None, removed.error
    changes = diff_runs(first.resources, removed.resources)
    assert "payments-pipeline-branch" in by_action(changes, DELETED)
    # (The other apps' charts are on main by now: their files only leave the state, retained.)
    others_changed = by_action(changes, DELETED) | {n for n in by_action(changes, RETAINED) if "-chart/" not in n}
    assert not {name for name in others_changed if not name.startswith("payments-")}
    gone = [r for r in first.resources if r["name"] in by_action(changes, DELETED) | by_action(changes, RETAINED)]
    survivors = destroy_survivors(gone)
    # Added back: its chart is on main already (let go), its branch, keys and tokens are created anew.
    world = live_world(first)
    back = program(settings, stack="teams", gitlab=world)
    assert back.error is None, back.error
    fresh = [r for r in back.resources if r["name"].startswith("payments-")]
    assert create_collisions(fresh, survivors) == []
    assert not any(r["name"].startswith("payments-chart/") for r in fresh)


# --------------------------------------------------------------------------- seeded charts are let go


def test_a_chart_merged_from_its_seed_branch_and_refreshed_is_never_recommitted(teams: Run, program: Callable[..., Run]) -> None:
    billing = {"name": "billing", "manifestProject": "platform-charts", "chartPath": "billing"}
    apps = with_apps([*teams_apps(), billing])
    seeded = program(apps, stack="teams", gitlab=live_world(teams))
    assert seeded.error is None, seeded.error
    chart = [r for r in seeded.resources if r["name"].startswith("billing-chart/")]
    assert chart and {r["inputs"]["branch"] for r in chart} == {"gitops-seed-teams+billing"}
    # A maintainer merges the seed branch; GitLab deletes it, and `pulumi refresh` finds its files gone.
    # GitLab now: every project of both runs, with every chart on main (the others' since the first run).
    world = live_world(seeded)
    earlier = {p["path_with_namespace"]: p["files"] for p in live_world(teams)["projects"]}
    for project in world["projects"]:
        project["files"] = sorted({*project["files"], *earlier.get(project["path_with_namespace"], [])})
    platform = next(p for p in world["projects"] if p["path_with_namespace"].endswith("/platform-charts"))
    platform["files"] += [r["inputs"]["filePath"] for r in chart]
    state = refreshed(seeded.resources, lambda r: r["name"] == "billing-seed-branch" or r["name"].startswith("billing-chart/"))
    after = program(apps, stack="teams", gitlab=world, previous=sorted(engine_urns(state).values()))
    assert after.error is None, after.error
    changes = diff_runs(state, after.resources)
    # No chart file is planned at all, so nothing is written to the locked default branch.
    assert not [r for r in after.of_type("repositoryFile:RepositoryFile") if "-chart/" in r["name"]]
    assert by_action(changes, CREATED) == set() and by_action(changes, DELETED) == set()
    assert by_action(changes, REPLACED) == set() and by_action(changes, UPDATED) == set()
    # Without the refresh the same up only lets go of the files kept in state (retained).
    kept = diff_runs(seeded.resources, after.resources)
    assert by_action(kept, RETAINED) >= {r["name"] for r in chart} and by_action(kept, DELETED) == set()


def test_every_release_stored_the_seeded_chart_files_with_retain_on_delete() -> None:
    # Dropping a resource deletes it unless its stored state says retainOnDelete, so letting go of
    # the chart files is safe only if every release that registered them stored the flag.
    try:
        revisions = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-list", "HEAD", "--", "components/gitlab_content.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        missing(f"git history ({exc})")
        raise
    checked = 0
    for revision in revisions:
        text = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "show", f"{revision}:components/gitlab_content.py"], capture_output=True, text=True
        ).stdout
        for match in re.finditer(r'f"(?:\{args\.prefix\})?chart/\{path\}"', text):
            # The resource's arguments run to its closing parenthesis at the call's indentation.
            call = text[match.start() : text.index("\n                    )", match.start())]
            assert "retain_on_delete=True" in call, revision
            checked += 1
    assert checked >= 1 and len(revisions) >= 2, (checked, revisions)
    oldest = revisions[-1]
    # The first program that seeded a chart already kept its files on destroy.
    assert (
        "retain_on_delete=True"
        in subprocess.run(
            ["git", "-C", str(REPO_ROOT), "show", f"{oldest}:components/gitlab_content.py"], capture_output=True, text=True
        ).stdout
    )


# --------------------------------------------------------------------------- a lost cluster


def test_a_rebuilt_cluster_gets_back_what_it_had_and_gitlab_is_untouched(dev: Run, program: Callable[..., Run]) -> None:
    # The cluster was lost and re-created empty under the same context; `pulumi refresh` finds every
    # Kubernetes object gone and drops it from state (the provider stays: it is configuration).
    state = refreshed(dev.resources, lambda r: r["type"].startswith("kubernetes:"))
    assert len(state) < len(dev.resources)
    rebuilt = program(gitlab=live_world(dev), previous=sorted(engine_urns(state).values()))
    assert rebuilt.error is None, rebuilt.error
    changes = diff_runs(state, rebuilt.resources)
    cluster = {r["name"] for r in rebuilt.resources if r["custom"] and r["type"].startswith("kubernetes:")}
    # Exactly the cluster side is created again; nothing on GitLab is created, replaced or deleted,
    # and no key, token or secret is generated anew.
    assert by_action(changes, CREATED) == cluster
    assert by_action(changes, REPLACED) == set() and by_action(changes, DELETED) == set() and by_action(changes, UPDATED) == set()
    assert by_action(changes, RETAINED) == {r["name"] for r in dev.resources if r["name"].startswith("chart/")}
    # The same read-only key reaches Argo CD, and the Application follows the default branch, so it
    # syncs the last merged revision of the chart.
    assert rebuilt.named("manifest-repo")["inputs"] == dev.named("manifest-repo")["inputs"]
    spec = rebuilt.named("application")["inputs"]["spec"]
    assert spec == dev.named("application")["inputs"]["spec"] and spec["source"]["targetRevision"] == "main"
    assert {"argocd-namespace", "app-namespace", "manifest-repo", "application", "applications.argoproj.io"} <= cluster


# --------------------------------------------------------------------------- an Argo CD patch release


def patch_release_manifest(tmp_path: Path, version: str, ha: bool) -> tuple[Path, str]:
    """A stand-in for a later v3.5 patch release: v3.5.1's manifest with its image tags and a CRD field changed."""
    text = (ARGO_CD / "v3.5.1" / ("ha/install.yaml" if ha else "install.yaml")).read_text()
    text = text.replace("quay.io/argoproj/argocd:v3.5.1", f"quay.io/argoproj/argocd:{version}")
    marker = "description: Application is a definition of Application resource."
    assert marker in text
    text = text.replace(marker, f"{marker[:-1]} ({version}).", 1)
    path = tmp_path / f"argocd-{version}.yaml"
    path.write_text(text)
    return path, hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_an_argocd_patch_release_with_its_digest_replaces_no_crd_and_deletes_no_application(
    program: Callable[..., Run], tmp_path: Path, stack: str
) -> None:
    if not (ARGO_CD / "v3.5.1" / "install.yaml").is_file():
        missing("../shared/upstream/argo-cd/v3.5.1")
    before = program(stack=stack)
    manifest, sha = patch_release_manifest(tmp_path, "v3.5.3", stack_config(stack).get("argocdHa") == "true")
    # Without its digest the version is refused before anything is registered.
    refused = program({"argocdVersion": "v3.5.3", "argocdManifest": str(manifest)}, stack=stack)
    assert refused.error is not None and "argocdManifestSha256" in refused.error["message"] and refused.resources == []
    after = program({"argocdVersion": "v3.5.3", "argocdManifest": str(manifest), "argocdManifestSha256": sha}, stack=stack)
    assert after.error is None, after.error
    changes = diff_runs(before.resources, after.resources)
    assert by_action(changes, REPLACED) == set() and by_action(changes, DELETED) == set() and by_action(changes, CREATED) == set()
    # The changed CRD is updated in place (server-side apply), never replaced: replacing it would
    # delete every Application with it.
    crd = next(c for c in changes.values() if c.name == "applications.argoproj.io")
    assert crd.action == UPDATED
    application = next(c for c in changes.values() if c.name == "application")
    assert application.action == UNCHANGED


def test_a_first_up_that_stopped_before_the_lock_completes_the_chart_on_the_next(dev: Run, program: Callable[..., Run]) -> None:
    # The first `up` committed Chart.yaml, then failed before the other files and the lock.
    world = live_world(dev)
    manifest = next(p for p in world["projects"] if p["path_with_namespace"].endswith("/gitops-demo-chart"))
    manifest["files"] = ["Chart.yaml"]
    manifest["protected_branches"] = [{"name": "main", "push": ["maintainer"], "merge": ["maintainer"]}]
    again = program(gitlab=world)
    assert again.error is None, again.error
    chart = [r for r in again.of_type("repositoryFile:RepositoryFile") if r["name"].startswith("chart/")]
    # Registered again, on the default branch itself (not yet locked, so no seed branch), and the lock follows.
    assert {r["name"] for r in chart} == {r["name"] for r in dev.resources if r["name"].startswith("chart/")}
    assert {r["inputs"]["branch"] for r in chart} == {"main"}
    changes = diff_runs(dev.resources, again.resources)
    assert by_action(changes, CREATED) == set() and by_action(changes, DELETED) == set() and by_action(changes, RETAINED) == set()
    # Once locked, the same chart is let go.
    locked = program(gitlab=live_world(dev))
    assert not [r for r in locked.of_type("repositoryFile:RepositoryFile") if r["name"].startswith("chart/")]
