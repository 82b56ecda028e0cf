"""Pure parts of the controller: conditions, rebalance compliance, status rendering."""

from __future__ import annotations

from typing import Any

import pytest

from kcg_operator.api.models import KafkaConsumerGroupStatus, parse_kafka_consumer_group
from kcg_operator.conditions import condition
from kcg_operator.controller import Controller
from kcg_operator.reconciler import initial_replicas
from kcg_operator.registry import GroupObject, Reconciled, Registry
from kcg_operator.scaling.collector import GroupSnapshot, Member
from kcg_operator.status import (
    Observed,
    outbox_condition,
    pods_condition,
    pods_event,
    rebalance_condition,
    render_status,
)
from kcg_operator.workload.pod_health import PodHealth

pytestmark = pytest.mark.unit


def _body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kcg.dev/v1alpha1", "kind": "KafkaConsumerGroup",
        "metadata": {"name": "orders", "namespace": "shop", "generation": 3},
        "spec": {"topics": ["orders"], "kafka": {"bootstrapServers": "k:9092"},
                 "template": {"spec": {"containers": [{"name": "a", "image": "i"}]}}, **spec},
    }


def _snap(**kw: Any) -> GroupSnapshot:
    base: dict[str, Any] = {"group_id": "orders", "time_s": 100.0, "broker_ok": True,
                            "partition_counts": {"orders": 2},
                            "offsets": {("orders", 0): (10, 10), ("orders", 1): (5, 5)},
                            "group_type": "CLASSIC", "assignor": "cooperative-sticky",
                            "state": "STABLE",
                            "members": (Member("m-1", "app-1", "/10.0.0.1",
                                               (("orders", 0), ("orders", 1))),)}
    base.update(kw)
    return GroupSnapshot(**base)


HEALTHY = PodHealth(True, "PodsReady", "1/1 pods ready", 1, 1)
PULL = PodHealth(False, "ImagePullBackOff",
                 'pod orders-7d9-abc container consumer: ImagePullBackOff: Back-off pulling '
                 'image "x:y"; 0/1 pods ready', 0, 1, 1)


