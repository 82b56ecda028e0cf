"""`kubectl kcg describe NAME`: one KafkaConsumerGroup's partitions, as Kafka has them now.

Installed as the ``kubectl-kcg`` executable, so kubectl runs it as a plugin. It reads the
KafkaConsumerGroup with the user's kubeconfig, then asks Kafka directly, through the
operator's own code, so its numbers are the operator's numbers:

- offsets, members and the assignor: :class:`WireLagCollector.sweep
  <kcg_operator.scaling.kafka_wire.WireLagCollector>` (the snapshot the operator's
  rebalance-compliance check reads), with the credentials of the Secret named by
  ``spec.kafka.secretRef`` passed the way the operator passes them;
- lag and seconds behind: :func:`lag.partition_lags <kcg_operator.scaling.lag>`, with the
  timestamp of the first unconsumed message of each partition
  (:meth:`LagCollector.produced_at`), the operator's convention for a message's
  production time;
- Burrow's status: :class:`health.CommitWindow <kcg_operator.scaling.health>`, fed like
  the operator feeds it, from the plugin's own samples (``--samples``, ``--interval``).

Everything is gathered into one :class:`Frame`; :func:`frame_json` turns it into the
stable ``-o json`` document and :func:`render_table` turns that document into the text a
person reads, so both outputs always agree.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from kcg_operator.api.models import (
    GROUP,
    PLURAL,
    VERSION,
    InvalidKafkaConsumerGroup,
    KafkaConsumerGroup,
    parse_kafka_consumer_group,
)
from kcg_operator.scaling import health
from kcg_operator.scaling import lag as lagmath
from kcg_operator.scaling.collector import (
    ClusterKey,
    GroupRequest,
    GroupSnapshot,
    LagCollector,
    Member,
)
from kcg_operator.scaling.kafka_wire import WireLagCollector
from kcg_operator.scaling.lag import PartitionKey, PartitionLag
from kcg_operator.scaling.timelag import OffsetTimeTable
from kcg_operator.workload.consumer_config import (
    DEFAULT_PROPERTIES,
    ConsumerConfig,
    ConsumerConfigError,
    build_consumer_config,
)

PROG = "kubectl kcg"
DEFAULT_SAMPLES = 3
DEFAULT_INTERVAL_SECONDS = 1.0
#: Clears the terminal and homes the cursor before a --watch frame (as `watch` does).
CLEAR = "\x1b[H\x1b[2J"

DESCRIBE_HELP = f"""\
Show one KafkaConsumerGroup's partitions as Kafka has them now: per partition the
committed offset, end offset, lag, seconds behind, Burrow status and the member that
owns it, plus the group's state, protocol and assignor.

The KafkaConsumerGroup is read with your kubeconfig (--kubeconfig, --context,
--namespace as kubectl takes them); Kafka is asked directly at spec.kafka.bootstrapServers,
with the credentials of the Secret named by spec.kafka.secretRef when there is one, through
the operator's own code, so the numbers are computed the way the operator computes them.

