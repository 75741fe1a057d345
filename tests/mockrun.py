"""Run the real ``__main__.py`` under Pulumi's mock monitor and record what it registers.

Invoked as ``python -m tests.mockrun`` with a JSON job on stdin (config, stack, preview);
writes a JSON report to the path given as the only argument. Each run is its own process,
so no runtime state leaks between scenarios.

The mocks compute answers from their inputs, as a provider would: ED25519 keys are real
key pairs (derived from the URN and replacement trigger, so the same inputs give the same
key, as an unchanged resource keeps its state), Secret reads return a generated password,
and GitLab look-ups derive ids and URLs from the paths asked for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import runpy
import string
import struct
import sys
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pulumi
import pulumi.config
import pulumi.runtime.config as runtime_config
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
# The key under which a serialized property value carries SECRET_SIG when it is a secret.
SIG_KEY = "4dabf18193072939515e22adb298388d"
GITLAB_HOST = "gitlab.example.test"


def _seed(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest())


def _ed25519(seed: random.Random) -> tuple[str, str]:
    """An ED25519 key pair in OpenSSH format, the same bytes for the same seed.

    OpenSSH's private key format carries a random check integer, so a serializer would give
    different text for the same key on each run, and two runs would differ where the real
    provider, which keeps the key in state, does not. The format is written out here instead
    (PROTOCOL.key in OpenSSH), with the check integer taken from the seed.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    secret = bytes(seed.getrandbits(8) for _ in range(32))
    key = Ed25519PrivateKey.from_private_bytes(secret)
    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def field(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    key_type = b"ssh-ed25519"
    check = struct.pack(">I", seed.getrandbits(32)) * 2
    private_section = check + field(key_type) + field(raw_public) + field(secret + raw_public) + field(b"")
    private_section += bytes(range(1, 1 + (-len(private_section) % 8)))
    body = (
        b"openssh-key-v1\0"
        + field(b"none")
        + field(b"none")
        + field(b"")
        + struct.pack(">I", 1)
        + field(field(key_type) + field(raw_public))
        + field(private_section)
    )
    encoded = base64.b64encode(body).decode()
    lines = [encoded[i : i + 70] for i in range(0, len(encoded), 70)]
    private = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END OPENSSH PRIVATE KEY-----\n"
    # The same key as cryptography reads it back: the encoding above is a faithful one.
    loaded = serialization.load_ssh_private_key(private.encode(), password=None)
    assert loaded.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw_public
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, public + "\n"


def _project_urls(path_with_namespace: str, ident: int) -> dict[str, Any]:
    return {
        "id": str(ident),
        "path_with_namespace": path_with_namespace,
        "ssh_url_to_repo": f"git@{GITLAB_HOST}:{path_with_namespace}.git",
        "http_url_to_repo": f"https://{GITLAB_HOST}/{path_with_namespace}.git",
        "web_url": f"https://{GITLAB_HOST}/{path_with_namespace}",
    }


def _stable_id(*parts: Any) -> int:
    return _seed(*parts).randint(1000, 99_999_999)


class GitLabWorld:
    """The GitLab instance the invokes ask: its edition, its user and the projects that exist.

    The edition follows the configured API URL as a real instance would answer it (gitlab.com
    runs Enterprise Edition) unless the job names one; ``projects`` lists projects that exist
    before the run, each with ``path_with_namespace`` and optionally ``archived``, ``topics`` and
    ``files`` (paths on its default branch).
    """

    USER = "acme-user"

    def __init__(self, job: dict[str, Any], base_url: str | None) -> None:
        world = job.get("gitlab") or {}
        host = urlparse(base_url or "https://gitlab.com/api/v4/").hostname or ""
        self.enterprise = bool(world.get("enterprise", host == "gitlab.com"))
        self.version = str(world.get("version", "18.6.0-ee" if self.enterprise else "18.6.0"))
        self.projects: list[dict[str, Any]] = [dict(p) for p in world.get("projects", [])]
        # Runners the token may see (id, description, tags, access_level, untagged), and the error
        # GET /runners answers instead where it may see none (a non-administrator on /runners/all).
        self.runners: list[dict[str, Any]] = [dict(r) for r in world.get("runners", [])]
        self.runners_error = str(world.get("runners_error", ""))
        # The provider lists runners with GET /runners/all, which answers administrators only.
        self.admin = bool(world.get("admin", False))

    def list_runners(self, tags: list[str]) -> list[dict[str, Any]]:
        """GET /runners/all?tag_list=…: the runners carrying every tag asked for, without their access level."""
        return [
            {
                "id": int(r["id"]),
                "description": r.get("description", ""),
                "isShared": r.get("type", "project_type") == "instance_type",
                "online": True,
                "paused": False,
                "runnerType": r.get("type", "project_type"),
                "status": "online",
            }
            for r in self.runners
            if set(tags) <= set(r.get("tags", []))
        ]

    def runner(self, ident: str) -> dict[str, Any]:
        """GET /runners/:id, as the provider's UserRunner reads it."""
        found = next(r for r in self.runners if str(r["id"]) == ident)
        return {
            "runnerType": found.get("type", "project_type"),
            "description": found.get("description", ""),
            "accessLevel": found.get("access_level", "not_protected"),
            "untagged": bool(found.get("untagged", False)),
            "tagLists": list(found.get("tags", [])),
            "paused": False,
            "locked": False,
        }

    def project(self, path: str) -> dict[str, Any]:
        """An existing project by full path: listed ones keep their flags, others exist as plain projects."""
        listed = next((p for p in self.projects if p["path_with_namespace"].lower() == path.lower()), {})
        urls = _project_urls(path, _stable_id("project", path))
        return {
            "id": urls["id"],
            "pathWithNamespace": path,
            "path": path.rsplit("/", 1)[-1],
            "name": path.rsplit("/", 1)[-1],
            "sshUrlToRepo": urls["ssh_url_to_repo"],
            "httpUrlToRepo": urls["http_url_to_repo"],
            "webUrl": urls["web_url"],
            "defaultBranch": listed.get("default_branch", "main"),
            "archived": bool(listed.get("archived", False)),
            "topics": list(listed.get("topics", [])),
            "ciConfigPath": listed.get("ci_config_path", ""),
            "ciPipelineVariablesMinimumOverrideRole": listed.get("ci_pipeline_variables_minimum_override_role", "developer"),
        }

    def file(self, project_id: str, path: str, ref: str) -> dict[str, Any] | None:
        """GET /projects/:id/repository/files/:path?ref=: a listed project's ``files`` (on its default branch)."""
        listed = next((p for p in self.projects if self.project(p["path_with_namespace"])["id"] == project_id), None)
        if listed is None or ref != listed.get("default_branch", "main") or path not in listed.get("files", []):
            return None
        return {"id": f"{project_id}:{ref}:{path}", "project": project_id, "filePath": path, "ref": ref, "content": ""}

    def branch(self, project_id: str, name: str) -> dict[str, Any] | None:
        """GET /projects/:id/repository/branches/:branch: a listed project's ``branches``, besides its default branch."""
        listed = next((p for p in self.projects if self.project(p["path_with_namespace"])["id"] == project_id), None)
        if listed is None or name not in [listed.get("default_branch", "main"), *listed.get("branches", [])]:
            return None
        return {"id": f"{project_id}:{name}", "name": name, "project": project_id, "protected": False, "merged": False}

    def failing_files(self, project_id: str) -> str:
        """The error a listed project's ``files_error`` makes every file look-up answer, or ""."""
        listed = next((p for p in self.projects if self.project(p["path_with_namespace"])["id"] == project_id), {})
        return str(listed.get("files_error", ""))

    def protected_branches(self, project_id: str) -> list[dict[str, Any]]:
        """GET /projects/:id/protected_branches: listed rules, or GitLab's default for a new project
        (the default branch fully protected: maintainers push and merge)."""
        listed = next(
            (p for p in self.projects if self.project(p["path_with_namespace"])["id"] == project_id),
            {"default_branch": "main"},
        )
        default = [{"name": listed.get("default_branch", "main"), "push": ["maintainer"], "merge": ["maintainer"]}]
        return [
            {
                "id": i + 1,
                "name": rule["name"],
                "allowForcePush": False,
                "codeOwnerApprovalRequired": False,
                "pushAccessLevels": [{"accessLevel": level, "accessLevelDescription": level} for level in rule["push"]],
                "mergeAccessLevels": [{"accessLevel": level, "accessLevelDescription": level} for level in rule["merge"]],
                "unprotectAccessLevels": [],
            }
            for i, rule in enumerate(listed.get("protected_branches", default))
        ]

    def list_projects(self, args: dict[str, Any], groups: dict[Any, str]) -> list[dict[str, Any]]:
        """GET /projects (or /groups/:id/projects) with the filters the data source passes."""
        namespace = groups.get(args["groupId"]) if "groupId" in args else None
        found = []
        for listed in self.projects:
            project = self.project(listed["path_with_namespace"])
            owner = project["pathWithNamespace"].rsplit("/", 1)[0]
            if namespace is not None and owner != namespace:
                continue
            if args.get("owned") and owner != self.USER:
                continue
            if "archived" in args and project["archived"] != bool(args["archived"]):
                continue
            search = str(args.get("search", "")).lower()
            if search and search not in project["path"].lower() and search not in project["name"].lower():
                continue
            found.append(project)
        return found


class Mocks(pulumi_mocks.Mocks):
    """Provider behaviour computed from inputs."""

    def __init__(self, report: dict[str, Any], world: GitLabWorld) -> None:
        self.report = report
        self.world = world
        self.triggers: dict[str, Any] = {}
        # The logical name a resource had before an alias moved it: the engine keeps an aliased
        # resource's state, so its generated key or token stays the same.
        self.identities: dict[str, str] = {}
        self.groups: dict[Any, str] = {}

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        state = dict(args.inputs)
        typ = args.typ
        trigger = self.triggers.get(f"{typ}::{args.name}")
        name = self.identities.get(f"{typ}::{args.name}", args.name)
        if args.resource_id and typ == "kubernetes:core/v1:Secret":
            password = "".join(_seed(args.resource_id).choices(string.ascii_letters + string.digits, k=16))
            return args.resource_id, {
                "metadata": {"name": args.resource_id.split("/")[-1], "namespace": args.resource_id.split("/")[0]},
                "data": {"password": base64.b64encode(password.encode()).decode()},
            }
        if args.resource_id and typ == "gitlab:index/userRunner:UserRunner":
            return args.resource_id, self.world.runner(args.resource_id)
        if typ == "tls:index/privateKey:PrivateKey":
            private, public = _ed25519(_seed(name, trigger))
            state.update(private_key_openssh=private, public_key_openssh=public, private_key_pem=private)
        elif typ == "random:index/randomPassword:RandomPassword":
            alphabet = string.ascii_letters + string.digits
            state["result"] = "".join(_seed(name, state.get("keepers")).choices(alphabet, k=int(state["length"])))
        elif typ == "gitlab:index/projectAccessToken:ProjectAccessToken":
            alphabet = string.ascii_letters + string.digits + "_-"
            state["token"] = "glpat-" + "".join(_seed(name, trigger).choices(alphabet, k=20))
            state["expires_at"] = "2026-12-26"
        elif typ == "gitlab:index/project:Project":
            # A project lands in the looked-up group, or in the token owner's namespace.
            namespace = self.groups.get(state.get("namespaceId"), GitLabWorld.USER)
            full_path = f"{namespace}/{state['path']}"
            state.update(_project_urls(full_path, _stable_id("project", full_path)))
        elif typ.startswith("kubernetes:") and "metadata" in state:
            state["metadata"] = {**state["metadata"], "uid": str(_stable_id(name))}
        ident = state.get("id") or f"{name}-id"
        return str(ident), state

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.report["invokes"].append({"token": args.token, "args": _plain(args.args)})
        if args.token == "gitlab:index/getGroup:getGroup":
            full_path = args.args["fullPath"]
            ident = _stable_id("group", full_path)
            self.groups[ident] = full_path
            return {"id": str(ident), "groupId": ident, "fullPath": full_path, "webUrl": f"https://{GITLAB_HOST}/{full_path}"}, []
        if args.token == "gitlab:index/getProject:getProject":
            return self.world.project(args.args["pathWithNamespace"]), []
        if args.token == "gitlab:index/getProjects:getProjects":
            return {"id": "projects", "projects": self.world.list_projects(args.args, self.groups)}, []
        if args.token == "gitlab:index/getProjectProtectedBranches:getProjectProtectedBranches":
            project_id = args.args["projectId"]
            return {
                "id": int(project_id),
                "projectId": project_id,
                "protectedBranches": self.world.protected_branches(project_id),
            }, []
        if args.token == "gitlab:index/getRepositoryFile:getRepositoryFile":
            project_id, path = str(args.args["project"]), args.args["filePath"]
            url = f"https://{GITLAB_HOST}/api/v4/projects/{project_id}/repository/files/{path.replace('/', '%2F')}"
            failing = self.world.failing_files(project_id)
            if failing:
                # A GitLab that answers something else (a 500 whose URL holds "404" too).
                return {}, [("filePath", f"GET {url}: {failing}")]
            found = self.world.file(project_id, path, args.args["ref"])
            if found is None:
                # What the provider reports for a missing file: go-gitlab's error for GitLab's 404.
                return {}, [("filePath", f"GET {url}: 404 {{message: 404 File Not Found}}")]
            return found, []
        if args.token == "gitlab:index/getRunners:getRunners":
            if not self.world.admin:
                return {}, [("tagLists", f"GET https://{GITLAB_HOST}/api/v4/runners/all: 403 {{message: 403 Forbidden}}")]
            if self.world.runners_error:
                return {}, [("tagLists", self.world.runners_error)]
            tags = list(args.args.get("tagLists") or [])
            return {"id": "runners", "runners": self.world.list_runners(tags), "tagLists": tags}, []
        if args.token == "gitlab:index/getBranch:getBranch":
            project_id, name = str(args.args["project"]), args.args["name"]
            found_branch = self.world.branch(project_id, name)
            if found_branch is None:
                url = f"https://{GITLAB_HOST}/api/v4/projects/{project_id}/repository/branches/{name}"
                return {}, [("name", f"GET {url}: 404 {{message: 404 Branch Not Found}}")]
            return found_branch, []
        if args.token == "gitlab:index/getMetadata:getMetadata":
            return {"id": "gitlab", "enterprise": self.world.enterprise, "version": self.world.version, "revision": "abc"}, []
        if args.token == "gitlab:index/getCurrentUser:getCurrentUser":
            user = GitLabWorld.USER
            return {"id": "1", "username": user, "name": user, "namespaceId": "1", "globalNamespaceId": "1"}, []
        raise NotImplementedError(f"no mock for invoke {args.token}")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _secret_paths(value: Any, path: str = "") -> list[str]:
    """Paths inside a serialized property value that carry the secret signature."""
    found: list[str] = []
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return [path or "."]
        for k, v in value.items():
            found += _secret_paths(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _secret_paths(v, f"{path}[{i}]")
    return found


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, also keeping each request's options for the tests."""

    def __init__(self, mocks: Mocks, report: dict[str, Any], record: bool = True, previous: frozenset[str] = frozenset()) -> None:
        super().__init__(mocks)
        # Engine URNs of the state a run follows (tests.engine_rules.engine_urns of an earlier run).
        self.previous = previous
        self.report = report
        # Without recording, only the SDK's own mock monitor work remains (for benchmarks).
        self.record = record
        self.mocks_ref = mocks

    def RegisterResource(self, request: Any) -> Any:
        trigger = None
        if request.HasField("replacement_trigger"):
            trigger = json_format.MessageToDict(request.replacement_trigger)
        self.mocks_ref.triggers[f"{request.type}::{request.name}"] = trigger
        for alias in request.aliases:
            # Only an alias that finds a resource of the previous run's state takes over its identity.
            if alias.urn and alias.urn in self.previous:
                self.mocks_ref.identities[f"{request.type}::{request.name}"] = alias.urn.rsplit("::", 1)[-1]
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack" or not self.record:
            return response
        raw = json_format.MessageToDict(request.object)
        self.report["resources"].append(
            {
                "urn": response.urn,
                "type": request.type,
                "name": request.name,
                "custom": request.custom,
                "parent": request.parent,
                "provider": request.provider,
                "providers": dict(request.providers),
                "dependencies": list(request.dependencies),
                "property_dependencies": {k: list(v.urns) for k, v in request.propertyDependencies.items()},
                "protect": request.protect,
                "retain_on_delete": request.retainOnDelete,
                "delete_before_replace": request.deleteBeforeReplace,
                "ignore_changes": list(request.ignoreChanges),
                "replace_on_changes": list(request.replaceOnChanges),
                "additional_secret_outputs": list(request.additionalSecretOutputs),
                "replacement_trigger": trigger,
                # Alias specs (or URNs) as the SDK sends them; tests.engine_rules resolves them as the engine does.
                "aliases": [json_format.MessageToDict(alias) for alias in request.aliases],
                "alias_urns": list(request.aliasURNs),
                "custom_timeouts": {
                    "create": request.customTimeouts.create,
                    "update": request.customTimeouts.update,
                    "delete": request.customTimeouts.delete,
                },
                "inputs": _plain(_unwrap(raw)),
                "secret_paths": _secret_paths(raw),
                "outputs": _plain(self.resources[response.urn].state),
                "id": self.resources[response.urn].id,
            }
        )
        return response

    def ReadResource(self, request: Any) -> Any:
        response = super().ReadResource(request)
        self.report["reads"].append(
            {
                "urn": response.urn,
                "type": request.type,
                "name": request.name,
                "id": request.id,
                "parent": request.parent,
                "dependencies": list(request.dependencies),
            }
        )
        return response


def _unwrap(value: Any) -> Any:
    """A serialized property value with secret envelopes replaced by their plaintext."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return _unwrap(value.get("value"))
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Run the program once with ``job``'s config; return what it registered."""
    report: dict[str, Any] = {
        "resources": [],
        "reads": [],
        "invokes": [],
        "outputs": {},
        "config_reads": [],
        "required_pulumi_version": [],
        "error": None,
    }
    project = "gitops-bootstrap"
    config = {(k if ":" in k else f"{project}:{k}"): v for k, v in job["config"].items()}
    secret_keys = [k if ":" in k else f"{project}:{k}" for k in job.get("secret_keys", [])]
    runtime_config.set_all_config(config, secret_keys)

    real_get_config = pulumi.config.get_config

    def spy(full_key: str) -> Any:
        report["config_reads"].append(full_key)
        return real_get_config(full_key)

    pulumi.config.get_config = spy  # type: ignore[assignment]

    # The mock engine has no RequirePulumiVersion RPC; record what the program asks for instead.
    def require_pulumi_version(rg: str) -> None:
        report["required_pulumi_version"].append(
            {"range": rg, "config_reads_before": len(report["config_reads"]), "resources_before": len(report["resources"])}
        )

    pulumi.require_pulumi_version = require_pulumi_version
    mocks = Mocks(report, GitLabWorld(job, config.get("gitlab:baseUrl")))
    monitor = RecordingMonitor(mocks, report, record=job.get("record", True), previous=frozenset(job.get("previous") or ()))
    pulumi.runtime.set_mocks(
        mocks, project=project, stack=job.get("stack", "dev"), preview=job.get("preview", False), monitor=monitor
    )

    from pulumi.runtime.settings import get_root_resource
    from pulumi.runtime.sync_await import _sync_await

    stack = get_root_resource()

    async def program() -> None:
        sys.path.insert(0, str(REPO_ROOT))
        runpy.run_path(str(REPO_ROOT / "__main__.py"), run_name="__gitops_main__")

    try:
        _sync_await(pulumi.runtime.stack.run_pulumi_func(lambda: _sync_await(program())))
        outputs = {}
        for key, value in (stack.outputs if stack is not None else {}).items():  # type: ignore[attr-defined]
            output = pulumi.Output.from_input(value)
            resolved = _sync_await(output.future())
            secret = _sync_await(output.is_secret())
            outputs[key] = {"value": _plain(resolved), "secret": secret}
        report["outputs"] = outputs
        report["registered"] = len(monitor.resources)
    except Exception as exc:
        report["error"] = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
    return report


def main() -> None:
    """Entry point: job JSON on stdin, report JSON to argv[1]."""
    job = json.load(sys.stdin)
    report = run(job)
    Path(sys.argv[1]).write_text(json.dumps(report))


if __name__ == "__main__":
    main()
