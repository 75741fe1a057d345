"""GitLab's permission model for protected branches, as the deploy gate relies on it.

Pure code: no Pulumi imports. Sources: GitLab docs "Protected branches" and the protected
branches API (access levels 0 no one, 30 developer, 40 maintainer, 60 admin; a level admits
every role at or above it), "Roles and permissions" (owner 50 is above maintainer), and
"Deploy keys" (a write deploy key pushes to unprotected branches only, unless a protected
branch names it, which needs Premium; push options act as the key's owner).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ROLE_LEVELS: dict[str, int] = {"guest": 10, "reporter": 20, "developer": 30, "maintainer": 40, "owner": 50, "admin": 60}
# Protected-branch access levels: the lowest role admitted, or None for "no one".
ACCESS_LEVELS: dict[str, int | None] = {"no one": None, "developer": 30, "maintainer": 40, "admin": 60}


@dataclass(frozen=True)
class Actor:
    """Someone or something that may push or merge: its role on the project, or a deploy key."""

    name: str
    role: str | None = None
    # A write deploy key, which pushes (never merges) with its owner's role.
    deploy_key: bool = False


@dataclass(frozen=True)
class BranchRule:
    """The access levels a protected branch admits for pushing and for merging."""

    project: str
    branch: str
    push: tuple[str, ...]
    merge: tuple[str, ...]


def admits(levels: Iterable[str], role: str | None) -> bool:
    """Whether any of the access ``levels`` admits a member with ``role``."""
    if role is None:
        return False
    rank = ROLE_LEVELS[role]
    return any((floor := ACCESS_LEVELS[level]) is not None and rank >= floor for level in levels)


def can_push(rule: BranchRule, actor: Actor) -> bool:
    """Whether ``actor`` may push straight to the protected branch.

    A write deploy key is taken to push with its owner's role (``actor.role``): GitLab checks
    a key's push to a protected branch through the user who registered it, and versions
    differ in the details, so the table assumes the wider reading.
    """
    return admits(rule.push, actor.role)


def can_merge(rule: BranchRule, actor: Actor) -> bool:
    """Whether ``actor`` may merge a merge request into the protected branch."""
    return not actor.deploy_key and admits(rule.merge, actor.role)


def gate_table(rules: Iterable[BranchRule], actors: Iterable[Actor]) -> dict[tuple[str, str], dict[str, tuple[bool, bool]]]:
    """For each (project, branch): each actor's (may push, may merge)."""
    actors = list(actors)
    return {(r.project, r.branch): {a.name: (can_push(r, a), can_merge(r, a)) for a in actors} for r in rules}


def levels_from_inputs(inputs: Mapping[str, object]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(push, merge) access levels from a registered BranchProtection, on either edition."""

    def pick(ce: str, ee: str) -> tuple[str, ...]:
        if inputs.get(ce) is not None:
            return (str(inputs[ce]),)
        entries = inputs.get(ee) or []
        assert isinstance(entries, list)
        return tuple(str(e["accessLevel"]) for e in entries)

    return pick("pushAccessLevel", "allowedToPushes"), pick("mergeAccessLevel", "allowedToMerges")