Columns:
  CURRENT-OFFSET  the group's committed offset; '-' where it never committed (as in
                  kafka-consumer-groups). LAG there follows the operator's rule: the
                  whole retained log with auto.offset.reset=earliest, 0 with latest.
  SECONDS-BEHIND  now minus the timestamp of the first unconsumed message (the message
                  at the group's position); 0 when nothing waits.
  STATUS          Burrow's verdict (OK, WARN, STOP, STALL, REWIND) over THIS command's
                  own samples: --samples sweeps, --interval seconds apart (default
                  {DEFAULT_SAMPLES}, {DEFAULT_INTERVAL_SECONDS:g} s apart), judged by the
                  operator's rules; '-' with --samples 1 (one sample judges nothing).
                  A one-shot call sees only that short window; with --watch the window
                  grows with every frame (up to Burrow's 10 commits). The operator's own
                  verdict, over its longer window, is shown beside it ("operator:").
  CONSUMER-ID     the member that owns the partition now ('-': nobody).

With --watch the picture is redrawn every --interval seconds until Ctrl-C; with
-o json --watch one JSON document per line is printed per frame.
"""


# --------------------------------------------------------------------------- arguments


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=PROG, description="kcg-operator's kubectl plugin.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    describe = commands.add_parser(
        "describe", help="per-partition lag, seconds behind, Burrow status and owner",
        description=DESCRIBE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    describe.add_argument("name", metavar="NAME", help="the KafkaConsumerGroup's name")
    describe.add_argument("-n", "--namespace",
                          help="its namespace (default: the context's, else 'default')")
    describe.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, "
                          "then ~/.kube/config)")
    describe.add_argument("--context", help="kubeconfig context (default: the current one)")
    describe.add_argument("-o", "--output", choices=("table", "json"), default="table",
                          help="table (default) or json (stable keys)")
    describe.add_argument("-w", "--watch", action="store_true",
                          help="redraw every --interval seconds until Ctrl-C")
    describe.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_SECONDS,
                          help="seconds between samples and between --watch frames "
                          f"(default {DEFAULT_INTERVAL_SECONDS:g})")
    describe.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                          help="sweeps the STATUS column is judged over before the first "
                          f"frame (default {DEFAULT_SAMPLES}; 1 shows the offsets at once, "
                          "without STATUS)")
    describe.add_argument("--request-timeout", type=float, default=10.0,
                          help="seconds to wait for each Kafka request (default 10)")
    # Stops --watch after this many frames: for tests and scripts, not for people.
    describe.add_argument("--frames", type=int, default=0, help=argparse.SUPPRESS)
    return top


# --------------------------------------------------------------------------- gathering


@dataclass(frozen=True)
class Target:
    """What the KafkaConsumerGroup says about where its group lives."""

    namespace: str
    name: str
    body: Mapping[str, Any]
    kcg: KafkaConsumerGroup
    cluster: ClusterKey
    auth: Mapping[str, str] | None
    from_earliest: bool


@dataclass(frozen=True)
class Frame:
    """One picture of the group: the last sweep, its lags and Burrow's verdicts."""

    target: Target
    snap: GroupSnapshot
    lags: Mapping[PartitionKey, PartitionLag]
    statuses: Mapping[PartitionKey, str]
    samples: int  # sweeps the verdicts were judged over
    window_seconds: float  # from the first of them to this one


@dataclass
class Sampler:
    """Sweeps one group and keeps what Burrow's rules need between sweeps.

    The commit windows are fed exactly as the operator's controller feeds them: a sweep
    records a commit when the offset moved or a live member owns the partition, with
    ownership known only while the group is Stable.
    """

    target: Target
    collector: LagCollector
    windows: dict[PartitionKey, health.CommitWindow] = field(default_factory=dict)
    history: dict[PartitionKey, OffsetTimeTable] = field(default_factory=dict)
    samples: int = 0
    first_time: float | None = None

    def sweep(self) -> GroupSnapshot:
        kcg = self.target.kcg
        request = GroupRequest(kcg.group_id, tuple(kcg.spec.topics))
        snap = self.collector.sweep(self.target.cluster, [request], auth=self.target.auth)
        return snap[kcg.group_id].for_topics(kcg.spec.topics)

    def sample(self, read_timestamps: bool = True) -> Frame:
        snap = self.sweep()
        if not snap.broker_ok:
            return Frame(self.target, snap, {}, {}, self.samples, self._span(snap.time_s))
        for tp, (end, _) in snap.offsets.items():
            self.history.setdefault(tp, OffsetTimeTable()).add(end, snap.time_s)
        history = {tp: list(table.points) for tp, table in self.history.items()}
        stamps: Mapping[tuple[PartitionKey, int], float] = {}
        if read_timestamps:
            # Every waiting position's own timestamp (no history stands in for it here):
            # the operator reads the same message for a backlog older than its history.
            wanted = lagmath.positions_to_read(
                snap.offsets, log_starts=snap.log_starts,
                from_earliest=self.target.from_earliest)
            if wanted:
                stamps = self.collector.produced_at(self.target.cluster, wanted,
                                                    auth=self.target.auth)
        lags = lagmath.partition_lags(
            snap.offsets, now_s=snap.time_s, log_starts=snap.log_starts,
            from_earliest=self.target.from_earliest, history=history, produced_at=stamps)
        owned = snap.owned_partitions()
        statuses: dict[PartitionKey, str] = {}
        for tp, p in lags.items():
            window = self.windows.setdefault(tp, health.CommitWindow())
            window.record(p.committed, p.end, snap.time_s,
                          owner_alive=owned is None or tp in owned)
            statuses[tp] = window.status(p.lag, snap.time_s)
        self.samples += 1
        if self.first_time is None:
            self.first_time = snap.time_s
        return Frame(self.target, snap, lags, statuses, self.samples,
                     self._span(snap.time_s))

    def _span(self, now: float) -> float:
        return 0.0 if self.first_time is None else max(0.0, now - self.first_time)


def owners(members: Sequence[Member]) -> dict[PartitionKey, Member]:
    return {tp: m for m in members for tp in m.assigned}


# --------------------------------------------------------------------------- output


def _rfc3339(time_s: float) -> str:
    return datetime.fromtimestamp(time_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _operator_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator last published in the object's status, as it wrote it."""
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []
                  if isinstance(c, Mapping)}
    lag_healthy = conditions.get("LagHealthy") or {}
    return {
        "totalLag": status.get("totalLag"),
        "maxTimeLagSeconds": status.get("maxTimeLagSeconds"),
        "lagStatus": status.get("lagStatus"),
        "lagMessage": lag_healthy.get("message"),
        "assignor": status.get("assignor"),
        "replicas": status.get("replicas"),
        "desiredReplicas": status.get("desiredReplicas"),
        "lastScaleTime": status.get("lastScaleTime"),
    }


def frame_json(frame: Frame) -> dict[str, Any]:
    """The ``-o json`` document: stable keys, null for what is not known."""
    target, snap = frame.target, frame.snap
    by_partition = owners(snap.members)
    # One sample is a one-commit window: Burrow's rules can only say OK, which would
    # claim health nobody judged.
    statuses = frame.statuses if frame.samples >= health.MOVEMENT_COMMITS else {}
    partitions = []
    for tp in sorted(frame.lags):
        p = frame.lags[tp]
        owner = by_partition.get(tp)
        partitions.append({
            "topic": tp[0], "partition": tp[1],
            "committedOffset": p.committed, "position": p.position, "endOffset": p.end,
            "lag": p.lag, "secondsBehind": _seconds(p.seconds),
            "status": statuses.get(tp),
            "memberId": owner.member_id if owner else None,
            "clientId": owner.client_id if owner else None,
            "host": owner.host if owner else None,
        })
    wanted = set(target.kcg.spec.topics)
    return {
        "namespace": target.namespace,
        "name": target.name,
        "groupId": target.kcg.group_id,
        "bootstrapServers": target.cluster.bootstrap_servers,
        "time": _rfc3339(snap.time_s),
        "brokerOk": snap.broker_ok,
        "error": snap.error,
        "missingTopics": list(snap.missing_topics),
        "group": {
            "state": snap.state,
            "protocol": snap.group_type.lower() if snap.group_type else None,
            "assignor": snap.assignor,
            "members": [
                {"memberId": m.member_id, "clientId": m.client_id, "host": m.host,
                 "assignment": [{"topic": t, "partition": n} for t, n in sorted(m.assigned)
                                if t in wanted]}
                for m in sorted(snap.members, key=lambda m: m.member_id)
            ],
        },
        "totalLag": lagmath.total(frame.lags) if snap.broker_ok else None,
        "maxSecondsBehind": _seconds(lagmath.max_seconds(frame.lags)),
        "status": {
            "group": health.group_status(statuses.values()) if statuses else None,
            "samples": frame.samples,
            "windowSeconds": round(frame.window_seconds, 1),
        },
        "partitions": partitions,
        "operator": _operator_view(target.body),
    }


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells]


def render_table(doc: Mapping[str, Any]) -> str:
    """The human picture of one ``-o json`` document: a header block, then a table like
    kafka-consumer-groups --describe with SECONDS-BEHIND and STATUS added."""
    group, op, status = doc["group"], doc["operator"], doc["status"]
    lines = [
        f"Name:        {doc['namespace']}/{doc['name']}",
        f"Group:       {doc['groupId']} on {doc['bootstrapServers']}",
        f"Time:        {doc['time']}",
    ]
    if not doc["brokerOk"]:
        lines.append(f"Error:       Kafka did not answer: {doc['error']}")
        return "\n".join(lines) + "\n"
    lines.append(f"State:       {_cell(group['state'])}   protocol {_cell(group['protocol'])}"
                 f"   assignor {_cell(group['assignor'])}   members {len(group['members'])}")
    waiting = sum(1 for p in doc["partitions"] if p["lag"] > 0)
    behind = doc["maxSecondsBehind"]
    lines.append(f"Lag:         {doc['totalLag']} messages on {waiting} of "
                 f"{len(doc['partitions'])} partitions, "
                 + ("seconds behind unknown" if behind is None else f"{behind} s behind"))
    samples = status["samples"]
    if status["group"] is None:
        lines.append(f"Status:      - (not judged: {samples} sample; use --samples 2 or more, "
                     "or --watch)")
    else:
        lines.append(f"Status:      {status['group']} (Burrow's rules over this command's "
                     f"{samples} samples in {status['windowSeconds']} s)")
    operator = _cell(op["lagStatus"])
    if op["lagMessage"]:
        operator += f": {op['lagMessage']}"
    lines.append(f"Operator:    {operator}")
    if op["replicas"] is not None or op["desiredReplicas"] is not None:
        lines.append(f"Replicas:    {_cell(op['replicas'])} (desired "
                     f"{_cell(op['desiredReplicas'])}, last scaled "
                     f"{_cell(op['lastScaleTime'])})")
    if doc["missingTopics"]:
        lines.append(f"Missing:     topics {', '.join(doc['missingTopics'])} do not exist")
    lines.append("")
    lines += _table(
        ("TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "SECONDS-BEHIND",
         "STATUS", "CONSUMER-ID", "HOST", "CLIENT-ID"),
        [(p["topic"], p["partition"], p["committedOffset"], p["endOffset"], p["lag"],
          p["secondsBehind"], p["status"], p["memberId"], p["host"], p["clientId"])
         for p in doc["partitions"]])
    if group["members"]:
        lines.append("")
        lines += _table(("CONSUMER-ID", "HOST", "CLIENT-ID", "#PARTITIONS"),
                        [(m["memberId"], m["host"], m["clientId"], len(m["assignment"]))
                         for m in group["members"]])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- kube side


class PluginError(Exception):
    """A problem the user can fix; printed as one line, exit code 1."""


def kube_client(kubeconfig: str | None, context: str | None) -> tuple[Any, str]:
    """An ApiClient for the chosen kubeconfig and context, and that context's namespace."""
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=kubeconfig)
        chosen = active
        if context is not None:
            chosen = next((c for c in contexts if c.get("name") == context), None)
            if chosen is None:
                raise PluginError(f"context {context!r} not found in the kubeconfig")
        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context)
    except config.ConfigException as exc:
        raise PluginError(f"kubeconfig: {exc}") from None
    namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    return api, str(namespace)


