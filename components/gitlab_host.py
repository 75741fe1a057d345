"""What the program needs to know about the GitLab instance before it plans anything.

Pure code: no Pulumi imports. ``gitlab_projects.read_host`` asks GitLab; the rules here
turn the answers into settings problems and edition-specific arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.settings import GitLabSettings, Problem


@dataclass(frozen=True)
class ProjectRecord:
    """An existing project as GitLab reports it."""

    id: str
    path_with_namespace: str
    ssh_url: str
    web_url: str
    default_branch: str
    archived: bool


@dataclass(frozen=True)
class HostFacts:
    """The instance's edition, the namespace created projects go to, and existing projects."""

    enterprise: bool
    # Full path of the namespace created projects land in (the group, or the token owner's).
    namespace: str
    # The group's id, or None for the token owner's namespace.
    namespace_id: int | None = None
    # Adopted projects by config key (adoptAppProject / adoptManifestProject).
    adopted: Mapping[str, ProjectRecord] = field(default_factory=dict)
    # Archived projects found at the paths this stack would create, by config key.
    archived_at_path: Mapping[str, ProjectRecord] = field(default_factory=dict)


def created_paths(gitlab: GitLabSettings, namespace: str) -> dict[str, str]:
    """Full paths of the projects this stack creates, by the config key that names them."""
    paths: dict[str, str] = {}
    for key, project in (("appProject", gitlab.app_project), ("manifestProject", gitlab.manifest_project)):
        if not project.adopted:
            paths[key] = f"{namespace}/{project.path}"
    return paths


def _unarchive(record: ProjectRecord) -> str:
    return (
        f"unarchive it (the project's Settings > General > Advanced > Unarchive project, or"
        f' `curl -X POST -H "PRIVATE-TOKEN: $GITLAB_TOKEN" <api>/projects/{record.id}/unarchive`)'
    )


def host_problems(facts: HostFacts) -> list[Problem]:
    """Projects that would make `pulumi up` fail: archived at a path to create, or archived and adopted."""
    problems: list[Problem] = []
    for key, record in facts.archived_at_path.items():
        adopt_key = "adoptAppProject" if key == "appProject" else "adoptManifestProject"
        path = record.path_with_namespace.rsplit("/", 1)[-1]
        problems.append(
            Problem(
                key,
                f"{record.path_with_namespace} already exists and is archived (an earlier `pulumi destroy` with"
                f" projectsOnDestroy=archive keeps the project and its path), so it cannot be created again."
                f" Either {_unarchive(record)} and manage it as it is with"
                f" `pulumi config set {adopt_key} {record.path_with_namespace}`, or create a new project with"
                f" `pulumi config set {key} {path}-2`",
                f"{path}-2",
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


def protection_args(enterprise: bool, push: str, merge: str) -> dict[str, Any]:
    """BranchProtection's access arguments for the instance's edition.

    terraform-provider-gitlab 19.x refuses ``push_access_level``/``merge_access_level`` on
    Enterprise Edition (gitlab.com is EE) and ``allowed_to_push``/``allowed_to_merge`` on
    Community Edition, at plan time (resource_gitlab_branch_protection.go, ModifyPlan).
    """
    if enterprise:
        return {"allowed_to_pushes": [{"access_level": push}], "allowed_to_merges": [{"access_level": merge}]}
    return {"push_access_level": push, "merge_access_level": merge}
