"""Helpers for the outbox relay's integration tests: tables, topics, relay processes,
writers and a consumer that checks per-key order (real PostgreSQL and Kafka)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from kcg_operator.outbox.schema import create_schema

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port no relay of this session got before (relays started back to back must not
    share one before the first binds it); see localstack.free_port."""
    sys.path.insert(0, str(REPO / "stack"))
    import localstack

    return localstack.free_port()


# ---------------------------------------------------------------------- PostgreSQL


def create_tables(dsn: str, table: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_schema(conn, table, f"{table}_dead_letter")


def drop_tables(dsn: str, table: str) -> None:
    with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_dead_letter".encode())


def pending(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
        assert row is not None
        return int(row[0])


def dead_letters(dsn: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            f"SELECT aggregatetype, aggregateid, type, topic, error FROM {table}_dead_letter "
            "ORDER BY seq".encode()
        ).fetchall()


def insert_events(
    conn: psycopg.Connection[Any], table: str, events: Sequence[tuple[str, str, str, str]]
) -> None:
    """One INSERT statement for (aggregatetype, aggregateid, type, payload json) rows; the
    caller commits (or the connection is in autocommit)."""
    if not events:
        return
    cols = list(zip(*events, strict=True))
    conn.execute(
        f"INSERT INTO {table} (aggregatetype, aggregateid, type, payload) "
        "SELECT a, b, c, d::jsonb FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) "
        "AS u(a, b, c, d)".encode(),
        [list(c) for c in cols],
    )


def copy_events(dsn: str, table: str, events: Sequence[tuple[str, str, str, str]]) -> None:
    """Bulk-load pending rows (a backlog) in one transaction."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            f"COPY {table} (aggregatetype, aggregateid, type, payload) FROM STDIN".encode()
        ) as copy:
            for event in events:
                copy.write_row(event)
        conn.commit()


def keyed_events(topic: str, keys: int, per_key: int) -> list[tuple[str, str, str, str]]:
    """per_key events for each of `keys` keys, interleaved, each numbered n within its key."""
    return [
        (topic, f"key-{k}", "Numbered", json.dumps({"k": f"key-{k}", "n": n}))
        for n in range(per_key)
        for k in range(keys)
    ]


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# ---------------------------------------------------------------------- Kafka


def create_topic(bootstrap: str, topic: str, partitions: int = 8) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[
        topic
    ].result(30)


def delete_topics(bootstrap: str, *topics: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(list(topics), operation_timeout=10).values():
        with contextlib.suppress(Exception):
            future.result(15)


@dataclass(frozen=True)
class Message:
    key: str
    event_id: str
    type: str
    value: dict[str, Any] | None
    partition: int
    offset: int


def _headers(raw: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in raw if isinstance(raw, list) else []:
        name, value = item
        out[str(name)] = value.decode() if isinstance(value, bytes) else str(value)
    return out


def consume(
    bootstrap: str, topic: str, expect_ids: int, timeout: float = 60.0, partitions: int = 8
) -> list[Message]:
    """Everything in `topic` from the beginning, until `expect_ids` distinct event ids were
    seen (then a short extra read, to also catch trailing duplicates) or the timeout."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"check-{topic}",
        "enable.auto.commit": False, "enable.partition.eof": False,
    })
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out: list[Message] = []
    ids: set[str] = set()
    deadline = time.monotonic() + timeout
    extra_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if extra_until is not None and time.monotonic() > extra_until:
                break
            for msg in consumer.consume(2000, timeout=0.5):
                if msg.error():
                    raise AssertionError(f"consume {topic}: {msg.error()}")
                headers = _headers(msg.headers())
                raw = msg.value()
                key = msg.key()
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                out.append(Message(
                    key=key.decode() if isinstance(key, bytes) else str(key or ""),
                    event_id=headers["id"], type=headers["type"],
                    value=json.loads(raw) if raw else None, partition=partition, offset=offset,
                ))
                ids.add(headers["id"])
            if len(ids) >= expect_ids and extra_until is None:
                extra_until = time.monotonic() + 1.0
    finally:
        consumer.close()
    return out


