"""One-in-N start-up failures of the local stack, each forced here instead of waited for.

- Ports: the kernel's bind(0) pick returned the same port twice within one `up` (about one
  stack in 700), and a picked port could be taken by anybody's bind(0) or connect() before
  its server started.
- Image tags: a content hash that is all digits is a number to `helm --set`, and the chart
  refuses it (one tree in ~310); tests/integration/test_image_tags.py installs one.
- Kafka cluster ids starting with '-': tests/unit/test_localstack_prerequisites.py.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "stack"))

import images  # noqa: E402
import localstack  # noqa: E402

pytestmark = pytest.mark.unit


class _Scripted:
    """A random source whose sample offers the given ports first, when they are in the
    population at all; the rest follow in a fixed order."""

    def __init__(self, first: list[int]) -> None:
        self.first = first

    def sample(self, population: list[int], k: int) -> list[int]:
        offered = set(population)
        order = [p for p in self.first if p in offered]
        return (order + [p for p in population if p not in self.first])[:k]


@pytest.fixture
def fresh_ports(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    handed: set[int] = set()
    monkeypatch.setattr(localstack, "_ports_handed_out", handed)
    return handed


def _script(monkeypatch: pytest.MonkeyPatch, ports: list[int]) -> None:
    monkeypatch.setattr(localstack, "_port_random", _Scripted(ports))


def test_a_port_handed_out_is_never_handed_out_again(
    fresh_ports: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bad case, forced: the source draws the same port for two picks in a row (the
    # kernel's bind(0) did so, since the probe socket is closed before the server binds).
    port = _free_outside_ephemeral()
    _script(monkeypatch, [port])
    first, second = localstack.free_port(), localstack.free_port()
    assert first == port
    assert second != port


def test_a_port_something_listens_on_is_skipped(
    fresh_ports: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", _free_outside_ephemeral()))
        busy.listen()
        taken = busy.getsockname()[1]
        _script(monkeypatch, [taken])
        assert localstack.free_port() != taken


def test_ports_come_from_outside_the_kernels_ephemeral_range_and_are_all_distinct(
    fresh_ports: set[int],
) -> None:
    low, high = localstack.ephemeral_port_range()
    # More picks than any `up` makes: the kernel's own picks collide within 300 picks in
    # about 96 runs out of 100.
    ports = [localstack.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(not low <= p <= high and p >= localstack.PORT_FLOOR for p in ports)


def test_without_room_outside_the_ephemeral_range_the_kernels_picks_never_repeat(
    fresh_ports: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localstack, "ephemeral_port_range", lambda: (1024, 65535))
    ports = [localstack.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def _free_outside_ephemeral() -> int:
    low, high = localstack.ephemeral_port_range()
    candidates: list[int] = [*range(localstack.PORT_FLOOR, low), *range(high + 1, 65536)]
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port outside the ephemeral range")


# -------------------------------------------------------------------------- image tags


@given(st.text(alphabet="0123456789abcdef", min_size=12, max_size=12))
def test_image_tags_start_with_a_letter_whatever_the_hash(digest: str) -> None:
    tag = images.image_tag(digest)
    assert tag[0].isalpha() and digest in tag
