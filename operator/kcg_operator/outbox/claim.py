"""Reading pending rows and marking them done, against PostgreSQL.

One connection per relay, in autocommit mode: the session holds the relay's advisory
locks (membership and shards, see shards.py), so if it drops, the relay owns nothing any
more and must start over. No transaction stays open while messages are in flight.

How rows are chosen, and why nothing is skipped: a row is pending while it exists; there
is no "last published id" anywhere. Each round starts from the lowest pending `seq` of
the relay's shards; within the round, later SELECTs continue after the last row fetched
(that is only to pipeline: a row of a transaction that commits late, with a lower `seq`,
is simply found by the next round). Rows are deleted in one transaction after the broker
acknowledged them, together with the move of refused rows to the dead-letter table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

import psycopg

from kcg_operator.outbox.config import RelayConfig
from kcg_operator.outbox.schema import TableInfo, create_schema, describe_table, require_table
from kcg_operator.outbox.shards import ALL_SHARDS, SHARD_SQL, LockKeys, lock_keys

# (seq, event id, aggregatetype, aggregateid, type, payload bytes or None)
Row = tuple[int, str, str, str, str, bytes | None]
SEQ: Final = 0

SESSION_SETTINGS: Final = (
    # A hung statement must not hang the relay (liveness is 60 s).
    "SET statement_timeout = '30s'",
    "SET idle_in_transaction_session_timeout = '60s'",
    # The server notices a vanished relay within ~25 s and frees its shards.
    "SET tcp_keepalives_idle = 10",
    "SET tcp_keepalives_interval = 5",
    "SET tcp_keepalives_count = 3",
)


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    topic: str | None
    error: str


@dataclass(frozen=True)
class LockView:
    """Advisory locks of this table's relays, from pg_locks."""

    me: int
    members: frozenset[int]
    holders: dict[int, int]  # shard -> member (backend pid)


def fetch_sql(table: TableInfo, filter_shards: bool, topic_sql: str | None) -> bytes:
    """The SELECT of a batch. Parameters, in order: after, [shards], [topic literals,
    held topics], limit."""
    where = ["seq > %s"]
    if filter_shards:
        where.append(f"{SHARD_SQL} = ANY(%s)")
    if topic_sql is not None:
        where.append(f"{topic_sql} <> ALL(%s)")
    query = (
        f"SELECT seq, id::text, aggregatetype, aggregateid, type, {table.payload_sql} "
        f"FROM {table.qualified_name} WHERE {' AND '.join(where)} ORDER BY seq LIMIT %s"
    )
    return query.encode()


