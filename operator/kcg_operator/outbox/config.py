"""The relay's configuration, read from the environment (pure apart from reading files).

Database
  OUTBOX_DSN                  libpq connection string or URI, e.g. from a Secret via
                              secretKeyRef; or
  OUTBOX_DSN_FILE             path of a file holding it (a mounted Secret key).
  OUTBOX_TABLE                outbox table, optionally schema-qualified (default outbox).
  OUTBOX_DEAD_LETTER_TABLE    default: <table>_dead_letter, in the outbox table's schema.
  OUTBOX_INIT_SCHEMA          true: create the tables when missing, then relay.

Routing and pacing
  OUTBOX_TOPIC_PATTERN        topic per row; ${aggregatetype}, ${aggregateid} and ${type}
                              are replaced by the row's values (default ${aggregatetype}).
  OUTBOX_BATCH_SIZE           most rows per round, i.e. per database transaction that marks
                              rows done; also the most duplicates a crash can cause
                              (default 5000).
  OUTBOX_FETCH_SIZE           rows per SELECT inside a round (default 1000).
  OUTBOX_MAX_ROUND_MS         a round stops fetching after this long (default 250).
  OUTBOX_POLL_INTERVAL_MS     longest sleep between polls of an empty table; polling backs
                              off from 1 ms up to this (default 100); with a NOTIFY
                              channel, how long to wait for a NOTIFY before polling anyway.
  OUTBOX_REBALANCE_INTERVAL_MS  how often relays re-balance shards (default 1000); also the
                              takeover delay after a relay dies.
  OUTBOX_NOTIFY_CHANNEL       optional: LISTEN here; an idle relay then waits for a NOTIFY
                              instead of polling; `--init-schema` adds the statement-level
                              trigger (see schema.py for why it is off by default).
  OUTBOX_SHUTDOWN_GRACE_SECONDS  on SIGTERM, wait this long for in-flight acks (default 10).

Kafka
  KAFKA_BOOTSTRAP_SERVERS     required.
  KCG_KAFKA_AUTH_DIR          directory with one file per client property (the operator
                              mounts spec.kafka.secretRef there); names starting with "."
                              are skipped.
  KAFKA_PROPERTY_<NAME>       any other librdkafka property: NAME upper-cased with "." as
                              "_", e.g. KAFKA_PROPERTY_COMPRESSION_TYPE=zstd.
  Properties the guarantees rest on (acks, idempotence, timeouts, partitioner, ...) are
  managed and refused when set.

Operations
  OUTBOX_METRICS_PORT         /metrics, /healthz, /readyz (default 9310).
  OUTBOX_METRICS_ADDRESS      bind address (default 0.0.0.0).
  OUTBOX_RELAY_ID             name in logs and client.id (default KCG_POD_NAME or hostname).
  OUTBOX_LOG_LEVEL            default INFO.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kcg_operator.outbox.routing import TopicRouter, parse_topic_pattern

DEFAULT_TABLE: Final = "outbox"
DEFAULT_TOPIC_PATTERN: Final = "${aggregatetype}"
DEFAULT_METRICS_PORT: Final = 9310
#: Rows per round (one database transaction) and the longest sleep of an idle relay; the
#: CRD's spec.outbox defaults are these (api/models.py), so a relay in a pod and one started
#: by hand with no settings behave the same, and as `make bench-outbox` measured them.
DEFAULT_BATCH_SIZE: Final = 5000
DEFAULT_POLL_INTERVAL_MS: Final = 100
SQL_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?")
PROPERTY_ENV_PREFIX: Final = "KAFKA_PROPERTY_"

# The guarantees rest on these; a user value would silently break them, so it is refused.
#  - enable.idempotence + acks=all: no duplicates or reordering from producer retries.
#  - message.timeout.ms=0 (infinite): a broker outage delays messages, never fails them;
#    a failed-then-retried row could otherwise land after a later row of the same key.
#  - partitioner murmur2_random: a key lands on the partition a Java producer would pick.
MANAGED_PRODUCER_PROPERTIES: Final[Mapping[str, str]] = {
    "enable.idempotence": "true",
    "acks": "all",
    "message.timeout.ms": "0",
    "partitioner": "murmur2_random",
}
MANAGED_ALIASES: Final[Mapping[str, str]] = {
    "request.required.acks": "acks",
    "delivery.timeout.ms": "message.timeout.ms",
    "retries": "enable.idempotence",
    "message.send.max.retries": "enable.idempotence",
    "transactional.id": "enable.idempotence",
    "bootstrap.servers": "bootstrap.servers",
    "metadata.broker.list": "bootstrap.servers",
}
# Throughput defaults a user may override.
DEFAULT_PRODUCER_PROPERTIES: Final[Mapping[str, str]] = {
    "linger.ms": "5",
    "compression.type": "lz4",
    "queue.buffering.max.messages": "500000",
    "queue.buffering.max.kbytes": "65536",
    "socket.keepalive.enable": "true",
    "topic.metadata.propagation.max.ms": "5000",
}


class ConfigError(Exception):
    """A setting is missing or wrong; the message names the variable and the fix."""


@dataclass(frozen=True)
class RelayConfig:
    dsn: str = field(repr=False)
    table: str
    dead_letter_table: str
    router: TopicRouter
    kafka: Mapping[str, str] = field(repr=False)
    batch_size: int = DEFAULT_BATCH_SIZE
    fetch_size: int = 1000
    max_round_seconds: float = 0.25
    poll_interval_seconds: float = DEFAULT_POLL_INTERVAL_MS / 1000
    rebalance_interval_seconds: float = 1.0
    notify_channel: str | None = None
    shutdown_grace_seconds: float = 10.0
    init_schema: bool = False
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_address: str = "0.0.0.0"
    relay_id: str = "kcg-relay"
    log_level: str = "INFO"


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not an integer: set a number from {low} to {high}"
        ) from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range: set a number from {low} to {high}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={env[name]!r} is not a boolean: set true or false")


def _identifier(name: str, value: str) -> str:
    if not SQL_IDENTIFIER.fullmatch(value):
        raise ConfigError(
            f"{name}={value!r} is not a table name: use an unquoted SQL identifier, "
            "optionally schema-qualified (schema.table), letters, digits and _"
        )
    return value


def default_dead_letter_table(table: str) -> str:
    schema, _, name = table.rpartition(".")
    return f"{schema}.{name}_dead_letter" if schema else f"{name}_dead_letter"


def property_name_from_env(var: str) -> str:
    """KAFKA_PROPERTY_SASL_MECHANISM -> sasl.mechanism."""
    return var[len(PROPERTY_ENV_PREFIX):].lower().replace("_", ".")


def managed_property_problem(key: str) -> str | None:
    managed = MANAGED_ALIASES.get(key, key)
    if managed == "bootstrap.servers":
        return f"{key} comes from KAFKA_BOOTSTRAP_SERVERS: set that instead"
    if managed in MANAGED_PRODUCER_PROPERTIES:
        return (
            f"{key} is managed by the relay ({managed}={MANAGED_PRODUCER_PROPERTIES[managed]}: "
            "ordering and no-loss depend on it): remove it"
        )
    return None


def read_auth_dir(path: Path) -> dict[str, str]:
    """One client property per file, as the operator mounts spec.kafka.secretRef."""
    if not path.is_dir():
        raise ConfigError(f"KCG_KAFKA_AUTH_DIR={str(path)!r} is not a directory")
    props: dict[str, str] = {}
    for entry in sorted(path.iterdir()):
        # The kubelet's Secret volumes hold ..data and ..<timestamp> links next to the keys.
        if entry.name.startswith(".") or not entry.is_file():
            continue
        props[entry.name] = entry.read_text().strip()
    return props


def kafka_properties(env: Mapping[str, str], auth: Mapping[str, str]) -> dict[str, str]:
    """The producer's librdkafka properties: defaults < auth dir < KAFKA_PROPERTY_* < managed."""
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if not bootstrap:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set: set it to the brokers' host:port")
    user: dict[str, str] = dict(auth)
    user.update(
        {property_name_from_env(k): v for k, v in env.items() if k.startswith(PROPERTY_ENV_PREFIX)}
    )
    problems = [p for p in (managed_property_problem(k) for k in sorted(user)) if p]
    if problems:
        raise ConfigError("; ".join(problems))
    return {
        **DEFAULT_PRODUCER_PROPERTIES,
        **user,
        **MANAGED_PRODUCER_PROPERTIES,
        "bootstrap.servers": bootstrap,
    }


