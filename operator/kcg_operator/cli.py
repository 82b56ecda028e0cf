"""The `kcg` command: one entry point, one subcommand per job.

Each subcommand lives in the module that does the job and exposes ``main(argv) -> int``;
modules are imported lazily so `kcg relay` does not pay for kopf and `kcg crd` needs no
Kafka client.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "crd": ("kcg_operator.api.crd", "print the KafkaConsumerGroup CRD as YAML"),
    "run": ("kcg_operator.runner", "run the operator against the current kube context"),
    "simulate": (
        "kcg_operator.scaling.simulator",
        "replay a traffic scenario against a policy (--plot: a PNG of kcg and KEDA)",
    ),
    "relay": ("kcg_operator.outbox.relay", "move committed outbox rows to Kafka"),
}


def _usage() -> str:
    lines = ["usage: kcg COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"kcg: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
