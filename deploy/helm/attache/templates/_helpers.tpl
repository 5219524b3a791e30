{{/*
Labels of every object: the kustomize base's app.kubernetes.io/part-of plus
Helm's own. Pod templates and selectors carry only the base's labels, so an
upgrade of the chart alone never rolls the pods.
*/}}
{{- define "attache.labels" -}}
app.kubernetes.io/part-of: attache
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* The image of both Deployments. */}}
{{- define "attache.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* Settings that values.schema.json cannot check across keys. */}}
{{- define "attache.validate" -}}
{{- if and (eq .Values.ca.mode "dir") (not .Values.ca.volume) -}}
{{- fail "ca.mode=dir needs ca.volume: the volume holding ca.pem and ca-key.pem, e.g. {secret: {secretName: my-ca}}" -}}
{{- end -}}
{{- if and (eq .Values.ca.mode "dir") .Values.ecrController.enabled -}}
{{- fail "ca.mode=dir needs ecrController.enabled=false: the ECR controller reads the CA only from the Secret attache-ca (attache-broker ecr-controller has no --ca-dir)" -}}
{{- end -}}
{{- end }}