def load_target(api: Any, namespace: str, name: str) -> Target:
    """The KafkaConsumerGroup, where its group lives and the credentials to ask it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from kcg_operator.kube import Kube

    try:
        custom: Any = client.CustomObjectsApi(api)
        body: dict[str, Any] = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            raise PluginError(f'kafkaconsumergroups.{GROUP} "{name}" not found in namespace '
                              f"{namespace}") from None
        raise PluginError(f"reading {namespace}/{name}: {exc.status} {exc.reason}") from None
    try:
        kcg = parse_kafka_consumer_group(body)
    except InvalidKafkaConsumerGroup as exc:
        raise PluginError(f"{namespace}/{name} has an invalid spec: {exc}") from None
    auth: dict[str, str] | None = None
    ref = kcg.spec.kafka.secret_ref
    if ref is not None:
        try:
            auth = Kube(api).secret_data(namespace, ref.name)
        except ApiException as exc:
            raise PluginError(f"reading Secret {ref.name} (spec.kafka.secretRef): "
                              f"{exc.status} {exc.reason}") from None
        if auth is None:
            raise PluginError(f"Secret {ref.name!r} named by spec.kafka.secretRef does not "
                              f"exist in namespace {namespace}")
    try:
        from_earliest = build_consumer_config(kcg, auth).starts_from_earliest
    except ConsumerConfigError:
        # The operator refuses this spec, yet consumers may still run from an older one:
        # the reset rule is the operator's default unless the spec sets its own.
        merged = {**DEFAULT_PROPERTIES, **kcg.spec.consumer_config}
        from_earliest = ConsumerConfig(consumer=merged, producer=None).starts_from_earliest
    return Target(namespace, name, body, kcg,
                  ClusterKey.of(kcg.spec.kafka.bootstrap_servers, auth), auth, from_earliest)


# --------------------------------------------------------------------------- running


def run_describe(args: argparse.Namespace, out: IO[str],
                 sleep: Callable[[float], None] = time.sleep) -> int:
    if args.interval <= 0 or args.samples < 1:
        raise PluginError("--interval must be above 0 and --samples at least 1")
    api, context_namespace = kube_client(args.kubeconfig, args.context)
    try:
        target = load_target(api, args.namespace or context_namespace, args.name)
    finally:
        api.close()
    sampler = Sampler(target, WireLagCollector(timeout_s=args.request_timeout))
    for _ in range(args.samples - 1):
        # Only the verdicts need these sweeps; timestamps are read for the shown frame.
        if not sampler.sample(read_timestamps=False).snap.broker_ok:
            break
        sleep(args.interval)
    frames = 0
    while True:
        frame = sampler.sample()
        doc = frame_json(frame)
        if args.output == "json":
            out.write(json.dumps(doc, separators=(",", ":")) + "\n" if args.watch
                      else json.dumps(doc, indent=2) + "\n")
        else:
            if args.watch and out.isatty():
                out.write(CLEAR)
            elif args.watch and frames:
                out.write("\n")
            out.write(render_table(doc))
        out.flush()
        frames += 1
        if not args.watch:
            return 0 if frame.snap.broker_ok else 1
        if args.frames and frames >= args.frames:
            return 0
        sleep(args.interval)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser().print_help()
        return 2
    # Output into a closed pipe (`| head`) ends quietly, as kubectl does (no SIGPIPE on
    # Windows).
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return run_describe(args, sys.stdout)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C ends at once: the Kafka clients' own teardown can wait out request
        # timeouts (seen: over 30 s under load), which is not what an interrupt asks for.
        # os._exit skips atexit, where the kubernetes client deletes the temporary files
        # it wrote the kubeconfig's embedded CA, certificate and private key to: run the
        # exit functions first, or every Ctrl-C leaves a copy of the key in $TMPDIR.
        sys.stdout.flush()
        atexit._run_exitfuncs()
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