def test_condition_keeps_transition_time_while_status_holds() -> None:
    first = condition("Ready", True, "Reconciled", "ok", 1, [], now="2026-01-01T00:00:00Z")
    again = condition("Ready", True, "Reconciled", "still ok", 2, [first],
                      now="2026-01-02T00:00:00Z")
    flipped = condition("Ready", False, "TopicNotFound", "gone", 2, [again],
                        now="2026-01-03T00:00:00Z")
    assert again["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert flipped["lastTransitionTime"] == "2026-01-03T00:00:00Z"
    assert condition("X", None, "R", "m", None, [])["status"] == "Unknown"


def test_range_assignor_is_non_compliant_and_names_the_members() -> None:
    kcg = parse_kafka_consumer_group(_body())
    cond = rebalance_condition(kcg, _snap(assignor="range"), [])
    assert (cond["status"], cond["reason"]) == ("False", "WrongAssignor")
    assert "'range'" in cond["message"] and "app-1@/10.0.0.1" in cond["message"]
    assert "cooperative-sticky" in cond["message"]


@pytest.mark.parametrize("snap_kw,status,reason", [
    ({}, "True", "CooperativeSticky"),
    ({"group_type": "CONSUMER", "assignor": "uniform"}, "True", "ServerSideAssignment"),
    ({"members": ()}, "Unknown", "NoMembers"),
    ({"broker_ok": False, "error": "down"}, "Unknown", "BrokerUnreachable"),
])
def test_rebalance_condition_cases(snap_kw: dict[str, Any], status: str, reason: str) -> None:
    cond = rebalance_condition(parse_kafka_consumer_group(_body()), _snap(**snap_kw), [])
    assert (cond["status"], cond["reason"]) == (status, reason)


def test_outbox_condition_follows_ready_pods() -> None:
    assert outbox_condition((2, 2), 1, [])["status"] == "True"
    assert outbox_condition((2, 1), 1, [])["reason"] == "RelaysNotReady"
    assert outbox_condition(None, 1, [])["status"] == "Unknown"


def test_initial_replicas_follow_spec_or_keep_the_scalers_choice() -> None:
    plain = parse_kafka_consumer_group(_body(replicas=3))
    assert initial_replicas(plain, current=7) == 3
    scaled = parse_kafka_consumer_group(_body(scaling={"minReplicas": 2, "maxReplicas": 5}))
    assert initial_replicas(scaled, current=None) == 2
    assert initial_replicas(scaled, current=4) == 4
    assert initial_replicas(scaled, current=9) == 5
    assert initial_replicas(scaled, current=1) == 2


def test_status_is_identical_when_nothing_changes_so_nothing_is_written() -> None:
    obj = _ready_object()
    first = render_status(obj, Observed(_snap(), current=1, ready=1, pods=HEALTHY), [])
    second = render_status(obj, Observed(_snap(time_s=200.0), current=1, ready=1,
                                         pods=HEALTHY), first["conditions"])
    assert first == second
    assert first["observedGeneration"] == 3 and first["totalLag"] == 0
    types = {c["type"]: c["status"] for c in first["conditions"]}
    assert types == {"Ready": "True", "RebalanceCompliant": "True", "LagHealthy": "True",
                     "Scaling": "False", "PodsHealthy": "True", "GroupIdUnique": "True"}
    assert first["health"] == first["lagStatus"] == "OK"
    assert "sasl" not in str(first)


def test_invalid_spec_gets_ready_false_with_the_reason() -> None:
    obj = GroupObject(_body(), None,
                      reconciled=Reconciled(3, False, "InvalidSpec", "spec.topics: add one"))
    status = render_status(obj, None, [])
    assert status["conditions"][0]["reason"] == "InvalidSpec"
    assert status["conditions"][0]["status"] == "False"
    assert status["observedGeneration"] == 3
    assert status["health"] == "InvalidSpec"


def test_a_rebalancing_group_is_not_judged_until_stable() -> None:
    kcg = parse_kafka_consumer_group(_body())
    cond = rebalance_condition(kcg, _snap(state="PREPARING_REBALANCE", assignor=None), [])
    assert (cond["status"], cond["reason"]) == ("Unknown", "Rebalancing")


def test_operator_client_takes_only_auth_settings_from_the_secret() -> None:
    from kcg_operator.scaling.collector import operator_auth

    secret = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
              "sasl.username": "u", "sasl.password": "p",
              "plugin.library.paths": "/tmp/evil.so", "ssl.ca.location": "/etc/shadow"}
    assert operator_auth(secret) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
                                     "sasl.username": "u", "sasl.password": "p"}


def test_objects_sharing_a_group_id_each_see_their_own_topics() -> None:
    snap = _snap(offsets={("orders", 0): (10, 5), ("payments", 0): (7, 7)},
                 partition_counts={"orders": 1, "payments": 1}, missing_topics=("gone",))
    mine = snap.for_topics(["orders", "gone"])
    assert mine.offsets == {("orders", 0): (10, 5)}
    assert mine.partitions == 1 and mine.missing_topics == ("gone",)


# ----------------------------------------------------------------------------- pod health

def _ready_object() -> GroupObject:
    body = _body()
    return GroupObject(body, parse_kafka_consumer_group(body),
                       reconciled=Reconciled(3, True, "Reconciled", "applied", "orders",
                                             "kcg.dev/group=orders"))


def _controller(kube: Any, replicas: tuple[int, int] | None = (1, 0)) -> Controller:
    """A controller whose registry has seen the Deployment with ``replicas``."""
    registry = Registry()
    registry.deployment_seen(("shop", "orders"), replicas)
    return Controller(kube, registry)


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_unhealthy_pods_make_ready_false_and_name_the_reason_in_the_status_column() -> None:
    status = render_status(_ready_object(), Observed(_snap(), current=1, ready=0, pods=PULL), [])
    conds = _conditions(status)
    assert (conds["PodsHealthy"]["status"], conds["PodsHealthy"]["reason"]) == (
        "False", "ImagePullBackOff")
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "ImagePullBackOff")
    assert conds["Ready"]["message"] == PULL.message
    assert status["health"] == "ImagePullBackOff"
    assert status["lagStatus"] == "OK"  # Burrow's verdict stays Burrow's
    KafkaConsumerGroupStatus.model_validate(status)  # what the CRD's schema accepts