@dataclass
class OrderReport:
    distinct: int
    duplicates: int
    per_key: dict[str, list[int]] = field(default_factory=dict)


def first_occurrences(messages: Sequence[Message]) -> OrderReport:
    """What a consumer that drops repeated event ids (the `id` header) sees, per key."""
    seen: set[str] = set()
    per_key: dict[str, list[int]] = defaultdict(list)
    duplicates = 0
    ordered = sorted(messages, key=lambda m: (m.partition, m.offset))
    for m in ordered:
        if m.event_id in seen:
            duplicates += 1
            continue
        seen.add(m.event_id)
        assert m.value is not None
        per_key[m.key].append(int(m.value["n"]))
    return OrderReport(distinct=len(seen), duplicates=duplicates, per_key=dict(per_key))


def assert_complete_and_ordered(report: OrderReport, expected: dict[str, int]) -> None:
    """Every key's events 0..n-1, each once, in order."""
    missing = {k: n for k, n in expected.items() if len(report.per_key.get(k, [])) != n}
    assert not missing, f"keys with missing events (key: expected count): {list(missing)[:5]}"
    for key, numbers in report.per_key.items():
        assert numbers == list(range(expected[key])), (
            f"{key}: events out of order: {numbers[:20]}"
        )


# ---------------------------------------------------------------------- relay processes


@dataclass
class RelayProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def status(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return str(r.read().decode())

    def metric(self, name: str) -> float:
        for line in self.metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"metric {name} not found")

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        body: dict[str, Any] = {}

        def ready() -> bool:
            nonlocal body
            self.assert_running()
            with contextlib.suppress(OSError):
                code, body = self.status()
                return code == 200
            return False

        wait_until(ready, timeout, f"relay ready ({body}); log: {self.tail()}")
        return body

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"relay exited with {self.proc.returncode}: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def start_relay(stack: dict[str, Any], table: str, log_dir: Path, name: str = "relay",
                **env: str) -> RelayProcess:
    port = free_port()
    log = log_dir / f"{name}.log"
    full_env = {
        **os.environ,
        "OUTBOX_DSN": str(stack["OUTBOX_DSN"]),
        "KAFKA_BOOTSTRAP_SERVERS": str(stack["KAFKA_BOOTSTRAP_SERVERS"]),
        "OUTBOX_TABLE": table,
        "OUTBOX_METRICS_PORT": str(port),
        "OUTBOX_METRICS_ADDRESS": "127.0.0.1",
        "OUTBOX_RELAY_ID": name,
        "OUTBOX_REBALANCE_INTERVAL_MS": "300",
        **env,
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kcg_operator.cli", "relay"], env=full_env, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
        )
    return RelayProcess(proc, port, log)


@contextlib.contextmanager
def relays(stack: dict[str, Any], table: str, log_dir: Path, count: int = 1,
           **env: str) -> Iterator[list[RelayProcess]]:
    started = [start_relay(stack, table, log_dir, f"relay-{i}", **env) for i in range(count)]
    try:
        yield started
    finally:
        for relay in started:
            with contextlib.suppress(Exception):
                relay.terminate(15)
            if relay.proc.poll() is None:
                relay.kill()


@contextlib.contextmanager
def fresh_outbox(
    stack: dict[str, Any], partitions: int = 8, extra_topics: Sequence[str] = ()
) -> Iterator[tuple[str, str]]:
    """A fresh outbox table and a topic named after it (the default route: aggregatetype);
    both dropped afterwards, with any `extra_topics` (suffixes of the topic name)."""
    name = f"obx_{uuid.uuid4().hex[:10]}"
    topic = name.replace("_", "-")
    create_tables(str(stack["OUTBOX_DSN"]), name)
    create_topic(str(stack["KAFKA_BOOTSTRAP_SERVERS"]), topic, partitions)
    try:
        yield name, topic
    finally:
        drop_tables(str(stack["OUTBOX_DSN"]), name)
        delete_topics(str(stack["KAFKA_BOOTSTRAP_SERVERS"]), topic,
                      *(f"{topic}{suffix}" for suffix in extra_topics))