def _dsn(env: Mapping[str, str], read_text: Callable[[str], str]) -> str:
    dsn = env.get("OUTBOX_DSN", "").strip()
    path = env.get("OUTBOX_DSN_FILE", "").strip()
    if dsn and path:
        raise ConfigError("both OUTBOX_DSN and OUTBOX_DSN_FILE are set: set only one")
    if path:
        try:
            dsn = read_text(path).strip()
        except OSError as exc:
            raise ConfigError(
                f"OUTBOX_DSN_FILE={path!r} cannot be read: {exc.strerror}"
            ) from None
        if not dsn:
            raise ConfigError(f"OUTBOX_DSN_FILE={path!r} is empty: it must hold the DSN")
    if not dsn:
        raise ConfigError(
            "no database: set OUTBOX_DSN (e.g. from the Secret with secretKeyRef) or "
            "OUTBOX_DSN_FILE (path of the mounted Secret key)"
        )
    return dsn


def _read_text(path: str) -> str:
    return Path(path).read_text()


def table_names(env: Mapping[str, str]) -> tuple[str, str]:
    """(outbox table, dead-letter table) from OUTBOX_TABLE and OUTBOX_DEAD_LETTER_TABLE."""
    table = _identifier("OUTBOX_TABLE", env.get("OUTBOX_TABLE", "").strip() or DEFAULT_TABLE)
    dead_letter = _identifier(
        "OUTBOX_DEAD_LETTER_TABLE",
        env.get("OUTBOX_DEAD_LETTER_TABLE", "").strip() or default_dead_letter_table(table),
    )
    if dead_letter == table:
        raise ConfigError("OUTBOX_DEAD_LETTER_TABLE must differ from OUTBOX_TABLE")
    return table, dead_letter


