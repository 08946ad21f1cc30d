{{- define "edgefleet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "edgefleet.vllmImage" -}}
{{ .Values.vllmImage.repository }}:{{ .Values.vllmImage.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "edgefleet.routerClusterRole" -}}
{{ include "edgefleet.fullname" . }}-router
{{- end }}
