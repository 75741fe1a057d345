"""GitLab projects: created with safe destroy behaviour, or adopted as they are; and what GitLab knows before a plan."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gitlab as gitlab

from components.apps import app_names
from components.gitlab_host import (
    ADOPT_APP,
    ROLE_BUILD,
    ROLE_DEPLOY,
    STARTER_TOPIC,
    HostFacts,
    ProjectRecord,
    RunnerRecord,
    adopted_paths,
    chart_file,
    ci_config_path,
    created_paths,
    parse_version,
    pipeline_branch,
    runner_listing_warning,
    runner_warnings,
    seed_starter_app,
    untagged_sharing_warnings,
)
from components.settings import AppSettings, GitLabSettings, ProjectSettings


def _branch_rule(protected: Any, branch: str) -> Any:
    """The protection rule of ``branch`` among a project's protected branches, or None."""
    return next((b for b in protected or [] if b.name == branch), None)


def _found(lookup: Callable[[], Any], not_found: str) -> bool:
    """Whether a data-source look-up finds its object; GitLab's 404 (``not_found``) means absent.

    Any other failure stops the program: a guess would commit to a branch nobody needs, or miss
    one that is in the way.
    """
    try:
        lookup()
    except Exception as exc:
        if not_found not in str(exc):
            raise
        return False
    return True


def _record(found: Any, protected: Any = None) -> ProjectRecord:
    branch = found.default_branch or ""
    rule = _branch_rule(protected, branch)
    return ProjectRecord(
        id=str(found.id),
        path_with_namespace=found.path_with_namespace,
        ssh_url=found.ssh_url_to_repo,
        web_url=found.web_url,
        default_branch=branch,
        archived=bool(found.archived),
        ci_config_path=getattr(found, "ci_config_path", None) or "",
        ci_pipeline_variables_minimum_override_role=getattr(found, "ci_pipeline_variables_minimum_override_role", None) or "",
        default_branch_push=tuple(a.access_level for a in rule.push_access_levels or []) if rule else None,
        default_branch_merge=tuple(a.access_level for a in rule.merge_access_levels or []) if rule else None,
    )


def _adopted(path: str) -> ProjectRecord:
    found = gitlab.get_project(path_with_namespace=path)
    # Its default branch's protection, for the warnings on an adopted project's open doors.
    protected = gitlab.get_project_protected_branches(project_id=str(found.id)).protected_branches
    return _record(found, protected)


def read_host(args: GitLabSettings, apps: tuple[AppSettings, ...], stack: str) -> HostFacts:
    """Ask GitLab, before anything is registered, for its edition and the projects this stack names.

    Plain invokes: they run in `pulumi preview` too, so a path blocked by an archived
    project, or an archived adopted project, stops the plan with the steps to fix it. Each
    project is asked about once, however many apps share it.
    """
    # `enterprise` decides BranchProtection's arguments (see gitlab_host.protection_args).
    metadata = gitlab.get_metadata()
    enterprise = bool(metadata.enterprise)
    records: dict[str, ProjectRecord] = {}
    adopted: dict[str, ProjectRecord] = {}
    for key, path in adopted_paths(apps).items():
        if path not in records:
            records[path] = _adopted(path)
        adopted[key] = records[path]
    namespace, namespace_id = "", None
    archived: dict[str, ProjectRecord] = {}
    live: dict[str, tuple[str, ...]] = {}
    charts: frozenset[str] = frozenset()
    locked: frozenset[str] = frozenset()
    live_ids: dict[str, str] = {}
    created: dict[str, str] = {}
    if not all(app.app_project.adopted and app.manifest_project.adopted for app in apps):
        if args.group:
            group = gitlab.get_group(full_path=args.group)
            namespace, namespace_id = group.full_path, int(group.group_id)
        else:
            namespace = gitlab.get_current_user().username
        found_at: dict[str, tuple[ProjectRecord | None, tuple[str, ...] | None, str | None]] = {}
        created = created_paths(apps, namespace)
        for key, full_path in created.items():
            if full_path not in found_at:
                found_at[full_path] = _at_path(full_path, namespace_id)
            record, topics, project_id = found_at[full_path]
            if record is not None:
                archived[key] = record
            if topics is not None and project_id is not None:
                live[key] = topics
                live_ids[key] = project_id
        charts = _charts_present(apps, live_ids, args.default_branch)
        locked = _locked_manifests(apps, live_ids, args.default_branch)
    existing = {key: (record.id, record.path_with_namespace) for key, record in adopted.items()}
    existing |= {key: (ident, created[key]) for key, ident in live_ids.items()}
    leftovers = _leftover_pipeline_branches(apps, stack, live, existing)
    return HostFacts(
        enterprise=enterprise,
        namespace_id=namespace_id,
        adopted=adopted,
        archived_at_path=archived,
        live_topics=live,
        charts_present=charts,
        locked_manifests=locked,
        version=parse_version(metadata.version or ""),
        leftover_pipeline_branches=leftovers,
    )


# GitLab's answer for a path that is not on the ref, as go-gitlab's ErrorResponse prints it.
FILE_NOT_FOUND = "404 {message: 404 File Not Found}"


