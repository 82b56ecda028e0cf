"""The operator's in-memory view of every KafkaConsumerGroup it serves.

kopf's watch keeps it current (one entry per object); the reconciler records what it
applied; the controller loop reads it to batch lag collection across all groups.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kcg_operator.api.models import KafkaConsumerGroup
from kcg_operator.scaling.collector import ClusterKey
from kcg_operator.scaling.health import CommitWindow
from kcg_operator.scaling.policy import PolicyState
from kcg_operator.scaling.timelag import OffsetTimeTable

Key = tuple[str, str]  # (namespace, name)


@dataclass
class Reconciled:
    """The reconciler's outcome for one generation, for the Ready condition."""

    generation: int | None
    ok: bool
    reason: str
    message: str
    deployment: str | None = None
    selector: str | None = None


@dataclass
class Entry:
    body: dict[str, Any]
    kcg: KafkaConsumerGroup | None
    cluster: ClusterKey | None = None
    auth: Mapping[str, str] | None = None  # credentials: never logged
    reconciled: Reconciled | None = None
    # Where a consumer starts on a partition the group never committed (auto.offset.reset):
    # with earliest, that partition's whole log is lag.
    starts_from_earliest: bool = False
    next_poll: float = 0.0
    dirty: bool = True
    policy: PolicyState = field(default_factory=PolicyState)
    windows: dict[tuple[str, int], CommitWindow] = field(default_factory=dict)
    timelag: dict[tuple[str, int], OffsetTimeTable] = field(default_factory=dict)
    last_status: dict[str, Any] | None = None
    last_events: dict[str, str] = field(default_factory=dict)
    last_scale_time: str | None = None
    partition_series: set[tuple[str, str]] = field(default_factory=set)  # metric labels
    replicas: tuple[int, int] | None = None  # Deployment (spec, ready), from its watch
    lock: threading.Lock = field(default_factory=threading.Lock)


class Registry:
    def __init__(self) -> None:
        self._entries: dict[Key, Entry] = {}
        self._lock = threading.Lock()
        self.wake = threading.Event()

    def upsert(self, key: Key, body: Mapping[str, Any], kcg: KafkaConsumerGroup | None) -> Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = Entry(dict(body), kcg)
            else:
                entry.body, entry.kcg = dict(body), kcg
            return entry

    def get(self, key: Key) -> Entry | None:
        with self._lock:
            return self._entries.get(key)

    def remove(self, key: Key) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def mark_dirty(self, key: Key) -> None:
        entry = self.get(key)
        if entry is not None:
            entry.dirty = True
            self.wake.set()

    def due(self, now: float | None = None) -> list[tuple[Key, Entry]]:
        now = time.time() if now is None else now
        with self._lock:
            return [(k, e) for k, e in self._entries.items()
                    if e.reconciled is not None and (e.dirty or e.next_poll <= now)]

    def next_due(self) -> float:
        with self._lock:
            times = [e.next_poll for e in self._entries.values() if e.reconciled is not None]
        return min(times, default=time.time() + 1.0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


REGISTRY = Registry()
