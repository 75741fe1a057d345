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

{{/* Replicas: none until CI's first release sets an image (appVersion "unreleased"). */}}
{{- define "starter.replicas" -}}
{{- if and (eq .Chart.AppVersion "unreleased") (not .Values.image.tag) }}0{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/* Refuses a strategy the chart does not know, so a typo never renders no workload at all. */}}
{{- define "starter.strategy" -}}
{{- if not (has .Values.strategy (list "rolling" "canary" "blueGreen")) }}
{{- fail (printf "strategy must be rolling, canary or blueGreen, not %q" .Values.strategy) }}
{{- end }}
{{- .Values.strategy }}
{{- end }}

{{/* The pod template, shared by the Deployment (rolling) and the Rollout (canary, blueGreen). */}}
{{- define "starter.podTemplate" -}}
metadata:
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  labels:
    {{- include "starter.labels" . | nindent 4 }}
spec:
  automountServiceAccountToken: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .Chart.Name }}
      image: {{ include "starter.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      ports:
        - name: http
          containerPort: {{ .Values.containerPort }}
          protocol: TCP
      readinessProbe:
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      livenessProbe:
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        # Writable scratch space, since the root filesystem is read-only.
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir: {}
{{- end }}
