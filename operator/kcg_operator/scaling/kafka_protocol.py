"""Kafka's wire protocol for the requests one lag sweep makes: pure encoding and decoding.

librdkafka's admin client asks one group per OffsetFetch and one per DescribeGroups, so a
sweep of 10 000 groups was 20 000 requests the broker parsed one by one. The protocol has
carried many groups per request for years: DescribeGroups always, FindCoordinator since
v4 (KIP-699), OffsetFetch since v8 (KIP-709). `kafka_wire` speaks these versions; this
module only turns requests into bytes and answers into plain values (field layouts as
in Kafka's own message definitions, clients/src/main/resources/common/message/*.json).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from kcg_operator.scaling.collector import Member

T = TypeVar("T")


@dataclass(frozen=True)
class Api:
    key: int
    version: int
    flexible: bool  # compact encodings and tagged fields (KIP-482)


API_VERSIONS: Final = Api(18, 3, True)
METADATA: Final = Api(3, 12, True)
LIST_OFFSETS: Final = Api(2, 7, True)
FIND_COORDINATOR: Final = Api(10, 4, True)
DESCRIBE_GROUPS: Final = Api(15, 5, True)
CONSUMER_GROUP_DESCRIBE: Final = Api(69, 0, True)
OFFSET_FETCH: Final = Api(9, 8, True)
SASL_HANDSHAKE: Final = Api(17, 1, False)
SASL_AUTHENTICATE: Final = Api(36, 2, True)
#: What a broker must support for the sweep to be spoken here (Kafka 3.1 and later); the
#: consumer-group describe (KIP-848 groups) is asked only where the broker has it.
REQUIRED: Final = (METADATA, LIST_OFFSETS, FIND_COORDINATOR, DESCRIBE_GROUPS, OFFSET_FETCH)

LATEST_TIMESTAMP: Final = -1
EARLIEST_TIMESTAMP: Final = -2

#: Error codes a sweep meets, by name (Kafka's `Errors` enum); others show as their number.
ERROR_NAMES: Final = {
    1: "OFFSET_OUT_OF_RANGE", 3: "UNKNOWN_TOPIC_OR_PARTITION", 5: "LEADER_NOT_AVAILABLE",
    6: "NOT_LEADER_OR_FOLLOWER", 7: "REQUEST_TIMED_OUT", 8: "BROKER_NOT_AVAILABLE",
    14: "COORDINATOR_LOAD_IN_PROGRESS", 15: "COORDINATOR_NOT_AVAILABLE",
    16: "NOT_COORDINATOR", 24: "INVALID_GROUP_ID", 29: "TOPIC_AUTHORIZATION_FAILED",
    30: "GROUP_AUTHORIZATION_FAILED", 31: "CLUSTER_AUTHORIZATION_FAILED",
    33: "UNSUPPORTED_SASL_MECHANISM", 34: "ILLEGAL_SASL_STATE", 35: "UNSUPPORTED_VERSION",
    58: "SASL_AUTHENTICATION_FAILED", 69: "GROUP_ID_NOT_FOUND", 74: "FENCED_LEADER_EPOCH",
    75: "UNKNOWN_LEADER_EPOCH", 100: "UNKNOWN_TOPIC_ID",
}
#: Errors that mean "ask this group's coordinator again" (it moved, or is still loading).
COORDINATOR_ERRORS: Final = frozenset({14, 15, 16})


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, f"error {code}")


class ProtocolError(Exception):
    """An answer that does not parse as the request's response."""


