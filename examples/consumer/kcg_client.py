"""What every example consumer needs from the kcg-operator contract (confluent-kafka).

The operator injects into the app's containers:

- KCG_CONSUMER_PROPERTIES: path of the client properties file (group.id, bootstrap.servers,
  cooperative-sticky, enable.auto.commit=false, enable.auto.offset.store=false, ...);
- KCG_KAFKA_AUTH_DIR (optional): one file per auth property, from spec.kafka.secretRef;
- KAFKA_TOPICS: comma-separated topics; KCG_DELIVERY_SEMANTICS; KCG_POD_NAME
  (KAFKA_BOOTSTRAP_SERVERS and KAFKA_GROUP_ID too, but the properties file already has them).

Shared by consumer.py and orders_app.py, which sit beside this file (in the image: /app).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType

from confluent_kafka import Consumer, KafkaError, KafkaException

log = logging.getLogger("kcg")


class ConfigError(Exception):
    """A setting is missing or wrong; the message names the variable."""


def read_properties(path: Path) -> dict[str, str]:
    """A Java-style properties file: key=value lines, # and ! comments."""
    properties: dict[str, str] = {}
    # Split on newlines only: str.splitlines() also splits on form feeds and the like.
    for raw in path.read_text().split("\n"):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        properties[key.strip()] = value.strip().replace("\\\\", "\\")
    return properties


def read_auth_dir(directory: Path) -> dict[str, str]:
    """Properties from a mounted Secret: the file name is the key, the content the value."""
    return {
        entry.name: entry.read_text().strip()
        for entry in sorted(directory.iterdir())
        # The kubelet's own entries (..data, ..2024_...) start with dots.
        if not entry.name.startswith(".") and entry.is_file()
    }


def client_config(env: Mapping[str, str]) -> dict[str, str]:
    """The consumer's librdkafka properties: the operator's file, then the auth Secret."""
    path = env.get("KCG_CONSUMER_PROPERTIES", "").strip()
    if not path:
        raise ConfigError("KCG_CONSUMER_PROPERTIES is not set: run me from a KafkaConsumerGroup")
    try:
        config = read_properties(Path(path))
    except OSError as exc:
        raise ConfigError(f"KCG_CONSUMER_PROPERTIES={path!r}: {exc.strerror}") from None
    auth_dir = env.get("KCG_KAFKA_AUTH_DIR", "").strip()
    if auth_dir:
        if not Path(auth_dir).is_dir():
            raise ConfigError(f"KCG_KAFKA_AUTH_DIR={auth_dir!r} is not a directory")
        config.update(read_auth_dir(Path(auth_dir)))
    pod = env.get("KCG_POD_NAME", "").strip()
    if pod:
        # Names the member in `describe group` output and in the operator's compliance report.
        config.setdefault("client.id", pod)
    return config


def topics(env: Mapping[str, str]) -> list[str]:
    found = [t.strip() for t in env.get("KAFKA_TOPICS", "").split(",") if t.strip()]
    if not found:
        raise ConfigError("KAFKA_TOPICS is empty: set the comma-separated topics to consume")
    return found


# A commit that loses a race with a rebalance is not an error for an at-least-once app: the
# stored offsets are committed by the next commit (or on revocation), and whatever the new
# owner re-reads is dropped by the app's idempotency key.
RETRIABLE_COMMIT_ERRORS = frozenset({
    KafkaError._NO_OFFSET,  # nothing stored since the last commit
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._STATE,  # no assignment at the moment
})


def commit(consumer: Consumer) -> None:
    """Commit the stored offsets synchronously; a commit lost to a rebalance is deferred."""
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        code = exc.args[0].code()
        if code not in RETRIABLE_COMMIT_ERRORS:
            raise
        if code != KafkaError._NO_OFFSET:
            log.info("commit deferred: %s", exc.args[0].str())


def paced(rate: float | None) -> Iterator[None]:
    """Yields at most `rate` times per second (no limit when rate is None)."""
    interval = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if next_at > now:
            time.sleep(next_at - now)
        next_at = max(next_at + interval, time.monotonic() - 1.0)  # no burst after a pause
        yield


class StopFlag:
    """Set by SIGTERM (pod stop, scale-down, rolling update) or SIGINT; the loop polls it."""

    def __init__(self) -> None:
        self.stopping = False

    def install(self) -> StopFlag:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        return self

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the loop finishes the message in hand, commits and leaves the group.
        self.stopping = True