def test_kafka_trouble_comes_first_in_ready_and_the_status_column() -> None:
    snap = _snap(broker_ok=False, error="timed out", offsets={}, members=())
    status = render_status(_ready_object(), Observed(snap, current=1, ready=0, pods=PULL), [])
    conds = _conditions(status)
    assert conds["Ready"]["reason"] == "KafkaUnreachable" and status["health"] == (
        "KafkaUnreachable")
    assert conds["PodsHealthy"]["reason"] == "ImagePullBackOff"  # still shown on its own


@pytest.mark.parametrize("verdict,error,replicas,status,reason", [
    (HEALTHY, None, (1, 1), "True", "PodsReady"),
    (PULL, None, (1, 0), "False", "ImagePullBackOff"),
    (None, "403 Forbidden", (1, 0), "Unknown", "PodListFailed"),
    (None, None, None, "Unknown", "NoDeployment"),
    (PodHealth(True, "NoPods", "no pods", 0, 0), None, (0, 0), "True", "ScaledToZero"),
    (PodHealth(True, "NoPods", "no pods", 0, 0), None, (2, 0), "Unknown", "NoPods"),
])
def test_pods_condition_cases(verdict: PodHealth | None, error: str | None,
                              replicas: tuple[int, int] | None, status: str,
                              reason: str) -> None:
    cond = pods_condition(verdict, error, replicas, 3, [])
    assert (cond["type"], cond["status"], cond["reason"]) == ("PodsHealthy", status, reason)


def test_pods_event_only_on_a_change_of_verdict() -> None:
    assert pods_event(False, PULL) == ("Warning", "PodsUnhealthy", PULL.message)
    assert pods_event(True, PULL) is None
    assert pods_event(False, HEALTHY) is None
    recovered = pods_event(True, HEALTHY)
    assert recovered is not None and recovered[:2] == ("Normal", "PodsRecovered")


class _FakeKube:
    """Records the calls evaluate makes; list_pods serves whatever `pods` holds."""

    def __init__(self) -> None:
        self.pods: list[dict[str, Any]] | Exception = []
        self.lists: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, str]] = []
        self.statuses: list[dict[str, Any]] = []
        self.scaled: list[int] = []
        self.leader = True

    def may_write(self) -> bool:
        return self.leader

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self.scaled.append(replicas)

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        self.lists.append((namespace, label_selector))
        if isinstance(self.pods, Exception):
            raise self.pods
        return self.pods

    def event(self, involved: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def apply_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    def retry_events(self) -> int:
        return 0


def _pulling_pod() -> dict[str, Any]:
    return {"metadata": {"name": "orders-7d9-abc", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "consumer", "image": "x:y"}]},
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": "consumer", "ready": False, "state": {"waiting": {
                    "reason": "ImagePullBackOff",
                    "message": 'Back-off pulling image "x:y"'}}}]}}


def _running_pod() -> dict[str, Any]:
    return {"metadata": {"name": "orders-7d9-def", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "consumer", "ready": True,
                                              "state": {"running": {}}}]}}


