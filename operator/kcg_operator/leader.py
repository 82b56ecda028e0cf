"""Leader election on a coordination.k8s.io Lease: one operator replica writes, the rest wait.

Every replica watches and sweeps (a warm standby), but only the holder of the Lease writes
to the Kubernetes API. The rules are client-go's leaderelection package, with shorter
timings so that a crashed leader is replaced within ten seconds:

* The holder renews every ``renew_interval_s``. It counts as leader only while its last
  successful renewal is younger than ``renew_deadline_s`` (shorter than the lease): a
  leader that cannot renew stops writing *before* anyone else may take the lease.
* A candidate takes the lease when it is free (no holder: released on shutdown) or when
  the record it reads has not changed for ``lease_duration_s`` *of its own clock*: times
  written by another host are never compared with ours (no clock-skew assumptions).
* Every write carries the resourceVersion it read, so two candidates never both win.
* On a graceful stop the leader closes its write gate, waits for the writes already past
  it, then releases the lease (no holder, 1 s duration), so a standby takes over at its
  next retry instead of waiting the lease out, and never while the old leader still writes.

:func:`next_step` is the whole decision, a pure function; :class:`LeaderElector` is the
I/O around it (one thread, reads every ``retry_interval_s`` while standing by).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kcg_operator import metrics

log = logging.getLogger(__name__)

#: Seconds a lease lasts without renewal. controller-runtime uses 15 s (failover 15-17 s);
#: 6 s with a 1 s retry keeps crash failover under 10 s.
LEASE_DURATION_S = 6.0
#: A leader that has not renewed for this long stops writing (client-go's RenewDeadline).
RENEW_DEADLINE_S = 4.0
#: How often the leader renews.
RENEW_INTERVAL_S = 2.0
#: How often a standby reads the lease (a GET; it writes only to take a free lease).
RETRY_INTERVAL_S = 1.0
#: The lease a released lease is left with, so that old clients see it expire at once.
RELEASED_DURATION_S = 1
#: Requests must end well inside the renew deadline (connect, read seconds).
TIMEOUT = (2, 3)
#: How long a graceful stop waits for writes in flight before freeing the lease; if they
#: have not ended by then the lease is left to expire instead.
WRITE_DRAIN_S = 5.0


class Step(enum.Enum):
    RENEW = "renew"  # we hold it
    ACQUIRE = "acquire"  # free or expired: take it
    WAIT = "wait"  # someone else holds a live lease


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease that election reads."""

    holder: str | None
    duration_s: float
    renew_time: str | None  # as written by the holder; compared for change, never as a time
    transitions: int


@dataclass(frozen=True)
class Sighting:
    """The record as this replica last saw it, and when (its own monotonic clock)."""

    record: LeaseRecord
    seen_at: float


