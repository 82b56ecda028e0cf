"""Conditions as the Kubernetes API conventions define them: pure helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, status: bool | None, reason: str, message: str, generation: int | None,
    previous: Sequence[Mapping[str, Any]] | None, now: str | None = None,
) -> dict[str, Any]:
    """A condition dict; lastTransitionTime moves only when the status changes, so a
    steady state produces identical conditions (and no API writes)."""
    status_text = "Unknown" if status is None else ("True" if status else "False")
    old = next((c for c in previous or () if c.get("type") == type_), None)
    if old is not None and old.get("status") == status_text and old.get("lastTransitionTime"):
        transition = str(old["lastTransitionTime"])
    else:
        transition = now or now_rfc3339()
    out: dict[str, Any] = {
        "type": type_, "status": status_text, "reason": reason, "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out
