"""The lag sweep spoken straight to the brokers: many groups per request.

librdkafka's admin client sends one DescribeGroups and one OffsetFetch per group; at
10 000 groups a sweep was 20 000 requests, and the broker and this process spent about a
core each parsing them. Here a sweep is one Metadata request, one ListOffsets per
partition leader, FindCoordinator for the groups whose coordinator is not known yet, and
per coordinator one DescribeGroups and one OffsetFetch per `GROUP_BATCH` groups (KIP-709),
all on one connection per broker, driven by one event loop thread. A group whose
coordinator moved (NOT_COORDINATOR and friends) is looked up and asked again once in the
same sweep.

The settings spoken here are PLAINTEXT, SSL (CA given or the system's) and SASL
PLAIN/SCRAM-SHA-256/SCRAM-SHA-512 over either, on brokers with the request versions of
Kafka 3.1 or later. Anything else (OAUTHBEARER, GSSAPI, client certificates, an older
broker) goes to librdkafka in a child process (`contained`), as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from kcg_operator.scaling import kafka_protocol as kp
from kcg_operator.scaling.collector import (
    OPERATOR_AUTH_KEYS,
    ClusterKey,
    Description,
    GroupRequest,
    GroupSnapshot,
    LagCollector,
    add_log_starts,
    assemble,
    never_committed,
    state_name,
)
from kcg_operator.scaling.contained import ContainedLagCollector

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Groups per DescribeGroups and per OffsetFetch request.
GROUP_BATCH: Final = 500
#: Groups per FindCoordinator request.
COORDINATOR_BATCH: Final = 2000
#: A group not swept for this many sweeps of its cluster loses its cached coordinator
#: (deleted objects; a group swept again is looked up anew, one batched request).
FORGET_AFTER_SWEEPS: Final = 100
#: Largest answer read (the broker's own default socket.request.max.bytes is 100 MiB).
MAX_ANSWER_BYTES: Final = 100 * 1024 * 1024


class WireError(Exception):
    """A broker could not be asked: connection refused or lost, no answer in time."""


class AuthenticationFailed(WireError):
    pass


class NoAnswer(WireError):
    """A request not answered within its timeout."""


class NotSpoken(Exception):
    """Settings or a broker this module does not speak: librdkafka takes the cluster."""


@dataclass(frozen=True)
class WireSettings:
    tls: bool
    mechanism: str | None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; None: no SASL
    username: str
    password: str
    ca_pem: str | None
    check_hostname: bool

    @staticmethod
    def of(auth: Mapping[str, str] | None) -> WireSettings:
        """The settings of a group's auth Secret (only the keys the operator's client
        takes), or NotSpoken naming what is not."""
        conf = {k: v for k, v in (auth or {}).items() if k in OPERATOR_AUTH_KEYS}
        protocol = conf.pop("security.protocol", "PLAINTEXT").strip().upper()
        if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise NotSpoken(f"security.protocol {protocol}")
        mechanism = (conf.pop("sasl.mechanism", None) or conf.pop("sasl.mechanisms", None)
                     or "GSSAPI").strip().upper()
        conf.pop("sasl.mechanisms", None)
        sasl = protocol.startswith("SASL_")
        if sasl and mechanism not in ("PLAIN", *kp.SCRAM_HASHES):
            raise NotSpoken(f"sasl.mechanism {mechanism}")
        identification = conf.pop("ssl.endpoint.identification.algorithm", "https").strip()
        if identification.lower() not in ("https", "none"):
            raise NotSpoken(f"ssl.endpoint.identification.algorithm {identification}")
        settings = WireSettings(
            tls=protocol.endswith("SSL"), mechanism=mechanism if sasl else None,
            username=conf.pop("sasl.username", ""), password=conf.pop("sasl.password", ""),
            ca_pem=conf.pop("ssl.ca.pem", None),
            check_hostname=identification.lower() == "https")
        if conf:  # client certificates, OAUTHBEARER settings, ...
            raise NotSpoken(", ".join(sorted(conf)))
        return settings

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.ca_pem) if self.ca_pem \
            else ssl.create_default_context()
        ctx.check_hostname = self.check_hostname
        return ctx


class Connection:
    """One broker connection: requests pipelined, answers matched by correlation id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 where: str) -> None:
        self.where = where
        self._reader, self._writer = reader, writer
        self._pending: dict[int, tuple[kp.Api, asyncio.Future[bytes]]] = {}
        self._next_id = 0
        self.versions: dict[int, tuple[int, int]] = {}
        self._failure: BaseException | None = None
        self._task = asyncio.get_running_loop().create_task(self._read_answers())

    @classmethod
    async def open(cls, host: str, port: int, settings: WireSettings,
                   timeout: float) -> Connection:
        where = f"{host}:{port}"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                host, port, ssl=settings.ssl_context() if settings.tls else None,
                server_hostname=host if settings.tls else None), timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise WireError(f"connect to {where}: {exc or type(exc).__name__}") from exc
        conn = cls(reader, writer, where)
        try:
            error, conn.versions = await conn.call(
                kp.API_VERSIONS, kp.api_versions_request(), kp.read_api_versions, timeout)
            if error:
                raise NotSpoken(f"ApiVersions v3 answered {kp.error_name(error)}")
            for api in kp.REQUIRED:
                lo, hi = conn.versions.get(api.key, (0, -1))
                if not lo <= api.version <= hi:
                    raise NotSpoken(f"the broker at {where} lacks request {api.key} "
                                    f"v{api.version}")
            if settings.mechanism:
                await conn._authenticate(settings, timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def alive(self) -> bool:
        return self._failure is None and not self._task.done()

    def supports(self, api: kp.Api) -> bool:
        lo, hi = self.versions.get(api.key, (0, -1))
        return lo <= api.version <= hi

    async def call(self, api: kp.Api, body: bytes, read: Callable[[kp.Reader], T],
                   timeout: float) -> T:
        if not self.alive:
            raise WireError(f"{self.where}: connection lost ({self._failure})")
        self._next_id = (self._next_id + 1) & 0x7FFFFFFF
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = (api, answer)
        self._writer.write(kp.frame(api, self._next_id, "kcg-operator", body))
        try:
            payload = await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            # Later answers would arrive out of turn: this connection is done.
            self.close(NoAnswer(f"{self.where}: no answer within {timeout:.0f}s"))
            raise NoAnswer(f"{self.where}: no answer within {timeout:.0f}s") from None
        _, body_reader = kp.response_body(api, payload)
        try:
            return read(body_reader)
        except (kp.ProtocolError, UnicodeDecodeError) as exc:
            self.close(exc)
            raise WireError(f"{self.where}: unreadable answer to request {api.key}: "
                            f"{exc}") from exc

    async def _read_answers(self) -> None:
        try:
            while True:
                size = int.from_bytes(await self._reader.readexactly(4), "big", signed=True)
                if not 4 <= size <= MAX_ANSWER_BYTES:
                    raise kp.ProtocolError(f"answer of {size} bytes")
                payload = await self._reader.readexactly(size)
                entry = self._pending.pop(int.from_bytes(payload[:4], "big", signed=True),
                                          None)
                if entry is not None and not entry[1].done():
                    entry[1].set_result(payload)
        except (OSError, asyncio.IncompleteReadError, kp.ProtocolError, ssl.SSLError) as exc:
            self.close(exc)

    def close(self, why: BaseException | None = None) -> None:
        if self._failure is None:
            self._failure = why or WireError("closed")
        for _, answer in self._pending.values():
            if not answer.done():
                answer.set_exception(WireError(f"{self.where}: connection lost "
                                               f"({self._failure or 'closed'})"))
        self._pending.clear()
        self._writer.close()
        if asyncio.current_task() is not self._task:
            self._task.cancel()

    async def _authenticate(self, settings: WireSettings, timeout: float) -> None:
        mechanism = settings.mechanism or ""
        error, offered = await self.call(kp.SASL_HANDSHAKE, kp.sasl_handshake_request(
            mechanism), kp.read_sasl_handshake, timeout)
        if error:
            raise AuthenticationFailed(
                f"the broker does not offer SASL mechanism {mechanism} (it offers "
                f"{', '.join(offered) or 'none'})")

        async def step(data: bytes) -> bytes:
            code, message, answer = await self.call(
                kp.SASL_AUTHENTICATE, kp.sasl_authenticate_request(data),
                kp.read_sasl_authenticate, timeout)
            if code:
                raise AuthenticationFailed(message or kp.error_name(code))
            return answer

        if mechanism == "PLAIN":
            await step(f"\0{settings.username}\0{settings.password}".encode())
            return
        scram = kp.ScramClient(mechanism, settings.username, settings.password)
        try:
            scram.verify(await step(scram.final(await step(scram.first()))))
        except kp.ScramError as exc:
            raise AuthenticationFailed(f"{exc} (SASL mechanism {mechanism})") from exc


@dataclass
class _Asked:
    """A sweep's group answers: descriptions, committed offsets, failures."""

    described: dict[str, Description]
    committed: dict[str, dict[tuple[str, int], int | None] | Exception]
    failures: dict[str, str]
    failed_requests: int = 0


class WireCluster:
    """One cluster's connections (one per broker) and what is known of its brokers and
    group coordinators. Used only from the collector's event loop."""

    def __init__(self, key: ClusterKey, settings: WireSettings, timeout: float) -> None:
        self.bootstrap = [_address(a) for a in key.bootstrap_servers.split(",") if a.strip()]
        self.settings = settings
        self.timeout = timeout
        self.brokers: dict[int, tuple[str, int]] = {}
        self.coordinators: dict[str, int] = {}
        self.coordinator_moves = 0  # groups asked again at a coordinator found anew
        self._sweeps = 0
        self._last_swept: dict[str, int] = {}
        self._conns: dict[tuple[str, int], Connection] = {}
        self._opening: dict[tuple[str, int], asyncio.Task[Connection]] = {}

    async def connection(self, address: tuple[str, int]) -> Connection:
        conn = self._conns.get(address)
        if conn is not None and conn.alive:
            return conn
        task = self._opening.get(address)
        if task is None:  # one connect per broker, however many ask at once
            task = asyncio.ensure_future(Connection.open(*address, self.settings, self.timeout))
            self._opening[address] = task
            task.add_done_callback(lambda _t: self._opening.pop(address, None))
        conn = await asyncio.shield(task)
        self._conns[address] = conn
        return conn

    async def any_connection(self) -> Connection:
        for conn in self._conns.values():
            if conn.alive:
                return conn
        failure: WireError | None = None
        for address in [*self.brokers.values(), *self.bootstrap]:
            try:
                return await self.connection(address)
            except AuthenticationFailed:
                raise
            except WireError as exc:
                failure = exc
        raise failure or WireError("no bootstrap servers")

    async def node(self, node_id: int) -> Connection:
        address = self.brokers.get(node_id)
        if address is None:
            raise WireError(f"broker {node_id} is not in the cluster's metadata")
        return await self.connection(address)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def remember(self, group_ids: Iterable[str]) -> None:
        """Count a sweep of these groups; forget the coordinators of groups that have not
        been swept for FORGET_AFTER_SWEEPS sweeps, so deleted groups do not pile up."""
        self._sweeps += 1
        for g in group_ids:
            self._last_swept[g] = self._sweeps
        oldest = self._sweeps - FORGET_AFTER_SWEEPS
        for g in [g for g, n in self._last_swept.items() if n <= oldest]:
            del self._last_swept[g]
            self.coordinators.pop(g, None)

    async def sweep(self, requests: list[GroupRequest]) -> tuple[dict[str, GroupSnapshot], int]:
        """(snapshots, requests that failed) for one sweep of this cluster's groups."""
        self.remember(g.group_id for g in requests)
        now = time.time()
        topics = {t for g in requests for t in g.topics}
        try:
            meta = await self._metadata(topics)
        except AuthenticationFailed as exc:
            return {g.group_id: GroupSnapshot(g.group_id, now, False,
                                              f"authentication failed: {exc}", auth_failed=True)
                    for g in requests}, 1
        except WireError as exc:
            return {g.group_id: GroupSnapshot(g.group_id, now, False, f"metadata: {exc}")
                    for g in requests}, 1
        self.brokers = meta.brokers
        leaders = {t: m.leaders for t, m in meta.topics.items() if not m.error and m.leaders}
        counts = {t: len(parts) for t, parts in leaders.items()}
        partitions = {(t, p) for t in counts for p in range(counts[t])}
        (ends, failed_ends), asked = await asyncio.gather(
            self.offsets(partitions, kp.LATEST_TIMESTAMP, leaders),
            self.ask_groups(requests, counts))
        failed_topics: dict[str, str] = {}
        for (topic, p), why in sorted(failed_ends.items()):
            failed_topics.setdefault(topic, f"{topic}[{p}]: {why}")
        out = assemble(requests, now, counts, ends, failed_topics, asked.failures,
                       asked.described, asked.committed)
        wanted = never_committed(out.values())
        starts, failed_starts = await self.offsets(wanted, kp.EARLIEST_TIMESTAMP, leaders) \
            if wanted else ({}, {})
        add_log_starts(out.values(), starts)
        failed = len(failed_ends) + asked.failed_requests + len(failed_starts)
        return out, failed

    async def _metadata(self, topics: Iterable[str]) -> kp.Metadata:
        """The topics' partitions and leaders, and the brokers. A kept connection the broker
        has meanwhile closed (idle for connections.max.idle.ms) gets one fresh try."""
        for attempt in range(2):
            conn = await self.any_connection()
            try:
                return await conn.call(kp.METADATA, kp.metadata_request(topics),
                                       kp.read_metadata, self.timeout)
            except NoAnswer:
                raise
            except WireError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def offsets(
        self, partitions: Iterable[tuple[str, int]], timestamp: int,
        leaders: Mapping[str, Mapping[int, int]],
    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], str]]:
        """(offset, or why not) of each partition at `timestamp`, one request per leader."""
        by_leader: dict[int, dict[str, list[int]]] = {}
        failed: dict[tuple[str, int], str] = {}
        for t, p in partitions:
            leader = leaders[t].get(p, -1)
            if leader < 0:
                failed[(t, p)] = "no leader"
            else:
                by_leader.setdefault(leader, {}).setdefault(t, []).append(p)

        async def ask(leader: int, wanted: dict[str, list[int]]) -> None:
            try:
                conn = await self.node(leader)
                answer = await conn.call(kp.LIST_OFFSETS, kp.list_offsets_request(
                    wanted, timestamp), kp.read_list_offsets, self.timeout)
            except WireError as exc:
                failed.update(((t, p), str(exc)) for t, ps in wanted.items() for p in ps)
                return
            for t, ps in wanted.items():
                for p in ps:
                    error, offset = answer.get((t, p), (-1, -1))
                    if error:
                        failed[(t, p)] = kp.error_name(error)
                    else:
                        found[(t, p)] = offset

        found: dict[tuple[str, int], int] = {}
        await asyncio.gather(*(ask(n, w) for n, w in by_leader.items()))
        return found, failed

    async def ask_groups(self, requests: Sequence[GroupRequest],
                         counts: Mapping[str, int]) -> _Asked:
        """Describe every group and fetch its committed offsets, from its coordinator; a
        group whose coordinator moved meanwhile is looked up and asked once more."""
        asked = _Asked({}, {}, {})
        todo = list(requests)
        for attempt in range(2):
            moved = await self._ask_coordinators(todo, counts, asked, last=attempt == 1)
            if not moved:
                break
            for g in moved:
                self.coordinators.pop(g.group_id, None)
            self.coordinator_moves += len(moved)
            todo = moved
        return asked

    async def _ask_coordinators(self, requests: Sequence[GroupRequest],
                                counts: Mapping[str, int], asked: _Asked,
                                last: bool) -> list[GroupRequest]:
        """One round; returns the groups whose coordinator had moved (to ask again)."""
        unknown = [g.group_id for g in requests if g.group_id not in self.coordinators]
        await self._find_coordinators(unknown, asked)
        by_node: dict[int, list[GroupRequest]] = {}
        for g in requests:
            if g.group_id in self.coordinators:
                by_node.setdefault(self.coordinators[g.group_id], []).append(g)
        moved: list[GroupRequest] = []

        async def batch(node: int, groups: list[GroupRequest]) -> None:
            for g, why in (await self._ask_batch(node, groups, counts, asked)).items():
                if last:
                    asked.failures[g.group_id] = why
                    asked.failed_requests += 1
                else:
                    moved.append(g)

        await asyncio.gather(*(batch(node, groups[i:i + GROUP_BATCH])
                               for node, groups in by_node.items()
                               for i in range(0, len(groups), GROUP_BATCH)))
        return moved

    async def _find_coordinators(self, group_ids: list[str], asked: _Asked) -> None:
        async def find(keys: list[str]) -> None:
            try:
                conn = await self.any_connection()
                found = await conn.call(kp.FIND_COORDINATOR, kp.find_coordinator_request(keys),
                                        kp.read_find_coordinator, self.timeout)
            except WireError as exc:
                asked.failed_requests += 1
                asked.failures.update((k, f"find coordinator: {exc}") for k in keys)
                return
            for k in keys:
                c = found.get(k)
                if c is None or c.error:
                    why = kp.error_name(c.error) if c else "not answered"
                    asked.failures[k] = f"find coordinator: {why}"
                    asked.failed_requests += 1
                else:
                    self.coordinators[k] = c.node_id
                    self.brokers.setdefault(c.node_id, (c.host, c.port))

        await asyncio.gather(*(find(group_ids[i:i + COORDINATOR_BATCH])
                               for i in range(0, len(group_ids), COORDINATOR_BATCH)))

    async def _ask_batch(self, node: int, groups: list[GroupRequest],
                         counts: Mapping[str, int], asked: _Asked) -> dict[GroupRequest, str]:
        """DescribeGroups and OffsetFetch of one batch, both in flight at once. Returns the
        groups that must be asked again (their coordinator moved), with why."""
        wanted = {g.group_id: {t: list(range(counts[t])) for t in g.topics if t in counts}
                  for g in groups}
        fetch = {gid: parts for gid, parts in wanted.items() if parts}
        async def no_offsets() -> dict[str, kp.FetchedOffsets]:
            return {}

        try:
            conn = await self.node(node)
            answered, fetched = await asyncio.gather(
                conn.call(kp.DESCRIBE_GROUPS, kp.describe_groups_request(list(wanted)),
                          kp.read_describe_groups, self.timeout),
                conn.call(kp.OFFSET_FETCH, kp.offset_fetch_request(fetch),
                          kp.read_offset_fetch, self.timeout) if fetch else no_offsets())
        except WireError as exc:
            # The coordinator is gone or not answering: find it again next time.
            return {g: f"coordinator {node}: {exc}" for g in groups}
        described = {d.group_id: d for d in answered}
        await self._describe_consumer_groups(conn, described)
        again: dict[GroupRequest, str] = {}
        for g in groups:
            desc = described.get(g.group_id)
            offsets = fetched.get(g.group_id)
            errors = [e for e in (desc.error if desc else -1,
                                  offsets.error if offsets else 0) if e]
            if any(e in kp.COORDINATOR_ERRORS for e in errors):
                again[g] = kp.error_name(next(e for e in errors if e in kp.COORDINATOR_ERRORS))
                continue
            if desc is None or desc.error:
                asked.failures[g.group_id] = \
                    kp.error_name(desc.error) if desc else "not in the broker's answer"
                asked.failed_requests += 1
                continue
            asked.described[g.group_id] = Description(
                state_name(desc.state), desc.group_type, desc.assignor, desc.members)
            if offsets is not None and offsets.error:
                asked.committed[g.group_id] = WireError(
                    f"offset fetch: {kp.error_name(offsets.error)}")
                asked.failed_requests += 1
            elif offsets is None and g.group_id in fetch:
                asked.committed[g.group_id] = WireError("offset fetch: not in the answer")
                asked.failed_requests += 1
            elif offsets is not None:
                asked.committed[g.group_id] = {
                    tp: (o if o >= 0 else None) for tp, (o, _) in offsets.offsets.items()}
        return again

    async def _describe_consumer_groups(self, conn: Connection,
                                        described: dict[str, kp.DescribedGroup]) -> None:
        """DescribeGroups (the classic API) calls a KIP-848 consumer group Dead; such groups
        are described again with ConsumerGroupDescribe where the broker has it."""
        dead = [g for g, d in described.items() if not d.error and d.state == "Dead"]
        if not dead or not conn.supports(kp.CONSUMER_GROUP_DESCRIBE):
            return
        try:
            answer = await conn.call(kp.CONSUMER_GROUP_DESCRIBE,
                                     kp.consumer_group_describe_request(dead),
                                     kp.read_consumer_group_describe, self.timeout)
        except WireError:
            return  # described as Dead this sweep; the next one asks again
        for d in answer:
            if not d.error:  # GROUP_ID_NOT_FOUND: really no such (or a classic) group
                described[d.group_id] = d


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    return host.strip("[]"), int(port)


