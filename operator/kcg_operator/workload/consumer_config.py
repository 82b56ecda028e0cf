"""Client properties of the consumer app, from the KafkaConsumerGroup spec (pure).

What the operator writes, in the order later entries win:

1. Safe defaults, which `spec.consumerConfig` may override (session timeout, poll
   interval, `auto.offset.reset=earliest` so a new group misses nothing).
2. `spec.consumerConfig`.
3. Enforced properties, exactly the keys of `MANAGED_CONSUMER_KEYS` (the CRD refuses them
   in consumerConfig, so nothing is silently overridden):

   - `bootstrap.servers`, `group.id`;
   - rebalancing: classic protocol -> `group.protocol=classic` and
     `partition.assignment.strategy=cooperative-sticky`; consumer protocol (KIP-848) ->
     `group.protocol=consumer` and no assignment strategy (the broker assigns);
   - delivery: `enable.auto.commit=false` and `enable.auto.offset.store=false` in every
     preset, so no offset moves unless the app says so, and
     `isolation.level=read_committed` (never hand aborted transactional records to the app).
     What differs between presets is *when* the app commits:

     * atMostOnce: commit the message's offset (synchronously) *before* processing it; a
       crash loses that message, never repeats it.
     * atLeastOnce: process, then commit; a crash repeats messages since the last commit,
       so processing must be idempotent (dedupe by key / event-id header).
     * exactlyOnce: consume-transform-produce in one Kafka transaction: the app's
       transactional producer (settings in the separate producer properties file) sends the
       output and the consumed offsets (`send_offsets_to_transaction`) and commits them
       together. Across Kafka and a database, idempotent writes are still needed.

Credentials never pass through here: the Secret named by `spec.kafka.secretRef` holds
client properties (one key per property, e.g. `sasl.password`), and rendering mounts it
as files next to the properties file (file name = property name). The properties file
only names the keys it will find there, so the ConfigMap stays free of secrets and the
config hash changes when keys come or go, not when a password rotates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from kcg_operator.api.models import (
    CLASSIC_ONLY_CONSUMER_KEYS,
    MANAGED_CONSUMER_KEYS,
    DeliverySemantics,
    KafkaConsumerGroup,
    RebalanceProtocol,
    classic_only_key_message,
    consumer_config_problems,
)

COOPERATIVE_STICKY: Final = "cooperative-sticky"

# Overridable by spec.consumerConfig. Values are librdkafka's defaults made explicit where
# the Java client differs, so a reader of the file knows what the app runs with.
DEFAULT_PROPERTIES: Final[Mapping[str, str]] = {
    "auto.offset.reset": "earliest",
    "max.poll.interval.ms": "300000",
    "socket.keepalive.enable": "true",
}
# Classic protocol only: librdkafka refuses these with group.protocol=consumer.
CLASSIC_DEFAULT_PROPERTIES: Final[Mapping[str, str]] = {
    "session.timeout.ms": "45000",
    "heartbeat.interval.ms": "3000",
}
# The transactional producer of an exactlyOnce app. `transactional.id` is not here: it
# must differ per pod, so the app derives it (e.g. "<group id>-<KCG_POD_NAME>").
TRANSACTIONAL_PRODUCER_PROPERTIES: Final[Mapping[str, str]] = {
    "enable.idempotence": "true",
    "acks": "all",
    "transaction.timeout.ms": "60000",
}

_COMMIT_ADVICE: Final[Mapping[DeliverySemantics, str]] = {
    DeliverySemantics.AT_MOST_ONCE: "commit each message's offset synchronously BEFORE "
    "processing it (a crash loses it, never repeats it)",
    DeliverySemantics.AT_LEAST_ONCE: "process each message, THEN commit its offset (a crash "
    "repeats messages since the last commit: process idempotently)",
    DeliverySemantics.EXACTLY_ONCE: "produce results and send the consumed offsets in one "
    "transaction of the producer configured in the producer properties file",
}


class ConsumerConfigError(ValueError):
    """The spec or the auth Secret asks for something the operator refuses."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ConsumerConfig:
    """The client configuration of one KafkaConsumerGroup."""

    consumer: Mapping[str, str]
    """Consumer properties (no credentials): the consumer properties file."""
    producer: Mapping[str, str] | None
    """Transactional producer properties (exactlyOnce only), else None."""
    auth_keys: tuple[str, ...] = ()
    """Properties the app reads from the mounted auth Secret (names only, never values)."""
    header: tuple[str, ...] = field(default=())
    """Comment lines written at the top of each file."""

    @property
    def starts_from_earliest(self) -> bool:
        """Whether a consumer starts a never-committed partition at its log start: then the
        partition's whole retained log is lag (librdkafka's three names for it)."""
        reset = self.consumer.get("auto.offset.reset", "latest").strip().lower()
        return reset in ("earliest", "smallest", "beginning")

    def consumer_properties_text(self) -> str:
        return properties_text(self.consumer, self.header)

    def producer_properties_text(self) -> str | None:
        if self.producer is None:
            return None
        return properties_text(self.producer, self.header)


