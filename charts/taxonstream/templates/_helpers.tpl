{{/*
How the five services are wired: the product's contract, not user configuration.
topic: the topic the worker consumes (without the prefix); group: consumes as a consumer group
(KEDA scales it on lag, replicas capped at the partition count); alsoConsumes: other group=topic pairs
it scales on too; triton: calls Triton over gRPC; calls: services whose gRPC it calls; internet: fetches
from public addresses.
*/}}
{{- define "taxonstream.components" -}}
fetcher:
  topic: records
  group: true
  internet: true
checksummer:
  topic: fetched
  group: true
detector:
  topic: verified
  group: true
  triton: true
embedder:
  topic: cropped
  group: true
  triton: true
  alsoConsumes: {reembed: reembed}
indexer:
  topic: embedded
  group: false
  calls: [embedder, detector]
{{- end }}

{{- define "taxonstream.grpcPort" -}}50051{{- end }}
{{- define "taxonstream.metricsPort" -}}9090{{- end }}

{{- define "taxonstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "taxonstream.fullname" -}}
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

{{/* Name of one component's objects; call with (dict "root" $ "name" "fetcher"). */}}
{{- define "taxonstream.componentName" -}}
{{- printf "%s-%s" (include "taxonstream.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "taxonstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component; call with (dict "root" $ "name" "fetcher"). */}}
{{- define "taxonstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taxonstream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "taxonstream.labels" -}}
{{ include "taxonstream.selectorLabels" . }}
app.kubernetes.io/part-of: taxonstream
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "taxonstream.chart" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Image of a service: [registry/]repository:tag[@digest]. */}}
{{- define "taxonstream.image" -}}
{{- $img := .svc.image -}}
{{- $repo := $img.repository -}}
{{- with .root.Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end -}}
{{- $tag := $img.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- $ref := printf "%s:%s" $repo $tag -}}
{{- with $img.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end -}}
{{- $ref -}}
{{- end }}

{{/* Kafka bootstrap servers: the bundled broker or the configured ones, never both. */}}
{{- define "taxonstream.kafkaBootstrap" -}}
{{- if .Values.kafka.bundled.enabled -}}
{{- if .Values.kafka.bootstrapServers -}}
{{- fail "kafka.bootstrapServers is set: also set kafka.bundled.enabled=false to use it" -}}
{{- end -}}
{{- printf "%s-kafka:9092" (include "taxonstream.fullname" .) -}}
{{- else -}}
{{- required "kafka.bootstrapServers is required when kafka.bundled.enabled is false" .Values.kafka.bootstrapServers -}}
{{- end -}}
{{- end }}

{{/* Bootstrap servers for KEDA's operator, which runs in another namespace. */}}
{{- define "taxonstream.kafkaBootstrapForKeda" -}}
{{- if .Values.kafka.bundled.enabled -}}
{{- printf "%s-kafka.%s.svc:9092" (include "taxonstream.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- include "taxonstream.kafkaBootstrap" . -}}
{{- end -}}
{{- end }}

{{- define "taxonstream.s3Endpoint" -}}
{{- if .Values.s3.bundled.enabled -}}
{{- if .Values.s3.endpoint -}}
{{- fail "s3.endpoint is set: also set s3.bundled.enabled=false to use it" -}}
{{- end -}}
{{- printf "%s-minio:9000" (include "taxonstream.fullname" .) -}}
{{- else -}}
{{- required "s3.endpoint is required when s3.bundled.enabled is false" .Values.s3.endpoint -}}
{{- end -}}
{{- end }}

{{/* Whether the bundled MinIO serves TLS: it does not, so secure only applies to an existing S3. */}}
{{- define "taxonstream.s3Secure" -}}
{{- and (not .Values.s3.bundled.enabled) .Values.s3.secure -}}
{{- end }}

{{- define "taxonstream.tritonUrl" -}}
{{- if .Values.triton.enabled -}}
{{- printf "%s:8001" (include "taxonstream.componentName" (dict "root" . "name" "triton")) -}}
{{- else -}}
{{- required "triton.url is required when triton.enabled is false" .Values.triton.url -}}
{{- end -}}
{{- end }}

{{/*
Distinct ports of a "host:port[,host:port]" list, one per line; `default` when a host has none.
Call with (dict "hosts" "a:1,b:2" "default" 443).
*/}}
{{- define "taxonstream.ports" -}}
{{- $ports := list -}}
{{- range splitList "," .hosts -}}
{{- $hp := trim . -}}
{{- $m := regexFind ":[0-9]+$" $hp -}}
{{- $ports = append $ports (ternary (trimPrefix ":" $m) (toString $.default) (ne $m "")) -}}
{{- end -}}
{{- join "\n" (uniq $ports) -}}
{{- end }}

{{/* The S3 settings every S3 client gets (services as TAXONSTREAM_S3_*). */}}
{{- define "taxonstream.s3Env" -}}
- name: TAXONSTREAM_S3_ENDPOINT
  value: {{ include "taxonstream.s3Endpoint" . | quote }}
- name: TAXONSTREAM_S3_SECURE
  value: {{ include "taxonstream.s3Secure" . | quote }}
- name: TAXONSTREAM_S3_BUCKET
  value: {{ .Values.s3.bucket | quote }}
- name: TAXONSTREAM_S3_REGION
  value: {{ .Values.s3.region | quote }}
- name: TAXONSTREAM_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.credentials.secretName }}
      key: {{ .Values.s3.credentials.accessKeyKey }}
- name: TAXONSTREAM_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.credentials.secretName }}
      key: {{ .Values.s3.credentials.secretKeyKey }}
{{- end }}

{{/* Fails when a consumer group could get more replicas than partitions (idle consumers). */}}
{{- define "taxonstream.checkReplicas" -}}
{{- $a := .svc.autoscaling -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "%s.autoscaling.minReplicas (%v) exceeds maxReplicas (%v)" .name $a.minReplicas $a.maxReplicas) -}}
{{- end -}}
{{- if .wiring.group -}}
{{- $partitions := int .root.Values.kafka.topicPartitions -}}
{{- $most := ternary (int $a.maxReplicas) (int .svc.replicas) $a.enabled -}}
{{- if gt $most $partitions -}}
{{- fail (printf "%s may run %d replicas but kafka.topicPartitions is %d: a consumer beyond the partition count idles" .name $most $partitions) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* Egress rule allowing DNS. */}}
{{- define "taxonstream.dnsEgress" -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
  {{- with .Values.networkPolicy.dnsTo }}
  to: {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Egress rule to Kafka: the bundled broker's pods, or the bootstrap servers' ports. */}}
{{- define "taxonstream.kafkaEgress" -}}
{{- if .Values.kafka.bundled.enabled -}}
- to:
    - podSelector:
        matchLabels: {{- include "taxonstream.selectorLabels" (dict "root" . "name" "kafka") | nindent 10 }}
  ports:
    - {port: 9092, protocol: TCP}
{{- else -}}
- ports:
    {{- range splitList "\n" (include "taxonstream.ports" (dict "hosts" .Values.kafka.bootstrapServers "default" 9092)) }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- with .Values.kafka.egressTo }}
  to: {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Egress rule to S3: the bundled MinIO's pods, or the endpoint's port. */}}
{{- define "taxonstream.s3Egress" -}}
{{- if .Values.s3.bundled.enabled -}}
- to:
    - podSelector:
        matchLabels: {{- include "taxonstream.selectorLabels" (dict "root" . "name" "minio") | nindent 10 }}
  ports:
    - {port: 9000, protocol: TCP}
{{- else -}}
- ports:
    {{- range splitList "\n" (include "taxonstream.ports" (dict "hosts" .Values.s3.endpoint "default" (ternary 443 80 .Values.s3.secure))) }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- with .Values.s3.egressTo }}
  to: {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Pod annotations: Prometheus scrape hints (annotation-based setups) plus podAnnotations. */}}
{{- define "taxonstream.podAnnotations" -}}
{{- $ann := dict -}}
{{- if .root.Values.metrics.podAnnotations -}}
{{- $ann = dict "prometheus.io/scrape" "true" "prometheus.io/port" (toString .port) "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- $ann = merge $ann (deepCopy .root.Values.podAnnotations) -}}
{{- with $ann }}{{ toYaml . }}{{ end -}}
{{- end }}

{{/* server.properties of the bundled single-node KRaft broker. */}}
{{- define "taxonstream.kafkaConfig" -}}
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
listeners=PLAINTEXT://:9092,CONTROLLER://127.0.0.1:9093
# __ADVERTISED_HOST__ is the Service's name in the pod's namespace, filled in at start, so that
# clients in other namespaces (KEDA's operator) can follow it.
advertised.listeners=PLAINTEXT://__ADVERTISED_HOST__:9092
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=/var/lib/kafka/data
num.partitions={{ .Values.kafka.topicPartitions }}
default.replication.factor=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
# First record of a new consumer group without the default 3 s wait.
group.initial.rebalance.delay.ms=0
{{- end }}

{{/* Who may call: the token from its Secret (or an explicit insecure run), TLS files from theirs. */}}
{{- define "taxonstream.authEnv" -}}
{{- $auth := .Values.auth }}
{{- if $auth.tokenSecret.name }}
- name: TAXONSTREAM_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $auth.tokenSecret.name }}
      key: {{ $auth.tokenSecret.key }}
{{- else if not $auth.allowInsecure }}
{{- fail "auth.tokenSecret.name is required (the services refuse to listen on 0.0.0.0 without a token), or set auth.allowInsecure=true" }}
{{- end }}
{{- if $auth.allowInsecure }}
- {name: TAXONSTREAM_INSECURE, value: "true"}
{{- end }}
{{- if $auth.requireForReads }}
- {name: TAXONSTREAM_AUTH_READS, value: "true"}
{{- end }}
{{- if .Values.tls.enabled }}
- {name: TAXONSTREAM_TLS_CERT, value: /etc/taxonstream/tls/tls.crt}
- {name: TAXONSTREAM_TLS_KEY, value: /etc/taxonstream/tls/tls.key}
- {name: TAXONSTREAM_TLS_CA, value: /etc/taxonstream/tls/ca.crt}
- {name: TAXONSTREAM_HEALTH_PORT, value: {{ .Values.tls.healthPort | quote }}}
{{- end }}
{{- end }}

{{/* The port the probes use: the plaintext health-only port under TLS, else the gRPC port. */}}
{{- define "taxonstream.probePort" -}}
{{- if .Values.tls.enabled }}{{ .Values.tls.healthPort }}{{ else }}{{ include "taxonstream.grpcPort" . }}{{ end }}
{{- end }}
