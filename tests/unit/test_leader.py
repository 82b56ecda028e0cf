"""Leader election's decision (kcg_operator.leader.next_step): when a replica may take the
lease, judged only by its own clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kcg_operator.leader import LeaseRecord, Sighting, Step, next_step

OTHER = LeaseRecord(holder="pod-a_1", duration_s=6.0, renew_time="t1", transitions=3)


def test_a_missing_or_released_lease_is_taken_at_once() -> None:
    assert next_step(None, "pod-b_2", None, now=0.0) is Step.ACQUIRE
    released = LeaseRecord(holder=None, duration_s=1.0, renew_time="t9", transitions=3)
    assert next_step(released, "pod-b_2", None, now=0.0) is Step.ACQUIRE


def test_the_holder_renews() -> None:
    assert next_step(OTHER, "pod-a_1", None, now=0.0) is Step.RENEW


def test_a_lease_first_seen_now_runs_its_whole_duration_from_now() -> None:
    # Even if the holder wrote it long ago by its clock: times from another host are not
    # compared with ours.
    assert next_step(OTHER, "pod-b_2", None, now=1000.0) is Step.WAIT
    seen = Sighting(OTHER, seen_at=1000.0)
    assert next_step(OTHER, "pod-b_2", seen, now=1005.9) is Step.WAIT
    assert next_step(OTHER, "pod-b_2", seen, now=1006.0) is Step.ACQUIRE


def test_a_renewal_restarts_the_wait() -> None:
    seen = Sighting(OTHER, seen_at=0.0)
    renewed = LeaseRecord("pod-a_1", 6.0, "t2", 3)
    assert next_step(renewed, "pod-b_2", seen, now=10.0) is Step.WAIT


@given(duration=st.floats(1.0, 60.0), seen_at=st.floats(0.0, 1e6), waited=st.floats(0.0, 120.0))
def test_a_live_lease_is_never_taken_before_its_duration_has_passed_on_our_clock(
        duration: float, seen_at: float, waited: float) -> None:
    record = LeaseRecord("pod-a_1", duration, "t1", 0)
    step = next_step(record, "pod-b_2", Sighting(record, seen_at), now=seen_at + waited)
    assert step is (Step.ACQUIRE if waited >= duration else Step.WAIT)
