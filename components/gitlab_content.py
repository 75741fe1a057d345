"""Files committed into the projects (starter chart, starter app, pipeline) and default-branch protection.

Order matters on a new stack: the chart is seeded before the manifest branch is locked
(after that not even the program may push); every commit says `[skip ci]` except the starter
app's last one, which comes after the variables, keys, protections, pipeline and chart exist,
so the one pipeline it starts can build, push and open the first deploy merge request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gitlab as gitlab

from components.chart import ChartSpec, render_chart
from components.gitlab_host import (
    CACHE_REPOSITORY_NAME,
    PIPELINE_FILE,
    chart_repo_path,
    deploy_branch,
    pipeline_branch,
    protection_args,
)
from components.gitlab_projects import ProjectInfo
from components.pipeline import PipelineSpec, render_pipeline
from components.starter import render_starter_app

# In an adopted app project the program never replaces the team's own pipeline; it commits
# its jobs beside it, for the team to `include:`.
ADOPTED_PIPELINE_PATH = ".gitlab/gitops-bootstrap.gitlab-ci.yml"
COMMIT_AUTHOR = "gitops-bootstrap"
# The provider serialises every file commit behind one provider-wide lock, and its default
# create timeout (1 minute) includes the wait for it (resource_gitlab_repository_file.go);
# the starter chart and app commit a dozen files at once.
FILE_TIMEOUTS = pulumi.CustomTimeouts(create="10m", update="10m", delete="10m")


def pipeline_path(app: ProjectInfo) -> str:
    """Where the pipeline file goes: beside an adopted app's own pipeline, else the manifest project's pipeline branch."""
    return ADOPTED_PIPELINE_PATH if app.adopted else PIPELINE_FILE


@dataclass(frozen=True)
class StarterChartArgs:
    """The chart to seed and where."""

    manifest: ProjectInfo
    chart: ChartSpec
    chart_path: str
    # Logical-name prefix (apps.AppNames).
    prefix: str = ""
    # A branch to commit to instead of the default branch, which is locked when the manifest
    # project existed before this app; a maintainer merges it.
    seed_branch: str | None = None
    # The chart is on the default branch already (gitlab_host.chart_let_go): register no file.
    let_go: bool = False


class StarterChart(pulumi.ComponentResource):
    """The starter Helm chart, committed once into a created manifest project."""

    files: list[pulumi.Resource]

    def __init__(self, name: str, args: StarterChartArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:gitlab:StarterChart", name, None, opts)
        self.files = []
        self.seed_branch: gitlab.Branch | None = None
        # An adopted manifest project already holds its chart, and a seeded one belongs to the
        # team once it is on the default branch: neither is ever written or deleted. (After a
        # `pulumi refresh` drops files that a merge request renamed, or that left with the merged
        # seed branch, registering them would re-create them on the locked branch.)
        if not args.manifest.adopted and not args.let_go:
            branch: pulumi.Input[str] = args.manifest.default_branch
            if args.seed_branch is not None:
                self.seed_branch = gitlab.Branch(
                    f"{args.prefix}seed-branch",
                    project=args.manifest.id,
                    name=args.seed_branch,
                    ref=args.manifest.default_branch,
                    # The team's branch once seeded: destroy keeps it, and it is never re-created.
                    opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True, ignore_changes=["ref"]),
                )
                branch = self.seed_branch.name
            # An adopted manifest project already holds its chart; it is never overwritten.
            for path, text in render_chart(args.chart).items():
                self.files.append(
                    gitlab.RepositoryFile(
                        # Named by the path inside the chart, so the name never depends on settings.
                        f"{args.prefix}chart/{path}",
                        project=args.manifest.id,
                        branch=branch,
                        file_path=chart_repo_path(args.chart_path, path),
                        content=text,
                        encoding="text",
                        author_name=COMMIT_AUTHOR,
                        commit_message="Seed the starter chart (gitops-bootstrap)",
                        overwrite_on_create=False,
                        opts=pulumi.ResourceOptions(
                            parent=self,
                            # Seeded once: CI bumps appVersion through merge requests, and a
                            # later `pulumi up` must not revert that. Nor may it move or re-commit
                            # the chart when chartPath or defaultBranch change: the branch is
                            # locked by then, and the chart belongs to the team.
                            # A changed commit message or author would be an update, i.e. a new
                            # commit, which the locked branch refuses.
                            ignore_changes=["content", "branch", "file_path", "commit_message", "author_name"],
                            custom_timeouts=FILE_TIMEOUTS,
                            # The chart is the team's code now; destroy commits no deletion.
                            retain_on_delete=True,
                        ),
                    )
                )
        self.register_outputs({"files": [f.urn for f in self.files]})


class BranchProtections(pulumi.ComponentResource):
    """A created app project's protected default branch: only maintainers push, developers merge.

    The manifest project's protection belongs to its repository (manifest_repository), which
    apps may share.
    """

    app: gitlab.BranchProtection | None

    def __init__(
        self,
        name: str,
        app: ProjectInfo,
        enterprise: bool,
        retain: bool = False,
        prefix: str = "",
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gitops:gitlab:BranchProtections", name, None, opts)
        self.app = None
        if not app.adopted:
            # Protected variables reach only pipelines of protected branches. Developers merge app
            # changes; only maintainers push directly. The pipeline itself is not in this project.
            self.app = gitlab.BranchProtection(
                f"{prefix}app-default-branch",
                project=app.id,
                branch=app.default_branch,
                allow_force_push=False,
                **protection_args(enterprise, push="maintainer", merge="developer"),
                # With projectsOnDestroy=retain the project stays as it is, protection included.
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=retain),
            )
        self.register_outputs({})


@dataclass(frozen=True)
class DeliveryPipelineArgs:
    """The projects, the image and what the pipeline's first run needs in place."""

    app: ProjectInfo
    manifest: ProjectInfo
    image_repository: str
    chart_file: str
    merge_request_via: str
    ready: Sequence[pulumi.Resource]
    stack: str
    enterprise: bool
    build_runner_tags: tuple[str, ...] = ()
    build_check_runner_tags: tuple[str, ...] = ()
    deploy_runner_tags: tuple[str, ...] = ()
    # buildCacheRepository: "" for the app project's registry, "off" for none.
    cache_repository: str = ""
    # Protect the default cache so that only maintainers' pipelines write it (gitlab_host.protect_build_cache).
    protect_cache: bool = False
    # projectsOnDestroy=retain: the build cache keeps its protection (the pipeline branch goes in every mode).
    retain: bool = False
    # Logical-name prefix and branch-name suffix (apps.AppNames).
    prefix: str = ""
    suffix: str = ""


