"""Pydantic models of the KafkaConsumerGroup API (kcg.dev/v1alpha1).

The CRD in crds/ is generated from these models (kcg_operator.api.crd); field names are
snake_case in Python and camelCase on the wire (aliases).

Every rule the apiserver enforces with CEL (`x-kubernetes-validations`) is declared here,
next to the Python check that enforces the same rule with the same message: the CRD and
the operator cannot drift, and a message reads the same from `kubectl apply` and from the
operator's condition. Rules the schema itself expresses (minimum, pattern, enum) come from
the field declarations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kcg_operator.outbox.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_POLL_INTERVAL_MS,
    DEFAULT_TABLE,
    DEFAULT_TOPIC_PATTERN,
)

GROUP: Final = "kcg.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "KafkaConsumerGroup"
PLURAL: Final = "kafkaconsumergroups"

# The consumer pods carry the KafkaConsumerGroup's name as a label value, so the name
# must fit a label value (63), not just an object name (253).
MAX_NAME_LENGTH: Final = 63
GROUP_LABEL: Final = "kcg.dev/group"

KAFKA_TOPIC_PATTERN: Final = r"^[a-zA-Z0-9._-]+$"
MAX_TOPIC_LENGTH: Final = 249
MAX_TOPICS: Final = 64
MAX_CONSUMER_CONFIG_ENTRIES: Final = 64
# A librdkafka property name; also keeps the properties file free of `=`, `:` and spaces.
CONSUMER_PROPERTY_PATTERN: Final = r"^[A-Za-z0-9._-]+$"
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN: Final = r"^[-._a-zA-Z0-9]+$"
# A broker list as librdkafka reads it: [proto://]host[:port], comma-separated, no spaces.
BOOTSTRAP_SERVERS_PATTERN: Final = (
    r"^([A-Za-z_]+://)?[A-Za-z0-9._\-\[\]:]+(,([A-Za-z_]+://)?[A-Za-z0-9._\-\[\]:]+)*$"
)
# An SQL identifier, optionally schema-qualified; quoting is not offered on purpose.
SQL_IDENTIFIER_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$"
TOPIC_PATTERN_PATTERN: Final = r"^([a-zA-Z0-9._-]|\$\{[a-z_]+\})+$"
# metav1.Condition's validation, so status conditions look like built-in ones.
CONDITION_TYPE_PATTERN: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


# ---------------------------------------------------------------------------------------
# Rules shared by the CRD (CEL) and the Python validation.


@dataclass(frozen=True)
class CelRule:
    """One `x-kubernetes-validations` entry; `message` is also the Python error text."""

    rule: str
    message: str
    field_path: str | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            out["fieldPath"] = self.field_path
        return out


def cel_rules(*rules: CelRule) -> dict[str, Any]:
    """A json_schema_extra fragment holding CEL rules (merged by kcg_operator.api.crd)."""
    return {"x-kubernetes-validations": [r.to_schema() for r in rules]}


@dataclass(frozen=True)
class ManagedKey:
    """A client property the operator sets itself, and what the user should do instead."""

    why: str
    fix: str


# The one list of client properties the operator owns. consumer_config.py sets these
# (all but metadata.broker.list, an alias, and group.instance.id, which must stay unset;
# a unit test holds it to that), the CRD refuses them in spec.consumerConfig with one CEL
# rule each, and the Python validation refuses them with the same message.
MANAGED_CONSUMER_KEYS: Final[Mapping[str, ManagedKey]] = MappingProxyType(
    {
        "bootstrap.servers": ManagedKey(
            "the operator sets it from spec.kafka.bootstrapServers",
            "set spec.kafka.bootstrapServers instead",
        ),
        "metadata.broker.list": ManagedKey(
            "it is an alias of bootstrap.servers, which the operator sets from "
            "spec.kafka.bootstrapServers",
            "set spec.kafka.bootstrapServers instead",
        ),
        "group.id": ManagedKey(
            "the operator sets it from spec.groupId (default: metadata.name)",
            "set spec.groupId instead",
        ),
        "group.protocol": ManagedKey(
            "the operator sets it from spec.rebalanceProtocol",
            "set spec.rebalanceProtocol to classic or consumer instead",
        ),
        "partition.assignment.strategy": ManagedKey(
            "the operator enforces cooperative-sticky (classic protocol) or broker-side "
            "assignment (consumer protocol) so rebalances never stop the whole group",
            "remove it; choose the protocol with spec.rebalanceProtocol",
        ),
        "group.instance.id": ManagedKey(
            "static membership needs a different id in every pod, and this configuration "
            "is shared by all replicas",
            "remove it",
        ),
        "enable.auto.commit": ManagedKey(
            "spec.deliverySemantics decides when offsets are committed",
            "remove it; choose spec.deliverySemantics",
        ),
        "enable.auto.offset.store": ManagedKey(
            "spec.deliverySemantics decides when offsets are stored",
            "remove it; choose spec.deliverySemantics",
        ),
        "isolation.level": ManagedKey(
            "spec.deliverySemantics sets it (read_committed)",
            "remove it; choose spec.deliverySemantics",
        ),
    }
)

# Properties that carry secrets: they belong in the Secret named by spec.kafka.secretRef,
# never in the KafkaConsumerGroup (readable by anyone who can read the CR) nor in the
# ConfigMap the operator renders from it.
CREDENTIAL_CONSUMER_KEYS: Final[frozenset[str]] = frozenset(
    {
        "sasl.username",
        "sasl.password",
        "sasl.jaas.config",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "ssl.key.password",
        "ssl.key.pem",
        "ssl.keystore.password",
        "ssl.truststore.password",
    }
)
CREDENTIAL_SUFFIXES: Final[tuple[str, ...]] = (".password", ".secret")

# Classic-protocol tuning that librdkafka refuses when group.protocol=consumer (KIP-848
# moves session and heartbeat timing to the broker).
CLASSIC_ONLY_CONSUMER_KEYS: Final[frozenset[str]] = frozenset(
    {"session.timeout.ms", "heartbeat.interval.ms", "group.protocol.type"}
)


def managed_key_message(key: str) -> str:
    managed = MANAGED_CONSUMER_KEYS[key]
    return f"spec.consumerConfig must not set {key}: {managed.why}; {managed.fix}"


def credential_key_message(key: str) -> str:
    return (
        f"spec.consumerConfig must not set {key}: credentials are never written inline; "
        "put it in the Secret named by spec.kafka.secretRef"
    )


CREDENTIAL_SUFFIX_MESSAGE: Final = (
    "spec.consumerConfig must not set keys ending in .password or .secret: credentials are "
    "never written inline; put them in the Secret named by spec.kafka.secretRef"
)


def classic_only_key_message(key: str) -> str:
    return (
        f"spec.consumerConfig must not set {key} with spec.rebalanceProtocol consumer: the "
        "broker manages session and heartbeat timing in the KIP-848 protocol; remove it "
        "(or use rebalanceProtocol classic)"
    )


def _is_credential_key(key: str) -> bool:
    return key in CREDENTIAL_CONSUMER_KEYS or key.endswith(CREDENTIAL_SUFFIXES)


def _cel_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_NO_CREDENTIAL_SUFFIX: Final = " && ".join(
    f"!k.endsWith({_cel_string(suffix)})" for suffix in CREDENTIAL_SUFFIXES
)
# One rule per key, so the apiserver's message names the key and says why.
CONSUMER_CONFIG_RULES: Final[tuple[CelRule, ...]] = (
    *(
        CelRule(f"!({_cel_string(k)} in self)", managed_key_message(k))
        for k in MANAGED_CONSUMER_KEYS
    ),
    *(
        CelRule(f"!({_cel_string(k)} in self)", credential_key_message(k))
        for k in sorted(CREDENTIAL_CONSUMER_KEYS)
    ),
    CelRule(f"self.all(k, {_NO_CREDENTIAL_SUFFIX})", CREDENTIAL_SUFFIX_MESSAGE),
    CelRule(
        f"self.all(k, k.matches({_cel_string(CONSUMER_PROPERTY_PATTERN)}))",
        "spec.consumerConfig keys must be client property names (letters, digits, '.', '_' "
        "and '-'): use the librdkafka name, e.g. max.poll.interval.ms",
    ),
    CelRule(
        "self.all(k, !self[k].contains('\\n') && !self[k].contains('\\r'))",
        "spec.consumerConfig values must be a single line: remove the line breaks",
    ),
)

NAME_LENGTH_RULE: Final = CelRule(
    f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
    f"metadata.name must be at most {MAX_NAME_LENGTH} characters: it becomes the "
    f"{GROUP_LABEL} label value of the consumer pods; choose a shorter name",
    ".metadata.name",
)
GROUP_ID_IMMUTABLE_RULE: Final = CelRule(
    "has(self.groupId) == has(oldSelf.groupId) && (!has(self.groupId) || self.groupId == "
    "oldSelf.groupId)",
    "spec.groupId is immutable: another group id is another consumer group, without the "
    "committed offsets; create a new KafkaConsumerGroup instead",
    ".groupId",
)
CLASSIC_ONLY_RULES: Final[tuple[CelRule, ...]] = tuple(
    CelRule(
        f"self.rebalanceProtocol != 'consumer' || !has(self.consumerConfig) || "
        f"!({_cel_string(k)} in self.consumerConfig)",
        classic_only_key_message(k),
        ".consumerConfig",
    )
    for k in sorted(CLASSIC_ONLY_CONSUMER_KEYS)
)
TOPICS_NOT_EMPTY_RULE: Final = CelRule(
    "size(self) > 0",
    "spec.topics must name at least one topic: list the topics this group consumes, "
    "e.g. topics: [orders]",
)
TOPIC_NOT_DOTS_RULE: Final = CelRule(
    "self != '.' && self != '..'",
    "spec.topics: '.' and '..' are not valid Kafka topic names; use the topic's real name",
)
MIN_NOT_ABOVE_MAX_RULE: Final = CelRule(
    "self.minReplicas <= self.maxReplicas",
    "spec.scaling.minReplicas must not exceed spec.scaling.maxReplicas: lower minReplicas "
    "or raise maxReplicas",
    ".minReplicas",
)
ZERO_NEEDS_SCALE_TO_ZERO_RULE: Final = CelRule(
    "self.minReplicas > 0 || (has(self.scaleToZero) && self.scaleToZero.enabled)",
    "spec.scaling.minReplicas is 0 but spec.scaling.scaleToZero.enabled is false: set "
    "minReplicas to 1 or more, or set scaleToZero.enabled: true",
    ".minReplicas",
)
OUTBOX_NOT_AT_ZERO_RULE: Final = CelRule(
    "!has(self.outbox) || !has(self.scaling) || !has(self.scaling.scaleToZero) || "
    "!self.scaling.scaleToZero.enabled",
    "spec.scaling.scaleToZero.enabled must be false with spec.outbox: the outbox relay runs "
    "in the consumer pods, so at zero replicas nothing publishes the outbox's events; "
    "disable scaleToZero (minReplicas 1 or more), or remove spec.outbox",
    ".scaling.scaleToZero.enabled",
)
TEMPLATE_HAS_CONTAINER_RULE: Final = CelRule(
    "has(self.spec) && has(self.spec.containers) && size(self.spec.containers) > 0",
    "spec.template.spec.containers must hold at least one container (with name and image): "
    "the consumer app runs in it",
)
TEMPLATE_RESTART_ALWAYS_RULE: Final = CelRule(
    "!has(self.spec) || !has(self.spec.restartPolicy) || self.spec.restartPolicy == 'Always'",
    "spec.template.spec.restartPolicy must be Always (or unset): the consumers run in a "
    "Deployment, which only supports Always",
)
TEMPLATE_GROUP_LABEL_RULE: Final = CelRule(
    f"!has(self.metadata) || !has(self.metadata.labels) || "
    f"!({_cel_string(GROUP_LABEL)} in self.metadata.labels)",
    f"spec.template.metadata.labels must not set {GROUP_LABEL}: the operator sets it to the "
    "KafkaConsumerGroup's name and selects the consumer pods by it; remove the label",
)
TEMPLATE_IMAGES_RULE: Final = CelRule(
    "!has(self.spec) || !has(self.spec.containers) || "
    "self.spec.containers.all(c, has(c.image) && size(c.image) > 0)",
    "spec.template.spec.containers: every container needs an image: add image: to each "
    "(a Deployment refuses containers without one)",
)
TEMPLATE_RULES: Final[tuple[CelRule, ...]] = (
    TEMPLATE_HAS_CONTAINER_RULE,
    TEMPLATE_IMAGES_RULE,
    TEMPLATE_RESTART_ALWAYS_RULE,
    TEMPLATE_GROUP_LABEL_RULE,
)


# ---------------------------------------------------------------------------------------
# Spec


class ApiModel(BaseModel):
    """Base for API types: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class DeliverySemantics(StrEnum):
    """How offsets are committed relative to processing."""

    AT_MOST_ONCE = "atMostOnce"
    AT_LEAST_ONCE = "atLeastOnce"
    EXACTLY_ONCE = "exactlyOnce"


