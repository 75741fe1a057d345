"""The context names in the kubeconfig the Kubernetes provider will read.

Pure code: no Pulumi imports. The provider reads ``$KUBECONFIG`` (a list of files joined
with the OS path separator, merged) or ``~/.kube/config``, as kubectl does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from components.settings import KubeContexts


def kubeconfig_paths(env: Mapping[str, str], home: Path) -> list[Path]:
    """The kubeconfig files, in kubectl's merge order."""
    listed = env.get("KUBECONFIG", "")
    if listed.strip():
        return [Path(p).expanduser() for p in listed.split(os.pathsep) if p.strip()]
    return [home / ".kube" / "config"]


def read_contexts(env: Mapping[str, str], home: Path) -> KubeContexts:
    """Every context name defined in the kubeconfig files, first definition first."""
    paths = kubeconfig_paths(env, home)
    names: list[str] = []
    for path in paths:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            # A missing or unreadable file contributes nothing, as in kubectl's merge.
            continue
        contexts = doc.get("contexts") if isinstance(doc, dict) else None
        for entry in contexts or []:
            name = entry.get("name") if isinstance(entry, dict) else None
            if isinstance(name, str) and name not in names:
                names.append(name)
    return KubeContexts(names=tuple(names), source=os.pathsep.join(str(p) for p in paths))
