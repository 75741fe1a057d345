"""A self-managed GitLab with its own CA: Argo CD trusts it for deploy feedback, by the host's name.

A real CA signs a loopback HTTPS stand-in for GitLab's commit status API; the program's
`argocd-tls-certs-cm` entry is mounted as Argo CD mounts it, resolved the way argo-cd's
`GetCertificateForConnect` resolves it (the file named after the host without its port), and
used as the only roots, as notifications-engine's transport uses them. The rendered notification
request goes through with that entry and fails without it.
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import ipaddress
import json
import re
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from components.argocd_manifest import Overlays, prepare_objects
from components.gitlab_ca import CA_KEY, CaError, ca_bundle, read_ca_bundle, tls_certs_key
from components.notifications import GITLAB_SERVICE, GITLAB_TOKEN_KEY, TRIGGERS, template_name
from tests.conftest import Run
from tests.test_notifications import ARGOCD_URL, notifications_cm, render_template, sample_application

STATUS_TOKEN = "glpat-StatusOnlyToken-4kd9"
HOST = "localhost"


# --------------------------------------------------------------------------- a real CA


@dataclass
class Pki:
    ca_pem: str
    cert_file: Path
    key_file: Path


def make_pki(root: Path, name: str, host: str = HOST) -> Pki:
    """A CA and a server certificate for ``host`` (and 127.0.0.1) that it signs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    root.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = root / f"{name}-server.pem", root / f"{name}-server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Pki(ca.public_bytes(serialization.Encoding.PEM).decode(), cert_file, key_file)


@dataclass
class HttpsStatusApi:
    """GitLab's POST /projects/:id/statuses/:sha over HTTPS, with a certificate the test CA signed."""

    port: int = 0
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
def https_api(tmp_path: Path) -> Iterator[tuple[HttpsStatusApi, Pki]]:
    pki = make_pki(tmp_path / "pki", "gitlab")
    api = HttpsStatusApi()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            api.received.append((self.path, body))
            ok = re.fullmatch(r"/api/v4/projects/\d+/statuses/[0-9a-f]{40}", self.path) and (
                self.headers.get("PRIVATE-TOKEN") == STATUS_TOKEN
            )
            self.send_response(201 if ok else 400)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    api.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield api, pki
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------- pure


def test_the_key_is_the_host_as_argo_cd_looks_it_up() -> None:
    # util/cert ServerNameWithoutPort: strings.Split(serverName, ":")[0]; the case is kept.
    assert tls_certs_key("https://gitlab.example.com/api/v4") == "gitlab.example.com"
    assert tls_certs_key("https://GitLab.Example.com:8443/api/v4") == "GitLab.Example.com"
    assert tls_certs_key("https://user:pw@gitlab.example.com:8443/api/v4") == "gitlab.example.com"
    with pytest.raises(CaError, match="gitlab:baseUrl"):
        tls_certs_key("https://[::1]:8443/api/v4")


def test_the_bundle_keeps_every_certificate_and_refuses_what_argo_cd_cannot_read(tmp_path: Path) -> None:
    first, second = make_pki(tmp_path / "a", "a").ca_pem, make_pki(tmp_path / "b", "b").ca_pem
    bundle = ca_bundle("# comment\n" + first + "junk between\n" + second.replace("\n", "\r\n"), "ca.pem")
    assert bundle.count("-----BEGIN CERTIFICATE-----") == 2
    assert ssl.create_default_context(cadata=bundle).get_ca_certs()[0]["subject"]
    for text, says in (
        ("", "holds no PEM certificate"),
        ("-----BEGIN CERTIFICATE-----\nnot base64 !\n-----END CERTIFICATE-----\n", "not base64 (number 1)"),
    ):
        with pytest.raises(CaError) as raised:
            ca_bundle(text, "ca.pem")
        assert raised.value.problem.key == CA_KEY and says in raised.value.problem.rule
    with pytest.raises(CaError, match="cannot be read"):
        read_ca_bundle(str(tmp_path / "missing.pem"))


def test_only_the_program_s_key_is_sent_to_argocd_tls_certs_cm() -> None:
    upstream = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-tls-certs-cm"}, "data": {"other": "x"}}]
    bundle = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    prepared = prepare_objects(upstream, "argocd", Overlays(tls_certs=(("gitlab.example.com", bundle),)))
    assert prepared[0]["data"] == {"other": "x", "gitlab.example.com": bundle}
    assert upstream[0]["data"] == {"other": "x"}
    assert prepare_objects(upstream, "argocd", Overlays())[0]["data"] == {"other": "x"}


# --------------------------------------------------------------------------- the program


def tls_certs_cm(run: Run) -> dict[str, str]:
    data: dict[str, str] = run.named("argocd-tls-certs-cm")["inputs"].get("data") or {}
    return data


