"""Outbox relay benchmark: `kcg relay` against a naive one-row-at-a-time relay, side by side,
on the local stack's real PostgreSQL and Kafka (started for the run if not up).

    python benchmarks/bench_outbox.py [--quick]

Four measurements, each on its own table and topic:

1. relay throughput: a backlog of rows is loaded, one `kcg relay` process drains it;
   events/s over the drain (from the relay's published counter).
2. relay latency: a writer commits 5 000 events/s (transactions of 10) for 15 s while the
   relay runs; latency = broker append time (topic with LogAppendTime, i.e. when Kafka
   wrote it, just before the ack) minus the writer's commit time, per event.
3. naive throughput: SELECT one row FOR UPDATE SKIP LOCKED, produce, flush, DELETE,
   COMMIT, repeat -- on a backlog, for a fixed window.
4. naive latency: the same offered 5 000 events/s for 10 s; it falls behind, so the
   figures are for the events it published within the window (the rest is backlog).

The table is printed; the very last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "stack"))
sys.path.insert(0, str(REPO / "operator"))

import localstack  # noqa: E402
from kcg_operator.outbox.schema import create_schema  # noqa: E402

PARTITIONS = 8
OFFERED_PER_S = 5000
TX_SIZE = 10
GOAL_EVENTS_PER_S = 25_000
GOAL_P99_MS = 100.0
GOAL_SPEEDUP = 20.0


@dataclass
class Env:
    dsn: str
    bootstrap: str
    log_dir: Path


def _log(message: str) -> None:
    print(f"bench-outbox: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- fixtures


@contextmanager
def table_and_topic(env: Env, label: str) -> Iterator[tuple[str, str]]:
    name = f"bench_{label}_{uuid.uuid4().hex[:6]}"
    topic = name.replace("_", "-")
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        create_schema(conn, name, f"{name}_dead_letter")
    admin = AdminClient({"bootstrap.servers": env.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1,
                                  config={"message.timestamp.type": "LogAppendTime"})])[
        topic].result(30)
    try:
        yield name, topic
    finally:
        with psycopg.connect(env.dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {name}, {name}_dead_letter".encode())
        for future in admin.delete_topics([topic], operation_timeout=10).values():
            try:
                future.result(15)
            except Exception as exc:
                _log(f"could not delete topic {topic}: {exc}")


def load_backlog(env: Env, table: str, topic: str, count: int) -> None:
    with psycopg.connect(env.dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            f"COPY {table} (aggregatetype, aggregateid, type, payload) FROM STDIN".encode()
        ) as copy:
            for i in range(count):
                copy.write_row((topic, f"order-{i % 1000}", "OrderPlaced",
                                f'{{"i": {i}, "amount": {i % 977}, "currency": "EUR"}}'))
        conn.commit()
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {table}".encode())


def pending(env: Env, table: str) -> int:
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
        return int(row[0]) if row else 0


# ---------------------------------------------------------------------- relays


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    port: int

    def published(self) -> float:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("kcg_outbox_events_published_total "):
                    return float(line.split()[1])
        return 0.0

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_relay(env: Env, table: str) -> Proc:
    port = _free_port()
    log = (env.log_dir / f"{table}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kcg_operator.cli", "relay"],
        env={**os.environ, "OUTBOX_DSN": env.dsn, "KAFKA_BOOTSTRAP_SERVERS": env.bootstrap,
             "OUTBOX_TABLE": table, "OUTBOX_METRICS_PORT": str(port),
             "OUTBOX_METRICS_ADDRESS": "127.0.0.1",
             "PYTHONPATH": str(REPO / "operator")},
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    log.close()
    relay = Proc(proc, port)
    deadline = time.monotonic() + 30
    while not relay.ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench-outbox: the relay did not start; see {env.log_dir}")
        time.sleep(0.05)
    return relay


def naive_relay_main(dsn: str, table: str, bootstrap: str) -> int:
    """The poller many teams write first: one row per transaction, flush per message."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 0})
    published = 0
    with psycopg.connect(dsn) as conn:
        while not stop.is_set():
            with conn.transaction():
                row = conn.execute(
                    f"SELECT seq, id::text, aggregatetype, aggregateid, type, payload::text "
                    f"FROM {table} ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED".encode()
                ).fetchone()
                if row is not None:
                    seq, event_id, topic, key, type_, payload = row
                    producer.produce(str(topic), str(payload).encode(), str(key),
                                     headers=[("id", str(event_id)), ("type", str(type_))])
                    if producer.flush(30) != 0:
                        raise RuntimeError("naive relay: message not delivered")
                    conn.execute(f"DELETE FROM {table} WHERE seq = %s".encode(), (seq,))
                    published += 1
            if row is None:
                time.sleep(0.001)
    print(json.dumps({"published": published}))
    return 0