class Writer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def int8(self, v: int) -> Writer:
        self.buf += struct.pack(">b", v)
        return self

    def int16(self, v: int) -> Writer:
        self.buf += struct.pack(">h", v)
        return self

    def int32(self, v: int) -> Writer:
        self.buf += struct.pack(">i", v)
        return self

    def int64(self, v: int) -> Writer:
        self.buf += struct.pack(">q", v)
        return self

    def boolean(self, v: bool) -> Writer:
        return self.int8(1 if v else 0)

    def uvarint(self, v: int) -> Writer:
        while v >= 0x80:
            self.buf.append((v & 0x7F) | 0x80)
            v >>= 7
        self.buf.append(v)
        return self

    def string(self, v: str | None) -> Writer:
        """A non-flexible (int16-length) nullable string."""
        if v is None:
            return self.int16(-1)
        data = v.encode()
        self.int16(len(data))
        self.buf += data
        return self

    def compact_string(self, v: str | None) -> Writer:
        if v is None:
            return self.uvarint(0)
        data = v.encode()
        self.uvarint(len(data) + 1)
        self.buf += data
        return self

    def compact_bytes(self, v: bytes) -> Writer:
        self.uvarint(len(v) + 1)
        self.buf += v
        return self

    def compact_array(self, items: Sequence[T] | None, each: Callable[[T], object]) -> Writer:
        if items is None:
            return self.uvarint(0)
        self.uvarint(len(items) + 1)
        for item in items:
            each(item)
        return self

    def no_tags(self) -> Writer:
        return self.uvarint(0)


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, fmt: str, size: int) -> int:
        if self.pos + size > len(self.data):
            raise ProtocolError("answer ended early")
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return int(v)

    def int8(self) -> int:
        return self._take(">b", 1)

    def int16(self) -> int:
        return self._take(">h", 2)

    def int32(self) -> int:
        return self._take(">i", 4)

    def int64(self) -> int:
        return self._take(">q", 8)

    def boolean(self) -> bool:
        return self.int8() != 0

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise ProtocolError("bad varint")
            b = self.data[self.pos]
            self.pos += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7

    def raw(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("answer ended early")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return bytes(out)

    def string(self) -> str | None:
        n = self.int16()
        return None if n < 0 else self.raw(n).decode()

    def compact_string(self) -> str | None:
        n = self.uvarint()
        return None if n == 0 else self.raw(n - 1).decode()

    def compact_str(self) -> str:
        """A compact string the schema says is never null."""
        return self.compact_string() or ""

    def compact_bytes(self) -> bytes | None:
        n = self.uvarint()
        return None if n == 0 else self.raw(n - 1)

    def bytes32(self) -> bytes | None:
        """Non-flexible bytes (int32 length)."""
        n = self.int32()
        return None if n < 0 else self.raw(n)

    def array(self, each: Callable[[Reader], T]) -> list[T]:
        """A non-flexible array (int32 count)."""
        return [each(self) for _ in range(max(self.int32(), 0))]

    def compact_array(self, each: Callable[[Reader], T]) -> list[T]:
        n = self.uvarint()
        return [each(self) for _ in range(n - 1)] if n else []

    def skip_tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.raw(self.uvarint())


# -- framing ------------------------------------------------------------------------------

def frame(api: Api, correlation_id: int, client_id: str, body: bytes) -> bytes:
    """A request on the wire: size, header (v2 when flexible, else v1), body."""
    head = Writer().int16(api.key).int16(api.version).int32(correlation_id).string(client_id)
    if api.flexible:
        head.no_tags()
    payload = bytes(head.buf) + body
    return struct.pack(">i", len(payload)) + payload


def response_body(api: Api, payload: bytes) -> tuple[int, Reader]:
    """(correlation id, a reader at the body) of one response frame's payload. ApiVersions
    answers with header v0 whatever its version (so that any client can read it)."""
    r = Reader(payload)
    correlation_id = r.int32()
    if api.flexible and api.key != API_VERSIONS.key:
        r.skip_tags()
    return correlation_id, r


# -- requests -----------------------------------------------------------------------------

def api_versions_request() -> bytes:
    return bytes(Writer().compact_string("kcg-operator").compact_string("1").no_tags().buf)


def metadata_request(topics: Iterable[str]) -> bytes:
    w = Writer()

    def topic(name: str) -> None:
        w.buf += bytes(16)  # no topic id: asked by name
        w.compact_string(name).no_tags()

    w.compact_array(sorted(set(topics)), topic)
    return bytes(w.boolean(False).boolean(False).no_tags().buf)


def list_offsets_request(partitions: Mapping[str, Sequence[int]], timestamp: int) -> bytes:
    w = Writer().int32(-1).int8(0)  # a client (no replica); read_uncommitted like librdkafka

    def topic(name: str) -> None:
        w.compact_string(name)
        w.compact_array(partitions[name], lambda p: w.int32(p).int32(-1).int64(timestamp)
                        .no_tags())
        w.no_tags()

    w.compact_array(sorted(partitions), topic)
    return bytes(w.no_tags().buf)


def find_coordinator_request(group_ids: Sequence[str]) -> bytes:
    w = Writer().int8(0)  # key type: group
    w.compact_array(group_ids, w.compact_string)
    return bytes(w.no_tags().buf)


def describe_groups_request(group_ids: Sequence[str]) -> bytes:
    w = Writer()
    w.compact_array(group_ids, w.compact_string)
    return bytes(w.boolean(False).no_tags().buf)


consumer_group_describe_request = describe_groups_request  # the same fields, another key


def offset_fetch_request(groups: Mapping[str, Mapping[str, Sequence[int]]]) -> bytes:
    """OffsetFetch v8: for each group, the partitions wanted per topic."""
    w = Writer()

    def group(group_id: str) -> None:
        topics = groups[group_id]
        w.compact_string(group_id)
        w.compact_array(sorted(topics), lambda t: w.compact_string(t).compact_array(
            topics[t], w.int32).no_tags())
        w.no_tags()

    w.compact_array(list(groups), group)
    return bytes(w.boolean(False).no_tags().buf)  # require_stable false, as librdkafka


def sasl_handshake_request(mechanism: str) -> bytes:
    return bytes(Writer().string(mechanism).buf)


def sasl_authenticate_request(auth_bytes: bytes) -> bytes:
    return bytes(Writer().compact_bytes(auth_bytes).no_tags().buf)


# -- responses ----------------------------------------------------------------------------

def read_api_versions(r: Reader) -> tuple[int, dict[int, tuple[int, int]]]:
    """(error code, api key -> (min, max) version)."""
    error = r.int16()

    def one(r: Reader) -> tuple[int, int, int]:
        out = (r.int16(), r.int16(), r.int16())
        r.skip_tags()
        return out

    return error, {k: (lo, hi) for k, lo, hi in r.compact_array(one)}


@dataclass(frozen=True)
class TopicMetadata:
    error: int
    leaders: dict[int, int]  # partition -> leader node id (-1: none)


@dataclass(frozen=True)
class Metadata:
    brokers: dict[int, tuple[str, int]]
    topics: dict[str, TopicMetadata]


def read_metadata(r: Reader) -> Metadata:
    r.int32()  # throttle

    def broker(r: Reader) -> tuple[int, str, int]:
        node, host, port = r.int32(), r.compact_str(), r.int32()
        r.compact_string()  # rack
        r.skip_tags()
        return node, host, port

    def partition(r: Reader) -> tuple[int, int]:
        r.int16()  # a partition's error (LEADER_NOT_AVAILABLE) shows as leader -1 below
        index, leader = r.int32(), r.int32()
        r.int32()  # leader epoch
        for _ in range(3):  # replicas, isr, offline replicas
            r.compact_array(Reader.int32)
        r.skip_tags()
        return index, leader

    def topic(r: Reader) -> tuple[str, TopicMetadata]:
        error, name = r.int16(), r.compact_str()
        r.raw(16)  # topic id
        r.boolean()  # internal
        leaders = dict(r.compact_array(partition))
        r.int32()  # authorized operations
        r.skip_tags()
        return name, TopicMetadata(error, leaders)

    brokers = {node: (host, port) for node, host, port in r.compact_array(broker)}
    r.compact_string()  # cluster id
    r.int32()  # controller
    return Metadata(brokers, dict(r.compact_array(topic)))


def read_list_offsets(r: Reader) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (error code, offset)."""
    r.int32()
    out: dict[tuple[str, int], tuple[int, int]] = {}

    def topic(r: Reader) -> None:
        name = r.compact_str()

        def partition(r: Reader) -> None:
            index, error = r.int32(), r.int16()
            r.int64()  # timestamp
            offset = r.int64()
            r.int32()  # leader epoch
            r.skip_tags()
            out[(name, index)] = (error, offset)

        r.compact_array(partition)
        r.skip_tags()

    r.compact_array(topic)
    return out


@dataclass(frozen=True)
class Coordinator:
    error: int
    message: str | None
    node_id: int
    host: str
    port: int


def read_find_coordinator(r: Reader) -> dict[str, Coordinator]:
    r.int32()

    def one(r: Reader) -> tuple[str, Coordinator]:
        key, node, host, port = r.compact_str(), r.int32(), r.compact_str(), r.int32()
        error, message = r.int16(), r.compact_string()
        r.skip_tags()
        return key, Coordinator(error, message, node, host, port)

    return dict(r.compact_array(one))


@dataclass(frozen=True)
class DescribedGroup:
    error: int
    message: str | None
    group_id: str
    state: str  # as the broker names it: Stable, Empty, PreparingRebalance, ...
    group_type: str  # CLASSIC, or CONSUMER for a KIP-848 group
    assignor: str | None
    members: tuple[Member, ...]


def read_consumer_assignment(data: bytes | None) -> tuple[tuple[str, int], ...]:
    """The partitions in a classic consumer's assignment (ConsumerProtocolAssignment, the
    embedded non-flexible encoding); anything else (another protocol type) owns none."""
    if not data:
        return ()
    r = Reader(data)
    r.int16()  # version
    pairs: list[tuple[str, int]] = []

    def topic(r: Reader) -> None:
        name = r.string() or ""
        pairs.extend((name, p) for p in r.array(Reader.int32))

    r.array(topic)
    return tuple(pairs)


def read_describe_groups(r: Reader) -> list[DescribedGroup]:
    r.int32()

    def member(r: Reader) -> Member:
        member_id = r.compact_str()
        r.compact_string()  # group instance id
        client_id, host = r.compact_str(), r.compact_str()
        r.compact_bytes()  # subscription metadata
        assignment = r.compact_bytes()
        r.skip_tags()
        try:
            assigned = read_consumer_assignment(assignment)
        except (ProtocolError, UnicodeDecodeError):
            assigned = ()
        return Member(member_id, client_id, host, assigned)

    def group(r: Reader) -> DescribedGroup:
        error, group_id, state = r.int16(), r.compact_str(), r.compact_str()
        protocol_type, protocol = r.compact_str(), r.compact_str()
        members = tuple(r.compact_array(member))
        if protocol_type != "consumer":  # another client's group: no partitions to read
            members = tuple(Member(m.member_id, m.client_id, m.host, ())
                            for m in members)
        r.int32()  # authorized operations
        r.skip_tags()
        return DescribedGroup(error, None, group_id, state, "CLASSIC", protocol or None,
                              members)

    return r.compact_array(group)


def read_consumer_group_describe(r: Reader) -> list[DescribedGroup]:
    r.int32()

    def topic_partitions(r: Reader) -> list[tuple[str, int]]:
        r.raw(16)  # topic id
        name = r.compact_str()
        parts = r.compact_array(Reader.int32)
        r.skip_tags()
        return [(name, p) for p in parts]

    def assignment(r: Reader) -> tuple[tuple[str, int], ...]:
        pairs = [tp for topic in r.compact_array(topic_partitions) for tp in topic]
        r.skip_tags()
        return tuple(pairs)

    def member(r: Reader) -> Member:
        member_id = r.compact_str()
        r.compact_string()  # instance id
        r.compact_string()  # rack
        r.int32()  # member epoch
        client_id, host = r.compact_str(), r.compact_str()
        r.compact_array(Reader.compact_string)  # subscribed topics
        r.compact_string()  # subscribed regex
        assigned = assignment(r)
        assignment(r)  # target assignment
        r.skip_tags()
        return Member(member_id, client_id, host, assigned)

    def group(r: Reader) -> DescribedGroup:
        error, message, group_id = r.int16(), r.compact_string(), r.compact_str()
        state = r.compact_str()
        r.int32()  # group epoch
        r.int32()  # assignment epoch
        assignor = r.compact_str()
        members = tuple(r.compact_array(member))
        r.int32()
        r.skip_tags()
        return DescribedGroup(error, message, group_id, state, "CONSUMER", assignor or None,
                              members)

    return r.compact_array(group)


@dataclass(frozen=True)
class FetchedOffsets:
    error: int
    # (topic, partition) -> (committed offset, -1 for none; partition error code)
    offsets: dict[tuple[str, int], tuple[int, int]]


def read_offset_fetch(r: Reader) -> dict[str, FetchedOffsets]:
    r.int32()

    def group(r: Reader) -> tuple[str, FetchedOffsets]:
        group_id = r.compact_str()
        offsets: dict[tuple[str, int], tuple[int, int]] = {}

        def topic(r: Reader) -> None:
            name = r.compact_str()

            def partition(r: Reader) -> None:
                index, offset = r.int32(), r.int64()
                r.int32()  # leader epoch
                r.compact_string()  # metadata
                offsets[(name, index)] = (offset, r.int16())
                r.skip_tags()

            r.compact_array(partition)
            r.skip_tags()

        r.compact_array(topic)
        error = r.int16()
        r.skip_tags()
        return group_id, FetchedOffsets(error, offsets)

    return dict(r.compact_array(group))


def read_sasl_handshake(r: Reader) -> tuple[int, list[str]]:
    error = r.int16()
    return error, [m or "" for m in r.array(Reader.string)]


def read_sasl_authenticate(r: Reader) -> tuple[int, str | None, bytes]:
    error, message, data = r.int16(), r.compact_string(), r.compact_bytes()
    r.int64()  # session lifetime
    r.skip_tags()
    return error, message, data or b""


# -- SASL/SCRAM (RFC 5802, RFC 7677) -----------------------------------------------------

SCRAM_HASHES: Final = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


class ScramError(Exception):
    pass


class ScramClient:
    """The client side of one SCRAM exchange: first message, final message, then the
    server's signature checked (a server that does not know the password cannot forge it)."""

    def __init__(self, mechanism: str, username: str, password: str,
                 nonce: str | None = None) -> None:
        self.hash = SCRAM_HASHES[mechanism]
        self.password = password
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        user = username.replace("=", "=3D").replace(",", "=2C")
        self.first_bare = f"n={user},r={self.nonce}"
        self._server_signature = b""

    def first(self) -> bytes:
        return f"n,,{self.first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        nonce, salt, iterations = fields.get("r", ""), fields.get("s"), fields.get("i")
        if not nonce.startswith(self.nonce) or salt is None or iterations is None:
            raise ScramError(f"unexpected SCRAM server message: {text[:80]}")
        salted = hashlib.pbkdf2_hmac(self.hash, self.password.encode(),
                                     base64.b64decode(salt), int(iterations))
        client_key = hmac.digest(salted, b"Client Key", self.hash)
        stored = hashlib.new(self.hash, client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        signature = hmac.digest(stored, auth_message, self.hash)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", self.hash)
        self._server_signature = hmac.digest(server_key, auth_message, self.hash)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        text = server_final.decode()
        if text.startswith("e="):
            raise ScramError(f"the server refused: {text[2:]}")
        expected = "v=" + base64.b64encode(self._server_signature).decode()
        if not hmac.compare_digest(text.split(",")[0], expected):
            raise ScramError("the server's SCRAM signature does not match")
