"""Day two under mocks: destroy order, two stacks side by side (rotation: test_engine_rules)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from tests.conftest import Run

ARGO = "gitops:argocd:ArgoCd$"


def closure(run: Run) -> dict[str, set[str]]:
    """For each URN, everything it depends on, directly or transitively."""
    direct = {r["urn"]: set(r["dependencies"]) for r in run.resources}
    memo: dict[str, set[str]] = {}

    def visit(urn: str) -> set[str]:
        if urn not in memo:
            memo[urn] = set()
            for dep in direct.get(urn, ()):
                memo[urn] |= {dep} | visit(dep)
        return memo[urn]

    for urn in direct:
        visit(urn)
    return memo


def delete_order(run: Run) -> list[str]:
    """A delete order the engine could take: reverse topological order of the dependencies."""
    deps = {r["urn"]: set(r["dependencies"]) for r in run.resources if r["custom"]}
    dependents: dict[str, set[str]] = defaultdict(set)
    for urn, ds in deps.items():
        for d in ds:
            dependents[d].add(urn)
    order: list[str] = []
    remaining = dict(deps)
    while remaining:
        # Deletable: nothing still present depends on it.
        ready = sorted(u for u in remaining if not (dependents[u] & remaining.keys()))
        assert ready, "dependency cycle"
        for u in ready:
            order.append(u)
            del remaining[u]
    return order


def phases(run: Run) -> dict[str, set[str]]:
    groups: dict[str, set[str]] = defaultdict(set)
    for r in run.resources:
        if not r["custom"]:
            continue
        kind = r["type"].rsplit(":", 1)[-1]
        if r["name"] == "application":
            groups["1 application"].add(r["urn"])
        elif r["name"] == "app-namespace":
            groups["2 app namespace"].add(r["urn"])
        elif ARGO in r["urn"] and r["name"] == "argocd-namespace":
            groups["5 argocd namespace"].add(r["urn"])
        elif ARGO in r["urn"] and kind == "CustomResourceDefinition":
            groups["4 crds"].add(r["urn"])
        elif ARGO in r["urn"] and r["type"].startswith("kubernetes:"):
            groups["3 argocd workloads and config"].add(r["urn"])
    return groups


def test_destroy_order_is_forced_by_dependencies(dev: Run) -> None:
    groups = phases(dev)
    assert len(groups["3 argocd workloads and config"]) == 59 - 3
    names = sorted(groups)
    deps = closure(dev)
    # Every member of an earlier phase depends (transitively) on every member of each later
    # one, so any order the engine picks deletes the earlier phase first.
    for i, earlier in enumerate(names):
        for later in names[i + 1 :]:
            for a in groups[earlier]:
                missing = groups[later] - deps[a]
                assert not missing, f"{a} ({earlier}) does not outlast {sorted(missing)[:2]} ({later})"
    order = delete_order(dev)
    position = {urn: i for i, urn in enumerate(order)}
    for i, earlier in enumerate(names):
        for later in names[i + 1 :]:
            assert max(position[u] for u in groups[earlier]) < min(position[u] for u in groups[later])


def test_gitlab_credentials_are_removed_projects_kept(dev: Run) -> None:
    credentials = (
        dev.of_type("deployKey:DeployKey")
        + dev.of_type("projectVariable:ProjectVariable")
        + dev.of_type("projectAccessToken:ProjectAccessToken")
    )
    assert credentials and all(not r["retain_on_delete"] and not r["protect"] for r in credentials)
    for project in dev.of_type("project:Project"):
        assert project["inputs"]["archiveOnDestroy"] is True or project["retain_on_delete"] is True


def test_two_stacks_do_not_collide(program: Callable[..., Run]) -> None:
    group = {"gitlabGroup": "acme/platform"}
    dev = program(group, stack="dev")
    prod = program(group, stack="prod")
    assert dev.error is None and prod.error is None, (dev.error, prod.error)

    def gitlab_names(run: Run) -> set[tuple[str, ...]]:
        names: set[tuple[str, ...]] = set()
        for r in run.of_type("project:Project"):
            names.add(("project", r["inputs"]["path"]))
        for r in run.of_type("deployKey:DeployKey"):
            names.add(("deploy key title", r["inputs"]["title"]))
        for r in run.of_type("projectAccessToken:ProjectAccessToken"):
            names.add(("token", r["inputs"]["name"]))
        return names

    assert gitlab_names(dev) and not (gitlab_names(dev) & gitlab_names(prod))
    # Variables live on each stack's own app project, so keys repeat but never on one project.
    dev_projects = {r["inputs"]["project"] for r in dev.of_type("projectVariable:ProjectVariable")}
    prod_projects = {r["inputs"]["project"] for r in prod.of_type("projectVariable:ProjectVariable")}
    assert dev_projects and not (dev_projects & prod_projects)

    def cluster_scoped(run: Run, context: str) -> set[tuple[str, str, str]]:
        return {
            (context, r["inputs"]["kind"], r["inputs"]["metadata"]["name"])
            for r in run.resources
            if r["custom"]
            and r["type"].startswith("kubernetes:")
            and "namespace" not in r["inputs"].get("metadata", {"namespace": 1})
        }

    dev_context = dev.named("k8s", "providers:kubernetes")["inputs"].get("context", "<current>")
    prod_context = prod.named("k8s", "providers:kubernetes")["inputs"].get("context", "<current>")
    assert dev_context != prod_context
    assert not (cluster_scoped(dev, dev_context) & cluster_scoped(prod, prod_context))
    assert prod.outputs["argocdNamespace"]["value"] == "argocd"


def test_prod_can_share_devs_manifest_project(program: Callable[..., Run]) -> None:
    dev = program({"gitlabGroup": "acme/platform"}, stack="dev")
    shared = dev.outputs["manifestProjectSshUrl"]["value"].split(":", 1)[1].removesuffix(".git")
    prod = program({"gitlabGroup": "acme/platform", "adoptManifestProject": shared, "manifestProject": None}, stack="prod")
    assert prod.error is None, prod.error
    assert prod.outputs["manifestProjectId"]["value"] == dev.outputs["manifestProjectId"]["value"]
    on_shared = lambda run: {  # noqa: E731 - a one-line selector
        (r["type"].rsplit(":", 1)[-1], r["inputs"].get("title") or r["inputs"].get("name"))
        for r in run.of_type("deployKey:DeployKey") + run.of_type("projectAccessToken:ProjectAccessToken")
        if r["inputs"]["project"] == dev.outputs["manifestProjectId"]["value"]
    }
    # Two deploy keys each, and prod's merge-request token (dev opens MRs with push options).
    assert (len(on_shared(dev)), len(on_shared(prod))) == (2, 3)
    assert not on_shared(dev) & on_shared(prod)
    # Prod seeds nothing into, and never protects or deletes, the project it shares.
    assert not [r for r in prod.of_type("repositoryFile:RepositoryFile") if r["inputs"]["filePath"] == "Chart.yaml"]
    assert [r["name"] for r in prod.of_type("project:Project")] == ["app-project"]


def test_preview_registers_the_same_plan(program: Callable[..., Run], dev: Run) -> None:
    preview = program(preview=True)
    assert preview.error is None, preview.error
    assert {r["urn"] for r in preview.resources} == {r["urn"] for r in dev.resources}
