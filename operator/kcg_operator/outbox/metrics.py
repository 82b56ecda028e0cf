"""The relay's Prometheus metrics (one registry per relay, so tests can run several)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

PREFIX: Final = "kcg_outbox"
ROUND_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS: Final = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 50000)


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.published = Counter(
            f"{PREFIX}_events_published", "Events acknowledged by Kafka and marked done.",
            registry=r,
        )
        self.failed = Counter(
            f"{PREFIX}_events_failed",
            "Publish attempts that failed and stay pending for a later round, by reason.",
            ["reason"], registry=r,
        )
        self.dead_lettered = Counter(
            f"{PREFIX}_events_dead_lettered",
            "Events Kafka refused for good, moved to the dead-letter table.", registry=r,
        )
        self.batch_seconds = Histogram(
            f"{PREFIX}_batch_duration_seconds",
            "One round: first fetch to its rows marked done (includes waiting for acks).",
            buckets=ROUND_BUCKETS, registry=r,
        )
        self.batch_events = Histogram(
            f"{PREFIX}_batch_events", "Rows handled per round (rounds with rows).",
            buckets=SIZE_BUCKETS, registry=r,
        )
        self.oldest_pending = Gauge(
            f"{PREFIX}_oldest_pending_event_age_seconds",
            "Age of the oldest row not yet published, any shard (0: none pending).",
            registry=r,
        )
        self.owned_shards = Gauge(
            f"{PREFIX}_owned_shards", "Shards of the key space this relay publishes.",
            registry=r,
        )
        self.relays = Gauge(
            f"{PREFIX}_relays", "Relays connected to this outbox table.", registry=r
        )
        self.ready = Gauge(
            f"{PREFIX}_ready", "1 when connected to PostgreSQL and Kafka (as /readyz).",
            registry=r,
        )
        self.kafka_outages = Counter(
            f"{PREFIX}_kafka_outages",
            "Times the relay lost every broker connection after having had one.", registry=r,
        )
        self.empty_polls = Counter(
            f"{PREFIX}_empty_polls", "Polls of the table that found no pending row.",
            registry=r,
        )
        self.notify_wakeups = Counter(
            f"{PREFIX}_notify_wakeups",
            "Sleeps between polls cut short by a NOTIFY (OUTBOX_NOTIFY_CHANNEL).", registry=r,
        )
        self.db_reconnects = Counter(
            f"{PREFIX}_database_reconnects", "Database sessions re-opened after one was lost.",
            registry=r,
        )
