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
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import psycopg

from kcg_operator.outbox.config import RelayConfig
from kcg_operator.outbox.floor import ScanFloor
from kcg_operator.outbox.schema import TableInfo, create_schema, describe_table, require_table
from kcg_operator.outbox.shards import ALL_SHARDS, SHARD_SQL, LockKeys, lock_keys

log = logging.getLogger(__name__)

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
    # Keepalives only probe an idle connection: a reply lost with the relay's network (a
    # pod cut off) is retransmitted for ~15 minutes instead, the shards held meanwhile.
    "SET tcp_user_timeout = 25000",
)


def session_name(relay_id: str) -> str:
    """The relay's application_name in PostgreSQL (pg_stat_activity), at most 63 bytes."""
    return f"kcg-relay {relay_id}"[:63]


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


# The identity sequence behind `seq`, if the floor (floor.py) can rest on it: CACHE 1,
# ascending, and readable by the relay.
SEQUENCE_SQL: Final = (
    "SELECT s.seqrelid::regclass::text, s.seqcache, s.seqincrement, "
    "has_sequence_privilege(s.seqrelid, 'SELECT') OR has_sequence_privilege(s.seqrelid, 'USAGE') "
    "FROM pg_sequence s WHERE s.seqrelid = pg_get_serial_sequence(%s, 'seq')::regclass"
)
# A round's snapshot (fetch_round explains why one, and why REPEATABLE READ).
ROUND_BEGIN: Final = b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
PROBE_SECONDS: Final = 0.1
LAST_VALUE_SQL: Final = "SELECT pg_sequence_last_value(%s::regclass)"
# Transactions that may be inserting: a granted lock that allows writing. `IS DISTINCT
# FROM`: a prepared transaction's locks have no pid.
WRITERS_SQL: Final = (
    "SELECT coalesce(array_agg(virtualtransaction), '{}') FROM pg_locks "
    "WHERE locktype = 'relation' AND granted AND relation = %s::regclass "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', "
    "'AccessExclusiveLock') AND pid IS DISTINCT FROM pg_backend_pid()"
)


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
        self.floor = ScanFloor()
        self.sequence: str | None = None  # None: the floor is off, rounds scan from 0
        self.sequence_table = ""
        self._clock = time.monotonic
        self._last_probe = float("-inf")

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
            application_name=session_name(self.config.relay_id),
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
            tcp_user_timeout=25000,
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
            self.sequence = self._floor_sequence(conn, self.table.qualified_name)
            self.sequence_table = self.table.qualified_name
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def _floor_sequence(self, conn: psycopg.Connection[tuple[object, ...]],
                        table: str) -> str | None:
        """The sequence the floor can rest on, or None (logged: rounds then scan from 0)."""
        row = conn.execute(SEQUENCE_SQL, (table,)).fetchone()
        problem = None
        if row is None:
            problem = "seq is not filled by an identity or serial sequence"
        elif int(str(row[1])) != 1 or int(str(row[2])) <= 0:
            problem = f"sequence {row[0]} caches values or descends (needs CACHE 1, ascending)"
        elif not row[3]:
            problem = (f"the relay may not read sequence {row[0]}: "
                       f"GRANT SELECT ON SEQUENCE {row[0]} TO the relay's role")
        if problem is not None:
            log.warning("every round scans %s from its first row (%s); deleted rows that "
                        "autovacuum has not removed yet slow each round down", table, problem)
            return None
        return str(row[0]) if row is not None else None

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

    def fetch_round(
        self,
        owned: frozenset[int],
        held_topics: Collection[str],
        fetch_size: int,
        batch_size: int,
        keep_fetching: Callable[[], bool],
    ) -> Iterator[list[Row]]:
        """The round's rows, lowest pending seq first, in slices of `fetch_size`, up to
        `batch_size`; rows routed to `held_topics` (missing topics) are left for later.

        All slices come from ONE snapshot (a REPEATABLE READ, read-only transaction that
        ends before the round waits for Kafka). With a fresh snapshot per slice, a row that
        commits between two slices with a seq below the first slice's end would be left
        for the next round while a later event of the same key, committed after it, is
        published in this one: that key's order would break. In one snapshot the rows of a
        key that are visible are a prefix of that key's events, and so is what a round
        publishes.

        Pipelined: the SELECT of the next slice goes out before this slice is handed to
        the caller, so PostgreSQL reads it while the caller queues this one in the producer.
        """
        assert self.table is not None
        conn = self._c()
        self.floor.track(owned)
        ripe = self._probe(conn)
        start, full_scan = self.floor.start(self._clock()) if self.sequence else (0, True)
        filter_shards = owned != ALL_SHARDS
        topic_sql = self._topic_sql if held_topics else None
        query = fetch_sql(self.table, filter_shards, topic_sql)
        # The parameters between `after` and `limit`, in the order of the %s in the query.
        middle: list[object] = []
        if filter_shards:
            middle.append(sorted(owned))
        if topic_sql is not None:
            middle.extend(self._topic_literals)
            middle.append(list(held_topics))
        conn.execute(ROUND_BEGIN)
        try:
            # Binary results: bytea and integers arrive without text parsing.
            with conn.pipeline(), conn.cursor(binary=True) as cur:
                limit = min(fetch_size, batch_size)
                cur.execute(query, [start - 1, *middle, limit])
                fetched = 0
                while True:
                    rows: list[Row] = cur.fetchall()  # type: ignore[assignment]
                    if fetched == 0:
                        self._after_scan(ripe, rows[0][SEQ] if rows else None,
                                         complete=topic_sql is None, full_scan=full_scan)
                    fetched += len(rows)
                    more = len(rows) == limit and fetched < batch_size and keep_fetching()
                    if more:
                        limit = min(fetch_size, batch_size - fetched)
                        cur.execute(query, [rows[-1][SEQ], *middle, limit])
                    if rows:
                        yield rows
                    if not more:
                        break
        finally:
            conn.execute(b"COMMIT")

    def _probe(self, conn: psycopg.Connection[tuple[object, ...]]) -> int | None:
        """V, then W (floor.py), before the round's snapshot; the V of a ripe probe.

        At most every PROBE_SECONDS: the floor only has to keep up with the deletes, and a
        quiet relay's rounds should stay one cheap SELECT."""
        if self.sequence is None:
            return None
        now = self._clock()
        if now - self._last_probe < PROBE_SECONDS:
            return None
        self._last_probe = now
        with conn.pipeline():
            # In this order: a transaction that took a seq <= V holds its lock when W is read.
            value = conn.execute(LAST_VALUE_SQL, (self.sequence,))
            writers = conn.execute(WRITERS_SQL, (self.sequence_table,))
        last = value.fetchone()
        found = writers.fetchone()
        names = found[0] if found is not None and isinstance(found[0], list) else []
        return self.floor.before_snapshot(
            None if last is None or last[0] is None else int(str(last[0])),
            frozenset(str(name) for name in names),
        )

    def _after_scan(self, ripe: int | None, first_seq: int | None, complete: bool,
                    full_scan: bool) -> None:
        if self.sequence is None:
            return
        if full_scan and complete and first_seq is not None and first_seq < self.floor.floor:
            # Cannot happen if floor.py's premises hold; if they do not, say so and start over.
            log.error("pending row seq %d lies below the scan floor %d; resetting the floor",
                      first_seq, self.floor.floor)
            self.floor.reset()
            return
        self.floor.after_scan(ripe, first_seq, complete)

    def finish_round(self, acked: Sequence[int], dead: Sequence[DeadLetter]) -> None:
        """Mark published rows done and move refused ones to the dead-letter table, atomically."""
        if not acked and not dead:
            return
        assert self.table is not None
        conn = self._c()
        delete = f"DELETE FROM {self.table.qualified_name} WHERE seq = ANY(%s::int8[])".encode()
        # The seqs as one text array literal: building it with str.join is ten times
        # cheaper than psycopg adapting a list of ints element by element.
        seqs = "{" + ",".join(map(str, acked)) + "}"
        if not dead:
            # One statement is atomic by itself: one round trip instead of three.
            conn.execute(delete, (seqs,))
            return
        with conn.transaction():
            if acked:
                conn.execute(delete, (seqs,))
            for letter in dead:
                # Moved inside the database: the payload is not sent back and forth, and the
                # dead-letter table has the outbox's columns first (CREATE TABLE ... LIKE).
                conn.execute(
                    f"WITH moved AS (DELETE FROM {self.table.qualified_name} WHERE seq = %s "
                    f"RETURNING *) INSERT INTO {self.config.dead_letter_table} "
                    "SELECT moved.*, %s, %s, now() FROM moved".encode(),
                    (letter.seq, letter.topic, letter.error),
                )

    def oldest_pending_age(self, timeout_ms: int | None = None) -> float | None:
        """Seconds since the oldest pending row was written (None: table empty).

        `timeout_ms`: cancel the read after that long (psycopg.errors.QueryCanceled), in
        place of the session's statement_timeout, for callers that must not wait on a lock
        (the relay while a round waits for Kafka). Needs an idle session (autocommit, no
        open transaction): the setting is restored when the read ends, however it ends."""
        assert self.table is not None
        if not self.table.has_created_at:
            return None
        conn = self._c()
        query = (f"SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 "
                 f"FROM {self.table.qualified_name} ORDER BY seq LIMIT 1").encode()
        if timeout_ms is None:
            row = conn.execute(query).fetchone()
        else:
            conn.execute(f"SET statement_timeout = {int(timeout_ms)}".encode())
            try:
                row = conn.execute(query).fetchone()
            finally:
                conn.execute(SESSION_SETTINGS[0].encode())
        return None if row is None else max(0.0, float(str(row[0])))

    def wait_for_notify(self, timeout: float) -> bool:
        """Sleep up to `timeout`; True when a NOTIFY on the configured channel ended it.

        Notifications that arrived since the last discard_notifies() (a row committed after
        the last poll) end it at once: none is lost between a poll and this wait."""
        conn = self._c()
        if not self.config.notify_channel:
            return False
        woke = False
        for _ in conn.notifies(timeout=timeout, stop_after=1):
            woke = True
        return woke

    def discard_notifies(self) -> None:
        """Drop the notifications buffered so far; called before each poll, whose SELECT
        sees every row they announced. A busy relay never waits, so without this psycopg's
        buffer would keep one entry per writer commit for as long as the traffic lasts."""
        if self.config.notify_channel:
            for _ in self._c().notifies(timeout=0):
                pass
