{{/* Chart name, truncated to leave room for suffixes (Kubernetes names are <= 63 chars). */}}
{{- define "qwen-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name alone when it already contains the chart name. */}}
{{- define "qwen-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "qwen-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release (objects add app.kubernetes.io/component). */}}
{{- define "qwen-operator.labels" -}}
helm.sh/chart: {{ include "qwen-operator.chart" . }}
app.kubernetes.io/name: {{ include "qwen-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: qwen-operator
{{- end }}

{{/* Selector labels of the operator pod (immutable for the life of the Deployment). */}}
{{- define "qwen-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "qwen-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "qwen-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest when pinned, else repository:tag (tag defaults to appVersion). */}}
{{- define "qwen-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The operator config file (ConfigMap data); keys documented under `config` in values.yaml. */}}
{{- define "qwen-operator.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $_ := set $cfg "operatorImage" (default (include "qwen-operator.image" .) .Values.config.operatorImage) }}
{{- toYaml $cfg }}
{{- end }}

{{/*
RBAC rules for namespaced resources: a ClusterRole when every namespace is watched, a Role in
each watched namespace otherwise. The operator deletes pool Deployments leaving the plan and
the router's objects once spec.routing no longer asks for them; the garbage collector removes
the rest through owner references.
*/}}
{{- define "qwen-operator.namespacedRules" -}}
# The QwenDeployments themselves: kopf lists and watches them into its cache; the reconciler
# reads one before acting. The operator never writes spec (GitOps owns it).
- apiGroups: ["serving.qwenops.io"]
  resources: ["qwendeployments"]
  verbs: ["get", "list", "watch"]
# Status is written with server-side apply (PATCH), one field manager per concern.
- apiGroups: ["serving.qwenops.io"]
  resources: ["qwendeployments/status"]
  verbs: ["patch"]
# Owned objects carry ownerReferences with blockOwnerDeletion, which clusters with the
# OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) only allow to
# users who may update the owner's finalizers.
- apiGroups: ["serving.qwenops.io"]
  resources: ["qwendeployments/finalizers"]
  verbs: ["update"]
# One Deployment per GPU pool and the router's Deployment: watched (cache + triggers), created
# and updated with server-side apply (create + patch), deleted when a pool leaves the plan or
# routing is switched off.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The client Service (router or servers) and <name>-servers: watched, server-side applied;
# <name>-servers is deleted when routing is switched off.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The PodDisruptionBudgets of the servers and of the router: watched, server-side applied;
# the router's is deleted when routing is switched off.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# GPU requests of running pods: free GPUs per type = node capacity - pod requests. The router's
# Role grants get/list/watch on pods, which RBAC lets the operator grant only because it holds it.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# The router's ServiceAccount (<name>-router): watched, server-side applied, deleted when
# routing is switched off. No token requests: the kubelet mounts the router's token.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The router's Role (get/list/watch pods and qwendeployments, both held by the operator itself,
# so no escalate/bind verbs are needed) and its RoleBinding to the router's ServiceAccount.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Events on QwenDeployments for decisions a user cares about (placed, scaled, rejected).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.rbac.serviceMonitors }}
# A Prometheus Operator ServiceMonitor per QwenDeployment (engine /metrics for the autoscaler) and
# one for its router; server-side applied, watched (drift, pruning), deleted when no longer rendered;
# only when that CRD exists.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}
{{- if .Values.rbac.gatewayAPI }}
# Gateway API path (spec.routing.gateway.inferencePool): an InferencePool over the server pods,
# only when the Gateway API Inference Extension CRD exists; watched, applied, deleted when off.
- apiGroups: ["inference.networking.k8s.io"]
  resources: ["inferencepools"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# ... and the HTTPRoute from the named Gateway to it (Gateway API CRD), the same way.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}
{{- if .Values.rbac.leaderWorkerSet }}
# Pools whose replica spans nodes: a LeaderWorkerSet per pool (its controller creates the group
# pods), only when that CRD exists; server-side applied, watched (drift, status), deleted when
# the pool leaves the plan.
- apiGroups: ["leaderworkerset.x-k8s.io"]
  resources: ["leaderworkersets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}
{{- end }}
