"""How the apps of one stack are named and which manifest projects they share.

Pure code: no Pulumi imports. Every logical name, branch, key title and token name an app
gets comes from here, so that two apps (or two stacks sharing a project) never collide and a
name, once used, never moves. The app of a single-app stack keeps the names it has always had.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from components.settings import AppSettings, ProjectSettings, project_key_name, slug

# The resource types, as the engine qualifies them, that held a single-app stack's resources
# before each app had a component of its own (see `legacy_urn`).
LEGACY_TYPES = {
    "projects": "gitops:gitlab:Projects",
    "protections": "gitops:gitlab:BranchProtections",
    "access": "gitops:gitlab:Access",
    "credentials": "gitops:credentials:Credentials",
}


@dataclass(frozen=True)
class AppNames:
    """Everything one app is called: logical-name prefix, branches, key titles and token names."""

    # Prefix of every logical name under the app's component; "" for a single-app stack's app.
    prefix: str
    # Appended to branch names, key titles and token names; "" for a single-app stack's app.
    suffix: str


# Joins the stack and the app in branch names, key titles and token names. Stack names hold only
# letters, digits, '-', '_' and '.', and app names no '+', so `<stack>+<app>` never equals
# another stack's `<stack>`, nor another stack and app's (stacks may share a manifest project).
APP_SEPARATOR = "+"


def app_names(app: AppSettings) -> AppNames:
    """An app's names: unchanged for a single-app stack's app, carrying the app's name otherwise."""
    if app.single_app_names:
        return AppNames(prefix="", suffix="")
    return AppNames(prefix=f"{app.name}-", suffix=f"{APP_SEPARATOR}{app.name}")


@dataclass(frozen=True)
class ManifestRepositorySpec:
    """One manifest project and the apps whose charts live in it; owned once per stack."""

    key: str
    project: ProjectSettings
    # Names of the apps sharing it, in the order of the settings.
    apps: tuple[str, ...]
    # Config key (with path) that names the project, for messages: the first app's.
    config_key: str
    # True when a single-app stack's app uses it: its resources keep their names.
    single_app_names: bool

    @property
    def component_name(self) -> str:
        """The logical name of the repository's component: by its path, whichever apps use it."""
        return f"manifest-{slug(self.key)}"

    @property
    def prefix(self) -> str:
        """Prefix of its children's logical names (a single-app stack's are found by aliases)."""
        return f"{slug(self.key)}-"

    @property
    def suffix(self) -> str:
        """Appended to its status token's name; "" while a single-app stack's app uses it."""
        return "" if self.single_app_names else f"{APP_SEPARATOR}{slug(self.key)}"

    @property
    def service_suffix(self) -> str:
        """Appended to its notification service and secret key; "" while a single-app stack's app uses it.

        Annotation keys name the service (`notifications.argoproj.io/subscribe.<trigger>.<service>`),
        and Kubernetes allows 63 characters after the `/` and no '+': a short digest of the
        path fits any path.
        """
        if self.single_app_names:
            return ""
        return "-" + hashlib.sha256(self.key.lower().encode()).hexdigest()[:8]


def manifest_repositories(apps: Iterable[AppSettings]) -> list[ManifestRepositorySpec]:
    """The distinct manifest projects the apps name, each once, keyed by the project's path."""
    found: dict[str, ManifestRepositorySpec] = {}
    for app in apps:
        key = app.manifest_project.key
        spec = found.get(key)
        if spec is None:
            found[key] = ManifestRepositorySpec(
                key=key,
                project=app.manifest_project,
                apps=(app.name,),
                config_key=app.key(project_key_name(app, "manifest")),
                single_app_names=app.single_app_names,
            )
        else:
            found[key] = ManifestRepositorySpec(
                key=key,
                project=spec.project,
                apps=(*spec.apps, app.name),
                config_key=spec.config_key,
                single_app_names=spec.single_app_names or app.single_app_names,
            )
    return list(found.values())


def legacy_urn(stack: str, project: str, type_chain: str, name: str) -> str:
    """The URN a resource had in a single-app stack, for an alias (``type_chain``: parent types and its own, ``$``-joined)."""
    return f"urn:pulumi:{stack}::{project}::{type_chain}::{name}"


def legacy_aliases(keep: bool, stack: str, project: str, old_parent: str, child_type: str, old_name: str) -> list[str]:
    """The old URN of a resource that a single-app stack held under another component (``LEGACY_TYPES`` key), if kept."""
    if not keep:
        return []
    return [legacy_urn(stack, project, f"{LEGACY_TYPES[old_parent]}${child_type}", old_name)]