def test_each_check_lists_the_pods_once_and_events_follow_transitions() -> None:
    kube = _FakeKube()
    ctl = _controller(kube)
    obj, key = _ready_object(), ("shop", "orders")
    kube.pods = [_pulling_pod()]
    ctl.evaluate(key, obj, _snap())
    ctl.evaluate(key, obj, _snap(time_s=115.0))
    assert kube.lists == [("shop", "kcg.dev/group=orders")] * 2  # one LIST per check
    assert [e[:2] for e in kube.events] == [("Warning", "PodsUnhealthy")]  # not per check
    assert kube.events[0][2].startswith(
        'pod orders-7d9-abc container consumer: ImagePullBackOff: Back-off pulling image "x:y"')
    status = kube.statuses[-1]
    assert status["health"] == "ImagePullBackOff"
    assert _conditions(status)["Ready"]["reason"] == "ImagePullBackOff"

    kube.pods = [_running_pod()]
    ctl.evaluate(key, obj, _snap(time_s=130.0))
    assert [e[:2] for e in kube.events] == [("Warning", "PodsUnhealthy"),
                                           ("Normal", "PodsRecovered")]
    status = kube.statuses[-1]
    assert status["health"] == "OK"
    assert _conditions(status)["Ready"]["status"] == "True"
    assert _conditions(status)["PodsHealthy"]["reason"] == "PodsReady"


def test_a_failed_pod_list_leaves_the_rest_of_the_status_alone() -> None:
    from kubernetes.client.exceptions import ApiException

    kube = _FakeKube()
    kube.pods = ApiException(status=403, reason="Forbidden")
    ctl = _controller(kube)
    ctl.evaluate(("shop", "orders"), _ready_object(), _snap())
    conds = _conditions(kube.statuses[-1])
    assert conds["Ready"]["status"] == "True"
    assert (conds["PodsHealthy"]["status"], conds["PodsHealthy"]["reason"]) == (
        "Unknown", "PodListFailed")
    assert "403 Forbidden" in conds["PodsHealthy"]["message"]
    assert not kube.events


def test_a_deployment_whose_pods_are_all_ready_needs_no_pod_list() -> None:
    """At 10 000 groups a LIST per group and check would load the apiserver most: the
    Deployment's own counts (current for its generation) settle a healthy group."""
    kube = _FakeKube()
    ctl = _controller(kube, replicas=(2, 2))
    ctl.registry.deployment_seen(("shop", "orders"), (2, 2), pods=2)
    ctl.evaluate(("shop", "orders"), _ready_object(), _snap())
    assert not kube.lists
    healthy = _conditions(kube.statuses[-1])["PodsHealthy"]
    assert (healthy["reason"], healthy["message"]) == ("PodsReady", "2/2 pods ready")
    # One pod short of ready, or counts of an older generation: the pods are looked at.
    kube.pods = [_pulling_pod()]
    for seen in ((2, 1), 2), ((2, 2), None):
        ctl.registry.deployment_seen(("shop", "orders"), seen[0], pods=seen[1])
        ctl.evaluate(("shop", "orders"), _ready_object(), _snap(time_s=130.0))
    assert len(kube.lists) == 2
    assert _conditions(kube.statuses[-1])["PodsHealthy"]["reason"] == "ImagePullBackOff"


def test_deployment_pods_are_known_once_its_controller_observed_the_spec() -> None:
    from kcg_operator.workload.pod_health import deployment_pods

    body = {"metadata": {"generation": 4}, "status": {"observedGeneration": 4, "replicas": 3}}
    assert deployment_pods(body) == 3
    assert deployment_pods({"metadata": {"generation": 4},
                            "status": {"observedGeneration": 4}}) == 0  # omitted at zero
    assert deployment_pods({"metadata": {"generation": 5},
                            "status": {"observedGeneration": 4, "replicas": 3}}) is None
    assert deployment_pods({"metadata": {"generation": 1}}) is None  # not yet observed
    # Wanting none with none counted (or never counted): none, observed or not.
    assert deployment_pods({"metadata": {"generation": 1}, "spec": {"replicas": 0}}) == 0
    assert deployment_pods({"metadata": {"generation": 5}, "spec": {"replicas": 0},
                            "status": {"observedGeneration": 4}}) == 0
    # Scaled to zero from 3, not yet observed: the 3 may still be there.
    assert deployment_pods({"metadata": {"generation": 5}, "spec": {"replicas": 0},
                            "status": {"observedGeneration": 4, "replicas": 3}}) is None


