"""A KafkaConsumerGroup's status as the next status write needs to remember it.

The controller writes a status only when it differs from the last one (written by it, or
by the last leader as the watch shows it), and carries each condition's
lastTransitionTime over while its status holds. That takes the status's digest and its
conditions, not the whole status: at 10 000 objects a kept copy of every status (and of
every watched one) was tens of megabytes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: What a condition's successor reads of it (kcg_operator.conditions.condition): the
#: transition time carries over while the status holds.
CARRIED = ("type", "status", "lastTransitionTime")


@dataclass(frozen=True, slots=True)
class WrittenStatus:
    digest: bytes
    conditions: tuple[Mapping[str, Any], ...]  # each with the CARRIED keys only
    last_scale_time: str | None

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> WrittenStatus:
        return cls(digest(status), tuple(
            {k: sys.intern(v) if k != "lastTransitionTime" and isinstance(v, str) else v
             for k, v in c.items() if k in CARRIED}
            for c in status.get("conditions") or () if isinstance(c, Mapping)),
            status.get("lastScaleTime"))


def digest(status: Mapping[str, Any]) -> bytes:
    """Equal for equal statuses, however they were built: key order does not count, and
    a whole float counts as the integer the apiserver's JSON gives back (2.0 is 2)."""
    text = json.dumps(_canonical(status), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
