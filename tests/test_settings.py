"""Settings validation and the verified manifest source, without Pulumi."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from components import manifest_source
from components.settings import KEYS, MASKABLE, SecretStr, SettingsError, docker_auth, parse_settings, undeclared_problems
from tests.conftest import TEST_DOCKERHUB_TOKEN, Run, base_config, shared_manifest
from tests.tools import REPO_ROOT, SHARED

# The keys the CLI hands over as secrets, as `pulumi config set --secret` leaves them.
SECRET = frozenset({"dockerhubToken"})


def valid() -> dict[str, str | None]:
    return dict(base_config("dev"))


def problems(raw: dict[str, str | None]) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        parse_settings(raw, "dev", secret_keys=SECRET)
    return info.value


def test_demo_stack_is_valid() -> None:
    settings = parse_settings(valid(), "dev", secret_keys=SECRET)
    assert settings.argocd.version == "v3.5.1" and settings.argocd.namespace == "argocd"
    assert settings.argocd.manifest_sha256 == manifest_source.KNOWN_SHA256[("v3.5.1", False)]
    # Derived from the user the README's set-up names, never pinned to someone else's.
    assert settings.apps[0].image_repository == "docker.io/gitopsdemo/webapp"
    assert settings.apps[0].merge_request_via == "push-options"
    assert settings.registry.token.reveal() == TEST_DOCKERHUB_TOKEN


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("argocdNamespace", "Argo_CD", "RFC 1123"),
        ("appNamespace", "-bad", "RFC 1123"),
        ("argocdVersion", "3.5.1", "vX.Y.Z"),
        ("argocdManifest", "http://mirror.example.com/install.yaml", "https"),
        ("argocdExternalUrl", "http://argocd.example.com", "https"),
        ("dockerhubToken", "", "required secret"),
        ("dockerhubToken", None, "required secret"),
        ("argocdReconciliationTimeout", "two minutes", "duration"),
        ("projectsOnDestroy", "nuke", "archive, retain, delete"),
        ("gitlabSshKnownHosts", '["not a host key"]', "known_hosts"),
        ("accessTokenExpiryDays", "5", "less than"),
        ("appName", "9lives", "start with a letter"),
        ("imageRepository", "docker.io/gitopsdemo/_web", "image repository"),
        ("imageRepository", "ghcr.io/gitopsdemo/webapp", "Docker Hub"),
        ("imageRepository", "docker.io/someoneelse/webapp", "neither"),
        ("buildCacheRepository", "docker.io/gitopsdemo/webapp", "other than imageRepository"),
        ("buildCacheRepository", "registry.gitlab.com/acme/app/cache:latest", "without a tag"),
        ("argocdNamespace", "", "must not be empty"),
        ("appName", " ", "must not be empty"),
        ("argocdHa", "", "must not be empty"),
        ("credentialsEpoch", "", "must not be empty"),
        ("dockerhubUser", "", "is required"),
        ("dockerhubUser", None, "is required"),
        ("gitlabSshKnownHosts", "[]", "is required"),
        ("dockerhubOrganization", "Acme Corp", "organisation name"),
    ],
)
def test_each_rule_names_key_rule_and_example(key: str, value: str | None, rule: str) -> None:
    raw = valid()
    raw[key] = value
    if key == "accessTokenExpiryDays":
        key = "accessTokenRotateBeforeDays"
    error = problems(raw)
    assert error.keys == [key]
    line = next(line for line in str(error).splitlines() if line.strip().startswith(f"- {key}:"))
    assert rule in line and "example:" in line


def test_unknown_version_needs_a_digest() -> None:
    raw = valid()
    raw.update(argocdVersion="v3.6.0", argocdManifest=None)
    error = problems(raw)
    assert error.keys == ["argocdManifestSha256"]
    assert "v3.6.0" in str(error) and "v3.5.1" in str(error)
    raw["argocdManifestSha256"] = "a" * 64
    assert parse_settings(raw, "dev", secret_keys=SECRET).argocd.manifest_sha256 == "a" * 64


def test_all_problems_are_reported_together() -> None:
    raw = valid()
    raw.update(argocdNamespace="BAD", argocdVersion="latest", dockerhubToken=" ")
    error = problems(raw)
    assert set(error.keys) >= {"argocdNamespace", "argocdVersion", "dockerhubToken"}


def test_errors_never_show_the_secret() -> None:
    raw = valid()
    raw.update(dockerhubToken="dckr_pat has spaces", argocdNamespace="BAD")
    assert "has spaces" not in str(problems(raw))
    assert "dckr" not in repr(SecretStr("dckr_pat_x"))


def test_masking_rule_matches_gitlab() -> None:
    assert MASKABLE.match(docker_auth("gitopsdemo", TEST_DOCKERHUB_TOKEN))
    assert MASKABLE.match("glpat-AbCdEfGhIjKlMnOpQrSt")
    for bad in ("short", "has space inside", "multi\nline-value", "dollar$sign$here"):
        assert not MASKABLE.match(bad)


def test_declared_keys_match_pulumi_yaml() -> None:
    declared = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())["config"]
    assert set(declared) == {k.name for k in KEYS}
    for key in KEYS:
        spec = declared[key.name]
        assert spec["type"] == key.type and spec["description"]
        assert spec.get("default") == key.default
        # Only a required secret is declared `secret: true`; it can have no default.
        assert bool(spec.get("secret")) == key.declared_secret
        if spec.get("secret"):
            assert "default" not in spec


def test_pinned_digests_match_shared_readmes() -> None:
    readmes = sorted((SHARED / "upstream" / "argo-cd").glob("*/README.txt"))
    if not readmes:
        pytest.skip("../shared is absent; digests are checked against the pinned URL by the program tests")
    for readme in readmes:
        version = readme.parent.name
        digests = re.findall(r"sha256\s*:\s*([0-9a-f]{64})", readme.read_text())
        assert digests == [manifest_source.KNOWN_SHA256[(version, False)], manifest_source.KNOWN_SHA256[(version, True)]]
        for ha in (False, True):
            path = shared_manifest(version, ha)
            assert path is not None
            assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest_source.KNOWN_SHA256[(version, ha)]


def test_download_is_verified_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = shared_manifest("v3.5.1")
    data = mirror.read_bytes() if mirror else manifest_source._download(manifest_source.upstream_url("v3.5.1", False))
    calls: list[str] = []

    def fake_download(url: str) -> bytes:
        calls.append(url)
        return data

    monkeypatch.setenv("GITOPS_BOOTSTRAP_CACHE", str(tmp_path))
    monkeypatch.setattr(manifest_source, "_download", fake_download)
    url = manifest_source.upstream_url("v3.5.1", False)
    sha = manifest_source.KNOWN_SHA256[("v3.5.1", False)]
    assert manifest_source.read_manifest(url, sha) == data
    assert manifest_source.read_manifest(url, sha) == data
    assert calls == [url], "the second read must come from the cache"
    assert (tmp_path / f"{sha}.yaml").is_file()
    with pytest.raises(manifest_source.ManifestError, match="checksum mismatch"):
        manifest_source.read_manifest("https://example.com/other.yaml", "0" * 64)


def test_checksum_mismatch_registers_nothing(program: Callable[..., Run], tmp_path: Path) -> None:
    run = program({"argocdManifestSha256": "0" * 64, "argocdVersion": "v3.5.1"})
    assert run.error is not None
    assert "checksum mismatch" in run.error["message"]
    assert run.resources == [] and run.report["invokes"] == []


def test_unknown_version_registers_nothing(program: Callable[..., Run]) -> None:
    run = program({"argocdVersion": "v9.9.9", "argocdManifest": None})
    assert run.error is not None
    assert "argocdManifestSha256" in run.error["message"] and "v9.9.9" in run.error["message"]
    assert run.resources == []


def test_bad_config_registers_nothing(program: Callable[..., Run]) -> None:
    run = program({"appNamespace": "Gitops Demo", "dockerhubToken": None})
    assert run.error is not None
    assert "appNamespace" in run.error["message"] and "dockerhubToken" in run.error["message"]
    assert run.resources == []


def test_an_undeclared_key_is_refused_with_the_nearest_setting(program: Callable[..., Run]) -> None:
    run = program(
        {"appNmae": "shop", "argocdExternalURL": "https://argocd.example.com", "zzzqqq": "1", "appNamespace": "Bad Name"}
    )
    assert run.error is not None and run.resources == []
    message = run.error["message"]
    # One message for every bad key, declared or not.
    assert "appNmae: is not a setting of this program; did you mean `appName`?" in message
    assert "argocdExternalURL: is not a setting of this program; did you mean `argocdExternalUrl`?" in message
    assert "zzzqqq: is not a setting of this program (example: (remove it: `pulumi config rm KEY`))" in message
    assert "appNamespace:" in message
    # Other namespaces belong to their providers.
    fine = program({"kubernetes:suppressHelmHookWarnings": "true", "pulumi:tags": "{}"})
    assert fine.error is None, fine.error


def test_undeclared_keys_outside_this_project_are_left_alone() -> None:
    found = undeclared_problems(
        {"gitops-bootstrap:appName", "gitops-bootstrap:appNmae", "gitlab:tokn", "other:x"}, "gitops-bootstrap"
    )
    assert [(p.key, p.example) for p in found] == [("appNmae", "appName")]


def test_a_misspelt_app_field_gets_a_suggestion() -> None:
    raw = valid()
    raw["apps"] = '[{"name": "orders", "namspace": "orders"}]'
    found = problems(raw)
    assert found.keys == ["apps[0].namspace"]
    assert "did you mean `namespace`?" in str(found)


def test_the_build_check_never_shares_the_build_runners() -> None:
    raw = valid()
    raw.update(buildRunnerTags='["buildkit", "protected"]', buildCheckRunnerTags='["buildkit"]')
    found = problems(raw)
    assert found.keys == ["buildCheckRunnerTags"]
    assert "subset of buildRunnerTags" in str(found) and '["buildkit-untrusted"]' in str(found)
    raw.update(buildCheckRunnerTags='["buildkit-untrusted"]')
    settings = parse_settings(raw, "dev", secret_keys=SECRET)
    assert settings.apps[0].build_runner_tags == ("buildkit", "protected")
    assert settings.apps[0].build_check_runner_tags == ("buildkit-untrusted",)


def test_adopting_one_project_for_both_roles_is_rejected() -> None:
    raw = valid()
    raw.update(adoptAppProject="acme/webapp", adoptManifestProject="acme/webapp")
    assert problems(raw).keys == ["adoptManifestProject"]


def test_empty_means_unset_for_optional_keys_only() -> None:
    optional = [k.name for k in KEYS if k.optional]
    assert set(optional) >= {"argocdExternalUrl", "kubeContext", "gitlabGroup", "adoptAppProject", "imageRepository"}
    raw = valid()
    raw.update({name: "" for name in optional if name not in ("dockerhubUser", "gitlabSshKnownHosts")})
    settings = parse_settings(raw, "dev", secret_keys=SECRET)
    assert settings.argocd.external_url is None and settings.kube_context is None and settings.gitlab.group is None
    assert not settings.apps[0].app_project.adopted
    # Keys whose meaning needs a value: every one refuses "" and names itself.
    for key in KEYS:
        if key.optional or key.default is None:
            continue
        raw = valid()
        raw[key.name] = ""
        assert problems(raw).keys == [key.name], key.name


def test_a_secret_set_in_plain_text_is_refused() -> None:
    # `pulumi config set dockerhubToken …` without --secret: the value is not a secret to the
    # program, so it is refused before anything could carry it in plain text.
    error = problems_with(valid(), secret_keys=frozenset())
    assert error.keys == ["dockerhubToken"] and "--secret" in str(error)
    assert TEST_DOCKERHUB_TOKEN not in str(error)


def problems_with(raw: dict[str, str | None], **kwargs: object) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        parse_settings(raw, "dev", **kwargs)  # type: ignore[arg-type]
    return info.value


def test_an_organisation_owns_the_image_only_when_named() -> None:
    raw = valid()
    raw.update(imageRepository="docker.io/acmecorp/webapp")
    assert problems(raw).keys == ["imageRepository"]
    raw.update(dockerhubOrganization="acmecorp")
    assert parse_settings(raw, "dev", secret_keys=SECRET).apps[0].image_repository == "docker.io/acmecorp/webapp"
    raw.update(imageRepository="")
    assert parse_settings(raw, "dev", secret_keys=SECRET).apps[0].image_repository == "docker.io/acmecorp/webapp"


def test_kube_context_must_exist_in_the_kubeconfig(tmp_path: Path) -> None:
    from components.kubeconfig import read_contexts
    from tests.conftest import write_kubeconfig

    first = write_kubeconfig(tmp_path / "a", ("kind-gitops",))
    second = write_kubeconfig(tmp_path / "b", ("k3d-gitops", "kind-gitops"))
    found = read_contexts({"KUBECONFIG": f"{first}:{second}:{tmp_path / 'missing'}"}, tmp_path)
    assert found.names == ("kind-gitops", "k3d-gitops")
    assert read_contexts({}, tmp_path).source == str(tmp_path / ".kube" / "config")
    assert read_contexts({}, tmp_path).names == ()

    raw = valid()
    assert parse_settings(raw, "dev", secret_keys=SECRET, kube_contexts=found).kube_context == "kind-gitops"
    raw["kubeContext"] = "kind-other"
    error = problems_with(raw, secret_keys=SECRET, kube_contexts=found)
    assert error.keys == ["kubeContext"]
    assert "kind-gitops, k3d-gitops" in str(error) and str(first) in str(error)
    empty = problems_with(raw, secret_keys=SECRET, kube_contexts=read_contexts({}, tmp_path))
    assert "contexts there: none" in str(empty)


def test_bad_kube_context_registers_nothing(program: Callable[..., Run]) -> None:
    run = program({"kubeContext": "kind-typo"})
    assert run.error is not None and "kubeContext" in run.error["message"]
    assert "kind-gitops, prod-cluster" in run.error["message"]
    assert run.resources == []


def test_build_cache_repository_defaults_to_the_project_registry() -> None:
    assert parse_settings(valid(), "dev", secret_keys=SECRET).apps[0].cache_repository == ""
    for value in ("off", "registry.gitlab.com/acme/gitops-demo-app/buildcache"):
        settings = parse_settings({**valid(), "buildCacheRepository": value}, "dev", secret_keys=SECRET)
        assert settings.apps[0].cache_repository == value
