"""Typed, validated settings for the whole program, parsed from raw stack config.

Pure code: no Pulumi imports, so it is tested without an engine. ``__main__.py``
reads every key in :data:`KEYS` once and hands the raw strings to
:func:`parse_settings`, which either returns a :class:`Settings` or raises one
:class:`SettingsError` that lists every bad key.
"""

from __future__ import annotations

import base64
import difflib
import json
import posixpath
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from components import manifest_source
from components.notifications import DEPLOY_STATUS_MODES, DEPLOY_STATUS_TOKEN
from components.pipeline import CACHE_OFF, MERGE_REQUEST_VIA, RUNNER_TAG_ROLES, runner_tag_conflicts
from components.rollouts import DELIVERY_STRATEGIES, ROLLOUTS_NAMESPACE, ROLLOUTS_URL, STRATEGY_ROLLING

# RFC 1123 label: what Kubernetes accepts as a namespace name.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_VERSION = re.compile(r"^v\d+\.\d+\.\d+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DURATION = re.compile(r"^\d+[smh]$")
# GitLab project path: letters, digits, '_', '-', '.'; may not start or end with a separator.
_PROJECT_PATH = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_FULL_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(?:/[A-Za-z0-9][A-Za-z0-9_.-]*)*$")
_DOCKERHUB_USER = re.compile(r"^[a-z0-9]{4,30}$")
_IMAGE_REPO = re.compile(r"^[a-z0-9.-]+(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+$")
# RFC 1035 label: a Service name, which the chart derives from the app name.
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# A known_hosts line: host pattern(s), key type, base64 key, optional comment.
_KNOWN_HOSTS_LINE = re.compile(
    r"^\S+ (ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( .*)?$"
)
# GitLab's rule for a masked variable that is expanded (not raw): app/models/concerns/ci/maskable.rb.
MASKABLE = re.compile(r"\A[a-zA-Z0-9_+=/@:.~-]{8,}\Z")

PROJECTS_ON_DESTROY = ("archive", "retain", "delete")
DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
VISIBILITY = ("private", "internal", "public")
# Protected-branch access levels that may merge deploys: GitLab has no owners-only level
# (0 no one, 30 developer, 40 maintainer, 60 admin: docs/api/protected_branches.md).
MANIFEST_MERGE_ACCESS = ("maintainer", "admin")
# Namespaces an app may not deploy into: the cluster's own, and Argo Rollouts'.
RESERVED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "default", ROLLOUTS_NAMESPACE)


class SecretStr:
    """A secret string whose repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The plain value, for handing to ``pulumi.Output.secret``."""
        return self._value

    def __repr__(self) -> str:
        return "SecretStr('[secret]')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Key:
    """One declared config key: its type, default, secrecy and a good example.

    ``default`` is what ``Pulumi.yaml`` declares. ``""`` (and ``[]`` for an array) means
    "unset": the key is optional and an empty value means the program's own choice. A key
    with a non-empty default needs a value, so an explicit ``""`` is refused. A secret key
    without a default is required; an optional secret key has ``default=""`` and is declared
    as a plain string in ``Pulumi.yaml`` (the CLI would merge a secret's default in as
    plain text and then refuse it), and the program checks that it was set with ``--secret``.
    """

    name: str
    type: str  # "string" | "boolean" | "integer" | "array"
    description: str
    example: str
    default: Any = None
    secret: bool = False

    @property
    def optional(self) -> bool:
        """Whether an empty value means unset."""
        return self.default in ("", [])

    @property
    def declared_secret(self) -> bool:
        """Whether ``Pulumi.yaml`` declares ``secret: true`` (required secrets only)."""
        return self.secret and self.default is None


