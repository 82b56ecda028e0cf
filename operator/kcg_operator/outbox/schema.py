"""The outbox and dead-letter tables: DDL (pure) and what the relay reads of the catalog.

Columns: Debezium's outbox columns (`id`, `aggregatetype`, `aggregateid`, `type`,
`payload`), so an app written for Debezium's outbox router needs no change, plus

- `seq`, the publication order: an identity, so it is assigned when the row is inserted,
  inside the writer's transaction. Among rows visible together the relay publishes in
  `seq` order; a row that becomes visible later (its transaction committed later) is
  published later, even with a lower `seq`, because each round of the relay starts again
  from the lowest *pending* row rather than from a "last seen" id. Writers that serialize
  on the aggregate (they update or lock the aggregate's row before inserting its event,
  the usual pattern) therefore get exactly their commit order per key.
- `created_at`, for the oldest-pending-event metric.

Rows are deleted once published, so the table holds only pending rows; its autovacuum
settings are tuned for a queue (vacuum after a fixed number of dead rows, not a fraction
of a table that is mostly empty), which keeps it from bloating.

No trigger and no NOTIFY by default: a NOTIFY in the writer's transaction takes a
database-wide lock at commit (PreCommit_Notify, to keep the notification queue in commit
order), which serializes every committing writer that notifies, a statement-level trigger
included. The relay polls with adaptive back-off instead (1 ms up to
OUTBOX_POLL_INTERVAL_MS when idle, no sleep while rows keep coming): a poll of an empty
table is one index probe. `notify_trigger_ddl` is there for low-rate setups that prefer
instant wake-ups and accept that cost (set OUTBOX_NOTIFY_CHANNEL on the relay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import psycopg

REQUIRED_COLUMNS: Final = ("seq", "id", "aggregatetype", "aggregateid", "type", "payload")
TEXT_PAYLOAD_TYPES: Final = ("json", "jsonb", "text", "character varying", "xml")
PAYLOAD_TYPES: Final = ("jsonb", "json", "bytea", "text")


class SchemaError(Exception):
    """The table is missing or lacks a column; the message says how to fix it."""


def table_ddl(table: str, dead_letter_table: str, payload_type: str = "jsonb") -> str:
    """CREATE statements for the outbox and its dead-letter table (idempotent)."""
    if payload_type not in PAYLOAD_TYPES:
        raise ValueError(f"payload type {payload_type!r}: use one of {', '.join(PAYLOAD_TYPES)}")
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
    payload       {payload_type},
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
CREATE TABLE IF NOT EXISTS {dead_letter_table} (
    LIKE {table},
    topic     text,
    error     text        NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (seq)
);
"""


def notify_trigger_ddl(table: str, channel: str) -> str:
    """Optional wake-up: one NOTIFY per INSERT statement (not per row).

    Costs every writer a cluster-wide lock at commit; see the module docstring.
    """
    function = f"{table.replace('.', '_')}_notify"
    return f"""\
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER {function} AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();
"""


@dataclass(frozen=True)
class TableInfo:
    qualified_name: str
    payload_type: str
    has_created_at: bool

    @property
    def payload_sql(self) -> str:
        """The payload as bytes, whatever its column type (Kafka values are bytes)."""
        if self.payload_type == "bytea":
            return "payload"
        return "convert_to(payload::text, 'UTF8')"


def table_info(columns: dict[str, str], qualified_name: str, table: str) -> TableInfo:
    """Check the columns (name -> format_type) the catalog reports for the outbox table."""
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        hint = ""
        if "seq" in missing:
            hint = (
                f"; to adopt an existing Debezium outbox table: ALTER TABLE {table} ADD COLUMN "
                "seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY (or UNIQUE)"
            )
        raise SchemaError(f"table {table} lacks column(s) {', '.join(missing)}{hint}")
    payload = columns["payload"]
    if payload != "bytea" and payload not in TEXT_PAYLOAD_TYPES:
        raise SchemaError(
            f"{table}.payload is {payload}: use jsonb, json, text or bytea"
        )
    return TableInfo(
        qualified_name=qualified_name,
        payload_type=payload,
        has_created_at="created_at" in columns,
    )


def describe_table(conn: psycopg.Connection[tuple[object, ...]], table: str) -> TableInfo:
    row = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
        (table,),
    ).fetchone()
    if row is None:
        raise SchemaError(
            f"table {table} does not exist: create it with `kcg relay --init-schema` "
            "(or OUTBOX_INIT_SCHEMA=true), DDL in examples/outbox/schema.sql"
        )
    qualified = str(row[0])
    columns = {
        str(name): str(type_)
        for name, type_ in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (table,),
        ).fetchall()
    }
    return table_info(columns, qualified, table)


def require_table(conn: psycopg.Connection[tuple[object, ...]], table: str, what: str) -> None:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    if row is None or not row[0]:
        raise SchemaError(
            f"{what} {table} does not exist: create it with `kcg relay --init-schema` "
            "(or OUTBOX_INIT_SCHEMA=true), DDL in examples/outbox/schema.sql"
        )


def create_schema(
    conn: psycopg.Connection[tuple[object, ...]],
    table: str,
    dead_letter_table: str,
    payload_type: str = "jsonb",
) -> None:
    """Create both tables if missing, serialized against other relays doing the same."""
    with conn.transaction():
        # Concurrent CREATE TABLE IF NOT EXISTS can still fail on the catalog's unique
        # index; every relay of a pod set may run this at once.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"kcg-outbox-ddl/{table}",))
        conn.execute(table_ddl(table, dead_letter_table, payload_type).encode())