def _escape(value: str) -> str:
    # Java-properties escaping for the characters that would change the parse; keys are
    # limited to [A-Za-z0-9._-] by the API, and line breaks in values are refused.
    return value.replace("\\", "\\\\")


def properties_text(properties: Mapping[str, str], header: tuple[str, ...] = ()) -> str:
    """A Java-style properties file, keys sorted so the text (and its hash) is stable."""
    lines = [f"# {line}" if line else "#" for line in header]
    lines += [f"{key}={_escape(properties[key])}" for key in sorted(properties)]
    return "\n".join(lines) + "\n"


def enforced_properties(kcg: KafkaConsumerGroup) -> dict[str, str]:
    """The properties the operator owns; their keys are exactly MANAGED_CONSUMER_KEYS' ones
    that apply to the chosen protocol."""
    spec = kcg.spec
    enforced = {
        "bootstrap.servers": spec.kafka.bootstrap_servers,
        "group.id": kcg.group_id,
        "group.protocol": spec.rebalance_protocol.value,
        "enable.auto.commit": "false",
        "enable.auto.offset.store": "false",
        "isolation.level": "read_committed",
    }
    if spec.rebalance_protocol is RebalanceProtocol.CLASSIC:
        enforced["partition.assignment.strategy"] = COOPERATIVE_STICKY
    return enforced


def _auth_problems(kcg: KafkaConsumerGroup, auth_keys: list[str]) -> list[str]:
    secret = kcg.spec.kafka.secret_ref.name if kcg.spec.kafka.secret_ref else "?"
    return [
        f"Secret {secret} (spec.kafka.secretRef) must not hold {key}: "
        f"{MANAGED_CONSUMER_KEYS[key].why}; remove the key from the Secret"
        for key in auth_keys
        if key in MANAGED_CONSUMER_KEYS
    ]


def _header(kcg: KafkaConsumerGroup, auth_keys: tuple[str, ...]) -> tuple[str, ...]:
    spec = kcg.spec
    lines = [
        f"Generated by kcg-operator for KafkaConsumerGroup "
        f"{kcg.metadata.namespace or ''}/{kcg.metadata.name}; do not edit.",
        f"deliverySemantics={spec.delivery_semantics.value}: "
        f"{_COMMIT_ADVICE[spec.delivery_semantics]}.",
        f"rebalanceProtocol={spec.rebalance_protocol.value}.",
    ]
    if auth_keys:
        secret = spec.kafka.secret_ref.name if spec.kafka.secret_ref else "?"
        lines.append(
            f"Also read from Secret {secret} (files in $KCG_KAFKA_AUTH_DIR): "
            + ", ".join(auth_keys)
        )
    return tuple(lines)


def build_consumer_config(
    kcg: KafkaConsumerGroup, auth_secret_data: Mapping[str, str] | None = None
) -> ConsumerConfig:
    """The client configuration of `kcg`.

    `auth_secret_data` is the `data` of the Secret named by spec.kafka.secretRef when the
    caller could read it (values may be base64; only the keys are used). Raises
    ConsumerConfigError naming each refused key and the fix.
    """
    spec = kcg.spec
    auth_keys = sorted(auth_secret_data or {})
    problems = consumer_config_problems(spec.consumer_config) + _auth_problems(kcg, auth_keys)
    classic = spec.rebalance_protocol is RebalanceProtocol.CLASSIC
    if not classic:
        problems += [
            classic_only_key_message(key)
            for key in sorted(CLASSIC_ONLY_CONSUMER_KEYS & spec.consumer_config.keys())
        ]
    if problems:
        raise ConsumerConfigError(problems)

    consumer: dict[str, str] = dict(DEFAULT_PROPERTIES)
    if classic:
        consumer.update(CLASSIC_DEFAULT_PROPERTIES)
    consumer.update(spec.consumer_config)
    consumer.update(enforced_properties(kcg))

    producer: dict[str, str] | None = None
    if spec.delivery_semantics is DeliverySemantics.EXACTLY_ONCE:
        producer = {
            **TRANSACTIONAL_PRODUCER_PROPERTIES,
            "bootstrap.servers": spec.kafka.bootstrap_servers,
        }
    auth = tuple(auth_keys)
    return ConsumerConfig(
        consumer=consumer, producer=producer, auth_keys=auth, header=_header(kcg, auth)
    )