KEYS: tuple[Key, ...] = (
    Key("argocdVersion", "string", "Argo CD release tag to install.", "v3.5.1", default="v3.5.1"),
    Key("argocdHa", "boolean", "Install the high-availability manifest.", "false", default=False),
    Key("argocdNamespace", "string", "Namespace Argo CD is installed into.", "argocd", default="argocd"),
    Key(
        "argocdManifest",
        "string",
        "Mirror of the install manifest: a local file path or an https URL (air-gapped installs); empty uses the upstream URL.",
        "https://mirror.example.com/argo-cd/v3.5.1/install.yaml",
        default="",
    ),
    Key(
        "argocdManifestSha256",
        "string",
        "sha256 of the install manifest; required for versions the program does not know.",
        "795a3a972224da6a7f9d32c3e946445f062b60fb46028476715affeb688236e3",
        default="",
    ),
    Key(
        "argocdExternalUrl",
        "string",
        "Public https URL of the Argo CD server; enables the GitLab webhook. Empty: no public URL.",
        "https://argocd.example.com",
        default="",
    ),
    Key(
        "argocdReconciliationTimeout",
        "string",
        "How often Argo CD polls Git when no webhook arrives.",
        "120s",
        default="120s",
    ),
    Key(
        "argocdReconciliationJitter",
        "string",
        "Random delay Argo CD adds to each poll, spreading the load; Argo CD's default is 60s.",
        "10s",
        default="60s",
    ),
    Key(
        "argocdReadAdminPassword",
        "boolean",
        "Export the initial admin password; turn off once the bootstrap secret is deleted.",
        "true",
        default=True,
    ),
    Key("kubeContext", "string", "kubeconfig context to deploy to; empty uses the current one.", "kind-gitops", default=""),
    Key("appNamespace", "string", "Namespace the application is deployed into.", "gitops-demo", default="gitops-demo"),
    Key("appName", "string", "Name of the Argo CD Application, its AppProject and the chart.", "webapp", default="webapp"),
    Key(
        "appPort",
        "integer",
        "Container port of the app: the chart's containerPort and the only port its NetworkPolicy admits.",
        "8080",
        default=8080,
    ),
    Key("chartPath", "string", "Path of the chart inside the manifest project.", ".", default="."),
    Key(
        "gitlabGroup",
        "string",
        "Full path of the GitLab group for both projects; empty uses the token owner's namespace.",
        "acme/platform",
        default="",
    ),
    Key("appProject", "string", "Path of the app project to create.", "gitops-demo-app", default="gitops-demo-app"),
    Key(
        "manifestProject",
        "string",
        "Path of the manifest (chart) project to create.",
        "gitops-demo-chart",
        default="gitops-demo-chart",
    ),
    Key(
        "adoptAppProject",
        "string",
        "Full path of an existing app project to manage instead of creating one; empty creates one.",
        "acme/webapp",
        default="",
    ),
    Key(
        "adoptManifestProject",
        "string",
        "Full path of an existing manifest project to manage instead of creating one; empty creates one.",
        "acme/webapp-chart",
        default="",
    ),
    Key(
        "manifestMergeAccess",
        "string",
        "Who may merge into the manifest project's default branch: maintainer (maintainers and owners) or admin"
        " (instance administrators; self-managed only). Never developer.",
        "maintainer",
        default="maintainer",
    ),
    Key(
        "deployKeyOwnerToken",
        "string",
        "Optional secret: API token of a bot account that registers the deploy keys, so their owner is not you.",
        "(set with pulumi config set --secret deployKeyOwnerToken)",
        default="",
        secret=True,
    ),
    Key("projectVisibility", "string", "Visibility of created projects.", "private", default="private"),
    Key("defaultBranch", "string", "Default branch of created projects.", "main", default="main"),
    Key(
        "projectsOnDestroy",
        "string",
        "What `pulumi destroy` does to created projects: archive, retain or delete.",
        "archive",
        default="archive",
    ),
    Key(
        "gitlabSshKnownHosts",
        "array",
        "known_hosts lines of the GitLab SSH host, one key per line (required).",
        '["gitlab.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAfuCHKVTjquxvt6CM6tdG4SLp1Btn/nOeHHE5UOzRdf"]',
        default=[],
    ),
    Key(
        "mergeRequestVia",
        "string",
        "How the pipeline opens merge requests: push-options (git push options, no token; every tier) or api"
        " (a project access token; Premium on gitlab.com, any tier self-managed).",
        "push-options",
        default="push-options",
    ),
    Key(
        "buildRunnerTags",
        "array",
        "Runner tags for the image build job (a runner that allows BuildKit rootless); empty: any runner. Make"
        " those runners protected, taking no untagged jobs (README, Security model).",
        '["buildkit"]',
        default=[],
    ),
    Key(
        "deployRunnerTags",
        "array",
        "Runner tags for update-manifest, which holds the deploy key: protected runners that run no build."
        " Empty: any runner that takes untagged jobs.",
        '["gitops-deploy"]',
        default=[],
    ),
    Key(
        "buildCheckRunnerTags",
        "array",
        "Runner tags for the merge-request build check, which runs unreviewed code; never the build runners'."
        " Empty: any runner that takes untagged jobs.",
        '["buildkit-untrusted"]',
        default=[],
    ),
    Key("hideCiVariables", "boolean", "Also hide masked CI variables (GitLab 17.6 and later).", "false", default=False),
    Key("accessTokenExpiryDays", "integer", "Lifetime of the merge-request access token, in days.", "30", default=30),
    Key("accessTokenRotateBeforeDays", "integer", "Rotate the access token this many days before it expires.", "7", default=7),
    Key("credentialsEpoch", "integer", "Bump to rotate every generated credential.", "1", default=1),
    Key("dockerhubUser", "string", "Docker Hub user that pushes the image (required).", "acme", default=""),
    Key(
        "dockerhubOrganization",
        "string",
        "Docker Hub organisation that owns imageRepository, when it is not dockerhubUser's own namespace.",
        "acmecorp",
        default="",
    ),
    Key("dockerhubToken", "string", "Docker Hub access token with Read & Write scope.", "dckr_pat_…", secret=True),
    Key(
        "imageRepository",
        "string",
        "Image repository; empty uses docker.io/<dockerhubOrganization or dockerhubUser>/<appName>.",
        "docker.io/acme/webapp",
        default="",
    ),
    Key(
        "buildCacheRepository",
        "string",
        "Where the build keeps its layer cache; empty uses the app project's GitLab container registry"
        " ($CI_REGISTRY_IMAGE/buildcache), off builds without a cache.",
        "registry.gitlab.com/acme/gitops-demo-app/buildcache",
        default="",
    ),
    Key(
        "deployStatus",
        "string",
        "Deploy feedback as a GitLab commit status on the manifest revision: project-token (a project access"
        " token the program creates; Premium on gitlab.com), token (deployStatusToken) or off; empty: off on"
        " gitlab.com, project-token elsewhere.",
        "project-token",
        default="",
    ),
    Key(
        "deployStatusToken",
        "string",
        "Optional secret: a GitLab token with scope api and at least Developer on the manifest project, for deployStatus=token.",
        "(set with pulumi config set --secret deployStatusToken)",
        default="",
        secret=True,
    ),
    Key(
        "deliveryStrategy",
        "string",
        "How a deploy replaces the app: rolling (a Deployment), canary or blueGreen (an Argo Rollouts Rollout;"
        " the program installs Argo Rollouts). Seeds the starter chart only; an existing chart keeps its own.",
        "canary",
        default="rolling",
    ),
    Key(
        "argoRolloutsManifest",
        "string",
        "Mirror of the Argo Rollouts v1.9.1 install manifest: a local file path or an https URL; empty uses the"
        " pinned upstream URL. Its sha256 must match the pinned one.",
        "https://mirror.example.com/argo-rollouts/v1.9.1/install.yaml",
        default="",
    ),
    Key(
        "blueGreenAutoPromotionSeconds",
        "integer",
        "blueGreen: promote the new version after this many seconds; 0 waits for a person to promote it.",
        "300",
        default=0,
    ),
    Key(
        "apps",
        "array",
        "Apps this stack deploys, one object each (name, namespace, appProject, manifestProject, chartPath, …;"
        " see the README's 'Onboarding another app'); empty: the single-app keys describe the stack's one app.",
        '[{"name": "orders", "namespace": "orders", "manifestProject": "platform-charts", "chartPath": "orders"}]',
        default=[],
    ),
    Key(
        "slackWebhookUrl",
        "string",
        "Optional secret: a Slack incoming-webhook URL; each deploy's start and outcome is posted there.",
        "(set with pulumi config set --secret slackWebhookUrl)",
        default="",
        secret=True,
    ),
)

