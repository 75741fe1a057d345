"""Starter Helm chart for the manifest project that Argo CD deploys.

The app pipeline releases a new image by rewriting the single top-level
``appVersion: "<tag>"`` line of Chart.yaml; the Deployment's image tag
follows ``.Chart.AppVersion`` unless ``image.tag`` is set in values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

CHART_VERSION = "0.1.0"
# The seeded appVersion: no image has been built yet. While Chart.yaml still says this (and
# values set no tag), the Deployment runs no pods, so the first sync is Synced and Healthy
# instead of an ImagePullBackOff; CI's first bump starts them.
UNRELEASED = "unreleased"

# DNS-1035 label (the Service name must be one); 53 leaves room for a release-name prefix.
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,51}[a-z0-9])?$")
# Registry host (optional port) and path components, without a tag or digest.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*$")
# An OCI tag; it also keeps the CI job's sed replacement free of `/`, `&` and quotes.
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ChartSpec:
    """What varies between starter charts: the app's name, image and runtime shape."""

    name: str
    image_repository: str
    app_version: str = UNRELEASED
    container_port: int = 8080
    replicas: int = 1
    health_path: str = "/"

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"chart name {self.name!r} must be a DNS-1035 label of at most 53 characters")
        if not _REPOSITORY_RE.fullmatch(self.image_repository):
            raise ValueError(f"image repository {self.image_repository!r} must be a registry path without tag or digest")
        if not _TAG_RE.fullmatch(self.app_version):
            raise ValueError(f"app version {self.app_version!r} is not a valid image tag")
        if not 1 <= self.container_port <= 65535:
            raise ValueError(f"container port {self.container_port} is out of range")
        if self.replicas < 0:
            raise ValueError(f"replicas {self.replicas} must not be negative")
        if not self.health_path.startswith("/") or any(c.isspace() for c in self.health_path):
            raise ValueError(f"health path {self.health_path!r} must be an absolute URL path")


class _Quoted(str):
    """A string PyYAML writes double-quoted."""


class _ChartDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        # Shared sub-dicts (the probes' httpGet) stay written out in full, not as &id001 anchors.
        return True


_ChartDumper.add_representer(
    _Quoted,
    lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style='"'),
)


def _dump(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_ChartDumper, sort_keys=False, default_flow_style=False)


def _chart_yaml(spec: ChartSpec) -> str:
    return _dump(
        {
            "apiVersion": "v2",
            "name": spec.name,
            "description": f"Helm chart for {spec.name}, deployed by Argo CD",
            "type": "application",
            "version": CHART_VERSION,
            # Quoted so that tags like 1.10 stay strings; the pipeline's sed rewrites this line.
            "appVersion": _Quoted(spec.app_version),
        }
    )


def _values_yaml(spec: ChartSpec) -> str:
    probe = {"httpGet": {"path": spec.health_path, "port": "http"}}
    return _dump(
        {
            "replicaCount": spec.replicas,
            "image": {
                "repository": spec.image_repository,
                # Empty: the tag comes from Chart.yaml's appVersion, which CI bumps.
                "tag": "",
                "pullPolicy": "IfNotPresent",
            },
            "imagePullSecrets": [],
            "nameOverride": "",
            "fullnameOverride": "",
            "podAnnotations": {},
            "containerPort": spec.container_port,
            "service": {"type": "ClusterIP", "port": 80},
            "podSecurityContext": {
                # A numeric UID lets the kubelet enforce runAsNonRoot for images whose USER is a name.
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "readinessProbe": {
                **probe,
                "initialDelaySeconds": 5,
                "periodSeconds": 10,
                "failureThreshold": 3,
            },
            "livenessProbe": {
                **probe,
                "initialDelaySeconds": 15,
                "periodSeconds": 20,
                "failureThreshold": 3,
            },
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
        }
    )


_HELPERS_TPL = """\
{{- define "NAME.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name, cut to the 63 characters a DNS label allows. */}}
{{- define "NAME.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The image tag: values override, else the appVersion that CI bumps. */}}
{{- define "NAME.imageTag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "NAME.selectorLabels" -}}
app.kubernetes.io/name: {{ include "NAME.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "NAME.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "NAME.selectorLabels" . }}
app.kubernetes.io/version: {{ include "NAME.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
"""

_DEPLOYMENT_YAML = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "NAME.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "NAME.labels" . | nindent 4 }}
spec:
  {{- if and (eq .Chart.AppVersion "unreleased") (not .Values.image.tag) }}
  # No image yet: the pipeline's first bump of appVersion starts the pods.
  replicas: 0
  {{- else }}
  replicas: {{ .Values.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "NAME.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      {{- with .Values.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      labels:
        {{- include "NAME.labels" . | nindent 8 }}
    spec:
      automountServiceAccountToken: false
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .Chart.Name }}
          image: "{{ .Values.image.repository }}:{{ include "NAME.imageTag" . }}"
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          ports:
            - name: http
              containerPort: {{ .Values.containerPort }}
              protocol: TCP
          readinessProbe:
            {{- toYaml .Values.readinessProbe | nindent 12 }}
          livenessProbe:
            {{- toYaml .Values.livenessProbe | nindent 12 }}
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          securityContext:
            {{- toYaml .Values.securityContext | nindent 12 }}
          volumeMounts:
            # Writable scratch space, since the root filesystem is read-only.
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir: {}
"""

_SERVICE_YAML = """\
apiVersion: v1
kind: Service
metadata:
  name: {{ include "NAME.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "NAME.labels" . | nindent 4 }}
spec:
  type: {{ .Values.service.type }}
  selector:
    {{- include "NAME.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ .Values.service.port }}
      targetPort: http
      protocol: TCP
"""

_HELMIGNORE = """\
.git/
.gitignore
.gitlab-ci.yml
*.swp
*.bak
*.tmp
*.orig
*~
.DS_Store
.idea/
.vscode/
"""


def render_chart(spec: ChartSpec) -> dict[str, str]:
    """The chart's files, keyed by path relative to the chart directory."""

    # Helper names carry the chart name, as Helm expects, so they cannot clash with a subchart's.
    def templated(text: str) -> str:
        return text.replace('"NAME.', f'"{spec.name}.')

    return {
        "Chart.yaml": _chart_yaml(spec),
        "values.yaml": _values_yaml(spec),
        ".helmignore": _HELMIGNORE,
        "templates/_helpers.tpl": templated(_HELPERS_TPL),
        "templates/deployment.yaml": templated(_DEPLOYMENT_YAML),
        "templates/service.yaml": templated(_SERVICE_YAML),
    }
