"""`kubectl kcg describe`'s pure parts: the JSON document and the table drawn from it."""

from __future__ import annotations

from typing import Any

import pytest

from kcg_operator.api.models import parse_kafka_consumer_group
from kcg_operator.kubectl_plugin import (
    Frame,
    Target,
    frame_json,
    parser,
    render_table,
)
from kcg_operator.scaling import lag as lagmath
from kcg_operator.scaling.collector import ClusterKey, GroupSnapshot, Member

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
BODY: dict[str, Any] = {
    "apiVersion": "kcg.dev/v1alpha1",
    "kind": "KafkaConsumerGroup",
    "metadata": {"name": "orders", "namespace": "shop"},
    "spec": {
        "groupId": "orders-g",
        "topics": ["orders"],
        "kafka": {"bootstrapServers": "kafka:9092"},
        "template": {"spec": {"containers": [{"name": "c", "image": "app:1"}]}},
    },
    "status": {
        "totalLag": 140,
        "maxTimeLagSeconds": 30.0,
        "lagStatus": "ERR",
        "replicas": 2,
        "desiredReplicas": 3,
        "assignor": "cooperative-sticky",
        "conditions": [
            {
                "type": "LagHealthy",
                "status": "False",
                "reason": "LagErr",
                "message": "lag 140 messages, 30.0s behind",
                "lastTransitionTime": "2027-01-15T07:59:00Z",
            }
        ],
    },
}
TARGET = Target(
    "shop",
    "orders",
    BODY,
    parse_kafka_consumer_group(BODY),
    ClusterKey.of("kafka:9092"),
    None,
    from_earliest=True,
)
MEMBERS = (
    Member("m-1", "app", "/10.0.0.1", (("orders", 0), ("orders", 1), ("other", 0))),
    Member("m-0", "app", "/10.0.0.2", (("orders", 2),)),
)


def _frame(snap: GroupSnapshot, statuses: dict[tuple[str, int], str] | None = None) -> Frame:
    lags = lagmath.partition_lags(
        snap.offsets,
        now_s=snap.time_s,
        log_starts=snap.log_starts,
        from_earliest=True,
        produced_at={(("orders", 0), 10): NOW - 30.0},
    )
    return Frame(TARGET, snap, lags, statuses or {}, samples=3, window_seconds=2.04)


def _snap(**changes: Any) -> GroupSnapshot:
    snap = GroupSnapshot(
        "orders-g",
        NOW,
        True,
        offsets={("orders", 0): (100, 10), ("orders", 1): (100, 100), ("orders", 2): (50, None)},
        partition_counts={"orders": 3},
        log_starts={("orders", 2): 0},
        state="STABLE",
        group_type="CLASSIC",
        assignor="cooperative-sticky",
        members=MEMBERS,
    )
    for key, value in changes.items():
        setattr(snap, key, value)
    return snap


def test_the_json_document_has_stable_keys_and_the_operators_numbers() -> None:
    doc = frame_json(
        _frame(_snap(), {("orders", 0): "STALL", ("orders", 1): "OK", ("orders", 2): "OK"})
    )
    assert list(doc) == [
        "namespace",
        "name",
        "groupId",
        "bootstrapServers",
        "time",
        "brokerOk",
        "error",
        "missingTopics",
        "group",
        "totalLag",
        "maxSecondsBehind",
        "status",
        "partitions",
        "operator",
    ]
    assert doc["time"] == "2027-01-15T08:00:00Z"
    assert doc["group"]["state"] == "STABLE" and doc["group"]["protocol"] == "classic"
    # Members in a stable order, their assignment narrowed to spec.topics.
    assert [(m["memberId"], m["assignment"]) for m in doc["group"]["members"]] == [
        ("m-0", [{"topic": "orders", "partition": 2}]),
        ("m-1", [{"topic": "orders", "partition": 0}, {"topic": "orders", "partition": 1}]),
    ]
    p0, p1, p2 = doc["partitions"]
    assert p0 == {
        "topic": "orders",
        "partition": 0,
        "committedOffset": 10,
        "position": 10,
        "endOffset": 100,
        "lag": 90,
        "secondsBehind": 30.0,
        "status": "STALL",
        "memberId": "m-1",
        "clientId": "app",
        "host": "/10.0.0.1",
    }
    assert (p1["lag"], p1["secondsBehind"]) == (0, 0.0)
    # Never committed, from earliest: the whole log waits; its age was not read: unknown.
    assert (p2["committedOffset"], p2["position"], p2["lag"], p2["secondsBehind"]) == (
        None,
        0,
        50,
        None,
    )
    assert doc["totalLag"] == 140 and doc["maxSecondsBehind"] == 30.0
    assert doc["status"] == {"group": "ERR", "samples": 3, "windowSeconds": 2.0}
    assert doc["operator"] == {
        "totalLag": 140,
        "maxTimeLagSeconds": 30.0,
        "lagStatus": "ERR",
        "lagMessage": "lag 140 messages, 30.0s behind",
        "assignor": "cooperative-sticky",
        "replicas": 2,
        "desiredReplicas": 3,
        "lastScaleTime": None,
    }