KEYS_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}


@dataclass(frozen=True)
class ArgoCdSettings:
    """Where and how Argo CD is installed."""

    version: str
    ha: bool
    namespace: str
    manifest_source: str
    manifest_sha256: str
    external_url: str | None
    reconciliation_timeout: str
    reconciliation_jitter: str
    read_admin_password: bool


@dataclass(frozen=True)
class ProjectSettings:
    """One GitLab project: created under ``path``, or adopted from ``adopt``."""

    path: str
    adopt: str | None

    @property
    def adopted(self) -> bool:
        """True when the project exists already and is only managed, never created."""
        return self.adopt is not None

    @property
    def key(self) -> str:
        """What names the project among the stack's settings: the adopted full path, or the path to create."""
        return self.adopt or self.path


@dataclass(frozen=True)
class GitLabSettings:
    """The GitLab side: projects, branch, lifecycle and CI-variable policy."""

    group: str | None
    visibility: str
    default_branch: str
    projects_on_destroy: str
    ssh_known_hosts: tuple[str, ...]
    hide_ci_variables: bool
    token_expiry_days: int
    token_rotate_before_days: int
    # Access level that may merge into the manifest project's default branch.
    manifest_merge_access: str = "maintainer"
    # A bot account's API token that registers the deploy keys; None: the provider's own token.
    deploy_key_owner_token: SecretStr | None = None


@dataclass(frozen=True)
class AppSettings:
    """One deployed application: names, namespace, image, its two projects and how it is delivered."""

    name: str
    namespace: str
    chart_path: str
    image_repository: str
    port: int = 8080
    # The build's layer cache: "" for the app project's GitLab registry, "off" for none.
    cache_repository: str = ""
    app_project: ProjectSettings = ProjectSettings("gitops-demo-app", None)
    manifest_project: ProjectSettings = ProjectSettings("gitops-demo-chart", None)
    strategy: str = STRATEGY_ROLLING
    auto_promotion_seconds: int = 0
    merge_request_via: str = "push-options"
    build_runner_tags: tuple[str, ...] = ()
    build_check_runner_tags: tuple[str, ...] = ()
    deploy_runner_tags: tuple[str, ...] = ()
    # True for the app of a single-app stack (and an `apps` entry that keeps those names): its
    # resources, branches, titles and token names are the ones a single-app stack has always had.
    single_app_names: bool = True
    # Where its settings live in config: "" for the single-app keys, "apps[1]" for a list entry.
    config_path: str = ""

    def key(self, name: str) -> str:
        """The config key (with its path in structured config) of one of this app's settings."""
        if not self.config_path:
            return name
        return f"{self.config_path}.{APP_FIELDS_BY_KEY.get(name, name)}"


@dataclass(frozen=True)
class RegistrySettings:
    """Docker Hub credentials the pipeline pushes with."""

    user: str
    token: SecretStr


@dataclass(frozen=True)
class DeliverySettings:
    """Where Argo Rollouts comes from when an app's delivery strategy needs it (each app picks its own)."""

    rollouts_manifest_source: str = ROLLOUTS_URL


@dataclass(frozen=True)
class FeedbackSettings:
    """Deploy feedback: the commit-status mode as set ("" for the host's default) and its secrets."""

    deploy_status: str = ""
    deploy_status_token: SecretStr | None = None
    slack_webhook_url: SecretStr | None = None


@dataclass(frozen=True)
class Settings:
    """Everything the program needs, validated."""

    stack: str
    argocd: ArgoCdSettings
    apps: tuple[AppSettings, ...]
    gitlab: GitLabSettings
    registry: RegistrySettings
    credentials_epoch: int
    kube_context: str | None
    feedback: FeedbackSettings = FeedbackSettings()
    delivery: DeliverySettings = DeliverySettings()


@dataclass(frozen=True)
class KubeContexts:
    """The context names a kubeconfig defines, and where it was read from."""

    names: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Problem:
    """One bad key: the rule it breaks and a good example."""

    key: str
    rule: str
    example: str

    def __str__(self) -> str:
        return f"  - {self.key}: {self.rule} (example: {self.example})"


