{{- define "edgefleet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "edgefleet.vllmImage" -}}
{{ .Values.vllmImage.repository }}:{{ .Values.vllmImage.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "edgefleet.routerClusterRole" -}}
{{ include "edgefleet.fullname" . }}-router
{{- end }}

{{- define "edgefleet.calibrationImage" -}}
{{ .Values.calibrationImage.repository }}:{{ .Values.calibrationImage.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "edgefleet.calibrationClusterRole" -}}
{{ include "edgefleet.fullname" . }}-calibration
{{- end }}
