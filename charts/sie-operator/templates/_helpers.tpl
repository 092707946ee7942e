{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "sie-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-sie-operator, or <release> when it already contains the chart name. Kept at 45
characters so suffixed names (-gateway-headless) stay valid DNS labels. */}}
{{- define "sie-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sie-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sie-operator.gatewayName" -}}{{ include "sie-operator.fullname" . }}-gateway{{- end -}}
{{- define "sie-operator.gatewayHeadlessName" -}}{{ include "sie-operator.fullname" . }}-gateway-headless{{- end -}}
{{- define "sie-operator.workerName" -}}{{ include "sie-operator.fullname" . }}-worker{{- end -}}
{{- define "sie-operator.natsName" -}}{{ include "sie-operator.fullname" . }}-nats{{- end -}}
{{- define "sie-operator.bundlesName" -}}{{ include "sie-operator.fullname" . }}-bundles{{- end -}}
{{- define "sie-operator.storeClaimName" -}}
{{- .Values.store.persistence.existingClaim | default (printf "%s-store" (include "sie-operator.fullname" .)) -}}
{{- end -}}

{{- define "sie-operator.operatorServiceAccountName" -}}
{{- .Values.operator.serviceAccount.name | default (include "sie-operator.fullname" .) -}}
{{- end -}}
{{- define "sie-operator.gatewayServiceAccountName" -}}
{{- .Values.gateway.serviceAccount.name | default (include "sie-operator.gatewayName" .) -}}
{{- end -}}
{{- define "sie-operator.workerServiceAccountName" -}}
{{- .Values.workers.serviceAccount.name | default (include "sie-operator.workerName" .) -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------- */}}