class SettingsError(ValueError):
    """Invalid configuration; lists every problem at once."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(str(p) for p in problems)
        super().__init__(f"invalid configuration, nothing was changed:\n{lines}")

    @property
    def keys(self) -> list[str]:
        """The names of the bad keys."""
        return [p.key for p in self.problems]


class _Reader:
    """Typed access to raw config strings that collects problems instead of raising.

    A missing key (None) takes its declared default, as the CLI would merge it in. An empty
    value means unset for optional keys (default ``""``) and is refused for every other key.
    """

    def __init__(
        self,
        raw: Mapping[str, str | None],
        secret_keys: Collection[str],
        problems: list[Problem] | None = None,
        rename: Callable[[str], str] = str,
    ) -> None:
        self.raw = raw
        self.secret_keys = secret_keys
        self.problems: list[Problem] = problems if problems is not None else []
        # An `apps` entry's reader reports `apps[1].namespace` where the single-app key is appNamespace.
        self.rename = rename

    def bad(self, key: str, rule: str, example: str | None = None) -> None:
        spec = KEYS_BY_NAME.get(key)
        fallback = spec.example if spec is not None else ""
        self.problems.append(Problem(self.rename(key), rule, example if example is not None else fallback))

    def _text(self, key: str) -> str | None:
        """The stripped value; None where missing or, for an optional key, empty."""
        spec = KEYS_BY_NAME[key]
        value = self.raw.get(key)
        if value is None:
            return None
        value = value.strip()
        if value == "" and spec.default is not None and not spec.optional:
            default = spec.default if isinstance(spec.default, str) else json.dumps(spec.default)
            self.bad(key, f"must not be empty; remove it (`pulumi config rm {key}`) to use the default {default}")
            return None
        if value and spec.secret and key not in self.secret_keys:
            self.bad(key, f"is a secret and must be set with `pulumi config set --secret {key}`", "(encrypted in the stack file)")
        return value or None

    def string(self, key: str) -> str | None:
        value = self._text(key)
        if value is not None:
            return value
        default = KEYS_BY_NAME[key].default
        return default or None

    def boolean(self, key: str) -> bool:
        value = self._text(key)
        if value is None:
            return bool(KEYS_BY_NAME[key].default)
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        self.bad(key, "must be true or false")
        return bool(KEYS_BY_NAME[key].default)

    def integer(self, key: str, minimum: int) -> int:
        value = self._text(key)
        default = int(KEYS_BY_NAME[key].default)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.bad(key, "must be a whole number")
            return default
        if number < minimum:
            self.bad(key, f"must be at least {minimum}")
        return number

    def lines(self, key: str) -> tuple[str, ...]:
        value = self._text(key)
        if value is None:
            return ()
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value.splitlines()
        if isinstance(parsed, str):
            parsed = parsed.splitlines()
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            self.bad(key, "must be a list of strings")
            return ()
        return tuple(x.strip() for x in parsed if x.strip())

    def check(self, key: str, value: str | None, ok: Callable[[str], bool], rule: str) -> None:
        if value is not None and not ok(value):
            self.bad(key, rule)


def _https_url(value: str) -> bool:
    parsed = urlparse(value)
    return parsed.scheme == "https" and bool(parsed.netloc)


def is_maskable(value: str) -> bool:
    """Whether GitLab accepts ``value`` as a masked, expanded CI/CD variable."""
    return MASKABLE.match(value) is not None


def docker_auth(user: str, token: str) -> str:
    """The ``auth`` value of a Docker config (and of ``DOCKERHUB_TOKEN``): base64 of ``user:token``."""
    return base64.b64encode(f"{user}:{token}".encode()).decode()


# An `apps` entry's fields and the single-app key each one stands for.
APP_FIELDS: dict[str, str] = {
    "name": "appName",
    "namespace": "appNamespace",
    "port": "appPort",
    "chartPath": "chartPath",
    "appProject": "appProject",
    "manifestProject": "manifestProject",
    "adoptAppProject": "adoptAppProject",
    "adoptManifestProject": "adoptManifestProject",
    "imageRepository": "imageRepository",
    "buildCacheRepository": "buildCacheRepository",
    "deliveryStrategy": "deliveryStrategy",
    "blueGreenAutoPromotionSeconds": "blueGreenAutoPromotionSeconds",
    "mergeRequestVia": "mergeRequestVia",
    "buildRunnerTags": "buildRunnerTags",
    "buildCheckRunnerTags": "buildCheckRunnerTags",
    "deployRunnerTags": "deployRunnerTags",
}
APP_FIELDS_BY_KEY: dict[str, str] = {key: field for field, key in APP_FIELDS.items()}
# An `apps` entry that takes over a single-app stack's resources without renaming any of them.
KEEP_NAMES_FIELD = "keepSingleAppNames"
# Stack-wide keys an `apps` entry may override; the other fields replace single-app keys.
APP_INHERITED_KEYS = ("mergeRequestVia", "buildRunnerTags", "buildCheckRunnerTags", "deployRunnerTags")
SINGLE_APP_KEYS = tuple(key for key in APP_FIELDS.values() if key not in APP_INHERITED_KEYS)
APPS_EXAMPLE = '[{"name": "orders", "namespace": "orders"}]'


@dataclass(frozen=True)
class _Owner:
    """Stack-wide values an app's settings are checked against."""

    argocd_namespace: str
    user: str | None
    organization: str | None


