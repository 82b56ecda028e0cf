"""The orders example app (examples/consumer/orders_app.py) against the real Kafka and
PostgreSQL: one result and one outbox row per order however often it is delivered, and a
graceful leave from the group on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from kcg_operator.api.models import KafkaConsumerGroup, parse_kafka_consumer_group
from kcg_operator.workload.consumer_config import build_consumer_config
from kcg_operator.workload.render import CONFIG_DIR, CONSUMER_PROPERTIES_FILE, kafka_env

# stack/ is on sys.path (tests/conftest.py).
from localstack import die_with_parent
from tests.example_apps import EXAMPLE_APPS, load_example_app
from tests.integration.outbox_support import (
    consume,
    create_tables,
    create_topic,
    delete_topics,
    drop_tables,
    relays,
    wait_until,
)

pytestmark = pytest.mark.integration

APP = EXAMPLE_APPS / "orders_app.py"
PARTITIONS = 4
orders_app = load_example_app("orders_app")


@dataclass(frozen=True)
class Names:
    """One test's topics, tables and group, so tests never see each other's rows."""

    topic: str
    output_topic: str
    results: str
    outbox: str

    @classmethod
    def fresh(cls) -> Names:
        suffix = uuid.uuid4().hex[:10]
        return cls(f"orders-{suffix}", f"orders-{suffix}.processed", f"order_results_{suffix}",
                   f"obx_{suffix}")


@pytest.fixture
def names(stack: dict[str, Any]) -> Iterator[Names]:
    bootstrap, dsn = str(stack["KAFKA_BOOTSTRAP_SERVERS"]), str(stack["OUTBOX_DSN"])
    made = Names.fresh()
    create_topic(bootstrap, made.topic, PARTITIONS)
    create_topic(bootstrap, made.output_topic, PARTITIONS)
    try:
        yield made
    finally:
        drop_tables(dsn, made.outbox)
        drop_tables(dsn, made.results)  # (and a nonexistent <results>_dead_letter)
        delete_topics(bootstrap, made.topic, made.output_topic)


# ----------------------------------------------------------------------- the app process


@dataclass
class OrdersApp:
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"orders app exited with {self.proc.returncode}:\n{self.tail()}")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def group_resource(names: Names, group: str, bootstrap: str) -> KafkaConsumerGroup:
    return parse_kafka_consumer_group({
        "metadata": {"name": group, "namespace": "shop", "uid": "u-1"},
        "spec": {
            "topics": [names.topic],
            "kafka": {"bootstrapServers": bootstrap},
            "template": {"spec": {"containers": [{"name": "orders-app", "image": "x"}]}},
        },
    })


def operator_env(kcg: KafkaConsumerGroup, config_dir: Path, pod: str) -> dict[str, str]:
    """The env and properties file the operator gives the app's container: rendered by the
    operator's own code, with the ConfigMap written where a kubelet would mount it."""
    config = build_consumer_config(kcg)
    config_dir.mkdir(parents=True)
    (config_dir / CONSUMER_PROPERTIES_FILE).write_text(config.consumer_properties_text())
    env: dict[str, str] = {}
    for var in kafka_env(kcg, config):
        if "value" in var:
            env[var["name"]] = var["value"].replace(CONFIG_DIR, str(config_dir))
        else:  # KCG_POD_NAME: fieldRef metadata.name
            env[var["name"]] = pod
    return env


@contextlib.contextmanager
def orders_app_process(
    stack: dict[str, Any], names: Names, group: str, tmp_path: Path, pod: str = "orders-app-0",
) -> Iterator[OrdersApp]:
    kcg = group_resource(names, group, str(stack["KAFKA_BOOTSTRAP_SERVERS"]))
    env = {
        "PATH": "/usr/bin:/bin",
        "ORDERS_DB_DSN": str(stack["OUTBOX_DSN"]),  # a secretKeyRef in the pod
        **operator_env(kcg, tmp_path / pod / "client", pod),
    }
    log = tmp_path / f"{pod}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(APP), "--results-table", names.results,
             "--outbox-table", names.outbox, "--output-topic", names.output_topic],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # no orphan if the test run is killed
        )
    app = OrdersApp(proc, log)
    try:
        yield app
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# ----------------------------------------------------------------------- orders


