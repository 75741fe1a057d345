"""What the program needs to know about the GitLab instance before it plans anything.

Pure code: no Pulumi imports. ``gitlab_projects.read_host`` asks GitLab; the rules here
turn the answers into settings problems and edition-specific arguments.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from components.settings import AppSettings, GitLabSettings, Problem


@dataclass(frozen=True)
class ProjectRecord:
    """An existing project as GitLab reports it."""

    id: str
    path_with_namespace: str
    ssh_url: str
    web_url: str
    default_branch: str
    archived: bool
    ci_config_path: str = ""
    ci_pipeline_variables_minimum_override_role: str = ""
    # Access levels ("no one", "developer", "maintainer", …) allowed to push and to merge on
    # the default branch; None where the default branch is not protected.
    default_branch_push: tuple[str, ...] | None = None
    default_branch_merge: tuple[str, ...] | None = None


# Each project's config keys: the path to create it under, and the project to adopt instead.
PROJECT_KEYS: dict[str, tuple[str, str]] = {
    "app": ("appProject", "adoptAppProject"),
    "manifest": ("manifestProject", "adoptManifestProject"),
}
ADOPT_APP, ADOPT_MANIFEST = PROJECT_KEYS["app"][1], PROJECT_KEYS["manifest"][1]


def _is_key(key: str, name: str) -> bool:
    """Whether a config key (``adoptAppProject``, ``apps[1].adoptAppProject``) is ``name``."""
    return key == name or key.endswith(f".{name}")


def _config_arg(key: str) -> str:
    """How `pulumi config set` names a key: a key inside `apps` needs ``--path``."""
    return f"--path '{key}'" if "." in key else key


def _sibling(key: str, name: str) -> str:
    """The key ``name`` beside ``key``, in the same `apps` entry if it is in one."""
    head, dot, _ = key.rpartition(".")
    return f"{head}{dot}{name}"


@dataclass(frozen=True)
class HostFacts:
    """The instance's edition, the namespace created projects go to, and existing projects."""

    enterprise: bool
    # The group's id created projects land in, or None for the token owner's namespace.
    namespace_id: int | None = None
    # Adopted projects by config key (adoptAppProject, or apps[1].adoptManifestProject).
    adopted: Mapping[str, ProjectRecord] = field(default_factory=dict)
    # Archived projects found at the paths this stack would create, by config key.
    archived_at_path: Mapping[str, ProjectRecord] = field(default_factory=dict)
    # Live projects at the paths this stack creates (its own, from an earlier run), by config
    # key, with their topics.
    live_topics: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Apps (by their chartPath config key) whose Chart.yaml is on the default branch of a
    # manifest project that existed before this run.
    charts_present: frozenset[str] = frozenset()
    # Manifest projects (by config key) that existed before this run and whose default branch the
    # program has locked (nobody may push): the seeding finished, since the lock comes after it.
    locked_manifests: frozenset[str] = frozenset()
    # GitLab's version (major, minor), from /api/v4/metadata.
    version: tuple[int, int] = (0, 0)
    # Pipeline branches already in a manifest project for an app whose app project this run
    # creates (so no earlier run of this stack holds them): by the manifest project's config key,
    # (branch, project path). An earlier release's `pulumi destroy` left them behind.
    leftover_pipeline_branches: Mapping[str, tuple[str, str]] = field(default_factory=dict)


# Push protection for container repositories is in every tier from GitLab 17.8 (its API,
# `container_repository_protection_rules`); before that it was an experiment behind a flag.
CACHE_PROTECTION_SINCE = (17, 8)
# The build's layer cache in the app project's own registry ($CI_REGISTRY_IMAGE/buildcache).
CACHE_REPOSITORY_NAME = "buildcache"


def parse_version(text: str) -> tuple[int, int]:
    """``(major, minor)`` of a GitLab version string such as ``18.6.0-ee``; (0, 0) if unreadable."""
    parts = text.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def protect_build_cache(facts: HostFacts, app: AppSettings) -> bool:
    """Whether the program protects the app's default layer cache so that only maintainers' pipelines write it."""
    return app.cache_repository == "" and not app.app_project.adopted and facts.version >= CACHE_PROTECTION_SINCE


