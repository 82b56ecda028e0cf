"""Which topic a row goes to (pure).

A topic pattern is literal text with `${column}` placeholders for the row's routing
columns: `${aggregatetype}` (Debezium's default routing), `${aggregateid}` and `${type}`.
Events of one key keep their order within a topic; a pattern that uses `${type}` spreads
one aggregate's events over several topics, where no cross-topic order exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

ROUTING_COLUMNS: Final = ("aggregatetype", "aggregateid", "type")
_PLACEHOLDER: Final = re.compile(r"\$\{([^}]*)\}")
TOPIC_NAME: Final = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def topic_name_problem(topic: str) -> str | None:
    """Why Kafka would refuse `topic` as a name (None: it is a legal name)."""
    if topic in (".", ".."):
        return f"topic {topic!r} is not allowed by Kafka"
    if not TOPIC_NAME.fullmatch(topic):
        return (
            f"topic {topic[:80]!r} is not a valid Kafka topic name: 1 to 249 of a-z A-Z 0-9 . _ -"
        )
    return None


@dataclass(frozen=True)
class TopicRouter:
    """A parsed topic pattern: literal strings and column indexes (into ROUTING_COLUMNS)."""

    pattern: str
    parts: tuple[str | int, ...]
    _valid: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(ROUTING_COLUMNS[p] for p in self.parts if isinstance(p, int))

    @property
    def is_default(self) -> bool:
        """The topic is the aggregatetype column as it is (Debezium's default routing)."""
        return self.parts == (0,)

    def topic(self, aggregatetype: str, aggregateid: str, type_: str) -> str:
        if self.parts == (0,):
            return aggregatetype  # the default pattern
        values = (aggregatetype, aggregateid, type_)
        return "".join(values[p] if isinstance(p, int) else p for p in self.parts)

    def problem(self, topic: str) -> str | None:
        """topic_name_problem, memoized: a relay sees few distinct topics."""
        try:
            return self._valid[topic]
        except KeyError:
            verdict = topic_name_problem(topic)
            if len(self._valid) < 100_000:
                self._valid[topic] = verdict
            return verdict

    def sql_expression(self) -> tuple[str, tuple[str, ...]]:
        """The topic as an SQL expression over the row: (SQL with %s for literals, literals)."""
        pieces: list[str] = []
        literals: list[str] = []
        for part in self.parts:
            if isinstance(part, int):
                pieces.append(ROUTING_COLUMNS[part])
            else:
                pieces.append("%s::text")
                literals.append(part)
        if len(pieces) == 1:
            return pieces[0], tuple(literals)
        return "concat(" + ", ".join(pieces) + ")", tuple(literals)


def parse_topic_pattern(pattern: str) -> TopicRouter:
    """Parse `pattern`; raises ValueError saying what to change."""
    parts: list[str | int] = []
    position = 0
    for match in _PLACEHOLDER.finditer(pattern):
        literal = pattern[position : match.start()]
        if literal:
            parts.append(literal)
        name = match.group(1)
        if name not in ROUTING_COLUMNS:
            raise ValueError(
                f"unknown placeholder ${{{name}}}: use ${{aggregatetype}}, ${{aggregateid}} "
                "or ${type}"
            )
        parts.append(ROUTING_COLUMNS.index(name))
        position = match.end()
    tail = pattern[position:]
    if tail:
        parts.append(tail)
    if not parts:
        raise ValueError("the pattern is empty: use e.g. ${aggregatetype}")
    literal_text = "".join(p for p in parts if isinstance(p, str))
    if "$" in literal_text or "{" in literal_text or "}" in literal_text:
        raise ValueError("a placeholder is malformed: write ${column}")
    if literal_text and not re.fullmatch(r"[a-zA-Z0-9._-]+", literal_text):
        raise ValueError("literal text may only hold a-z A-Z 0-9 . _ - (Kafka topic characters)")
    if all(isinstance(p, str) for p in parts) and topic_name_problem(pattern):
        raise ValueError(str(topic_name_problem(pattern)))
    return TopicRouter(pattern=pattern, parts=tuple(parts))