def order(n: int) -> dict[str, str]:
    return {"orderId": f"o-{n}", "key": f"customer-{n % 7}", "amount": f"{n}.{n % 100:02d}"}


def produce(bootstrap: str, topic: str, records: Sequence[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def as_record(body: dict[str, str], kafka_key: str | None = None) -> tuple[str, bytes]:
    return kafka_key or body["key"], json.dumps(body).encode()


def table_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql.encode()).fetchall()


def counts(dsn: str, names: Names) -> tuple[int, int, int]:
    """(processed results, rejected results, outbox rows)."""
    (row,) = table_rows(dsn, f"""
        SELECT (SELECT count(*) FROM {names.results} WHERE status = 'processed'),
               (SELECT count(*) FROM {names.results} WHERE status = 'rejected'),
               (SELECT count(*) FROM {names.outbox})""")
    return int(row[0]), int(row[1]), int(row[2])


def tables_exist(dsn: str, names: Names) -> bool:
    (row,) = table_rows(dsn, f"SELECT to_regclass('{names.results}') IS NOT NULL "
                             f"AND to_regclass('{names.outbox}') IS NOT NULL")
    return bool(row[0])


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer

    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        return {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(PARTITIONS)}
    finally:
        probe.close()


def committed(admin: AdminClient, group: str, topic: str) -> dict[int, int]:
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(PARTITIONS)])
    result = admin.list_consumer_group_offsets([request])[group].result(15)
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def members(admin: AdminClient, group: str) -> list[str]:
    description = admin.describe_consumer_groups([group])[group].result(15)
    return [m.client_id for m in description.members]


# ----------------------------------------------------------------------- tests


def test_each_order_gets_one_result_and_one_outbox_row_and_sigterm_leaves_the_group(
    stack: dict[str, Any], names: Names, tmp_path: Path,
) -> None:
    bootstrap, dsn = str(stack["KAFKA_BOOTSTRAP_SERVERS"]), str(stack["OUTBOX_DSN"])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    group = f"orders-app-{uuid.uuid4().hex[:8]}"
    distinct = 40
    before = [as_record(order(n)) for n in range(30)]
    after = [
        *(as_record(order(n)) for n in range(30, distinct)),
        *(as_record(order(n)) for n in range(0, 10)),  # redelivered: same key, same partition
        # The same orders again under another Kafka key: another partition, maybe another
        # consumer; the order id still makes them duplicates.
        *(as_record(order(n), kafka_key=f"resent-{n}") for n in range(10, 15)),
        ("customer-1", b"order o-999 for 10 EUR"),  # not JSON
        ("customer-2", json.dumps({"orderId": "o-998", "key": "customer-2"}).encode()),
    ]
    produce(bootstrap, names.topic, before)

    with orders_app_process(stack, names, group, tmp_path) as app:
        def ready() -> bool:
            app.assert_running()
            return tables_exist(dsn, names)

        wait_until(ready, 60, f"the app to create its tables; log:\n{app.tail()}")
        produce(bootstrap, names.topic, after)
        expected = (distinct, 2, distinct)

        def settled() -> bool:
            app.assert_running()
            return counts(dsn, names) == expected

        try:
            wait_until(settled, 60, "every order processed")
        except AssertionError:
            raise AssertionError(f"counts {counts(dsn, names)} != {expected}; log:\n"
                                 f"{app.tail()}") from None
        ends = end_offsets(bootstrap, names.topic)
        assert sum(ends.values()) == len(before) + len(after)
        wait_until(lambda: committed(admin, group, names.topic) == ends, 30,
                   "the app to commit every offset")
        assert members(admin, group) == ["orders-app-0"]  # client.id = KCG_POD_NAME

        assert app.terminate() == 0, app.tail()

    # Gone at once (LeaveGroup in close()), not after session.timeout.ms (45 s).
    wait_until(lambda: members(admin, group) == [], 5, "the app to leave the group")
    assert counts(dsn, names) == expected  # nothing half-written at shutdown

    results = table_rows(dsn, f"SELECT idempotency_key, order_key, amount, event_id "
                              f"FROM {names.results} WHERE status = 'processed'")
    assert {r[0]: (r[1], str(r[2])) for r in results} == {
        f"o-{n}": (order(n)["key"], order(n)["amount"]) for n in range(distinct)}
    events = table_rows(dsn, f"SELECT id, aggregatetype, aggregateid, type, payload "
                             f"FROM {names.outbox}")
    by_id = {uuid.UUID(str(e[0])): e for e in events}
    assert len(by_id) == len(events) == distinct  # one event per order, none twice
    for n in range(distinct):
        event = by_id[orders_app.event_id(f"o-{n}")]
        assert event[1:4] == (names.output_topic, order(n)["key"], "OrderProcessed")
        assert event[4] == order(n)
    assert {uuid.UUID(str(r[3])) for r in results} == set(by_id)

    rejected = table_rows(dsn, f"SELECT idempotency_key, reason FROM {names.results} "
                               "WHERE status = 'rejected' ORDER BY reason")
    assert [r[1] for r in rejected] == ["amount is missing", "not JSON: Expecting value at "
                                        "position 0"]
    assert all(r[0].startswith(f"{names.topic}/") for r in rejected)

    log = app.log.read_text()
    assert dsn not in log
    assert "stopped: processed=40 duplicates=15 rejected=2" in log, log


