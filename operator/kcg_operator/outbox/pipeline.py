"""Publishing a round of rows to Kafka: pipelined, idempotent, outcome per row.

Rows go to librdkafka's queue as they are fetched (`produce` never waits for the broker);
its I/O thread batches them per partition while the relay fetches the next rows. The
round then waits until every row has an outcome, and only acknowledged rows are marked
done. The producer is idempotent with acks=all and an infinite message timeout, so within
a partition Kafka receives the rows in produce order without gaps or duplicates from
retries, and a broker outage only delays acknowledgements.

Outcomes:
  acked          published; the row is deleted.
  poison         Kafka refuses this message for good (too large, invalid): the row goes to
                 the dead-letter table with the error. Later rows of the same key are still
                 published, so that key's consumers see a gap (the dead-letter row keeps
                 its seq, key and error for re-driving).
  missing topic  the topic does not exist (auto-creation is usually off): the row stays
                 pending and so does every row routed to that topic (it is "held"), so
                 that topic's order is kept; other topics flow on. Re-checked every few
                 seconds.
  retry          anything else (e.g. a fatal producer error): the row stays pending and is
                 published again by the next round.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Producer

from kcg_operator.outbox.claim import DeadLetter, Row
from kcg_operator.outbox.routing import TopicRouter

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    POISON = "poison"
    MISSING_TOPIC = "missing_topic"
    RETRY = "retry"


# The message itself is refused; sending it again cannot help.
POISON_CODES: Final = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError._INVALID_ARG,
    }
)
MISSING_TOPIC_CODES: Final = frozenset(
    {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION}
)
TOPIC_RECHECK_SECONDS: Final = 5.0


def classify(code: int, fatal: bool = False) -> Verdict:
    """What to do with a row whose message failed with librdkafka error `code`."""
    if fatal:
        return Verdict.RETRY
    if code in POISON_CODES:
        return Verdict.POISON
    if code in MISSING_TOPIC_CODES:
        return Verdict.MISSING_TOPIC
    return Verdict.RETRY


def describe_error(err: KafkaError) -> str:
    return f"{err.name()}: {err.str()}"


@dataclass
class RoundOutcome:
    acked: list[int] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    retry: list[tuple[int, str]] = field(default_factory=list)
    held: list[int] = field(default_factory=list)

    def unsettled(self) -> set[int]:
        """Seqs that failed one way or another (not acknowledged)."""
        return ({d.seq for d in self.dead} | {seq for seq, _ in self.retry} | set(self.held))


_OK: Final = "ok"
_HELD: Final = "held"


class Publisher:
    """A Producer plus the bookkeeping of one round's rows.

    Only failures are reported back (delivery.report.only.error): a Python callback per
    acknowledged message cost more than everything else the relay does per row. A round's
    rows are acknowledged when the producer's queue is empty (every message has reached a
    final state) and no failure was reported for them.

    A failure report carries the message's topic, key and value (not its headers), which
    name its row; rows of the round that share all three all count as failed, and a report
    that names no row of the round fails the whole round. Either way a row can only be kept
    pending by mistake, never dropped.

    The broker refuses a whole batch (all messages of a partition sent together) when one
    message in it is too large or invalid, so a refusal reported by the broker does not
    say which row is at fault. Those rows are kept pending as suspects and, in the next
    rounds, each is sent alone (what was queued before it is flushed first, so per-key
    order holds): a suspect refused alone is dead-lettered, the others are published.
    """

    def __init__(
        self,
        kafka_config: dict[str, str],
        router: TopicRouter,
        on_kafka_state: Callable[[bool, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = kafka_config
        self.router = router
        self._on_kafka_state = on_kafka_state
        self._clock = clock
        # Topics the broker confirmed, and missing ones with when they were checked: rows
        # routed to a missing topic are held until it is checked again.
        self._known: set[str] = set()
        self._missing: dict[str, float] = {}
        self.fatal: str | None = None
        self.producer = self._new_producer()
        self.outcome = RoundOutcome()
        self._sent: list[Row] = []
        self._by_message: dict[tuple[str, str, bytes | None], list[int]] | None = None
        self._unattributed: str | None = None
        # Rows in a batch the broker refused, to be sent alone; and those sent alone now.
        self.suspects: set[int] = set()
        self._alone: set[int] = set()
        # This round's verdict per topic: _OK, _HELD or the reason its name is invalid.
        self._route: dict[str, str] = {}
        # Set by the relay: False when it must stop waiting (stopping, fatal error).
        self.keep_waiting: Callable[[], bool] = lambda: True
        self._abandoned = False

    def _new_producer(self) -> Producer:
        conf: dict[str, Any] = dict(self._config)
        conf["error_cb"] = self._on_error
        conf["on_delivery"] = self._on_delivery
        conf["delivery.report.only.error"] = True
        return Producer(conf)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = describe_error(err)
            log.error("kafka producer fatal error: %s", self.fatal)
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._on_kafka_state(False, describe_error(err))
        elif err.code() == KafkaError._TRANSPORT:
            # Repeats every reconnect attempt while a broker is away; the state change is
            # logged once (all brokers down / reachable again).
            log.debug("kafka: %s", describe_error(err))
        else:
            log.warning("kafka: %s", describe_error(err))

    def recreate(self) -> None:
        """After a fatal error (e.g. the idempotent producer's epoch cannot be kept)."""
        self.purge()
        self.fatal = None
        self.producer = self._new_producer()

    def purge(self) -> None:
        """Drop what has not been sent: its rows stay pending (the DB session is gone, or
        we are stopping), so sending them now would only add duplicates."""
        try:
            self.producer.purge(in_queue=True, in_flight=False, blocking=False)
            self.producer.poll(0)
        except (KafkaException, RuntimeError) as exc:
            log.debug("purge: %s", exc)

    # ------------------------------------------------------------------ topics

    def held_topics(self) -> set[str]:
        now = self._clock()
        return {t for t, at in self._missing.items() if now - at < TOPIC_RECHECK_SECONDS}

    def _topic_exists(self, topic: str) -> bool:
        """True when the broker has it, or cannot be asked (unreachable: produce anyway,
        librdkafka queues until it is back); False only when the broker says it is missing."""
        try:
            metadata = self.producer.list_topics(topic, timeout=5)
        except KafkaException as exc:
            # Assume it exists rather than ask again for every row; if it does not, its
            # messages fail with UNKNOWN_TOPIC and the topic is held then.
            log.debug("metadata for %s: %s", topic, exc)
            self._known.add(topic)
            return True
        found = metadata.topics.get(topic)
        exists = found is not None and (
            found.error is None or found.error.code() not in MISSING_TOPIC_CODES
        )
        if exists:
            self._known.add(topic)
            self._missing.pop(topic, None)
        else:
            if topic not in self._missing:
                log.warning("topic %s does not exist: its rows wait until it is created", topic)
            self._missing[topic] = self._clock()
        return exists

    def _route_of(self, topic: str) -> str:
        """The round's verdict for `topic` (first row of the topic in the round only)."""
        verdict: str
        if topic in self.held_topics():
            verdict = _HELD
        else:
            problem = self.router.problem(topic)
            if problem is not None:
                verdict = f"invalid topic: {problem}"
            elif topic not in self._known and not self._topic_exists(topic):
                verdict = _HELD
            else:
                verdict = _OK
        self._route[topic] = verdict
        return verdict

    # ------------------------------------------------------------------ a round

    def begin_round(self) -> None:
        self.outcome = RoundOutcome()
        self._sent = []
        self._by_message = None
        self._unattributed = None
        self._alone = set()
        self._route = {}
        self._abandoned = False

    def publish(self, rows: Iterable[Row]) -> None:
        """Queue `rows` for sending, in order. Never waits for the broker.

        The hot path of the relay: per row one dict lookup, one produce() and one append.
        """
        producer = self.producer
        produce = producer.produce
        route = self._route
        sent = self._sent
        outcome = self.outcome
        default_route = self.router.is_default
        topic_of = self.router.topic
        suspects = self.suspects
        for row in rows:
            seq, event_id, aggregatetype, aggregateid, type_, payload = row
            if self._abandoned:
                return
            topic = aggregatetype if default_route else topic_of(aggregatetype, aggregateid,
                                                                 type_)
            verdict = route.get(topic) or self._route_of(topic)
            if verdict is not _OK:
                if verdict is _HELD:
                    outcome.held.append(seq)
                else:
                    outcome.dead.append(DeadLetter(seq, topic, verdict))
                continue
            alone = seq in suspects
            if alone and not self._drain():
                return
            while True:
                try:
                    produce(topic, payload, aggregateid,
                            headers={"id": event_id, "type": type_})
                    sent.append(row)
                    break
                except BufferError:
                    # librdkafka's queue is full: serve delivery reports to make room.
                    producer.poll(0.05)
                except KafkaException as exc:
                    err: KafkaError = exc.args[0]
                    self._settle_failed([seq], topic, err, alone=True)
                    break
            if alone:
                self._alone.add(seq)
                if not self._drain():
                    return
        producer.poll(0)

    def _drain(self) -> bool:
        """Wait until everything queued has an outcome (to send a suspect alone)."""
        while self.producer.flush(0.05) > 0:
            if not self.keep_waiting():
                self._abandoned = True
                return False
        return True

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        """A failure report (delivery.report.only.error): find the row(s) it names."""
        if err is None:
            return
        if self._by_message is None:
            index: dict[tuple[str, str, bytes | None], list[int]] = {}
            for seq, _id, aggregatetype, aggregateid, type_, payload in self._sent:
                topic = self.router.topic(aggregatetype, aggregateid, type_)
                index.setdefault((topic, aggregateid, payload), []).append(seq)
            self._by_message = index
        key = msg.key()
        seqs = self._by_message.get(
            (msg.topic(), key.decode() if key else "", msg.value())
        )
        if seqs:
            self._settle_failed(seqs, msg.topic(), err, alone=False)
        else:
            # Not a row of this round (a report left over from an abandoned round), or one
            # that could not be matched: no row of this round may count as acknowledged.
            self._unattributed = describe_error(err)

    def _settle_failed(self, seqs: list[int], topic: str | None, err: KafkaError,
                       alone: bool) -> None:
        """`alone`: the error is about these rows for sure (refused by produce() itself, or
        sent alone); otherwise a refusal may be about another message of their batch."""
        verdict = classify(err.code(), err.fatal())
        outcome = self.outcome
        if verdict is Verdict.POISON:
            sure = alone or all(seq in self._alone for seq in seqs)
            if sure:
                outcome.dead.extend(DeadLetter(seq, topic, describe_error(err)) for seq in seqs)
                self.suspects.difference_update(seqs)
            else:
                self.suspects.update(seqs)
                outcome.retry.extend((seq, f"suspect, to be sent alone: {describe_error(err)}")
                                     for seq in seqs)
        elif verdict is Verdict.MISSING_TOPIC:
            if topic is not None:
                self._known.discard(topic)
                self._missing[topic] = self._clock()
            outcome.held.extend(seqs)
        else:
            outcome.retry.extend((seq, describe_error(err)) for seq in seqs)

    @property
    def sent(self) -> int:
        return len(self._sent)

    def wait(self, keep_waiting: Callable[[], bool]) -> bool:
        """Serve reports until every message has reached a final state, then settle the
        round: rows without a failure report are acknowledged. False if `keep_waiting`
        gave up first (stopping, or a fatal error): then no row counts as acknowledged,
        since without success reports it cannot be told which were."""
        producer = self.producer
        if self._abandoned:
            return False
        # flush, not poll: it sends what lingers (linger.ms) right away, since nothing
        # more is coming in this round.
        while producer.flush(0.05) > 0:
            if not keep_waiting():
                return False
        if self._unattributed is not None:
            log.warning("a failure report matched no row of the round (%s): the whole "
                        "round stays pending", self._unattributed)
            self.outcome.retry.extend((row[0], self._unattributed) for row in self._sent)
            return True
        self.suspects.difference_update(self._alone)
        failed = self.outcome.unsettled()
        if failed:
            self.outcome.acked = [row[0] for row in self._sent if row[0] not in failed]
        else:
            self.outcome.acked = [row[0] for row in self._sent]
        if self.outcome.acked:
            self._on_kafka_state(True, "")
        return True

    def check_connection(self, timeout: float = 2.0) -> bool:
        """A metadata round trip: is any broker reachable?"""
        try:
            self.producer.list_topics(timeout=timeout)
        except KafkaException as exc:
            self._on_kafka_state(False, str(exc))
            return False
        self._on_kafka_state(True, "")
        return True

    def close(self, timeout: float) -> None:
        self.producer.flush(timeout)
