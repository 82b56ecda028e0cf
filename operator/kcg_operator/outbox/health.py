"""Health of the relay: what the probes and the operator see.

  GET /healthz  liveness: the main loop made progress within LIVENESS_SECONDS. Database or
                broker outages do not fail it (restarting the relay would not fix them);
                a wedged loop does.
  GET /readyz   readiness: connected to PostgreSQL with the table in place, and Kafka
                reachable. The body is JSON with the details (shards owned, live relays,
                oldest pending event age, last error), also for the operator's
                OutboxReady condition.
  GET /metrics  Prometheus.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from http.server import ThreadingHTTPServer
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kcg_operator import http_endpoint
from kcg_operator.http_endpoint import Answer
from kcg_operator.outbox.metrics import RelayMetrics

LIVENESS_SECONDS: Final = 60.0


@dataclass(frozen=True)
class HealthSnapshot:
    started_at: float
    heartbeat: float
    database: bool = False
    kafka: bool = False
    database_error: str = ""
    kafka_error: str = ""
    owned_shards: int = 0
    relays: int = 0
    oldest_pending_seconds: float | None = None
    published: int = 0
    stopping: bool = False


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def liveness(snapshot: HealthSnapshot, now: float) -> tuple[bool, dict[str, Any]]:
    stalled = now - snapshot.heartbeat
    ok = stalled < LIVENESS_SECONDS
    return ok, {"live": ok, "secondsSinceProgress": round(stalled, 3)}


def readiness(snapshot: HealthSnapshot) -> tuple[bool, dict[str, Any]]:
    ok = snapshot.database and snapshot.kafka and not snapshot.stopping
    body = {
        _camel(k): v for k, v in asdict(snapshot).items() if k not in ("started_at", "heartbeat")
    }
    if not snapshot.database:
        reason = f"database: {snapshot.database_error or 'not connected yet'}"
    elif not snapshot.kafka:
        reason = f"kafka: {snapshot.kafka_error or 'not connected yet'}"
    elif snapshot.stopping:
        reason = "stopping"
    else:
        reason = ""
    return ok, {"ready": ok, "reason": reason, **body}


@dataclass
class Health:
    """Mutable state the relay loop updates and the HTTP thread reads (under a lock)."""

    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _snapshot: HealthSnapshot | None = None

    def __post_init__(self) -> None:
        now = self.clock()
        self._snapshot = HealthSnapshot(started_at=now, heartbeat=now)

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            assert self._snapshot is not None
            return self._snapshot

    def update(self, **changes: Any) -> None:
        with self._lock:
            assert self._snapshot is not None
            self._snapshot = replace(self._snapshot, **changes)

    def beat(self) -> None:
        self.update(heartbeat=self.clock())


def _answer(health: Health, metrics: RelayMetrics) -> Callable[[str], Answer]:
    def answer(path: str) -> Answer:
        if path == "/metrics":
            metrics.ready.set(1 if readiness(health.snapshot())[0] else 0)
            return 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST
        if path == "/healthz":
            ok, body = liveness(health.snapshot(), health.clock())
        elif path == "/readyz":
            ok, body = readiness(health.snapshot())
        else:
            return 404, b"not found\n", "text/plain"
        return 200 if ok else 503, json.dumps(body).encode() + b"\n", "application/json"

    return answer


def serve(health: Health, metrics: RelayMetrics, address: str, port: int) -> ThreadingHTTPServer:
    """Start the HTTP endpoint in a daemon thread; returns the server (its port if 0)."""
    return http_endpoint.serve(_answer(health, metrics), address, port, "kcg-relay-http")
