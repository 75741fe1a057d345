"""The two GitLab projects: created with safe destroy behaviour, or adopted as they are."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gitlab as gitlab

from components.settings import GitLabSettings, ProjectSettings


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

    def __init__(self, name: str, args: GitLabSettings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:gitlab:Projects", name, None, opts)
        namespace_id: pulumi.Output[int] | None = None
        if args.group and not (args.app_project.adopted and args.manifest_project.adopted):
            group = gitlab.get_group_output(full_path=args.group, opts=pulumi.InvokeOptions(parent=self))
            namespace_id = group.group_id
        self.app = self._project(
            "app-project", "Application source; its pipeline builds the image.", args.app_project, args, namespace_id
        )
        self.manifest = self._project(
            "manifest-project",
            "Helm chart that Argo CD deploys; changed only through merge requests.",
            args.manifest_project,
            args,
            namespace_id,
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
        namespace_id: pulumi.Output[int] | None,
    ) -> ProjectInfo:
        if project.adopt is not None:
            # Looked up, never registered: destroy cannot touch a project it does not own.
            found = gitlab.get_project_output(path_with_namespace=project.adopt, opts=pulumi.InvokeOptions(parent=self))
            return ProjectInfo(
                id=found.id,
                ssh_url=found.ssh_url_to_repo,
                web_url=found.web_url,
                path_with_namespace=found.path_with_namespace,
                default_branch=found.default_branch,
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
            opts=pulumi.ResourceOptions(
                parent=self,
                # "retain" drops the project from state on destroy and leaves it untouched.
                retain_on_delete=args.projects_on_destroy == "retain",
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