def flat_out_writer_main(dsn: str, table: str, topic: str, seconds: float) -> int:
    """Insert as fast as one connection can, 500 events per transaction."""
    query = (f"INSERT INTO {table} (aggregatetype, aggregateid, type, payload) "
             "SELECT %s, 'order-' || (i %% 1000), 'OrderPlaced', "
             "jsonb_build_object('i', i, 'amount', i %% 977) "
             "FROM generate_series(%s::int, %s::int) AS i").encode()
    written = 0
    deadline = time.monotonic() + seconds
    with psycopg.connect(dsn) as conn:
        while time.monotonic() < deadline:
            conn.execute(query, (topic, written, written + 499))
            conn.commit()
            written += 500
    print(json.dumps({"written": written}))
    return 0


def start_naive(env: Env, table: str) -> Proc:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--naive-relay", table],
        env={**os.environ, "OUTBOX_DSN": env.dsn, "KAFKA_BOOTSTRAP_SERVERS": env.bootstrap},
        stdout=subprocess.DEVNULL, stderr=(env.log_dir / f"{table}.log").open("ab"),
    )
    return Proc(proc, 0)


# ---------------------------------------------------------------------- measurements


def relay_throughput(env: Env, backlog: int) -> float:
    with table_and_topic(env, "tput") as (table, topic):
        _log(f"loading a backlog of {backlog} events")
        load_backlog(env, table, topic, backlog)
        relay = start_relay(env, table)
        try:
            samples: list[tuple[float, float]] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done = relay.published()
                samples.append((time.monotonic(), done))
                if done >= backlog:
                    break
                time.sleep(0.1)
        finally:
            relay.stop()
        started = next(((t, n) for t, n in samples if n > 0), samples[0])
        ended = samples[-1]
        if ended[1] < backlog:
            _log(f"relay drained only {ended[1]:.0f} of {backlog} in 60 s")
        return (ended[1] - started[1]) / max(ended[0] - started[0], 1e-6)


@dataclass
class Sustained:
    relay_per_s: float
    writer_per_s: float
    backlog_growth: int


def relay_sustained(env: Env, seconds: float) -> Sustained:
    """The relay publishing while a writer inserts flat out on the same 2 CPUs."""
    with table_and_topic(env, "sustained") as (table, topic):
        relay = start_relay(env, table)
        writer = subprocess.Popen(
            [sys.executable, __file__, "--flat-out-writer", table, topic, str(seconds + 3)],
            env={**os.environ, "OUTBOX_DSN": env.dsn}, stdout=subprocess.PIPE,
        )
        try:
            time.sleep(2.0)  # both at full speed before measuring
            n0, p0, t0 = relay.published(), pending(env, table), time.monotonic()
            time.sleep(seconds)
            n1, p1, t1 = relay.published(), pending(env, table), time.monotonic()
            out, _ = writer.communicate(timeout=30)
        finally:
            if writer.poll() is None:
                writer.kill()
            relay.stop()
        written = int(json.loads(out)["written"])
        return Sustained(
            relay_per_s=(n1 - n0) / (t1 - t0),
            writer_per_s=written / (seconds + 3),
            backlog_growth=p1 - p0,
        )


def naive_throughput(env: Env, seconds: float) -> float:
    with table_and_topic(env, "naive_tput") as (table, topic):
        load_backlog(env, table, topic, 50_000)
        before = pending(env, table)
        naive = start_naive(env, table)
        time.sleep(1.0)  # connection and producer set-up are not the relay's speed
        start_count, started = pending(env, table), time.monotonic()
        time.sleep(seconds)
        end_count, ended = pending(env, table), time.monotonic()
        naive.stop()
        if before - end_count <= 0:
            raise SystemExit(f"bench-outbox: the naive relay published nothing; see {env.log_dir}")
        return (start_count - end_count) / (ended - started)