def _parse_app(r: _Reader, owner: _Owner, single_app_names: bool, config_path: str) -> AppSettings:
    """One app's settings, read through ``r`` under the single-app key names."""
    app_namespace = r.string("appNamespace") or ""
    if not _DNS_LABEL.match(app_namespace) or len(app_namespace) > 63:
        r.bad("appNamespace", "must be an RFC 1123 label: lowercase letters, digits and '-', at most 63 characters")
    elif app_namespace == owner.argocd_namespace:
        r.bad("appNamespace", f"must differ from argocdNamespace ({owner.argocd_namespace})", "gitops-demo")
    elif app_namespace in RESERVED_NAMESPACES:
        r.bad(
            "appNamespace", f"must not be {app_namespace}: that namespace belongs to the cluster or Argo Rollouts", "gitops-demo"
        )

    app_name = r.string("appName") or ""
    if not _DNS_1035.match(app_name) or len(app_name) > 53:
        r.bad("appName", "must start with a letter and hold only lowercase letters, digits and '-', at most 53 characters")
    elif app_name == "default":
        r.bad(
            "appName",
            "must not be `default`: the app gets an AppProject of its own, and Argo CD's `default` project allows everything",
        )
    port = r.integer("appPort", 1)
    if port > 65535:
        r.bad("appPort", "must be a TCP port, 1 to 65535")
    chart_path = posixpath.normpath(r.string("chartPath") or ".")
    if chart_path.startswith("/") or ".." in chart_path.split("/"):
        r.bad("chartPath", "must be a relative path inside the manifest project")

    projects: dict[str, ProjectSettings] = {}
    for which in ("app", "manifest"):
        path_key, adopt_key = f"{which}Project", f"adopt{which.capitalize()}Project"
        path = r.string(path_key) or ""
        r.check(
            path_key, path, lambda v: _PROJECT_PATH.match(v) is not None, "must be a project path: letters, digits, '_', '-', '.'"
        )
        adopt = r.string(adopt_key)
        r.check(
            adopt_key,
            adopt,
            lambda v: "/" in v and _FULL_PATH.match(v) is not None,
            "must be a project's full path, namespace included",
        )
        projects[which] = ProjectSettings(path=path, adopt=adopt)
    # GitLab paths ignore case.
    app_adopt, manifest_adopt = (projects[w].adopt for w in ("app", "manifest"))
    if app_adopt is not None and manifest_adopt is not None and app_adopt.lower() == manifest_adopt.lower():
        r.bad("adoptManifestProject", "must differ from adoptAppProject: the chart needs a project of its own")
    if (
        not projects["app"].adopted
        and not projects["manifest"].adopted
        and projects["app"].path.lower() == projects["manifest"].path.lower()
    ):
        r.bad("manifestProject", "must differ from appProject", "gitops-demo-chart")

    strategy = r.string("deliveryStrategy") or ""
    r.check("deliveryStrategy", strategy, lambda v: v in DELIVERY_STRATEGIES, f"must be one of {', '.join(DELIVERY_STRATEGIES)}")
    auto_promotion = r.integer("blueGreenAutoPromotionSeconds", 0)
    via = r.string("mergeRequestVia") or ""
    r.check("mergeRequestVia", via, lambda v: v in MERGE_REQUEST_VIA, f"must be one of {', '.join(MERGE_REQUEST_VIA)}")
    runner_tags = r.lines("buildRunnerTags")
    check_tags = r.lines("buildCheckRunnerTags")
    deploy_tags = r.lines("deployRunnerTags")
    role_keys = dict(zip(RUNNER_TAG_ROLES, ("buildRunnerTags", "buildCheckRunnerTags", "deployRunnerTags"), strict=True))
    for role, tags in zip(RUNNER_TAG_ROLES, (runner_tags, check_tags, deploy_tags), strict=True):
        for tag in tags:
            if len(tag) > 255 or "," in tag:
                r.bad(role_keys[role], f"has a tag GitLab cannot hold: {tag[:40]!r}")
    for job, runner in runner_tag_conflicts(runner_tags, check_tags, deploy_tags):
        # A runner takes every job whose tags are a subset of its own (gitlab-org/gitlab-ce#47387).
        r.bad(
            role_keys[job],
            f"must not be a subset of {role_keys[runner]}: every one of those runners could then take this job"
            " (unreviewed code, builds and the deploy key must not share a runner host)",
            '["buildkit-untrusted"]' if job == "build_check_runner_tags" else '["gitops-deploy"]',
        )

    user, organization = owner.user, owner.organization
    image = r.string("imageRepository") or f"docker.io/{organization or user or 'user'}/{app_name}"
    r.check("imageRepository", image, lambda v: _IMAGE_REPO.match(v) is not None, "must be an image repository without a tag")
    r.check(
        "imageRepository",
        image,
        lambda v: v.split("/", 1)[0] in DOCKER_HUB_HOSTS,
        "must be on Docker Hub (docker.io/<user>/<name>): the pipeline logs in to Docker Hub only",
    )
    parts = image.split("/")
    if parts[0] in DOCKER_HUB_HOSTS and len(parts) != 3:
        # docker.io/<name> means docker.io/library/<name>, the official images nobody here can push to.
        r.bad("imageRepository", "must be docker.io/<namespace>/<name> on Docker Hub")
    image_namespace = parts[1] if len(parts) == 3 else ""
    if user and image_namespace and image_namespace not in {user, organization}:
        r.bad(
            "imageRepository",
            f"must be in dockerhubUser's namespace ({user}) or in dockerhubOrganization's; {image_namespace!r} is"
            " neither, so the pipeline would push as you into someone else's repository",
            f"docker.io/{user}/{app_name}",
        )
    cache = r.string("buildCacheRepository") or ""
    if cache not in ("", CACHE_OFF):
        r.check(
            "buildCacheRepository",
            cache,
            lambda v: _IMAGE_REPO.match(v) is not None and v != image,
            f"must be an image repository without a tag, other than imageRepository (the cache would be published"
            f" with the image), or {CACHE_OFF}",
        )
    return AppSettings(
        name=app_name,
        namespace=app_namespace,
        chart_path=chart_path,
        image_repository=image,
        port=port,
        cache_repository=cache,
        app_project=projects["app"],
        manifest_project=projects["manifest"],
        strategy=strategy,
        auto_promotion_seconds=auto_promotion,
        merge_request_via=via,
        build_runner_tags=runner_tags,
        build_check_runner_tags=check_tags,
        deploy_runner_tags=deploy_tags,
        single_app_names=single_app_names,
        config_path=config_path,
    )


def _scalar(value: Any) -> str:
    """An `apps` entry's value as the CLI would hand the same single-app key over: a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _app_key_renamer(path: str) -> Callable[[str], str]:
    """How an `apps` entry's reader names a single-app key: by the entry's path and field."""

    def rename(key: str) -> str:
        return f"{path}.{APP_FIELDS_BY_KEY.get(key, key)}"

    return rename


def _field_type_problem(field: str, value: Any) -> str | None:
    """Why an `apps` entry's value has the wrong type for its field, or None."""
    key = KEYS_BY_NAME[APP_FIELDS[field]]
    if key.type == "integer":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.strip().isdigit())
        return None if ok else "must be a whole number"
    if key.type == "array":
        return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else "must be a list of strings"
    return None if isinstance(value, str) else "must be a string"


