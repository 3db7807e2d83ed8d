{{/* Names and labels. */}}
{{- define "streamledger.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streamledger.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "streamledger.labels" -}}
{{ include "streamledger.selectorLabels" . }}
app.kubernetes.io/part-of: streamledger
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/*
What each service is: the `serve` name, its ports, whether it reads MongoDB, its Kafka principal,
its ledger identity (deploy/fabric/identities.yaml), how it is probed, where /metrics is, and its
own settings. Probes: `http` GETs /healthz (ingestion and audit have it); `tcp` connects to the
port (inference and the dashboard: neither implements grpc.health.v1 nor an open health route, the
dashboard answers 401 without its token and paid inference wants a client certificate); `exec`
connects to the metrics port from inside the pod (the workers listen on no other port).
*/}}
{{- define "streamledger.components" -}}
{{- $v := .Values.services -}}
ingestion:
  name: ingestion
  serve: ingestion
  kafkaUser: ingestion
  mongo: false
  identity: ""
  ports: [{name: http, port: 8080}, {name: grpc, port: 8081}]
  probe: {kind: http, port: http}
  metricsPort: http
  tlsSecret: {{ $v.ingestion.tlsSecret | quote }}
  env:
    STREAMLEDGER_INGESTION_HTTP_HOST: 0.0.0.0
    STREAMLEDGER_INGESTION_HTTP_PORT: "8080"
    STREAMLEDGER_INGESTION_GRPC_PORT: "8081"
    {{- if $v.ingestion.tlsSecret }}
    STREAMLEDGER_INGESTION_TLS_CERT: /etc/streamledger/tls/tls.crt
    STREAMLEDGER_INGESTION_TLS_KEY: /etc/streamledger/tls/tls.key
    {{- end }}
cleaning:
  name: cleaning
  serve: cleaning
  kafkaUser: cleaning
  mongo: false
  identity: ""
  ports: []
  probe: {kind: exec}
  metricsPort: metrics
  env: {}
storage:
  name: storage
  serve: storage
  kafkaUser: storage
  mongo: true
  identity: ""
  ports: []
  probe: {kind: exec}
  metricsPort: metrics
  env: {}
learning:
  name: learning
  serve: learning
  kafkaUser: learning
  mongo: false
  identity: {{ ternary "registry" "" (eq (toString $v.learning.ledger) "true") }}
  ports: []
  probe: {kind: exec}
  metricsPort: metrics
  models: true
  env:
    STREAMLEDGER_LEARNING_LEDGER: {{ $v.learning.ledger | toString | quote }}
inference:
  name: inference
  serve: inference
  kafkaUser: inference
  mongo: false
  identity: {{ ternary "inference" "" (eq $v.inference.mode "paid") }}
  ports: [{name: grpc, port: 8001}]
  probe: {kind: tcp, port: grpc}
  metricsPort: metrics
  models: true
  {{- if eq $v.inference.mode "paid" }}
  tlsSecret: {{ $v.inference.tlsSecret | quote }}
  clientCAs: {{ toJson $v.inference.clientCAs }}
  {{- end }}
  env:
    STREAMLEDGER_INFERENCE_HOST: 0.0.0.0
    STREAMLEDGER_INFERENCE_PORT: "8001"
    STREAMLEDGER_INFERENCE_MODE: {{ $v.inference.mode | quote }}
    {{- if eq $v.inference.mode "paid" }}
    STREAMLEDGER_INFERENCE_TLS_CERT: /etc/streamledger/tls/tls.crt
    STREAMLEDGER_INFERENCE_TLS_KEY: /etc/streamledger/tls/tls.key
    {{- $cas := dict }}
    {{- range $msp, $_ := $v.inference.clientCAs }}
    {{- $_ := set $cas $msp (printf "/etc/streamledger/client-cas/%s.pem" $msp) }}
    {{- end }}
    STREAMLEDGER_INFERENCE_CLIENT_CAS: {{ toJson $cas | quote }}
    {{- end }}
ledgerAnchoring:
  name: ledger-anchoring
  serve: ledger
  kafkaUser: ledger
  mongo: true
  identity: anchoring
  ports: []
  probe: {kind: exec}
  metricsPort: metrics
  env:
    STREAMLEDGER_LEDGER_SETTLEMENT: "false"
ledgerSettlement:
  name: ledger-settlement
  serve: ledger
  kafkaUser: ledger
  mongo: true
  identity: settlement
  ports: []
  probe: {kind: exec}
  metricsPort: metrics
  env:
    STREAMLEDGER_LEDGER_ANCHORING: "false"
    STREAMLEDGER_LEDGER_SETTLE_MARGIN_SECONDS: {{ .Values.fabric.timewindowSeconds | toString | quote }}
audit:
  name: audit
  serve: audit
  kafkaUser: ""
  mongo: true
  identity: audit
  ports: [{name: http, port: 8090}, {name: grpc, port: 8091}]
  probe: {kind: http, port: http}
  metricsPort: http
  token: true
  tlsSecret: {{ $v.audit.tlsSecret | quote }}
  env:
    STREAMLEDGER_AUDIT_HOST: 0.0.0.0
    STREAMLEDGER_AUDIT_HTTP_PORT: "8090"
    STREAMLEDGER_AUDIT_GRPC_PORT: "8091"
    {{- if $v.audit.tlsSecret }}
    STREAMLEDGER_AUDIT_TLS_CERT: /etc/streamledger/tls/tls.crt
    STREAMLEDGER_AUDIT_TLS_KEY: /etc/streamledger/tls/tls.key
    {{- end }}
dashboard:
  name: dashboard
  serve: dashboard
  kafkaUser: dashboard
  mongo: false
  identity: {{ ternary "dashboard" "" (eq (toString $v.dashboard.ledger) "true") }}
  ports: [{name: http, port: 8088}]
  probe: {kind: tcp, port: http}
  metricsPort: metrics
  token: true
  env:
    STREAMLEDGER_DASHBOARD_HOST: 0.0.0.0
    STREAMLEDGER_DASHBOARD_PORT: "8088"
    STREAMLEDGER_DASHBOARD_LEDGER: {{ $v.dashboard.ledger | toString | quote }}
{{- end -}}

{{/* The Secret holding a service's Kafka password: this chart's, or the existing one. */}}
{{- define "streamledger.kafkaPasswordRef" -}}
{{- $cred := index .root.Values.kafka.credentials .user -}}
{{- if not $cred -}}
{{- fail (printf "kafka.credentials.%s is missing" .user) -}}
{{- end -}}
name: {{ ternary (printf "%s-kafka-%s" (include "streamledger.fullname" .root) .user) $cred.existingSecret (not (empty $cred.password)) }}
key: {{ ternary "password" $cred.passwordKey (not (empty $cred.password)) }}
{{- end -}}

{{- define "streamledger.identitySecret" -}}
{{- $id := index .root.Values.fabric.identities .identity -}}
{{- if and $id.cert $id.key -}}
{{- printf "%s-fabric-%s" (include "streamledger.fullname" .root) .identity -}}
{{- else -}}
{{- $id.existingSecret | default (printf "%s-fabric-%s" (include "streamledger.fullname" .root) .identity) -}}
{{- end -}}
{{- end -}}

{{- define "streamledger.tokenSecret" -}}
{{- $v := index .root.Values.services .service -}}
{{- $v.existingTokenSecret | default (printf "%s-%s-token" (include "streamledger.fullname" .root) .service) -}}
{{- end -}}

{{- define "streamledger.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
