{{- define "starter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name, cut to the 63 characters a DNS label allows. */}}
{{- define "starter.fullname" -}}
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
{{- define "starter.imageTag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The image reference: repository:tag, plus @digest when one is known. The digest CI recorded
in Chart.yaml's annotations belongs to appVersion's tag, so a tag set in values drops it.
*/}}
{{- define "starter.image" -}}
{{- $digest := .Values.image.digest }}
{{- if and (not $digest) (not .Values.image.tag) .Chart.Annotations }}
{{- $digest = index .Chart.Annotations "gitops-bootstrap/image-digest" }}
{{- end }}
{{- if $digest }}
{{- printf "%s:%s@%s" .Values.image.repository (include "starter.imageTag" .) $digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "starter.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "starter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "starter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "starter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "starter.selectorLabels" . }}
app.kubernetes.io/version: {{ include "starter.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
