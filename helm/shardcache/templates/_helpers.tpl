{{/* Names and labels. */}}
{{- define "shardcache.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shardcache.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shardcache.labels" -}}
{{ include "shardcache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "shardcache.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Memory request and limit: the RAM tier, the response buffers and the documented overhead. */}}
{{- define "shardcache.memory" -}}
{{ add .Values.cache.ramMiB .Values.cache.responseBufferMiB .Values.cache.overheadMiB }}Mi
{{- end -}}

{{/* The headless Service's DNS name, which members resolve to find each other. */}}
{{- define "shardcache.peerDns" -}}
{{ include "shardcache.fullname" . }}-peers.{{ .Release.Namespace }}.svc.cluster.local:{{ .Values.ports.data }}
{{- end -}}

{{/* Refuse values that would make the server refuse to start. */}}
{{- define "shardcache.check" -}}
{{- if and (not .Values.auth.tokensSecret) (not .Values.auth.insecureAllowAnonymous) -}}
{{- fail "auth.tokensSecret is required (the data plane listens off loopback); set auth.insecureAllowAnonymous=true only behind a NetworkPolicy" -}}
{{- end -}}
{{- if and (not .Values.auth.controlTokenSecret) (not .Values.auth.insecureAllowAnonymous) -}}
{{- fail "auth.controlTokenSecret is required (the control plane listens off loopback); or auth.insecureAllowAnonymous=true" -}}
{{- end -}}
{{- if and (not .Values.auth.clusterSecret) (not .Values.tls.secret) (not .Values.auth.insecureAllowAnonymous) -}}
{{- fail "auth.clusterSecret (or tls.secret with ca.crt) is required: members authenticate each other" -}}
{{- end -}}
{{- end -}}

{{/* config.toml: the sizes, the settings, the datasets; "disk" says whether the disk tier is on. */}}
{{- define "shardcache.toml" -}}
ram_cache = "{{ .Values.cache.ramMiB }}MiB"
response_buffer = "{{ .Values.cache.responseBufferMiB }}MiB"
block_size = "{{ .Values.cache.blockSizeMiB }}MiB"
{{- if .disk }}
disk_cache = "/var/cache/shardcache"
disk_cache_size = "{{ .Values.cache.disk.sizeMiB }}MiB"
{{- end }}
{{- range $key, $value := .Values.settings }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- range .Values.datasets }}

