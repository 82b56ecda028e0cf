"""`make bench-scaling`: every scenario under both policies, side by side, from one run.

Prints a table (SLO-violation seconds, replica-seconds and peak replicas per policy) and, as
its very last line, one JSON object with the totals and the per-scenario figures, so runs
can be compared by a script.

    python -m kcg_operator.scaling.bench [--scenarios DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kcg_operator.scaling.simulator import (
    POLICIES,
    ScenarioError,
    SimResult,
    load_scenario,
    simulate,
)

DEFAULT_DIR = Path("examples/scenarios")
#: The issue's goal: kcg at most half of KEDA's SLO-violation seconds, at no more than
#: 1.1x its replica-seconds.
GOAL_SLO_RATIO = 0.5
GOAL_REPLICA_RATIO = 1.1


def run(directory: Path) -> list[tuple[str, SimResult, SimResult]]:
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise ScenarioError(f"no *.yaml scenarios in {directory}")
    rows = []
    for path in files:
        scenario = load_scenario(path)
        kcg = simulate(scenario, POLICIES["kcg"]())
        keda = simulate(scenario, POLICIES["keda"]())
        rows.append((scenario.name, kcg, keda))
    return rows


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def report(rows: list[tuple[str, SimResult, SimResult]]) -> tuple[str, dict[str, Any]]:
    header = (
        f"{'scenario':<16}{'kcg SLO-viol s':>15}{'keda SLO-viol s':>16}"
        f"{'kcg replica-s':>15}{'keda replica-s':>16}{'kcg max':>9}{'keda max':>10}"
    )
    lines = [header, "-" * len(header)]
    for name, kcg, keda in rows:
        lines.append(
            f"{name:<16}{kcg.slo_violation_seconds:>15}{keda.slo_violation_seconds:>16}"
            f"{kcg.replica_seconds:>15}{keda.replica_seconds:>16}"
            f"{kcg.max_replicas:>9}{keda.max_replicas:>10}"
        )
    totals = {
        "kcg_slo_violation_seconds": sum(k.slo_violation_seconds for _, k, _ in rows),
        "keda_slo_violation_seconds": sum(k.slo_violation_seconds for _, _, k in rows),
        "kcg_replica_seconds": sum(k.replica_seconds for _, k, _ in rows),
        "keda_replica_seconds": sum(k.replica_seconds for _, _, k in rows),
    }
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<16}{totals['kcg_slo_violation_seconds']:>15}"
        f"{totals['keda_slo_violation_seconds']:>16}{totals['kcg_replica_seconds']:>15}"
        f"{totals['keda_replica_seconds']:>16}"
    )
    slo_ratio = _ratio(totals["kcg_slo_violation_seconds"], totals["keda_slo_violation_seconds"])
    replica_ratio = _ratio(totals["kcg_replica_seconds"], totals["keda_replica_seconds"])
    slo_ok = (
        totals["kcg_slo_violation_seconds"] <= GOAL_SLO_RATIO * totals["keda_slo_violation_seconds"]
    )
    replica_ok = (
        totals["kcg_replica_seconds"] <= GOAL_REPLICA_RATIO * totals["keda_replica_seconds"]
    )
    lines.append(
        f"kcg/keda: SLO-violation {slo_ratio} (goal <= {GOAL_SLO_RATIO}), "
        f"replica-seconds {replica_ratio} (goal <= {GOAL_REPLICA_RATIO}): "
        + ("goal met" if slo_ok and replica_ok else "goal NOT met")
    )
    figures: dict[str, Any] = {
        **totals,
        "slo_violation_ratio": slo_ratio,
        "replica_seconds_ratio": replica_ratio,
        "goal_met": slo_ok and replica_ok,
        "scenarios": {
            name: {
                "kcg_slo_violation_seconds": kcg.slo_violation_seconds,
                "keda_slo_violation_seconds": keda.slo_violation_seconds,
                "kcg_replica_seconds": kcg.replica_seconds,
                "keda_replica_seconds": keda.replica_seconds,
                "kcg_max_replicas": kcg.max_replicas,
                "keda_max_replicas": keda.max_replicas,
                "kcg_max_time_lag_seconds": kcg.max_time_lag_seconds,
                "keda_max_time_lag_seconds": keda.max_time_lag_seconds,
            }
            for name, kcg, keda in rows
        },
    }
    return "\n".join(lines), figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench-scaling", description="Compare the kcg and keda policies on scenarios."
    )
    parser.add_argument("--scenarios", type=Path, default=DEFAULT_DIR, help="scenario directory")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rows = run(args.scenarios)
    except ScenarioError as exc:
        print(f"bench-scaling: {exc}", file=sys.stderr)
        return 2
    table, figures = report(rows)
    print(table)
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
