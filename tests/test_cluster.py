"""The cluster side under mocks: Argo CD install, namespaces, repository secret, Application."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from components import manifest_source
from tests.conftest import Run, shared_manifest

K8S_VERSION = "1.33"
ARGO_PARENT = "urn:pulumi:dev::gitops-bootstrap::pulumi:pulumi:Stack$gitops:argocd:ArgoCd::argocd"
# Under mocks a URN carries only its parent's own type (tests.engine_rules.engine_urns).
APP_PARENT = "urn:pulumi:dev::gitops-bootstrap::gitops:app:App$gitops:argocd:AppDeployment::app"


def upstream_docs(version: str, ha: bool = False) -> list[dict[str, Any]]:
    """Upstream objects from the shared mirror, or the pinned URL where it is absent."""
    mirror = shared_manifest(version, ha)
    source = str(mirror) if mirror else manifest_source.upstream_url(version, ha)
    return manifest_source.load_manifest(source, manifest_source.KNOWN_SHA256[(version, ha)])


def k8s_objects(run: Run) -> Iterator[dict[str, Any]]:
    """Every Kubernetes object the program sends, rebuilt from the registered inputs."""
    for res in run.resources:
        if res["custom"] and res["type"].startswith("kubernetes:") and not res["type"].startswith("pulumi:"):
            if "apiVersion" in res["inputs"]:
                yield res["inputs"]


def install_objects(run: Run, parent: str = ARGO_PARENT) -> list[dict[str, Any]]:
    """Objects registered as the Argo CD install, except the namespace the program adds."""
    return [r for r in run.children(parent) if r["custom"] and r["name"] != "argocd-namespace"]


@pytest.mark.parametrize(("ha", "expected"), [(False, 59), (True, 70)])
def test_registers_the_full_upstream_install(program: Callable[..., Run], ha: bool, expected: int) -> None:
    run = program({"argocdHa": "true" if ha else "false"})
    assert run.error is None, run.error
    registered = install_objects(run)
    assert len(registered) == expected == len(upstream_docs("v3.5.1", ha))
    upstream = {(d["kind"], d["metadata"]["name"]) for d in upstream_docs("v3.5.1", ha)}
    assert {(r["inputs"]["kind"], r["inputs"]["metadata"]["name"]) for r in registered} == upstream


def test_namespaces_secret_and_application(dev: Run) -> None:
    names = {r["inputs"]["metadata"]["name"] for r in dev.of_type("core/v1:Namespace")}
    assert names == {"argocd", "gitops-demo"}

    secret = dev.named("manifest-repo")["inputs"]
    assert secret["metadata"]["namespace"] == "argocd"
    assert secret["metadata"]["labels"]["argocd.argoproj.io/secret-type"] == "repository"
    assert secret["stringData"]["type"] == "git"
    assert secret["stringData"]["url"].startswith("git@") and secret["stringData"]["url"].endswith(".git")
    assert secret["stringData"]["sshPrivateKey"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")

    app = dev.named("application")["inputs"]
    assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    assert app["metadata"]["name"] == "webapp" and app["metadata"]["namespace"] == "argocd"
    assert app["metadata"]["finalizers"] == ["resources-finalizer.argocd.argoproj.io"]
    spec = app["spec"]
    assert spec["source"] == {"repoURL": secret["stringData"]["url"], "path": ".", "targetRevision": "main"}
    assert spec["destination"] == {"server": "https://kubernetes.default.svc", "namespace": "gitops-demo"}
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}


def _crd_schemas(version: str) -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for doc in upstream_docs(version):
        if doc["kind"] == "CustomResourceDefinition":
            group = doc["spec"]["group"]
            for ver in doc["spec"]["versions"]:
                schemas[(f"{group}/{ver['name']}", doc["spec"]["names"]["kind"])] = ver["schema"]["openAPIV3Schema"]
    return schemas


@pytest.mark.parametrize(
    ("stack", "overrides"),
    [("dev", {}), ("dev", {"argocdHa": "true"}), ("dev", {"argocdNamespace": "gitops-system"}), ("teams", {})],
)
def test_every_object_passes_schema_validation(program: Callable[..., Run], stack: str, overrides: dict[str, str]) -> None:
    run = program(overrides, stack=stack)
    assert run.error is None, run.error
    crds = _crd_schemas("v3.5.1")
    checked_custom = 0
    objects = list(k8s_objects(run))
    assert len(objects) > 59
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in crds:
            jsonschema.validate(obj, crds[key])
            checked_custom += 1
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert checked_custom >= 1


def test_schema_validation_can_fail() -> None:
    crds = _crd_schemas("v3.5.1")
    bad = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": {"name": "x"}, "spec": {"source": 3}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crds[("argoproj.io/v1alpha1", "Application")])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "dta": {}}, K8S_VERSION, strict=True
        )


def test_secrets_stay_secret(dev: Run) -> None:
    assert dev.named("manifest-repo")["secret_paths"], "repository secret data must be a secret input"
    for key in dev.of_type("tls:index/privateKey:PrivateKey"):
        assert key["inputs"]["algorithm"] == "ED25519"
    assert dev.outputs["argocdAdminPassword"]["secret"] is True
    assert dev.outputs["argocdAdminPassword"]["value"]
    read = dev.report["reads"]
    assert [r["id"] for r in read] == ["argocd/argocd-initial-admin-secret"]
    assert any(d.endswith("Deployment::argocd-server") for d in read[0]["dependencies"])


def test_repository_key_matches_exported_public_key(dev: Run) -> None:
    private = dev.named("manifest-repo")["inputs"]["stringData"]["sshPrivateKey"]
    key = serialization.load_ssh_private_key(private.encode(), password=None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    assert dev.outputs["argocdDeployPublicKey"]["value"] == public


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, value


def test_custom_namespace_leaves_no_reference_to_argocd(program: Callable[..., Run]) -> None:
    run = program({"argocdNamespace": "gitops-system"})
    assert run.error is None, run.error
    offending = []
    for obj in k8s_objects(run):
        for path, value in _walk(obj):
            if path.endswith(".namespace") and value == "argocd":
                offending.append((obj["kind"], obj["metadata"]["name"], path))
            if isinstance(value, str) and ".argocd.svc" in value:
                offending.append((obj["kind"], obj["metadata"]["name"], path))
    assert offending == []
    subjects = [s for r in run.of_type("ClusterRoleBinding") for s in r["inputs"]["subjects"]]
    assert len(subjects) == 3 and {s["namespace"] for s in subjects} == {"gitops-system"}
    namespaced = [
        r
        for r in install_objects(run)
        if r["inputs"]["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition")
    ]
    assert {r["inputs"]["metadata"]["namespace"] for r in namespaced} == {"gitops-system"}
    assert "-n gitops-system" in run.outputs["argocdPortForward"]["value"]


def test_upgrade_keeps_every_urn(program: Callable[..., Run]) -> None:
    old = program({"argocdVersion": "v3.4.7"})
    new = program({"argocdVersion": "v3.5.1"})
    assert old.error is None and new.error is None
    assert {r["urn"] for r in old.resources} == {r["urn"] for r in new.resources}
    # The manifests differ, so the same URNs are in-place updates, not a no-op.
    changed = [r["urn"] for r in new.resources if r["inputs"] != old.by_urn()[r["urn"]]["inputs"]]
    assert any("CustomResourceDefinition" in u for u in changed)


def test_overlays_keep_upstream_entries(dev: Run) -> None:
    known = dev.named("argocd-ssh-known-hosts-cm")["inputs"]["data"]["ssh_known_hosts"]
    upstream = next(d for d in upstream_docs("v3.5.1") if d["metadata"]["name"] == "argocd-ssh-known-hosts-cm")
    for line in upstream["data"]["ssh_known_hosts"].splitlines():
        assert line in known.splitlines()
    cm = dev.named("argocd-cm")["inputs"]["data"]
    # The demo stack polls fast enough for a merge to sync within a minute without a webhook:
    # the repo-server caches refs for the timeout too, so the worst case is 2 x timeout + jitter.
    assert (cm["timeout.reconciliation"], cm["timeout.reconciliation.jitter"]) == ("20s", "10s")
    seconds = lambda v: int(v.removesuffix("s"))  # noqa: E731 - durations here are in seconds
    assert 2 * seconds(cm["timeout.reconciliation"]) + seconds(cm["timeout.reconciliation.jitter"]) <= 60
    assert "url" not in cm


def test_external_url_sets_url_and_webhook_secret(program: Callable[..., Run]) -> None:
    run = program(
        {
            "argocdExternalUrl": "https://argocd.example.com/",
            "gitlabSshKnownHosts": json.dumps(
                ["[gitlab.internal]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAfuCHKVTjquxvt6CM6tdG4SLp1Btn/nOeHHE5UOzRdf"]
            ),
        }
    )
    assert run.error is None, run.error
    assert run.named("argocd-cm")["inputs"]["data"]["url"] == "https://argocd.example.com"
    known = run.named("argocd-ssh-known-hosts-cm")["inputs"]["data"]["ssh_known_hosts"]
    assert "[gitlab.internal]:2222 ssh-ed25519" in known and "github.com ssh-ed25519" in known
    secret = run.named("argocd-secret")
    assert secret["secret_paths"]
    value = base64.b64decode(secret["inputs"]["data"]["webhook.gitlab.secret"]).decode()
    hook = run.named("argocd-webhook")["inputs"]
    assert hook["token"] == value and len(value) >= 32
    assert hook["url"] == "https://argocd.example.com/api/webhook"
    assert hook["enableSslVerification"] is True and hook["pushEvents"] is True
    # Only the webhook key is applied; keys Argo CD writes itself are left to it.
    assert set(secret["inputs"]["data"]) == {"webhook.gitlab.secret"}


def test_reconciliation_timeout_change_rolls_the_workloads_that_read_it(program: Callable[..., Run], dev: Run) -> None:
    changed = program({"argocdReconciliationTimeout": "300s"})
    assert changed.error is None, changed.error
    annotation = "gitops-bootstrap/argocd-cm-overlay"

    def pod_annotations(run: Run, name: str, kind: str) -> dict[str, str]:
        return run.named(name, kind)["inputs"]["spec"]["template"]["metadata"].get("annotations", {})

    for name, kind in (("argocd-repo-server", "Deployment"), ("argocd-application-controller", "StatefulSet")):
        before, after = pod_annotations(dev, name, kind), pod_annotations(changed, name, kind)
        assert before[annotation] != after[annotation]
    # Workloads that do not read the overlay are left alone.
    assert annotation not in pod_annotations(changed, "argocd-server", "Deployment")
    assert changed.named("argocd-cm")["inputs"]["data"]["timeout.reconciliation"] == "300s"


def test_server_side_apply_provider_for_every_kubernetes_resource(dev: Run) -> None:
    provider = dev.named("k8s", "providers:kubernetes")
    assert provider["inputs"]["enableServerSideApply"] == "true"
    for res in dev.resources:
        if res["custom"] and res["type"].startswith("kubernetes:"):
            assert res["provider"].startswith(provider["urn"]), res["urn"]


def test_crds_before_custom_resources_and_argocd_before_application(dev: Run) -> None:
    crds = {r["urn"] for r in dev.of_type("CustomResourceDefinition")}
    for res in install_objects(dev):
        if res["inputs"]["kind"] != "CustomResourceDefinition":
            assert crds <= set(res["dependencies"]), res["name"]
    app = dev.named("application")
    deps = set(app["dependencies"])
    install = {r["urn"] for r in dev.children(ARGO_PARENT) if r["custom"]}
    assert install <= deps, "the Application must wait for (and outlive) every Argo CD object"
    assert dev.named("app-namespace")["urn"] in deps
    assert app["parent"] == APP_PARENT


def test_config_keys_are_declared(dev: Run) -> None:
    from tests.tools import REPO_ROOT

    declared = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())["config"]
    reads = dev.report["config_reads"]
    read = {k.removeprefix("gitops-bootstrap:") for k in reads if k.startswith("gitops-bootstrap:")}
    assert read, "the program reads its config"
    assert read <= set(declared), f"undeclared keys read: {sorted(read - set(declared))}"
    # Beyond its own keys, only the GitLab provider's instance settings, each once.
    others = [k for k in reads if not k.startswith("gitops-bootstrap:")]
    assert sorted(others) == ["gitlab:baseUrl", "gitlab:cacertFile", "gitlab:insecure"]
    for key in (
        "argocdVersion",
        "argocdHa",
        "argocdNamespace",
        "argocdManifest",
        "argocdManifestSha256",
        "appNamespace",
        "appName",
    ):
        assert key in declared
    assert declared["dockerhubToken"].get("secret") is True
