"""Lag collection: what a sweep returns (GroupSnapshot), how one is assembled from the
broker's answers, and the librdkafka road to those answers.

A sweep of one cluster covers every group the operator watches there: topic metadata
(re-read every sweep, so a topic that grows is noticed within one sweep), end offsets of
every partition, each group's description and committed offsets, and the log start of
partitions a group never committed on. Two clients make those requests:

- `kafka_wire.WireLagCollector`, the operator's: the Kafka protocol itself, many groups
  per request (KIP-709), one connection per broker;
- `LagCollector` here: librdkafka's admin client, which asks one group per DescribeGroups
  and per OffsetFetch. The operator uses it (in a child process, `contained`) for the
  settings its own client does not speak; `produced_at` (message timestamps) is always
  librdkafka's consumer.

Both hand their answers to `assemble`, so a snapshot means the same whichever client made
it. This module is the I/O edge: it returns plain snapshots; health and policy are pure
functions elsewhere.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin import OffsetSpec as _OffsetSpec  # type: ignore[attr-defined]

OffsetSpec: Any = _OffsetSpec  # untyped in confluent-kafka's stubs
LATEST = OffsetSpec.latest()
EARLIEST = OffsetSpec.earliest()
# librdkafka's sentinel for "no committed offset".
NO_OFFSET = -1001
#: Most message timestamps read per cluster per sweep; the rest keep their estimate.
MAX_TIMESTAMP_READS = 500
#: Cached message timestamps per cluster before the cache starts over.
TIMESTAMP_CACHE_SIZE = 100_000
#: How long past its request timeout a request is waited for (librdkafka fails a request
#: itself at the timeout; one still open after this counts as timed out).
WEDGE_GRACE_S = 5.0
#: Group requests (DescribeGroups, OffsetFetch) in flight on one cluster at once. With all
#: 10 000 groups' requests sent together, the broker (Kafka 4.1) stopped answering the
#: connection after 3 to 9 sweeps: all 10 000 in flight timed out, every time (three runs),
#: and the client had to be replaced. With at most 1 000 or 2 000 in flight it answered 25
#: sweeps of 10 000 groups out of 25 each time, in 4.7 s and 3.9 s on average.
GROUP_REQUESTS_IN_FLIGHT = 2000

K = TypeVar("K")


@dataclass(frozen=True)
class ClusterKey:
    """Identity of a Kafka cluster connection: bootstrap servers plus a digest of the auth
    settings, so two groups with different credentials never share a client. The digest,
    never the settings, is what shows in logs and metrics."""

    bootstrap_servers: str
    auth_digest: str = ""

    @staticmethod
    def of(bootstrap_servers: str, auth: Mapping[str, str] | None = None) -> ClusterKey:
        digest = ""
        if auth:
            digest = hashlib.sha256(json.dumps(dict(sorted(auth.items()))).encode()).hexdigest()
        return ClusterKey(bootstrap_servers, digest[:12])


@dataclass(frozen=True)
class GroupRequest:
    group_id: str
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    host: str
    assigned: tuple[tuple[str, int], ...]

    @property
    def partitions(self) -> int:
        return len(self.assigned)


@dataclass
class GroupSnapshot:
    """What the broker said about one group in one sweep."""

    group_id: str
    time_s: float
    broker_ok: bool
    error: str | None = None
    # The broker refused the credentials (SASL): the error says why, the fix is the Secret.
    auth_failed: bool = False
    # (topic, partition) -> (end offset, committed offset or None)
    offsets: dict[tuple[str, int], tuple[int, int | None]] = field(default_factory=dict)
    partition_counts: dict[str, int] = field(default_factory=dict)
    missing_topics: tuple[str, ...] = ()
    # Log start offsets of the partitions the group never committed on (where
    # auto.offset.reset=earliest starts a consumer); others are not asked for.
    log_starts: dict[tuple[str, int], int] = field(default_factory=dict)
    state: str | None = None
    group_type: str | None = None  # CLASSIC or CONSUMER
    assignor: str | None = None
    members: tuple[Member, ...] = ()

    @property
    def partitions(self) -> int:
        return sum(self.partition_counts.values())

    def owned_partitions(self) -> set[tuple[str, int]] | None:
        """Partitions a live member owns, for Burrow's STOP: known in a Stable group, none
        in an Empty one (its consumers are gone), None while it rebalances (the broker
        names no assignment then: every owner counts as alive)."""
        if self.state == "EMPTY":
            return set()
        if self.state != "STABLE":
            return None
        return {tp for m in self.members for tp in m.assigned}

    def for_topics(self, topics: Iterable[str]) -> GroupSnapshot:
        """This snapshot narrowed to `topics` (several objects may share one group id)."""
        wanted = set(topics)
        return replace(
            self,
            offsets={tp: v for tp, v in self.offsets.items() if tp[0] in wanted},
            log_starts={tp: v for tp, v in self.log_starts.items() if tp[0] in wanted},
            partition_counts={t: n for t, n in self.partition_counts.items() if t in wanted},
            missing_topics=tuple(t for t in self.missing_topics if t in wanted),
        )


#: Secret keys the operator's own admin client takes. The Secret belongs to the group's
#: namespace, so a key that makes librdkafka load a library or read a file from the
#: operator's filesystem (plugin.library.paths, *.location) is never passed on.
OPERATOR_AUTH_KEYS = frozenset({
    "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username",
    "sasl.password", "sasl.oauthbearer.method", "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.secret", "sasl.oauthbearer.scope",
    "sasl.oauthbearer.token.endpoint.url", "sasl.oauthbearer.extensions",
    "ssl.ca.pem", "ssl.certificate.pem", "ssl.key.pem", "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
})


def operator_auth(auth: Mapping[str, str] | None) -> dict[str, str]:
    """The part of a group's auth Secret the operator's admin client uses."""
    return {k: v for k, v in (auth or {}).items() if k in OPERATOR_AUTH_KEYS}


class LagCollector:
    """Keeps one AdminClient per cluster and sweeps groups in batches."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self._timeout = timeout_s
        self._clients: dict[ClusterKey, AdminClient] = {}
        self._readers: dict[ClusterKey, Consumer] = {}
        self._timestamps: dict[ClusterKey, dict[tuple[tuple[str, int], int], float]] = {}
        self._lock = threading.Lock()
        self._reader_locks: dict[ClusterKey, threading.Lock] = {}
        self.requests_failed = 0
        self.timestamps_read = 0  # messages fetched for their timestamp (cache misses)
        # The last authentication error librdkafka reported per cluster: a failed request
        # only says "transport failure", the error callback says why.
        self._auth_errors: dict[ClusterKey, str] = {}
        # Clusters whose client timed out every request of a kind while the broker
        # answered (see _outcomes): it will not answer again; whoever owns the process
        # replaces it.
        self.wedged: set[ClusterKey] = set()

    def client(self, key: ClusterKey, auth: Mapping[str, str] | None = None) -> AdminClient:
        with self._lock:
            admin = self._clients.get(key)
            if admin is None:
                conf: dict[str, Any] = {
                    "bootstrap.servers": key.bootstrap_servers,
                    "client.id": "kcg-operator",
                    "socket.keepalive.enable": True,
                    # Failures surface as request errors, conditions and Events; librdkafka's
                    # own per-retry log lines would flood the operator's log.
                    "log_level": 2,
                    "reconnect.backoff.ms": 500,
                    "reconnect.backoff.max.ms": 10000,
                    "error_cb": lambda err, key=key: self._on_error(key, err),
                }
                conf.update(operator_auth(auth))
                admin = AdminClient(conf)
                self._clients[key] = admin
            return admin

    def _on_error(self, key: ClusterKey, err: KafkaError) -> None:
        if err.code() == KafkaError._AUTHENTICATION:
            self._auth_errors[key] = err.str()

    @property
    def clusters(self) -> int:
        return len(self._clients)

    def close(self) -> None:
        """Nothing is released: destroying a librdkafka admin client can abort the process
        (see `contained`); in-process clients live as long as the process."""

    def sweep(
        self, key: ClusterKey, groups: Iterable[GroupRequest],
        auth: Mapping[str, str] | None = None,
    ) -> dict[str, GroupSnapshot]:
        """Collect offsets, members and assignor for every group of one cluster."""
        requests = list(groups)
        now = time.time()
        if not requests:
            return {}
        try:
            admin = self.client(key, auth)
        except (KafkaException, ValueError, TypeError) as exc:  # a bad setting in the Secret
            self.requests_failed += 1
            return {g.group_id: GroupSnapshot(g.group_id, now, False, f"client settings: {exc}")
                    for g in requests}
        try:
            metadata = admin.list_topics(timeout=self._timeout)
        except (KafkaException, TimeoutError) as exc:
            self.requests_failed += 1
            admin.poll(0)  # serves the error callback, which says why
            refused = self._auth_errors.get(key)
            error = f"authentication failed: {refused}" if refused else f"metadata: {exc}"
            return {g.group_id: GroupSnapshot(g.group_id, now, False, error,
                                              auth_failed=refused is not None)
                    for g in requests}
        self._auth_errors.pop(key, None)

        counts: dict[str, int] = {}
        for topic in {t for g in requests for t in g.topics}:
            meta = metadata.topics.get(topic)
            if meta is not None and meta.error is None and meta.partitions:
                counts[topic] = len(meta.partitions)

        tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        ends_f = admin.list_offsets(
            {tp: LATEST for tp in tps}, request_timeout=self._timeout
        ) if tps else {}
        described, failures, committed = self._describe_and_fetch(key, admin, requests, tps)

        # One partition that cannot answer (an offline leader, a topic deleted meanwhile)
        # only affects the groups that read it.
        ends: dict[tuple[str, int], int] = {}
        failed_topics: dict[str, str] = {}
        for tp, outcome in self._outcomes(key, ends_f).items():
            if isinstance(outcome, Exception):
                self.requests_failed += 1
                failed_topics.setdefault(tp.topic, f"{tp.topic}[{tp.partition}]: {outcome}")
            else:
                ends[(tp.topic, tp.partition)] = outcome.offset

        for outcome in committed.values():
            if isinstance(outcome, Exception):
                self.requests_failed += 1
        out = assemble(requests, now, counts, ends, failed_topics, failures,
                       {g: _description(d) for g, d in described.items()},
                       {g: c if isinstance(c, Exception) else _committed(c)
                        for g, c in committed.items()})
        self._add_log_starts(key, admin, out.values())
        return out

    def _describe_and_fetch(
        self, key: ClusterKey, admin: AdminClient, requests: list[GroupRequest],
        tps: list[TopicPartition],
    ) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
        """DescribeGroups, then OffsetFetch, of every group: (descriptions, failures,
        committed offsets or the exception). In batches, a batch's OffsetFetch in flight
        with the next batch's DescribeGroups, so at most GROUP_REQUESTS_IN_FLIGHT at once."""
        size = max(GROUP_REQUESTS_IN_FLIGHT // 2, 1)
        batches = [requests[i:i + size] for i in range(0, len(requests), size)]
        described: dict[str, Any] = {}
        failures: dict[str, str] = {}
        committed: dict[str, Any] = {}

        def describe(batch: list[GroupRequest]) -> Mapping[str, Future[Any]]:
            return admin.describe_consumer_groups(
                [g.group_id for g in batch], request_timeout=self._timeout)

        describing = describe(batches[0]) if batches else {}
        for i, batch in enumerate(batches):
            for group_id, outcome in self._outcomes(key, describing).items():
                if isinstance(outcome, Exception):
                    self.requests_failed += 1
                    failures[group_id] = str(outcome)
                else:
                    described[group_id] = outcome
            if key in self.wedged:  # every further batch would only wait out its timeout
                failures.update((g.group_id, "not asked: the Kafka client stopped answering")
                                for later in batches[i + 1:] for g in later)
                break
            describing = describe(batches[i + 1]) if i + 1 < len(batches) else {}
            # OffsetFetch only for groups whose coordinator has answered DescribeGroups: in
            # an admin client, librdkafka dereferences a NULL consumer group when an
            # OffsetFetch gets NOT_COORDINATOR (a coordinator still loading, e.g. a fresh
            # broker) and the whole process dies (confluent-kafka-python#1982,
            # confluent-kafka-javascript#374).
            committed_f: dict[str, Future[Any]] = {}
            for g in batch:
                mine = [tp for tp in tps if tp.topic in g.topics]
                if mine and g.group_id in described:
                    committed_f[g.group_id] = admin.list_consumer_group_offsets(
                        [ConsumerGroupTopicPartitions(g.group_id, mine)],
                        request_timeout=self._timeout,
                    )[g.group_id]
            committed.update(self._outcomes(key, committed_f))
        return described, failures, committed

    def _outcomes(self, key: ClusterKey, futures: Mapping[K, Future[Any]]) -> dict[K, Any]:
        """Each future's result, or the exception that says why there is none.

        One deadline for all of them (they are in flight together), so a client that has
        stopped answering costs one timeout per sweep, not one per group.

        Requests of one kind that all timed out although the broker answered this sweep's
        metadata mark the cluster wedged: after a broker restart, librdkafka 2.16's admin
        client times out every coordinator request (DescribeGroups, OffsetFetch) from then
        on, or leaves its futures open, while a new client is answered at once. Some of them
        timing out is a busy broker (seen at 10 000 groups), not a stuck client."""
        if not futures:
            return {}
        _, pending = concurrent.futures.wait(
            futures.values(), timeout=self._timeout + WEDGE_GRACE_S)
        out: dict[K, Any] = {}
        answered = False
        for item, fut in futures.items():
            if fut in pending:
                out[item] = TimeoutError(f"no answer within {self._timeout:.0f}s")
                continue
            try:
                out[item] = fut.result(0)
                answered = True
            except KafkaException as exc:
                out[item] = exc
                timed_out = exc.args and getattr(exc.args[0], "code", lambda: None)() == \
                    KafkaError._TIMED_OUT
                answered = answered or not timed_out
        if not answered:
            self.wedged.add(key)
        return out

    def _add_log_starts(self, key: ClusterKey, admin: AdminClient,
                        snaps: Iterable[GroupSnapshot]) -> None:
        """Log start offsets of never-committed partitions, one batched request: a group
        that starts from earliest has the whole retained log (not offset 0) ahead of it."""
        wanted = never_committed(snaps)
        if not wanted:
            return
        futures = admin.list_offsets({TopicPartition(t, p): EARLIEST for t, p in wanted},
                                     request_timeout=self._timeout)
        starts: dict[tuple[str, int], int] = {}
        for tp, outcome in self._outcomes(key, futures).items():
            if isinstance(outcome, Exception):
                # Unknown: the position falls back to offset 0, an upper bound of the lag.
                self.requests_failed += 1
            else:
                starts[(tp.topic, tp.partition)] = outcome.offset
        add_log_starts(snaps, starts)

    def produced_at(
        self, key: ClusterKey, wanted: Iterable[tuple[tuple[str, int], int]],
        auth: Mapping[str, str] | None = None, budget: int = MAX_TIMESTAMP_READS,
    ) -> dict[tuple[tuple[str, int], int], float]:
        """Timestamps (seconds) of the messages at the given (partition, offset) pairs.

        A message's timestamp never changes, so answers are cached; at most ``budget``
        uncached messages are read per call (one fetch each, all partitions at once), the
        rest keep their estimate until a later sweep. Offsets with no message (a
        compacted gap) take the next message's timestamp: it was produced no earlier.
        """
        pairs = list(wanted)
        with self._lock:
            cache = self._timestamps.setdefault(key, {})
        out = {pair: cache[pair] for pair in pairs if pair in cache}
        todo = [pair for pair in pairs if pair not in cache][:budget]
        if not todo:
            return out
        try:
            read = self._read_timestamps(key, auth, todo)
        except (KafkaException, ValueError, TypeError, RuntimeError):
            self.requests_failed += 1
            return out
        with self._lock:
            self.timestamps_read += len(read)
            if len(cache) + len(read) > TIMESTAMP_CACHE_SIZE:
                cache.clear()  # positions move on; old ones are not asked for again
            cache.update(read)
        out.update(read)
        return out

    def _read_timestamps(
        self, key: ClusterKey, auth: Mapping[str, str] | None,
        todo: list[tuple[tuple[str, int], int]],
    ) -> dict[tuple[tuple[str, int], int], float]:
        with self._lock:
            reader = self._readers.get(key)
            reader_lock = self._reader_locks.setdefault(key, threading.Lock())
            if reader is None:
                reader = self._readers[key] = Consumer({
                    "bootstrap.servers": key.bootstrap_servers,
                    "client.id": "kcg-operator-timestamps",
                    # Required by librdkafka; never joined nor committed (assign only).
                    "group.id": "kcg-operator-timestamps",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    # The message at a position, even inside an open transaction.
                    "isolation.level": "read_uncommitted",
                    "max.partition.fetch.bytes": 65536,
                    "log_level": 2,
                    **operator_auth(auth),
                })
        wanted = dict(todo)
        found: dict[tuple[tuple[str, int], int], float] = {}
        deadline = time.monotonic() + min(self._timeout, 5.0)
        with reader_lock:  # one assignment at a time per cluster
            reader.assign([TopicPartition(t, p, o) for (t, p), o in wanted.items()])
            try:
                while wanted and time.monotonic() < deadline:
                    for msg in reader.consume(len(wanted), timeout=0.2):
                        topic, partition, at = msg.topic(), msg.partition(), msg.offset()
                        if msg.error() is not None or topic is None or partition is None:
                            continue
                        tp = (topic, partition)
                        offset = wanted.get(tp)
                        _, stamp_ms = msg.timestamp()
                        if offset is None or at is None or at < offset or stamp_ms < 0:
                            continue
                        found[(tp, offset)] = stamp_ms / 1000.0
                        del wanted[tp]
            finally:
                reader.unassign()
        return found


@dataclass(frozen=True)
class Description:
    """What DescribeGroups (or ConsumerGroupDescribe) said about one group."""

    state: str | None  # Kafka's name upper-cased: STABLE, EMPTY, PREPARING_REBALANCE, ...
    group_type: str | None  # CLASSIC or CONSUMER
    assignor: str | None
    members: tuple[Member, ...]


def assemble(
    requests: Iterable[GroupRequest], now: float, counts: Mapping[str, int],
    ends: Mapping[tuple[str, int], int], failed_topics: Mapping[str, str],
    failures: Mapping[str, str], described: Mapping[str, Description],
    committed: Mapping[str, Mapping[tuple[str, int], int | None] | Exception],
) -> dict[str, GroupSnapshot]:
    """One sweep's snapshots from its answers: partition counts and end offsets per topic
    (or why a topic's could not be read), each group's description (or why not) and
    committed offsets (absent: the group reads no existing topic)."""
    out: dict[str, GroupSnapshot] = {}
    for g in requests:
        if g.group_id in failures:
            out[g.group_id] = GroupSnapshot(g.group_id, now, False,
                                            f"describe group: {failures[g.group_id]}")
            continue
        broken = [failed_topics[t] for t in g.topics if t in failed_topics]
        if broken:
            out[g.group_id] = GroupSnapshot(g.group_id, now, False,
                                            f"list offsets: {'; '.join(broken)}")
            continue
        snap = GroupSnapshot(
            g.group_id, now, True,
            partition_counts={t: counts[t] for t in g.topics if t in counts},
            missing_topics=tuple(t for t in g.topics if t not in counts),
        )
        out[g.group_id] = snap
        offsets = committed.get(g.group_id)
        if isinstance(offsets, Exception):
            snap.broker_ok = False
            snap.error = str(offsets)
            continue
        for tp, offset in (offsets or {}).items():
            snap.offsets[tp] = (ends[tp], offset)
        desc = described[g.group_id]
        snap.state, snap.group_type = desc.state, desc.group_type
        snap.assignor, snap.members = desc.assignor, desc.members
    return out


def never_committed(snaps: Iterable[GroupSnapshot]) -> set[tuple[str, int]]:
    """Partitions some group never committed on: their log start is where it starts."""
    return {tp for s in snaps if s.broker_ok
            for tp, (_, committed) in s.offsets.items() if committed is None}


def add_log_starts(snaps: Iterable[GroupSnapshot], starts: Mapping[tuple[str, int], int]) -> None:
    for s in snaps:
        s.log_starts.update({tp: starts[tp] for tp, (_, c) in s.offsets.items()
                             if c is None and tp in starts})


def state_name(kafka_state: str) -> str:
    """Kafka's group state ("PreparingRebalance") as the snapshot spells it
    ("PREPARING_REBALANCE")."""
    return "".join(f"_{c}" if c.isupper() and i else c
                   for i, c in enumerate(kafka_state)).upper()


def _description(desc: Any) -> Description:
    """A librdkafka ConsumerGroupDescription as a Description."""
    state = getattr(desc.state, "name", str(desc.state))
    # librdkafka names the rebalancing states PREPARING_REBALANCING; Kafka PreparingRebalance.
    state = state.replace("REBALANCING", "REBALANCE")
    group_type = getattr(desc, "type", None)
    return Description(
        state, getattr(group_type, "name", None), desc.partition_assignor or None,
        tuple(Member(m.member_id, m.client_id, m.host,
                     tuple((tp.topic, tp.partition) for tp in m.assignment.topic_partitions)
                     if m.assignment else ())
              for m in desc.members))


def _committed(answer: Any) -> dict[tuple[str, int], int | None]:
    """A librdkafka ListConsumerGroupOffsets answer: partition -> committed offset or None."""
    return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
            for tp in answer.topic_partitions}