class RebalanceProtocol(StrEnum):
    """The consumer group protocol."""

    CLASSIC = "classic"
    CONSUMER = "consumer"


class ScaleToZero(ApiModel):
    """Scale to zero replicas after a quiet period."""

    enabled: bool = Field(False, description="Allow zero replicas when the group is idle.")
    idle_seconds: int = Field(
        600, ge=30, description="Seconds with no lag and no new messages before scaling to zero."
    )


class ScalingSpec(ApiModel):
    """Lag-based scaling. Replicas never exceed the topics' partition count."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(MIN_NOT_ABOVE_MAX_RULE, ZERO_NEEDS_SCALE_TO_ZERO_RULE)
    )

    min_replicas: int = Field(1, ge=0, description="Fewest replicas (0 only with scaleToZero).")
    max_replicas: int = Field(
        10, ge=1, description="Most replicas; the partition count caps it further."
    )
    lag_per_replica: int = Field(
        1000, ge=1, description="Messages of lag one replica is expected to carry."
    )
    max_time_lag_seconds: int | None = Field(
        None, ge=1, description="Optional SLO: drain the backlog within this many seconds."
    )
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, description="Scale down only after the lower target held this long."
    )
    poll_interval_seconds: int = Field(
        15, ge=1, le=3600, description="Seconds between lag measurements."
    )
    scale_to_zero: ScaleToZero = Field(
        default_factory=ScaleToZero,
        description="Scale to zero replicas after a quiet period (off by default).",
        json_schema_extra={"default": {}},
    )
    paused: bool = Field(
        False, description="Dry run: compute and report desired replicas, do not scale."
    )

    @model_validator(mode="after")
    def _replica_bounds(self) -> ScalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MIN_NOT_ABOVE_MAX_RULE.message)
        if self.min_replicas == 0 and not self.scale_to_zero.enabled:
            raise ValueError(ZERO_NEEDS_SCALE_TO_ZERO_RULE.message)
        return self


class SecretReference(ApiModel):
    """A Secret in the KafkaConsumerGroup's namespace."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Name of the Secret, in the KafkaConsumerGroup's namespace.",
    )


