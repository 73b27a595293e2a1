{{/*
Standard labels of the chart's objects. The MicroServices' children get Flotilla's own labels.
*/}}
{{- define "samples.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flotilla-samples
{{- end }}

{{/*
A secret value: the one given in values, else the one already in the cluster (so upgrades keep
it), else a new random one: 48 random characters, or with generate "ed25519" a new Ed25519
private key (PKCS#8 PEM). Arguments: a dict with root (.), secret (Secret name), key, given and
optionally generate.
*/}}
{{- define "samples.secretValue" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret }}
{{- if .given }}
{{- .given }}
{{- else if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key | b64dec }}
{{- else if eq (.generate | default "") "ed25519" }}
{{- genPrivateKey "ed25519" }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}

{{/*
A sample image under imageRegistry (when set): the one place the samples' registry is chosen.
Arguments: a dict with root (.) and image (the image as written in values).
*/}}
{{- define "samples.image" -}}
{{- with (.root.Values.imageRegistry | default "" | trimSuffix "/") }}{{ . }}/{{ end }}{{ .image }}
{{- end }}

{{/*
Whether the chart provides the broker's credentials (Secret `rabbitmq-credentials`): it deploys
a broker (`broker.deploy`) or was given one (`broker.url`). "true" or empty.
*/}}
{{- define "samples.brokerProvided" -}}
{{- if or .Values.broker.url .Values.broker.deploy }}true{{ end }}
{{- end }}