def test_no_deployment_means_no_pod_list() -> None:
    kube = _FakeKube()
    ctl = _controller(kube, replicas=None)
    ctl.evaluate(("shop", "orders"), _ready_object(), _snap())
    assert not kube.lists
    assert _conditions(kube.statuses[-1])["PodsHealthy"]["reason"] == "NoDeployment"


# ----------------------------------------------------------------------------- one road

def _sample(metric: str, **labels: str) -> float | None:
    from prometheus_client import REGISTRY

    from kcg_operator.metrics import GROUP_REGISTRY

    found = REGISTRY.get_sample_value(metric, labels)
    return found if found is not None else GROUP_REGISTRY.get_sample_value(metric, labels)


def test_status_metrics_and_policy_read_one_lag_per_partition() -> None:
    """A never-committed partition (earliest, log start 4) and a committed one: the status,
    the metrics and the scaling decision show the same lag and seconds behind."""
    from dataclasses import replace

    body = _body(scaling={"minReplicas": 1, "maxReplicas": 4, "lagPerReplica": 5})
    obj = replace(_ready_object(), body=body, kcg=parse_kafka_consumer_group(body),
                  starts_from_earliest=True)
    kube = _FakeKube()
    kube.pods = [_running_pod()]
    ctl = _controller(kube, replicas=(1, 1))
    snap = _snap(offsets={("orders", 0): (10, None), ("orders", 1): (9, 7)},
                 log_starts={("orders", 0): 4})
    ctl.evaluate(("shop", "orders"), obj, snap, {(("orders", 0), 4): 40.0})
    status = kube.statuses[-1]
    assert status["totalLag"] == 6 + 2
    assert status["maxTimeLagSeconds"] == 60.0  # 100 s now - 40 s, the first message's age
    labels = {"namespace": "shop", "name": "orders", "group": "orders"}
    assert _sample("kcg_consumergroup_group_sum_lag", **labels) == 8
    assert _sample("kcg_consumergroup_group_lag", **labels, topic="orders", partition="0") == 6
    assert _sample("kcg_consumergroup_group_lag_seconds", **labels, topic="orders",
                   partition="0") == 60.0
    assert _sample("kcg_consumergroup_group_max_lag_seconds", **labels) == 60.0
    scaling = _conditions(status)["Scaling"]["message"]
    assert "lag 8 over 5/replica" in scaling  # the policy saw the same 8 messages
    # What alerts and dashboards need beside the lag, from the same check.
    assert _sample("kcg_consumergroup_partitions", **labels) == status["partitions"] == 2
    assert _sample("kcg_consumergroup_members", **labels) == len(status["members"]) == 1
    assert _sample("kcg_consumergroup_rebalance_compliant", **labels) == 1
    assert _sample("kcg_consumergroup_partition_status", **labels, topic="orders",
                   partition="1") == 1  # Burrow's number for OK
    assert status["desiredReplicas"] == 2 == kube.scaled[-1]


def test_the_patched_count_holds_until_the_deployment_watch_shows_it() -> None:
    body = _body(scaling={"minReplicas": 1, "maxReplicas": 4, "lagPerReplica": 5})
    obj = GroupObject(body, parse_kafka_consumer_group(body),
                      reconciled=_ready_object().reconciled)
    kube = _FakeKube()
    ctl = _controller(kube, replicas=(1, 1))

    def lagging(t: float) -> GroupSnapshot:  # both partitions progress, 100 behind
        n = int(t)
        return _snap(time_s=t, offsets={("orders", 0): (n + 100, n), ("orders", 1): (n + 100, n)})

    ctl.evaluate(("shop", "orders"), obj, lagging(100.0))
    ctl.evaluate(("shop", "orders"), obj, lagging(115.0))
    assert kube.scaled == [2]  # the second check knew it had already scaled to 2
    assert kube.statuses[-1]["replicas"] == 2
    ctl.registry.deployment_seen(("shop", "orders"), (1, 1))  # someone scaled it back
    ctl.evaluate(("shop", "orders"), obj, lagging(130.0))
    assert kube.scaled == [2, 2]


