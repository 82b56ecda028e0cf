"""The relay's configuration from env: defaults, Kafka properties, and refusals that say why."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcg_operator.outbox.config import (
    MANAGED_PRODUCER_PROPERTIES,
    ConfigError,
    load_config,
    property_name_from_env,
    table_names,
)

pytestmark = pytest.mark.unit

BASE = {"OUTBOX_DSN": "postgresql://db/app", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}


def test_defaults() -> None:
    config = load_config(BASE)
    assert config.dsn == "postgresql://db/app"
    assert (config.table, config.dead_letter_table) == ("outbox", "outbox_dead_letter")
    assert config.router.pattern == "${aggregatetype}"
    assert config.batch_size == 5000 and config.fetch_size == 1000
    assert config.metrics_port == 9310
    assert not config.init_schema
    # The guarantees' properties are always there, whatever else is set.
    for key, value in MANAGED_PRODUCER_PROPERTIES.items():
        assert config.kafka[key] == value
    assert config.kafka["bootstrap.servers"] == "kafka:9092"


def test_dsn_is_not_printed() -> None:
    assert "postgresql://db/app" not in repr(load_config(BASE))


def test_dsn_from_file(tmp_path: Path) -> None:
    path = tmp_path / "dsn"
    path.write_text("postgresql://from-file/app\n")
    env = {"OUTBOX_DSN_FILE": str(path), "KAFKA_BOOTSTRAP_SERVERS": "k:9092"}
    assert load_config(env).dsn == "postgresql://from-file/app"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "k:9092"}, "set OUTBOX_DSN"),
        ({**BASE, "OUTBOX_DSN_FILE": "/x"}, "set only one"),
        ({"OUTBOX_DSN_FILE": "/nonexistent/dsn", "KAFKA_BOOTSTRAP_SERVERS": "k"}, "cannot be read"),
        ({"OUTBOX_DSN": "x"}, "KAFKA_BOOTSTRAP_SERVERS is not set"),
        ({**BASE, "OUTBOX_TABLE": "out box"}, "OUTBOX_TABLE='out box' is not a table name"),
        ({**BASE, "OUTBOX_TABLE": "a.b.c"}, "optionally schema-qualified"),
        ({**BASE, "OUTBOX_DEAD_LETTER_TABLE": "outbox"}, "must differ"),
        ({**BASE, "OUTBOX_BATCH_SIZE": "many"}, "OUTBOX_BATCH_SIZE='many' is not an integer"),
        ({**BASE, "OUTBOX_BATCH_SIZE": "0"}, "from 1 to 100000"),
        ({**BASE, "OUTBOX_TOPIC_PATTERN": "${table}"}, "unknown placeholder ${table}"),
        ({**BASE, "OUTBOX_TOPIC_PATTERN": "a b"}, "literal text"),
        ({**BASE, "OUTBOX_INIT_SCHEMA": "maybe"}, "true or false"),
        ({**BASE, "KAFKA_PROPERTY_ACKS": "1"}, "acks is managed by the relay"),
        ({**BASE, "KAFKA_PROPERTY_ENABLE_IDEMPOTENCE": "false"}, "enable.idempotence is managed"),
        ({**BASE, "KAFKA_PROPERTY_DELIVERY_TIMEOUT_MS": "1000"}, "delivery.timeout.ms is managed"),
        ({**BASE, "KAFKA_PROPERTY_TRANSACTIONAL_ID": "x"}, "transactional.id is managed"),
        ({**BASE, "KAFKA_PROPERTY_BOOTSTRAP_SERVERS": "x"}, "set that instead"),
        ({**BASE, "OUTBOX_NOTIFY_CHANNEL": "Bad-Name"}, "OUTBOX_NOTIFY_CHANNEL"),
    ],
)
def test_refusals_name_the_variable_and_the_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config(env)
    assert message in str(info.value)


def test_kafka_properties_from_env_and_auth_dir(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.mkdir()
    (auth / "security.protocol").write_text("SASL_SSL\n")
    (auth / "sasl.password").write_text("s3cret")
    (auth / "..data").mkdir()  # the kubelet's Secret volume internals are skipped
    (auth / ".hidden").write_text("x")
    env = {
        **BASE,
        "KCG_KAFKA_AUTH_DIR": str(auth),
        "KAFKA_PROPERTY_COMPRESSION_TYPE": "zstd",
        "KAFKA_PROPERTY_LINGER_MS": "20",
    }
    kafka = load_config(env).kafka
    assert kafka["security.protocol"] == "SASL_SSL"
    assert kafka["sasl.password"] == "s3cret"
    assert kafka["compression.type"] == "zstd"
    assert kafka["linger.ms"] == "20"
    assert ".hidden" not in kafka and "..data" not in kafka


def test_managed_property_in_auth_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "acks").write_text("0")
    with pytest.raises(ConfigError, match="acks is managed"):
        load_config({**BASE, "KCG_KAFKA_AUTH_DIR": str(tmp_path)})


def test_property_names_from_env() -> None:
    assert property_name_from_env("KAFKA_PROPERTY_SASL_MECHANISM") == "sasl.mechanism"


def test_dead_letter_table_follows_the_schema() -> None:
    assert table_names({"OUTBOX_TABLE": "billing.events"}) == (
        "billing.events",
        "billing.events_dead_letter",
    )


def test_relay_id_from_pod_name_and_fetch_size_capped_by_batch() -> None:
    config = load_config({**BASE, "KCG_POD_NAME": "orders-7d9f", "OUTBOX_BATCH_SIZE": "200"})
    assert config.relay_id == "orders-7d9f"
    assert config.kafka["client.id"] == "kcg-relay-orders-7d9f"
    assert config.fetch_size == 200
