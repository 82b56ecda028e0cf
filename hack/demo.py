"""make demo: watch a consumer group scale up on a burst and back down.

Brings up the local stack (or uses the running one), starts the operator, applies a
KafkaConsumerGroup with scaling whose consumers run as pods of the example image on the
stack's node, produces a burst, and shows `kubectl get kcg -w` until the group is back at
minReplicas. Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "stack"))

import yaml  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from kubernetes import client, config  # noqa: E402

import localstack  # noqa: E402

NS, NAME, PARTITIONS, BURST = "kcg-demo", "orders", 6, 12000


def main() -> int:
    state = localstack.up()
    env = {**os.environ, "KUBECONFIG": str(state["KUBECONFIG"])}
    kubectl = str(localstack.K8S_BIN / "kubectl")
    bootstrap = str(state["KAFKA_BOOTSTRAP_SERVERS"])
    subprocess.run([kubectl, "apply", "--server-side", "--force-conflicts", "-f",
                    str(REPO / "crds")], env=env, check=True, capture_output=True)
    subprocess.run([kubectl, "create", "namespace", NS], env=env, capture_output=True)
    topic = f"demo-orders-{uuid.uuid4().hex[:4]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the request
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
    body = {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "topics": [topic], "kafka": {"bootstrapServers": bootstrap},
            "scaling": {"minReplicas": 1, "maxReplicas": 12, "lagPerReplica": 500,
                        "pollIntervalSeconds": 3, "scaleDownStabilizationSeconds": 20},
            "template": {"spec": {"containers": [{
                "name": "consumer", "image": "ghcr.io/kcg-dev/kcg-example-apps:0.1.0",
                "command": ["python", "/app/consumer.py"], "args": ["--rate", "150"]}]}},
        },
    }
    subprocess.run([kubectl, "apply", "-f", "-"], input=yaml.safe_dump(body), text=True,
                   env=env, check=True, capture_output=True)
    log = REPO / ".stack" / "logs" / "demo-operator.log"
    operator = subprocess.Popen([sys.executable, "-m", "kcg_operator.cli", "run", "-n", NS,
                                 "--liveness-port", "0", "--metrics-port", "0"],
                                env={**env, "KCG_CHECK_INTERVAL_SECONDS": "3"},
                                stdout=log.open("wb"),
                                stderr=subprocess.STDOUT)
    api = config.new_client_from_config(config_file=str(state["KUBECONFIG"]))
    apps = client.AppsV1Api(api)
    while True:
        try:
            apps.read_namespaced_deployment(NAME, NS)
            break
        except client.ApiException:
            time.sleep(0.5)
    watch = subprocess.Popen([kubectl, "get", "kcg", "-n", NS, "-w"], env=env)
    try:
        time.sleep(8)
        print(f"--- producing a burst of {BURST} messages to {topic} ---", flush=True)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        for i in range(BURST):
            producer.produce(topic, key=f"k{i % 101}", value=f"order-{i}")
        producer.flush(30)
        scaled_up = False
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            replicas = apps.read_namespaced_deployment(NAME, NS).spec.replicas
            scaled_up = scaled_up or replicas > 1
            if scaled_up and replicas == 1:
                time.sleep(3)
                break
            time.sleep(1)
        print("--- back at minReplicas; events: ---", flush=True)
        subprocess.run([kubectl, "get", "events", "-n", NS,
                        "--field-selector", "reason=Scaled",
                        "-o", "custom-columns=TIME:.lastTimestamp,MESSAGE:.message"], env=env)
    except KeyboardInterrupt:
        pass
    finally:
        watch.terminate()
        operator.terminate()
        operator.wait(20)
        subprocess.run([kubectl, "delete", "namespace", NS, "--wait=false"], env=env,
                       capture_output=True)
    print("demo done; `make down` stops the local stack", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
