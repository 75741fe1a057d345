"""A self-managed GitLab's own CA, for Argo CD's TLS trust store (`argocd-tls-certs-cm`).

Pure code: no Pulumi. Argo CD's notifications controller (and repo-server, for HTTPS Git) trusts
the system roots, or, for a host that has a key in `argocd-tls-certs-cm`, only the certificates
under that key: argo-cd v3.5.1 `util/cert/cert.go` `GetCertificateForConnect` reads
`/app/config/tls/<host without port>`, and notifications-engine `pkg/util/http/transport.go`
sets them as the transport's `RootCAs` (a new pool, not added to the system's). So the key is
the host exactly as the service URL spells it, and its value is the whole CA bundle the
provider's `gitlab:cacertFile` names.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

from components.settings import Problem

CA_KEY = "gitlab:cacertFile"
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.S)
# ConfigMap data keys (k8s.io/apimachinery IsConfigMapKey).
_CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# Argo CD reads at most 256 certificates from one file (util/cert ParseTLSCertificatesFromStream).
MAX_CERTIFICATES = 256


class CaError(ValueError):
    """The configured CA bundle cannot serve Argo CD; carries the problem for the settings message."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(str(problem))


def tls_certs_key(api_url: str) -> str:
    """The `argocd-tls-certs-cm` key Argo CD looks up for ``api_url``: its host, without port, as spelt."""
    host = urlsplit(api_url).netloc.rsplit("@", 1)[-1].split(":")[0]
    if not _CONFIG_MAP_KEY.match(host):
        raise CaError(
            Problem(
                "gitlab:baseUrl",
                f"must name the GitLab host by a DNS name for Argo CD to find its CA ({host!r} cannot be a"
                " key of argocd-tls-certs-cm)",
                "https://gitlab.example.com/api/v4",
            )
        )
    return host


def ca_bundle(text: str, path: str) -> str:
    """The PEM certificates in ``text``, one after another, as Argo CD parses them; refuses anything else."""
    blocks = _PEM.findall(text)
    bad = [i for i, body in enumerate(blocks) if not _is_base64(body)]
    if not blocks or bad or len(blocks) > MAX_CERTIFICATES:
        reason = (
            "holds no PEM certificate"
            if not blocks
            else f"holds more than {MAX_CERTIFICATES} certificates"
            if len(blocks) > MAX_CERTIFICATES
            else f"has a certificate that is not base64 (number {bad[0] + 1})"
        )
        raise CaError(Problem(CA_KEY, f"{path} {reason}; it must be the CA bundle that signs the GitLab host", "ca.pem"))
    return "".join(f"-----BEGIN CERTIFICATE-----\n{_wrap(body)}-----END CERTIFICATE-----\n" for body in blocks)


def _is_base64(body: str) -> bool:
    try:
        base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return bool(body.strip())


def _wrap(body: str) -> str:
    joined = "".join(body.split())
    return "".join(joined[i : i + 64] + "\n" for i in range(0, len(joined), 64))


def read_ca_bundle(path: str) -> str:
    """The CA bundle at ``path`` (relative to the project directory, as the provider reads it)."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        raise CaError(Problem(CA_KEY, f"cannot be read: {exc.strerror or exc}", "ca.pem")) from None
    return ca_bundle(text, path)