def test_a_full_redelivery_changes_nothing_and_the_relay_publishes_each_event_once(
    stack: dict[str, Any], names: Names, tmp_path: Path,
) -> None:
    """A second group re-reads the whole topic (as after lost offsets): every record is a
    redelivery. Meanwhile the pod's relay publishes the outbox to the output topic."""
    bootstrap, dsn = str(stack["KAFKA_BOOTSTRAP_SERVERS"]), str(stack["OUTBOX_DSN"])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    distinct = 25
    records = [as_record(order(n)) for n in range(distinct)] + [
        as_record(order(n)) for n in range(0, distinct, 5)]
    produce(bootstrap, names.topic, records)
    ends = end_offsets(bootstrap, names.topic)
    # The relay's tables first (as `kcg relay --init-schema` makes them): the app must accept
    # them as they are.
    create_tables(dsn, names.outbox)

    with relays(stack, names.outbox, tmp_path) as (relay,):
        relay.wait_ready()
        for run, group in enumerate((f"orders-a-{uuid.uuid4().hex[:6]}",
                                     f"orders-b-{uuid.uuid4().hex[:6]}")):
            with orders_app_process(stack, names, group, tmp_path, pod=f"orders-app-{run}") as app:
                def caught_up(app: OrdersApp = app, group: str = group) -> bool:
                    app.assert_running()
                    return committed(admin, group, names.topic) == ends

                wait_until(caught_up, 60, f"group {group} to commit every offset")
                assert app.terminate() == 0, app.tail()
            assert counts(dsn, names)[:2] == (distinct, 0)
        assert "processed=0 duplicates=30" in app.log.read_text()  # the second run

        messages = consume(bootstrap, names.output_topic, distinct, partitions=PARTITIONS)
        wait_until(lambda: counts(dsn, names)[2] == 0, 30, "the relay to drain the outbox")

    ids = [m.event_id for m in messages]
    assert len(ids) == len(set(ids)) == distinct, "each event published exactly once"
    for m in messages:
        n = int(str(m.value and m.value["orderId"]).removeprefix("o-"))
        assert m.event_id == str(orders_app.event_id(f"o-{n}"))
        assert (m.key, m.type, m.value) == (order(n)["key"], "OrderProcessed", order(n))
