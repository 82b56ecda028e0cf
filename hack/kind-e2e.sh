#!/usr/bin/env bash
# The e2e suite on a throw-away kind cluster, for machines with Docker (`make kind-e2e`):
#
#   1. create a kind cluster            5. helm install the chart with that image
#   2. docker build the operator image  6. run the e2e suite with KUBECONFIG -> kind
#   3. kind load the image into it      7. delete the cluster (always, via trap)
#   4. start a single-node Kafka (KRaft) in the cluster, unless KAFKA_BOOTSTRAP_SERVERS is set
#
# Settings (environment):
#   KIND_CLUSTER_NAME   cluster name                      (default: kcg-e2e)
#   KIND_NODE_IMAGE     kindest/node image, e.g. kindest/node:v1.34.0 (default: kind's)
#   IMAGE               image to build and load, name:tag (default: kcg-operator:e2e)
#   KCG_NAMESPACE       namespace of the operator release (default: kcg-system)
#   KAFKA_IMAGE         broker image                      (default: apache/kafka:4.1.1)
#   KAFKA_BOOTSTRAP_SERVERS  use this broker instead of starting one; it must be reachable
#                       from this machine, and from the pods at the same address unless
#                       KCG_E2E_KAFKA_BOOTSTRAP_IN_CLUSTER gives the pods' address of it
#   KEEP_CLUSTER=1      do not delete the cluster at the end (to debug it)
# Extra arguments are passed to pytest, e.g. `hack/kind-e2e.sh -k scale -x`.
#
# The in-cluster broker has two listeners: localhost:30092 for the test runner (kind maps
# the node port to this machine) and kafka.kcg-kafka.svc.cluster.local:9092 for the
# operator and the consumer pods. The suite gets them as KAFKA_BOOTSTRAP_SERVERS and
# KCG_E2E_KAFKA_BOOTSTRAP_IN_CLUSTER (the address to put in KafkaConsumerGroup specs).
#
# Our build machines have no Docker engine, so this script cannot run there; there the
# same suite runs against the local stack (`make test`).
set -euo pipefail

cd "$(dirname "$0")/.."

CLUSTER="${KIND_CLUSTER_NAME:-kcg-e2e}"
IMAGE="${IMAGE:-kcg-operator:e2e}"
NAMESPACE="${KCG_NAMESPACE:-kcg-system}"
KAFKA_IMAGE="${KAFKA_IMAGE:-apache/kafka:4.1.1}"
KAFKA_HOST_PORT=30092
RELEASE="kcg-operator"
PYTEST=".venv/bin/pytest"

die() {
  echo "kind-e2e: $*" >&2
  exit 2
}

step() { echo "kind-e2e: $*" >&2; }

# The pinned kubectl/helm of the local stack (make setup) serve when none is on PATH.
CACHE="${KCG_CACHE_DIR:-$HOME/.cache/kcg-operator}"
for bin in "$CACHE"/k8s-*/bin "$CACHE"/helm-*/bin; do
  if [[ -d "$bin" ]]; then PATH="$PATH:$bin"; fi
done
export PATH

command -v docker >/dev/null 2>&1 ||
  die "docker not found: this target needs Docker (https://docs.docker.com/engine/install/). Without Docker, run the same suite on the local stack: make test"
docker info >/dev/null 2>&1 ||
  die "docker is installed but its daemon is not reachable (is it running, may this user use it?): docker info"
command -v kind >/dev/null 2>&1 ||
  die "kind not found: install it (https://kind.sigs.k8s.io/docs/user/quick-start/#installation), e.g. go install sigs.k8s.io/kind@latest"
