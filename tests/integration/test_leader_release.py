"""A leader stopping gracefully frees its Lease only after the writes already past its
write gate have ended, on the real apiserver: a successor may write as soon as the Lease
is free, so freeing it earlier lets two replicas write at once (bench-failover's audit
log caught a status patch landing 3 ms after the release)."""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client

from kcg_operator.leader import LeaderElector, Step

pytestmark = pytest.mark.integration


def _holder(kube: client.ApiClient, namespace: str, name: str) -> str | None:
    lease = client.CoordinationV1Api(kube).read_namespaced_lease(name, namespace)
    return lease.spec.holder_identity if lease.spec else None


def test_the_lease_is_freed_only_after_the_writes_in_flight(
    kube: client.ApiClient, namespace: str
) -> None:
    elector = LeaderElector(kube, namespace, "kcg-release", "leader-a")
    assert elector.try_acquire_or_renew() is Step.ACQUIRE and elector.leading()
    write_open, write_may_end = threading.Event(), threading.Event()
    permits: list[bool] = []

    def write() -> None:
        with elector.writing() as permitted:
            permits.append(permitted)
            write_open.set()
            write_may_end.wait(30)

    writer = threading.Thread(target=write)
    writer.start()
    assert write_open.wait(10) and permits == [True]
    releaser = threading.Thread(target=elector.release)
    releaser.start()
    deadline = time.monotonic() + 10
    while elector.leading() and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the gate's state, which release() closes first
    # The gate is closed: no new write passes it...
    with elector.writing() as permitted:
        assert not permitted
    # ...but the lease stays ours while the write that passed before is on its way.
    releaser.join(2)
    assert releaser.is_alive()
    assert _holder(kube, namespace, "kcg-release") == "leader-a"
    write_may_end.set()
    writer.join(10)
    releaser.join(10)
    assert not releaser.is_alive()
    assert _holder(kube, namespace, "kcg-release") is None


def test_a_write_that_never_ends_leaves_the_lease_to_expire(
    kube: client.ApiClient, namespace: str
) -> None:
    elector = LeaderElector(kube, namespace, "kcg-release", "leader-b")
    assert elector.try_acquire_or_renew() is Step.ACQUIRE
    stuck = threading.Event()

    def write() -> None:
        with elector.writing():
            stuck.wait(30)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        elector.release(drain_s=0.5)
        assert not elector.leading()
        # Not freed: a successor waits the lease out instead of writing beside us.
        assert _holder(kube, namespace, "kcg-release") == "leader-b"
    finally:
        stuck.set()
        writer.join(10)
