{{/*
Expand the name of the chart.
*/}}
{{- define "hybrid-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "hybrid-router.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "hybrid-router.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "hybrid-router.labels" -}}
helm.sh/chart: {{ include "hybrid-router.chart" . }}
{{ include "hybrid-router.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "hybrid-router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hybrid-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "hybrid-router.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hybrid-router.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The mode, checked: standalone or sidecar.
*/}}
{{- define "hybrid-router.mode" -}}
{{- if not (has .Values.mode (list "standalone" "sidecar")) }}
{{- fail (printf "mode must be standalone or sidecar, not %v" .Values.mode) }}
{{- end }}
{{- .Values.mode }}
{{- end }}

{{/*
The Secret the gateway's env comes from: the user's, or the chart's.
*/}}
{{- define "hybrid-router.secretName" -}}
{{- default (include "hybrid-router.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
The address the gateway listens on: every interface for a shared gateway, loopback beside an app.
*/}}
{{- define "hybrid-router.listenHost" -}}
{{- if .Values.gateway.listenHost }}
{{- .Values.gateway.listenHost }}
{{- else if eq (include "hybrid-router.mode" .) "sidecar" }}
{{- "127.0.0.1" }}
{{- else }}
{{- "0.0.0.0" }}
{{- end }}
{{- end }}

{{/*
The env var that holds plain client keys (config.auth.api_keys_env).
*/}}
{{- define "hybrid-router.apiKeysEnv" -}}
{{- dig "auth" "api_keys_env" "HYBRID_ROUTER_API_KEYS" .Values.config }}
{{- end }}

{{/*
"true" when the config itself admits callers: key hashes, keyed tenants, or allow_unauthenticated.
*/}}
{{- define "hybrid-router.configHasKeys" -}}
{{- $auth := .Values.config.auth | default dict }}
{{- if or $auth.api_key_hashes $auth.keys $auth.allow_unauthenticated }}true{{ end }}
{{- end }}

{{/*
A gateway probe: a GET from inside the container in sidecar mode (the kubelet cannot reach a loopback
listener), else an httpGet on the gateway's port. Called with (list $ .Values.probes.NAME).
*/}}
{{- define "hybrid-router.probe" -}}
{{- $root := index . 0 }}
{{- $probe := index . 1 }}
{{- if eq (include "hybrid-router.mode" $root) "sidecar" }}
exec:
  command:
    - python
    - -c
    - import urllib.request as u; u.urlopen('http://127.0.0.1:{{ $root.Values.gateway.port }}{{ $probe.path }}', timeout=2)
{{- else }}
httpGet:
  path: {{ $probe.path }}
  port: http
{{- end }}
{{ toYaml (omit $probe "path") }}
{{- end }}

{{/*
Pod topology spread constraints, each with the chart's selector labels unless it has a labelSelector.
*/}}
{{- define "hybrid-router.topologySpreadConstraints" -}}
{{- $constraints := list }}
{{- range .Values.topologySpreadConstraints }}
{{- $constraint := deepCopy . }}
{{- if not $constraint.labelSelector }}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" (include "hybrid-router.selectorLabels" $ | fromYaml)) }}
{{- end }}
{{- $constraints = append $constraints $constraint }}
{{- end }}
{{- toYaml $constraints }}
{{- end }}
