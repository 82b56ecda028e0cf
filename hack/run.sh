#!/usr/bin/env bash
# make run: the operator against the current kube context; with none configured, against
# the local stack (brought up here), with the CRDs and an example applied.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
has_context() {
  "$PY" -c 'from kubernetes import config; config.list_kube_config_contexts()[1]["name"]' \
    >/dev/null 2>&1
}
if ! has_context; then
  echo "kcg: no kube context configured: starting the local stack (make down stops it)" >&2
  "$PY" stack/localstack.py up >/dev/null
  eval "$("$PY" stack/localstack.py env)"
  kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
  # `kubectl wait` errors while the CRD has no conditions yet: retry until it serves.
  for _ in $(seq 60); do
    kubectl get kcg -A >/dev/null 2>&1 && break
    sleep 1
  done
  "$PY" - <<'PYEOF'
import os
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"]})
for fut in admin.create_topics([NewTopic("orders", 6, 1)]).values():
    try:
        fut.result()
    except Exception as exc:  # already there from an earlier run
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise
PYEOF
  sed "s#bootstrapServers: kafka:9092#bootstrapServers: ${KAFKA_BOOTSTRAP_SERVERS}#" \
    examples/minimal.yaml | kubectl apply -f - >/dev/null
  echo "kcg: applied examples/minimal.yaml; in another shell: eval \"\$(make -s env)\"; kubectl get kcg" >&2
fi
exec .venv/bin/kcg run --all-namespaces "$@"