def next_step(record: LeaseRecord | None, me: str, sighting: Sighting | None,
              now: float) -> Step:
    """What this replica does with the lease it just read (None: there is no lease yet).

    ``sighting`` is the previous read: a record that changed since then is as good as new
    and runs for its whole duration from ``now``."""
    if record is None or not record.holder:
        return Step.ACQUIRE
    if record.holder == me:
        return Step.RENEW
    if sighting is None or sighting.record != record:
        return Step.WAIT  # just changed: it lives for its duration from now
    expired = now >= sighting.seen_at + max(record.duration_s, RELEASED_DURATION_S)
    return Step.ACQUIRE if expired else Step.WAIT


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    renew = spec.renew_time if spec is not None else None
    return LeaseRecord(
        holder=spec.holder_identity if spec is not None else None,
        duration_s=float((spec.lease_duration_seconds if spec is not None else None)
                         or LEASE_DURATION_S),
        renew_time=renew.isoformat() if isinstance(renew, datetime) else renew,
        transitions=int((spec.lease_transitions if spec is not None else None) or 0))


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Holds or waits for one Lease; ``leading()`` gates every write of this process."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str, *,
                 lease_duration_s: float = LEASE_DURATION_S,
                 renew_deadline_s: float = RENEW_DEADLINE_S,
                 renew_interval_s: float = RENEW_INTERVAL_S,
                 retry_interval_s: float = RETRY_INTERVAL_S,
                 on_started_leading: Callable[[], None] = lambda: None,
                 on_stopped_leading: Callable[[], None] = lambda: None) -> None:
        if not renew_interval_s < renew_deadline_s < lease_duration_s:
            raise ValueError("leader election needs renew interval < renew deadline < lease "
                             f"duration (got {renew_interval_s}, {renew_deadline_s}, "
                             f"{lease_duration_s})")
        # Any: the client's own types make a dict body (what we send) a type error.
        self.coordination: Any = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.renew_interval_s = renew_interval_s
        self.retry_interval_s = retry_interval_s
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self._renewed_at: float | None = None  # monotonic time of our last renewal
        self._sighting: Sighting | None = None
        self._resigned = False
        self._lock = threading.Lock()
        # Writes that passed the gate and have not ended; release() waits for none.
        self._writes_in_flight = 0
        self._no_writes = threading.Condition(self._lock)
        metrics.leader.set(0)

    # -- read by every writer -----------------------------------------------------------

    def leading(self) -> bool:
        """True while this replica holds the lease and renewed it in time."""
        with self._lock:
            return self._leading_locked()

    def _leading_locked(self) -> bool:
        return (not self._resigned and self._renewed_at is not None
                and time.monotonic() - self._renewed_at < self.renew_deadline_s)

    @contextlib.contextmanager
    def writing(self) -> Iterator[bool]:
        """The write gate: yields whether this replica may write now, and while the block
        runs (the request) a graceful stop does not free the lease."""
        with self._lock:
            permitted = self._leading_locked()
            if permitted:
                self._writes_in_flight += 1
        try:
            yield permitted
        finally:
            if permitted:
                with self._lock:
                    self._writes_in_flight -= 1
                    self._no_writes.notify_all()

    # -- the election loop --------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: renew while leading, else try to acquire. Then release."""
        was_leading = False
        while not stop.is_set():
            try:
                self.try_acquire_or_renew()
            except Exception as exc:  # the API may be down: retry, never crash the loop
                log.warning("leader election: lease %s/%s: %s", self.namespace, self.name,
                            exc if not isinstance(exc, ApiException)
                            else f"{exc.status} {exc.reason}")
            now_leading = self.leading()
            if now_leading != was_leading:
                self._transition(now_leading)
                was_leading = now_leading
            stop.wait(self.renew_interval_s if now_leading else self.retry_interval_s)
        if was_leading:
            self.release()
            self._transition(False)

    def _transition(self, leading: bool) -> None:
        if leading:
            metrics.leader_transitions.inc()
            log.info("leader election: %s now leads (lease %s/%s)", self.identity,
                     self.namespace, self.name)
            self.on_started_leading()
        else:
            metrics.leader.set(0)  # after the gate closed (leading() is already False)
            log.warning("leader election: %s no longer leads (lease %s/%s)", self.identity,
                        self.namespace, self.name)
            self.on_stopped_leading()

    def try_acquire_or_renew(self) -> Step:
        """One round: read the lease, decide, write if we may. Returns what was decided."""
        try:
            lease = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise
            lease = None
        record = _record(lease) if lease is not None else None
        now = time.monotonic()
        step = next_step(record, self.identity, self._sighting, now)
        if record is not None and (self._sighting is None or self._sighting.record != record):
            self._sighting = Sighting(record, now)
        if step is Step.WAIT:
            return step
        if self._resigned:
            return Step.WAIT
        started = time.monotonic()
        stamp = _now_micro()
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration_s),
            "renewTime": stamp,
        }
        if step is Step.ACQUIRE:
            spec["acquireTime"] = stamp
            spec["leaseTransitions"] = (record.transitions + 1) if record else 0
        else:
            acquired = lease.spec.acquire_time if lease is not None and lease.spec else None
            spec["acquireTime"] = acquired.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(
                acquired, datetime) else (acquired or stamp)
            spec["leaseTransitions"] = record.transitions if record else 0
        body: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        try:
            if lease is None:
                self.coordination.create_namespaced_lease(self.namespace, body,
                                                          _request_timeout=TIMEOUT)
            else:
                # resourceVersion makes this a compare-and-swap: a concurrent winner
                # makes ours fail with 409 Conflict.
                body["metadata"]["resourceVersion"] = lease.metadata.resource_version
                self.coordination.replace_namespaced_lease(self.name, self.namespace, body,
                                                           _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status in (409, 422):  # lost the race: someone else wrote first
                return Step.WAIT
            raise
        with self._lock:
            if not self._resigned:
                # The gauge says "leader" before the write gate opens, so no scrape ever
                # shows a write made while it still said standby.
                metrics.leader.set(1)
                # Count from before the request: the lease started no later than that.
                self._renewed_at = started
        metrics.lease_writes.inc()
        return step

    def release(self, drain_s: float = WRITE_DRAIN_S) -> None:
        """Give the lease up (graceful shutdown): stop writing first, then free it.

        A write that passed the gate just before it closed may still be on its way; a
        successor may write as soon as the lease is free, so the lease is freed only once
        those writes have ended (or left to expire if they do not end within ``drain_s``).
        """
        with self._lock:
            self._resigned = True
            held = self._renewed_at is not None
            self._renewed_at = None
            drained = self._no_writes.wait_for(lambda: self._writes_in_flight == 0, drain_s)
        if not held:
            return
        if not drained:
            log.warning("leader election: writes still in flight after %.0f s; lease %s/%s "
                        "left to expire", drain_s, self.namespace, self.name)
            return
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace,
                                                            _request_timeout=TIMEOUT)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = RELEASED_DURATION_S
            lease.spec.renew_time = datetime.now(UTC)
            self.coordination.replace_namespaced_lease(self.name, self.namespace, lease,
                                                       _request_timeout=TIMEOUT)
            metrics.lease_writes.inc()
            log.info("leader election: %s released lease %s/%s", self.identity,
                     self.namespace, self.name)
        except ApiException as exc:  # the next candidate waits the lease out instead
            log.warning("leader election: releasing lease %s/%s failed: %s %s",
                        self.namespace, self.name, exc.status, exc.reason)
