"""The security model: a person approves every deploy, and a merged chart stays in its namespace."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import jsonschema
import pytest
import yaml

from components.app_project import (
    ALLOW_APP_PORT,
    DENY_INGRESS,
    PSA_LABELS,
    ingress_allowed,
    network_policies,
    project_refusals,
)
from components.chart import ChartSpec
from components.gitlab_host import HostFacts, ProjectRecord, adoption_warnings, pipeline_branch
from components.permissions import Actor, BranchRule, gate_table, levels_from_inputs
from components.pipeline import (
    ENVIRONMENT_MANIFEST,
    JOB_BUILD,
    JOB_UPDATE_MANIFEST,
    MERGE_PUSH_OPTIONS,
    MERGE_REQUEST_VIA,
    job_environment,
    pipeline_jobs,
    render_pipeline,
)
from components.settings import SettingsError, parse_settings
from tests.conftest import TEST_DOCKERHUB_TOKEN, Run, base_config, short_name
from tests.test_chart import render, write_chart
from tests.test_cluster import K8S_VERSION, _crd_schemas
from tests.test_pipeline import _gitlab_ci_local, app_repo, buildctl_stub, make_spec
from tests.tools import require_tool

API = {"mergeRequestVia": "api"}


# --- The AppProject ----------------------------------------------------------------------


def test_the_app_has_a_project_of_its_own(api: Run) -> None:
    project = api.named("argocd-project")
    body = project["inputs"]
    assert (body["kind"], body["metadata"]["name"], body["metadata"]["namespace"]) == ("AppProject", "webapp", "argocd")
    jsonschema.validate(body, _crd_schemas("v3.5.1")[("argoproj.io/v1alpha1", "AppProject")])
    spec = body["spec"]
    repo = api.named("manifest-repo")["inputs"]["stringData"]
    assert spec["sourceRepos"] == [repo["url"]]
    assert spec["destinations"] == [{"server": "https://kubernetes.default.svc", "namespace": "gitops-demo"}]
    assert "clusterResourceWhitelist" not in spec and "sourceNamespaces" not in spec
    # An empty whitelist would deny every namespaced kind; it is left out instead.
    assert "namespaceResourceWhitelist" not in spec
    # The Application and its repository credential both name it.
    application = api.named("application")
    assert application["inputs"]["spec"]["project"] == "webapp" and repo["project"] == "webapp"
    # Destroy deletes the Application before its project, or the finalizer hangs.
    assert project["urn"] in application["dependencies"]


def test_an_app_named_default_is_refused() -> None:
    raw = dict(base_config("dev"))
    raw["appName"] = "default"
    with pytest.raises(SettingsError) as info:
        parse_settings(raw, "dev", secret_keys={"dockerhubToken"})
    assert info.value.keys == ["appName"] and "own" in str(info.value)


def starter_objects(helm: ModuleType, tmp_path: Path) -> list[dict]:
    # As Argo CD renders it: into the Application's destination namespace.
    chart = write_chart(ChartSpec(name="webapp", image_repository="docker.io/acme/webapp"), tmp_path)
    return render(helm, chart, namespace="gitops-demo")


def test_project_rules_fence_the_chart(api: Run, helm: ModuleType, tmp_path: Path) -> None:
    spec = api.named("argocd-project")["inputs"]["spec"]
    repo = spec["sourceRepos"][0]
    objects = starter_objects(helm, tmp_path)
    assert {o["kind"] for o in objects} >= {"Deployment", "Service"}
    for obj in objects:
        assert project_refusals(spec, repo, "gitops-demo", obj) == [], obj["kind"]
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "own-the-cluster"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
    }
    assert project_refusals(spec, repo, "gitops-demo", binding) == [
        "cluster-scoped ClusterRoleBinding is not in clusterResourceWhitelist"
    ]
    elsewhere = copy.deepcopy(objects[0])
    elsewhere["metadata"]["namespace"] = "kube-system"
    assert project_refusals(spec, repo, "gitops-demo", elsewhere) == ["namespace kube-system is not a destination"]
    other_repo = "git@gitlab.example.test:acme/other.git"
    assert project_refusals(spec, other_repo, "gitops-demo", objects[0]) == [f"repository {other_repo} is not in sourceRepos"]
    policy = network_policies("gitops-demo", "webapp", 8080)[0]
    assert project_refusals(spec, repo, "gitops-demo", policy) == ["NetworkPolicy is in namespaceResourceBlacklist"]
    # A RoleBinding inside the namespace to cluster-admin would let the app's pods edit their own
    # Namespace (PSA labels) and the policies.
    local_admin = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "local-admin", "namespace": "gitops-demo"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "gitops-demo"}],
    }
    assert project_refusals(spec, repo, "gitops-demo", local_admin) == ["RoleBinding is in namespaceResourceBlacklist"]
    # Argo CD's own default project would allow all of it: the rules are not vacuous.
    default = {
        "sourceRepos": ["*"],
        "destinations": [{"server": "*", "namespace": "*"}],
        "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
    }
    for obj in (binding, elsewhere, policy, local_admin):
        assert project_refusals(default, other_repo, "gitops-demo", obj) == []


# --- Guard rails in the namespace ----------------------------------------------------------


def test_namespace_enforces_restricted_pod_security(dev: Run) -> None:
    labels = dev.named("app-namespace")["inputs"]["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert PSA_LABELS.items() <= labels.items()


def test_network_policies_admit_the_app_port_only(
    dev: Run,
    helm: ModuleType,
    kubernetes_validate: ModuleType,
    tmp_path: Path,
) -> None:
    policies = [
        r["inputs"]
        for r in dev.of_type("networking.k8s.io/v1:NetworkPolicy")
        if r["inputs"]["metadata"]["namespace"] == "gitops-demo"
    ]
    assert {p["metadata"]["name"] for p in policies} == {DENY_INGRESS, ALLOW_APP_PORT}
    for policy in policies:
        assert policy["metadata"]["namespace"] == "gitops-demo"
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    deployment = next(o for o in starter_objects(helm, tmp_path) if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["metadata"]["labels"]
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert ingress_allowed(policies, pod, port)
    assert not ingress_allowed(policies, pod, port + 1)
    assert not ingress_allowed(policies, pod, port, protocol="UDP")
    assert not ingress_allowed(policies, pod, port, source_in_cluster=False)
    assert not ingress_allowed(policies, {"app.kubernetes.io/name": "other"}, port)
    # Without the policies everything would be admitted: the evaluator can tell.
    assert ingress_allowed([], pod, port + 1)


def test_the_app_port_is_configurable(program: Callable[..., Run]) -> None:
    run = program({"appPort": "9090"})
    allow = run.named(f"network-policy-{ALLOW_APP_PORT}")["inputs"]
    assert allow["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 9090}]
    values = yaml.safe_load(
        next(r for r in run.of_type("repositoryFile:RepositoryFile") if r["name"] == "chart/values.yaml")["inputs"]["content"]
    )
    assert values["containerPort"] == 9090


# --- The merge gate ------------------------------------------------------------------------


def branch_rules(run: Run) -> dict[str, BranchRule]:
    """Each protected branch the program registers, by resource name."""
    projects = {r["id"]: short_name(r["name"]) for r in run.of_type("project:Project")}
    rules = {}
    for res in run.of_type("branchProtection:BranchProtection"):
        push, merge = levels_from_inputs(res["inputs"])
        rules[res["name"]] = BranchRule(projects[res["inputs"]["project"]], res["inputs"]["branch"], push, merge)
    return rules


def actors(run: Run) -> list[Actor]:
    """Everyone who may act on the projects, with their role on the manifest project."""
    token = run.named("mr-token")["inputs"]["accessLevel"] if run.of_type("projectAccessToken:ProjectAccessToken") else None
    bot = run.of_type("providers:gitlab")
    # The deploy keys' owner: the bot account (a Developer, as the README requires) when one
    # is configured, else the person whose token runs `pulumi up`, who owns the projects.
    key_owner = "developer" if any(r["name"] == "deploy-key-owner" for r in bot) else "owner"
    found = [
        Actor("developer", "developer"),
        Actor("maintainer", "maintainer"),
        Actor("owner", "owner"),
        Actor("deploy key owner", key_owner),
        Actor("CI push deploy key", key_owner, deploy_key=True),
    ]
    if token:
        found.append(Actor("pipeline's token", token))
    return found


@pytest.mark.parametrize("enterprise", [True, False])
def test_who_may_push_and_merge(program: Callable[..., Run], enterprise: bool) -> None:
    run = program(API, gitlab={"enterprise": enterprise})
    rules = branch_rules(run)
    table = gate_table(rules.values(), actors(run))
    manifest = table[("manifest-project", "main")]
    app = table[("app-project", "main")]
    pipeline = table[("manifest-project", pipeline_branch("dev"))]
    # Nobody pushes a deploy; maintainers and owners merge; the pipeline's token cannot.
    assert {name for name, (push, _) in manifest.items() if push} == set()
    assert {name for name, (_, merge) in manifest.items() if merge} == {"maintainer", "owner", "deploy key owner"}
    assert manifest["pipeline's token"] == (False, False)
    # No developer pushes straight to either default branch.
    assert app["developer"] == (False, True) and manifest["developer"] == (False, False)
    # What runs with deploy credentials is the pipeline branch, which developers cannot change.
    assert pipeline["developer"] == (False, False) and pipeline["pipeline's token"] == (False, False)
    # The CI key pushes with its owner's role: without a bot that is the projects' owner, who may
    # change the pipeline anyway; only the update-manifest job, defined there, holds the key.
    assert pipeline["CI push deploy key"] == (True, False)
    assert manifest["CI push deploy key"] == (False, False)
    ci_config = run.named("app-project")["inputs"]["ciConfigPath"]
    file, _, source = ci_config.partition("@")
    assert source.endswith(f":{pipeline_branch('dev')}") and source.split(":")[0].endswith("/gitops-demo-chart")
    pipeline_file = run.named("pipeline-file")["inputs"]
    assert (pipeline_file["filePath"], pipeline_file["branch"]) == (file, pipeline_branch("dev"))
    assert pipeline_file["project"] == run.named("manifest-project")["id"]
    assert run.named("app-project")["inputs"]["ciPipelineVariablesMinimumOverrideRole"] == "no_one_allowed"


def test_a_bot_owns_the_deploy_keys_when_configured(program: Callable[..., Run]) -> None:
    run = program({"deployKeyOwnerToken": "glpat-BotBotBotBotBotBot1234"}, secret_keys=("dockerhubToken", "deployKeyOwnerToken"))
    assert run.error is None, run.error
    provider = run.named("deploy-key-owner", "providers:gitlab")
    assert provider["secret_paths"] == ["token"]
    for name in ("argocd-deploy-key", "ci-deploy-key"):
        assert run.named(name)["provider"].startswith(provider["urn"])
    # The bot's role is the README's procedure (Maintainer to register, then Developer): nothing
    # the program registers can show it, so this row restates that assumption.
    rules = branch_rules(run)
    table = gate_table(rules.values(), actors(run))
    assert table[("manifest-project", "main")]["deploy key owner"] == (False, False)
    assert table[("manifest-project", pipeline_branch("dev"))]["CI push deploy key"] == (False, False)
    # Nothing else acts as the bot.
    assert sorted(short_name(r["name"]) for r in run.resources if (r["provider"] or "").startswith(provider["urn"])) == [
        "argocd-deploy-key",
        "ci-deploy-key",
    ]


def test_a_plain_text_bot_token_is_refused(program: Callable[..., Run]) -> None:
    run = program({"deployKeyOwnerToken": "glpat-BotBotBotBotBotBot1234"})
    assert run.error is not None and run.resources == []
    assert "deployKeyOwnerToken: is a secret" in run.error["message"]
    assert "glpat-Bot" not in run.error["message"]


def test_merge_access_can_be_raised_never_lowered(program: Callable[..., Run]) -> None:
    self_managed = {"gitlab:baseUrl": "https://gitlab.example.com/api/v4/"}
    admin = program({**self_managed, "manifestMergeAccess": "admin"})
    assert levels_from_inputs(admin.named("manifest-default-branch")["inputs"])[1] == ("admin",)
    # gitlab.com's administrators are GitLab's staff: nobody could ever merge.
    locked = program({"manifestMergeAccess": "admin"})
    assert locked.error is not None and locked.resources == []
    assert "manifestMergeAccess: must not be admin on gitlab.com" in locked.error["message"]
    lowered = program({"manifestMergeAccess": "developer"})
    assert lowered.error is not None and "manifestMergeAccess" in lowered.error["message"]


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
def test_the_pipeline_never_asks_to_merge(mode: str) -> None:
    text = render_pipeline(make_spec(merge_request_via=mode))
    for option in MERGE_PUSH_OPTIONS:
        assert option not in text


def test_adopted_projects_are_warned_about_not_changed() -> None:
    open_app = ProjectRecord(
        "1", "acme/webapp", "", "", "main", False, default_branch_push=("developer",), default_branch_merge=("developer",)
    )
    open_manifest = ProjectRecord(
        "2", "acme/chart", "", "", "main", False, default_branch_push=("maintainer",), default_branch_merge=("developer",)
    )
    warnings = adoption_warnings(
        HostFacts(enterprise=True, adopted={"adoptAppProject": open_app, "adoptManifestProject": open_manifest})
    )
    assert len(warnings) == 5
    closed_app = ProjectRecord(
        "1",
        "acme/webapp",
        "",
        "",
        "main",
        False,
        ci_config_path="ci.yml@acme/ci",
        ci_pipeline_variables_minimum_override_role="no_one_allowed",
        default_branch_push=("maintainer",),
        default_branch_merge=("developer",),
    )
    closed_manifest = ProjectRecord(
        "2", "acme/chart", "", "", "main", False, default_branch_push=("no one",), default_branch_merge=("maintainer",)
    )
    assert (
        adoption_warnings(HostFacts(True, adopted={"adoptAppProject": closed_app, "adoptManifestProject": closed_manifest})) == []
    )


def test_preview_warns_about_an_adopted_projects_holes(program: Callable[..., Run]) -> None:
    run = program({"adoptAppProject": "acme/webapp", "adoptManifestProject": "acme/webapp-chart"})
    assert run.error is None, run.error
    assert "adopted project acme/webapp: its pipeline is read from the project itself" in run.report["stderr"]
    # The program changes none of it.
    assert run.of_type("branchProtection:BranchProtection") == [] and run.of_type("project:Project") == []


# --- Secrets only where needed -------------------------------------------------------------


@pytest.mark.parametrize("mode", MERGE_REQUEST_VIA)
def test_each_deploy_secret_reaches_one_job(program: Callable[..., Run], mode: str) -> None:
    run = program({"mergeRequestVia": mode})
    # The environments the committed pipeline file declares, job by job.
    committed = yaml.safe_load(run.named("pipeline-file")["inputs"]["content"])
    spec = make_spec(merge_request_via=mode)
    environments = {job: (committed[job].get("environment") or {}).get("name") for job in pipeline_jobs(spec)}
    assert environments == {job: job_environment(spec, job) for job in pipeline_jobs(spec)}
    assert environments[JOB_BUILD] is None
    assert environments[JOB_UPDATE_MANIFEST] == ENVIRONMENT_MANIFEST
    scopes = {
        r["inputs"]["key"]: r["inputs"].get("environmentScope", "*") for r in run.of_type("projectVariable:ProjectVariable")
    }
    assert scopes["SSH_PRIVATE_KEY"] == ENVIRONMENT_MANIFEST
    assert scopes["DOCKERHUB_TOKEN"] == "*"
    if mode == "api":
        # The one job that pushes the deploy branch also opens its merge request.
        assert scopes["GITLAB_PRIVATE_TOKEN"] == ENVIRONMENT_MANIFEST
    else:
        assert "GITLAB_PRIVATE_TOKEN" not in scopes
    for key, scope in scopes.items():
        if scope != "*":
            assert [job for job, env in environments.items() if env == scope] != [], key
            assert len([job for job, env in environments.items() if env == scope]) == 1, key


def gcl_variables(run: Run) -> dict[str, dict]:
    """The registered CI/CD variables in gitlab-ci-local's variables file, scopes kept."""
    found = {}
    for res in run.of_type("projectVariable:ProjectVariable"):
        inputs = res["inputs"]
        # With `values:`, gitlab-ci-local takes a file variable's content, as GitLab does.
        kind = "file" if inputs.get("variableType") == "file" else "variable"
        found[inputs["key"]] = {"type": kind, "values": {inputs.get("environmentScope", "*"): inputs["value"]}}
    return found