def test_no_ca_leaves_argocd_tls_certs_cm_as_upstream_has_it(dev: Run) -> None:
    assert tls_certs_cm(dev) == {}


def test_a_bad_ca_file_stops_the_program(program: Callable[..., Run], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for path in (junk, tmp_path / "missing.pem"):
        run = program({"gitlab:baseUrl": "https://gitlab.example.com/api/v4", "gitlab:cacertFile": str(path)})
        assert run.error is not None and run.resources == []
        assert CA_KEY in run.error["message"] and "nothing was changed" in run.error["message"]


def mounted_roots(mount: Path, service_url: str) -> str | None:
    """What argo-cd's GetCertificateForConnect finds under the volume mount for a service URL, or None."""
    host = urlsplit(service_url).netloc.split(":")[0]
    path = mount / host
    return path.read_text() if path.is_file() else None


def send_statuses(helm: ModuleType, tmp_path: Path, data: dict[str, str], mount: Path) -> list[int | str]:
    """Each trigger's commit status, rendered and POSTed as the notifications controller would send it."""
    service = yaml.safe_load(data[f"service.webhook.{GITLAB_SERVICE}"])
    secrets = {GITLAB_TOKEN_KEY: STATUS_TOKEN}
    headers = {h["name"]: re.sub(r"\$([\w-]+)", lambda m: secrets[m.group(1)], h["value"]) for h in service["headers"]}
    roots = mounted_roots(mount, service["url"])
    # notifications-engine: the resolved certificates become RootCAs; none found, the system roots.
    context = ssl.create_default_context(cadata=roots) if roots else ssl.create_default_context()
    results: list[int | str] = []
    for trigger in TRIGGERS:
        app = sample_application("0123456789abcdef0123456789abcdef01234567", "Succeeded", "Healthy")
        webhook = yaml.safe_load(data[f"template.{template_name(trigger)}"])["webhook"][GITLAB_SERVICE]
        path = render_template(helm, tmp_path, webhook["path"], app, {"argocdUrl": ARGOCD_URL})
        body = render_template(helm, tmp_path, webhook["body"], app, {"argocdUrl": ARGOCD_URL})
        target = urlsplit(service["url"] + path)
        connection = http.client.HTTPSConnection(target.hostname or "", target.port, context=context, timeout=10)
        try:
            connection.request("POST", target.path, body=body.encode(), headers=headers)
            results.append(connection.getresponse().status)
        except ssl.SSLError as exc:
            results.append(f"TLS: {exc.reason}")
        finally:
            connection.close()
    return results


def mount(root: Path, data: dict[str, str]) -> Path:
    """The ConfigMap as kubelet mounts it at /app/config/tls: one file per key."""
    root.mkdir()
    for key, value in data.items():
        (root / key).write_text(value)
    return root


def test_deploy_feedback_reaches_a_gitlab_with_its_own_ca(
    program: Callable[..., Run], helm: ModuleType, tmp_path: Path, https_api: tuple[HttpsStatusApi, Pki]
) -> None:
    api, pki = https_api
    ca_file = tmp_path / "gitlab-ca.pem"
    ca_file.write_text(pki.ca_pem)
    base_url = f"https://{HOST}:{api.port}/api/v4"
    with_ca = program({"gitlab:baseUrl": base_url, "gitlab:cacertFile": str(ca_file)})
    assert with_ca.error is None, with_ca.error
    # One key, the host without its port, holding the CA the provider was given.
    assert tls_certs_cm(with_ca) == {HOST: ca_bundle(pki.ca_pem, "ca")}
    sent = send_statuses(helm, tmp_path, notifications_cm(with_ca), mount(tmp_path / "tls", tls_certs_cm(with_ca)))
    assert sent == [201] * len(TRIGGERS)
    assert [body["state"] for _, body in api.received] == [t.state for t in TRIGGERS]

    # Without the entry the controller falls back to the system roots, which do not know this CA.
    received = len(api.received)
    without = program({"gitlab:baseUrl": base_url})
    assert tls_certs_cm(without) == {}
    failed = send_statuses(helm, tmp_path, notifications_cm(without), mount(tmp_path / "tls-none", {}))
    assert all(isinstance(result, str) and "CERTIFICATE_VERIFY_FAILED" in result for result in failed), failed
    # Nor does another CA for the same host: Argo CD's entry replaces the roots, so it must be this one.
    other = make_pki(tmp_path / "other", "other").ca_pem
    failed = send_statuses(helm, tmp_path, notifications_cm(with_ca), mount(tmp_path / "tls-other", {HOST: other}))
    assert all(isinstance(result, str) for result in failed), failed
    assert len(api.received) == received
