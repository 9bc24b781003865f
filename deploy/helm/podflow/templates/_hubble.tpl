{{/*
Names and labels of the Hubble pieces: the agents' peer Service and the optional Hubble Relay
and Hubble UI. Their pods carry their own app.kubernetes.io/name, never the agents' selector
labels, so neither the agents' Service nor their peer list ever selects them.
*/}}

{{- define "podflow.hubblePeerPort" -}}
{{- if .Values.tls.enabled -}}443{{- else -}}80{{- end -}}
{{- end -}}

{{- /* (list $ "hubble-relay") */}}
{{- define "podflow.hubbleSelectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
{{- end -}}

{{- define "podflow.hubbleLabels" -}}
{{- $root := index . 0 -}}
{{ include "podflow.hubbleSelectorLabels" . }}
app.kubernetes.io/part-of: podflow
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- /* Hubble UI's nginx: the app's files, and /api (the backend's streams) passed to the
backend in the same pod. */}}
{{- define "podflow.hubbleUiNginx" -}}
server {
  listen 8081;
  listen [::]:8081;
  root /app;
  index index.html;
  location /api {
    proxy_http_version 1.1;
    proxy_pass_request_headers on;
    proxy_buffering off;
    proxy_read_timeout 1h;
    proxy_pass http://127.0.0.1:8090;
  }
  location / {
    try_files $uri $uri/ /index.html;
  }
}
{{- end -}}
