"""The verdict on a group's pods: the pod's own reason, grace for starting pods, order-free."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcg_operator.api.models import CONDITION_REASON_PATTERN
from kcg_operator.workload.pod_health import (
    NO_PODS,
    PODS_NOT_READY,
    PODS_READY,
    PODS_STARTING,
    judge_pods,
)

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
GRACE = 300.0


def stamp(seconds_ago: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(NOW - seconds_ago, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def running(name: str = "consumer", ready: bool = True) -> dict[str, Any]:
    return {"name": name, "ready": ready, "started": True, "restartCount": 0,
            "state": {"running": {"startedAt": stamp(600)}}}


def waiting(reason: str, message: str = "", name: str = "consumer",
            last: dict[str, Any] | None = None) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": name, "ready": False, "started": False, "restartCount": 3,
                          "state": {"waiting": {"reason": reason, "message": message}}}
    if last is not None:
        cs["lastState"] = {"terminated": last}
    return cs


def terminated(reason: str, code: int, name: str = "consumer") -> dict[str, Any]:
    return {"name": name, "ready": False, "restartCount": 1,
            "state": {"terminated": {"reason": reason, "exitCode": code}}}


def pod(name: str = "orders-7d9-abc", *, containers: list[dict[str, Any]] | None = None,
        init: list[dict[str, Any]] | None = None, sidecars: tuple[str, ...] = (),
        ready: bool | None = None, not_ready_for: float = 600.0, phase: str = "Running",
        scheduled: tuple[str, str, str] | None = ("True", "", ""),
        deleting: bool = False) -> dict[str, Any]:
    """A Pod as the API serves it. `ready` defaults to whether every container is ready."""
    containers = [running()] if containers is None else containers
    init = init or []
    if ready is None:
        ready = (all(c.get("ready") for c in containers)
                 and all(c.get("ready") for c in init if c["name"] in sidecars))
    conditions: list[dict[str, Any]] = [
        {"type": "Ready", "status": "True" if ready else "False",
         "lastTransitionTime": stamp(not_ready_for),
         **({} if ready else {"reason": "ContainersNotReady",
                              "message": "containers with unready status: [consumer]"})}]
    if scheduled is not None:
        conditions.append({"type": "PodScheduled", "status": scheduled[0],
                           "reason": scheduled[1], "message": scheduled[2]})
    init_specs = [{"name": c["name"], "image": "i",
                   **({"restartPolicy": "Always"} if c["name"] in sidecars else {})}
                  for c in init]
    meta: dict[str, Any] = {"name": name, "namespace": "shop",
                            "creationTimestamp": stamp(not_ready_for)}
    if deleting:
        meta["deletionTimestamp"] = stamp(1)
    return {
        "metadata": meta,
        "spec": {"initContainers": init_specs,
                 "containers": [{"name": c["name"], "image": "i"} for c in containers]},
        "status": {"phase": phase, "conditions": conditions,
                   "containerStatuses": containers, "initContainerStatuses": init},
    }


def test_all_ready_is_healthy_with_counts() -> None:
    verdict = judge_pods([pod("a"), pod("b")], NOW, GRACE)
    assert (verdict.healthy, verdict.reason, verdict.ready, verdict.total) == (
        True, PODS_READY, 2, 2)
    assert verdict.message == "2/2 pods ready"


def test_no_pods_is_healthy_and_says_so() -> None:
    verdict = judge_pods([], NOW, GRACE)
    assert (verdict.healthy, verdict.reason, verdict.total) == (True, NO_PODS, 0)


def test_image_pull_backoff_names_pod_container_and_kubelet_message() -> None:
    bad = pod(containers=[waiting("ImagePullBackOff", 'Back-off pulling image "x:y"')],
              not_ready_for=5)
    verdict = judge_pods([bad, pod("orders-7d9-ok")], NOW, GRACE)
    assert not verdict.healthy
    assert verdict.reason == "ImagePullBackOff"
    assert verdict.message == (
        'pod orders-7d9-abc container consumer: ImagePullBackOff: Back-off pulling image "x:y"'
        "; 1/2 pods ready")
    assert (verdict.ready, verdict.total, verdict.unhealthy) == (1, 2, 1)


@pytest.mark.parametrize("reason", ["ErrImagePull", "CrashLoopBackOff",
                                    "CreateContainerConfigError", "InvalidImageName"])
def test_a_kubelet_failure_is_reported_at_once_with_its_reason(reason: str) -> None:
    verdict = judge_pods([pod(containers=[waiting(reason, "it broke")], not_ready_for=1)],
                         NOW, GRACE)
    assert (verdict.healthy, verdict.reason) == (False, reason)
    assert verdict.message.startswith(f"pod orders-7d9-abc container consumer: {reason}: it ")


def test_a_crash_loop_after_oom_is_reported_as_oomkilled() -> None:
    cs = waiting("CrashLoopBackOff", "back-off 40s restarting failed container",
                 last={"reason": "OOMKilled", "exitCode": 137})
    verdict = judge_pods([pod(containers=[cs])], NOW, GRACE)
    assert verdict.reason == "OOMKilled"
    assert "exit code 137" in verdict.message and "back-off 40s" in verdict.message


def test_a_terminated_container_is_a_problem_even_with_exit_zero() -> None:
    # restartPolicy Always: a consumer that exits is restarted, so it is not running.
    assert judge_pods([pod(containers=[terminated("OOMKilled", 137)])], NOW, GRACE).reason == (
        "OOMKilled")
    assert judge_pods([pod(containers=[terminated("Completed", 0)])], NOW, GRACE).reason == (
        "Completed")


def test_sidecar_crash_loop_counts_and_is_named_as_sidecar() -> None:
    relay = waiting("CrashLoopBackOff", "back-off 10s", name="relay")
    verdict = judge_pods([pod(init=[relay], sidecars=("relay",), ready=False,
                              not_ready_for=1)], NOW, GRACE)
    assert verdict.reason == "CrashLoopBackOff"
    assert verdict.message.startswith("pod orders-7d9-abc sidecar relay: CrashLoopBackOff")


def test_plain_init_container_that_finished_is_fine_and_one_that_failed_is_not() -> None:
    done = terminated("Completed", 0, name="migrate")
    assert judge_pods([pod(init=[done])], NOW, GRACE).healthy
    failed = terminated("Error", 1, name="migrate")
    verdict = judge_pods([pod(init=[failed], ready=False, not_ready_for=1)], NOW, GRACE)
    assert (verdict.healthy, verdict.reason) == (False, "Error")
    assert verdict.message.startswith("pod orders-7d9-abc init container migrate: Error: exit")


def test_not_ready_is_starting_within_grace_then_pods_not_ready() -> None:
    slow = [running(ready=False)]
    young = judge_pods([pod(containers=slow, not_ready_for=GRACE - 10)], NOW, GRACE)
    assert (young.healthy, young.reason, young.ready, young.total) == (
        True, PODS_STARTING, 0, 1)
    old = judge_pods([pod(containers=slow, not_ready_for=GRACE + 10)], NOW, GRACE)
    assert (old.healthy, old.reason) == (False, PODS_NOT_READY)
    assert old.message.startswith(
        "pod orders-7d9-abc container consumer: PodsNotReady: not ready for 310s (grace 300s)"
        ": running but not ready")


def test_unschedulable_waits_for_grace_then_gives_the_schedulers_message() -> None:
    def pending(age: float) -> dict[str, Any]:
        return pod(containers=[], phase="Pending", ready=False, not_ready_for=age,
                   scheduled=("False", "Unschedulable",
                              "0/1 nodes are available: 1 Insufficient cpu."))

    assert judge_pods([pending(30)], NOW, GRACE).healthy  # an autoscaler may add a node
    verdict = judge_pods([pending(GRACE + 1)], NOW, GRACE)
    assert verdict.reason == "Unschedulable"
    assert verdict.message.startswith(
        "pod orders-7d9-abc: Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.")


def test_a_pod_never_scheduled_is_pods_not_ready_after_grace() -> None:
    stuck = pod(containers=[], phase="Pending", ready=False, scheduled=None,
                not_ready_for=GRACE * 2)
    verdict = judge_pods([stuck], NOW, GRACE)
    assert verdict.reason == PODS_NOT_READY


def test_terminating_and_finished_pods_are_ignored() -> None:
    crashing = [waiting("CrashLoopBackOff")]
    pods = [pod("old", containers=crashing, deleting=True),
            pod("evicted", containers=crashing, phase="Failed"), pod("new")]
    verdict = judge_pods(pods, NOW, GRACE)
    assert (verdict.healthy, verdict.ready, verdict.total) == (True, 1, 1)


def test_the_worst_problem_wins_and_the_others_are_counted() -> None:
    pods = [pod("b-slow", containers=[running(ready=False)], not_ready_for=GRACE * 2),
            pod("c-crash", containers=[waiting("CrashLoopBackOff")]),
            pod("a-pull", containers=[waiting("ErrImagePull")])]
    verdict = judge_pods(pods, NOW, GRACE)
    # Failures the kubelet names come before a pod merely not ready; then by pod name.
    assert verdict.reason == "ErrImagePull" and "pod a-pull" in verdict.message
    assert verdict.unhealthy == 3 and verdict.message.endswith("; 2 more pods unhealthy")


def test_an_odd_reason_never_breaks_the_condition_schema() -> None:
    verdict = judge_pods([pod(containers=[waiting("weird reason!", "x")])], NOW, GRACE)
    assert verdict.reason == PODS_NOT_READY
    long = "x" * 5000
    verdict = judge_pods([pod(containers=[waiting("CrashLoopBackOff", long)])], NOW, GRACE)
    assert len(verdict.message) < 700


# ----------------------------------------------------------------------------- properties

REASONS = ["ContainerCreating", "PodInitializing", "ImagePullBackOff", "ErrImagePull",
           "CrashLoopBackOff", "CreateContainerConfigError", "", "bad reason"]


@st.composite
def container_statuses(draw: st.DrawFn, name: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["running", "waiting", "terminated", "empty"]))
    if kind == "running":
        return running(name, ready=draw(st.booleans()))
    if kind == "waiting":
        last = draw(st.sampled_from([None, {"reason": "OOMKilled", "exitCode": 137},
                                     {"reason": "Error", "exitCode": 1}]))
        return waiting(draw(st.sampled_from(REASONS)), draw(st.text(max_size=20)), name, last)
    if kind == "terminated":
        return terminated(draw(st.sampled_from(["Error", "OOMKilled", "Completed"])),
                          draw(st.sampled_from([0, 1, 137])), name)
    return {"name": name, "ready": False}


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    containers = [draw(container_statuses(f"c{i}")) for i in range(draw(st.integers(0, 3)))]
    init = [draw(container_statuses(f"i{i}")) for i in range(draw(st.integers(0, 2)))]
    sidecars = tuple(c["name"] for c in init if draw(st.booleans()))
    scheduled = draw(st.sampled_from([None, ("True", "", ""),
                                      ("False", "Unschedulable", "no nodes")]))
    return pod(draw(st.sampled_from(["a", "b", "c", "d", "e"])), containers=containers,
               init=init, sidecars=sidecars, ready=draw(st.none() | st.booleans()),
               not_ready_for=draw(st.floats(0, 2 * GRACE)),
               phase=draw(st.sampled_from(["Pending", "Running", "Running", "Failed"])),
               scheduled=scheduled, deleting=draw(st.booleans()))


def _active(p: dict[str, Any]) -> bool:
    return "deletionTimestamp" not in p["metadata"] and p["status"]["phase"] != "Failed"


@settings(max_examples=300, deadline=None)
@given(st.lists(pods(), max_size=6).flatmap(
    lambda g: st.tuples(st.just(g), st.permutations(g))))
def test_the_order_of_the_pods_never_changes_the_verdict(
    pair: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    group, shuffled = pair
    assert judge_pods(shuffled, NOW, GRACE) == judge_pods(group, NOW, GRACE)


@settings(max_examples=300, deadline=None)
@given(st.lists(pods(), max_size=6), st.sampled_from(["c", "i"]), st.text(max_size=10))
def test_a_crash_looping_container_is_never_healthy(
    group: list[dict[str, Any]], where: str, message: str,
) -> None:
    bad = pod("z", containers=[waiting("CrashLoopBackOff", message, name="c0")])
    if where == "i":  # the same in a native sidecar
        bad = pod("z", init=[waiting("CrashLoopBackOff", message, name="relay")],
                  sidecars=("relay",))
    verdict = judge_pods([*group, bad], NOW, GRACE)
    assert not verdict.healthy


@settings(max_examples=300, deadline=None)
@given(st.lists(pods(), max_size=6), st.lists(pods(), max_size=3))
def test_terminating_pods_never_change_the_verdict(
    group: list[dict[str, Any]], extra: list[dict[str, Any]],
) -> None:
    for p in extra:
        p["metadata"]["deletionTimestamp"] = stamp(1)
    assert judge_pods(group + extra, NOW, GRACE) == judge_pods(group, NOW, GRACE)


@settings(max_examples=300, deadline=None)
@given(st.lists(pods(), max_size=6))
def test_counts_and_reasons_are_always_well_formed(group: list[dict[str, Any]]) -> None:
    verdict = judge_pods(group, NOW, GRACE)
    active = [p for p in group if _active(p)]
    assert verdict.total == len(active)
    assert 0 <= verdict.ready <= verdict.total
    assert verdict.unhealthy <= verdict.total
    assert re.match(CONDITION_REASON_PATTERN, verdict.reason)
    assert verdict.healthy == (verdict.unhealthy == 0)
    if verdict.healthy:
        assert verdict.reason in (PODS_READY, PODS_STARTING, NO_PODS)
    else:
        assert verdict.problem is not None and f"pod {verdict.problem.pod}" in verdict.message
    if active and all(p["status"]["conditions"][0]["status"] == "True"
                      and all("running" in c.get("state", {})
                              for c in p["status"]["containerStatuses"])
                      and not p["status"]["initContainerStatuses"] for p in active):
        assert verdict.healthy and verdict.reason == PODS_READY
