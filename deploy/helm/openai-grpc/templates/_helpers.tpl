{{- define "openai-grpc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "openai-grpc.fullname" -}}
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

{{- define "openai-grpc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openai-grpc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "openai-grpc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "openai-grpc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* A setting's value as an environment variable: YAML numbers arrive as float64, and
     1000000 must not become "1e+06". */}}
{{- define "openai-grpc.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}{{ int64 . | toString | quote }}
{{- else if kindIs "slice" . }}{{ join "," . | quote }}
{{- else }}{{ toString . | quote }}
{{- end }}
{{- end }}

{{/* The setting names whose variables do not follow OPENAI_GRPC_<KEY> (README "Configuration"). */}}
{{- define "openai-grpc.envName" -}}
{{- $special := dict "base_url" "OPENAI_BASE_URL" "organization" "OPENAI_ORG_ID" "project" "OPENAI_PROJECT_ID" }}
{{- get $special . | default (printf "OPENAI_GRPC_%s" (upper .)) }}
{{- end }}

{{- define "openai-grpc.graceSeconds" -}}
{{- $grace := 20.0 }}
{{- if hasKey .Values.config "grace_seconds" }}{{ $grace = .Values.config.grace_seconds }}{{ end }}
{{- add (int .Values.preStopSleepSeconds) (ceil $grace | int) 5 }}
{{- end }}
