"""A real group-coordinator move, on a second broker that joins the stack's Kafka cluster
for this test: the groups' __consumer_offsets partition is reassigned to it, the old
coordinator answers NOT_COORDINATOR, and the operator's protocol client finds the new one
and answers every group in that same sweep (issue 10: the NOT_COORDINATOR window)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

import localstack
from kcg_operator.scaling.collector import ClusterKey, GroupRequest
from kcg_operator.scaling.kafka_wire import WireLagCollector
from tests.integration.lag_support import topic_with_committed_groups

pytestmark = pytest.mark.integration

OFFSETS_PARTITIONS = 8  # offsets.topic.num.partitions in the stack's server.properties
NEW_NODE = 2


def _java_string_hash(text: str) -> int:
    h = 0
    for unit in text.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def offsets_partition(group_id: str) -> int:
    """The __consumer_offsets partition whose leader coordinates `group_id` (Kafka's
    partitionFor: Utils.abs(hashCode) % partitions, where Utils.abs(MIN_VALUE) is 0)."""
    h = _java_string_hash(group_id)
    return (0 if h == -(1 << 31) else abs(h)) % OFFSETS_PARTITIONS


def _java() -> list[str]:
    return ["java", "-Xms128m", "-Xmx256m", "-Djava.awt.headless=true",
            "-cp", f"{localstack.KAFKA_LIBS}/*"]


def _until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def second_broker(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Broker node 2 of the stack's cluster (broker role only), on loopback; its bootstrap."""
    kafka = localstack.STATE / "kafka"
    props = dict(line.split("=", 1) for line in (kafka / "server.properties").read_text()
                 .splitlines() if "=" in line)
    meta = dict(line.split("=", 1) for line in (kafka / "data" / "meta.properties")
                .read_text().splitlines() if "=" in line)
    port = localstack.free_port()
    # pytest keeps the last runs' directories (the broker's log) and removes older ones.
    work = tmp_path_factory.mktemp("broker2")
    config = work / "server.properties"
    config.write_text("\n".join([
        "process.roles=broker", f"node.id={NEW_NODE}",
        f"controller.quorum.voters={props['controller.quorum.voters']}",
        "controller.listener.names=CONTROLLER",
        f"listeners=PLAINTEXT://127.0.0.1:{port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={work / 'data'}",
        "auto.create.topics.enable=false",
        f"offsets.topic.num.partitions={OFFSETS_PARTITIONS}",
        "offsets.topic.replication.factor=1", "",
    ]))
    subprocess.run([*_java(), "kafka.tools.StorageTool", "format",
                    f"--cluster-id={meta['cluster.id']}", "-c", str(config)],
                   check=True, capture_output=True)
    log = (work / "broker.log").open("wb")
    proc = subprocess.Popen([*_java(), "kafka.Kafka", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    bootstrap = f"127.0.0.1:{port}"
    try:
        admin = AdminClient({"bootstrap.servers": str(stack["KAFKA_BOOTSTRAP_SERVERS"])})
        _until(lambda: NEW_NODE in {n.id for n in admin.describe_cluster().result(10).nodes},
               f"broker {NEW_NODE} to join the cluster (log: {work / 'broker.log'})")
        yield bootstrap
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _reassign(bootstrap: str, partition: int, node: int, work: Path) -> None:
    plan = work / f"plan-{partition}-{node}.json"
    plan.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": "__consumer_offsets", "partition": partition, "replicas": [node]}]}))
    tool = [*_java(), "org.apache.kafka.tools.reassign.ReassignPartitionsCommand",
            "--bootstrap-server", bootstrap, "--reassignment-json-file", str(plan)]
    subprocess.run([*tool, "--execute"], check=True, capture_output=True)

    def done() -> bool:
        out = subprocess.run([*tool, "--verify"], capture_output=True, text=True)
        return out.returncode == 0 and "is complete" in out.stdout

    _until(done, f"__consumer_offsets-{partition} to move to broker {node}")


def _coordinator(bootstrap: str, group: str) -> int:
    """The group's coordinator, as a new client finds it (librdkafka caches coordinators)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return int(admin.describe_consumer_groups([group])[group].result(10).coordinator.id)


def test_a_group_whose_coordinator_moves_is_answered_in_the_same_sweep(
    stack: dict[str, Any], second_broker: str, unique_name: str, tmp_path: Path,
) -> None:
    bootstrap = str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    topic = unique_name
    groups = topic_with_committed_groups(bootstrap, topic, [10], list(range(10)))
    partition = offsets_partition(groups[0])
    moving = [g for g in groups if offsets_partition(g) == partition]
    assert _coordinator(bootstrap, moving[0]) == 1
    requests = [GroupRequest(g, (topic,)) for g in groups]
    key = ClusterKey.of(bootstrap)
    collector = WireLagCollector(timeout_s=10)
    try:
        before = collector.sweep(key, requests)
        assert all(s.broker_ok for s in before.values())
        cluster = collector._wire[key]
        assert {cluster.coordinators[g] for g in moving} == {1}

        _reassign(bootstrap, partition, NEW_NODE, tmp_path)
        _until(lambda: _coordinator(bootstrap, moving[0]) == NEW_NODE,
               "the groups' coordinator to be broker 2")
        after = collector.sweep(key, requests)
        # Asked at broker 1 (NOT_COORDINATOR), looked up, asked at broker 2: one sweep.
        for g in groups:
            assert after[g].broker_ok, after[g].error
            assert after[g].offsets == before[g].offsets
        assert {cluster.coordinators[g] for g in moving} == {NEW_NODE}
        assert cluster.coordinator_moves >= len(moving)
        print(f"coordinator-move: {len(moving)} of {len(groups)} groups moved from broker 1 "
              f"to {NEW_NODE} (__consumer_offsets-{partition}); re-asked "
              f"{cluster.coordinator_moves}, every group answered in the sweep after the move")
    finally:
        _reassign(bootstrap, partition, 1, tmp_path)
        collector.close()