def database_dsn(env: Mapping[str, str], read_text: Callable[[str], str] = _read_text) -> str:
    return _dsn(env, read_text)


def load_config(
    env: Mapping[str, str], read_text: Callable[[str], str] = _read_text
) -> RelayConfig:
    """The relay's settings from `env`; raises ConfigError naming the fix to make."""
    dsn = _dsn(env, read_text)
    table, dead_letter = table_names(env)
    pattern = env.get("OUTBOX_TOPIC_PATTERN", "").strip() or DEFAULT_TOPIC_PATTERN
    try:
        router = parse_topic_pattern(pattern)
    except ValueError as exc:
        raise ConfigError(f"OUTBOX_TOPIC_PATTERN={pattern!r}: {exc}") from None
    auth_dir = env.get("KCG_KAFKA_AUTH_DIR", "").strip()
    auth = read_auth_dir(Path(auth_dir)) if auth_dir else {}
    batch = _int(env, "OUTBOX_BATCH_SIZE", DEFAULT_BATCH_SIZE, 1, 100_000)
    channel = env.get("OUTBOX_NOTIFY_CHANNEL", "").strip() or None
    if channel is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", channel):
        raise ConfigError(
            f"OUTBOX_NOTIFY_CHANNEL={channel!r}: use lower-case letters, digits and _"
        )
    level = env.get("OUTBOX_LOG_LEVEL", "").strip().upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"OUTBOX_LOG_LEVEL={level!r}: use DEBUG, INFO, WARNING or ERROR")
    relay_id = (
        env.get("OUTBOX_RELAY_ID", "").strip()
        or env.get("KCG_POD_NAME", "").strip()
        or socket.gethostname()
    )
    kafka = kafka_properties(env, auth)
    kafka.setdefault("client.id", f"kcg-relay-{relay_id}")
    return RelayConfig(
        dsn=dsn,
        table=table,
        dead_letter_table=dead_letter,
        router=router,
        kafka=kafka,
        batch_size=batch,
        fetch_size=min(batch, _int(env, "OUTBOX_FETCH_SIZE", 1000, 1, 100_000)),
        max_round_seconds=_int(env, "OUTBOX_MAX_ROUND_MS", 250, 1, 60_000) / 1000,
        poll_interval_seconds=_int(env, "OUTBOX_POLL_INTERVAL_MS", DEFAULT_POLL_INTERVAL_MS, 1,
                                   60_000) / 1000,
        rebalance_interval_seconds=_int(env, "OUTBOX_REBALANCE_INTERVAL_MS", 1000, 50, 60_000)
        / 1000,
        notify_channel=channel,
        shutdown_grace_seconds=float(_int(env, "OUTBOX_SHUTDOWN_GRACE_SECONDS", 10, 0, 3600)),
        init_schema=_bool(env, "OUTBOX_INIT_SCHEMA"),
        metrics_port=_int(env, "OUTBOX_METRICS_PORT", DEFAULT_METRICS_PORT, 0, 65535),
        metrics_address=env.get("OUTBOX_METRICS_ADDRESS", "").strip() or "0.0.0.0",
        relay_id=relay_id,
        log_level=level,
    )
