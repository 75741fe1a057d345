"""What the real Pulumi CLI, engine and providers enforce, applied to what the program registers.

Pulumi's mock monitor accepts any program; these rules are the ones it does not apply. Each
rule names the upstream source it was read from (see also ../shared/notes/facts.md). The
tests feed them the records of ``tests.mockrun``: one run, or two runs diffed as the engine
diffs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# --- The CLI's config check --------------------------------------------------------------
# pulumi/pulumi sdk/go/common/workspace (mergeConfig, validateStackConfigValue) and issue 21797:
# a key declared in Pulumi.yaml `config:` without a `default` must be set in the stack, or
# the CLI refuses to start the program ("Stack 'dev' is missing configuration values"). A
# `secret: true` key cannot have a default: the CLI merges it in as plain text and then
# refuses it as an unencrypted secret. `""` is a default for string keys only.


def config_violations(project: Mapping[str, Any], stack: Mapping[str, Any], set_by_commands: Iterable[str] = ()) -> list[str]:
    """Why the CLI would refuse to run ``stack`` (a parsed Pulumi.<stack>.yaml) of ``project``.

    ``set_by_commands`` names keys the stack's documented set-up commands add
    (`pulumi config set KEY …`), which the file itself does not hold yet.
    """
    name = project["name"]
    declared: Mapping[str, Any] = project.get("config") or {}
    present = {key.split(":", 1)[1] if key.startswith(f"{name}:") else key for key in (stack.get("config") or {})}
    present |= set(set_by_commands)
    problems: list[str] = []
    for key, spec in declared.items():
        spec = spec if isinstance(spec, dict) else {"default": spec}
        if spec.get("secret") and "default" in spec:
            problems.append(f"{key}: a secret key cannot have a default")
        if spec.get("default") == "" and spec.get("type", "string") != "string":
            problems.append(f"{key}: an empty default is valid only for string keys")
        if "default" not in spec and "value" not in spec and key not in present:
            problems.append(f"{key}: declared without a default and not set in the stack")
    return problems


def readme_config_sets(commands: str) -> set[str]:
    """Project keys that `pulumi config set` commands in ``commands`` set."""
    found = re.findall(r"pulumi config set(?: --secret)?(?: --path)? '?([A-Za-z0-9_:.\[\]]+)", commands)
    return {key for key in found if ":" not in key}


# --- GitLab edition and BranchProtection -------------------------------------------------
# terraform-provider-gitlab 19.x resource_gitlab_branch_protection.go, ModifyPlan: on
# Enterprise Edition (gitlab.com; any EE install, licensed or not) push_access_level and
# merge_access_level fail the plan ("feature unavailable ... Use `allowed_to_push` instead");
# on Community Edition any allowed_to_* block fails it ("Enterprise license required").
EE_ONLY_PROTECTION = ("allowedToPushes", "allowedToMerges", "allowedToUnprotects")
CE_ONLY_PROTECTION = ("pushAccessLevel", "mergeAccessLevel", "unprotectAccessLevel")


def protection_violations(inputs: Mapping[str, Any], enterprise: bool) -> list[str]:
    """Arguments of one BranchProtection that the provider refuses on this edition."""
    refused = CE_ONLY_PROTECTION if enterprise else EE_ONLY_PROTECTION
    return [arg for arg in refused if inputs.get(arg) not in (None, [])]


# --- Replace-only properties --------------------------------------------------------------
# Input paths (camelCase, as registered) whose change makes the provider plan a replacement.
# "*" matches any list index or map key.
REPLACE_ONLY: dict[str, tuple[str, ...]] = {
    # terraform-provider-gitlab resource_gitlab_project_variable.go: project, key and
    # environment_scope RequiresReplace; hidden RequiresReplace (see HIDDEN_UNSET below).
    "gitlab:index/projectVariable:ProjectVariable": ("project", "key", "environmentScope", "hidden"),
    # resource_gitlab_deploy_key.go (SDKv2): every argument is ForceNew; there is no Update.
    "gitlab:index/deployKey:DeployKey": ("project", "title", "key", "canPush", "expiresAt"),
    # resource_gitlab_project_access_token.go: rotation (expires_at) is an in-place update.
    "gitlab:index/projectAccessToken:ProjectAccessToken": ("project", "name", "scopes", "accessLevel"),
    # resource_gitlab_repository_file.go: project, file_path and branch are ForceNew.
    "gitlab:index/repositoryFile:RepositoryFile": ("project", "filePath", "branch"),
    # resource_gitlab_project_hook.go: url RequiresReplace, and the computed project_id
    # RequiresReplace without UseStateForUnknown, so any change (a new token too) plans it
    # unknown and replaces the hook, create-before-delete (facts.md: "ProjectHook: any change").
    "gitlab:index/projectHook:ProjectHook": ("*",),
    # resource_gitlab_branch_protection.go: project, branch RequiresReplace; the CE access
    # levels RequiresReplaceIfConfigured; allowed_to_* update in place.
    "gitlab:index/branchProtection:BranchProtection": ("project", "branch", "pushAccessLevel", "mergeAccessLevel"),
    # terraform-provider-tls / -random: every argument forces a new key or password.
    "tls:index/privateKey:PrivateKey": ("algorithm", "ecdsaCurve", "rsaBits"),
    "random:index/randomPassword:RandomPassword": ("*",),
}

# pulumi-kubernetes provider/pkg/provider/diff.go, forceNewProperties: every object is
# replaced when metadata.name or metadata.namespace changes, plus per kind:
KUBE_REPLACE_ONLY: dict[str, tuple[str, ...]] = {
    "apps/v1:Deployment": ("spec.selector",),
    "apps/v1:DaemonSet": ("spec.selector",),
    "apps/v1:StatefulSet": (
        "spec.podManagementPolicy",
        "spec.revisionHistoryLimit",
        "spec.selector",
        "spec.serviceName",
        "spec.volumeClaimTemplates",
    ),
    "core/v1:Secret": ("type",),
    "core/v1:Service": ("spec.clusterIP",),
    "core/v1:PersistentVolumeClaim": ("spec.accessModes", "spec.selector", "spec.storageClassName", "spec.volumeName"),
    "core/v1:ResourceQuota": ("spec.scopes",),
    "rbac.authorization.k8s.io/v1:RoleBinding": ("roleRef",),
    "rbac.authorization.k8s.io/v1:ClusterRoleBinding": ("roleRef",),
    "storage.k8s.io/v1:StorageClass": ("parameters", "provisioner"),
    "batch/v1:Job": ("spec.completions", "spec.parallelism", "spec.selector", "spec.template"),
}
KUBE_ALWAYS = ("metadata.name", "metadata.namespace")
# Same file: Secret data is replace-only unless the provider sets enableSecretMutable, and
# ConfigMap data unless it sets enableConfigMapMutable; `immutable: true` objects always.
SECRET_DATA = ("type", "stringData", "data")
CONFIG_MAP_DATA = ("binaryData", "data")

# pulumi-kubernetes provider.go DiffConfig: the provider is replaced (and with it every object
# it manages) when kubeconfig, context or cluster point at another cluster, or when
# clusterIdentifier changes; every other setting (enableSecretMutable, …) is an update. A
# changed value is taken to mean another cluster.
PROVIDER_REPLACE_ONLY: dict[str, tuple[str, ...]] = {
    "pulumi:providers:kubernetes": ("kubeconfig", "context", "cluster", "clusterIdentifier"),
}

# resource_gitlab_project_variable.go: `hidden` is Optional+Computed with RequiresReplace and
# no UseStateForUnknown, so when the program passes no value and anything else changes, the
# plan marks it unknown, and unknown != state means replace.
HIDDEN_UNSET_TYPE = "gitlab:index/projectVariable:ProjectVariable"

# A property path: map keys and list indexes.
Path = tuple[str, ...]
UNCHANGED, UPDATED, REPLACED, CREATED, DELETED = "unchanged", "updated", "replaced", "created", "deleted"
# A resource the program no longer registers whose *stored* state says retainOnDelete: the engine
# drops it from state and calls no provider Delete (pulumi/pulumi pkg/resource/deploy/step.go,
# DeleteStep.Apply: `else if s.old.RetainOnDelete { // ... a no-op }`). The flag in state decides,
# so it must be stored by one `up` before the resource is dropped in a later one; an `up` whose
# only change is the flag stores it (step_generator.go builds the new state's RetainOnDelete from
# the program's goal, and backend/snapshot.go sameSnapshotMutation.mustWrite writes on that change).
RETAINED = "retained"


@dataclass(frozen=True)
class Change:
    """How the engine would treat one resource between two runs."""

    urn: str
    name: str
    type: str
    action: str
    paths: tuple[Path, ...] = ()
    # A replacement that deletes the old object before creating the new one.
    delete_first: bool = False


def changed_paths(old: Any, new: Any, prefix: Path = ()) -> list[Path]:
    """Paths (map keys and list indexes) whose values differ between ``old`` and ``new``.

    Paths are tuples because Kubernetes data keys hold dots (``timeout.reconciliation``).
    """
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[Path] = []
        for key in sorted(set(old) | set(new)):
            found += changed_paths(old.get(key), new.get(key), (*prefix, str(key)))
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        found = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found += changed_paths(a, b, (*prefix, str(i)))
        return found
    return [] if old == new else [prefix]


def _matches(path: Path, rule: str) -> bool:
    """Whether a change at ``path`` touches ``rule`` (dotted): the value itself, inside it, or a parent replaced whole."""
    wanted = rule.split(".")
    if wanted == ["*"]:
        return True
    common = min(len(path), len(wanted))
    return all(w in ("*", p) for p, w in zip(path[:common], wanted[:common], strict=True))


def _kube_key(record: Mapping[str, Any]) -> str:
    # "kubernetes:apps/v1:Deployment" -> "apps/v1:Deployment"
    return record["type"].split(":", 1)[1]


def _kube_rules(record: Mapping[str, Any], provider: Mapping[str, Any]) -> tuple[str, ...]:
    key = _kube_key(record)
    rules = KUBE_ALWAYS + KUBE_REPLACE_ONLY.get(key, ())
    immutable = bool(record["inputs"].get("immutable"))
    if key == "core/v1:Secret" and (not _flag(provider, "enableSecretMutable") or immutable):
        rules += SECRET_DATA
    if key == "core/v1:ConfigMap" and (not _flag(provider, "enableConfigMapMutable") or immutable):
        rules += CONFIG_MAP_DATA
    return rules


def _flag(provider: Mapping[str, Any], name: str) -> bool:
    # Provider inputs reach the engine as strings ("true").
    return str(provider.get(name, "false")).lower() == "true"


def _fixed_name(record: Mapping[str, Any]) -> bool:
    # provider.go Diff: a replaced object whose name the program set (not autonamed) and kept
    # is deleted before its successor is created (DeleteBeforeReplace=true).
    return bool((record["inputs"].get("metadata") or {}).get("name"))


def _ignored(path: Path, ignore_changes: Iterable[str]) -> bool:
    # ignore_changes covers the named property and everything inside it.
    return any(_matches(path, _camel(rule)) and len(path) >= len(rule.split(".")) for rule in ignore_changes)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def classify(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, providers: Mapping[str, Mapping[str, Any]]) -> Change:
    """The engine's decision for one resource, from its records in two runs.

    ``providers`` maps a provider reference (``urn::id``) to the new run's provider inputs,
    which is the configuration the provider diffs with.
    """
    if old is None or new is None:
        record = new or old
        assert record is not None
        dropped = RETAINED if old is not None and old.get("retain_on_delete") else DELETED
        return Change(record["urn"], record["name"], record["type"], CREATED if old is None else dropped)
    base = dict(urn=new["urn"], name=new["name"], type=new["type"])
    paths = [p for p in changed_paths(old["inputs"], new["inputs"]) if not _ignored(p, new["ignore_changes"])]
    trigger_changed = old.get("replacement_trigger") != new.get("replacement_trigger")
    if not paths and not trigger_changed:
        return Change(**base, action=UNCHANGED)
    typ = new["type"]
    if typ.startswith("kubernetes:"):
        rules: tuple[str, ...] = _kube_rules(new, providers.get(new.get("provider") or "", {}))
    elif typ.startswith("pulumi:providers:"):
        rules = PROVIDER_REPLACE_ONLY.get(typ, ())
    else:
        rules = REPLACE_ONLY.get(typ, ())
    rules += tuple(_camel(r) for r in new.get("replace_on_changes") or ())
    replace = trigger_changed or any(_matches(p, r) for p in paths for r in rules)
    if typ == HIDDEN_UNSET_TYPE and "hidden" not in new["inputs"] and paths:
        replace = True
    if not replace:
        return Change(**base, action=UPDATED, paths=tuple(paths))
    delete_first = bool(new["delete_before_replace"]) or (typ.startswith("kubernetes:") and _fixed_name(new))
    return Change(**base, action=REPLACED, paths=tuple(paths), delete_first=delete_first)


# --- Aliases --------------------------------------------------------------------------------
# pulumi/pulumi pkg/resource/deploy/step_generator.go: `collapseAliasToUrn` turns an alias spec
# into a URN, filling name, type and parent from the resource itself (a parent that was found
# through its own alias stands for its old URN; the root stack means no parent);
# `generateAliases` adds the aliases a child inherits when its parent matched an old resource
# through an alias (`inheritedChildAlias`: the parent's old type chain, and the child's name
# with the parent's name prefix swapped for the old parent's name); `getOldResource` tries the
# resource's own URN first, then each alias in order, and refuses an old resource claimed twice.
ROOT_STACK_TYPE = "pulumi:pulumi:Stack"


class AliasError(ValueError):
    """Two resources claim the same old resource, as the engine refuses (GetDuplicateResourceAliasError)."""


def _urn_parts(urn: str) -> tuple[str, str, str, str]:
    # urn:pulumi:<stack>::<project>::<qualified type>::<name>; a name may hold "::".
    head, project, qualified, name = urn.split("::", 3)
    return head.removeprefix("urn:pulumi:"), project, qualified, name


def _new_urn(stack: str, project: str, parent_type: str, typ: str, name: str) -> str:
    chain = f"{parent_type}${typ}" if parent_type and parent_type != ROOT_STACK_TYPE else typ
    return f"urn:pulumi:{stack}::{project}::{chain}::{name}"


def _inherited(stack: str, project: str, typ: str, name: str, parent_name: str, parent_alias: str) -> str:
    _, _, alias_type, alias_name = _urn_parts(parent_alias)
    child = alias_name + name[len(parent_name) :] if name.startswith(parent_name) else name
    return _new_urn(stack, project, alias_type, typ, child)


def engine_urns(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Each record's URN as the engine forms it, by the URN the mock monitor gave it.

    The engine qualifies a child's type with its parent's whole type chain
    (`resource.CreateURN`: the parent URN's `QualifiedType()`), and a child of the root stack
    with none; the SDK's mock monitor (pulumi/runtime/mocks.py `make_urn`) keeps only the
    parent's own type, so under mocks a resource keeps its URN when its grandparent changes.
    """
    found: dict[str, str] = {}
    for record in records:
        stack, project, _, _ = _urn_parts(record["urn"])
        parent = found.get(record.get("parent") or "", "")
        parent_type = _urn_parts(parent)[2] if parent else ""
        found[record["urn"]] = _new_urn(stack, project, parent_type, record["type"], record["name"])
    return found


