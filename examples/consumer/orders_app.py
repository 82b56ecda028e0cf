"""Example orders app for a KafkaConsumerGroup with `spec.outbox` (confluent-kafka, psycopg).

It consumes orders, records each one in PostgreSQL and publishes an `OrderProcessed` event
through the transactional outbox, which the pod's `kcg relay` sidecar moves to Kafka.

An order is a JSON object (other fields are ignored):

    {"orderId": "o-1001", "key": "customer-42", "amount": "19.99"}

- orderId: the idempotency key; 1 to 128 of A-Z a-z 0-9 . _ : - (a JSON integer is taken
  as its digits);
- key: the order's key (e.g. the customer), 1 to 256 characters without control
  characters; the event's Kafka key, so one key's events keep their order;
- amount: a decimal from 0 to 999999999999.99 with at most two decimal places, as a JSON
  number or a string.

Per record, ONE PostgreSQL transaction:

    INSERT INTO order_results ... ON CONFLICT (idempotency_key) DO NOTHING RETURNING ...
    -- only when that inserted a row:
    INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES (...)

After the commit the record's offset is stored; stored offsets are committed to Kafka after
each batch, before partitions are revoked and on shutdown (at-least-once: the operator's
properties file disables auto-commit and auto offset store). A redelivered order (a crash,
a rebalance, or a producer that sent it twice) finds its row and changes nothing: one
result row and one outbox row per order id, however often it arrives.

A record that is not a valid order is recorded once, in the same table with status
`rejected` and the reason, keyed by its coordinates "<topic>/<partition>/<offset>" (order
ids cannot contain "/"); it gets no event, and its offset is committed like any other.
Retrying cannot repair it, and failing on it would stall its partition in a crash loop.

The outbox row follows the relay's format (examples/outbox/schema.sql): with the default
topic pattern ${aggregatetype} it goes to topic --output-topic (default orders.processed),
key = the order's key, value = payload, headers `id` = the event id and `type` =
OrderProcessed. The event id is a UUIDv5 of the order id, so anything a consumer of that
topic receives twice is a repeat of the same event id.

Environment:

- ORDERS_DB_DSN: libpq connection string, from a Secret (secretKeyRef); never logged;
- from kcg-operator (see kcg_client.py): KCG_CONSUMER_PROPERTIES, KCG_KAFKA_AUTH_DIR,
  KAFKA_TOPICS, KCG_DELIVERY_SEMANTICS, KCG_POD_NAME.

At start it creates its tables if they are missing (the DDL of orders_schema.sql), under
the same advisory lock as `kcg relay --init-schema`, so pods and relays may start together.
On SIGTERM it finishes the record in hand, commits, leaves the group and exits 0.

    python orders_app.py [--rate N] [--results-table T] [--outbox-table T] [--output-topic T]
    python orders_app.py --print-schema > orders_schema.sql
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import astuple, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Final, TypeVar

import psycopg
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

# Beside this file (in the image: /app); Python puts the script's directory on sys.path.
from kcg_client import ConfigError, StopFlag, client_config, commit, paced, topics

log = logging.getLogger("orders-app")

EVENT_TYPE: Final = "OrderProcessed"
# Fixed forever: event ids of already published events must stay what they were.
EVENT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://kcg.dev/examples/orders-app")
DEFAULT_RESULTS_TABLE: Final = "order_results"
DEFAULT_OUTBOX_TABLE: Final = "outbox"
DEFAULT_OUTPUT_TOPIC: Final = "orders.processed"

ORDER_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_KEY_LENGTH: Final = 256
MAX_AMOUNT: Final = Decimal("999999999999.99")  # numeric(14, 2)
CENT: Final = Decimal("0.01")
MAX_REASON_LENGTH: Final = 200
# Unquoted, like the relay's OUTBOX_TABLE, so both name the same table (case folded).
SQL_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?")
TOPIC_NAME: Final = re.compile(r"[a-zA-Z0-9._-]{1,249}")

MAX_BATCH: Final = 500
REPORT_INTERVAL_SECONDS: Final = 5.0
MAX_RETRY_DELAY_SECONDS: Final = 5.0


# ----------------------------------------------------------------------- orders (pure)


class InvalidOrder(ValueError):
    """The record is not an order; the message says why (never the record's content)."""


@dataclass(frozen=True)
class Order:
    order_id: str
    key: str
    amount: Decimal


def _order_id(value: object) -> str:
    # bool is an int in Python, but `true` is no order id.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if not isinstance(value, str) or not ORDER_ID.fullmatch(value):
        raise InvalidOrder("orderId must be 1-128 of A-Z a-z 0-9 . _ : -")
    return value


def _key(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_LENGTH:
        raise InvalidOrder(f"key must be a string of 1-{MAX_KEY_LENGTH} characters")
    # PostgreSQL text and jsonb hold neither NUL nor lone surrogates; refuse all controls.
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidOrder("key must not contain control characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidOrder("key is not valid Unicode") from None
    return value


def _amount(value: object) -> Decimal:
    # JSON numbers arrive as int or Decimal (parse_float); NaN/Infinity as float.
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        raise InvalidOrder("amount must be a decimal number or string")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise InvalidOrder("amount must be a decimal number or string") from None
    if not amount.is_finite() or not 0 <= amount <= MAX_AMOUNT:
        raise InvalidOrder(f"amount must be from 0 to {MAX_AMOUNT}")
    cents = amount.quantize(CENT)
    if cents != amount:
        raise InvalidOrder("amount must have at most two decimal places")
    return cents if cents else Decimal("0.00")  # no "-0.00"


def parse_order(value: bytes | None) -> Order:
    """The order in a record's value; raises InvalidOrder."""
    if value is None:
        raise InvalidOrder("no value (a tombstone)")
    try:
        body = json.loads(value.decode(), parse_float=Decimal)
    except UnicodeDecodeError:
        raise InvalidOrder("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidOrder(f"not JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise InvalidOrder("not JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidOrder("not a JSON object")
    for name in ("orderId", "key", "amount"):
        if name not in body:
            raise InvalidOrder(f"{name} is missing")
    return Order(_order_id(body["orderId"]), _key(body["key"]), _amount(body["amount"]))


def event_id(order_id: str) -> uuid.UUID:
    """The id of an order's event: the same for every delivery of that order."""
    return uuid.uuid5(EVENT_NAMESPACE, f"{EVENT_TYPE}/{order_id}")


@dataclass(frozen=True)
class OutboxRow:
    """One row of the relay's outbox table, in its column order."""

    id: uuid.UUID  # header "id"
    aggregatetype: str  # the topic, with the default topic pattern ${aggregatetype}
    aggregateid: str  # the Kafka key
    type: str  # header "type"
    payload: str  # the value: JSON text

    COLUMNS: ClassVar[tuple[str, ...]] = ("id", "aggregatetype", "aggregateid", "type", "payload")


def outbox_row(order: Order, topic: str) -> OutboxRow:
    # Only the order's own fields: every delivery yields the same bytes, not just the same id.
    payload = {"orderId": order.order_id, "key": order.key, "amount": str(order.amount)}
    return OutboxRow(
        id=event_id(order.order_id),
        aggregatetype=topic,
        aggregateid=order.key,
        type=EVENT_TYPE,
        payload=json.dumps(payload, sort_keys=True, separators=(",", ":")),
    )


class Status(enum.StrEnum):
    PROCESSED = "processed"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Source:
    """Where a record came from."""

    topic: str
    partition: int
    offset: int

    def key(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True)
class ResultRow:
    """One row of the results table, in its column order."""

    idempotency_key: str
    status: str  # a Status value
    order_key: str | None
    amount: Decimal | None
    event_id: uuid.UUID | None
    reason: str | None
    source_topic: str
    source_partition: int
    source_offset: int
    processed_by: str

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "idempotency_key", "status", "order_key", "amount", "event_id", "reason",
        "source_topic", "source_partition", "source_offset", "processed_by",
    )


def processed_result(order: Order, event: OutboxRow, source: Source, by: str) -> ResultRow:
    return ResultRow(
        order.order_id, Status.PROCESSED.value, order.key, order.amount, event.id, None,
        source.topic, source.partition, source.offset, by,
    )


def rejected_result(reason: str, source: Source, by: str) -> ResultRow:
    return ResultRow(
        source.key(), Status.REJECTED.value, None, None, None, reason[:MAX_REASON_LENGTH],
        source.topic, source.partition, source.offset, by,
    )


def rows_for(value: bytes | None, source: Source, by: str,
             topic: str) -> tuple[ResultRow, OutboxRow | None]:
    """What one record writes: its result row and, for a valid order, its event."""
    try:
        order = parse_order(value)
    except InvalidOrder as exc:
        return rejected_result(str(exc), source, by), None
    event = outbox_row(order, topic)
    return processed_result(order, event, source, by), event


# ----------------------------------------------------------------------- schema (pure)


def dead_letter_table(outbox_table: str) -> str:
    """The relay's default OUTBOX_DEAD_LETTER_TABLE for `outbox_table`."""
    schema, _, name = outbox_table.rpartition(".")
    return f"{schema}.{name}_dead_letter" if schema else f"{name}_dead_letter"


def results_ddl(table: str) -> str:
    return f"""\
-- One row per order id (the idempotency key), however often the order was delivered.
CREATE TABLE IF NOT EXISTS {table} (
    -- The order id; for a record that is not a valid order, its coordinates
    -- "<topic>/<partition>/<offset>" (order ids cannot contain "/").
    idempotency_key  text        PRIMARY KEY,
    status           text        NOT NULL CHECK (status IN ('processed', 'rejected')),
    order_key        text,
    amount           numeric(14, 2),
    -- The outbox event of a processed order (Kafka header "id").
    event_id         uuid,
    -- Why a record was rejected.
    reason           text,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    -- The pod (KCG_POD_NAME) that processed it.
    processed_by     text        NOT NULL,
    processed_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


def outbox_ddl(table: str, dead_letter: str) -> str:
    """The relay's tables, exactly as `kcg relay --print-schema` prints them (a unit test
    compares the two: this image does not carry the operator's package)."""
    return f"""\
CREATE TABLE IF NOT EXISTS {table} (
    -- Publication order: assigned at insert, inside the writer's transaction.
    seq           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Debezium outbox columns: event id (Kafka header "id"), topic routing, key, type
    -- (header "type") and the message value.
    id            uuid        NOT NULL DEFAULT gen_random_uuid(),
    aggregatetype text        NOT NULL,
    aggregateid   text        NOT NULL,
    type          text        NOT NULL,
    payload       jsonb,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (
    -- A queue: rows are deleted once published. Vacuum after a fixed number of dead
    -- rows (a scale factor of a nearly empty table would mean "almost never") and
    -- without throttling, so dead rows do not pile up at the head of the index.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);

-- Rows Kafka refused for good (too large, invalid), with the error; same columns first.
CREATE TABLE IF NOT EXISTS {dead_letter} (
    LIKE {table},
    topic     text,
    error     text        NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (seq)
);
"""


def schema_sql(results_table: str, outbox_table: str) -> str:
    """Everything the app creates at start (orders_schema.sql holds the default names)."""
    return (
        "-- Tables of examples/consumer/orders_app.py (PostgreSQL 13+); the app creates them\n"
        "-- at start. Generated by `python orders_app.py --print-schema`.\n\n"
        + results_ddl(results_table)
        + "\n-- The transactional outbox that `kcg relay` reads (examples/outbox/schema.sql).\n"
        + outbox_ddl(outbox_table, dead_letter_table(outbox_table))
    )


# ----------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    kafka: Mapping[str, str] = field(repr=False)  # may hold credentials from the auth dir
    topics: tuple[str, ...]
    dsn: str = field(repr=False)
    results_table: str
    outbox_table: str
    output_topic: str
    processed_by: str
    semantics: str
    rate: float | None = None


def _table(option: str, value: str) -> str:
    if not SQL_IDENTIFIER.fullmatch(value):
        raise ConfigError(
            f"{option}={value!r}: use an unquoted SQL identifier, optionally schema-qualified"
        )
    return value


def load_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Raises ConfigError naming what to fix."""
    kafka = client_config(env)
    # At-least-once rests on this: an offset is stored only after its database commit. The
    # operator writes the same value; an app run by hand must not lose it either.
    kafka["enable.auto.offset.store"] = "false"
    dsn = env.get("ORDERS_DB_DSN", "").strip()
    if not dsn:
        raise ConfigError("ORDERS_DB_DSN is not set: give it the database's connection string "
                          "from a Secret (secretKeyRef)")
    results = _table("--results-table", args.results_table)
    outbox = _table("--outbox-table", args.outbox_table)
    if results.lower() in (outbox.lower(), dead_letter_table(outbox).lower()):
        raise ConfigError("--results-table must differ from the outbox tables")
    if not TOPIC_NAME.fullmatch(args.output_topic) or args.output_topic in (".", ".."):
        raise ConfigError(f"--output-topic={args.output_topic!r} is not a Kafka topic name")
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("--rate must be above 0")
    pod = env.get("KCG_POD_NAME", "").strip() or socket.gethostname()
    return Settings(
        kafka=kafka, topics=tuple(topics(env)), dsn=dsn, results_table=results,
        outbox_table=outbox, output_topic=args.output_topic, processed_by=pod,
        semantics=env.get("KCG_DELIVERY_SEMANTICS", "").strip() or "atLeastOnce",
        rate=args.rate,
    )


def retry_budget_seconds(kafka: Mapping[str, str]) -> float:
    """How long to retry the database for one record. Meanwhile the app does not poll, and
    past max.poll.interval.ms the group would evict it; at half that it exits instead, the
    kubelet restarts it and the record is redelivered."""
    try:
        interval_ms = int(kafka.get("max.poll.interval.ms", "300000"))
    except ValueError:
        interval_ms = 300000
    return max(interval_ms / 2000, 5.0)


# ----------------------------------------------------------------------- database (I/O)


class DatabaseUnavailable(Exception):
    pass


class Outcome(enum.Enum):
    PROCESSED = "processed"
    DUPLICATE = "duplicates"
    REJECTED = "rejected"


T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]


class OrdersStore:
    """The app's one connection, with reconnection; each record is one transaction."""

    def __init__(self, settings: Settings, stop: StopFlag, retry_seconds: float) -> None:
        self.settings = settings
        self.stop = stop
        self.retry_seconds = retry_seconds
        self.conn: Connection | None = None
        # Table names are validated unquoted identifiers (see SQL_IDENTIFIER).
        self.insert_result = (
            f"INSERT INTO {settings.results_table} ({', '.join(ResultRow.COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(ResultRow.COLUMNS))}) "
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING true"
        ).encode()
        self.insert_event = (
            f"INSERT INTO {settings.outbox_table} ({', '.join(OutboxRow.COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(OutboxRow.COLUMNS))})"
        ).encode()

    def _connect(self) -> Connection:
        return psycopg.connect(
            self.settings.dsn, autocommit=True, connect_timeout=10,
            application_name="kcg-orders-app",
        )

    def attempt(self, work: Callable[[Connection], T]) -> T | None:
        """`work` on a live connection, reconnecting with back-off on connection errors.

        None: SIGTERM came while the database was down (the caller then leaves the record
        unstored, for redelivery). Raises DatabaseUnavailable once the budget is spent.
        Other database errors (a missing table, a bug) propagate: retrying cannot fix them.
        """
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            try:
                if self.conn is None:
                    self.conn = self._connect()
                return work(self.conn)
            except psycopg.OperationalError as exc:
                if self.conn is not None and (self.conn.broken or self.conn.closed):
                    self.conn.close()
                    self.conn = None
                # The message names host and port, never the password.
                reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnavailable(
                        f"database unavailable for {self.retry_seconds:.0f}s: {reason}"
                    ) from None
                log.warning("database: %s; retrying in %.1fs", reason, delay)
                until = time.monotonic() + delay
                while time.monotonic() < until:
                    if self.stop.stopping:
                        return None
                    time.sleep(0.05)
                delay = min(delay * 2, MAX_RETRY_DELAY_SECONDS)

    def create_schema(self) -> bool:
        settings = self.settings

        def create(conn: Connection) -> bool:
            with conn.transaction():
                # The relay's own DDL lock key: app pods and relays starting together would
                # otherwise race on the catalog (CREATE TABLE IF NOT EXISTS is not atomic).
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                             (f"kcg-outbox-ddl/{settings.outbox_table}",))
                conn.execute(schema_sql(settings.results_table, settings.outbox_table).encode())
            return True

        return self.attempt(create) is not None

    def write(self, result: ResultRow, event: OutboxRow | None) -> bool | None:
        """One transaction: the result row and, if that row is new, the event. True: new;
        False: a redelivery (nothing written); None: stopped while the database was down."""

        def transaction(conn: Connection) -> bool:
            with conn.transaction():
                inserted = conn.execute(self.insert_result, astuple(result)).fetchone()
                if inserted is not None and event is not None:
                    conn.execute(self.insert_event, astuple(event))
            return inserted is not None

        return self.attempt(transaction)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ----------------------------------------------------------------------- the loop


@dataclass
class Stats:
    """Counters, reported in one line at most every REPORT_INTERVAL_SECONDS."""

    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    consume_errors: int = 0
    last_problem: str = ""
    reported: tuple[int, ...] = ()
    last_report: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        text = " ".join(f"{o.value}={n}" for o, n in self.counts.items())
        text += f" consume_errors={self.consume_errors}"
        return f"{text} (last: {self.last_problem})" if self.last_problem else text

    def maybe_report(self) -> None:
        now = time.monotonic()
        current = (*self.counts.values(), self.consume_errors)
        if now - self.last_report >= REPORT_INTERVAL_SECONDS and current != self.reported:
            log.info("%s", self.line())
            self.reported, self.last_report, self.last_problem = current, now, ""


def _partitions(partitions: list[TopicPartition]) -> list[tuple[str, int]]:
    return [(p.topic, p.partition) for p in partitions]


def consume_loop(settings: Settings, store: OrdersStore, stop: StopFlag) -> Stats:
    stats = Stats()
    consumer = Consumer(dict(settings.kafka))

    def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
        # Cooperative rebalance: only these partitions move. Their records are all finished
        # (callbacks run inside consume()), so commit now and the new owner starts after them.
        log.info("revoked %s", _partitions(partitions))
        commit(c)

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", _partitions(partitions))

    def on_lost(c: Consumer, partitions: list[TopicPartition]) -> None:
        # Evicted (session timeout): another member may own them already; a commit would be
        # refused, and what we redo is deduplicated by the results table.
        log.warning("lost %s", _partitions(partitions))

    consumer.subscribe(list(settings.topics), on_assign=on_assign, on_revoke=on_revoke,
                       on_lost=on_lost)
    pace = paced(settings.rate)
    # About a second of work per batch when rate-limited, so rebalances and SIGTERM are
    # served promptly; each batch ends with one synchronous offset commit.
    batch = max(1, min(MAX_BATCH, int(settings.rate))) if settings.rate else MAX_BATCH
    try:
        while not stop.stopping:
            stored = False
            for msg in consumer.consume(num_messages=batch, timeout=0.5):
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    stats.consume_errors += 1
                    stats.last_problem = f"consume error: {error.str()}"
                    continue
                next(pace)
                if stop.stopping:
                    break  # the rest of the batch is redelivered to the partitions' next owner
                done = process(msg, settings, store)
                if done is None:
                    break  # stopped while the database was down: this record is redelivered
                outcome, result = done
                consumer.store_offsets(message=msg)
                stored = True
                stats.counts[outcome] += 1
                if outcome is Outcome.REJECTED:
                    # Coordinates and reason only: the record may hold anything.
                    stats.last_problem = f"rejected {result.idempotency_key}: {result.reason}"
            if stored:
                commit(consumer)
            stats.maybe_report()
    finally:
        try:
            commit(consumer)  # what was stored since the last commit
        except KafkaException as exc:
            log.warning("final commit failed: %s", exc)
        consumer.close()  # leave the group now rather than after session.timeout.ms
    return stats


def _source(msg: Message) -> Source:
    return Source(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0))


def process(
    msg: Message, settings: Settings, store: OrdersStore
) -> tuple[Outcome, ResultRow] | None:
    """Writes what `msg` means; None when stopped while the database was down."""
    value = msg.value()
    raw = value.encode() if isinstance(value, str) else value
    result, event = rows_for(raw, _source(msg), settings.processed_by, settings.output_topic)
    inserted = store.write(result, event)
    if inserted is None:
        return None
    if not inserted:
        return Outcome.DUPLICATE, result
    return (Outcome.PROCESSED if event is not None else Outcome.REJECTED), result


def run(settings: Settings, stop: StopFlag) -> int:
    if settings.semantics != "atLeastOnce":
        log.info("deliverySemantics=%s: this app commits offsets after its database "
                 "transaction (at least once), and the idempotency key applies each order "
                 "once", settings.semantics)
    store = OrdersStore(settings, stop, retry_budget_seconds(settings.kafka))
    try:
        if not store.create_schema():
            return 0  # stopped before the database was reachable
        log.info("consuming %s into %s; events to %s via %s", ",".join(settings.topics),
                 settings.results_table, settings.output_topic, settings.outbox_table)
        stats = consume_loop(settings, store, stop)
    finally:
        store.close()
    log.info("stopped: %s", stats.line())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=None, help="max records per second")
    parser.add_argument("--results-table", default=DEFAULT_RESULTS_TABLE,
                        help=f"results table (default {DEFAULT_RESULTS_TABLE})")
    parser.add_argument("--outbox-table", default=DEFAULT_OUTBOX_TABLE,
                        help="the relay's outbox table, spec.outbox.table "
                             f"(default {DEFAULT_OUTBOX_TABLE})")
    parser.add_argument("--output-topic", default=DEFAULT_OUTPUT_TOPIC,
                        help=f"topic of the events (default {DEFAULT_OUTPUT_TOPIC})")
    parser.add_argument("--print-schema", action="store_true",
                        help="print the tables' DDL and exit")
    args = parser.parse_args(argv)
    if args.print_schema:
        print(schema_sql(_table("--results-table", args.results_table),
                         _table("--outbox-table", args.outbox_table)), end="")
        return 0
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load_settings(args, os.environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        return run(settings, StopFlag().install())
    except DatabaseUnavailable as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