class KafkaConnection(ApiModel):
    """How to reach the Kafka cluster."""

    bootstrap_servers: str = Field(
        min_length=1,
        max_length=4096,
        pattern=BOOTSTRAP_SERVERS_PATTERN,
        description="Comma-separated host:port list of brokers, e.g. kafka-0.kafka:9092,"
        "kafka-1.kafka:9092 (bootstrap.servers).",
    )
    secret_ref: SecretReference | None = Field(
        None,
        description="Secret whose keys are client properties for authentication and TLS "
        "(security.protocol, sasl.mechanism, sasl.username, sasl.password, ssl.ca.pem, ...). "
        "It is mounted as files into the consumer containers (KCG_KAFKA_AUTH_DIR); its "
        "values are never copied into the ConfigMap.",
    )


class DatabaseSecretKeyRef(ApiModel):
    """A key of a Secret holding a PostgreSQL connection string."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Name of the Secret, in the KafkaConsumerGroup's namespace.",
    )
    key: str = Field(
        "dsn",
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY_PATTERN,
        description="Key of the Secret holding the libpq connection string (DSN or URI).",
    )


class OutboxSpec(ApiModel):
    """Transactional-outbox relay: a native sidecar that moves committed rows to Kafka."""

    database_secret_ref: DatabaseSecretKeyRef = Field(
        description="Secret key holding the connection string of the database with the "
        "outbox table."
    )
    table: str = Field(
        DEFAULT_TABLE,
        max_length=127,
        pattern=SQL_IDENTIFIER_PATTERN,
        description="Outbox table, optionally schema-qualified (schema.table); unquoted SQL "
        "identifier.",
    )
    topic_pattern: str = Field(
        DEFAULT_TOPIC_PATTERN,
        min_length=1,
        max_length=MAX_TOPIC_LENGTH,
        pattern=TOPIC_PATTERN_PATTERN,
        description="Topic each row is published to; ${column} is replaced by the row's "
        "value of that column, e.g. ${aggregatetype} or events.${aggregatetype}.",
    )
    batch_size: int = Field(
        DEFAULT_BATCH_SIZE, ge=1, le=10000,
        description="Most rows published per database transaction (after a crash, at most "
        "this many events are published twice).",
    )
    poll_interval_milliseconds: int = Field(
        DEFAULT_POLL_INTERVAL_MS, ge=10, le=60000,
        description="Longest wait between polls of an empty table (an idle relay backs off "
        "up to this).",
    )


class KafkaConsumerGroupSpec(ApiModel):
    """A Kafka consumer application and how the operator runs it."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(GROUP_ID_IMMUTABLE_RULE, OUTBOX_NOT_AT_ZERO_RULE,
                                    *CLASSIC_ONLY_RULES)
    )

    group_id: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        pattern=r"^[!-~]+$",
        description="Kafka consumer group id (group.id). Default: metadata.name. Immutable: "
        "another id is another group, without the committed offsets.",
    )
    topics: list[str] = Field(
        max_length=MAX_TOPICS,
        description="Topics the group consumes; at least one, no duplicates.",
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            **cel_rules(TOPICS_NOT_EMPTY_RULE),
            "items": {
                "description": "A Kafka topic name.",
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_TOPIC_LENGTH,
                "pattern": KAFKA_TOPIC_PATTERN,
                **cel_rules(TOPIC_NOT_DOTS_RULE),
            },
        },
    )
    kafka: KafkaConnection = Field(description="How to reach the Kafka cluster.")
    delivery_semantics: DeliverySemantics = Field(
        DeliverySemantics.AT_LEAST_ONCE,
        description="Delivery preset. atMostOnce: the app commits before processing. "
        "atLeastOnce (default): the app commits after processing (make processing "
        "idempotent). exactlyOnce: read_committed consumer plus producer settings for the "
        "app's transactional producer. Auto-commit is off in every preset.",
    )
    rebalance_protocol: RebalanceProtocol = Field(
        RebalanceProtocol.CLASSIC,
        description="classic (default): cooperative-sticky assignment is enforced, so a "
        "rebalance moves only the partitions that change owner. consumer: the KIP-848 "
        "protocol (Kafka 4+), broker-side incremental assignment.",
    )
    consumer_config: dict[str, Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=MAX_CONSUMER_CONFIG_ENTRIES,
        description="Extra client properties (librdkafka names), e.g. max.poll.interval.ms. "
        "Keys the operator manages (group.id, bootstrap.servers, group.protocol, "
        "partition.assignment.strategy, group.instance.id, enable.auto.commit, "
        "enable.auto.offset.store, isolation.level) and credentials are refused.",
        json_schema_extra={"default": {}, **cel_rules(*CONSUMER_CONFIG_RULES)},
    )
    template: dict[str, Any] = Field(
        description="Pod template of the consumer app (a PodTemplateSpec, as in a "
        "Deployment). Every container gets the client properties file and KAFKA_* env vars.",
        json_schema_extra=cel_rules(*TEMPLATE_RULES),
    )
    replicas: int = Field(
        1,
        ge=0,
        description="Replicas when spec.scaling is absent (kubectl scale and an HPA set it "
        "through the scale subresource). Ignored while spec.scaling is set.",
    )
    scaling: ScalingSpec | None = Field(
        None,
        description="Lag-based scaling by the operator; absent: spec.replicas is used as is.",
    )
    outbox: OutboxSpec | None = Field(
        None, description="Transactional-outbox relay sidecar; absent: no relay."
    )

    @field_validator("topics")
    @classmethod
    def _topics_valid(cls, topics: list[str]) -> list[str]:
        if not topics:
            raise ValueError(TOPICS_NOT_EMPTY_RULE.message)
        for topic in topics:
            if topic in (".", ".."):
                raise ValueError(TOPIC_NOT_DOTS_RULE.message)
            if not re.fullmatch(KAFKA_TOPIC_PATTERN, topic) or len(topic) > MAX_TOPIC_LENGTH:
                raise ValueError(
                    f"spec.topics: {topic!r} is not a valid Kafka topic name: use 1 to "
                    f"{MAX_TOPIC_LENGTH} of the characters a-z A-Z 0-9 . _ -"
                )
        duplicates = sorted({t for t in topics if topics.count(t) > 1})
        if duplicates:
            raise ValueError(
                f"spec.topics lists {', '.join(duplicates)} more than once: list each topic once"
            )
        return topics

    @field_validator("consumer_config")
    @classmethod
    def _consumer_config_valid(cls, config: dict[str, str],
                               info: ValidationInfo) -> dict[str, str]:
        problems = consumer_config_problems(config)
        # In the same message, so a key refused for the protocol is named even when
        # another key is refused too (rebalanceProtocol is validated before this field).
        if info.data.get("rebalance_protocol") is RebalanceProtocol.CONSUMER:
            problems += [classic_only_key_message(k)
                         for k in sorted(CLASSIC_ONLY_CONSUMER_KEYS & config.keys())]
        if problems:
            raise ValueError("; ".join(problems))
        return config

    @field_validator("template")
    @classmethod
    def _template_valid(cls, template: dict[str, Any]) -> dict[str, Any]:
        problems = pod_template_problems(template)
        if problems:
            raise ValueError("; ".join(problems))
        return template

    @model_validator(mode="after")
    def _outbox_not_at_zero(self) -> KafkaConsumerGroupSpec:
        if self.outbox is not None and self.scaling is not None and \
                self.scaling.scale_to_zero.enabled:
            raise ValueError(OUTBOX_NOT_AT_ZERO_RULE.message)
        return self


