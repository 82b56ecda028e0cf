"""Example consumer app for a KafkaConsumerGroup (confluent-kafka).

It uses what kcg-operator injects into the container:

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

    python consumer.py [--rate N] [--dedup-file PATH] [--max-messages N] [--verbose]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

log = logging.getLogger("consumer")

COMMIT_INTERVAL_SECONDS = 1.0
DEDUP_CAPACITY = 100_000


def read_properties(path: Path) -> dict[str, str]:
    """A Java-style properties file: key=value lines, # and ! comments."""
    properties: dict[str, str] = {}
    # Split on newlines only: str.splitlines() also splits on form feeds and the like.
    for raw in path.read_text().split("\n"):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        properties[key.strip()] = value.strip().replace("\\\\", "\\")
    return properties


def read_auth_dir(directory: Path) -> dict[str, str]:
    """Properties from a mounted Secret: the file name is the key, the content the value."""
    return {
        entry.name: entry.read_text().strip()
        for entry in sorted(directory.iterdir())
        # The kubelet's own entries (..data, ..2024_...) start with dots.
        if not entry.name.startswith(".") and entry.is_file()
    }


def client_config() -> dict[str, str]:
    path = os.environ.get("KCG_CONSUMER_PROPERTIES")
    if not path:
        sys.exit("KCG_CONSUMER_PROPERTIES is not set: run me from a KafkaConsumerGroup")
    config = read_properties(Path(path))
    auth_dir = os.environ.get("KCG_KAFKA_AUTH_DIR")
    if auth_dir:
        config.update(read_auth_dir(Path(auth_dir)))
    pod = os.environ.get("KCG_POD_NAME")
    if pod:
        config.setdefault("client.id", pod)
    return config


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


def paced(rate: float | None) -> Iterator[None]:
    """Yields at most `rate` times per second (no limit when rate is None)."""
    interval = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if next_at > now:
            time.sleep(next_at - now)
        next_at = max(next_at + interval, time.monotonic() - 1.0)  # no burst after a pause
        yield


def process(msg: Message, verbose: bool) -> None:
    """The business logic; here it only reports the message."""
    if verbose:
        log.info(
            "processed %s[%d]@%d key=%r", msg.topic(), msg.partition(), msg.offset(), msg.key()
        )


# A commit that loses a race with a rebalance is not an error for an at-least-once app: the
# stored offsets are committed by the next commit (or on revocation), and whatever the new
# owner re-reads is dropped by the idempotency key.
RETRIABLE_COMMIT_ERRORS = frozenset({
    KafkaError._NO_OFFSET,  # nothing stored since the last commit
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._STATE,  # no assignment at the moment
})


def commit(consumer: Consumer) -> None:
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        code = exc.args[0].code()
        if code not in RETRIABLE_COMMIT_ERRORS:
            raise
        if code != KafkaError._NO_OFFSET:
            log.info("commit deferred: %s", exc.args[0].str())


def run(args: argparse.Namespace) -> int:
    config = client_config()
    topics = [t for t in os.environ.get("KAFKA_TOPICS", "").split(",") if t]
    if not topics:
        sys.exit("KAFKA_TOPICS is empty")
    semantics = os.environ.get("KCG_DELIVERY_SEMANTICS", "atLeastOnce")
    if semantics == "exactlyOnce":
        log.warning("this example does not produce; it processes exactlyOnce groups at least once")
    commit_first = semantics == "atMostOnce"

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    consumer = Consumer(config)

    def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
        # Cooperative rebalance: only these partitions leave; commit what we finished.
        log.info("revoked %s", [(p.topic, p.partition) for p in partitions])
        commit(c)

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])

    consumer.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke)
    dedup = DedupSet(DEDUP_CAPACITY, args.dedup_file)
    processed = duplicates = 0
    last_commit = last_report = time.monotonic()
    pace = paced(args.rate)
    try:
        while not stopping and (args.max_messages is None or processed < args.max_messages):
            next(pace)
            msg: Any = consumer.poll(0.5)
            if msg is not None and msg.error() is not None:
                log.warning("consume error: %s", msg.error())
            elif msg is not None:
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
            if now - last_report >= 5.0:
                log.info("processed=%d duplicates=%d", processed, duplicates)
                last_report = now
    finally:
        if not commit_first:
            commit(consumer)
        consumer.close()  # leave the group now rather than after session.timeout.ms
        dedup.close()
        log.info("stopped: processed=%d duplicates=%d", processed, duplicates)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=None, help="max messages per second")
    parser.add_argument("--dedup-file", type=Path, default=None, help="persist dedup keys here")
    parser.add_argument("--max-messages", type=int, default=None, help="stop after N messages")
    parser.add_argument("--verbose", action="store_true", help="log every message")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
