#!/usr/bin/env bash
# The e2e suite on a throw-away kind cluster, for machines with Docker (`make kind-e2e`):
#
#   1. create a kind cluster            4. helm install the chart with that image
#   2. docker build the operator image  5. run the e2e suite with KUBECONFIG -> kind
#   3. kind load the image into it      6. delete the cluster (always, via trap)
#
# Settings (environment):
#   KIND_CLUSTER_NAME   cluster name                      (default: kcg-e2e)
#   KIND_NODE_IMAGE     kindest/node image, e.g. kindest/node:v1.34.0 (default: kind's)
#   IMAGE               image to build and load           (default: kcg-operator:e2e)
#   KCG_NAMESPACE       namespace of the operator release (default: kcg-system)
#   KEEP_CLUSTER=1      do not delete the cluster at the end (to debug it)
# Extra arguments are passed to pytest, e.g. `hack/kind-e2e.sh -k scale -x`.
#
# Our build machines have no Docker engine, so this script cannot run there; there the
# same suite runs against the local stack (`make test`).
set -euo pipefail

cd "$(dirname "$0")/.."

CLUSTER="${KIND_CLUSTER_NAME:-kcg-e2e}"
IMAGE="${IMAGE:-kcg-operator:e2e}"
NAMESPACE="${KCG_NAMESPACE:-kcg-system}"
RELEASE="kcg-operator"
PYTEST=".venv/bin/pytest"

die() {
  echo "kind-e2e: $*" >&2
  exit 2
}

# The pinned kubectl/helm of the local stack (make setup) serve when none is on PATH.
CACHE="${KCG_CACHE_DIR:-$HOME/.cache/kcg-operator}"
for bin in "$CACHE"/k8s-*/bin "$CACHE"/helm-*/bin; do
  [[ -d "$bin" ]] && PATH="$PATH:$bin"
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
[[ -x "$PYTEST" ]] || die "$PYTEST not found: run 'make setup' (or 'make unit') first to create the virtualenv"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  die "a kind cluster named '$CLUSTER' exists already; delete it (kind delete cluster --name $CLUSTER) or set KIND_CLUSTER_NAME"
fi

WORK="$(mktemp -d)"
KIND_KUBECONFIG="$WORK/kubeconfig"

cleanup() {
  local rc=$?
  if [[ "${KEEP_CLUSTER:-}" == "1" ]]; then
    echo "kind-e2e: keeping cluster '$CLUSTER' (KEEP_CLUSTER=1); its kubeconfig: kind get kubeconfig --name $CLUSTER" >&2
  else
    echo "kind-e2e: deleting cluster '$CLUSTER'" >&2
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { echo "kind-e2e: $*" >&2; }

step "creating kind cluster '$CLUSTER'"
kind create cluster --name "$CLUSTER" --kubeconfig "$KIND_KUBECONFIG" --wait 180s \
  ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
export KUBECONFIG="$KIND_KUBECONFIG"

step "building image $IMAGE"
docker build -t "$IMAGE" .

step "loading $IMAGE into the cluster"
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "installing the chart (release $RELEASE in $NAMESPACE)"
# The image was side-loaded into the node, so it must never be pulled.
helm install "$RELEASE" charts/kcg-operator \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.repository="${IMAGE%:*}" \
  --set image.tag="${IMAGE##*:}" \
  --set image.pullPolicy=Never \
  --wait --timeout 180s
kubectl -n "$NAMESPACE" rollout status "deployment/$RELEASE" --timeout=120s

step "running the e2e suite against kind"
# KCG_E2E_OPERATOR_* tell the suite an operator is already running in the cluster.
KCG_E2E_EXTERNAL_CLUSTER=1 \
  KCG_E2E_OPERATOR_NAMESPACE="$NAMESPACE" \
  KCG_E2E_OPERATOR_RELEASE="$RELEASE" \
  "$PYTEST" -m e2e "$@"