def _scaled_object(name: str = "orders") -> GroupObject:
    body = _body(scaling={"minReplicas": 1, "maxReplicas": 4, "lagPerReplica": 5})
    body["metadata"]["name"] = name
    return GroupObject(body, parse_kafka_consumer_group(body),
                       reconciled=_ready_object().reconciled)


def test_a_deleted_group_leaves_no_series_behind() -> None:
    from prometheus_client import REGISTRY

    from kcg_operator.metrics import GROUP_REGISTRY

    kube = _FakeKube()
    registry = Registry()
    registry.deployment_seen(("shop", "gone"), (1, 1))
    ctl = Controller(kube, registry)  # type: ignore[arg-type]
    snap = _snap(offsets={("orders", 0): (100, 0), ("orders", 1): (100, 0)})
    ctl.evaluate(("shop", "gone"), _scaled_object("gone"), snap)
    assert kube.scaled, "scaled, so a scale-event series exists too"

    def series() -> list[str]:
        return [s.name for m in (*REGISTRY.collect(), *GROUP_REGISTRY.collect())
                for s in m.samples if s.labels.get("name") == "gone"]

    assert "kcg_scale_events_total" in series() and "kcg_consumergroup_group_lag" in series()
    ctl.pass_once()  # the registry no longer has the object
    assert series() == []
    assert ("shop", "gone") not in ctl.states


def test_a_missing_topic_holds_replicas_says_so_and_warns_once() -> None:
    kube = _FakeKube()
    ctl = _controller(kube, replicas=(3, 3))
    for t in (100.0, 115.0, 130.0):
        ctl.evaluate(("shop", "orders"), _scaled_object(),
                     _snap(time_s=t, offsets={}, partition_counts={}, missing_topics=("orders",),
                           members=()))
    assert kube.scaled == []  # never scaled down (nor up) for a topic it cannot see
    scaling = _conditions(kube.statuses[-1])["Scaling"]
    assert (scaling["status"], scaling["reason"]) == ("False", "TopicNotFound")
    assert "keeping 3 replicas" in scaling["message"]
    assert [e[1] for e in kube.events] == ["TopicNotFound"]


def test_a_wrong_assignor_is_posted_once_per_transition() -> None:
    kube = _FakeKube()
    ctl = _controller(kube)
    for t, assignor in ((100.0, "range"), (115.0, "range"), (130.0, "range"),
                        (145.0, "cooperative-sticky"), (160.0, "range")):
        ctl.evaluate(("shop", "orders"), _ready_object(), _snap(time_s=t, assignor=assignor))
    assert [e[1] for e in kube.events] == ["RebalanceNonCompliant"] * 2


def test_long_lists_in_status_are_capped() -> None:
    members = tuple(Member(f"m-{i}", f"app-{i}", "/10.0.0.1", (("orders", i),))
                    for i in range(60))
    snap = _snap(members=members, assignor="range",
                 offsets={("orders", i): (10, 5) for i in range(20)},
                 partition_counts={"orders": 20})
    statuses = {("orders", i): "STALL" for i in range(20)}
    status = render_status(_ready_object(), Observed(snap, statuses=statuses, current=1,
                                                     ready=1, pods=HEALTHY), [])
    assert len(status["members"]) == 50
    conds = _conditions(status)
    assert conds["RebalanceCompliant"]["message"].count("@/10.0.0.1") == 10
    assert conds["LagHealthy"]["message"].count("=STALL") == 12


def test_a_standby_evaluates_but_writes_nothing_until_it_leads() -> None:
    kube = _FakeKube()
    kube.leader = False
    ctl = _controller(kube)
    obj, key = _ready_object(), ("shop", "orders")
    kube.pods = [_pulling_pod()]
    ctl.evaluate(key, obj, _snap())
    assert (kube.statuses, kube.events, kube.scaled, kube.lists) == ([], [], [], [])

    kube.leader = True  # promoted: the next check writes what it sees
    ctl.evaluate(key, obj, _snap(time_s=115.0))
    assert kube.statuses and kube.statuses[-1]["health"] == "ImagePullBackOff"
    assert [e[:2] for e in kube.events] == [("Warning", "PodsUnhealthy")]


