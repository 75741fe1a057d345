"""Fetching, verifying, caching and parsing Argo CD's upstream install manifest.

Pure code: no Pulumi imports. A manifest is only ever used after its sha256 matched
the pinned or configured digest, so a tampered mirror or a moved tag stops the program.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import yaml

try:  # The C loader parses the 1.9 MB manifest in a fraction of the pure-Python time.
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

UPSTREAM = "https://raw.githubusercontent.com/argoproj/argo-cd/{version}/manifests/{path}"

# sha256 of manifests/install.yaml and manifests/ha/install.yaml per release tag.
KNOWN_SHA256: dict[tuple[str, bool], str] = {
    ("v3.5.1", False): "795a3a972224da6a7f9d32c3e946445f062b60fb46028476715affeb688236e3",
    ("v3.5.1", True): "1d7b6baa0769ff8a5757c61e2c677ae0939a15e86e149f64df6b12435db5c4b2",
    ("v3.4.7", False): "11016889371e4b1e3754b7ba2494b36ab1111338bd2362d499abe3ff2f63c906",
    ("v3.4.7", True): "e7290b677c7453e6346eeee774c1e947b7e7f04cba315734423dbc0d53b7fc5b",
}

DOWNLOAD_TIMEOUT_SECONDS = 60


class ManifestError(RuntimeError):
    """The manifest could not be fetched, or its digest does not match."""


def known_sha256(version: str, ha: bool) -> str | None:
    """The pinned digest of a release's manifest, or None for an unknown release."""
    return KNOWN_SHA256.get((version, ha))


def known_versions() -> list[str]:
    """Release tags with pinned digests, newest first."""
    return sorted({v for v, _ in KNOWN_SHA256}, reverse=True)


def upstream_path(ha: bool) -> str:
    """The manifest's path inside the Argo CD repository."""
    return "ha/install.yaml" if ha else "install.yaml"


def upstream_url(version: str, ha: bool) -> str:
    """The pinned upstream URL of a release's manifest."""
    return UPSTREAM.format(version=version, path=upstream_path(ha))


def cache_dir() -> Path:
    """Where verified downloads are kept, keyed by digest."""
    override = os.environ.get("GITOPS_BOOTSTRAP_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gitops-bootstrap" / "argo-cd"


def _verify(data: bytes, expected: str, source: str, key: str) -> bytes:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        fix = "set argocdManifestSha256 to the digest of a release you trust" if key == "argocdManifest" else f"fix {key}"
        raise ManifestError(
            f"checksum mismatch for {source}: expected sha256 {expected}, got {actual}. "
            f"The file is not the pinned release; check the mirror or {fix}."
        )
    return data


def _download(url: str) -> bytes:
    if not url.startswith("https://"):
        raise ManifestError(f"refusing to download {url}: only https:// URLs are allowed")
    request = urllib.request.Request(url, headers={"User-Agent": "gitops-bootstrap"})  # noqa: S310 - checked above
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:  # noqa: S310 - checked above
            data: bytes = response.read()
            return data
    except OSError as exc:
        raise ManifestError(f"could not download {url}: {exc}") from exc


def read_manifest(source: str, sha256: str, key: str = "argocdManifest") -> bytes:
    """The verified bytes of a manifest from a local path or an https URL.

    Downloads are cached by digest, so a second run makes no network request.
    """
    if not source.startswith("https://"):
        path = Path(source).expanduser()
        try:
            return _verify(path.read_bytes(), sha256, str(path), key)
        except FileNotFoundError as exc:
            raise ManifestError(f"{key} {path} does not exist") from exc
    cached = cache_dir() / f"{sha256}.yaml"
    if cached.is_file():
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha256:
            return data
    data = _verify(_download(source), sha256, source, key)
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a crash never leaves a half-written file under a digest name.
    with tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, cached)
    return data


def parse_manifest(data: bytes) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a manifest, in file order."""
    return [doc for doc in yaml.load_all(data, Loader=_Loader) if doc]


def load_manifest(source: str, sha256: str, key: str = "argocdManifest") -> list[dict[str, Any]]:
    """Read, verify and parse a manifest; ``key`` is the setting that names its source, for errors."""
    return parse_manifest(read_manifest(source, sha256, key))
