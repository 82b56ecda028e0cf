"""Example consumer app for a KafkaConsumerGroup (confluent-kafka).

It uses what kcg-operator injects into the container (read by kcg_client.py, beside it):

- KCG_CONSUMER_PROPERTIES: the client properties file (group.id, bootstrap.servers,
  cooperative-sticky, enable.auto.commit=false, enable.auto.offset.store=false, ...);
- KCG_KAFKA_AUTH_DIR (optional): one file per auth property from the Secret;
- KAFKA_TOPICS: comma-separated topics; KCG_DELIVERY_SEMANTICS; KCG_POD_NAME.

Processing is at-least-once: process a message, then store its offset; stored offsets
are committed every second, when partitions are revoked and on shutdown. A crash or a
rebalance can therefore hand a message over twice, so processing is deduplicated by an
idempotency key: (message key, `event-id` header) when the producer set that header,
else (topic, partition, offset), which still catches redelivery of the same record.

The dedup set is IN MEMORY (bounded, most recent keys) unless --dedup-file names a file
on a volume, in which case keys are appended there and reloaded at start. Either way it
is per pod: a partition that moves to another pod brings no memory of what this pod saw.
A real app keeps the keys where its results go (a unique constraint in its database), in
the same transaction as the result.

On SIGTERM (pod stop, scale-down, rolling update) it finishes the message in hand,
commits, and leaves the group with close(), so the cooperative rebalance moves only this
pod's partitions.

With --stats, a JSON line per second (`stats {...}`: messages delivered so far, partitions
owned, partitions revoked so far, and `stalled`: seconds so far in gaps of more than
STALL_GAP_SECONDS between two deliveries) lets a benchmark see when each consumer processed
nothing (benchmarks/bench_rebalance.py).

    python consumer.py [--rate N] [--dedup-file PATH] [--max-messages N] [--stats] [--verbose]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

# Beside this file (in the image: /app); Python puts the script's directory on sys.path.
from kcg_client import (
    RETRIABLE_COMMIT_ERRORS,
    ConfigError,
    StopFlag,
    client_config,
    commit,
    paced,
    topics,
)

log = logging.getLogger("consumer")

COMMIT_INTERVAL_SECONDS = 1.0
# Under steady traffic deliveries come milliseconds apart; a longer gap is a stop.
STALL_GAP_SECONDS = 0.1
DEDUP_CAPACITY = 100_000


class DedupSet:
    """The most recent idempotency keys, optionally persisted as an append-only file."""

    def __init__(self, capacity: int, path: Path | None) -> None:
        self.capacity = capacity
        self.keys: OrderedDict[str, None] = OrderedDict()
        self.file = None
        if path is not None:
            if path.exists():
                for line in path.read_text().splitlines()[-capacity:]:
                    self.keys[line] = None
            self.file = path.open("a")

    def seen(self, key: str) -> bool:
        return key in self.keys

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def add(self, key: str) -> None:
        self.keys[key] = None
        if len(self.keys) > self.capacity:
            self.keys.popitem(last=False)
        if self.file is not None:
            self.file.write(key + "\n")
            self.file.flush()


def idempotency_key(msg: Message) -> str:
    raw_key = msg.key()
    key = raw_key.hex() if isinstance(raw_key, bytes) else str(raw_key or "")
    for header in msg.headers() or []:
        name, value = header[0], header[1]
        if name == "event-id" and value is not None:
            event_id = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            return f"k:{key}:e:{event_id}"
    return f"o:{msg.topic()}:{msg.partition()}:{msg.offset()}"


def process(msg: Message, verbose: bool) -> None:
    """The business logic; here it only reports the message."""
    if verbose:
        log.info(
            "processed %s[%d]@%d key=%r", msg.topic(), msg.partition(), msg.offset(), msg.key()
        )


def run(args: argparse.Namespace) -> int:
    config = client_config(os.environ)
    subscribed = topics(os.environ)
    semantics = os.environ.get("KCG_DELIVERY_SEMANTICS", "atLeastOnce")
    if semantics == "exactlyOnce":
        log.warning("this example does not produce; it processes exactlyOnce groups at least once")
    commit_first = semantics == "atMostOnce"

    stop = StopFlag().install()

    consumer = Consumer(config)
    owned: set[tuple[str, int]] = set()
    revoked = 0

    def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
        # Cooperative rebalance: only these partitions leave; commit what we finished.
        nonlocal revoked
        log.info("revoked %s", [(p.topic, p.partition) for p in partitions])
        commit(c)
        revoked += len(partitions)
        owned.difference_update((p.topic, p.partition) for p in partitions)

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])
        owned.update((p.topic, p.partition) for p in partitions)

    def on_lost(c: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("lost %s", [(p.topic, p.partition) for p in partitions])
        owned.difference_update((p.topic, p.partition) for p in partitions)

    consumer.subscribe(subscribed, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    dedup = DedupSet(DEDUP_CAPACITY, args.dedup_file)
    processed = duplicates = 0
    stalled = 0.0
    last_delivery: float | None = None
    last_commit = last_report = last_stats = time.monotonic()
    pace = paced(args.rate)
    try:
        while not stop.stopping and (args.max_messages is None or processed < args.max_messages):
            next(pace)
            msg: Any = consumer.poll(0.5)
            if msg is not None and msg.error() is not None:
                log.warning("consume error: %s", msg.error())
            elif msg is not None:
                delivered_at = time.monotonic()
                if last_delivery is not None and delivered_at - last_delivery > STALL_GAP_SECONDS:
                    stalled += delivered_at - last_delivery
                last_delivery = delivered_at
                if commit_first:
                    try:
                        consumer.commit(message=msg, asynchronous=False)
                    except KafkaException as exc:
                        if exc.args[0].code() not in RETRIABLE_COMMIT_ERRORS:
                            raise
                        continue  # at-most-once: never process what was not committed
                key = idempotency_key(msg)
                if dedup.seen(key):
                    duplicates += 1
                else:
                    process(msg, args.verbose)
                    dedup.add(key)
                    processed += 1
                if not commit_first:
                    consumer.store_offsets(message=msg)
            now = time.monotonic()
            if not commit_first and now - last_commit >= COMMIT_INTERVAL_SECONDS:
                commit(consumer)
                last_commit = now
            if args.stats and now - last_stats >= 1.0:
                log.info("stats %s", json.dumps({
                    "t": round(time.time(), 3), "delivered": processed + duplicates,
                    "owned": len(owned), "revoked": revoked, "stalled": round(stalled, 3)}))
                last_stats = now
            if now - last_report >= 5.0:
                log.info("processed=%d duplicates=%d", processed, duplicates)
                last_report = now
    finally:
        if not commit_first:
            commit(consumer)
        consumer.close()  # leave the group now rather than after session.timeout.ms
        dedup.close()
        log.info("stopped: processed=%d duplicates=%d", processed, duplicates)
        if args.stats:
            log.info("stats %s", json.dumps({
                "t": round(time.time(), 3), "delivered": processed + duplicates,
                "owned": 0, "revoked": revoked, "stalled": round(stalled, 3), "final": True}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=None, help="max messages per second")
    parser.add_argument("--dedup-file", type=Path, default=None, help="persist dedup keys here")
    parser.add_argument("--max-messages", type=int, default=None, help="stop after N messages")
    parser.add_argument("--stats", action="store_true", help="a JSON stats line per second")
    parser.add_argument("--verbose", action="store_true", help="log every message")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return run(args)
    except ConfigError as exc:
        sys.exit(f"consumer: {exc}")


if __name__ == "__main__":
    sys.exit(main())