def test_gitlab_ci_local_runs_the_build_without_deploy_secrets(api: Run, tmp_path: Path) -> None:
    require_tool("rsync")
    app, _ = app_repo(tmp_path, make_spec(merge_request_via="api"))
    (app / ".gitlab-ci-local-variables.yml").write_text(yaml.safe_dump(gcl_variables(api)))
    seen = tmp_path / "build-env"
    stub_dir = buildctl_stub(tmp_path, f'env > "{seen}"')
    home = tmp_path / "home"
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{stub_dir}:{old_path}"
    try:
        _gitlab_ci_local(app, home, "--force-shell-executor", JOB_BUILD)
    finally:
        os.environ["PATH"] = old_path
    names = {line.split("=", 1)[0] for line in seen.read_text().splitlines() if "=" in line}
    assert "DOCKERHUB_TOKEN" in names
    assert "SSH_PRIVATE_KEY" not in names and "GITLAB_PRIVATE_TOKEN" not in names
    assert TEST_DOCKERHUB_TOKEN not in seen.read_text()  # base64 of user:token, never the raw token
    shutil.rmtree(home, ignore_errors=True)


def test_the_default_layer_cache_is_written_by_maintainers_pipelines_only(program: Callable[..., Run], dev: Run) -> None:
    # Developers (and the job token of their pipelines) can write the project's registry, and
    # BuildKit trusts what it imports: only maintainers may push to the cache repository.
    rule = dev.named("build-cache-protection")["inputs"]
    assert rule["repositoryPathPattern"] == "acme-user/gitops-demo-app/buildcache"
    assert rule["minimumAccessLevelForPush"] == "maintainer"
    assert rule["project"] == dev.named("app-project")["outputs"]["id"]
    assert "buildcache" not in dev.report["stderr"]
    # GitLab before 17.8 has no push protection in every tier; adopted projects are not changed;
    # either way preview says so. Without the default cache there is nothing to protect.
    for overrides, world in (({}, {"version": "17.7.2"}), ({"adoptAppProject": "acme/webapp"}, None)):
        run = program(overrides, gitlab=world)
        assert run.error is None, run.error
        assert run.of_type("projectContainerRepositoryProtection:ProjectContainerRepositoryProtection") == []
        assert "layer cache ($CI_REGISTRY_IMAGE/buildcache) stays writable by every Developer" in run.report["stderr"]
    off = program({"buildCacheRepository": "off"})
    assert off.of_type("projectContainerRepositoryProtection:ProjectContainerRepositoryProtection") == []
    assert "layer cache" not in off.report["stderr"]
