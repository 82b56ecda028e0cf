"""The oldest-pending-age gauge keeps growing while Kafka is away, and falls back once the
events are out (real PostgreSQL and Kafka).

The outage is this relay's alone, so that the shared broker is not restarted under the
other tests: the relay's bootstrap address is a port where nothing listens (what a
stopped broker looks like: connection refused), and Kafka "comes back" when a forwarder
to the stack's broker starts listening there. Through it the producer gets the cluster's
metadata and then talks to the broker's advertised address, as after a broker restart.

While the round waits for acknowledgements, the gauge is what KcgOutboxEventsDelayed
watches: before the fix it stayed at its value from the round's start (a fraction of a
second) however long the outage lasted.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.outbox_support import (
    assert_complete_and_ordered,
    consume,
    first_occurrences,
    free_port,
    fresh_outbox,
    insert_events,
    keyed_events,
    pending,
    start_relay,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

AGE = "kcg_outbox_oldest_pending_event_age_seconds"
KEYS, PER_KEY = 4, 3
# How far the gauge must climb past its first reading, with Kafka away.
GROWTH_SECONDS = 4.0


class Forwarder:
    """A TCP forwarder from 127.0.0.1:`port` to `target` (host:port)."""

    def __init__(self, port: int, target: str) -> None:
        host, _, target_port = target.rpartition(":")
        self.target = (host, int(target_port))
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.sockets: list[socket.socket] = [self.listener]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closed.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def oldest_age_in_db(dsn: str, table: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT extract(epoch FROM clock_timestamp() - min(created_at))::float8 "
            f"FROM {table}".encode()
        ).fetchone()
        assert row is not None and row[0] is not None
        return float(row[0])


@pytest.fixture
def outbox(stack: dict[str, Any]) -> Iterator[tuple[str, str]]:
    with fresh_outbox(stack, partitions=4) as table_and_topic:
        yield table_and_topic


def test_age_gauge_grows_during_kafka_outage_and_falls_back(
    stack: dict[str, Any], outbox: tuple[str, str], tmp_path: Path
) -> None:
    table, topic = outbox
    dsn = str(stack["OUTBOX_DSN"])
    events = keyed_events(topic, KEYS, PER_KEY)
    with psycopg.connect(dsn, autocommit=True) as conn:
        insert_events(conn, table, events)

    port = free_port()  # nothing listens there yet: Kafka is away
    relay = start_relay(
        stack, table, tmp_path, "relay-outage",
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
        # Kafka's return is noticed within a second, not librdkafka's default 10 s.
        KAFKA_PROPERTY_RECONNECT_BACKOFF_MAX_MS="500",
    )
    forwarder: Forwarder | None = None
    try:
        first = 0.0

        def reported() -> bool:
            nonlocal first
            relay.assert_running()
            with contextlib.suppress(OSError):
                first = relay.metric(AGE)
            return first > 0

        wait_until(reported, 30, f"a first age reading; log: {relay.tail()}")
        latest = first

        def grown() -> bool:
            nonlocal latest
            relay.assert_running()
            latest = relay.metric(AGE)
            return latest >= first + GROWTH_SECONDS

        wait_until(grown, GROWTH_SECONDS + 10,
                   f"the age gauge to grow past {first:.2f}+{GROWTH_SECONDS:.0f} s with Kafka "
                   f"away (stuck at {latest:.3f} s)")
        assert pending(dsn, table) == len(events), "nothing can be published without Kafka"
        # The gauge is the real age, give or take a rebalance tick (300 ms) and the scrape.
        in_db, gauge = oldest_age_in_db(dsn, table), relay.metric(AGE)
        assert in_db - 1.5 <= gauge <= in_db + 0.1, (gauge, in_db)

        forwarder = Forwarder(port, str(stack["KAFKA_BOOTSTRAP_SERVERS"]))
        wait_until(lambda: pending(dsn, table) == 0, 60,
                   f"every event published after Kafka came back; log: {relay.tail()}")
        report = first_occurrences(consume(str(stack["KAFKA_BOOTSTRAP_SERVERS"]), topic,
                                           len(events), partitions=4))
        assert_complete_and_ordered(report, {f"key-{k}": PER_KEY for k in range(KEYS)})

        def fallen() -> bool:
            nonlocal latest
            latest = relay.metric(AGE)
            return latest < 1.0

        wait_until(fallen, 10, f"the age gauge to fall back (at {latest:.3f} s)")
        # A clean exit; the margin is for a loaded machine (the relay's own grace is 10 s).
        assert relay.terminate(timeout=60) == 0
    finally:
        if relay.proc.poll() is None:
            relay.kill()
        if forwarder is not None:
            forwarder.close()