def _locked_manifests(apps: tuple[AppSettings, ...], live_ids: dict[str, str], branch: str) -> frozenset[str]:
    """The live created manifest projects (by config key) whose default branch nobody may push to: the program's lock."""
    locked: set[str] = set()
    asked: dict[str, bool] = {}
    for app in apps:
        key = app.key("manifestProject")
        project_id = live_ids.get(key)
        if project_id is None:
            continue
        if project_id not in asked:
            rule = _branch_rule(gitlab.get_project_protected_branches(project_id=project_id).protected_branches, branch)
            pushers = {a.access_level for a in (rule.push_access_levels or [])} if rule else set()
            asked[project_id] = pushers == {"no one"}
        if asked[project_id]:
            locked.add(key)
    return frozenset(locked)


def _charts_present(apps: tuple[AppSettings, ...], live_ids: dict[str, str], branch: str) -> frozenset[str]:
    """The apps (by chartPath key) whose chart is on the default branch of a manifest project that exists already.

    The data source fails on a missing file (terraform-provider-gitlab
    data_source_gitlab_repository_file.go returns go-gitlab's `GetFile` error, whose text ends in
    `404 {message: 404 File Not Found}`).
    """
    present: set[str] = set()
    for app in apps:
        # Only created projects found live are in live_ids: an adopted one never gets a seeded chart.
        project_id = live_ids.get(app.key("manifestProject"))
        if project_id is None:
            continue
        lookup = functools.partial(gitlab.get_repository_file, project=project_id, file_path=chart_file(app), ref=branch)
        if _found(lookup, FILE_NOT_FOUND):
            present.add(app.key("chartPath"))
    return frozenset(present)


# GitLab's answer for a branch that does not exist, as go-gitlab's ErrorResponse prints it
# (terraform-provider-gitlab data_source_gitlab_branch.go returns the GetBranch error as it is).
BRANCH_NOT_FOUND = "404 {message: 404 Branch Not Found}"


def _leftover_pipeline_branches(
    apps: tuple[AppSettings, ...],
    stack: str,
    live: dict[str, tuple[str, ...]],
    existing: dict[str, tuple[str, str]],
) -> dict[str, tuple[str, str]]:
    """Pipeline branches that exist already where this run would create them: (branch, project path).

    Asked only for an app whose app project is created by this run (not live yet), so no earlier
    run of the stack holds its pipeline branch, on a manifest project that exists already.
    Since this release destroy deletes the branch; earlier releases kept it.
    """
    found: dict[str, tuple[str, str]] = {}
    for app in apps:
        if app.app_project.adopted or app.key("appProject") in live:
            continue
        manifest_key = app.key("adoptManifestProject" if app.manifest_project.adopted else "manifestProject")
        if manifest_key not in existing:
            continue
        project_id, path = existing[manifest_key]
        branch = pipeline_branch(stack, app_names(app).suffix)
        if _found(functools.partial(gitlab.get_branch, name=branch, project=project_id), BRANCH_NOT_FOUND):
            found[manifest_key] = (branch, path)
    return found


def _at_path(full_path: str, namespace_id: int | None) -> tuple[ProjectRecord | None, tuple[str, ...] | None, str | None]:
    """The archived project at a path to create, or the live one's topics and id (this stack's own, from an earlier run).

    Any other project at the path is reported by GitLab itself on create.
    """
    listed = gitlab.get_projects(
        search=full_path.rsplit("/", 1)[-1],
        **({"group_id": namespace_id, "include_subgroups": False} if namespace_id is not None else {"owned": True}),
    ).projects
    for found in listed:
        if found.path_with_namespace.lower() != full_path.lower():
            continue
        if found.archived:
            return _record(found), None, None
        return None, tuple(found.topics or ()), str(found.id)
    return None, None, None


@dataclass(frozen=True)
class ProjectInfo:
    """What the rest of the program needs to know about one project."""

    id: pulumi.Output[str]
    ssh_url: pulumi.Output[str]
    web_url: pulumi.Output[str]
    path_with_namespace: pulumi.Output[str]
    # An adopted project's own default branch; the configured one for a created project.
    default_branch: pulumi.Output[str]
    adopted: bool
    # The created project, or None for an adopted one (which is never in this stack's state).
    resource: gitlab.Project | None