class WireLagCollector(LagCollector):
    """Sweeps clusters over the Kafka protocol from one event loop thread; clusters whose
    settings or brokers it does not speak go to librdkafka in a child (`contained`).
    Message timestamps are read as by LagCollector (its consumer)."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        super().__init__(timeout_s)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="kafka-wire", daemon=True)
        self._thread.start()
        self._wire: dict[ClusterKey, WireCluster] = {}
        self._fallback = ContainedLagCollector(timeout_s)
        self.not_spoken: dict[ClusterKey, str] = {}

    @property
    def clusters(self) -> int:
        return len(self._wire) + self._fallback.clusters

    def sweep(
        self, key: ClusterKey, groups: Iterable[GroupRequest],
        auth: Mapping[str, str] | None = None,
    ) -> dict[str, GroupSnapshot]:
        requests = list(groups)
        if not requests:
            return {}
        if key not in self.not_spoken:
            try:
                return self._sweep_wire(key, requests, auth)
            except NotSpoken as exc:
                self.not_spoken[key] = str(exc)
                cluster = self._wire.pop(key, None)
                if cluster is not None:
                    self._loop.call_soon_threadsafe(cluster.close)
                log.info("the Kafka client of %s is librdkafka's: %s", key.bootstrap_servers,
                         exc)
        failed_before = self._fallback.requests_failed
        snaps = self._fallback.sweep(key, requests, auth)
        self.requests_failed += self._fallback.requests_failed - failed_before
        return snaps

    def _sweep_wire(self, key: ClusterKey, requests: list[GroupRequest],
                    auth: Mapping[str, str] | None) -> dict[str, GroupSnapshot]:
        cluster = self._wire.get(key)
        if cluster is None:
            cluster = self._wire[key] = WireCluster(key, WireSettings.of(auth), self._timeout)
        # Each request has its own deadline; this one only guards against a stuck loop.
        future = asyncio.run_coroutine_threadsafe(cluster.sweep(requests), self._loop)
        try:
            snaps, failed = future.result(timeout=6 * self._timeout + 30)
        except NotSpoken:
            raise
        except Exception as exc:  # a bug here must cost one sweep, not the controller
            future.cancel()
            log.exception("the sweep of %s failed", key.bootstrap_servers)
            self.requests_failed += 1
            now = time.time()
            return {g.group_id: GroupSnapshot(g.group_id, now, False, f"sweep failed: {exc!r}")
                    for g in requests}
        self.requests_failed += failed
        return snaps

    def close(self) -> None:
        async def close_all() -> None:
            for cluster in self._wire.values():
                cluster.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(5)
        self._wire.clear()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._fallback.close()