def consumer_config_problems(config: Mapping[str, str]) -> list[str]:
    """Why `spec.consumerConfig` is refused, one message per key (empty: accepted)."""
    problems: list[str] = []
    for key in sorted(config):
        if key in MANAGED_CONSUMER_KEYS:
            problems.append(managed_key_message(key))
        elif key in CREDENTIAL_CONSUMER_KEYS:
            problems.append(credential_key_message(key))
        elif _is_credential_key(key):
            problems.append(CREDENTIAL_SUFFIX_MESSAGE)
        elif not re.fullmatch(CONSUMER_PROPERTY_PATTERN, key):
            problems.append(
                f"spec.consumerConfig key {key!r} is not a client property name: use the "
                "librdkafka name, e.g. max.poll.interval.ms"
            )
        elif "\n" in config[key] or "\r" in config[key]:
            problems.append(f"spec.consumerConfig[{key}] must be a single line: remove line breaks")
    return problems


def pod_template_problems(template: Mapping[str, Any]) -> list[str]:
    """The CEL template rules, in Python; the apiserver checks the rest of the schema."""
    problems: list[str] = []
    spec = template.get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    if not isinstance(containers, list) or not containers:
        problems.append(TEMPLATE_HAS_CONTAINER_RULE.message)
    elif not all(isinstance(c, Mapping) and c.get("name") for c in containers):
        problems.append(
            "spec.template.spec.containers: every container needs a name: add name: to each"
        )
    elif not all(c.get("image") for c in containers):
        problems.append(TEMPLATE_IMAGES_RULE.message)
    if isinstance(spec, Mapping) and spec.get("restartPolicy", "Always") != "Always":
        problems.append(TEMPLATE_RESTART_ALWAYS_RULE.message)
    metadata = template.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    if isinstance(labels, Mapping) and GROUP_LABEL in labels:
        problems.append(TEMPLATE_GROUP_LABEL_RULE.message)
    return problems


