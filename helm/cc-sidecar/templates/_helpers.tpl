{{/*
Named templates of cc-sidecar. Those meant for other charts are `cc-sidecar.container` (one list
item for a pod's `containers:`, or `initContainers:` with nativeSidecar), `cc-sidecar.volume` (its
items for `volumes:`), `cc-sidecar.podAnnotations` (the checksum annotations),
`cc-sidecar.terminationGrace` and `cc-sidecar.shopLifecycle` (the shop container's `lifecycle:`, a
preStop that keeps the shop up until cc-sidecar has drained). A shop chart that has this chart as a
dependency calls them with this chart's own context, which Helm hands out as .Subcharts:

  {{- $cc := index .Subcharts "cc-sidecar" }}
  annotations: {{- include "cc-sidecar.podAnnotations" $cc | nindent 8 }}
  containers:
    - name: shop ...
      lifecycle: {{- include "cc-sidecar.shopLifecycle" $cc | nindent 8 }}
    {{- include "cc-sidecar.container" $cc | nindent 4 }}
  volumes:
    {{- include "cc-sidecar.volume" $cc | nindent 4 }}

Names below use the constant "cc-sidecar", not .Chart.Name, so the ConfigMap and Secret names come
out the same whichever chart renders them.
*/}}

{{- define "cc-sidecar.name" -}}
{{- default "cc-sidecar" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cc-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "cc-sidecar.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cc-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cc-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cc-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cc-sidecar.labels" -}}
helm.sh/chart: {{ include "cc-sidecar.chart" . }}
{{ include "cc-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* metadata.namespace of every object: the release's unless namespaceOverride names another. */}}
{{- define "cc-sidecar.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* host:port of a listener: listenAddress with the port, an IPv6 address in brackets. */}}
{{- define "cc-sidecar.listenAddress" -}}
{{- $host := .root.Values.listenAddress }}
{{- if contains ":" $host }}{{ printf "[%s]:%d" $host (int .port) }}{{ else }}{{ printf "%s:%d" $host (int .port) }}{{ end }}
{{- end }}

{{/* Pods the chart runs when nothing scales them: replicaCount, or the HPA's floor. */}}
{{- define "cc-sidecar.replicas" -}}
{{- if .Values.autoscaling.enabled }}{{ int .Values.autoscaling.minReplicas }}{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}

{{/* Seconds the shop's preStop sleeps: cc-sidecar's own preStop sleep plus its drain, so the shop
answers every request cc-sidecar still takes or finishes. */}}
{{- define "cc-sidecar.shopPreStopSeconds" -}}
{{- add (int (include "cc-sidecar.shutdownGrace" .)) (int .Values.preStopSleepSeconds) }}
{{- end }}

{{/* The shop container's `lifecycle:` (shop.lifecycle when set, else a preStop sleep of
shutdown_grace_s + preStopSleepSeconds). php-fpm, nginx and Apache stop at SIGTERM, which the pod's
containers all get together; without the sleep the shop is gone while cc-sidecar still takes
traffic for its preStop and drains. For a shop chart's own shop container:
  lifecycle:
    {{- include "cc-sidecar.shopLifecycle" $cc | nindent 12 }} */}}
{{- define "cc-sidecar.shopLifecycle" -}}
{{- if .Values.shop.lifecycle }}
{{- toYaml .Values.shop.lifecycle }}
{{- else -}}
preStop:
  exec:
    command: ["sleep", "{{ include "cc-sidecar.shopPreStopSeconds" . }}"]
{{- end }}
{{- end }}

{{- define "cc-sidecar.secretName" -}}
{{- default (include "cc-sidecar.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "cc-sidecar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}
{{- end }}

{{/* Where storefronts without an `upstream` of their own send traffic. */}}
{{- define "cc-sidecar.defaultUpstream" -}}
{{- if eq .Values.mode "sidecar" }}
{{- printf "http://127.0.0.1:%d" (int .Values.shop.port) }}
{{- else }}
{{- required "upstream: the shop's Service URL is required in standalone mode (or give every storefront an upstream)" .Values.upstream }}
{{- end }}
{{- end }}

{{/* The sidecar's configuration file, rendered from .Values.config. Secrets are never inline. */}}
{{- define "cc-sidecar.configYaml" -}}
{{- if not (has .Values.mode (list "standalone" "sidecar")) }}
{{- fail (printf "mode: must be standalone or sidecar, not %q" .Values.mode) }}
{{- end }}
{{- $cfg := deepCopy (default dict .Values.config) }}
{{- range $key := list "listen" "admin_listen" "secret" }}
{{- if hasKey $cfg $key }}
{{- fail (printf "config.%s: set by the chart (ports.*, secrets.*); remove it from config" $key) }}
{{- end }}
{{- end }}
{{- $cc := deepCopy (default dict $cfg.customers_canvas) }}
{{- if hasKey $cc "client_secret" }}
{{- fail "config.customers_canvas.client_secret: never inline; it comes from the Secret (secrets.*)" }}
{{- end }}
{{- $_ := set $cc "client_secret" "${CC_CLIENT_SECRET}" }}
{{- $storefronts := list }}
{{- range $i, $s := (required "config.storefronts: at least one storefront is required" $cfg.storefronts) }}
{{- $s = deepCopy $s }}
{{- if not $s.upstream }}
{{- $_ := set $s "upstream" (include "cc-sidecar.defaultUpstream" $) }}
{{- end }}
{{- $storefronts = append $storefronts $s }}
{{- end }}
{{- with .Values.tokenStoreSecrets.caCertificate }}
{{- if .secretName }}
{{- $store := deepCopy (default dict $cfg.token_store) }}
{{- $redis := deepCopy (required "tokenStoreSecrets.caCertificate: needs config.token_store.redis" $store.redis) }}
{{- $_ := set $redis "ca_file" (printf "/etc/cc-sidecar-redis-ca/%s" (required "tokenStoreSecrets.caCertificate.key is required" .key)) }}
{{- $_ := set $store "redis" $redis }}
{{- $_ := set $cfg "token_store" $store }}
{{- end }}
{{- end }}
{{- /* The temp files' budget stays below the emptyDir they fill: past its sizeLimit the kubelet
evicts the pod. Four fifths of it by default; one given must be below it. */}}
{{- $buffering := deepCopy (default dict $cfg.buffering) }}
{{- $tempDir := toString (default "/tmp" $buffering.temp_dir) }}
{{- if and .Values.tmpDir.enabled (or (eq $tempDir "/tmp") (hasPrefix "/tmp/" $tempDir)) }}
{{- $limit := int64 (include "cc-sidecar.quantityBytes" .Values.tmpDir.sizeLimit) }}
{{- if hasKey $buffering "max_temp_bytes" }}
{{- $given := int64 $buffering.max_temp_bytes }}
{{- if ge $given $limit }}
{{- fail (printf "config.buffering.max_temp_bytes: %d must stay below tmpDir.sizeLimit (%v: %d bytes), or the kubelet evicts the pod when the temp files fill /tmp; leave it out to get four fifths of the limit" $given .Values.tmpDir.sizeLimit $limit) }}
{{- end }}
{{- $_ := set $buffering "max_temp_bytes" $given }}
{{- else }}
{{- $_ := set $buffering "max_temp_bytes" (div (mul $limit 4) 5) }}
{{- end }}
{{- $_ := set $cfg "buffering" $buffering }}
{{- end }}
{{- $_ := unset $cfg "customers_canvas" }}
{{- $_ := unset $cfg "storefronts" }}
listen: {{ include "cc-sidecar.listenAddress" (dict "root" . "port" .Values.ports.http) | quote }}
admin_listen: {{ include "cc-sidecar.listenAddress" (dict "root" . "port" .Values.ports.admin) | quote }}
secret: ${CC_SIDECAR_SECRET}
customers_canvas:
  {{- toYaml $cc | nindent 2 }}
{{- if $cfg }}
{{ toYaml $cfg }}
{{- end }}
storefronts:
  {{- toYaml $storefronts | nindent 2 }}
{{- end }}

{{/* Bytes of a Kubernetes quantity (tmpDir.sizeLimit): whole bytes, or a whole number of k, M, G,
T, Ki, Mi, Gi or Ti. */}}
{{- define "cc-sidecar.quantityBytes" -}}
{{- $q := . }}
{{- if kindIs "float64" $q }}{{ $q = int64 $q }}{{ end }}
{{- $q = toString $q }}
{{- if not (regexMatch "^[0-9]+(k|M|G|T|Ki|Mi|Gi|Ti)?$" $q) }}
{{- fail (printf "tmpDir.sizeLimit: %s: give bytes, or a whole number of k, M, G, T, Ki, Mi, Gi or Ti" $q) }}
{{- end }}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- $number := regexFind "^[0-9]+" $q }}
{{- mul (int64 $number) (index $units (trimPrefix $number $q)) }}
{{- end }}

{{- define "cc-sidecar.shutdownGrace" -}}
{{- $cfg := default dict .Values.config }}
{{- if hasKey $cfg "shutdown_grace_s" }}
{{- if not (or (kindIs "float64" $cfg.shutdown_grace_s) (kindIs "int" $cfg.shutdown_grace_s) (kindIs "int64" $cfg.shutdown_grace_s)) }}
{{- fail (printf "config.shutdown_grace_s: must be a number of seconds (the chart derives the pod's grace period and the shop's preStop from it), not %v" $cfg.shutdown_grace_s) }}
{{- end }}
{{- $cfg.shutdown_grace_s | ceil | int }}
{{- else }}20{{ end }}
{{- end }}

{{/* terminationGracePeriodSeconds: longer than preStop sleep + shutdown_grace_s, or the kubelet kills
in-flight requests. */}}
{{- define "cc-sidecar.terminationGrace" -}}
{{- $least := add (int (include "cc-sidecar.shutdownGrace" .)) (int .Values.preStopSleepSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $least 5 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $least }}
{{- fail (printf "terminationGracePeriodSeconds: %d must be greater than shutdown_grace_s + preStopSleepSeconds = %d" (int .Values.terminationGracePeriodSeconds) $least) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Pod annotations that restart the pods when the config or the chart-made Secret changes. */}}
{{- define "cc-sidecar.podAnnotations" -}}
checksum/config: {{ include "cc-sidecar.configYaml" . | sha256sum }}
{{- if include "cc-sidecar.secretFiles" . }}
checksum/secret: {{ printf "files:%s:%s" .Values.secrets.files.clientSecret .Values.secrets.files.sidecarSecret | sha256sum }}
{{- else if .Values.secrets.existingSecret }}
checksum/secret: {{ printf "existing:%s" .Values.secrets.existingSecret | sha256sum }}
{{- else }}
checksum/secret: {{ include "cc-sidecar.secretData" . | sha256sum }}
{{- end }}
{{- end }}

{{/* "true" when both secrets come from files (secrets.files.*); one without the other is an error. */}}
{{- define "cc-sidecar.secretFiles" -}}
{{- $files := .Values.secrets.files }}
{{- if and $files.clientSecret $files.sidecarSecret }}true
{{- else if or $files.clientSecret $files.sidecarSecret }}
{{- fail "secrets.files: give both clientSecret and sidecarSecret (paths in the container), or neither" }}
{{- end }}
{{- end }}

{{- define "cc-sidecar.secretData" -}}
{{- $sidecar := required "secrets.sidecarSecret (or secrets.existingSecret) is required" .Values.secrets.sidecarSecret }}
{{- if lt (len $sidecar) 16 }}
{{- fail "secrets.sidecarSecret: must be at least 16 characters" }}
{{- end }}
{{ .Values.secrets.clientSecretKey }}: {{ required "secrets.clientSecret (or secrets.existingSecret) is required" .Values.secrets.clientSecret | b64enc | quote }}
{{ .Values.secrets.sidecarSecretKey }}: {{ $sidecar | b64enc | quote }}
{{- end }}

{{/* The hardened container securityContext (also used for the demo shop). */}}
{{- define "cc-sidecar.securityContext" -}}
runAsNonRoot: true
runAsUser: {{ int .Values.runAsUser }}
runAsGroup: {{ int .Values.runAsUser }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The cc-sidecar container's environment: the secrets (unless from files), the token store's
passwords, extraEnv. */}}
{{- define "cc-sidecar.env" -}}
{{- if not (include "cc-sidecar.secretFiles" .) }}
- name: CC_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "cc-sidecar.secretName" . }}
      key: {{ .Values.secrets.clientSecretKey }}
- name: CC_SIDECAR_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "cc-sidecar.secretName" . }}
      key: {{ .Values.secrets.sidecarSecretKey }}
{{- end }}
{{- range $env, $ref := dict "REDIS_PASSWORD" .Values.tokenStoreSecrets.redisPassword "REDIS_SENTINEL_PASSWORD" .Values.tokenStoreSecrets.sentinelPassword }}
{{- if $ref.secretName }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.secretName }}
      key: {{ required (printf "tokenStoreSecrets: the key of %s is required" $env) $ref.key }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The cc-sidecar container: one list item for a pod's `containers:`. */}}
{{- define "cc-sidecar.container" -}}
- name: cc-sidecar
  image: {{ include "cc-sidecar.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if include "cc-sidecar.secretFiles" . }}
  # Both secrets from files a CSI driver or a Vault agent mounts (secrets.files.*), read once at start
  # into the variables the config names; `$(cat)` drops a trailing newline. A missing file stops
  # the start (sh -e).
  command:
    - /bin/sh
    - -ec
    - 'CC_CLIENT_SECRET="$(cat "$1")"; CC_SIDECAR_SECRET="$(cat "$2")"; export CC_CLIENT_SECRET CC_SIDECAR_SECRET; shift 2; exec cc-sidecar "$@"'
    - cc-sidecar
    - {{ .Values.secrets.files.clientSecret | quote }}
    - {{ .Values.secrets.files.sidecarSecret | quote }}
  {{- end }}
  args: ["run", "--config", "/etc/cc-sidecar/sidecar.yaml"]
  {{- $env := include "cc-sidecar.env" . | trim }}
  {{- if $env }}
  env:
    {{- $env | nindent 4 }}
  {{- end }}
  # Named cc-http/cc-admin, never "http": a Service's named targetPort goes to the first container
  # with that name, and a shop container (helm create's) calls its own port "http".
  ports:
    - name: cc-http
      containerPort: {{ int .Values.ports.http }}
      protocol: TCP
    - name: cc-admin
      containerPort: {{ int .Values.ports.admin }}
      protocol: TCP
  {{- /* Probes on the numeric port (a named port of a native sidecar resolves only from 1.32). A
  value with its own handler (httpGet, exec, tcpSocket, grpc) replaces the chart's; else it gives
  the timings of the chart's httpGet. */}}
  {{- range $probe, $path := dict "livenessProbe" "/healthz" "readinessProbe" "/readyz" "startupProbe" "/readyz" }}
  {{- $value := index $.Values $probe }}
  {{- if or (ne $probe "startupProbe") $.Values.nativeSidecar }}
  {{ $probe }}:
    {{- if or $value.httpGet $value.exec $value.tcpSocket $value.grpc }}
    {{- toYaml $value | nindent 4 }}
    {{- else }}
    httpGet:
      path: {{ $path }}
      port: {{ int $.Values.ports.admin }}
    {{- with $value }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- end }}
  {{- end }}
  {{- end }}
  {{- if .Values.nativeSidecar }}
  # A native sidecar (Kubernetes 1.29+): started before the shop's containers and kept running
  # beside them; the pod's main containers start once its startupProbe passes.
  restartPolicy: Always
  {{- end }}
  {{- if gt (int .Values.preStopSleepSeconds) 0 }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", "{{ int .Values.preStopSleepSeconds }}"]
  {{- end }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- include "cc-sidecar.securityContext" . | nindent 4 }}
  volumeMounts:
    - name: cc-sidecar-config
      mountPath: /etc/cc-sidecar
      readOnly: true
    {{- if .Values.tokenStoreSecrets.caCertificate.secretName }}
    - name: cc-sidecar-redis-ca
      mountPath: /etc/cc-sidecar-redis-ca
      readOnly: true
    {{- end }}
    {{- if .Values.tmpDir.enabled }}
    # The root filesystem is read-only; anything that needs a scratch directory gets /tmp.
    - name: cc-sidecar-tmp
      mountPath: /tmp
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The volumes the container mounts, list items for a pod's `volumes:`: the ConfigMap, and the
Redis CA's Secret when tokenStoreSecrets.caCertificate names one. */}}
{{- define "cc-sidecar.volume" -}}
- name: cc-sidecar-config
  configMap:
    name: {{ include "cc-sidecar.fullname" . }}
{{- with .Values.tokenStoreSecrets.caCertificate }}
{{- if .secretName }}
- name: cc-sidecar-redis-ca
  secret:
    secretName: {{ .secretName }}
    items:
      - key: {{ .key }}
        path: {{ .key }}
{{- end }}
{{- end }}
{{- if .Values.tmpDir.enabled }}
- name: cc-sidecar-tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpDir.sizeLimit }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by the standalone and the sidecar Deployment. */}}
{{- define "cc-sidecar.podSpecCommon" -}}
{{- if .Values.serviceAccount.create }}
serviceAccountName: {{ include "cc-sidecar.serviceAccountName" . }}
{{- else if .Values.serviceAccount.name }}
serviceAccountName: {{ .Values.serviceAccount.name }}
{{- end }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
terminationGracePeriodSeconds: {{ include "cc-sidecar.terminationGrace" . }}
{{- if eq .Values.mode "sidecar" }}
{{- /* The pod is the shop's too: nothing forced on its containers (cc-sidecar's own container
carries its hardened securityContext); shop.podSecurityContext is the user's. */}}
{{- with .Values.shop.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- else }}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ int .Values.runAsUser }}
  runAsGroup: {{ int .Values.runAsUser }}
  fsGroup: {{ int .Values.runAsUser }}
  seccompProfile:
    type: RuntimeDefault
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml .Values.topologySpreadConstraints | nindent 2 }}
{{- else if .Values.defaultTopologySpread }}
{{- /* Soft (ScheduleAnyway): spread over nodes and zones where it can, never left Pending for it. */}}
topologySpreadConstraints:
  {{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: 1
    topologyKey: {{ $key }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "cc-sidecar.selectorLabels" $ | nindent 8 }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "cc-sidecar.serviceAccountName" -}}
{{- default (include "cc-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* Whether this release runs pods of its own (standalone, or sidecar with the demo/own shop). */}}
{{- define "cc-sidecar.hasPods" -}}
{{- if or (eq .Values.mode "standalone") .Values.shop.enabled }}true{{ end }}
{{- end }}