def _parse_apps(r: _Reader, owner: _Owner, text: str, secret: bool) -> list[AppSettings] | None:
    """The `apps` list; None when it is unset (the single-app keys describe the one app)."""
    if secret:
        r.bad(
            "apps",
            "holds no secrets: structured config hands encrypted entries over as plain values; set it without --secret",
            APPS_EXAMPLE,
        )
        return []
    try:
        entries = json.loads(text)
    except json.JSONDecodeError:
        entries = None
    if not isinstance(entries, list):
        r.bad("apps", "must be a list of objects, one per app", APPS_EXAMPLE)
        return []
    if not entries:
        return None
    # Defaults that are the stack's own: the stack-wide merge-request and runner settings.
    inherited = {key: r.raw.get(key) for key in APP_INHERITED_KEYS}
    apps: list[AppSettings] = []
    for index, entry in enumerate(entries):
        path = f"apps[{index}]"
        if not isinstance(entry, dict):
            r.bad(path, "must be an object with at least a name", '{"name": "orders"}')
            continue
        fields = [*APP_FIELDS, KEEP_NAMES_FIELD]
        for field in sorted(set(entry) - set(fields)):
            hint = did_you_mean(field, fields)
            r.bad(f"{path}.{field}", f"is not an app setting{hint}; an app takes {', '.join(fields)}", "name")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            r.bad(f"{path}.name", "is required: it names the app's Application, AppProject and chart", "orders")
            continue
        name = name.strip()
        # Without a value (YAML null) the flag is unset, like every other field.
        keep = entry.get(KEEP_NAMES_FIELD) or False
        # `pulumi config set --path` may store the flag as the string "true".
        if isinstance(keep, str) and keep.strip().lower() in ("true", "false"):
            keep = keep.strip().lower() == "true"
        if not isinstance(keep, bool):
            r.bad(f"{path}.{KEEP_NAMES_FIELD}", "must be true or false", "true")
            keep = False
        raw: dict[str, str | None] = {
            **inherited,
            "appNamespace": name,
            "appProject": f"{name}-app",
            "manifestProject": f"{name}-chart",
        }
        for field, value in entry.items():
            if field not in APP_FIELDS or value is None:
                # A field without a value (`chartPath:` in YAML) is unset, as an empty single-app key is.
                continue
            rule = _field_type_problem(field, value)
            if rule:
                r.bad(f"{path}.{field}", rule, str(KEYS_BY_NAME[APP_FIELDS[field]].example))
                continue
            raw[APP_FIELDS[field]] = _scalar(value)
        reader = _Reader(raw, (), r.problems, rename=_app_key_renamer(path))
        apps.append(_parse_app(reader, owner, keep, path))
    return apps


def slug(text: str) -> str:
    """``text`` as a lowercase name of letters, digits and single dashes (what a manifest project's resources are named by)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _identity(project: ProjectSettings, group: str | None) -> str:
    """A project as GitLab tells projects apart: its full path where known, in any case."""
    if project.adopted or not group:
        return project.key.lower()
    return f"{group}/{project.path}".lower()


def project_key_name(app: AppSettings, which: str) -> str:
    """The config key that names an app's ``which`` ("app" or "manifest") project: the path to create or the one to adopt."""
    project = app.app_project if which == "app" else app.manifest_project
    return f"adopt{which.capitalize()}Project" if project.adopted else f"{which}Project"


def _shared_project_problems(apps: list[AppSettings], group: str | None) -> list[Problem]:
    """Two apps that would collide.

    The same name, namespace, app project or image; a manifest project named two ways; two
    manifest projects whose resources would get one name; charts that overlap in one manifest project.
    """
    problems: list[Problem] = []
    seen: dict[tuple[str, str], AppSettings] = {}
    for app in apps:
        claims = [
            ("appName", app.name, "Application, AppProject and chart name"),
            ("appNamespace", app.namespace, "namespace"),
            (project_key_name(app, "app"), _identity(app.app_project, group), "app project"),
            ("imageRepository", app.image_repository, "image repository"),
        ]
        if app.cache_repository not in ("", "off"):
            claims.append(("buildCacheRepository", app.cache_repository, "build cache"))
        for key, value, what in claims:
            other = seen.get((what, value))
            if other is not None:
                problems.append(
                    Problem(app.key(key), f"{value!r} is already {other.name}'s {what}: every app needs its own", f"{app.name}-2")
                )
            else:
                seen[(what, value)] = app
    images = {a.image_repository: a for a in apps}
    for app in apps:
        owner = images.get(app.cache_repository)
        if owner is not None and owner is not app:
            problems.append(
                Problem(
                    app.key("buildCacheRepository"),
                    f"is {owner.name}'s imageRepository: the cache would be published with that image",
                    CACHE_OFF,
                )
            )
    # One manifest project per identity, named one way; and one resource name per project.
    manifest_by_identity: dict[str, AppSettings] = {}
    manifest_by_slug: dict[str, AppSettings] = {}
    for app in apps:
        identity, key = _identity(app.manifest_project, group), app.manifest_project.key
        first = manifest_by_identity.setdefault(identity, app)
        first_key = first.manifest_project.key
        if first_key != key:
            problems.append(
                Problem(
                    app.key(project_key_name(app, "manifest")),
                    f"is {first.name}'s manifest project ({first_key}) written another way: name it the same way in both apps",
                    first_key,
                )
            )
            continue
        name = slug(key)
        other = manifest_by_slug.setdefault(name, app)
        other_key = other.manifest_project.key
        if other_key != key:
            problems.append(
                Problem(
                    app.key(project_key_name(app, "manifest")),
                    f"gives its resources the same names as {other.name}'s manifest project ({other_key}, both"
                    f" `{name}`): rename one project",
                    f"{key}-2",
                )
            )
    for app in apps:
        mixed = app.app_project.adopted != app.manifest_project.adopted
        if mixed and _identity(app.app_project, group) == _identity(app.manifest_project, group):
            problems.append(
                Problem(
                    app.key(project_key_name(app, "manifest")),
                    "is the app project, named another way: the chart needs a project of its own",
                    f"{app.name}-chart",
                )
            )
    manifest_owner = {_identity(a.manifest_project, group): a for a in apps}
    for app in apps:
        other = manifest_owner.get(_identity(app.app_project, group))
        if other is not None and other is not app:
            problems.append(
                Problem(
                    app.key(project_key_name(app, "app")),
                    f"is {other.name}'s manifest project: an app's source and the charts need projects of their own",
                    f"{app.name}-app",
                )
            )
    charts: dict[str, list[AppSettings]] = {}
    for app in apps:
        charts.setdefault(_identity(app.manifest_project, group), []).append(app)
    for sharing in charts.values():
        for i, app in enumerate(sharing):
            for other in sharing[:i]:
                a, b = app.chart_path, other.chart_path
                if a == b or a == "." or b == "." or a.startswith(b + "/") or b.startswith(a + "/"):
                    problems.append(
                        Problem(
                            app.key("chartPath"),
                            f"overlaps {other.name}'s chart ({b}) in the same manifest project: each app's chart needs a"
                            " directory of its own, neither inside the other",
                            app.name,
                        )
                    )
    if sum(a.single_app_names for a in apps) > 1:
        for app in [a for a in apps if a.single_app_names][1:]:
            problems.append(
                Problem(
                    f"{app.config_path}.{KEEP_NAMES_FIELD}", "may be true for one app only: the stack had one single app", "false"
                )
            )
    return problems


