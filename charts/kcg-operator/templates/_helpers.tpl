{{/*
Chart name, truncated to 63 characters (the DNS-1123 label limit).
*/}}
{{- define "kcg-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, unless it already contains the chart name.
*/}}
{{- define "kcg-operator.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "kcg-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "kcg-operator.labels" -}}
helm.sh/chart: {{ include "kcg-operator.chart" . }}
{{ include "kcg-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: kcg-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels (immutable in a Deployment: never add to them).
*/}}
{{- define "kcg-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kcg-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "kcg-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kcg-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image reference: repository:tag (tag defaults to appVersion) or @digest.
*/}}
{{- define "kcg-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The API rights the operator needs, the same for the ClusterRole (all namespaces) and for
each Role (one per watched namespace). Nothing else: no secrets list/watch, pods list only, no
namespaces, no CRDs, no kopf peering objects (the operator runs kopf standalone and finds
its resources through API discovery).
*/}}
{{- define "kcg-operator.rules" -}}
# The custom resources: watched only (the operator never changes their spec or metadata).
- apiGroups: ["kcg.dev"]
  resources: ["kafkaconsumergroups"]
  verbs: ["get", "list", "watch"]
# Report status and conditions (server-side apply on the status subresource).
- apiGroups: ["kcg.dev"]
  resources: ["kafkaconsumergroups/status"]
  verbs: ["get", "patch"]
# Owner references with blockOwnerDeletion need this where the
# OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift, hardened clusters).
- apiGroups: ["kcg.dev"]
  resources: ["kafkaconsumergroups/finalizers"]
  verbs: ["update"]
# The consumer workload (owned by the custom resource): server-side apply, and a watch
# of its replicas. delete: owner references need it under the admission plugin above.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Replicas decided from lag are set through the scale subresource.
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
# The consumer properties file (owned by the custom resource): server-side apply, and a
# watch (label-selected: only ours) so one deleted by hand is put back.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Read the Secret named by spec.kafka.secretRef (its keys, and auth for lag collection).
# Only `get` by name: the operator can never list or watch Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# The consumer pods' own status (ImagePullBackOff, CrashLoopBackOff, ...) for the
# PodsHealthy condition: one LIST per group per check, by the Deployment's label selector.
# Only list: the operator neither gets pods by name nor watches them.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Events that explain its decisions (core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* The leader election Lease (in the release namespace). */}}
{{- define "kcg-operator.leaseName" -}}
{{- default (include "kcg-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}