command -v kubectl >/dev/null 2>&1 || die "kubectl not found: install it, or run 'make setup' for the pinned one"
command -v helm >/dev/null 2>&1 || die "helm not found: install Helm 3, or run 'make setup' for the pinned one"
[[ -x "$PYTEST" ]] || die "$PYTEST not found: run 'make setup' first to create the virtualenv"
[[ "$IMAGE" == *:* && "${IMAGE##*:}" != */* ]] || die "IMAGE must be name:tag, got '$IMAGE'"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  die "a kind cluster named '$CLUSTER' exists already; delete it (kind delete cluster --name $CLUSTER) or set KIND_CLUSTER_NAME"
fi

WORK="$(mktemp -d)"
KIND_KUBECONFIG="$WORK/kubeconfig"

cleanup() {
  local rc=$?
  if [[ "${KEEP_CLUSTER:-}" == "1" ]]; then
    step "keeping cluster '$CLUSTER' (KEEP_CLUSTER=1); kubeconfig: kind get kubeconfig --name $CLUSTER"
  else
    step "deleting cluster '$CLUSTER'"
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "creating kind cluster '$CLUSTER'"
cat >"$WORK/kind.yaml" <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraPortMappings:
      - containerPort: $KAFKA_HOST_PORT
        hostPort: $KAFKA_HOST_PORT
        listenAddress: 127.0.0.1
KIND
kind create cluster --name "$CLUSTER" --kubeconfig "$KIND_KUBECONFIG" --wait 180s \
  --config "$WORK/kind.yaml" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
export KUBECONFIG="$KIND_KUBECONFIG"

START_KAFKA=0
if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  START_KAFKA=1
  step "starting Kafka ($KAFKA_IMAGE) in the cluster"
  kubectl apply -f - <<KAFKA
apiVersion: v1
kind: Namespace
metadata:
  name: kcg-kafka
---
apiVersion: v1
kind: Service
metadata:
  name: kafka
  namespace: kcg-kafka
spec:
  type: NodePort
  selector: {app: kafka}
  ports:
    - {name: internal, port: 9092, targetPort: 9092}
    - {name: external, port: $KAFKA_HOST_PORT, targetPort: $KAFKA_HOST_PORT, nodePort: $KAFKA_HOST_PORT}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kafka
  namespace: kcg-kafka
spec:
  replicas: 1
  selector:
    matchLabels: {app: kafka}
  template:
    metadata:
      labels: {app: kafka}
    spec:
      containers:
        - name: kafka
          image: $KAFKA_IMAGE
          ports:
            - containerPort: 9092
            - containerPort: $KAFKA_HOST_PORT
          env:
            - {name: CLUSTER_ID, value: "N9j5fvKSQAmxz7XiTDAGDQ"}
            - {name: KAFKA_NODE_ID, value: "1"}
            - {name: KAFKA_PROCESS_ROLES, value: "broker,controller"}
            - {name: KAFKA_CONTROLLER_QUORUM_VOTERS, value: "1@localhost:9093"}
            - {name: KAFKA_CONTROLLER_LISTENER_NAMES, value: "CONTROLLER"}
            - {name: KAFKA_INTER_BROKER_LISTENER_NAME, value: "INTERNAL"}
            - {name: KAFKA_LISTENERS, value: "INTERNAL://:9092,EXTERNAL://:$KAFKA_HOST_PORT,CONTROLLER://:9093"}
            - {name: KAFKA_ADVERTISED_LISTENERS, value: "INTERNAL://kafka.kcg-kafka.svc.cluster.local:9092,EXTERNAL://localhost:$KAFKA_HOST_PORT"}
            - {name: KAFKA_LISTENER_SECURITY_PROTOCOL_MAP, value: "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"}
            - {name: KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR, value: "1"}
            - {name: KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR, value: "1"}
            - {name: KAFKA_TRANSACTION_STATE_LOG_MIN_ISR, value: "1"}
            - {name: KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS, value: "0"}
          readinessProbe:
            tcpSocket: {port: 9092}
            periodSeconds: 5
KAFKA
  export KAFKA_BOOTSTRAP_SERVERS="localhost:$KAFKA_HOST_PORT"
  export KCG_E2E_KAFKA_BOOTSTRAP_IN_CLUSTER="kafka.kcg-kafka.svc.cluster.local:9092"
else
  export KCG_E2E_KAFKA_BOOTSTRAP_IN_CLUSTER="${KCG_E2E_KAFKA_BOOTSTRAP_IN_CLUSTER:-$KAFKA_BOOTSTRAP_SERVERS}"
fi

step "building image $IMAGE"
docker build -t "$IMAGE" .
# The example consumer apps the e2e workload runs (also under the examples' own name).
EXAMPLES_IMAGE="${EXAMPLES_IMAGE:-kcg-example-apps:e2e}"
docker build -t "$EXAMPLES_IMAGE" -t ghcr.io/kcg-dev/kcg-example-apps:0.1.0 examples

step "loading $IMAGE into the cluster"
kind load docker-image "$IMAGE" "$EXAMPLES_IMAGE" ghcr.io/kcg-dev/kcg-example-apps:0.1.0 \
  --name "$CLUSTER"

step "installing the chart (release $RELEASE in $NAMESPACE)"
# The image was side-loaded into the node, so it must never be pulled.
helm install "$RELEASE" charts/kcg-operator \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.repository="${IMAGE%:*}" \
  --set image.tag="${IMAGE##*:}" \
  --set image.pullPolicy=Never \
  --wait --timeout 180s
kubectl -n "$NAMESPACE" rollout status "deployment/$RELEASE" --timeout=120s

if [[ "$START_KAFKA" == "1" ]]; then
  step "waiting for Kafka"
  kubectl -n kcg-kafka rollout status deployment/kafka --timeout=300s
fi

step "running the e2e suite against kind"
# KCG_E2E_OPERATOR_RUNNING=1: the operator under test is the one the chart installed.
KCG_E2E_EXTERNAL_CLUSTER=1 \
  KCG_E2E_OPERATOR_RUNNING=1 \
  KCG_E2E_EXAMPLES_IMAGE="$EXAMPLES_IMAGE" \
  KCG_E2E_OPERATOR_NAMESPACE="$NAMESPACE" \
  KCG_E2E_OPERATOR_RELEASE="$RELEASE" \
  "$PYTEST" -m e2e "$@"
