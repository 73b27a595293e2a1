{{/*
Name of the chart, overridable with nameOverride.
*/}}
{{- define "flotilla.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every object: fullnameOverride, else the release name when it already
contains the chart name, else <release>-<chart>. Truncated to 63 characters (DNS label).
*/}}
{{- define "flotilla.fullname" -}}
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
helm.sh/chart label value.
*/}}
{{- define "flotilla.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator pods. Never change these in an upgrade: a Deployment's selector
is immutable.
*/}}
{{- define "flotilla.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Standard labels shared by every object of the chart, without the component.
*/}}
{{- define "flotilla.baseLabels" -}}
helm.sh/chart: {{ include "flotilla.chart" . }}
app.kubernetes.io/name: {{ include "flotilla.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flotilla
{{- end }}

{{/*
Standard labels of the operator's objects.
*/}}
{{- define "flotilla.labels" -}}
{{ include "flotilla.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Standard labels of the `helm test` objects (a different component, so the metrics Service and
the PodDisruptionBudget never select the test pod).
*/}}
{{- define "flotilla.testLabels" -}}
{{ include "flotilla.baseLabels" . }}
app.kubernetes.io/component: test
{{- end }}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "flotilla.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flotilla.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
"<image.registry>/" when a registry is set, else nothing: the one place the Flotilla images'
registry is chosen (a release upgraded with --reuse-values from a chart without the key has none).
*/}}
{{- define "flotilla.registryPrefix" -}}
{{- with (.Values.image.registry | default "" | trimSuffix "/") }}{{ . }}/{{ end }}
{{- end }}

{{/*
Operator image reference. The tag defaults to the chart's appVersion; `latest` is refused so that
an install is reproducible and a rollback really rolls back.
*/}}
{{- define "flotilla.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if eq $tag "latest" }}
{{- fail "image.tag must not be \"latest\": pin a version (it defaults to the chart's appVersion)" }}
{{- end }}
{{- printf "%s%s:%s" (include "flotilla.registryPrefix" .) .Values.image.repository $tag }}
{{- end }}

{{/*
Image of the `helm test` MicroService, from the same registry as the operator.
*/}}
{{- define "flotilla.testMicroserviceImage" -}}
{{- printf "%s%s" (include "flotilla.registryPrefix" .) .Values.test.microserviceImage }}
{{- end }}

{{/*
Namespace whose MicroServices the operator reconciles, for objects that need one namespace (the
helm test): watchNamespace when set, else the release namespace.
*/}}
{{- define "flotilla.testNamespace" -}}
{{- default .Release.Namespace .Values.operator.watchNamespace }}
{{- end }}

{{/*
Refuse value combinations the schema cannot express clearly.
*/}}
{{- define "flotilla.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "replicaCount > 1 requires operator.leaderElection.enabled=true: without a leader every replica would reconcile and fight over the same objects" }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the verdict signing key: the admin's, else the one this chart generates.
*/}}
{{- define "flotilla.verdictKeySecret" -}}
{{- $vk := .Values.operator.verdictKey | default dict }}
{{- $vk.existingSecret | default (printf "%s-verdict-key" (include "flotilla.fullname" .)) }}
{{- end }}