# ---------------------------------------------------------------------------------------
# Status


class ConditionType(StrEnum):
    """The condition types the operator reports."""

    READY = "Ready"
    SCALING = "Scaling"
    LAG_HEALTHY = "LagHealthy"
    REBALANCE_COMPLIANT = "RebalanceCompliant"
    OUTBOX_READY = "OutboxReady"
    PODS_HEALTHY = "PodsHealthy"
    GROUP_ID_UNIQUE = "GroupIdUnique"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class LagStatus(StrEnum):
    """Burrow's verdicts on a group's lag."""

    OK = "OK"
    WARN = "WARN"
    ERR = "ERR"
    STALL = "STALL"
    STOP = "STOP"


class StatusModel(ApiModel):
    """Status types ignore unknown fields: old operator versions may have written them."""

    model_config = ConfigDict(extra="ignore")


class Condition(StatusModel):
    """One aspect of the object's state, as in the Kubernetes API conventions."""

    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
        description="Condition type: Ready, Scaling, LagHealthy, RebalanceCompliant, "
        "OutboxReady, PodsHealthy or GroupIdUnique.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="CamelCase reason for the last transition, for machines.",
    )
    message: str = Field(
        max_length=32768, description="Human-readable details of the last transition."
    )
    last_transition_time: datetime = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the condition was computed from."
    )


