"""The two GitLab projects: created with safe destroy behaviour, or adopted as they are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gitlab as gitlab

from components.gitlab_host import (
    ADOPT_APP,
    ADOPT_MANIFEST,
    PROJECT_KEYS,
    STARTER_TOPIC,
    HostFacts,
    ProjectRecord,
    ci_config_path,
    created_paths,
    parse_version,
    seed_starter_app,
)
from components.settings import GitLabSettings, ProjectSettings


def _record(found: Any, protected: Any = None) -> ProjectRecord:
    branch = found.default_branch or ""
    rule = next((b for b in protected or [] if b.name == branch), None)
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


def read_host(args: GitLabSettings) -> HostFacts:
    """Ask GitLab, before anything is registered, for its edition and the projects this stack names.

    Plain invokes: they run in `pulumi preview` too, so a path blocked by an archived
    project, or an archived adopted project, stops the plan with the steps to fix it.
    """
    # `enterprise` decides BranchProtection's arguments (see gitlab_host.protection_args).
    metadata = gitlab.get_metadata()
    enterprise = bool(metadata.enterprise)
    adopted = {
        PROJECT_KEYS[which][1]: _adopted(project.adopt)
        for which, project in (("app", args.app_project), ("manifest", args.manifest_project))
        if project.adopt is not None
    }
    namespace, namespace_id = "", None
    archived, live = {}, {}
    if not (args.app_project.adopted and args.manifest_project.adopted):
        if args.group:
            group = gitlab.get_group(full_path=args.group)
            namespace, namespace_id = group.full_path, int(group.group_id)
        else:
            namespace = gitlab.get_current_user().username
        for key, full_path in created_paths(args, namespace).items():
            # An archived project at the path blocks the create; a live one is this stack's own
            # from an earlier run (its topics say whether it got the starter app). Any other
            # project at the path is reported by GitLab itself on create.
            listed = gitlab.get_projects(
                search=full_path.rsplit("/", 1)[-1],
                **({"group_id": namespace_id, "include_subgroups": False} if namespace_id is not None else {"owned": True}),
            ).projects
            for found in listed:
                if found.path_with_namespace.lower() != full_path.lower():
                    continue
                if found.archived:
                    archived[key] = _record(found)
                else:
                    live[key] = tuple(found.topics or ())
    return HostFacts(
        enterprise=enterprise,
        namespace_id=namespace_id,
        adopted=adopted,
        archived_at_path=archived,
        live_topics=live,
        version=parse_version(metadata.version or ""),
    )


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


class GitLabProjects(pulumi.ComponentResource):
    """The app project and the manifest (chart) project."""

    app: ProjectInfo
    manifest: ProjectInfo

    def __init__(
        self, name: str, args: GitLabSettings, host: HostFacts, stack: str, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gitops:gitlab:Projects", name, None, opts)
        self.manifest = self._project(
            "manifest-project",
            "Helm chart that Argo CD deploys; changed only through merge requests.",
            args.manifest_project,
            args,
            host.adopted.get(ADOPT_MANIFEST),
            host.namespace_id,
        )
        self.app = self._project(
            "app-project",
            "Application source; its pipeline builds the image.",
            args.app_project,
            args,
            host.adopted.get(ADOPT_APP),
            host.namespace_id,
            {
                # Marks a project that holds the starter app (gitlab_host.STARTER_TOPIC); set on create.
                **({"topics": [STARTER_TOPIC]} if seed_starter_app(host, args) else {}),
                # The pipeline is read from the manifest project, where only maintainers change it.
                "ci_config_path": self.manifest.path_with_namespace.apply(lambda path: ci_config_path(path, stack)),
                # Nobody may override pipeline variables (CI_API_V4_URL, MANIFEST_SSH_URL, …) when
                # running a pipeline by hand (GitLab 17.1+).
                "ci_pipeline_variables_minimum_override_role": "no_one_allowed",
            },
        )
        self.register_outputs(
            {
                "appProjectId": self.app.id,
                "appProjectWebUrl": self.app.web_url,
                "manifestProjectId": self.manifest.id,
                "manifestProjectWebUrl": self.manifest.web_url,
            }
        )

    def _project(
        self,
        name: str,
        description: str,
        project: ProjectSettings,
        args: GitLabSettings,
        adopted: ProjectRecord | None,
        namespace_id: int | None,
        extra: dict[str, Any] | None = None,
    ) -> ProjectInfo:
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
            opts=pulumi.ResourceOptions(
                parent=self,
                # "retain" drops the project from state on destroy and leaves it untouched.
                retain_on_delete=args.projects_on_destroy == "retain",
                # Topics belong to the team once the project exists; the starter marker is set on create.
                ignore_changes=["topics"],
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