def project(
    name: str,
    description: str,
    project: ProjectSettings,
    args: GitLabSettings,
    adopted: ProjectRecord | None,
    namespace_id: int | None,
    opts: pulumi.ResourceOptions,
    extra: dict[str, Any] | None = None,
) -> ProjectInfo:
    """A project created with safe destroy behaviour, or an adopted one as it is (never registered)."""
    if adopted is not None:
        # Looked up by read_host, never registered: destroy cannot touch a project it does not own.
        return ProjectInfo(
            id=pulumi.Output.from_input(adopted.id),
            ssh_url=pulumi.Output.from_input(adopted.ssh_url),
            web_url=pulumi.Output.from_input(adopted.web_url),
            path_with_namespace=pulumi.Output.from_input(adopted.path_with_namespace),
            default_branch=pulumi.Output.from_input(adopted.default_branch),
            adopted=True,
            resource=None,
        )
    created = gitlab.Project(
        name,
        name=project.path,
        path=project.path,
        description=description,
        namespace_id=namespace_id,
        visibility_level=args.visibility,
        default_branch=args.default_branch,
        # A first commit creates the default branch, so files and protection can follow.
        initialize_with_readme=True,
        remove_source_branch_after_merge=True,
        # "archive" (the default) makes the provider archive instead of delete, so code
        # survives `pulumi destroy`; "delete" is the explicit opt-in to real deletion.
        archive_on_destroy=args.projects_on_destroy == "archive",
        # "delete" means deleted: without this, GitLab only schedules the deletion and the
        # path stays taken until it runs.
        permanently_delete_on_destroy=args.projects_on_destroy == "delete",
        **(extra or {}),
        opts=opts.merge(
            pulumi.ResourceOptions(
                # "retain" drops the project from state on destroy and leaves it untouched.
                retain_on_delete=args.projects_on_destroy == "retain",
                # Topics belong to the team once the project exists; the starter marker is set on create.
                ignore_changes=["topics"],
            )
        ),
    )
    return ProjectInfo(
        id=created.id,
        ssh_url=created.ssh_url_to_repo,
        web_url=created.web_url,
        path_with_namespace=created.path_with_namespace,
        default_branch=pulumi.Output.from_input(args.default_branch),
        adopted=False,
        resource=created,
    )


def app_project(
    name: str,
    app: AppSettings,
    args: GitLabSettings,
    host: HostFacts,
    stack: str,
    manifest: ProjectInfo,
    pipeline_suffix: str,
    opts: pulumi.ResourceOptions,
) -> ProjectInfo:
    """An app's project: its pipeline is read from the manifest project, and nobody overrides its variables."""
    return project(
        name,
        "Application source; its pipeline builds the image.",
        app.app_project,
        args,
        host.adopted.get(app.key(ADOPT_APP)),
        host.namespace_id,
        opts,
        {
            # Marks a project that holds the starter app (gitlab_host.STARTER_TOPIC); set on create.
            **({"topics": [STARTER_TOPIC]} if seed_starter_app(host, app) else {}),
            # The pipeline is read from the manifest project, where only maintainers change it.
            "ci_config_path": manifest.path_with_namespace.apply(lambda path: ci_config_path(path, stack, pipeline_suffix)),
            # Nobody may override pipeline variables (CI_API_V4_URL, MANIFEST_SSH_URL, …) when
            # running a pipeline by hand (GitLab 17.1+).
            "ci_pipeline_variables_minimum_override_role": "no_one_allowed",
        },
    )


def check_runners(apps: tuple[AppSettings, ...], hosted: bool) -> None:
    """In `pulumi preview`, warn where the runners that build or deploy would share a host with other jobs.

    The provider's `get_runners` lists every runner of the instance (GET /runners/all, for
    administrators only: pulumi-gitlab get_runners.py, "List all runners") and carries no access
    level, so each runner found is read once (GET /runners/:id, `UserRunner`: `access_level`,
    `untagged`). Any other token gets a reminder of what to check by hand. Reads happen in
    previews only, so a plan shows the check and nothing is kept in the stack's state. On a
    self-managed GitLab (``hosted`` False) a stack whose merge-request build and deploy job both
    go to untagged runners is warned too.
    """
    if not pulumi.runtime.is_dry_run():
        return
    roles: dict[tuple[str, ...], set[str]] = {}
    for app in apps:
        for role, tags in ((ROLE_BUILD, app.build_runner_tags), (ROLE_DEPLOY, app.deploy_runner_tags)):
            if tags:
                roles.setdefault(tags, set()).add(role)
    found: dict[str, tuple[str, set[str]]] = {}
    for tags in sorted(roles):
        try:
            listed = gitlab.get_runners(tag_lists=list(tags)).runners
        except Exception as exc:
            pulumi.log.warn(runner_listing_warning(tags, str(exc) or type(exc).__name__))
            continue
        if not listed:
            pulumi.log.warn(runner_listing_warning(tags, "no runner carries these tags"))
        for runner in listed:
            # One read per runner, whichever tags found it (two reads of one name fail the plan).
            _, runner_roles = found.setdefault(str(runner.id), (runner.description or "", set()))
            runner_roles.update(roles[tags])
    for ident, (description, runner_roles) in sorted(found.items()):
        read = gitlab.UserRunner.get(f"runner-{ident}", ident)
        pulumi.Output.all(read.access_level, read.untagged).apply(
            functools.partial(_warn_runner, ident, description, frozenset(runner_roles))
        )
    if not hosted:
        for warning in untagged_sharing_warnings(apps):
            pulumi.log.warn(warning)


def _warn_runner(ident: str, description: str, roles: frozenset[str], values: list[Any]) -> None:
    for warning in runner_warnings(RunnerRecord(ident, description, str(values[0] or ""), bool(values[1])), roles):
        pulumi.log.warn(warning)