class OutboxStore:
    """The relay's session with PostgreSQL."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.conn: psycopg.Connection[tuple[object, ...]] | None = None
        self.table: TableInfo | None = None
        self.keys: LockKeys | None = None
        self.backend_pid = 0
        self._topic_sql, literals = config.router.sql_expression()
        self._topic_literals: tuple[str, ...] = literals

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def connect(self) -> None:
        """Open the session, check the table, register as a member."""
        self.close()
        conn = psycopg.connect(
            self.config.dsn,
            autocommit=True,
            connect_timeout=5,
            application_name=f"kcg-relay {self.config.relay_id}"[:63],
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        try:
            for statement in SESSION_SETTINGS:
                conn.execute(statement.encode())
            if self.config.init_schema:
                create_schema(conn, self.config.table, self.config.dead_letter_table)
            self.table = describe_table(conn, self.config.table)
            require_table(conn, self.config.dead_letter_table, "dead-letter table")
            self.keys = lock_keys(self.table.qualified_name)
            row = conn.execute(
                "SELECT pg_backend_pid(), pg_advisory_lock(%s, pg_backend_pid())",
                (self.keys.member,),
            ).fetchone()
            assert row is not None
            self.backend_pid = int(str(row[0]))
            if self.config.notify_channel:
                conn.execute(f"LISTEN {self.config.notify_channel}".encode())
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None

    def _c(self) -> psycopg.Connection[tuple[object, ...]]:
        if self.conn is None:
            raise psycopg.OperationalError("not connected")
        return self.conn

    # ------------------------------------------------------------------ shards

    def lock_view(self) -> LockView:
        assert self.keys is not None
        rows = self._c().execute(
            "SELECT classid::bigint, objid::bigint, pid FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid IN (%s::bigint::oid, %s::bigint::oid)",
            (self.keys.member, self.keys.shard),
        ).fetchall()
        members = frozenset(int(str(objid)) for cls, objid, _ in rows if cls == self.keys.member)
        holders = {int(str(objid)): int(str(pid)) for cls, objid, pid in rows
                   if cls == self.keys.shard}
        return LockView(me=self.backend_pid, members=members | {self.backend_pid},
                        holders=holders)

    def try_lock_shards(self, shards: Sequence[int]) -> frozenset[int]:
        assert self.keys is not None
        if not shards:
            return frozenset()
        rows = self._c().execute(
            "SELECT s FROM unnest(%s::int[]) AS s WHERE pg_try_advisory_lock(%s, s)",
            (list(shards), self.keys.shard),
        ).fetchall()
        return frozenset(int(str(r[0])) for r in rows)

    def unlock_shards(self, shards: Sequence[int]) -> None:
        assert self.keys is not None
        if shards:
            self._c().execute(
                "SELECT pg_advisory_unlock(%s, s) FROM unnest(%s::int[]) AS s",
                (self.keys.shard, list(shards)),
            )

    # ------------------------------------------------------------------ rows

    def fetch(
        self, owned: frozenset[int], after: int, limit: int, held_topics: Collection[str]
    ) -> list[Row]:
        """Pending rows of `owned` shards with seq > after, in seq order; rows routed to
        `held_topics` (missing topics) are left for later."""
        assert self.table is not None
        filter_shards = owned != ALL_SHARDS
        topic_sql = self._topic_sql if held_topics else None
        query = fetch_sql(self.table, filter_shards, topic_sql)
        # In the order of the %s in the query.
        params: list[object] = [after]
        if filter_shards:
            params.append(sorted(owned))
        if topic_sql is not None:
            params.extend(self._topic_literals)
            params.append(list(held_topics))
        params.append(limit)
        # Binary results: bytea and integers arrive without text parsing.
        with self._c().cursor(binary=True) as cur:
            cur.execute(query, params)
            return cur.fetchall()  # type: ignore[return-value]

    def finish_round(self, acked: Sequence[int], dead: Sequence[DeadLetter]) -> None:
        """Mark published rows done and move refused ones to the dead-letter table, atomically."""
        if not acked and not dead:
            return
        assert self.table is not None
        conn = self._c()
        delete = f"DELETE FROM {self.table.qualified_name} WHERE seq = ANY(%s)".encode()
        if not dead:
            # One statement is atomic by itself: one round trip instead of three.
            conn.execute(delete, (list(acked),))
            return
        with conn.transaction():
            if acked:
                conn.execute(delete, (list(acked),))
            for letter in dead:
                # Moved inside the database: the payload is not sent back and forth, and the
                # dead-letter table has the outbox's columns first (CREATE TABLE ... LIKE).
                conn.execute(
                    f"WITH moved AS (DELETE FROM {self.table.qualified_name} WHERE seq = %s "
                    f"RETURNING *) INSERT INTO {self.config.dead_letter_table} "
                    "SELECT moved.*, %s, %s, now() FROM moved".encode(),
                    (letter.seq, letter.topic, letter.error),
                )

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest pending row was written (None: table empty)."""
        assert self.table is not None
        if not self.table.has_created_at:
            return None
        row = self._c().execute(
            f"SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 "
            f"FROM {self.table.qualified_name} ORDER BY seq LIMIT 1".encode()
        ).fetchone()
        return None if row is None else max(0.0, float(str(row[0])))

    def wait_for_notify(self, timeout: float) -> bool:
        """Sleep up to `timeout`, waking early on a NOTIFY when a channel is configured."""
        conn = self._c()
        if not self.config.notify_channel:
            return False
        woke = False
        for _ in conn.notifies(timeout=timeout, stop_after=1):
            woke = True
        return woke

