"""The Kafka protocol codec and settings of kafka_wire: primitives round-trip, embedded
encodings read as Kafka writes them, SCRAM as RFC 7677 computes it."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcg_operator.scaling import kafka_protocol as kp
from kcg_operator.scaling.collector import ClusterKey, GroupRequest, state_name
from kcg_operator.scaling.kafka_wire import (
    FORGET_AFTER_SWEEPS,
    NotSpoken,
    WireCluster,
    WireSettings,
    _Asked,
)


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_uvarints_round_trip(value: int) -> None:
    assert kp.Reader(bytes(kp.Writer().uvarint(value).buf)).uvarint() == value


@given(st.one_of(st.none(), st.text()), st.one_of(st.none(), st.text()), st.binary())
def test_strings_and_bytes_round_trip(compact: str | None, classic: str | None,
                                      data: bytes) -> None:
    w = kp.Writer().compact_string(compact).string(classic).compact_bytes(data).no_tags()
    r = kp.Reader(bytes(w.buf))
    assert (r.compact_string(), r.string(), r.compact_bytes()) == (compact, classic, data)
    r.skip_tags()
    assert r.pos == len(w.buf)


def test_a_truncated_answer_is_a_protocol_error() -> None:
    with pytest.raises(kp.ProtocolError):
        kp.Reader(b"\x05abc").compact_string()  # says 4 bytes, has 3


def test_a_request_frame_has_the_flexible_header() -> None:
    framed = kp.frame(kp.DESCRIBE_GROUPS, 7, "id", kp.describe_groups_request(["g"]))
    size, key, version, correlation, client_len = struct.unpack_from(">ihhih", framed)
    assert (size, key, version, correlation, client_len) == (len(framed) - 4, 15, 5, 7, 2)
    # client id "id", no header tags, then [ "g" ], include_authorized_operations, no tags
    assert framed[14:] == b"id" + b"\x00" + b"\x02\x02g" + b"\x00" + b"\x00"


def test_a_consumer_assignment_reads_as_kafka_encodes_it() -> None:
    # ConsumerProtocolAssignment v1: [topic "orders": partitions 0, 3], user data null.
    data = (struct.pack(">hi", 1, 1) + struct.pack(">h", 6) + b"orders"
            + struct.pack(">iii", 2, 0, 3) + struct.pack(">i", -1))
    assert kp.read_consumer_assignment(data) == (("orders", 0), ("orders", 3))
    assert kp.read_consumer_assignment(b"") == ()


def test_scram_sha_256_follows_rfc_7677() -> None:
    """The exchange of RFC 7677 section 3, byte for byte."""
    client = kp.ScramClient("SCRAM-SHA-256", "user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert client.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = client.final(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                         b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(kp.ScramError):
        client.verify(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def test_a_server_nonce_that_does_not_extend_ours_is_refused() -> None:
    client = kp.ScramClient("SCRAM-SHA-512", "u", "p", nonce="abc")
    with pytest.raises(kp.ScramError):
        client.final(b"r=xyz123,s=c2FsdA==,i=4096")


def test_usernames_are_escaped() -> None:
    assert kp.ScramClient("SCRAM-SHA-512", "a=b,c", "p", nonce="n").first() == \
        b"n,,n=a=3Db=2Cc,r=n"


@pytest.mark.parametrize(("kafka", "ours"), [
    ("Stable", "STABLE"), ("Empty", "EMPTY"), ("Dead", "DEAD"),
    ("PreparingRebalance", "PREPARING_REBALANCE"),
    ("CompletingRebalance", "COMPLETING_REBALANCE"), ("Reconciling", "RECONCILING"),
])
def test_group_states_are_named_as_the_admin_api_names_them(kafka: str, ours: str) -> None:
    assert state_name(kafka) == ours


def test_settings_spoken_here() -> None:
    assert WireSettings.of(None) == WireSettings(False, None, "", "", None, True)
    scram = WireSettings.of({"security.protocol": "sasl_ssl", "sasl.mechanisms": "SCRAM-SHA-512",
                             "sasl.username": "u", "sasl.password": "p", "ssl.ca.pem": "PEM",
                             "ssl.endpoint.identification.algorithm": "none"})
    assert scram == WireSettings(True, "SCRAM-SHA-512", "u", "p", "PEM", False)
    # A key the operator never passes on (a file path) changes nothing.
    assert WireSettings.of({"ssl.ca.location": "/etc/passwd"}).ca_pem is None


@pytest.mark.parametrize("auth", [
    {"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"},
    {"security.protocol": "SASL_PLAINTEXT"},  # librdkafka's default mechanism: GSSAPI
    {"security.protocol": "SSL", "ssl.certificate.pem": "C", "ssl.key.pem": "K"},
    {"security.protocol": "bogus"},
])
def test_settings_not_spoken_here_say_which(auth: dict[str, str]) -> None:
    with pytest.raises(NotSpoken):
        WireSettings.of(auth)


def test_a_group_no_longer_swept_loses_its_cached_coordinator() -> None:
    """A deleted object's group stops being swept: its coordinator entry goes after
    FORGET_AFTER_SWEEPS sweeps of the cluster, while groups still swept keep theirs."""
    cluster = WireCluster(ClusterKey.of("127.0.0.1:9"), WireSettings.of(None), 1.0)
    cluster.remember(["kept", "deleted"])
    cluster.coordinators.update(kept=1, deleted=2)
    for _ in range(FORGET_AFTER_SWEEPS - 1):
        cluster.remember(["kept"])
    assert cluster.coordinators == {"kept": 1, "deleted": 2}  # one sweep short
    cluster.remember(["kept"])
    assert cluster.coordinators == {"kept": 1}


def test_a_group_whose_coordinator_moved_is_asked_again_at_the_new_one() -> None:
    """NOT_COORDINATOR mid-sweep: the coordinator is looked up again and the group asked
    there, in the same sweep; a group that moves again is reported, not chased."""
    cluster = WireCluster(ClusterKey.of("127.0.0.1:9"), WireSettings.of(None), 1.0)
    coordinators = {"moving": [1, 2], "restless": [1, 3]}
    asked_at: set[tuple[str, int]] = set()

    async def find(group_ids: list[str], asked: _Asked) -> None:
        for g in group_ids:
            cluster.coordinators[g] = coordinators[g].pop(0)

    async def ask(node: int, groups: list[GroupRequest], counts: object,
                  asked: _Asked) -> dict[GroupRequest, str]:
        asked_at.update((g.group_id, node) for g in groups)
        return {g: "NOT_COORDINATOR" for g in groups if (g.group_id, node) != ("moving", 2)}

    cluster._find_coordinators = find  # type: ignore[method-assign]
    cluster._ask_batch = ask  # type: ignore[method-assign]
    asked = asyncio.run(cluster.ask_groups(
        [GroupRequest("moving", ("t",)), GroupRequest("restless", ("t",))], {}))
    assert asked_at == {("moving", 1), ("restless", 1), ("moving", 2), ("restless", 3)}
    assert asked.failures == {"restless": "NOT_COORDINATOR"}
    assert asked.failed_requests == 1
