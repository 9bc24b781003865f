{{/*
Names and labels shared by every template. The selector labels are fixed (not derived from
nameOverride): `podflow tui --kubernetes` finds agents with exactly these.
*/}}

{{- define "podflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 57 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 57 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "podflow.agentName" -}}
{{- printf "%s-agent" (include "podflow.fullname" .) -}}
{{- end -}}

{{- define "podflow.selectorLabels" -}}
app.kubernetes.io/name: podflow
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "podflow.labels" -}}
{{ include "podflow.selectorLabels" . }}
app.kubernetes.io/part-of: podflow
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The same labels for what belongs to the TUI's users, not to the agents. */}}
{{- define "podflow.tuiLabels" -}}
app.kubernetes.io/name: podflow
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: tui
app.kubernetes.io/part-of: podflow
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "podflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Port the kubelet's gRPC probes use: the Observer port, or the plaintext health port
when the Observer port speaks TLS. */}}
{{- define "podflow.probePort" -}}
{{- if .Values.tls.enabled -}}{{ .Values.ports.health }}{{- else -}}{{ .Values.ports.grpc }}{{- end -}}
{{- end -}}