def cache_warnings(facts: HostFacts, app: AppSettings) -> list[str]:
    """Where the app's default layer cache stays writable by every Developer of its app project."""
    if app.cache_repository != "" or protect_build_cache(facts, app):
        return []
    reason = (
        "the app project is adopted"
        if app.app_project.adopted
        else f"this GitLab ({facts.version[0]}.{facts.version[1]}) is older than 17.8"
    )
    return [
        f"{app.name}: the build's layer cache ($CI_REGISTRY_IMAGE/{CACHE_REPOSITORY_NAME}) stays writable by every Developer"
        f" of the app project, because {reason}: a poisoned cache layer ships in the next build without a trace"
        f" in the app's history. Protect that repository for Maintainers (Settings > Packages and registries),"
        " or set buildCacheRepository to off."
    ]


# The topic a created app project carries when the program committed the starter app into it.
# Set once, when the project is created: a project created by an earlier version, which may
# hold the team's own Dockerfile by now, never gets the starter app committed over it.
STARTER_TOPIC = "gitops-bootstrap-starter"


def seed_starter_app(facts: HostFacts, app: AppSettings) -> bool:
    """Whether the starter app belongs in the app's project: created here, and new or seeded before."""
    if app.app_project.adopted:
        return False
    topics = facts.live_topics.get(app.key(PROJECT_KEYS["app"][0]))
    return topics is None or STARTER_TOPIC in topics


def manifest_exists(facts: HostFacts, app: AppSettings) -> bool:
    """Whether the app's created manifest project existed before this run and its default branch is locked.

    A project whose first `up` stopped before the lock is not locked yet: its chart is still seeded
    (or completed) on the default branch directly.
    """
    key = app.key(PROJECT_KEYS["manifest"][0])
    return key in facts.live_topics and key in facts.locked_manifests


def chart_repo_path(chart_path: str, path: str) -> str:
    """Where a chart file (``path`` inside the chart) lives in the manifest project."""
    return posixpath.normpath(posixpath.join(chart_path, path))


def chart_file(app: AppSettings) -> str:
    """Where the app's Chart.yaml lives in its manifest project."""
    return chart_repo_path(app.chart_path, "Chart.yaml")


def chart_let_go(facts: HostFacts, app: AppSettings) -> bool:
    """Whether the app's chart is on its manifest project's default branch already: the team's code, not the program's.

    The program then registers none of its files, so it never writes to that (locked) branch
    and never deletes the chart. Only once the branch is locked: a first `up` that stopped half way
    through the chart (before the lock) completes it on the next run. Every release has stored the
    seeded files with retainOnDelete (first in f263392), so dropping them only removes them from the
    stack's state.
    """
    return app.key("chartPath") in facts.charts_present and manifest_exists(facts, app)


def chart_seed_branch(facts: HostFacts, app: AppSettings, stack: str, suffix: str) -> str | None:
    """Where the app's starter chart goes when its manifest project existed before and holds no chart at its path yet.

    That project's default branch is locked (nobody pushes), so the chart is proposed on a
    branch a maintainer merges. Where the chart is there already (an app set up by an earlier
    run) its files keep their branch: they ignore changes to it.
    """
    if manifest_exists(facts, app) and app.key("chartPath") not in facts.charts_present:
        return seed_branch(stack, suffix)
    return None


def created_paths(apps: tuple[AppSettings, ...], namespace: str) -> dict[str, str]:
    """Full paths of the projects this stack creates, by the config key (with its path) that names them."""
    paths: dict[str, str] = {}
    for app in apps:
        for which, project in (("app", app.app_project), ("manifest", app.manifest_project)):
            if not project.adopted:
                paths[app.key(PROJECT_KEYS[which][0])] = f"{namespace}/{project.path}"
    return paths


def adopted_paths(apps: tuple[AppSettings, ...]) -> dict[str, str]:
    """Full paths of the projects this stack adopts, by the config key (with its path) that names them."""
    paths: dict[str, str] = {}
    for app in apps:
        for which, project in (("app", app.app_project), ("manifest", app.manifest_project)):
            if project.adopt is not None:
                paths[app.key(PROJECT_KEYS[which][1])] = project.adopt
    return paths


def _unarchive(record: ProjectRecord) -> str:
    return (
        f"unarchive it (the project's Settings > General > Advanced > Unarchive project, or"
        f' `curl -X POST -H "PRIVATE-TOKEN: $GITLAB_TOKEN" <api>/projects/{record.id}/unarchive`)'
    )


