"""Topic routing from the outbox row's columns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcg_operator.outbox.routing import parse_topic_pattern, topic_name_problem

pytestmark = pytest.mark.unit


def test_default_pattern_routes_by_aggregatetype() -> None:
    router = parse_topic_pattern("${aggregatetype}")
    assert router.topic("orders", "42", "OrderPaid") == "orders"
    assert router.columns == ("aggregatetype",)
    assert router.sql_expression() == ("aggregatetype", ())


def test_literals_and_several_columns() -> None:
    router = parse_topic_pattern("events.${aggregatetype}.${type}-v1")
    assert router.topic("orders", "42", "OrderPaid") == "events.orders.OrderPaid-v1"
    sql, literals = router.sql_expression()
    assert sql == "concat(%s::text, aggregatetype, %s::text, type, %s::text)"
    assert literals == ("events.", ".", "-v1")


def test_a_constant_topic() -> None:
    assert parse_topic_pattern("all-events").topic("a", "b", "c") == "all-events"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("${payload}", "unknown placeholder ${payload}"),
        ("${aggregatetype", "malformed"),
        ("x}", "malformed"),
        ("", "empty"),
        ("a/b", "literal text"),
        ("..", "not allowed"),
    ],
)
def test_bad_patterns(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        parse_topic_pattern(pattern)
    assert message in str(info.value)


def test_row_values_that_make_an_illegal_topic_are_reported() -> None:
    router = parse_topic_pattern("${aggregatetype}")
    assert router.problem("orders") is None
    assert "not a valid Kafka topic name" in str(router.problem("bad topic!"))
    assert router.problem("x" * 250) is not None
    assert router.problem("") is not None


@given(st.text(alphabet="abcXYZ019._-", min_size=1, max_size=249))
def test_legal_names_pass(name: str) -> None:
    if name not in (".", ".."):
        assert topic_name_problem(name) is None