@dataclass
class Latency:
    offered: float
    published: int
    written: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def _write_paced(env: Env, table: str, topic: str, seconds: float,
                 commits: dict[int, float]) -> float:
    """OFFERED_PER_S events/s in transactions of TX_SIZE; returns the achieved rate."""
    interval = TX_SIZE / OFFERED_PER_S
    transactions = int(seconds / interval)
    query = (f"INSERT INTO {table} (aggregatetype, aggregateid, type, payload) "
             "SELECT %s, 'order-' || (i %% 1000), 'OrderPlaced', "
             "jsonb_build_object('i', i, 'amount', i %% 977) "
             "FROM generate_series(%s::int, %s::int) AS i").encode()
    with psycopg.connect(env.dsn) as conn:
        start = time.perf_counter()
        for tx in range(transactions):
            due = start + tx * interval
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            first = tx * TX_SIZE
            conn.execute(query, (topic, first, first + TX_SIZE - 1))
            conn.commit()
            committed = time.time()
            for i in range(first, first + TX_SIZE):
                commits[i] = committed
        elapsed = time.perf_counter() - start
    return transactions * TX_SIZE / elapsed


def _append_latencies(env: Env, topic: str, commits: dict[int, float],
                      until_ms: float | None) -> list[float]:
    consumer = Consumer({"bootstrap.servers": env.bootstrap, "group.id": f"bench-{topic}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    latencies: dict[int, float] = {}
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < 2.0:
            batch = consumer.consume(5000, timeout=0.5)
            if batch:
                quiet_since = time.monotonic()
            for msg in batch:
                if msg.error():
                    continue
                kind, ts = msg.timestamp()
                if kind != TIMESTAMP_LOG_APPEND_TIME:
                    raise SystemExit("bench-outbox: the topic lacks LogAppendTime")
                if until_ms is not None and ts > until_ms:
                    continue
                i = int(json.loads(msg.value())["i"])
                latencies.setdefault(i, ts - commits[i] * 1000)
    finally:
        consumer.close()
    return list(latencies.values())


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def latency(env: Env, naive: bool, seconds: float) -> Latency:
    with table_and_topic(env, "naive_lat" if naive else "lat") as (table, topic):
        relay = start_naive(env, table) if naive else start_relay(env, table)
        commits: dict[int, float] = {}
        try:
            if naive:
                time.sleep(1.0)
            offered = _write_paced(env, table, topic, seconds, commits)
            window_end_ms = time.time() * 1000
            if not naive:
                deadline = time.monotonic() + 30
                while pending(env, table) and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            relay.stop()
        values = _append_latencies(env, topic, commits, window_end_ms if naive else None)
        return Latency(
            offered=offered, published=len(values), written=len(commits),
            p50_ms=_percentile(values, 0.5), p99_ms=_percentile(values, 0.99),
            max_ms=max(values) if values else float("nan"),
        )


# ---------------------------------------------------------------------- report


def _fmt(value: float, unit: str = "") -> str:
    return f"{value:,.0f}{unit}".replace(",", " ") if value >= 100 else f"{value:.1f}{unit}"


def report(drain_rate: float, sustained: Sustained, naive_rate: float, relay_lat: Latency,
           naive_lat: Latency, load: tuple[float, float, float]) -> dict[str, Any]:
    relay_rate = sustained.relay_per_s
    speedup = relay_rate / naive_rate if naive_rate else float("inf")
    rows = [
        ("throughput, sustained with a writer", f"{_fmt(relay_rate)} events/s", ""),
        ("  (writer inserted; backlog growth)",
         f"{_fmt(sustained.writer_per_s)}/s; {sustained.backlog_growth:+d}", ""),
        ("throughput, draining a backlog", f"{_fmt(drain_rate)} events/s",
         f"{_fmt(naive_rate)} events/s"),
        (f"latency p50 @ {OFFERED_PER_S} ev/s offered", _fmt(relay_lat.p50_ms, " ms"),
         _fmt(naive_lat.p50_ms, " ms")),
        ("latency p99", _fmt(relay_lat.p99_ms, " ms"), _fmt(naive_lat.p99_ms, " ms")),
        ("latency max", _fmt(relay_lat.max_ms, " ms"), _fmt(naive_lat.max_ms, " ms")),
        ("published / written (latency run)", f"{relay_lat.published} / {relay_lat.written}",
         f"{naive_lat.published} / {naive_lat.written}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\nOutbox relay benchmark: {os.cpu_count()} CPUs shared with PostgreSQL and Kafka, "
          f"load average {load[0]:.1f} at start")
    print(f"  {'':<{width}}  {'kcg relay':>18}  {'naive relay':>18}")
    for name, ours, theirs in rows:
        print(f"  {name:<{width}}  {ours:>18}  {theirs:>18}")
    print(f"  speed-up (sustained vs naive): {speedup:.0f}x; the paced writer achieved "
          f"{relay_lat.offered:.0f} events/s (relay run), {naive_lat.offered:.0f} (naive run)")
    goals = [
        (f">= {GOAL_EVENTS_PER_S} events/s", relay_rate >= GOAL_EVENTS_PER_S),
        (f"p99 < {GOAL_P99_MS:.0f} ms at {OFFERED_PER_S} events/s", relay_lat.p99_ms < GOAL_P99_MS),
        (f">= {GOAL_SPEEDUP:.0f}x the naive relay", speedup >= GOAL_SPEEDUP),
    ]
    print("  goals: " + "; ".join(f"{g}: {'met' if ok else 'NOT met'}" for g, ok in goals))
    return {
        "relay_events_per_s": round(relay_rate),
        "relay_drain_events_per_s": round(drain_rate),
        "writer_flat_out_events_per_s": round(sustained.writer_per_s),
        "sustained_backlog_growth": sustained.backlog_growth,
        "relay_p50_ms": round(relay_lat.p50_ms, 2),
        "relay_p99_ms": round(relay_lat.p99_ms, 2),
        "relay_max_ms": round(relay_lat.max_ms, 2),
        "naive_events_per_s": round(naive_rate, 1),
        "naive_p50_ms": round(naive_lat.p50_ms, 2),
        "naive_p99_ms": round(naive_lat.p99_ms, 2),
        "naive_published_in_window": naive_lat.published,
        "naive_written_in_window": naive_lat.written,
        "speedup": round(speedup, 1),
        "offered_events_per_s": OFFERED_PER_S,
        "paced_writer_events_per_s": round(relay_lat.offered),
        "cpus": os.cpu_count(),
        "load_average_at_start": round(load[0], 2),
        "goals_met": all(ok for _, ok in goals),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument("--naive-relay", metavar="TABLE", help=argparse.SUPPRESS)
    parser.add_argument("--flat-out-writer", nargs=3, metavar=("TABLE", "TOPIC", "SECONDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.flat_out_writer:
        table, topic, seconds = args.flat_out_writer
        return flat_out_writer_main(os.environ["OUTBOX_DSN"], table, topic, float(seconds))
    if args.naive_relay:
        return naive_relay_main(os.environ["OUTBOX_DSN"], args.naive_relay,
                                os.environ["KAFKA_BOOTSTRAP_SERVERS"])

    state = localstack.read_state()
    owned = state is None
    if owned:
        _log("the local stack is not up: starting it for this run")
        state = localstack.up(owned=True)
    assert state is not None
    log_dir = Path(str(state["KCG_STACK_DIR"])) / "logs" / "bench-outbox"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = Env(str(state["OUTBOX_DSN"]), str(state["KAFKA_BOOTSTRAP_SERVERS"]), log_dir)
    load = os.getloadavg()
    try:
        _log("1/5 relay throughput, draining a backlog")
        drain_rate = relay_throughput(env, 60_000 if args.quick else 400_000)
        _log(f"    {drain_rate:.0f} events/s")
        _log("2/5 relay throughput, sustained beside a flat-out writer")
        sustained = relay_sustained(env, 3 if args.quick else 20)
        _log(f"    {sustained.relay_per_s:.0f} events/s (writer {sustained.writer_per_s:.0f}/s)")
        _log(f"3/5 relay latency at {OFFERED_PER_S} events/s")
        relay_lat = latency(env, naive=False, seconds=3 if args.quick else 15)
        _log(f"    p50 {relay_lat.p50_ms:.1f} ms, p99 {relay_lat.p99_ms:.1f} ms")
        _log("4/5 naive relay throughput")
        naive_rate = naive_throughput(env, 3 if args.quick else 10)
        _log(f"    {naive_rate:.0f} events/s")
        _log(f"5/5 naive relay latency at {OFFERED_PER_S} events/s")
        naive_lat = latency(env, naive=True, seconds=3 if args.quick else 10)
    finally:
        if owned:
            localstack.down(quiet=True)
    figures = report(drain_rate, sustained, naive_rate, relay_lat, naive_lat, load)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