def host_problems(facts: HostFacts, gitlab: GitLabSettings, base_url: str | None) -> list[Problem]:
    """What would make `pulumi up` fail or lock everyone out on this instance.

    Archived projects at a path to create, archived adopted projects, and merges reserved
    for instance administrators on gitlab.com, where nobody outside GitLab is one.
    """
    problems: list[Problem] = []
    host = urlparse(base_url or "https://gitlab.com/").hostname or ""
    if gitlab.manifest_merge_access == "admin" and host in ("gitlab.com", "www.gitlab.com"):
        problems.append(
            Problem(
                "manifestMergeAccess",
                "must not be admin on gitlab.com: its administrators are GitLab's staff, so nobody could merge a deploy",
                "maintainer",
            )
        )
    for key, record in facts.archived_at_path.items():
        adopt_key = _sibling(key, next(adopt for path_key, adopt in PROJECT_KEYS.values() if _is_key(key, path_key)))
        path = record.path_with_namespace.rsplit("/", 1)[-1]
        problems.append(
            Problem(
                key,
                f"{record.path_with_namespace} already exists and is archived (an earlier `pulumi destroy` with"
                f" projectsOnDestroy=archive keeps the project and its path), so it cannot be created again."
                f" Either {_unarchive(record)}, protect its default branch again (destroy removed the"
                f" protection, and protected CI/CD variables reach only protected branches) and manage it as"
                f" it is with `pulumi config set {_config_arg(adopt_key)} {record.path_with_namespace}`, or create a new"
                f" project with `pulumi config set {_config_arg(key)} {path}-2`",
                f"{path}-2",
            )
        )
    for key, (branch, path) in facts.leftover_pipeline_branches.items():
        problems.append(
            Problem(
                key,
                f"holds the branch {branch} already ({path}), left by an earlier `pulumi destroy` of this stack, so it"
                " cannot be created again. It holds only the pipeline this program renders: delete it (the"
                " project's Code > Branches, after removing its protection under Settings > Repository) and run again",
                path,
            )
        )
    for key, record in facts.adopted.items():
        if record.archived:
            problems.append(
                Problem(
                    key,
                    f"{record.path_with_namespace} is archived, so it is read-only and takes no keys, variables or"
                    f" files; {_unarchive(record)} first",
                    record.path_with_namespace,
                )
            )
    return problems


# Where a created app project's pipeline lives: in the manifest project, on a branch of its
# own that only maintainers push to and merge into. The app project reads it through
# `ci_config_path`, so nothing an app developer merges changes a job that holds deploy
# credentials. The name is not `.gitlab-ci.yml`, so the manifest project never runs it itself.
PIPELINE_FILE = "gitops/app-pipeline.gitlab-ci.yml"


def pipeline_branch(stack: str, suffix: str = "") -> str:
    """The manifest project's branch holding an app's pipeline; per stack and app, so both can share the project."""
    return f"gitops-pipeline-{stack}{suffix}"


def deploy_branch(stack: str, suffix: str = "") -> str:
    """The manifest project's one rolling bot branch whose merge request proposes an app's newest build; per stack and app."""
    return f"gitops-deploy-{stack}{suffix}"


def seed_branch(stack: str, suffix: str = "") -> str:
    """Where an app's starter chart goes when its manifest project's default branch is locked already."""
    return f"gitops-seed-{stack}{suffix}"


def ci_config_path(manifest_path_with_namespace: str, stack: str, suffix: str = "") -> str:
    """The app project's `ci_config_path`: ``<file>@<project>:<ref>``, read from the manifest project."""
    return f"{PIPELINE_FILE}@{manifest_path_with_namespace}:{pipeline_branch(stack, suffix)}"


def adoption_warnings(facts: HostFacts) -> list[str]:
    """Where an adopted project's own settings leave the deploy gate open (the program changes none of them)."""
    warnings: list[str] = []
    seen: set[str] = set()
    for manifest in (True, False):
        for key, record in facts.adopted.items():
            if _is_key(key, ADOPT_MANIFEST) != manifest or record.path_with_namespace in seen:
                continue
            seen.add(record.path_with_namespace)
            warnings += _manifest_warnings(record) if manifest else _app_warnings(record)
    return warnings


def _manifest_warnings(manifest: ProjectRecord) -> list[str]:
    warnings: list[str] = []
    name = manifest.path_with_namespace
    if manifest.default_branch_push is None:
        warnings.append(f"{name}: its default branch is not protected, so any developer can push a deploy")
    else:
        if set(manifest.default_branch_push) - {"no one"}:
            pushers = ", ".join(sorted(manifest.default_branch_push))
            warnings.append(f"{name}: {pushers} may push straight to its default branch, which Argo CD deploys")
        if "developer" in (manifest.default_branch_merge or ()):
            warnings.append(f"{name}: developers may merge into its default branch, so a deploy needs no maintainer")
    return warnings