def test_a_new_leader_does_not_rewrite_the_status_the_last_one_left() -> None:
    kube = _FakeKube()
    ctl = _controller(kube, replicas=(1, 1))
    obj, key = _ready_object(), ("shop", "orders")
    kube.pods = [_running_pod()]
    ctl.evaluate(key, obj, _snap())
    written = kube.statuses[-1]
    successor_kube = _FakeKube()
    successor_kube.pods = [_running_pod()]
    successor = _controller(successor_kube, replicas=(1, 1))
    body = {**obj.body, "status": written}
    successor.evaluate(key, GroupObject(body, obj.kcg, reconciled=obj.reconciled), _snap())
    assert successor_kube.statuses == []


def test_a_shared_group_id_is_a_condition_naming_the_others() -> None:
    obj = _ready_object()
    alone = _conditions(render_status(obj, Observed(_snap(), current=1, ready=1), []))
    assert (alone["GroupIdUnique"]["status"], alone["GroupIdUnique"]["reason"]) == (
        "True", "Unique")
    shared = Observed(_snap(), current=1, ready=1, shared_with=("team-b/orders",))
    cond = _conditions(render_status(obj, shared, []))["GroupIdUnique"]
    assert (cond["status"], cond["reason"]) == ("False", "SharedGroupId")
    assert "team-b/orders" in cond["message"] and "spec.groupId" in cond["message"]


def test_refused_credentials_are_named_in_ready() -> None:
    snap = _snap(broker_ok=False, offsets={}, members=(), auth_failed=True,
                 error="authentication failed: SASL authentication error: Authentication "
                       "failed during authentication due to invalid credentials")
    ready = _conditions(render_status(_ready_object(), Observed(snap, current=1, ready=1),
                                      []))["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "KafkaAuthenticationFailed")
    assert "spec.kafka.secretRef" in ready["message"] and "invalid credentials" in ready["message"]


def test_a_replica_that_stops_leading_drops_its_group_metrics() -> None:
    from kcg_operator.metrics import GROUP_REGISTRY

    kube = _FakeKube()
    ctl = _controller(kube, replicas=(1, 1))
    kube.pods = [_running_pod()]
    ctl.evaluate(("shop", "orders"), _ready_object(), _snap())
    labels = {"namespace": "shop", "name": "orders", "group": "orders"}
    assert GROUP_REGISTRY.get_sample_value("kcg_consumergroup_group_sum_lag", labels) == 0
    kube.leader = False
    ctl.demoted()
    assert GROUP_REGISTRY.get_sample_value("kcg_consumergroup_group_sum_lag", labels) is None


def test_a_watch_event_older_than_the_patch_does_not_make_the_decision_twice() -> None:
    body = _body(scaling={"minReplicas": 1, "maxReplicas": 4, "lagPerReplica": 5})
    obj = GroupObject(body, parse_kafka_consumer_group(body),
                      reconciled=_ready_object().reconciled)
    kube = _FakeKube()
    ctl = _controller(kube)
    key = ("shop", "orders")
    ctl.registry.deployment_seen(key, (1, 1), generation=4)

    def lagging(t: float) -> GroupSnapshot:
        n = int(t)
        return _snap(time_s=t, offsets={("orders", 0): (n + 100, n), ("orders", 1): (n + 100, n)})

    ctl.evaluate(key, obj, lagging(100.0))
    assert kube.scaled == [2]
    # Delivered after the patch, sent before it: generation 4, replicas 1.
    ctl.registry.deployment_seen(key, (1, 1), generation=4)
    ctl.evaluate(key, obj, lagging(115.0))
    assert kube.scaled == [2]  # not "Scaled 1→2" again
    ctl.registry.deployment_seen(key, (2, 1), generation=5)  # the patch itself
    ctl.registry.deployment_seen(key, (1, 1), generation=6)  # then someone scales it back
    ctl.evaluate(key, obj, lagging(130.0))
    assert kube.scaled == [2, 2]
