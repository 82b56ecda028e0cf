"""What the operator knows of every KafkaConsumerGroup, for the controller loop to read.

The kopf watch handlers follow the objects, their Deployments and ConfigMaps; the
reconciler (run by the controller) records what it read and applied. Each object's record
is immutable and replaced whole, so the controller reads a consistent record without
locking it; what the controller learns and decides lives in the controller
(kcg_operator.controller), not here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kcg_operator.api.models import KafkaConsumerGroup
from kcg_operator.scaling.collector import ClusterKey
from kcg_operator.written_status import WrittenStatus

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Reconciled:
    """The reconciler's outcome for one generation, for the Ready condition."""

    generation: int | None
    ok: bool
    reason: str
    message: str
    deployment: str | None = None
    selector: str | None = None


#: The metadata the controller reads (generation, deletion) or names in an Event.
KEPT_METADATA = ("name", "namespace", "uid", "generation", "deletionTimestamp")


@dataclass(frozen=True, slots=True)
class GroupObject:
    """One KafkaConsumerGroup as the handlers last saw and reconciled it.

    Of the watched body only its identity and metadata.generation are kept: the spec lives
    on as ``kcg`` (or ``invalid``), the status as ``status``. At 10 000 objects the whole
    bodies were the operator's largest datum (about 10 KB each), and what they pinned of
    the watch's decoded JSON kept its memory from going back."""

    body: Mapping[str, Any]
    kcg: KafkaConsumerGroup | None  # None: the spec does not parse
    cluster: ClusterKey | None = None
    auth: Mapping[str, str] | None = None  # credentials: never logged
    reconciled: Reconciled | None = None  # None: not reconciled by this process yet
    # Where a consumer starts on a partition the group never committed (auto.offset.reset):
    # with earliest, that partition's whole retained log is lag.
    starts_from_earliest: bool = False
    invalid: str | None = None  # why the spec does not parse, when kcg is None
    # The status the apiserver showed last (what the last leader wrote), for the next write.
    status: WrittenStatus | None = None

    def __post_init__(self) -> None:
        if self.body.get("status"):
            object.__setattr__(self, "status", WrittenStatus.of(self.body["status"]))
        object.__setattr__(self, "body", _slim(self.body))

    @property
    def generation(self) -> int | None:
        generation: int | None = self.body["metadata"].get("generation")
        return generation


@dataclass(frozen=True)
class DeploymentReplicas:
    """spec.replicas and status.readyReplicas of a consumer Deployment, from its watch."""

    wanted: int
    ready: int
    seen_at: float  # time.monotonic() when the watch delivered it
    workload_hash: str | None = None  # what the operator last applied to it
    generation: int | None = None  # metadata.generation: orders events around a patch
    # status.replicas (pods not terminating) once the Deployment controller has observed
    # this generation; None while its counts may be those of an older spec.
    pods: int | None = None


class Registry:
    def __init__(self) -> None:
        self._objects: dict[Key, GroupObject] = {}
        self._deployments: dict[Key, DeploymentReplicas] = {}
        self._locks: dict[Key, threading.Lock] = {}
        self._dirty: set[Key] = set()
        self._missing: set[Key] = set()  # a Deployment or ConfigMap of theirs was deleted
        self._lock = threading.Lock()
        self.wake = threading.Event()

    # -- written by the handlers --------------------------------------------------------

    def seen(self, key: Key, body: Mapping[str, Any], kcg: KafkaConsumerGroup | None,
             invalid: str | None = None) -> None:
        """A watch event: the object's latest body (and its spec parsed, or why it does not
        parse), keeping what was reconciled."""
        with self._lock:
            old = self._objects.get(key)
            new = (GroupObject(body, kcg, invalid=invalid) if old is None
                   else replace(old, body=body, kcg=kcg, invalid=invalid))
            self._objects[key] = new
            changed = old is None or old.generation != new.generation
            if changed:
                self._dirty.add(key)
        if changed:  # a new spec: the controller reconciles it now, not at its next poll
            self.wake.set()

    def reconciled(self, key: Key, body: Mapping[str, Any], kcg: KafkaConsumerGroup | None,
                   outcome: Reconciled, *, cluster: ClusterKey | None = None,
                   auth: Mapping[str, str] | None = None,
                   starts_from_earliest: bool | None = None) -> None:
        """The reconciler's outcome; the controller looks at the object at once."""
        with self._lock:
            old = self._objects.get(key) or GroupObject(body, kcg)
            self._objects[key] = replace(
                old, body=body, kcg=kcg, reconciled=outcome,
                cluster=cluster if cluster is not None else old.cluster,
                auth=auth if cluster is not None else old.auth,
                starts_from_earliest=(old.starts_from_earliest if starts_from_earliest is None
                                      else starts_from_earliest))
            self._dirty.add(key)
        self.wake.set()

    def remove(self, key: Key) -> None:
        with self._lock:
            self._objects.pop(key, None)
            self._locks.pop(key, None)
            self._missing.discard(key)

    def deployment_seen(self, key: Key, replicas: tuple[int, int] | None,
                        workload_hash: str | None = None,
                        generation: int | None = None, pods: int | None = None) -> None:
        """The consumer Deployment's watch: (spec.replicas, readyReplicas), None if deleted,
        the workload digest it carries, and its pod count when current (see
        DeploymentReplicas.pods)."""
        with self._lock:
            if replicas is None:
                self._deployments.pop(key, None)
                self._missing.add(key)
            else:
                self._deployments[key] = DeploymentReplicas(*replicas, time.monotonic(),
                                                            workload_hash, generation, pods)
        if replicas is None:
            self.wake.set()

    def config_map_seen(self, key: Key, present: bool) -> None:
        """The consumer ConfigMap's watch: a deletion makes the workload due again."""
        if present:
            return
        with self._lock:
            self._missing.add(key)
        self.wake.set()

    def take_missing(self, key: Key) -> bool:
        """Whether a Deployment or ConfigMap of this object was deleted since last asked."""
        with self._lock:
            missing = key in self._missing
            self._missing.discard(key)
        return missing

    # -- read by the controller ---------------------------------------------------------

    def objects(self) -> dict[Key, GroupObject]:
        with self._lock:
            return dict(self._objects)

    def get(self, key: Key) -> GroupObject | None:
        with self._lock:
            return self._objects.get(key)

    def deployment(self, key: Key) -> DeploymentReplicas | None:
        with self._lock:
            return self._deployments.get(key)

    def take_dirty(self) -> set[Key]:
        """Objects changed since the last call (and forgets them)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        return dirty

    def mark_dirty(self, key: Key) -> None:
        with self._lock:
            self._dirty.add(key)
        self.wake.set()

    def workload_lock(self, key: Key) -> threading.Lock:
        """Held by the reconciler between reading replicas and applying the Deployment, and
        by the scaler around its patch, so neither undoes the other."""
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)


def _slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """Identity and KEPT_METADATA of a body, in new containers (none of the watch's)."""
    meta = body.get("metadata") or {}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {k: meta[k] for k in KEPT_METADATA if k in meta}}
