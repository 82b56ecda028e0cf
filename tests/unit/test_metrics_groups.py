"""The per-group gauges: samples made at scrape time from each group's last figures."""

from __future__ import annotations

import dataclasses
import urllib.request

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kcg_operator import metrics
from kcg_operator.metrics import GroupFigures, GroupGauges, PartitionFigures, merged

pytestmark = pytest.mark.unit

LABELS = ("shop", "orders", "orders-v1")


def _scrape(gauges: GroupGauges) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry()
    registry.register(gauges)
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _series(name: str, **extra: str) -> tuple[str, frozenset[tuple[str, str]]]:
    labels = dict(zip(("namespace", "name", "group"), LABELS, strict=True), **extra)
    return name, frozenset(labels.items())


def test_a_scrape_shows_each_partition_and_each_known_group_figure() -> None:
    gauges = GroupGauges()
    gauges.update(LABELS, GroupFigures(
        partitions=(PartitionFigures("orders", 0, 7, 1.5, 1),
                    PartitionFigures("orders", 1, 0, None, None)),
        total_lag=7, current=2, slo_seconds=30.0))
    got = _scrape(gauges)
    p0, p1 = {"topic": "orders", "partition": "0"}, {"topic": "orders", "partition": "1"}
    assert got[_series("kcg_consumergroup_group_lag", **p0)] == 7
    assert got[_series("kcg_consumergroup_group_lag", **p1)] == 0
    assert got[_series("kcg_consumergroup_group_lag_seconds", **p0)] == 1.5
    assert got[_series("kcg_consumergroup_partition_status", **p0)] == 1
    # Unknown is absent, never a made-up 0.
    assert _series("kcg_consumergroup_group_lag_seconds", **p1) not in got
    assert _series("kcg_consumergroup_partition_status", **p1) not in got
    assert _series("kcg_desired_replicas") not in got
    assert got[_series("kcg_consumergroup_group_sum_lag")] == 7
    assert got[_series("kcg_current_replicas")] == 2
    assert got[_series("kcg_consumergroup_max_time_lag_target_seconds")] == 30.0


def test_an_unanswered_check_keeps_the_last_figures_and_a_new_topic_drops_the_old() -> None:
    gauges = GroupGauges()
    gauges.update(LABELS, GroupFigures(partitions=(PartitionFigures("old", 0, 3, 2.0, 1),),
                                       total_lag=3, members=1, slo_seconds=30.0))
    gauges.update(LABELS, GroupFigures())  # Kafka did not answer; maxTimeLagSeconds removed
    got = _scrape(gauges)
    assert got[_series("kcg_consumergroup_group_lag", topic="old", partition="0")] == 3
    assert got[_series("kcg_consumergroup_members")] == 1
    assert _series("kcg_consumergroup_max_time_lag_target_seconds") not in got
    gauges.update(LABELS, GroupFigures(partitions=(PartitionFigures("new", 0, 0, 0.0, 1),)))
    got = _scrape(gauges)
    assert _series("kcg_consumergroup_group_lag", topic="old", partition="0") not in got
    assert got[_series("kcg_consumergroup_group_lag", topic="new", partition="0")] == 0


def test_a_forgotten_group_has_no_series_and_the_exposition_stays_valid() -> None:
    gauges = GroupGauges()
    gauges.update(LABELS, GroupFigures(partitions=(PartitionFigures("t", 0, 1, 1.0, 2),),
                                       total_lag=1))
    other = ("shop", "payments", "payments")
    gauges.update(other, GroupFigures(total_lag=5))
    gauges.forget(LABELS)
    registry = CollectorRegistry()
    registry.register(gauges)
    text = generate_latest(registry).decode()
    assert 'name="orders"' not in text
    assert 'kcg_consumergroup_group_sum_lag{group="payments",name="payments"' in text
    # One HELP/TYPE per family, however many groups there are.
    assert text.count("# TYPE kcg_consumergroup_group_sum_lag gauge") == 1


def test_registering_twice_is_refused_like_a_duplicate_metric() -> None:
    registry = CollectorRegistry()
    registry.register(GroupGauges())
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(GroupGauges())


_maybe_int = st.none() | st.integers(0, 10**6)
_figures = st.builds(
    GroupFigures,
    partitions=st.lists(st.builds(PartitionFigures, st.sampled_from(["a", "b"]),
                                  st.integers(0, 3), st.integers(0, 100),
                                  st.none() | st.floats(0, 1e4), st.none() | st.integers(1, 6)),
                        max_size=3).map(tuple),
    total_lag=_maybe_int, members=_maybe_int, current=_maybe_int, desired=_maybe_int,
    slo_seconds=st.none() | st.floats(1, 100), expected_relays=_maybe_int,
)


@given(_figures, _figures, st.booleans())
def test_merged_takes_every_known_figure_and_keeps_only_the_unknown(
    previous: GroupFigures, latest: GroupFigures, relays_known: bool
) -> None:
    out = merged(previous, latest, relays_known)
    for field in dataclasses.fields(GroupFigures):
        mine, theirs, old = (getattr(x, field.name) for x in (out, latest, previous))
        if field.name == "slo_seconds":
            assert mine == theirs  # from the spec: never kept
        elif field.name == "expected_relays":
            assert mine == (theirs if relays_known else old)
        elif field.name == "partitions":
            assert mine == (theirs or old)
        else:
            assert mine == (old if theirs is None else theirs)


def _samples(text: str) -> set[tuple[str, frozenset[tuple[str, str]], float]]:
    out = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.add((sample.name, frozenset(sample.labels.items()), sample.value))
    return out


_label = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                 max_size=8)


@given(st.dictionaries(st.tuples(_label, _label, _label), _figures, max_size=4))
def test_the_direct_exposition_has_the_samples_prometheus_client_would_write(
    groups: dict[tuple[str, str, str], GroupFigures]
) -> None:
    """/metrics writes the groups' gauges itself (fast at 10 000 groups): a label with
    quotes, backslashes or newlines, or any figure, must read back as the client's would."""
    gauges = GroupGauges()
    for labels, figures in groups.items():
        gauges.update(labels, figures)
    registry = CollectorRegistry()
    registry.register(gauges)
    direct = gauges.exposition()
    assert _samples(direct) == _samples(generate_latest(registry).decode())
    # Byte for byte, so a script that greps the text finds what it found before.
    assert direct == generate_latest(registry).decode()
    # One HELP/TYPE per family, however many groups.
    assert direct.count("# TYPE kcg_consumergroup_group_lag gauge") == 1


def test_metrics_endpoint_serves_the_process_metrics_then_every_group() -> None:
    metrics.groups.update(("shop", "served", "served-v1"), GroupFigures(
        partitions=(PartitionFigures("t", 0, 7, 1.5, 1),), total_lag=7))
    server = metrics.serve(0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            kind = answer.headers["Content-Type"]
            text = answer.read().decode()
    finally:
        server.shutdown()
        metrics.groups.forget(("shop", "served", "served-v1"))
    assert kind.startswith("text/plain; version=0.0.4")
    got = _samples(text)
    labels = {"namespace": "shop", "name": "served", "group": "served-v1"}
    assert ("kcg_consumergroup_group_sum_lag", frozenset(labels.items()), 7.0) in got
    assert ("kcg_consumergroup_group_lag", frozenset({**labels, "topic": "t",
                                                      "partition": "0"}.items()), 7.0) in got
    assert any(name == "kcg_groups" for name, _, _ in got)  # the process's own metrics
