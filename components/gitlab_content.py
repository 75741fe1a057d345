"""Files committed into the projects (pipeline, starter chart) and default-branch protection."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pulumi
import pulumi_gitlab as gitlab

from components.chart import ChartSpec, render_chart
from components.gitlab_projects import ProjectInfo
from components.pipeline import PipelineSpec, render_pipeline
from components.settings import Settings

PIPELINE_PATH = ".gitlab-ci.yml"
# In an adopted app project the program never replaces the team's own pipeline; it commits
# its jobs beside it, for the team to `include:`.
ADOPTED_PIPELINE_PATH = ".gitlab/gitops-bootstrap.gitlab-ci.yml"
COMMIT_AUTHOR = "gitops-bootstrap"


def chart_files(settings: Settings) -> dict[str, str]:
    """The starter chart's files, keyed by their path in the manifest project."""
    files = render_chart(ChartSpec(name=settings.app.name, image_repository=settings.app.image_repository))
    base = settings.app.chart_path
    return {posixpath.normpath(posixpath.join(base, path)): text for path, text in files.items()}


def pipeline_path(app: ProjectInfo) -> str:
    """Where the pipeline file goes in the app project."""
    return ADOPTED_PIPELINE_PATH if app.adopted else PIPELINE_PATH


@dataclass(frozen=True)
class RepositoryContentArgs:
    """The settings and the two projects."""

    settings: Settings
    app: ProjectInfo
    manifest: ProjectInfo


class RepositoryContent(pulumi.ComponentResource):
    """The app project's pipeline file and the manifest project's starter chart."""

    files: list[pulumi.Resource]

    def __init__(self, name: str, args: RepositoryContentArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:gitlab:RepositoryContent", name, None, opts)
        settings = args.settings
        chart_file = posixpath.normpath(posixpath.join(settings.app.chart_path, "Chart.yaml"))
        pipeline = pulumi.Output.all(args.manifest.id, args.manifest.ssh_url).apply(
            lambda ids: render_pipeline(
                PipelineSpec(
                    image_repository=settings.app.image_repository,
                    manifest_ssh_url=ids[1],
                    manifest_project_id=str(ids[0]),
                    manifest_default_branch=args.manifest.default_branch,
                    chart_file=chart_file,
                )
            )
        )
        self.files = [
            gitlab.RepositoryFile(
                "pipeline-file",
                project=args.app.id,
                branch=args.app.default_branch,
                file_path=pipeline_path(args.app),
                content=pipeline,
                encoding="text",
                author_name=COMMIT_AUTHOR,
                commit_message="Update the delivery pipeline (gitops-bootstrap)",
                overwrite_on_create=False,
                # Destroy must not commit deletions into a team's repository.
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
            )
        ]
        if not args.manifest.adopted:
            # An adopted manifest project already holds its chart; it is never overwritten.
            for path, text in chart_files(settings).items():
                self.files.append(
                    gitlab.RepositoryFile(
                        f"chart/{path}",
                        project=args.manifest.id,
                        branch=args.manifest.default_branch,
                        file_path=path,
                        content=text,
                        encoding="text",
                        author_name=COMMIT_AUTHOR,
                        commit_message="Seed the starter chart (gitops-bootstrap)",
                        overwrite_on_create=False,
                        opts=pulumi.ResourceOptions(
                            parent=self,
                            # Seeded once: CI bumps appVersion through merge requests, and a
                            # later `pulumi up` must not revert that.
                            ignore_changes=["content"],
                            # The chart is the team's code now; destroy leaves it in place.
                            retain_on_delete=True,
                        ),
                    )
                )
        self.register_outputs({"pipelinePath": pipeline_path(args.app)})


class BranchProtections(pulumi.ComponentResource):
    """Protected default branches: merge requests only on the manifest project."""

    def __init__(
        self,
        name: str,
        app: ProjectInfo,
        manifest: ProjectInfo,
        after: list[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gitops:gitlab:BranchProtections", name, None, opts)
        # Created after the seeded files: once nobody may push, not even the program can commit.
        child = pulumi.ResourceOptions(parent=self, depends_on=after)
        self.protections: list[gitlab.BranchProtection] = []
        if not manifest.adopted:
            # Every deploy is a merge request a person approves; CI pushes only side branches.
            self.protections.append(
                gitlab.BranchProtection(
                    "manifest-default-branch",
                    project=manifest.id,
                    branch=manifest.default_branch,
                    push_access_level="no one",
                    merge_access_level="developer",
                    allow_force_push=False,
                    opts=child,
                )
            )
        if not app.adopted:
            # Protected variables reach only pipelines of protected branches.
            self.protections.append(
                gitlab.BranchProtection(
                    "app-default-branch",
                    project=app.id,
                    branch=app.default_branch,
                    push_access_level="developer",
                    merge_access_level="developer",
                    allow_force_push=False,
                    opts=child,
                )
            )
        self.register_outputs({})