[[datasets]]
{{- range $key, $value := . }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The cache server container of the DaemonSet and the StatefulSet. */}}
{{- define "shardcache.container" -}}
- name: shardcache
  image: {{ include "shardcache.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - serve
    - --config=/etc/shardcache/config/config.toml
    - --listen=0.0.0.0:{{ .Values.ports.data }}
    - --control-listen=0.0.0.0:{{ .Values.ports.control }}
    - --admin-listen=0.0.0.0:{{ .Values.ports.admin }}
    - --peer-dns={{ include "shardcache.peerDns" . }}
    {{- if .Values.auth.tokensSecret }}
    - --access-tokens=/etc/shardcache/tokens/tokens
    {{- end }}
    {{- if .Values.auth.controlTokenSecret }}
    - --control-token-file=/etc/shardcache/control/token
    {{- end }}
    {{- if .Values.auth.clusterSecret }}
    - --cluster-secret-file=/etc/shardcache/cluster/secret
    {{- end }}
    {{- if .Values.tls.secret }}
    - --tls-cert=/etc/shardcache/tls/tls.crt
    - --tls-key=/etc/shardcache/tls/tls.key
    {{- end }}
    {{- if .Values.auth.insecureAllowAnonymous }}
    - --insecure-allow-anonymous
    {{- end }}
  env:
    # The node's name in the cluster, which placement hashes: stable across restarts (a
    # StatefulSet pod's name; for a DaemonSet the node's, since its pods' names change).
    - name: SHARDCACHE_NODE_ID
      valueFrom:
        fieldRef:
          fieldPath: {{ ternary "metadata.name" "spec.nodeName" (eq .Values.mode "statefulset") }}
    - name: SHARDCACHE_LOG_FORMAT
      value: json
  {{- if .Values.origin.envSecret }}
  envFrom:
    - secretRef:
        name: {{ .Values.origin.envSecret }}
  {{- end }}
  ports:
    - name: data
      containerPort: {{ .Values.ports.data }}
      protocol: TCP
    - name: control
      containerPort: {{ .Values.ports.control }}
      protocol: TCP
    - name: admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: 5
    failureThreshold: 2
  lifecycle:
    preStop:
      sleep:
        seconds: {{ .Values.preStopSleepSeconds }}
  resources:
    requests:
      memory: {{ include "shardcache.memory" . }}
      {{- with .Values.resources.requests.cpu }}
      cpu: {{ . | quote }}
      {{- end }}
    limits:
      memory: {{ include "shardcache.memory" . }}
      {{- with .Values.resources.limits.cpu }}
      cpu: {{ . | quote }}
      {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities:
      drop: [ALL]
      {{- if .Values.ipcLock }}
      add: [IPC_LOCK]
      {{- end }}
  volumeMounts:
    - name: config
      mountPath: /etc/shardcache/config
      readOnly: true
    {{- if .Values.auth.tokensSecret }}
    - name: tokens
      mountPath: /etc/shardcache/tokens
      readOnly: true
    {{- end }}
    {{- if .Values.auth.controlTokenSecret }}
    - name: control-token
      mountPath: /etc/shardcache/control
      readOnly: true
    {{- end }}
    {{- if .Values.auth.clusterSecret }}
    - name: cluster-secret
      mountPath: /etc/shardcache/cluster
      readOnly: true
    {{- end }}
    {{- if .Values.tls.secret }}
    - name: tls
      mountPath: /etc/shardcache/tls
      readOnly: true
    {{- end }}
    {{- if .Values.cache.disk.enabled }}
    - name: disk
      mountPath: /var/cache/shardcache
    {{- end }}
    - name: work
      mountPath: /var/lib/shardcache
{{- end -}}

{{/* Volumes of the server's pod (the disk tier's own is added by each mode). */}}
{{- define "shardcache.volumes" -}}
- name: config
  configMap:
    name: {{ include "shardcache.fullname" . }}
- name: work
  emptyDir: {}
{{- if .Values.auth.tokensSecret }}
- name: tokens
  secret:
    secretName: {{ .Values.auth.tokensSecret }}
{{- end }}
{{- if .Values.auth.controlTokenSecret }}
- name: control-token
  secret:
    secretName: {{ .Values.auth.controlTokenSecret }}
{{- end }}
{{- if .Values.auth.clusterSecret }}
- name: cluster-secret
  secret:
    secretName: {{ .Values.auth.clusterSecret }}
{{- end }}
{{- if .Values.tls.secret }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secret }}
{{- end }}
{{- end -}}

{{/*
The sidecar: a cache next to the trainer, in the trainer's pod. Include it in the pod's
containers (`{{- include "shardcache.sidecar" . | nindent 8 }}`) with the volume
"shardcache-socket" (an emptyDir, medium Memory) mounted in the trainer at /run/shardcache too.
It listens on loopback and on the local socket /run/shardcache/shardcache.sock; the client finds
it through SHARDCACHE_DATA=/run/shardcache/shardcache.sock.
*/}}
{{- define "shardcache.sidecar" -}}
- name: shardcache
  image: {{ include "shardcache.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - serve
    - --config=/etc/shardcache/config/sidecar.toml
    - --listen=127.0.0.1:{{ .Values.ports.data }}
    - --control-listen=127.0.0.1:{{ .Values.ports.control }}
    - --admin-listen=0.0.0.0:{{ .Values.ports.admin }}
    - --local-socket=/run/shardcache/shardcache.sock
    # The socket's directory is the pod's own volume: any container of the pod may connect.
    - --local-socket-mode=0666
  {{- if .Values.origin.envSecret }}
  envFrom:
    - secretRef:
        name: {{ .Values.origin.envSecret }}
  {{- end }}
  ports:
    - name: cache-admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: cache-admin
  readinessProbe:
    httpGet:
      path: /readyz
      port: cache-admin
  resources:
    requests:
      memory: {{ include "shardcache.memory" . }}
    limits:
      memory: {{ include "shardcache.memory" . }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities:
      drop: [ALL]
      {{- if .Values.ipcLock }}
      add: [IPC_LOCK]
      {{- end }}
  volumeMounts:
    - name: shardcache-config
      mountPath: /etc/shardcache/config
      readOnly: true
    - name: shardcache-socket
      mountPath: /run/shardcache
    - name: shardcache-work
      mountPath: /var/lib/shardcache
{{- end -}}

{{/* The sidecar's volumes, for the trainer pod's volumes list. */}}
{{- define "shardcache.sidecarVolumes" -}}
- name: shardcache-config
  configMap:
    name: {{ include "shardcache.fullname" . }}
- name: shardcache-socket
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: shardcache-work
  emptyDir: {}
{{- end -}}
