"""The GitLab side under mocks: projects, deploy keys, token, CI variables, protection, files."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import yaml
from cryptography.hazmat.primitives import serialization

from components.gitlab_host import PIPELINE_FILE, STARTER_TOPIC
from components.settings import MASKABLE
from components.starter import render_starter_app, starter_app_files
from tests.conftest import TEST_DOCKERHUB_TOKEN, Run, short_name

ADOPT = {"adoptAppProject": "acme/webapp", "adoptManifestProject": "acme/webapp-chart"}


def variables(run: Run) -> dict[str, dict]:
    return {r["inputs"]["key"]: r for r in run.of_type("projectVariable:ProjectVariable")}


def test_projects_are_private_on_main_and_archived_on_destroy(dev: Run) -> None:
    projects = {short_name(r["name"]): r for r in dev.of_type("project:Project")}
    assert set(projects) == {"app-project", "manifest-project"}
    assert projects["app-project"]["inputs"]["path"] == "gitops-demo-app"
    assert projects["manifest-project"]["inputs"]["path"] == "gitops-demo-chart"
    for res in projects.values():
        assert res["inputs"]["visibilityLevel"] == "private"
        assert res["inputs"]["defaultBranch"] == "main"
        # Default: destroy archives instead of deleting, so no code is lost.
        assert res["inputs"]["archiveOnDestroy"] is True
        assert "namespaceId" not in res["inputs"], "no group configured: the token owner's namespace"


def test_group_is_looked_up_by_full_path(program: Callable[..., Run]) -> None:
    run = program({"gitlabGroup": "acme/platform"})
    assert run.error is None, run.error
    lookups = [i for i in run.report["invokes"] if i["token"] == "gitlab:index/getGroup:getGroup"]
    assert [i["args"]["fullPath"] for i in lookups] == ["acme/platform"]
    ids = {r["inputs"]["namespaceId"] for r in run.of_type("project:Project")}
    assert len(ids) == 1 and ids.pop() > 0


def test_projects_on_destroy_settings(program: Callable[..., Run]) -> None:
    retain = program({"projectsOnDestroy": "retain"})
    for res in retain.of_type("project:Project"):
        assert res["retain_on_delete"] is True and res["inputs"]["archiveOnDestroy"] is False
    # Retained projects keep their protected default branches too.
    protections = {short_name(r["name"]): r for r in retain.of_type("branchProtection:BranchProtection")}
    assert set(protections) == {"app-default-branch", "manifest-default-branch", "pipeline-branch-protection"}
    assert protections["app-default-branch"]["retain_on_delete"] and protections["manifest-default-branch"]["retain_on_delete"]
    # The pipeline branch, its protection and its tag guard go on destroy in every mode: a branch
    # left in a project that outlives the stack would block the next `up` and sit unprotected.
    for mode in ("retain", "archive", "delete"):
        run = retain if mode == "retain" else program({"projectsOnDestroy": mode})
        for name in ("pipeline-branch", "pipeline-branch-protection", "pipeline-tag-protection"):
            assert run.named(name)["retain_on_delete"] is False, (mode, name)
        # Its file commits no deletion (it goes with the branch) and takes over one left behind.
        assert run.named("pipeline-file")["retain_on_delete"] is True
        assert run.named("pipeline-file")["inputs"]["overwriteOnCreate"] is True
    delete = program({"projectsOnDestroy": "delete"})
    for res in delete.of_type("project:Project"):
        assert res["retain_on_delete"] is False and res["inputs"]["archiveOnDestroy"] is False


def test_adopted_projects_are_never_created_nor_deletable(program: Callable[..., Run]) -> None:
    run = program(ADOPT)
    assert run.error is None, run.error
    assert run.of_type("project:Project") == []
    looked_up = [i["args"]["pathWithNamespace"] for i in run.report["invokes"] if i["token"].endswith("getProject")]
    assert sorted(looked_up) == ["acme/webapp", "acme/webapp-chart"]
    manifest_id = run.outputs["manifestProjectId"]["value"]
    for key in run.of_type("deployKey:DeployKey"):
        assert key["inputs"]["project"] == manifest_id
    # No chart is seeded into an adopted manifest project, and the app's own pipeline stays.
    files = {r["inputs"]["filePath"] for r in run.of_type("repositoryFile:RepositoryFile")}
    assert files == {".gitlab/gitops-bootstrap.gitlab-ci.yml"}
    assert run.of_type("branchProtection:BranchProtection") == []
    assert run.named("application")["inputs"]["spec"]["source"]["repoURL"].endswith("acme/webapp-chart.git")


def test_deploy_keys(dev: Run) -> None:
    keys = {short_name(r["name"]): r["inputs"] for r in dev.of_type("deployKey:DeployKey")}
    assert set(keys) == {"argocd-deploy-key", "ci-deploy-key"}
    assert keys["argocd-deploy-key"]["key"] != keys["ci-deploy-key"]["key"]
    assert keys["argocd-deploy-key"]["canPush"] is False and keys["ci-deploy-key"]["canPush"] is True
    manifest_id = dev.named("manifest-project")["id"]
    assert {k["project"] for k in keys.values()} == {manifest_id}
    assert dev.named("app-project")["id"] != manifest_id

    private = dev.named("manifest-repo")["inputs"]["stringData"]["sshPrivateKey"]
    loaded = serialization.load_ssh_private_key(private.encode(), password=None)
    public = loaded.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    assert keys["argocd-deploy-key"]["key"] == public

    ci_private = variables(dev)["SSH_PRIVATE_KEY"]["inputs"]["value"]
    ci_loaded = serialization.load_ssh_private_key(ci_private.encode(), password=None)
    ci_public = ci_loaded.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    assert keys["ci-deploy-key"]["key"] == ci_public


def test_ci_variables_have_exactly_the_right_flags(api: Run) -> None:
    found = variables(api)
    app_id = api.named("app-project")["id"]
    flags = {
        key: {
            "masked": r["inputs"].get("masked"),
            "protected": r["inputs"].get("protected"),
            "type": r["inputs"].get("variableType", "env_var"),
            "raw": r["inputs"].get("raw"),
            "hidden": r["inputs"].get("hidden"),
        }
        for key, r in found.items()
    }
    assert flags == {
        "DOCKERHUB_TOKEN": {"masked": True, "protected": True, "type": "env_var", "raw": False, "hidden": False},
        "GITLAB_PRIVATE_TOKEN": {"masked": True, "protected": True, "type": "env_var", "raw": False, "hidden": False},
        "SSH_PRIVATE_KEY": {"masked": False, "protected": True, "type": "file", "raw": True, "hidden": False},
        "SSH_KNOWN_HOSTS": {"masked": False, "protected": False, "type": "file", "raw": True, "hidden": False},
    }
    assert {r["inputs"]["project"] for r in found.values()} == {app_id}
    auth = base64.b64decode(found["DOCKERHUB_TOKEN"]["inputs"]["value"]).decode()
    assert auth == f"gitopsdemo:{TEST_DOCKERHUB_TOKEN}"
    assert found["SSH_PRIVATE_KEY"]["inputs"]["value"].endswith("\n")
    assert found["SSH_KNOWN_HOSTS"]["inputs"]["value"].startswith("gitlab.com ")
    assert found["GITLAB_PRIVATE_TOKEN"]["inputs"]["value"].startswith("glpat-")


def test_hidden_setting(program: Callable[..., Run]) -> None:
    found = variables(program({"hideCiVariables": "true", "mergeRequestVia": "api"}))
    assert {k for k, r in found.items() if r["inputs"].get("hidden")} == {"DOCKERHUB_TOKEN", "GITLAB_PRIVATE_TOKEN"}
    for r in found.values():
        if r["inputs"].get("hidden"):
            assert r["inputs"]["masked"] is True


def test_every_masked_value_meets_gitlabs_rule(api: Run) -> None:
    masked = [r for r in variables(api).values() if r["inputs"]["masked"]]
    assert len(masked) == 2
    for r in masked:
        assert MASKABLE.match(r["inputs"]["value"]), r["inputs"]["key"]
        assert "\n" not in r["inputs"]["value"]


def test_unmaskable_token_is_rejected_before_registration(program: Callable[..., Run]) -> None:
    run = program({"dockerhubToken": "dckr pat with spaces"})
    assert run.error is not None and "dockerhubToken" in run.error["message"]
    assert run.resources == []


def test_secrets_are_secret_inputs_and_outputs(api: Run) -> None:
    for key in ("DOCKERHUB_TOKEN", "GITLAB_PRIVATE_TOKEN", "SSH_PRIVATE_KEY"):
        assert variables(api)[key]["secret_paths"] == ["value"], key
    assert variables(api)["SSH_KNOWN_HOSTS"]["secret_paths"] == []
    token = api.named("mr-token")
    assert "token" in token["additional_secret_outputs"]
    for private_key in api.of_type("tls:index/privateKey:PrivateKey"):
        assert {"privateKeyOpenssh", "privateKeyPem"} <= set(private_key["additional_secret_outputs"])
    assert {"data", "stringData"} <= set(api.named("manifest-repo")["additional_secret_outputs"])
    for name, out in api.outputs.items():
        text = str(out["value"])
        if "PRIVATE KEY" in text or "glpat-" in text or TEST_DOCKERHUB_TOKEN in text:
            raise AssertionError(f"stack output {name} carries a secret")
        if name == "argocdAdminPassword":
            assert out["secret"] is True


def test_access_token_is_least_privilege_and_rotates(api: Run) -> None:
    token = api.named("mr-token")["inputs"]
    assert token["project"] == api.named("manifest-project")["id"]
    assert token["scopes"] == ["api"]
    assert token["accessLevel"] == "developer"
    assert token["rotationConfiguration"] == {"expirationDays": 30, "rotateBeforeDays": 7}
    assert token["name"].endswith("-dev")


def test_branch_protection(dev: Run) -> None:
    rules = {short_name(r["name"]): r for r in dev.of_type("branchProtection:BranchProtection")}
    manifest, app = rules["manifest-default-branch"], rules["app-default-branch"]
    assert manifest["inputs"]["project"] == dev.named("manifest-project")["id"]
    # gitlab.com is Enterprise Edition: access levels go in allowed_to_* (see test_engine_rules).
    assert manifest["inputs"]["allowedToPushes"] == [{"accessLevel": "no one"}]
    assert manifest["inputs"]["allowedToMerges"] == [{"accessLevel": "maintainer"}]
    assert manifest["inputs"]["allowForcePush"] is False
    assert app["inputs"]["project"] == dev.named("app-project")["id"] and app["inputs"]["branch"] == "main"
    # Developers merge app changes; only maintainers push to the app's default branch.
    assert app["inputs"]["allowedToPushes"] == [{"accessLevel": "maintainer"}]
    assert app["inputs"]["allowedToMerges"] == [{"accessLevel": "developer"}]
    # Protection comes after the seeded chart, or the seed commits would be refused.
    seeded = {r["urn"] for r in dev.of_type("repositoryFile:RepositoryFile") if r["name"].startswith("chart/")}
    assert len(seeded) >= 5 and seeded <= set(manifest["dependencies"])


def test_committed_files_hold_no_secret_and_are_seeded_once(api: Run) -> None:
    secrets = [TEST_DOCKERHUB_TOKEN, variables(api)["GITLAB_PRIVATE_TOKEN"]["inputs"]["value"], "PRIVATE KEY"]
    files = api.of_type("repositoryFile:RepositoryFile")
    assert {r["inputs"]["filePath"] for r in files} >= {PIPELINE_FILE, "Chart.yaml", "values.yaml"}
    for res in files:
        for secret in secrets:
            assert secret not in res["inputs"]["content"], res["inputs"]["filePath"]
        assert res["retain_on_delete"] is True
        if res["name"].startswith(("chart/", "app/")):
            assert res["ignore_changes"] == ["content", "branch", "filePath", "commitMessage", "authorName"]
        # The provider's per-file lock is waited for within the create timeout.
        assert res["custom_timeouts"]["create"] == "10m"
    pipeline = api.named("pipeline-file")["inputs"]["content"]
    assert api.named("manifest-project")["outputs"]["ssh_url_to_repo"] in pipeline


def test_pipeline_is_committed_after_its_variables_and_protection(api: Run) -> None:
    pipeline = api.named("pipeline-file")
    deps = set(pipeline["dependencies"])
    for key in ("DOCKERHUB_TOKEN", "SSH_PRIVATE_KEY", "GITLAB_PRIVATE_TOKEN", "SSH_KNOWN_HOSTS"):
        assert variables(api)[key]["urn"] in deps, key
    assert api.named("app-default-branch")["urn"] in deps
    assert api.named("ci-deploy-key")["urn"] in deps
    assert "[skip ci]" in pipeline["inputs"]["commitMessage"]
    # The app branch is protected straight away, before any file is committed.
    files = {r["urn"] for r in api.of_type("repositoryFile:RepositoryFile")}
    assert not files & set(api.named("app-default-branch")["dependencies"])


def test_adopted_projects_follow_their_own_default_branch(program: Callable[..., Run]) -> None:
    run = program({**ADOPT, "defaultBranch": "trunk"})
    assert run.error is None, run.error
    # The mock GitLab reports "main" as the adopted projects' default branch.
    assert run.named("application")["inputs"]["spec"]["source"]["targetRevision"] == "main"
    assert run.named("pipeline-file")["inputs"]["branch"] == "main"
    assert "MANIFEST_DEFAULT_BRANCH: main" in run.named("pipeline-file")["inputs"]["content"]


def test_chart_names_do_not_depend_on_chart_path(program: Callable[..., Run], dev: Run) -> None:
    run = program({"chartPath": "charts/webapp"})
    assert run.error is None, run.error
    urns = lambda r: {x["urn"] for x in r.of_type("repositoryFile:RepositoryFile")}  # noqa: E731
    assert urns(run) == urns(dev)
    paths = {x["inputs"]["filePath"] for x in run.of_type("repositoryFile:RepositoryFile") if x["name"].startswith("chart/")}
    assert "charts/webapp/Chart.yaml" in paths and all(p.startswith("charts/webapp/") for p in paths)
    assert run.named("application")["inputs"]["spec"]["source"]["path"] == "charts/webapp"
    assert "CHART_FILE: charts/webapp/Chart.yaml" in run.named("pipeline-file")["inputs"]["content"]


def test_application_waits_for_the_seeded_chart(dev: Run) -> None:
    chart = {r["urn"] for r in dev.of_type("repositoryFile:RepositoryFile") if r["name"].startswith("chart/")}
    assert chart and chart <= set(dev.named("application")["dependencies"])


def test_variables_are_deleted_before_they_are_replaced(dev: Run) -> None:
    # One variable per key and scope: a replacement must not overlap its predecessor.
    assert all(r["delete_before_replace"] for r in variables(dev).values())


def test_push_options_mode_needs_no_access_token(dev: Run) -> None:
    # The demo stack's mode: it works on every GitLab tier, gitlab.com Free included.
    run = dev
    assert run.of_type("projectAccessToken:ProjectAccessToken") == []
    assert set(variables(run)) == {"DOCKERHUB_TOKEN", "SSH_PRIVATE_KEY", "SSH_KNOWN_HOSTS"}
    content = run.named("pipeline-file")["inputs"]["content"]
    assert "GITLAB_PRIVATE_TOKEN" not in content and "merge_request.create" in content


def test_destroy_then_up_stops_early_with_the_steps(program: Callable[..., Run]) -> None:
    # `pulumi destroy` with projectsOnDestroy=archive left both projects archived at their paths.
    world = {
        "projects": [
            {"path_with_namespace": "acme-user/gitops-demo-app", "archived": True},
            {"path_with_namespace": "acme-user/gitops-demo-chart", "archived": True},
            # Same search hit, other path: not in the way.
            {"path_with_namespace": "acme-user/gitops-demo-app-old", "archived": True},
        ]
    }
    run = program(gitlab=world)
    assert run.error is not None and run.resources == []
    message = run.error["message"]
    for key, path in (("appProject", "gitops-demo-app"), ("manifestProject", "gitops-demo-chart")):
        line = next(line for line in message.splitlines() if line.strip().startswith(f"- {key}:"))
        assert "archived" in line and "/unarchive" in line
        adopt = "adoptAppProject" if key == "appProject" else "adoptManifestProject"
        assert f"pulumi config set {adopt} acme-user/{path}" in line
        assert f"pulumi config set {key} {path}-2" in line
    assert "gitops-demo-app-old" not in message
    # Following the first step: unarchived and adopted, the stack plans again.
    adopted = program(
        {"adoptAppProject": "acme-user/gitops-demo-app", "adoptManifestProject": "acme-user/gitops-demo-chart"},
        gitlab={"projects": [{"path_with_namespace": "acme-user/gitops-demo-app-old", "archived": True}]},
    )
    assert adopted.error is None, adopted.error
    # Following the second: new paths are free.
    renamed = program({"appProject": "gitops-demo-app-2", "manifestProject": "gitops-demo-chart-2"}, gitlab=world)
    assert renamed.error is None, renamed.error


def test_an_archived_project_in_a_group_is_found_there(program: Callable[..., Run]) -> None:
    world = {"projects": [{"path_with_namespace": "acme/platform/gitops-demo-chart", "archived": True}]}
    run = program({"gitlabGroup": "acme/platform"}, gitlab=world)
    assert run.error is not None and run.resources == []
    assert "manifestProject: acme/platform/gitops-demo-chart" in run.error["message"]
    assert "appProject:" not in run.error["message"]
    # The same path in another namespace is not in the way.
    assert program(gitlab=world).error is None


def test_an_archived_adopted_project_is_refused(program: Callable[..., Run]) -> None:
    run = program(ADOPT, gitlab={"projects": [{"path_with_namespace": "acme/webapp-chart", "archived": True}]})
    assert run.error is not None and run.resources == []
    assert "adoptManifestProject: acme/webapp-chart is archived" in run.error["message"]


def test_port_forward_names_the_pinned_context(program: Callable[..., Run], dev: Run) -> None:
    assert dev.outputs["argocdPortForward"]["value"] == (
        "kubectl --context kind-gitops port-forward svc/argocd-server -n argocd 8080:443"
    )
    unpinned = program({"kubeContext": ""})
    assert unpinned.outputs["argocdPortForward"]["value"] == "kubectl port-forward svc/argocd-server -n argocd 8080:443"


def test_build_runner_tags_reach_the_committed_pipeline(program: Callable[..., Run], dev: Run) -> None:
    run = program({"buildRunnerTags": '["buildkit"]'})
    document = yaml.safe_load(run.named("pipeline-file")["inputs"]["content"])
    assert document["build-image"]["tags"] == ["buildkit"]
    # Merge requests' unreviewed builds stay off the build runners, or go where buildCheckRunnerTags says.
    assert "tags" not in document["build-check"]
    assert "tags" not in yaml.safe_load(dev.named("pipeline-file")["inputs"]["content"])["build-image"]
    both = program({"buildRunnerTags": '["buildkit"]', "buildCheckRunnerTags": '["untrusted"]'})
    document = yaml.safe_load(both.named("pipeline-file")["inputs"]["content"])
    assert document["build-image"]["tags"] == ["buildkit"] and document["build-check"]["tags"] == ["untrusted"]


BUILD_RUNNERS = [
    {"id": 11, "description": "buildkit-protected", "tags": ["buildkit", "linux"], "access_level": "ref_protected"},
    {"id": 12, "description": "buildkit-open", "tags": ["buildkit"], "access_level": "not_protected"},
    {"id": 13, "description": "buildkit-untagged", "tags": ["buildkit"], "access_level": "ref_protected", "untagged": True},
    {"id": 14, "description": "other", "tags": ["linux"], "access_level": "not_protected", "untagged": True},
    {"id": 15, "description": "deploy", "tags": ["gitops-deploy"], "access_level": "ref_protected"},
    {"id": 16, "description": "both", "tags": ["buildkit", "gitops-deploy"], "access_level": "ref_protected"},
]
ADMIN = {"admin": True, "runners": BUILD_RUNNERS}


def runner_warnings_in(run: Run) -> list[str]:
    return [line for line in run.report["stderr"].splitlines() if re.search(r"runner \d+ \(", line)]


def runner_reads(run: Run) -> list[str]:
    return sorted(r["id"] for r in run.report["reads"] if r["type"] == "gitlab:index/userRunner:UserRunner")


def test_preview_warns_about_build_and_deploy_runners_that_share_a_host(program: Callable[..., Run]) -> None:
    tags = {"buildRunnerTags": '["buildkit"]', "deployRunnerTags": '["gitops-deploy"]'}
    run = program(tags, preview=True, gitlab=ADMIN)
    assert run.error is None, run.error
    # Each runner that can take the build or the deploy job is read once, whichever tags found it.
    assert runner_reads(run) == ["11", "12", "13", "15", "16"]
    warnings = runner_warnings_in(run)
    assert len(warnings) == 3, warnings
    assert any("runner 12 (buildkit-open), a build runner, is not protected" in w for w in warnings)
    assert any("runner 13 (buildkit-untagged), a build runner, takes untagged jobs" in w for w in warnings)
    assert any("runner 16 (both), a build and deploy runner, takes both the build job and update-manifest" in w for w in warnings)
    # `pulumi up` keeps no read of them in state, and an honest setup gets no warning.
    up = program(tags, gitlab=ADMIN)
    assert runner_reads(up) == [] and runner_warnings_in(up) == []
    honest = program(tags, preview=True, gitlab={"admin": True, "runners": [BUILD_RUNNERS[0], BUILD_RUNNERS[4]]})
    assert runner_warnings_in(honest) == [] and "cannot tell" not in honest.report["stderr"]
    # Tags no runner carries: what to check by hand.
    unseen = program({"buildRunnerTags": '["buildkit"]'}, preview=True, gitlab={"admin": True, "runners": BUILD_RUNNERS[3:4]})
    assert (
        "cannot tell whether the runners tagged buildkit are protected (no runner carries these tags)" in unseen.report["stderr"]
    )


def test_preview_says_what_to_check_when_the_token_cannot_list_runners(program: Callable[..., Run], dev: Run) -> None:
    # Not an administrator: GET /runners/all answers 403.
    run = program({"buildRunnerTags": '["buildkit"]'}, preview=True, gitlab={"runners": BUILD_RUNNERS})
    assert run.error is None, run.error
    assert "cannot tell whether the runners tagged buildkit are protected (" in run.report["stderr"]
    assert "403" in run.report["stderr"] and runner_reads(run) == []
    # Without runner tags nothing is asked.
    plain = program(preview=True)
    assert not any(i["token"] == "gitlab:index/getRunners:getRunners" for i in plain.report["invokes"])


def test_a_self_managed_stack_is_told_when_unreviewed_builds_and_the_deploy_job_share_runners(
    program: Callable[..., Run],
) -> None:
    self_managed = {"gitlab:baseUrl": "https://gitlab.example.com/api/v4"}
    shared = program(self_managed, preview=True)
    assert "webapp: merge requests' build-check" in shared.report["stderr"]
    for apart in ({"deployRunnerTags": '["gitops-deploy"]'}, {"buildCheckRunnerTags": '["untrusted"]'}):
        run = program({**self_managed, **apart}, preview=True)
        assert "merge requests' build-check (unreviewed" not in run.report["stderr"], apart
    # gitlab.com's hosted runners give every job a new VM.
    assert "merge requests' build-check (unreviewed" not in program(preview=True).report["stderr"]


def test_deploy_runner_tags_reach_only_the_deploy_job(program: Callable[..., Run]) -> None:
    run = program({"deployRunnerTags": '["gitops-deploy"]'})
    document = yaml.safe_load(run.named("pipeline-file")["inputs"]["content"])
    assert document["update-manifest"]["tags"] == ["gitops-deploy"]
    assert "tags" not in document["build-image"] and "tags" not in document["build-check"]
    refused = program({"buildRunnerTags": '["buildkit"]', "deployRunnerTags": '["buildkit", "deploy"]'})
    assert refused.error is not None and "buildRunnerTags: must not be a subset of deployRunnerTags" in refused.error["message"]


def starter_files(run: Run) -> dict[str, dict]:
    return {r["inputs"]["filePath"]: r for r in run.of_type("repositoryFile:RepositoryFile") if r["name"].startswith("app/")}


def test_a_new_app_project_gets_the_starter_app_and_one_pipeline(api: Run) -> None:
    files = starter_files(api)
    app_id = api.named("app-project")["outputs"]["id"]
    # Exactly the files under starter/app, as they are, on the app project's default branch.
    assert {path: res["inputs"]["content"] for path, res in files.items()} == starter_app_files()
    assert "EXPOSE 8080" in files["Dockerfile"]["inputs"]["content"]
    assert {"Dockerfile", "server.py"} <= set(files)
    for res in files.values():
        assert res["inputs"]["project"] == app_id and res["inputs"]["branch"] == "main"
    # Every commit says [skip ci] but the last one, which starts the first pipeline ...
    starting = [path for path, res in files.items() if "[skip ci]" not in res["inputs"]["commitMessage"]]
    assert starting == ["README.md"]
    readme = files["README.md"]
    # ... once everything that pipeline reads exists, and after the other starter files.
    deps = set(readme["dependencies"])
    for key in ("DOCKERHUB_TOKEN", "SSH_PRIVATE_KEY", "GITLAB_PRIVATE_TOKEN", "SSH_KNOWN_HOSTS"):
        assert variables(api)[key]["urn"] in deps, key
    for name in ("ci-deploy-key", "argocd-deploy-key", "app-default-branch", "manifest-default-branch", "pipeline-file"):
        assert api.named(name)["urn"] in deps, name
    chart = {r["urn"] for r in api.of_type("repositoryFile:RepositoryFile") if r["name"].startswith("chart/")}
    assert chart and chart <= deps
    assert {res["urn"] for path, res in files.items() if path != "README.md"} <= deps
    # Only GitLab's own README exists in a new project; nothing else may be overwritten.
    assert [path for path, res in files.items() if res["inputs"].get("overwriteOnCreate")] == ["README.md"]
    assert api.named("app-project")["inputs"]["topics"] == [STARTER_TOPIC]
    assert "topics" in api.named("app-project")["ignore_changes"]


def test_no_starter_app_for_adopted_or_older_projects(program: Callable[..., Run], dev: Run) -> None:
    adopted = program(ADOPT)
    assert adopted.error is None, adopted.error
    assert starter_files(adopted) == {}
    # Created by an earlier version (no topic): the team may have its own Dockerfile by now.
    older = program(gitlab={"projects": [{"path_with_namespace": "acme-user/gitops-demo-app", "topics": ["team"]}]})
    assert older.error is None, older.error
    assert starter_files(older) == {}
    assert "topics" not in older.named("app-project")["inputs"]
    # Created by this version: the same files stay registered (unchanged, so no new commit).
    seeded = program(gitlab={"projects": [{"path_with_namespace": "acme-user/gitops-demo-app", "topics": [STARTER_TOPIC]}]})
    assert seeded.error is None, seeded.error
    assert {r["urn"] for r in starter_files(seeded).values()} == {r["urn"] for r in starter_files(dev).values()}


def test_the_starter_app_listens_on_the_apps_port(program: Callable[..., Run]) -> None:
    run = program({"appPort": "9000"})
    assert run.error is None, run.error
    dockerfile = starter_files(run)["Dockerfile"]["inputs"]["content"]
    assert "EXPOSE 9000" in dockerfile and "PORT=9000" in dockerfile and "127.0.0.1:9000/healthz" in dockerfile
    assert "8080" not in dockerfile
    assert render_starter_app(9000)["Dockerfile"] == dockerfile
    assert "containerPort: 9000" in run.named("chart/values.yaml")["inputs"]["content"]


def test_the_committed_pipeline_rolls_one_branch_per_stack_and_caches_off_docker_hub(
    program: Callable[..., Run], dev: Run
) -> None:
    variables_of = lambda run: yaml.safe_load(run.named("pipeline-file")["inputs"]["content"])["variables"]  # noqa: E731
    assert variables_of(dev)["DEPLOY_BRANCH"] == "gitops-deploy-dev"
    assert variables_of(dev)["CACHE_REPOSITORY"] == "$CI_REGISTRY_IMAGE/buildcache"
    # Stacks that share a manifest project never write each other's deploy branch.
    assert variables_of(program(stack="prod"))["DEPLOY_BRANCH"] == "gitops-deploy-prod"
    assert variables_of(program({"buildCacheRepository": "off"}))["CACHE_REPOSITORY"] == ""
    refused = program({"buildCacheRepository": "docker.io/gitopsdemo/webapp"})
    assert refused.error is not None and refused.resources == []
    assert "buildCacheRepository" in refused.error["message"]