def test_the_table_shows_what_the_document_says() -> None:
    text = render_table(frame_json(_frame(_snap(), {("orders", 0): "STALL"})))
    lines = text.splitlines()
    assert lines[0] == "Name:        shop/orders"
    assert (
        "State:       STABLE   protocol classic   assignor cooperative-sticky   members 2" in lines
    )
    assert "Lag:         140 messages on 2 of 3 partitions, 30.0 s behind" in lines
    assert "Status:      ERR (Burrow's rules over this command's 3 samples in 2.0 s)" in lines
    assert "Operator:    ERR: lag 140 messages, 30.0s behind" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("TOPIC"))
    assert lines[header].split() == [
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "SECONDS-BEHIND",
        "STATUS",
        "CONSUMER-ID",
        "HOST",
        "CLIENT-ID",
    ]
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert rows[0] == ["orders", "0", "10", "100", "90", "30.0", "STALL", "m-1", "/10.0.0.1", "app"]
    # '-' for what is not known: never committed, age not read, no verdict.
    assert rows[2] == ["orders", "2", "-", "50", "50", "-", "-", "m-0", "/10.0.0.2", "app"]
    assert lines[-3].split() == ["CONSUMER-ID", "HOST", "CLIENT-ID", "#PARTITIONS"]
    assert lines[-1].split() == ["m-1", "/10.0.0.1", "app", "2"]


def test_an_unreachable_broker_says_so_and_shows_no_numbers() -> None:
    snap = GroupSnapshot("orders-g", NOW, False, "metadata: timed out")
    doc = frame_json(Frame(TARGET, snap, {}, {}, samples=0, window_seconds=0.0))
    assert (doc["brokerOk"], doc["error"], doc["totalLag"], doc["partitions"]) == (
        False,
        "metadata: timed out",
        None,
        [],
    )
    assert (
        render_table(doc).splitlines()[-1] == "Error:       Kafka did not answer: "
        "metadata: timed out"
    )


@pytest.mark.parametrize(
    ("state", "owned"),
    [
        ("STABLE", {("orders", 0), ("orders", 1), ("other", 0), ("orders", 2)}),
        ("PREPARING_REBALANCE", None),  # mid-rebalance every owner counts as alive
        ("EMPTY", set()),  # no members: every partition's consumer is gone (STOP)
    ],
)
def test_owners_count_as_alive_as_the_controller_counts_them(
    state: str,
    owned: set[tuple[str, int]] | None,
) -> None:
    assert _snap(state=state).owned_partitions() == owned


def test_the_help_says_where_the_status_comes_from_and_hides_the_frame_limit() -> None:
    describe = parser()._subparsers._group_actions[0].choices["describe"]  # type: ignore[union-attr]
    text = describe.format_help()
    assert "over THIS command's" in text and "--samples" in text and "--interval" in text
    assert "--frames" not in text
    args = parser().parse_args(
        ["describe", "orders", "-n", "shop", "-o", "json", "-w", "--frames", "2"]
    )
    assert (args.namespace, args.output, args.watch, args.frames) == ("shop", "json", True, 2)


def test_one_sample_judges_nothing() -> None:
    """A one-commit window can only say OK: the plugin shows no verdict instead."""
    frame = _frame(_snap(), {("orders", 0): "OK", ("orders", 1): "OK", ("orders", 2): "OK"})
    doc = frame_json(Frame(frame.target, frame.snap, frame.lags, frame.statuses, 1, 0.0))
    assert doc["status"]["group"] is None
    assert {p["status"] for p in doc["partitions"]} == {None}
    assert "Status:      - (not judged: 1 sample; use --samples 2 or more, or --watch)" in (
        render_table(doc).splitlines()
    )