class GroupMember(StatusModel):
    """A member of the consumer group, as the broker describes it."""

    client_id: str = Field(description="client.id of the member.")
    host: str = Field("", description="Host the member connects from.")
    assignor: str | None = Field(
        None, description="Partition assignor the member uses (classic protocol)."
    )
    partitions: int = Field(0, ge=0, description="Partitions assigned to the member.")


class KafkaConsumerGroupStatus(StatusModel):
    """Observed state of the consumer group and its workload."""

    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the status was computed from."
    )
    conditions: list[Condition] | None = Field(
        None,
        description="Ready, Scaling, LagHealthy, RebalanceCompliant, OutboxReady, PodsHealthy, "
        "GroupIdUnique.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    partitions: int | None = Field(
        None, ge=0, description="Partitions of the consumed topics, summed."
    )
    replicas: int | None = Field(None, ge=0, description="Replicas of the consumer Deployment.")
    desired_replicas: int | None = Field(
        None, ge=0, description="Replicas the scaling policy wants (capped at partitions)."
    )
    total_lag: int | None = Field(None, ge=0, description="Messages of lag, all partitions.")
    max_time_lag_seconds: float | None = Field(
        None, ge=0, description="Largest lag of any partition, in seconds."
    )
    lag_status: LagStatus | None = Field(
        None, description="Burrow's verdict on the lag: OK, WARN, ERR, STALL or STOP."
    )
    # No pattern on purpose: a value the schema refused would fail the whole status write,
    # and the reasons come from the kubelet and the scheduler as well as from us.
    health: str | None = Field(
        None,
        max_length=128,
        description="The STATUS column: the reason of the first problem (a pod's own reason "
        "such as ImagePullBackOff, CrashLoopBackOff, OOMKilled, Unschedulable or PodsNotReady; "
        "KafkaUnreachable, TopicNotFound, InvalidSpec, ...), else the lag verdict (OK, WARN, "
        "ERR).",
    )
    assignor: str | None = Field(
        None, description="Assignor the group uses on the broker (classic protocol)."
    )
    members: list[GroupMember] | None = Field(
        None, description="Members of the group, as the broker describes it."
    )
    last_scale_time: datetime | None = Field(
        None, description="When the operator last changed the replicas."
    )
    selector: str | None = Field(
        None, description="Label selector of the consumer pods (for the scale subresource)."
    )


