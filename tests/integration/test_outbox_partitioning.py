"""Keys land on the partition a Java producer would pick (murmur2, as the README says).

The relay publishes one event per key; a consumer reads back where each landed; a small
Java program (tests/integration/java/PartitionForKey.java, run from source with the stack's
kafka-clients jar) asks the Java client's own partitioner, BuiltInPartitioner.partitionForKey,
for the same keys. Keys: ASCII, UUIDs, multi-byte UTF-8, every length from 0 to 40 bytes
(murmur2 handles the last 1-3 bytes apart), for topics of 13 and 64 partitions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import localstack
from tests.integration.outbox_support import (
    consume,
    create_topic,
    fresh_outbox,
    insert_events,
    pending,
    relays,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

JAVA_SOURCE = Path(__file__).parent / "java" / "PartitionForKey.java"
PARTITION_COUNTS = (13, 64)


def _keys() -> list[str]:
    keys = [f"key-{i}" for i in range(1000)]
    keys += [str(uuid.UUID(int=i * 7919 + 1)) for i in range(500)]
    keys += ["x" * n for n in range(41)]  # includes the empty key
    keys += [f"ключ-{i}" for i in range(100)] + [f"鍵-{i}" for i in range(100)]
    keys += [f"🔑{i}" for i in range(100)] + ["42", "-1", " ", "a b", "ünïcödé"]
    return list(dict.fromkeys(keys))


def java_partitions(keys: list[str], counts: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The Java producer's partition for each key, per partition count."""
    java = shutil.which("java")
    if java is None:
        pytest.fail("java not found (the local stack's Kafka needs it too): "
                    "apt-get install openjdk-17-jre-headless")
    libs = localstack.KAFKA_LIBS
    jars = [*libs.glob("kafka-clients-*.jar"), *libs.glob("slf4j-api-*.jar")]
    assert len(jars) == 2, f"kafka-clients and slf4j-api jars in {libs}: make setup"
    stdin = "".join(key.encode().hex() + "\n" for key in keys)
    out = subprocess.run(
        [java, "-cp", ":".join(map(str, jars)), str(JAVA_SOURCE), *map(str, counts)],
        input=stdin, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()
    assert len(out) == len(keys), out[-3:]
    return {key: tuple(int(p) for p in line.split()) for key, line in zip(keys, out, strict=True)}


@pytest.fixture
def outbox(stack: dict[str, Any]) -> Iterator[tuple[str, str]]:
    with fresh_outbox(stack, partitions=PARTITION_COUNTS[0],
                      extra_topics=[f"-p{PARTITION_COUNTS[1]}"]) as table_and_topic:
        yield table_and_topic


def test_keys_land_where_a_java_producer_puts_them(
    stack: dict[str, Any], outbox: tuple[str, str], tmp_path: Path
) -> None:
    table, topic = outbox
    dsn, bootstrap = str(stack["OUTBOX_DSN"]), str(stack["KAFKA_BOOTSTRAP_SERVERS"])
    topics = {topic: PARTITION_COUNTS[0], f"{topic}-p{PARTITION_COUNTS[1]}": PARTITION_COUNTS[1]}
    create_topic(bootstrap, f"{topic}-p{PARTITION_COUNTS[1]}", PARTITION_COUNTS[1])
    keys = _keys()
    expected = java_partitions(keys, PARTITION_COUNTS)
    # Not a tautology: the keys spread over the partitions.
    assert len({p[0] for p in expected.values()}) == PARTITION_COUNTS[0]

    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in topics:
            insert_events(conn, table, [(name, key, "Keyed", json.dumps({"k": key}))
                                        for key in keys])
    with relays(stack, table, tmp_path) as (relay,):
        relay.wait_ready()
        wait_until(lambda: pending(dsn, table) == 0, 60, f"every row published: {relay.tail()}")

    for index, (name, count) in enumerate(topics.items()):
        messages = consume(bootstrap, name, len(keys), timeout=30, partitions=count)
        landed = {m.key: m.partition for m in messages}
        assert set(landed) == set(keys)
        wrong = {k: (landed[k], expected[k][index]) for k in keys
                 if landed[k] != expected[k][index]}
        assert not wrong, (f"{len(wrong)} of {len(keys)} keys on another partition than a "
                           f"Java producer's ({count} partitions), key: (relay, java): "
                           f"{dict(list(wrong.items())[:5])}")