def nearest(name: str, choices: Collection[str]) -> str | None:
    """The choice nearest ``name`` by spelling (any case), or None where none is close."""
    by_lower = {choice.lower(): choice for choice in choices}
    near = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[near[0]] if near else None


def did_you_mean(name: str, choices: Collection[str]) -> str:
    """``"; did you mean `x`?"`` for the choice nearest ``name``, or ``""``."""
    near = nearest(name, choices)
    return f"; did you mean `{near}`?" if near else ""


def undeclared_problems(keys: Collection[str], project: str) -> list[Problem]:
    """Keys of this project's config namespace that the program does not declare (a misspelt key would
    otherwise be ignored, and its default deployed). Other namespaces belong to their providers."""
    problems: list[Problem] = []
    declared = [key.name for key in KEYS]
    for full in sorted(keys):
        namespace, _, name = full.partition(":")
        if namespace != project or name in KEYS_BY_NAME:
            continue
        near = nearest(name, declared)
        problems.append(
            Problem(
                name,
                f"is not a setting of this program{f'; did you mean `{near}`?' if near else ''}",
                near or "(remove it: `pulumi config rm KEY`)",
            )
        )
    return problems


def parse_settings(
    raw: Mapping[str, str | None],
    stack: str,
    *,
    secret_keys: Collection[str],
    kube_contexts: KubeContexts | None = None,
    undeclared: Collection[Problem] = (),
) -> Settings:
    """Validate raw config strings (key → value or None) into :class:`Settings`.

    ``secret_keys`` names the keys whose values were set as secrets; ``kube_contexts`` is
    what the kubeconfig holds (None: not checked); ``undeclared`` are the problems of keys the
    stack sets but the program does not declare (:func:`undeclared_problems`). Raises
    :class:`SettingsError` naming every bad key (with its path in `apps`), the rule it breaks and
    an example.
    """
    r = _Reader(raw, secret_keys)
    r.problems.extend(undeclared)

    version = r.string("argocdVersion") or ""
    if not _VERSION.match(version):
        r.bad("argocdVersion", "must be a release tag of the form vX.Y.Z")
    ha = r.boolean("argocdHa")
    namespace = r.string("argocdNamespace") or ""
    if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        r.bad("argocdNamespace", "must be an RFC 1123 label: lowercase letters, digits and '-', at most 63 characters")

    mirror = r.string("argocdManifest")
    if mirror is not None and "://" in mirror and not _https_url(mirror):
        r.bad("argocdManifest", "must be a local file path or an https:// URL")
    sha = r.string("argocdManifestSha256")
    if sha is not None:
        sha = sha.lower()
        if not _SHA256.match(sha):
            r.bad("argocdManifestSha256", "must be 64 hexadecimal characters")
    known = manifest_source.known_sha256(version, ha)
    if sha is None and known is None and _VERSION.match(version):
        r.bad(
            "argocdManifestSha256",
            f"is required: the program has no pinned digest for Argo CD {version}"
            f"{' (HA)' if ha else ''}; known versions are {', '.join(manifest_source.known_versions())}",
        )
    external_url = r.string("argocdExternalUrl")
    if external_url is not None:
        r.check("argocdExternalUrl", external_url, _https_url, "must be an https:// URL")
        external_url = external_url.rstrip("/")
    timeout = r.string("argocdReconciliationTimeout") or ""
    jitter = r.string("argocdReconciliationJitter") or ""
    for key, value in (("argocdReconciliationTimeout", timeout), ("argocdReconciliationJitter", jitter)):
        r.check(key, value, lambda v: _DURATION.match(v) is not None, "must be a duration such as 120s, 5m or 1h")

    group = r.string("gitlabGroup")
    r.check("gitlabGroup", group, lambda v: _FULL_PATH.match(v) is not None, "must be a group's full path such as acme/platform")
    visibility = r.string("projectVisibility") or ""
    r.check("projectVisibility", visibility, lambda v: v in VISIBILITY, f"must be one of {', '.join(VISIBILITY)}")
    default_branch = r.string("defaultBranch") or ""
    r.check(
        "defaultBranch",
        default_branch,
        lambda v: re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", v) is not None and ".." not in v,
        "must be a branch name",
    )
    on_destroy = r.string("projectsOnDestroy") or ""
    r.check(
        "projectsOnDestroy", on_destroy, lambda v: v in PROJECTS_ON_DESTROY, f"must be one of {', '.join(PROJECTS_ON_DESTROY)}"
    )
    known_hosts = r.lines("gitlabSshKnownHosts")
    if not known_hosts:
        r.bad("gitlabSshKnownHosts", "is required: CI and Argo CD check the GitLab SSH host key against it")
    for line in known_hosts:
        if not _KNOWN_HOSTS_LINE.match(line):
            r.bad("gitlabSshKnownHosts", f"has a line that is not a known_hosts entry: {line[:40]!r}")
    hide = r.boolean("hideCiVariables")
    expiry = r.integer("accessTokenExpiryDays", 2)
    rotate_before = r.integer("accessTokenRotateBeforeDays", 1)
    if rotate_before >= expiry:
        r.bad("accessTokenRotateBeforeDays", "must be less than accessTokenExpiryDays", "7")
    if expiry > 365:
        r.bad("accessTokenExpiryDays", "must be at most 365 (GitLab's maximum token lifetime)", "30")
    epoch = r.integer("credentialsEpoch", 1)
    merge_access = r.string("manifestMergeAccess") or ""
    r.check(
        "manifestMergeAccess",
        merge_access,
        lambda v: v in MANIFEST_MERGE_ACCESS,
        f"must be one of {', '.join(MANIFEST_MERGE_ACCESS)}: a deploy needs a maintainer's approval, never less",
    )
    key_owner_token = r.string("deployKeyOwnerToken")
    rollouts_mirror = r.string("argoRolloutsManifest")
    if rollouts_mirror is not None and "://" in rollouts_mirror and not _https_url(rollouts_mirror):
        r.bad("argoRolloutsManifest", "must be a local file path or an https:// URL")
    deploy_status = r.string("deployStatus") or ""
    r.check(
        "deployStatus",
        deploy_status,
        lambda v: v in ("", *DEPLOY_STATUS_MODES),
        f"must be one of {', '.join(DEPLOY_STATUS_MODES)}, or empty for the host's default",
    )
    status_token = r.string("deployStatusToken")
    if deploy_status == DEPLOY_STATUS_TOKEN and status_token is None:
        r.bad(
            "deployStatusToken", "is required with deployStatus=token; set it with `pulumi config set --secret deployStatusToken`"
        )
    if status_token is not None and deploy_status != DEPLOY_STATUS_TOKEN:
        r.bad("deployStatusToken", "is used only with deployStatus=token; set that too, or remove this key", "(unset)")
    slack_url = r.string("slackWebhookUrl")
    if slack_url is not None and not (_https_url(slack_url) and not any(c.isspace() for c in slack_url)):
        r.bad("slackWebhookUrl", "must be an https:// incoming-webhook URL", "https://hooks.slack.com/services/T000/B000/XXXX")

    user = r.string("dockerhubUser")
    if user is None:
        r.bad("dockerhubUser", "is required: the pipeline pushes the image as this user")
    elif not _DOCKERHUB_USER.match(user):
        r.bad("dockerhubUser", "must be a Docker Hub user name: 4-30 lowercase letters and digits")
    organization = r.string("dockerhubOrganization")
    if organization is not None and not _DOCKERHUB_USER.match(organization):
        r.bad("dockerhubOrganization", "must be a Docker Hub organisation name: 4-30 lowercase letters and digits")
        organization = None
    token = r.string("dockerhubToken")
    if token is None:
        r.bad(
            "dockerhubToken",
            "is a required secret and is missing or empty; set it with `pulumi config set --secret dockerhubToken`",
        )
    elif any(c.isspace() for c in token) or ":" in token:
        r.bad("dockerhubToken", "must be one line without spaces or ':' (a Docker Hub access token)")
    elif user and not is_maskable(docker_auth(user, token)):
        r.bad("dockerhubToken", "gives a DOCKERHUB_TOKEN that GitLab cannot mask (at least 8 characters of a-zA-Z0-9_+=/@:.~-)")

    owner = _Owner(argocd_namespace=namespace, user=user, organization=organization)
    apps_text = r.raw.get("apps")
    listed = _parse_apps(r, owner, apps_text, "apps" in secret_keys) if apps_text is not None and apps_text.strip() else None
    if listed is None:
        apps = [_parse_app(r, owner, True, "")]
    else:
        apps = listed
        # The CLI merges Pulumi.yaml's defaults in, so only a value other than the default shows
        # that a single-app key was set beside `apps`, where it would be silently ignored.
        for key in SINGLE_APP_KEYS:
            set_value = raw.get(key)
            default = KEYS_BY_NAME[key].default
            if set_value is not None and set_value.strip() and set_value.strip() != _scalar(default):
                r.bad(
                    key,
                    f"is a single-app key and apps is set: move it into each app as apps[i].{APP_FIELDS_BY_KEY[key]}",
                    "(unset)",
                )
    r.problems.extend(_shared_project_problems(apps, group))

    kube_context = r.string("kubeContext")
    if kube_context is not None and kube_contexts is not None and kube_context not in kube_contexts.names:
        there = ", ".join(kube_contexts.names) or "none"
        r.bad(
            "kubeContext",
            f"is not a context in the kubeconfig ({kube_contexts.source}); contexts there: {there}",
            kube_contexts.names[0] if kube_contexts.names else "kind-gitops",
        )
    read_password = r.boolean("argocdReadAdminPassword")

    if r.problems:
        raise SettingsError(r.problems)

    return Settings(
        stack=stack,
        delivery=DeliverySettings(rollouts_manifest_source=rollouts_mirror or ROLLOUTS_URL),
        feedback=FeedbackSettings(
            deploy_status=deploy_status,
            deploy_status_token=SecretStr(status_token) if status_token else None,
            slack_webhook_url=SecretStr(slack_url) if slack_url else None,
        ),
        argocd=ArgoCdSettings(
            version=version,
            ha=ha,
            namespace=namespace,
            manifest_source=mirror or manifest_source.upstream_url(version, ha),
            manifest_sha256=sha or known or "",
            external_url=external_url,
            reconciliation_timeout=timeout,
            reconciliation_jitter=jitter,
            read_admin_password=read_password,
        ),
        apps=tuple(apps),
        gitlab=GitLabSettings(
            group=group,
            visibility=visibility,
            default_branch=default_branch,
            projects_on_destroy=on_destroy,
            ssh_known_hosts=known_hosts,
            hide_ci_variables=hide,
            token_expiry_days=expiry,
            token_rotate_before_days=rotate_before,
            manifest_merge_access=merge_access,
            deploy_key_owner_token=SecretStr(key_owner_token) if key_owner_token else None,
        ),
        registry=RegistrySettings(user=user or "", token=SecretStr(token or "")),
        credentials_epoch=epoch,
        kube_context=kube_context,
    )
