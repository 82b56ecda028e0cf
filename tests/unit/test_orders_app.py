"""The orders example app's pure parts: order validation, its outbox event, its tables, and
its configuration as the operator renders it (examples/consumer/orders_app.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kcg_operator.api.models import parse_kafka_consumer_group
from kcg_operator.outbox.config import default_dead_letter_table
from kcg_operator.outbox.schema import REQUIRED_COLUMNS, table_ddl
from kcg_operator.workload.render import CONFIG_DIR, render_workload
from tests.example_apps import EXAMPLE_APPS, load_example_app

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
app = load_example_app("orders_app")
kcg_client = load_example_app("kcg_client")

SOURCE = app.Source("orders", 3, 17)


def order_bytes(**fields: Any) -> bytes:
    body = {"orderId": "o-1", "key": "customer-42", "amount": "19.99", **fields}
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


# ----------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("raw", "order_id", "amount"),
    [
        (order_bytes(), "o-1", "19.99"),
        (b'{"orderId": "o-1", "key": "customer-42", "amount": 19.99}', "o-1", "19.99"),
        (order_bytes(orderId=1001, amount=5), "1001", "5.00"),
        (order_bytes(amount="19.990"), "o-1", "19.99"),
        (order_bytes(amount="-0"), "o-1", "0.00"),
        (order_bytes(amount="999999999999.99"), "o-1", "999999999999.99"),
        (order_bytes(orderId="shop:2024.07_x-1", note="extra fields are ignored"),
         "shop:2024.07_x-1", "19.99"),
    ],
)
def test_valid_orders(raw: bytes, order_id: str, amount: str) -> None:
    order = app.parse_order(raw)
    assert order == app.Order(order_id, "customer-42", Decimal(amount))
    assert str(order.amount) == amount  # always two places: the payload's text is stable


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "tombstone"),
        (b"\xff\xfe", "not UTF-8"),
        (b"order o-1", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b'["o-1"]', "not a JSON object"),
        (b'{"key": "k", "amount": 1}', "orderId is missing"),
        (b'{"orderId": "o-1", "amount": 1}', "key is missing"),
        (b'{"orderId": "o-1", "key": "k"}', "amount is missing"),
        (order_bytes(orderId="orders/3/17"), "orderId"),
        (order_bytes(orderId=""), "orderId"),
        (order_bytes(orderId="x" * 129), "orderId"),
        (order_bytes(orderId=True), "orderId"),
        (order_bytes(orderId=-1), "orderId"),
        (order_bytes(key=""), "key must be a string"),
        (order_bytes(key=7), "key must be a string"),
        (order_bytes(key="k" * 257), "key must be a string"),
        (order_bytes(key="a\x00b"), "control characters"),
        (b'{"orderId": "o-1", "key": "\\ud800", "amount": 1}', "not valid Unicode"),
        (order_bytes(amount="ten"), "decimal number"),
        (order_bytes(amount=True), "decimal number"),
        (order_bytes(amount=[1]), "decimal number"),
        (b'{"orderId": "o-1", "key": "k", "amount": NaN}', "decimal number"),
        (order_bytes(amount="NaN"), "from 0 to"),
        (order_bytes(amount="-0.01"), "from 0 to"),
        (order_bytes(amount="1e400"), "from 0 to"),
        (order_bytes(amount="1000000000000"), "from 0 to"),
        (order_bytes(amount="0.001"), "two decimal places"),
    ],
)
def test_invalid_orders_say_why(raw: bytes | None, reason: str) -> None:
    with pytest.raises(app.InvalidOrder, match=reason):
        app.parse_order(raw)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.none(),
                 st.dictionaries(st.sampled_from(["orderId", "key", "amount", "x"]),
                                 st.one_of(st.none(), st.booleans(), st.integers(),
                                           st.floats(), st.text(max_size=20)))
                 .map(lambda d: json.dumps(d).encode())))
def test_any_record_is_an_order_or_a_rejection_never_a_crash(raw: bytes | None) -> None:
    result, event = app.rows_for(raw, SOURCE, "pod-1", "orders.processed")
    if event is None:
        assert result.status == "rejected" and result.idempotency_key == "orders/3/17"
        assert result.reason and len(result.reason) <= app.MAX_REASON_LENGTH
    else:
        assert result.status == "processed" and result.idempotency_key != SOURCE.key()


def test_a_rejection_names_the_problem_never_the_content() -> None:
    secret = "card=4111111111111111"
    result, event = app.rows_for(f'{{"orderId": "{secret}"}}'.encode(), SOURCE, "pod-1",
                                 "orders.processed")
    assert event is None and result.reason is not None
    assert secret not in result.reason


# ----------------------------------------------------------------------- rows and events


def test_a_processed_order_writes_its_result_and_one_event() -> None:
    result, event = app.rows_for(order_bytes(), SOURCE, "pod-1", "orders.processed")
    assert event is not None
    assert dataclasses.asdict(event) == {
        "id": app.event_id("o-1"),
        "aggregatetype": "orders.processed",  # the topic, with the relay's ${aggregatetype}
        "aggregateid": "customer-42",  # the Kafka key
        "type": "OrderProcessed",
        "payload": '{"amount":"19.99","key":"customer-42","orderId":"o-1"}',
    }
    assert dataclasses.asdict(result) == {
        "idempotency_key": "o-1", "status": "processed", "order_key": "customer-42",
        "amount": Decimal("19.99"), "event_id": event.id, "reason": None,
        "source_topic": "orders", "source_partition": 3, "source_offset": 17,
        "processed_by": "pod-1",
    }


def test_a_rejected_record_is_keyed_by_its_coordinates_and_has_no_event() -> None:
    result, event = app.rows_for(b"{", SOURCE, "pod-1", "orders.processed")
    assert event is None
    assert (result.idempotency_key, result.status) == ("orders/3/17", "rejected")
    assert result.order_key is None and result.amount is None and result.event_id is None
    # Order ids cannot contain "/", so a rejection never takes an order's key.
    assert not app.ORDER_ID.fullmatch(result.idempotency_key)


def test_a_redelivery_builds_the_same_event_byte_for_byte() -> None:
    # Another partition and offset (a producer that sent the order twice), another pod:
    first = app.rows_for(order_bytes(), SOURCE, "pod-1", "orders.processed")
    again = app.rows_for(order_bytes(), app.Source("orders", 5, 2), "pod-2", "orders.processed")
    assert first[1] == again[1]
    assert first[0].idempotency_key == again[0].idempotency_key


@given(st.from_regex(app.ORDER_ID, fullmatch=True), st.from_regex(app.ORDER_ID, fullmatch=True))
def test_event_ids_are_deterministic_and_distinct_per_order(a: str, b: str) -> None:
    assert app.event_id(a) == app.event_id(a)
    assert app.event_id(a).version == 5
    assert (app.event_id(a) == app.event_id(b)) == (a == b)


def test_event_ids_never_change() -> None:
    # Published ids must stay what they were: a consumer deduplicates by them.
    assert app.event_id("o-1") == uuid.UUID("ac4659f0-fce7-51b6-b056-8688c150af76")


def test_row_columns_follow_the_dataclasses_and_the_relays_table() -> None:
    assert tuple(f.name for f in dataclasses.fields(app.ResultRow)) == app.ResultRow.COLUMNS
    assert tuple(f.name for f in dataclasses.fields(app.OutboxRow)) == app.OutboxRow.COLUMNS
    # Every column the relay reads except seq, which the table assigns at insert.
    assert set(app.OutboxRow.COLUMNS) == set(REQUIRED_COLUMNS) - {"seq"}


# ----------------------------------------------------------------------- schema


@pytest.mark.parametrize("table", ["outbox", "obx_1234", "shop.outbox"])
def test_outbox_ddl_is_the_relays(table: str) -> None:
    dead_letter = app.dead_letter_table(table)
    assert dead_letter == default_dead_letter_table(table)
    assert app.outbox_ddl(table, dead_letter) == table_ddl(table, dead_letter)


def test_schema_file_is_what_the_app_creates() -> None:
    text = (EXAMPLE_APPS / "orders_schema.sql").read_text()
    assert text == app.schema_sql(app.DEFAULT_RESULTS_TABLE, app.DEFAULT_OUTBOX_TABLE), (
        "examples/consumer/orders_schema.sql is stale: regenerate it with "
        "`python examples/consumer/orders_app.py --print-schema > "
        "examples/consumer/orders_schema.sql`"
    )


def test_results_table_has_the_idempotency_key_as_primary_key() -> None:
    ddl = app.results_ddl("order_results")
    assert "CREATE TABLE IF NOT EXISTS order_results" in ddl
    assert "idempotency_key  text        PRIMARY KEY" in ddl
    for column in app.ResultRow.COLUMNS:
        assert f"\n    {column} " in ddl


# ----------------------------------------------------------------------- configuration


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--results-table", default=app.DEFAULT_RESULTS_TABLE)
    parser.add_argument("--outbox-table", default=app.DEFAULT_OUTBOX_TABLE)
    parser.add_argument("--output-topic", default=app.DEFAULT_OUTPUT_TOPIC)
    return parser.parse_args(list(argv))


def rendered_env(tmp_path: Path, secret_ref: bool = False) -> dict[str, str]:
    """The orders app container's env as the operator renders examples/orders-outbox.yaml,
    with the ConfigMap written where the env points (as a kubelet would mount it) and the
    Secret references resolved."""
    body = yaml.safe_load((REPO / "examples" / "orders-outbox.yaml").read_text())
    body["metadata"].update(uid="u-1", namespace="shop")
    if secret_ref:
        body["spec"]["kafka"]["secretRef"] = {"name": "kafka-auth"}
    workload = render_workload(parse_kafka_consumer_group(body), replicas=1)
    (tmp_path / "client").mkdir()
    for name, text in workload.config_map["data"].items():
        (tmp_path / "client" / name).write_text(text)
    (container,) = workload.deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"].replace(CONFIG_DIR, str(tmp_path / "client"))
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = "orders-app-7d9f-x2k4q"
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "orders-db", "key": "dsn"}  # the relay's Secret
            env[var["name"]] = "postgresql://orders:hunter2@db/shop"
    return env


def test_settings_from_what_the_operator_renders(tmp_path: Path) -> None:
    loaded = app.load_settings(args(), rendered_env(tmp_path))
    assert loaded.topics == ("orders",)
    assert loaded.dsn == "postgresql://orders:hunter2@db/shop"
    assert loaded.processed_by == "orders-app-7d9f-x2k4q"
    assert loaded.semantics == "atLeastOnce"
    kafka = loaded.kafka
    assert kafka["group.id"] == "orders-app"
    assert kafka["bootstrap.servers"] == "kafka:9092"
    assert kafka["partition.assignment.strategy"] == "cooperative-sticky"
    assert kafka["enable.auto.commit"] == "false"
    assert kafka["enable.auto.offset.store"] == "false"
    assert kafka["isolation.level"] == "read_committed"
    assert kafka["client.id"] == "orders-app-7d9f-x2k4q"


def test_secrets_stay_out_of_the_settings_repr(tmp_path: Path) -> None:
    env = rendered_env(tmp_path, secret_ref=True)
    auth = Path(env["KCG_KAFKA_AUTH_DIR"].replace("/etc/kcg/kafka-auth", str(tmp_path / "auth")))
    auth.mkdir()
    (auth / "sasl.password").write_text("s3cret\n")
    (auth / "..data").mkdir()  # the kubelet's own entries are skipped
    env["KCG_KAFKA_AUTH_DIR"] = str(auth)
    loaded = app.load_settings(args(), env)
    assert loaded.kafka["sasl.password"] == "s3cret"
    assert "..data" not in loaded.kafka
    assert "hunter2" not in repr(loaded) and "s3cret" not in repr(loaded)


def test_the_app_commits_offsets_itself_even_when_run_by_hand(tmp_path: Path) -> None:
    props = tmp_path / "consumer.properties"
    props.write_text("bootstrap.servers=k:9092\ngroup.id=g\nenable.auto.offset.store=true\n")
    env = {"KCG_CONSUMER_PROPERTIES": str(props), "KAFKA_TOPICS": "orders",
           "ORDERS_DB_DSN": "dbname=shop"}
    assert app.load_settings(args(), env).kafka["enable.auto.offset.store"] == "false"


@pytest.mark.parametrize(
    ("change", "argv", "message"),
    [
        ({"ORDERS_DB_DSN": ""}, (), "ORDERS_DB_DSN is not set"),
        ({"KAFKA_TOPICS": " , "}, (), "KAFKA_TOPICS is empty"),
        ({"KCG_CONSUMER_PROPERTIES": ""}, (), "KCG_CONSUMER_PROPERTIES is not set"),
        ({"KCG_CONSUMER_PROPERTIES": "/nonexistent"}, (), "No such file"),
        ({"KCG_KAFKA_AUTH_DIR": "/nonexistent"}, (), "not a directory"),
        ({}, ("--outbox-table", "out box; drop"), "--outbox-table"),
        ({}, ("--results-table", "Outbox"), "must differ"),
        ({}, ("--results-table", "outbox_dead_letter"), "must differ"),
        ({}, ("--output-topic", "orders/processed"), "not a Kafka topic name"),
        ({}, ("--rate", "0"), "--rate"),
    ],
)
def test_bad_settings_are_refused_by_name(
    tmp_path: Path, change: dict[str, str], argv: tuple[str, ...], message: str
) -> None:
    env = {**rendered_env(tmp_path), **change}
    with pytest.raises(kcg_client.ConfigError, match=message):
        app.load_settings(args(*argv), env)


def test_main_reports_bad_settings_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("ORDERS_DB_DSN", raising=False)
    monkeypatch.delenv("KCG_CONSUMER_PROPERTIES", raising=False)
    assert app.main([]) == 2
    assert "KCG_CONSUMER_PROPERTIES is not set" in caplog.text


@pytest.mark.parametrize(("interval_ms", "budget"),
                         [(None, 150.0), ("600000", 300.0), ("1000", 5.0), ("x", 150.0)])
def test_database_retries_stop_well_before_the_group_would_evict_the_app(
    interval_ms: str | None, budget: float
) -> None:
    kafka = {} if interval_ms is None else {"max.poll.interval.ms": interval_ms}
    assert app.retry_budget_seconds(kafka) == budget
