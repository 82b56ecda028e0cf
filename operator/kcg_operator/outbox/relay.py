"""`kcg relay`: move committed outbox rows to Kafka, in order, without losing any.

    kcg relay                   relay until SIGTERM (configured by env, see config.py)
    kcg relay --init-schema     create the outbox and dead-letter tables, then exit
    kcg relay --print-schema    print their DDL (examples/outbox/schema.sql), then exit

The loop, one round at a time:

  1. every OUTBOX_REBALANCE_INTERVAL_MS: count the live relays, take or give up shards
     (shards.py) -- only here, between rounds, when nothing is in flight;
  2. fetch the lowest pending rows of the owned shards, from one snapshot, in slices
     whose SELECTs are pipelined with queueing the previous slice in the producer, up to
     OUTBOX_BATCH_SIZE rows or OUTBOX_MAX_ROUND_MS (claim.py; where the scan starts:
     floor.py);
  3. flush: wait until every row has an outcome (pipeline.py); meanwhile, on each
     rebalance tick, re-read the oldest pending row's age (a broker outage is exactly
     when that gauge must keep growing);
  4. one statement (a transaction when rows are dead-lettered) deletes the acknowledged
     rows and moves refused ones to the dead-letter table;
  5. no row found: sleep 1 ms, doubling up to OUTBOX_POLL_INTERVAL_MS (and to a tenth of
     the time since the last row, so a short lull in traffic costs little latency); with
     OUTBOX_NOTIFY_CHANNEL, wait for a NOTIFY instead, OUTBOX_POLL_INTERVAL_MS at most.
     Sleeps end at the next rebalance tick, so a long poll interval never delays taking
     over a dead relay's shards.

Crash safety: a row is deleted only after its acknowledgement, so a crash at any point
leaves every unacknowledged row pending. What a crash can duplicate is what was
acknowledged but not yet deleted: at most the round in flight (OUTBOX_BATCH_SIZE rows).
Consumers drop those by the `id` header (the event id).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Final, Protocol

import psycopg
from confluent_kafka import KafkaException

from kcg_operator.outbox.claim import DeadLetter, OutboxStore
from kcg_operator.outbox.config import (
    ConfigError,
    RelayConfig,
    database_dsn,
    load_config,
    table_names,
)
from kcg_operator.outbox.health import Health, readiness, serve
from kcg_operator.outbox.metrics import RelayMetrics
from kcg_operator.outbox.pipeline import Publisher
from kcg_operator.outbox.schema import (
    PAYLOAD_TYPES,
    SchemaError,
    create_schema,
    notify_trigger_ddl,
    table_ddl,
)
from kcg_operator.outbox.shards import SHARDS, plan_rebalance

log = logging.getLogger("kcg.relay")

MIN_POLL_SECONDS: Final = 0.001
IDLE_FRACTION: Final = 0.1
RECONNECT_MIN_SECONDS: Final = 0.2
RECONNECT_MAX_SECONDS: Final = 5.0
KAFKA_RECHECK_SECONDS: Final = 2.0
FATAL_GIVE_UP_SECONDS: Final = 10.0
AGE_QUERY_TIMEOUT_MS: Final = 1000


def next_poll_delay(previous: float, progressed: bool, ceiling: float, idle_for: float) -> float:
    """Adaptive polling: no sleep while rows come; after an empty poll sleep 1 ms, then
    double, but never longer than a tenth of the time since the last row, nor `ceiling`.

    So a pause in the writers' traffic costs the next event at most ~10% of that pause in
    extra latency (a 50 ms lull: <= 5 ms), and an idle relay settles at 1/ceiling cheap
    index probes a second; a busy relay never sleeps.
    """
    if progressed:
        return 0.0
    return min(ceiling, max(MIN_POLL_SECONDS, previous * 2),
               max(MIN_POLL_SECONDS, idle_for * IDLE_FRACTION))


def next_backoff(previous: float) -> float:
    return min(RECONNECT_MAX_SECONDS, max(RECONNECT_MIN_SECONDS, previous * 2))


class Relay:
    def __init__(
        self,
        config: RelayConfig,
        metrics: RelayMetrics | None = None,
        health: Health | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else RelayMetrics()
        self.health = health if health is not None else Health()
        self.clock = clock
        self.store = OutboxStore(config)
        self.publisher: Publisher | None = None
        self.owned: frozenset[int] = frozenset()
        self._stop = threading.Event()
        self._stop_deadline = float("inf")
        self._next_rebalance = 0.0
        self._next_age_report = 0.0
        self._next_kafka_check = 0.0
        self._poll_delay = 0.0
        self._poll_at = 0.0
        self._published = 0
        self._round_started = 0.0
        self._sessions = 0
        self._last_progress = 0.0

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop_deadline = self.clock() + self.config.shutdown_grace_seconds
            self._stop.set()
            self.health.update(stopping=True)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _kafka_state(self, ok: bool, error: str) -> None:
        snapshot = self.health.snapshot()
        if snapshot.kafka != ok or (error and snapshot.kafka_error != error):
            if ok:
                log.info("kafka reachable")
            else:
                log.warning("kafka unreachable: %s", error)
                if snapshot.kafka:
                    self.metrics.kafka_outages.inc()
            self.health.update(kafka=ok, kafka_error=error)

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        try:
            self.publisher = Publisher(dict(self.config.kafka), self.config.router,
                                       self._kafka_state)
        except KafkaException as exc:
            log.error("kafka producer configuration refused: %s", exc)
            return 2
        self.publisher.keep_waiting = self._keep_waiting
        backoff = 0.0
        while not self.stopping:
            self.health.beat()
            try:
                if not self.store.connected:
                    self._connect()
                self._tick()
                backoff = 0.0
            except (psycopg.Error, SchemaError) as exc:
                self._lost_database(exc)
                backoff = next_backoff(backoff)
                self._stop.wait(backoff)
        self._shutdown()
        return 0

    def _connect(self) -> None:
        self.store.connect()
        if self._sessions:
            self.metrics.db_reconnects.inc()
        self._sessions += 1
        self.owned = frozenset()
        self._next_rebalance = 0.0
        log.info("connected to PostgreSQL, table %s (relay %s, session %d)",
                 self.config.table, self.config.relay_id, self.store.backend_pid)
        self.health.update(database=True, database_error="")

    def _lost_database(self, exc: BaseException) -> None:
        was_connected = self.health.snapshot().database
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if was_connected or self.health.snapshot().database_error != message:
            log.warning("database: %s (shards released; reconnecting)", message)
        # The session's locks are gone or about to be: whatever is queued would only be
        # duplicated by the relay that takes the shards over.
        self.store.close()
        if self.publisher is not None:
            self.publisher.purge()
        self.owned = frozenset()
        self.metrics.owned_shards.set(0)
        self.health.update(database=False, database_error=message, owned_shards=0)

    def _tick(self) -> None:
        assert self.publisher is not None
        now = self.clock()
        if self.publisher.fatal is not None:
            log.warning("recreating the Kafka producer after: %s", self.publisher.fatal)
            self.publisher.recreate()
        if now >= self._next_rebalance:
            self._rebalance()
            self._report_age()
            self._next_rebalance = now + self.config.rebalance_interval_seconds
        if not self.health.snapshot().kafka and now >= self._next_kafka_check:
            self._next_kafka_check = now + KAFKA_RECHECK_SECONDS
            self.publisher.check_connection()
        if not self.owned:
            # A standby: every shard is owned by other relays.
            self._stop.wait(min(self.config.rebalance_interval_seconds, 0.5))
            return
        if now < self._poll_at:
            # Still between polls: the sleep was cut short only for the rebalance tick.
            self._sleep()
            return
        progressed, full = self._round()
        if progressed:
            self._last_progress = self.clock()
        if full:
            self._poll_delay = 0.0
        elif self.config.notify_channel and not progressed:
            # A NOTIFY wakes the relay when rows commit: after an empty poll it waits for
            # one, and the poll interval is only the safety net (a missing trigger).
            self.metrics.empty_polls.inc()
            self._poll_delay = self.config.poll_interval_seconds
        else:
            if not progressed:
                self.metrics.empty_polls.inc()
            self._poll_delay = next_poll_delay(
                self._poll_delay, progressed, self.config.poll_interval_seconds,
                self.clock() - self._last_progress,
            )
        self._poll_at = self.clock() + self._poll_delay
        if self._poll_delay > 0:
            self._sleep()

    def _sleep(self) -> None:
        """Sleep until the next poll, but wake for the next rebalance tick (so that a long
        poll interval never delays taking over a dead relay's shards), on a NOTIFY when a
        channel is set, and on stop."""
        timeout = min(self._poll_at, self._next_rebalance) - self.clock()
        if timeout <= 0 or self.stopping:
            return
        if self.config.notify_channel:
            if self.store.wait_for_notify(timeout):
                self.metrics.notify_wakeups.inc()
                self._poll_at = 0.0
        else:
            self._stop.wait(timeout)

    def _rebalance(self) -> None:
        view = self.store.lock_view()
        plan = plan_rebalance(self.owned, view.holders, view.me, view.members)
        if plan.release:
            self.store.unlock_shards(plan.release)
            self.owned = self.owned - frozenset(plan.release)
        if plan.acquire:
            self.owned = self.owned | self.store.try_lock_shards(plan.acquire)
        if plan.release or plan.acquire:
            log.info("owning %d of %d shards; %d relay(s) on %s",
                     len(self.owned), SHARDS, len(view.members), self.config.table)
        self.metrics.owned_shards.set(len(self.owned))
        self.metrics.relays.set(len(view.members))
        self.health.update(owned_shards=len(self.owned), relays=len(view.members))

    def _report_age(self, timeout_ms: int | None = None) -> None:
        age = self.store.oldest_pending_age(timeout_ms)
        self.metrics.oldest_pending.set(age or 0.0)
        self.health.update(oldest_pending_seconds=None if age is None else round(age, 3))
        self._next_age_report = self.clock() + self.config.rebalance_interval_seconds

    def _report_age_while_waiting(self) -> None:
        """The age, re-read during a round's wait for acknowledgements.

        Safe there: fetch_round has committed the round's snapshot before the wait, so this
        is one autocommit read on an idle session; it takes no row or advisory lock and
        leaves the round's rows, their order and the shards alone. It is bounded
        (AGE_QUERY_TIMEOUT_MS) so that a table lock cannot hold up the delivery reports,
        and a failure only leaves the gauge as it was: the round must not be abandoned
        (its acknowledged rows would be published again) for a metric. A lost session
        shows up at finish_round, as without this read."""
        try:
            self._report_age(AGE_QUERY_TIMEOUT_MS)
        except psycopg.Error as exc:
            self._next_age_report = self.clock() + self.config.rebalance_interval_seconds
            log.debug("oldest pending age not refreshed while waiting: %s", exc)

    # ------------------------------------------------------------------ one round

    def _keep_waiting(self) -> bool:
        """While the round waits for acknowledgements: stop at the shutdown deadline or when
        a fatal producer error will not deliver them."""
        assert self.publisher is not None
        self.health.beat()
        now = self.clock()
        if self.stopping and now >= self._stop_deadline:
            return False
        if self.publisher.fatal is not None:
            return now - self._round_started < FATAL_GIVE_UP_SECONDS
        return True

    def _waiting_for_acks(self) -> bool:
        """_keep_waiting, for the wait after the fetch (not for the drains inside it, which
        run in the round's open snapshot and pipeline): also keeps the age gauge current."""
        if self.clock() >= self._next_age_report:
            self._report_age_while_waiting()
        return self._keep_waiting()

    def _round(self) -> tuple[bool, bool]:
        """One round; returns (any row settled, the round was cut short by its limits)."""
        publisher = self.publisher
        assert publisher is not None
        config = self.config
        started = self._round_started = self.clock()
        self.store.discard_notifies()
        publisher.begin_round()
        fetched, cut = 0, False

        def keep_fetching() -> bool:
            nonlocal cut
            cut = self.stopping or self.clock() - started >= config.max_round_seconds
            return not cut

        slices = self.store.fetch_round(self.owned, publisher.held_topics(), config.fetch_size,
                                        config.batch_size, keep_fetching)
        for rows in slices:
            publisher.publish(rows)
            fetched += len(rows)
        full = cut or fetched >= config.batch_size
        if fetched == 0:
            return False, False
        finished = publisher.wait(self._waiting_for_acks)
        outcome = publisher.outcome
        self.store.finish_round(outcome.acked, outcome.dead)
        if not finished:
            publisher.purge()
        self._account(outcome.acked, outcome.dead, outcome.retry, outcome.held,
                      self.clock() - started, fetched)
        progressed = bool(outcome.acked or outcome.dead)
        return progressed, full and progressed

    def _account(self, acked: Sequence[int], dead: Sequence[DeadLetter],
                 retry: Sequence[tuple[int, str]], held: Sequence[int], seconds: float,
                 fetched: int) -> None:
        m = self.metrics
        m.published.inc(len(acked))
        m.batch_seconds.observe(seconds)
        m.batch_events.observe(fetched)
        if dead:
            m.dead_lettered.inc(len(dead))
            for letter in dead:
                log.warning("dead-lettered: %s", letter)
        if retry:
            m.failed.labels("error").inc(len(retry))
            log.warning("%d row(s) failed and stay pending, e.g. seq %d: %s",
                        len(retry), retry[0][0], retry[0][1])
        if held:
            m.failed.labels("missing_topic").inc(len(held))
        self._published += len(acked)
        self.health.update(published=self._published)

    def _shutdown(self) -> None:
        log.info("stopping: %d event(s) published by this relay", self._published)
        self.store.close()
        if self.publisher is not None:
            self.publisher.purge()


# ---------------------------------------------------------------------- command line


class Stoppable(Protocol):
    def stop(self) -> None: ...


def stop_on_signal(relay: Stoppable) -> Callable[[int, FrameType | None], None]:
    """The SIGTERM/SIGINT handler: stops the relay from another thread. Python runs a
    handler in the main thread between two bytecodes, possibly while that thread holds the
    lock of the very Event the relay sleeps on (inside Event.wait); stopping from the
    handler itself (Event.set takes that lock) then deadlocked the relay for good (seen in
    CI: a SIGTERMed relay still running ten minutes later)."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the round in flight", signal.Signals(signum).name)
        threading.Thread(target=relay.stop, name="kcg-relay-stop", daemon=True).start()

    return on_signal


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kcg relay",
        description="Move committed rows of a transactional-outbox table to Kafka "
        "(configured by environment variables: see `kcg relay --help-env`).",
    )
    parser.add_argument("--init-schema", action="store_true",
                        help="create the outbox and dead-letter tables if missing, then exit; "
                        "with OUTBOX_NOTIFY_CHANNEL set, also the optional NOTIFY trigger")
    parser.add_argument("--print-schema", action="store_true",
                        help="print the tables' DDL, then exit (no database needed)")
    parser.add_argument("--payload-type", choices=PAYLOAD_TYPES, default="jsonb",
                        help="payload column type for --init-schema/--print-schema")
    parser.add_argument("--help-env", action="store_true",
                        help="describe the environment variables, then exit")
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.help_env:
        from kcg_operator.outbox import config as config_module

        print(config_module.__doc__)
        return 0
    env = os.environ
    try:
        if args.print_schema:
            table, dead_letter = table_names(env)
            print(table_ddl(table, dead_letter, args.payload_type), end="")
            return 0
        if args.init_schema:
            table, dead_letter = table_names(env)
            channel = env.get("OUTBOX_NOTIFY_CHANNEL", "").strip()
            with psycopg.connect(database_dsn(env), autocommit=True, connect_timeout=10) as conn:
                create_schema(conn, table, dead_letter, args.payload_type)
                if channel:
                    conn.execute(notify_trigger_ddl(table, channel).encode())
            print(f"kcg relay: tables {table} and {dead_letter} are in place"
                  + (f", with a NOTIFY {channel} trigger" if channel else ""))
            return 0
        config = load_config(env)
    except ConfigError as exc:
        print(f"kcg relay: configuration: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"kcg relay: database: {exc}", file=sys.stderr)
        return 1
    _configure_logging(config.log_level)
    relay = Relay(config)
    try:
        server = serve(relay.health, relay.metrics, config.metrics_address, config.metrics_port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.metrics_address, config.metrics_port, exc)
        return 2

    on_signal = stop_on_signal(relay)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("relaying %s to %s (topic %s), health on :%d",
             config.table, config.kafka["bootstrap.servers"], config.router.pattern,
             server.server_address[1])
    try:
        return relay.run()
    finally:
        server.shutdown()
        log.debug("ready at exit: %s", readiness(relay.health.snapshot())[0])