{{- define "sie-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sie-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sie-operator.labels" -}}
helm.sh/chart: {{ include "sie-operator.chart" . }}
{{ include "sie-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sie-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Wiring ----------------------------------------------------------------------------- */}}

{{- define "sie-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The Config API URL gateways and workers bootstrap from. */}}
{{- define "sie-operator.configServiceUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "sie-operator.fullname" .) .Release.Namespace (int .Values.operator.service.port) -}}
{{- end -}}

{{/* The NATS URL every component uses; empty when there is no NATS at all. */}}
{{- define "sie-operator.natsUrl" -}}
{{- if .Values.nats.external.url -}}
{{- .Values.nats.external.url -}}
{{- else if .Values.nats.builtin.enabled -}}
{{- printf "nats://%s.%s.svc:4222" (include "sie-operator.natsName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "sie-operator.builtinNats" -}}
{{- if and .Values.nats.builtin.enabled (not .Values.nats.external.url) -}}true{{- end -}}
{{- end -}}

{{/* HA ------------------------------------------------------------------------------- */}}

{{/* "true" in HA mode, after the checks that make it coherent (one-line failures). */}}
{{- define "sie-operator.ha" -}}
{{- if .Values.ha.enabled -}}
{{- if not (include "sie-operator.natsUrl" .) -}}
{{- fail "ha.enabled keeps the store in NATS JetStream: set nats.external.url or nats.builtin.enabled=true" -}}
{{- end -}}
{{- if and (include "sie-operator.builtinNats" .) (gt (int .Values.ha.storeReplicas) 1) -}}
{{- fail "ha.storeReplicas > 1 needs a NATS cluster: the built-in NATS is one node; set nats.external.url" -}}
{{- end -}}
{{- if and .Values.ha.podDisruptionBudget.enabled (ge (int .Values.ha.podDisruptionBudget.minAvailable) (int .Values.ha.replicas)) -}}
{{- fail "ha.podDisruptionBudget.minAvailable must be below ha.replicas, or no node could ever be drained" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* JetStream stream replicas of the store: ha.storeReplicas, or 3 on an external cluster and
1 on the built-in single node. */}}
{{- define "sie-operator.storeReplicas" -}}
{{- if gt (int .Values.ha.storeReplicas) 0 -}}
{{- int .Values.ha.storeReplicas -}}
{{- else if include "sie-operator.builtinNats" . -}}
1
{{- else -}}
3
{{- end -}}
{{- end -}}

{{- define "sie-operator.leaseName" -}}
{{- .Values.ha.leaseName | default (include "sie-operator.fullname" .) -}}
{{- end -}}

{{/* Does the built-in NATS run JetStream (it then holds the HA store)? */}}
{{- define "sie-operator.builtinJetStream" -}}
{{- if and .Values.ha.enabled (include "sie-operator.builtinNats" .) -}}true{{- end -}}
{{- end -}}
{{- define "sie-operator.natsJetStreamClaimName" -}}{{ include "sie-operator.natsName" . }}-jetstream{{- end -}}

{{- define "sie-operator.watchNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- toJson (uniq .Values.watchNamespaces) -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* PodSecurity "restricted": pod and container parts. */}}
{{- define "sie-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sie-operator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Auth ------------------------------------------------------------------------------- */}}

{{/* The Secret with the three tokens: auth.existingSecret, or the one the chart generates. */}}
{{- define "sie-operator.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "sie-operator.fullname" .)) -}}
{{- end -}}

{{/* "secret/key" holding one token class, or "" when that class is off. A per-token
existingSecret wins (with its own key); otherwise, with auth.enabled, the auth Secret under
the standard key. Call with (dict "ctx" $ "token" "adminToken" "key" "SIE_ADMIN_TOKEN"). */}}
{{- define "sie-operator.tokenRef" -}}
{{- $cfg := index .ctx.Values.auth .token -}}
{{- if $cfg.existingSecret -}}
{{- printf "%s/%s" $cfg.existingSecret $cfg.key -}}
{{- else if .ctx.Values.auth.enabled -}}
{{- printf "%s/%s" (include "sie-operator.authSecretName" .ctx) .key -}}
{{- end -}}
{{- end -}}

{{/* One token class as an env var (name .as, default .key) from its Secret; nothing when off. */}}
{{- define "sie-operator.tokenEnv" -}}
{{- $ref := include "sie-operator.tokenRef" . -}}
{{- if $ref -}}
- name: {{ .as | default .key }}
  valueFrom:
    secretKeyRef:
      name: {{ regexReplaceAll "/[^/]*$" $ref "" }}
      key: {{ regexReplaceAll "^.*/" $ref "" }}
{{- end }}
{{- end -}}

{{- define "sie-operator.adminTokenRef" -}}{{ include "sie-operator.tokenRef" (dict "ctx" . "token" "adminToken" "key" "SIE_ADMIN_TOKEN") }}{{- end -}}
{{- define "sie-operator.readTokenRef" -}}{{ include "sie-operator.tokenRef" (dict "ctx" . "token" "authToken" "key" "SIE_AUTH_TOKEN") }}{{- end -}}
{{- define "sie-operator.exportTokenRef" -}}{{ include "sie-operator.tokenRef" (dict "ctx" . "token" "exportToken" "key" "SIE_EXPORT_TOKEN") }}{{- end -}}

{{/* NATS credentials ------------------------------------------------------------------- */}}

{{/* The Secret with SIE_NATS_USER / SIE_NATS_PASSWORD every component logs in with; "" when
none (external NATS without nats.external.existingSecret). */}}
{{- define "sie-operator.natsSecretName" -}}
{{- if include "sie-operator.builtinNats" . -}}
{{- .Values.nats.builtin.auth.existingSecret | default (printf "%s-nats" (include "sie-operator.fullname" .)) -}}
{{- else if .Values.nats.external.url -}}
{{- if and .Values.nats.external.existingSecret .Values.nats.external.credsSecret.name -}}
{{- fail "nats.external: give existingSecret (user/password) or credsSecret (.creds file), not both" -}}
{{- end -}}
{{- .Values.nats.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The Secret with the external NATS .creds file; "" when none. */}}
{{- define "sie-operator.natsCredsSecret" -}}
{{- if and .Values.nats.external.url (not (include "sie-operator.builtinNats" .)) -}}
{{- .Values.nats.external.credsSecret.name -}}
{{- end -}}
{{- end -}}

{{- define "sie-operator.natsAuthEnv" -}}
{{- with include "sie-operator.natsSecretName" . -}}
- name: SIE_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: SIE_NATS_USER
- name: SIE_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: SIE_NATS_PASSWORD
{{- end }}
{{- if include "sie-operator.natsCredsSecret" . }}
- name: SIE_NATS_CREDS
  value: /etc/sie/nats/{{ .Values.nats.external.credsSecret.key }}
{{- end }}
{{- end -}}

{{/* The .creds volume and its mount (nothing without credsSecret); call with nindent. */}}
{{- define "sie-operator.natsCredsVolume" -}}
{{- with include "sie-operator.natsCredsSecret" . -}}
- name: nats-creds
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end -}}
{{- define "sie-operator.natsCredsMount" -}}
{{- if include "sie-operator.natsCredsSecret" . -}}
- name: nats-creds
  mountPath: /etc/sie/nats
  readOnly: true
{{- end }}
{{- end -}}

{{/* The built-in nats-server's configuration: clients must log in. */}}
{{- define "sie-operator.natsConf" -}}
port: 4222
http_port: 8222
authorization {
  user: $SIE_NATS_USER
  password: $SIE_NATS_PASSWORD
}
{{- if include "sie-operator.builtinJetStream" . }}
# ha.enabled: the operator's store is a JetStream stream on this server.
jetstream {
  store_dir: /data/jetstream
}
{{- end }}
{{- end -}}

{{/* A Secret's existing data (kept across `helm upgrade`), or an empty dict at install. */}}
{{- define "sie-operator.secretData" -}}
{{- $found := lookup "v1" "Secret" .ns .name -}}
{{- toJson (($found).data | default dict) -}}
{{- end -}}

{{- define "sie-operator.podNameEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{- define "sie-operator.leaseRules" -}}
# Leader election (ha.enabled): create the Lease once, then read and renew that one Lease.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: [{{ include "sie-operator.leaseName" . | quote }}]
  verbs: ["get", "update"]
{{- end -}}

{{/* The operator's rules in each namespace it serves (Role or ClusterRole). Exactly the verbs it
uses; e2e/test_chart_rbac.py removes each one in turn and shows what breaks. */}}
{{- define "sie-operator.operatorRules" -}}
# kopf lists and watches ModelConfigs.
- apiGroups: ["sie.dev"]
  resources: ["modelconfigs"]
  verbs: ["list", "watch"]
# Status is the operator's only write to a ModelConfig (merge patch of /status).
- apiGroups: ["sie.dev"]
  resources: ["modelconfigs/status"]
  verbs: ["patch"]
# Events on ModelConfigs (accepted, published, ready, refusals).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