def _app_warnings(app: ProjectRecord) -> list[str]:
    warnings: list[str] = []
    name = app.path_with_namespace
    if not app.ci_config_path:
        warnings.append(
            f"{name}: its pipeline is read from the project itself, so whoever can merge or push there can add a"
            " job that declares the deploy environments and reads SSH_PRIVATE_KEY or GITLAB_PRIVATE_TOKEN;"
            " set its CI/CD configuration file to one only maintainers can change"
        )
    if "developer" in (app.default_branch_push or ("developer",)):
        warnings.append(f"{name}: developers may push straight to its default branch, whose pipelines get the deploy credentials")
    if app.ci_pipeline_variables_minimum_override_role in ("", "developer"):
        warnings.append(
            f"{name}: developers may override pipeline variables (CI_API_V4_URL, MANIFEST_SSH_URL) when running a"
            " pipeline; set ci_pipeline_variables_minimum_override_role to no_one_allowed"
        )
    return warnings


@dataclass(frozen=True)
class RunnerRecord:
    """A runner that can take the build or the deploy job, as GET /runners/:id describes it."""

    id: str
    description: str
    # "ref_protected": only jobs of protected branches and tags; "not_protected": any job.
    access_level: str
    # Whether it also takes jobs with no tags (build-check and update-manifest, by default).
    untagged: bool


# What a runner found by a stack's runner tags is for.
ROLE_BUILD, ROLE_DEPLOY = "build", "deploy"


def runner_warnings(runner: RunnerRecord, roles: frozenset[str]) -> list[str]:
    """Where a build or deploy runner would also run another job it must not share a host with.

    A runner takes every job whose tags are a subset of its own, and untagged jobs only if it
    accepts them (gitlab-org/gitlab-ce#47387); only a protected runner refuses jobs of
    unprotected branches and merge requests (gitlab-org/gitlab-ce#33281).
    """
    name = f"runner {runner.id} ({runner.description or 'no description'}), a {' and '.join(sorted(roles))} runner,"
    warnings: list[str] = []
    if runner.access_level != "ref_protected":
        warnings.append(
            f"{name} is not protected: it also runs merge requests' and unprotected branches' jobs, whose"
            " Dockerfiles can take over its host. Set it to run jobs of protected branches only"
            " (Settings > CI/CD > Runners > Edit > Protected)"
        )
    if runner.untagged:
        victim = "the deploy key it holds" if ROLE_DEPLOY in roles else "the builds that run there"
        warnings.append(
            f"{name} takes untagged jobs: merge requests' build-check (and, without deployRunnerTags, update-manifest)"
            f" can run there, next to {victim}. Clear 'Run untagged jobs' on it"
        )
    if roles >= {ROLE_BUILD, ROLE_DEPLOY}:
        warnings.append(
            f"{name} takes both the build job and update-manifest: a build can take over the host that then holds"
            " the deploy key. Give the two jobs runners of their own (buildRunnerTags, deployRunnerTags)"
        )
    return warnings


def untagged_sharing_warnings(apps: tuple[AppSettings, ...]) -> list[str]:
    """On a self-managed GitLab: apps whose merge-request build and deploy job both go to untagged runners."""
    shared = [app.name for app in apps if not app.build_check_runner_tags and not app.deploy_runner_tags]
    if not shared:
        return []
    return [
        f"{', '.join(shared)}: merge requests' build-check (unreviewed Dockerfiles, which need a runner that allows"
        " BuildKit) and update-manifest (the deploy key) both go to runners that take untagged jobs, so one can"
        " run on a host the other took over. Set deployRunnerTags to protected runners that run no build, or"
        " buildCheckRunnerTags to runners of their own (README, 'Security model')"
    ]


def runner_listing_warning(tags: tuple[str, ...], error: str) -> str:
    """What to check by hand when the token cannot list the runners that carry a stack's runner tags."""
    return (
        f"cannot tell whether the runners tagged {', '.join(tags)} are protected ({error.splitlines()[0][:200]}): make"
        " sure each is a protected runner that takes no untagged jobs (README, 'Security model')"
    )


def protection_args(enterprise: bool, push: str, merge: str) -> dict[str, Any]:
    """BranchProtection's access arguments for the instance's edition.

    terraform-provider-gitlab 19.x refuses ``push_access_level``/``merge_access_level`` on
    Enterprise Edition (gitlab.com is EE) and ``allowed_to_push``/``allowed_to_merge`` on
    Community Edition, at plan time (resource_gitlab_branch_protection.go, ModifyPlan).
    """
    if enterprise:
        return {"allowed_to_pushes": [{"access_level": push}], "allowed_to_merges": [{"access_level": merge}]}
    return {"push_access_level": push, "merge_access_level": merge}