# ---------------------------------------------------------------------------------------
# Whole object


class ObjectMeta(BaseModel):
    """The metadata fields the operator reads; the rest (managedFields above all) is not
    kept: a parsed object lives in memory for every group the operator serves."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class KafkaConsumerGroup(ApiModel):
    """A whole KafkaConsumerGroup object, as read from the apiserver."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(API_VERSION)
    kind: str = Field(KIND)
    metadata: ObjectMeta
    spec: KafkaConsumerGroupSpec
    status: KafkaConsumerGroupStatus | None = None

    @property
    def group_id(self) -> str:
        """The Kafka group id: spec.groupId, or the object's name."""
        return self.spec.group_id or self.metadata.name


class InvalidKafkaConsumerGroup(ValueError):
    """A KafkaConsumerGroup body the operator cannot act on; `problems` name field and fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


_FIXES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "missing": "add it",
        "extra_forbidden": "remove it (unknown field; check its spelling)",
    }
)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: Mapping[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith(("spec.", "metadata.")):
        return message  # our rules name the field themselves
    fix = _FIXES.get(str(error["type"]))
    path = _path(tuple(error["loc"]))
    return f"{path}: {message}" + (f"; {fix}" if fix else "")


def parse_kafka_consumer_group(body: Mapping[str, Any]) -> KafkaConsumerGroup:
    """Parse a whole CR body; raise InvalidKafkaConsumerGroup naming each bad field and fix.

    The apiserver already ran the same rules at admission; this catches objects stored
    before a rule existed and gives handlers one typed object to work with. The status is
    left out (status stays None): it is the operator's own output, rendered afresh from
    each check, and parsing it on every watch event would only cost time and memory.
    """
    try:
        return KafkaConsumerGroup.model_validate(
            {k: v for k, v in body.items() if k != "status"})
    except ValidationError as exc:
        raise InvalidKafkaConsumerGroup([_describe(e) for e in exc.errors()]) from None