class DeliveryPipeline(pulumi.ComponentResource):
    """The app project's pipeline, rendered from the manifest project's coordinates.

    For a created app project it is committed to a branch of the manifest project that only
    maintainers push to and merge into, which the app project reads through `ci_config_path`;
    every `pulumi up` commits the current rendering there. An adopted app project gets it
    beside its own pipeline, for its team to `include:`.
    """

    def __init__(self, name: str, args: DeliveryPipelineArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:gitlab:DeliveryPipeline", name, None, opts)
        content = pulumi.Output.all(args.manifest.id, args.manifest.ssh_url, args.manifest.default_branch).apply(
            lambda values: render_pipeline(
                PipelineSpec(
                    image_repository=args.image_repository,
                    manifest_ssh_url=values[1],
                    manifest_project_id=str(values[0]),
                    manifest_default_branch=values[2],
                    chart_file=args.chart_file,
                    deploy_branch=deploy_branch(args.stack, args.suffix),
                    merge_request_via=args.merge_request_via,
                    build_runner_tags=args.build_runner_tags,
                    build_check_runner_tags=args.build_check_runner_tags,
                    deploy_runner_tags=args.deploy_runner_tags,
                    cache_repository=args.cache_repository,
                )
            )
        )
        self.path = pipeline_path(args.app)
        child = pulumi.ResourceOptions(parent=self)
        if args.app.adopted:
            project, branch, after = args.app.id, args.app.default_branch, list(args.ready)
        else:
            branch_name = pipeline_branch(args.stack, args.suffix)
            pipeline_ref = gitlab.Branch(
                f"{args.prefix}pipeline-branch",
                project=args.manifest.id,
                name=branch_name,
                ref=args.manifest.default_branch,
                # Holds only the pipeline the program renders, so destroy deletes it, in every
                # projectsOnDestroy mode: a branch left behind in a manifest project that outlives
                # the stack (adopted, shared, or retained) would sit unprotected and make the next
                # `up` fail ("Branch already exists", gitlabhq branches/validate_new_service.rb).
                # A later change of the default branch does not re-create it.
                opts=child.merge(pulumi.ResourceOptions(ignore_changes=["ref"])),
            )
            protection = gitlab.BranchProtection(
                f"{args.prefix}pipeline-branch-protection",
                project=args.manifest.id,
                branch=pipeline_ref.name,
                allow_force_push=False,
                **protection_args(args.enterprise, push="maintainer", merge="maintainer"),
                # Goes with its branch, before it (it depends on the branch).
                opts=child,
            )
            # A tag of the same name could shadow the branch when GitLab resolves the ref in
            # `ci_config_path`; nobody may create one.
            tag_guard = gitlab.TagProtection(
                f"{args.prefix}pipeline-tag-protection",
                project=args.manifest.id,
                tag=branch_name,
                create_access_level="no one",
                # Guards the branch's name; it goes with the branch.
                opts=child,
            )
            project, branch = args.manifest.id, pulumi.Output.from_input(branch_name)
            after = [*args.ready, protection, tag_guard]
        if args.protect_cache:
            # Developers, and the job token of any pipeline a developer starts, can write the
            # project's registry; BuildKit trusts what it imports from the cache. Only maintainers'
            # pipelines write it now (export errors are ignored); every build still reads it.
            gitlab.ProjectContainerRepositoryProtection(
                f"{args.prefix}build-cache-protection",
                project=args.app.id,
                repository_path_pattern=args.app.path_with_namespace.apply(
                    lambda path: f"{path.lower()}/{CACHE_REPOSITORY_NAME}"
                ),
                minimum_access_level_for_push="maintainer",
                opts=child.merge(pulumi.ResourceOptions(retain_on_delete=args.retain)),
            )
        self.file = gitlab.RepositoryFile(
            f"{args.prefix}pipeline-file",
            project=project,
            branch=branch,
            file_path=self.path,
            content=content,
            encoding="text",
            author_name=COMMIT_AUTHOR,
            # The commit itself starts no pipeline.
            commit_message="Update the delivery pipeline (gitops-bootstrap) [skip ci]",
            # The file is the program's own: one that an earlier destroy left (on an adopted app
            # project's default branch) is taken over rather than failing the create.
            overwrite_on_create=True,
            opts=pulumi.ResourceOptions(
                parent=self,
                # Committed once the branches are protected and the variables and keys exist,
                # so the next push runs a pipeline that can read them.
                depends_on=after,
                # Destroy commits no deletion into a team's repository; on the pipeline branch,
                # the file goes with the branch.
                retain_on_delete=True,
                custom_timeouts=FILE_TIMEOUTS,
            ),
        )
        self.register_outputs({"path": self.path})


# The starter app's file whose commit starts the first pipeline: GitLab's own README of the
# new project is replaced last.
STARTER_TRIGGER_FILE = "README.md"


@dataclass(frozen=True)
class StarterAppArgs:
    """Where the starter app goes, and what its first pipeline needs in place before it starts."""

    app: ProjectInfo
    # False for an adopted project, and for one created by an earlier version (gitlab_host.seed_starter_app).
    seed: bool
    ready: Sequence[pulumi.Resource]
    # The chart's containerPort (appPort): the app listens there.
    port: int = 8080
    # Logical-name prefix (apps.AppNames).
    prefix: str = ""


class StarterApp(pulumi.ComponentResource):
    """The starter web app, committed once into a new app project; its last commit starts the first pipeline."""

    files: list[pulumi.Resource]

    def __init__(self, name: str, args: StarterAppArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gitops:gitlab:StarterApp", name, None, opts)
        self.files = []
        if args.seed:
            files = render_starter_app(args.port)
            quiet: list[pulumi.Resource] = []
            # The trigger file last, so that it can wait for all the others.
            for path, text in sorted(files.items(), key=lambda item: item[0] == STARTER_TRIGGER_FILE):
                last = path == STARTER_TRIGGER_FILE
                resource = gitlab.RepositoryFile(
                    # Named by the path inside the app, so the name never depends on settings.
                    f"{args.prefix}app/{path}",
                    project=args.app.id,
                    branch=args.app.default_branch,
                    file_path=path,
                    content=text,
                    encoding="text",
                    author_name=COMMIT_AUTHOR,
                    # Every commit through the files API starts a pipeline unless it says [skip ci].
                    commit_message=(
                        "Add the starter app (gitops-bootstrap): starts the first pipeline"
                        if last
                        else "Add the starter app (gitops-bootstrap) [skip ci]"
                    ),
                    # Only the README exists already: GitLab's own, from initialize_with_readme.
                    overwrite_on_create=last,
                    opts=pulumi.ResourceOptions(
                        parent=self,
                        # The last commit waits for everything its pipeline reads: variables, keys,
                        # protected branches, the pipeline file, the chart, and the other app files.
                        depends_on=[*args.ready, *quiet] if last else [],
                        # Committed once: the app is the team's from then on, and a later `pulumi up`
                        # must neither revert nor re-commit it.
                        ignore_changes=["content", "branch", "file_path", "commit_message", "author_name"],
                        custom_timeouts=FILE_TIMEOUTS,
                        # Destroy must not commit deletions into a team's repository.
                        retain_on_delete=True,
                    ),
                )
                if not last:
                    quiet.append(resource)
                self.files.append(resource)
        self.register_outputs({"files": [f.urn for f in self.files]})