def _as_engine(records: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    urns = engine_urns(records)
    return [{**r, "urn": urns[r["urn"]], "parent": urns.get(r.get("parent") or "", "")} for r in records]


def resolve_aliases(old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """New URN → the old URN it takes over through an alias, for each resource found that way (engine URNs)."""
    new = list(new)
    mock_to_engine = engine_urns(new)
    olds = {r["urn"] for r in _as_engine(list(old))}
    records = _as_engine(new)
    registered = {r["urn"] for r in records}
    found: dict[str, str] = {}
    claimed: dict[str, str] = {}
    for record in records:
        urn, parent = record["urn"], record.get("parent") or ""
        if urn in olds:
            continue
        stack, project, _, _ = _urn_parts(urn)
        own: list[str] = [*record.get("alias_urns", [])]
        for alias in record.get("aliases", []):
            if "urn" in alias:
                own.append(alias["urn"])
                continue
            spec = alias.get("spec", {})
            if spec.get("noParent"):
                alias_parent = ""
            elif spec.get("parentUrn"):
                given = mock_to_engine.get(spec["parentUrn"], spec["parentUrn"])
                alias_parent = found.get(given, given)
            else:
                alias_parent = parent
            parent_type = _urn_parts(alias_parent)[2] if alias_parent else ""
            own.append(
                _new_urn(
                    spec.get("stack") or stack,
                    spec.get("project") or project,
                    parent_type,
                    spec.get("type") or record["type"],
                    spec.get("name") or record["name"],
                )
            )
        candidates = list(own)
        if parent in found:
            parent_name = _urn_parts(parent)[3]
            candidates.append(_inherited(stack, project, record["type"], record["name"], parent_name, found[parent]))
            for alias in own:
                _, _, qualified, name = _urn_parts(alias)
                candidates.append(_inherited(stack, project, qualified.split("$")[-1], name, parent_name, found[parent]))
        for candidate in candidates:
            if candidate not in olds:
                continue
            if candidate in registered or candidate in claimed:
                raise AliasError(f"{urn} and {claimed.get(candidate, candidate)} both claim {candidate}")
            claimed[candidate] = urn
            found[urn] = candidate
            break
    return found


def diff_runs(old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> dict[str, Change]:
    """Every custom resource's change between two runs' records, by URN, with aliases resolved as the engine does.

    A resource found through an alias is diffed against the old resource it takes over, and
    that old resource is not deleted.
    """
    old, new = list(old), list(new)
    moved = resolve_aliases(old, new)
    old_urns, new_urns = engine_urns(old), engine_urns(new)
    # Matched by engine URN; reported by the records' own URNs.
    before = {old_urns[r["urn"]]: r for r in old if r["custom"]}
    after = {new_urns[r["urn"]]: r for r in new if r["custom"]}
    providers = {f"{r['urn']}::{r['id']}": r["inputs"] for r in after.values() if r["type"].startswith("pulumi:providers:")}
    changes = {r["urn"]: classify(before.get(moved.get(urn, urn)), r, providers) for urn, r in after.items()}
    taken = {moved.get(urn, urn) for urn in after}
    for urn in sorted(set(before) - taken):
        record = before[urn]
        key = record["urn"] if record["urn"] not in changes else f"{record['urn']} (old)"
        changes[key] = classify(record, None, providers)
    return dict(sorted(changes.items()))


def by_action(changes: Mapping[str, Change], action: str) -> set[str]:
    """Logical names of the resources with ``action``."""
    return {c.name for c in changes.values() if c.action == action}


# --- What a destroy leaves in GitLab, and creating it again -------------------------------
# `pulumi destroy` deletes every resource of the state except those whose stored state says
# retainOnDelete (see RETAINED); a branch that is deleted takes its files with it. Creating an
# object that is still there fails: a branch, "Branch already exists" (gitlabhq
# app/services/branches/validate_new_service.rb); a file, "A file with this name already exists"
# (the files API create), unless the provider's `overwrite_on_create` makes the create an update
# (terraform-provider-gitlab resource_gitlab_repository_file.go); a protected branch or tag,
# "already exists" (ProtectedBranch and ProtectedTag validate the name's uniqueness per project);
# a project, "has already been taken" (path uniqueness per namespace).
BRANCH_TYPE = "gitlab:index/branch:Branch"
FILE_TYPE = "gitlab:index/repositoryFile:RepositoryFile"
PROTECTION_TYPE = "gitlab:index/branchProtection:BranchProtection"
TAG_PROTECTION_TYPE = "gitlab:index/tagProtection:TagProtection"
PROJECT_TYPE = "gitlab:index/project:Project"
GitLabObject = tuple[str, str, str]


def gitlab_object(record: Mapping[str, Any]) -> GitLabObject | None:
    """(kind, project id, name) of the GitLab object a record manages, for the kinds that can collide."""
    inputs, typ = record["inputs"], record["type"]
    if typ == BRANCH_TYPE:
        return ("branch", str(inputs["project"]), inputs["name"])
    if typ == FILE_TYPE:
        return ("file", str(inputs["project"]), f"{inputs['branch']}:{inputs['filePath']}")
    if typ == PROTECTION_TYPE:
        return ("branch protection", str(inputs["project"]), inputs["branch"])
    if typ == TAG_PROTECTION_TYPE:
        return ("tag protection", str(inputs["project"]), inputs["tag"])
    if typ == PROJECT_TYPE:
        return ("project", "", str(record["outputs"].get("path_with_namespace", "")).lower())
    return None


def destroy_survivors(records: Iterable[Mapping[str, Any]]) -> set[GitLabObject]:
    """The GitLab objects a `pulumi destroy` of this run's state leaves in place.

    A created project survives when retained or archived (`archive_on_destroy`: the provider's
    delete archives it, and an archived project keeps everything in it); a deleted one takes its
    branches, files and protections with it, as a deleted branch takes its files.
    """
    records = [r for r in records if r["custom"]]
    branches = {
        (str(r["inputs"]["project"]), r["inputs"]["name"]): bool(r["retain_on_delete"])
        for r in records
        if r["type"] == BRANCH_TYPE
    }
    deleted_projects = {
        str(r["id"])
        for r in records
        if r["type"] == PROJECT_TYPE and not r.get("retain_on_delete") and not r["inputs"].get("archiveOnDestroy")
    }
    kept: set[GitLabObject] = set()
    for record in records:
        found = gitlab_object(record)
        if found is None:
            continue
        kind, project, name = found
        if kind == "project":
            if str(record["id"]) not in deleted_projects:
                kept.add(found)
            continue
        if not record.get("retain_on_delete") or project in deleted_projects:
            continue
        if kind == "file" and not branches.get((project, name.split(":", 1)[0]), True):
            continue  # on a branch the destroy deletes
        kept.add(found)
    return kept


def create_collisions(records: Iterable[Mapping[str, Any]], existing: set[GitLabObject]) -> list[str]:
    """The resources of a fresh run (no state) whose create would fail on an object that ``existing`` holds."""
    collisions: list[str] = []
    for record in records:
        found = gitlab_object(record) if record["custom"] else None
        if found is None or found not in existing:
            continue
        if found[0] == "file" and record["inputs"].get("overwriteOnCreate"):
            continue
        collisions.append(f"{record['name']}: {found[0]} {found[2]} exists")
    return collisions


# --- Refresh ---------------------------------------------------------------------------------
# `pulumi refresh` (and `up --refresh`) reads every custom resource of the state; where the
# provider's Read answers an empty ID the engine removes the resource from the state
# (pulumi/pulumi pkg/resource/deploy/step.go, RefreshStep.Apply: "If the ID is blank treat this as
# a delete"; deployment_executor.go rebuildBaseState strips it). pulumi-kubernetes' Read answers a
# 404 that way, and an object whose CRD is gone too (provider/pkg/provider/provider.go, Read:
# `statusErr.ErrStatus.Code == 404` returns `deleteResponse`, `ReadResponse{Id: ""}`); the Terraform
# bridge does when the Terraform Read clears the id, as terraform-provider-gitlab's do on a 404.
# Providers and components are not read.
def refreshed(records: Iterable[Mapping[str, Any]], gone: Any) -> list[Mapping[str, Any]]:
    """The state after a refresh that finds every custom resource for which ``gone(record)`` holds deleted."""
    return [r for r in records if not (r["custom"] and not r["type"].startswith("pulumi:providers:") and gone(r))]
