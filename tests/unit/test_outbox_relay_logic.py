"""Pure decisions of the relay: error verdicts, polling back-off, health, DDL and SQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from kcg_operator.outbox.claim import fetch_sql
from kcg_operator.outbox.health import LIVENESS_SECONDS, HealthSnapshot, liveness, readiness
from kcg_operator.outbox.pipeline import Verdict, classify
from kcg_operator.outbox.relay import next_backoff, next_poll_delay
from kcg_operator.outbox.schema import SchemaError, TableInfo, table_ddl, table_info

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("code", "fatal", "verdict"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, False, Verdict.POISON),
        (KafkaError.INVALID_RECORD, False, Verdict.POISON),
        (KafkaError.POLICY_VIOLATION, False, Verdict.POISON),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, False, Verdict.MISSING_TOPIC),
        (KafkaError._UNKNOWN_TOPIC, False, Verdict.MISSING_TOPIC),
        (KafkaError._MSG_TIMED_OUT, False, Verdict.RETRY),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, False, Verdict.RETRY),
        (KafkaError._PURGE_QUEUE, False, Verdict.RETRY),
        # A fatal producer error says nothing about the message: retry on a new producer.
        (KafkaError.MSG_SIZE_TOO_LARGE, True, Verdict.RETRY),
    ],
)
def test_error_verdicts(code: int, fatal: bool, verdict: Verdict) -> None:
    assert classify(code, fatal) is verdict


def test_adaptive_polling() -> None:
    delay, idle = 0.0, 0.0
    seen = []
    for _ in range(200):
        delay = next_poll_delay(delay, progressed=False, ceiling=0.1, idle_for=idle)
        idle += delay
        seen.append(delay)
    assert seen[0] == 0.001 and seen[1] == 0.001  # idle for a tenth of nothing yet
    assert seen == sorted(seen)
    assert max(seen) == 0.1 and seen[-1] == 0.1
    # Never more than a tenth of the lull (at least 1 ms), so a short pause costs little.
    lull = next_poll_delay(0.064, progressed=False, ceiling=0.1, idle_for=0.05)
    assert lull == pytest.approx(0.005)
    assert next_poll_delay(0.1, progressed=True, ceiling=0.1, idle_for=9.0) == 0.0
    # A long-idle relay settles at the ceiling.
    assert next_poll_delay(0.1, progressed=False, ceiling=0.1, idle_for=60.0) == 0.1


def test_reconnect_backoff_is_bounded() -> None:
    delay = 0.0
    for _ in range(20):
        delay = next_backoff(delay)
    assert delay == 5.0
    assert next_backoff(0.0) == 0.2


def test_liveness_and_readiness() -> None:
    snap = HealthSnapshot(started_at=0.0, heartbeat=100.0)
    assert liveness(snap, 100.0 + LIVENESS_SECONDS - 1)[0]
    assert not liveness(snap, 100.0 + LIVENESS_SECONDS + 1)[0]
    ok, body = readiness(snap)
    assert not ok and body["reason"].startswith("database")
    ok, body = readiness(HealthSnapshot(0.0, 0.0, database=True, kafka_error="down"))
    assert not ok and body["reason"] == "kafka: down"
    ok, body = readiness(HealthSnapshot(0.0, 0.0, database=True, kafka=True, owned_shards=16))
    assert ok and body["ownedShards"] == 16 and body["reason"] == ""
    assert not readiness(HealthSnapshot(0.0, 0.0, database=True, kafka=True, stopping=True))[0]


def test_ddl_has_debezium_columns_and_order() -> None:
    ddl = table_ddl("app.outbox", "app.outbox_dead_letter", "bytea")
    for column in ("seq ", "id ", "aggregatetype ", "aggregateid ", "type ", "payload ",
                   "created_at "):
        assert column in ddl
    assert "payload       bytea" in ddl
    assert "LIKE app.outbox" in ddl
    with pytest.raises(ValueError, match="payload type"):
        table_ddl("o", "d", "xml")


def test_table_checks() -> None:
    columns = {"seq": "bigint", "id": "uuid", "aggregatetype": "text", "aggregateid": "text",
               "type": "text", "payload": "jsonb", "created_at": "timestamp with time zone"}
    info = table_info(columns, "public.outbox", "outbox")
    assert info.payload_sql == "convert_to(payload::text, 'UTF8')"
    assert table_info({**columns, "payload": "bytea"}, "p.o", "o").payload_sql == "payload"
    without_seq = {k: v for k, v in columns.items() if k != "seq"}
    with pytest.raises(SchemaError, match="ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY"):
        table_info(without_seq, "public.outbox", "outbox")
    with pytest.raises(SchemaError, match="use jsonb, json, text or bytea"):
        table_info({**columns, "payload": "integer"}, "public.outbox", "outbox")


def test_fetch_sql_filters_only_what_is_needed() -> None:
    table = TableInfo("public.outbox", "jsonb", True)
    plain = fetch_sql(table, filter_shards=False, topic_sql=None).decode()
    assert "hashtext" not in plain and "ALL(" not in plain
    assert plain.endswith("WHERE seq > %s ORDER BY seq LIMIT %s")
    sharded = fetch_sql(table, filter_shards=True, topic_sql="aggregatetype").decode()
    assert "(hashtext(aggregateid) & 63) = ANY(%s)" in sharded
    assert "aggregatetype <> ALL(%s)" in sharded


def test_example_ddl_is_what_init_schema_creates() -> None:
    example = (Path(__file__).resolve().parents[2] / "examples/outbox/schema.sql").read_text()
    assert example.endswith(table_ddl("outbox", "outbox_dead_letter")), (
        "examples/outbox/schema.sql is stale: regenerate its DDL with `kcg relay --print-schema`"
    )


def test_a_signal_that_lands_inside_the_relays_sleep_stops_it_without_deadlock() -> None:
    """Python runs a signal handler in the main thread, possibly while that thread holds
    the lock of the Event the relay sleeps on (inside Event.wait). Here a thread plays the
    main thread: it holds that lock while the handler runs. A handler that stopped the
    relay itself (Event.set takes the same lock) never returned."""
    import signal as signals
    import threading

    from kcg_operator.outbox.relay import stop_on_signal

    class Sleeper:
        def __init__(self) -> None:
            self.stopped = threading.Event()

        def stop(self) -> None:
            self.stopped.set()

    relay = Sleeper()
    handler = stop_on_signal(relay)

    def main_thread_inside_wait() -> None:
        with relay.stopped._cond:  # type: ignore[attr-defined]  # what Event.wait holds
            handler(signals.SIGTERM, None)

    main = threading.Thread(target=main_thread_inside_wait, daemon=True)
    main.start()
    main.join(5)
    assert not main.is_alive(), "the signal handler deadlocked on the relay's own Event"
    assert relay.stopped.wait(5), "the relay was not stopped"
