"""librdkafka's admin client in a child process, one per cluster: the operator's road for
the clusters whose settings its own protocol client (`kafka_wire`) does not speak.

librdkafka's admin client has two failure modes that no caller can handle in-process
(both seen here after a broker restart, librdkafka 2.16): its group-coordinator requests
(DescribeGroups, OffsetFetch) stop completing for good, and it aborts the whole process
with `rd_kafka_enq_once_del_source_return: Assertion 'eonce->refcnt > 0'`
(confluentinc/librdkafka#4605) when such a client is replaced or destroyed. So the
client lives in a small child process (`main` below): the operator sends it one sweep
at a time and gets snapshots back. When the child
aborts, stops answering, or reports its client stuck, the operator kills it and starts a
new one on the next sweep; that sweep's groups are reported BrokerUnreachable meanwhile
(replicas held), never lost. Message timestamps are read by the operator's own consumer
(assign only, no coordinator), as before.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Final

from kcg_operator import metrics
from kcg_operator.scaling.collector import ClusterKey, GroupRequest, GroupSnapshot, LagCollector

log = logging.getLogger(__name__)

#: The child gets this long beyond its own worst case (four request rounds) to answer.
ANSWER_GRACE_S: Final = 15.0


@dataclass(frozen=True)
class SweepAnswer:
    """What a child sends back for one sweep."""

    snapshots: dict[str, GroupSnapshot]
    requests_failed: int
    wedged: bool


class _Child:
    """One running child process and the two pipe ends the operator keeps."""

    def __init__(self, timeout_s: float) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                # Not `-m`: the classes it sends must pickle under this module's name.
                [sys.executable, "-c", f"import sys; from {__name__} import main; "
                 "main(sys.argv[1:])", str(to_child_r), str(from_child_w), str(timeout_s)],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL,
                close_fds=True)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.requests = Connection(to_child_w, readable=False)
        self.answers = Connection(from_child_r, writable=False)

    def stop(self) -> int | None:
        """Kill the child (it may be stuck in librdkafka) and reap it."""
        for end in (self.requests, self.answers):
            end.close()  # a child waiting for a request ends on its own
        try:
            return self.proc.wait(1)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            return None


class ContainedLagCollector(LagCollector):
    """A LagCollector whose admin clients run in child processes, one per cluster.

    `sweep` is the only call that crosses; the controller holds one sweep per cluster at a
    time, and a lock per cluster keeps it so for any other caller."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        super().__init__(timeout_s)
        self._children: dict[ClusterKey, _Child] = {}
        self._child_locks: dict[ClusterKey, threading.Lock] = {}

    @property
    def clusters(self) -> int:
        return len(self._children)

    def child_pid(self, key: ClusterKey) -> int | None:
        """The process id of the cluster's child, if one runs."""
        child = self._children.get(key)
        return child.proc.pid if child is not None else None

    def sweep(
        self, key: ClusterKey, groups: Iterable[GroupRequest],
        auth: Mapping[str, str] | None = None,
    ) -> dict[str, GroupSnapshot]:
        requests = list(groups)
        if not requests:
            return {}
        with self._lock:
            lock = self._child_locks.setdefault(key, threading.Lock())
        with lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = _Child(self._timeout)
            problem: str
            try:
                child.requests.send((key, requests, dict(auth) if auth else None))
                if child.answers.poll(4 * self._timeout + ANSWER_GRACE_S):
                    answer: SweepAnswer = child.answers.recv()
                    self.requests_failed += answer.requests_failed
                    if answer.wedged:
                        self._replace(key, "its Kafka client stopped answering")
                    return answer.snapshots
                problem = f"no answer within {4 * self._timeout + ANSWER_GRACE_S:.0f}s"
            except (EOFError, OSError) as exc:
                problem = f"it ended ({type(exc).__name__})"
            self.requests_failed += 1
            status = self._replace(key, problem)
            error = (f"the Kafka client process failed ({problem}, exit status {status}); "
                     "a new one answers the next sweep")
            now = time.time()
            return {g.group_id: GroupSnapshot(g.group_id, now, False, error) for g in requests}

    def _replace(self, key: ClusterKey, why: str) -> int | None:
        """Stop the cluster's child; the next sweep starts a new one."""
        child = self._children.pop(key)
        status = child.stop()
        metrics.kafka_client_restarts.labels(key.bootstrap_servers).inc()
        log.warning("the Kafka client process of %s was replaced: %s (exit status %s)",
                    key.bootstrap_servers, why, status)
        return status

    def close(self) -> None:
        with self._lock:
            children, self._children = self._children, {}
        for child in children.values():
            child.stop()


def _serve(requests: Connection, answers: Connection, timeout_s: float) -> None:
    """The child: one LagCollector, one sweep per request, until the operator goes away."""
    collector = LagCollector(timeout_s)
    while True:
        try:
            key, groups, auth = requests.recv()
        except EOFError:
            return  # the operator closed the pipe or died
        failed_before = collector.requests_failed
        snapshots = collector.sweep(key, groups, auth)
        answers.send(SweepAnswer(snapshots, collector.requests_failed - failed_before,
                                 wedged=key in collector.wedged))
        if key in collector.wedged:
            # Replaced by the operator: exit before librdkafka's teardown can abort.
            os._exit(0)


def main(argv: list[str]) -> None:
    requests_fd, answers_fd, timeout_s = int(argv[0]), int(argv[1]), float(argv[2])
    # Ctrl-C and SIGTERM go to the operator, which ends this process by closing the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _serve(Connection(requests_fd, writable=False), Connection(answers_fd, readable=False),
           timeout_s)
    # Skip librdkafka's teardown: the process is ending anyway.
    os._exit(0)

