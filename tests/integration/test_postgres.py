"""The local PostgreSQL: the DSN from the stack's env reaches a working server."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.integration


def test_connect_create_insert_read(stack: dict[str, Any], unique_name: str) -> None:
    table = unique_name.replace("-", "_")
    with psycopg.connect(str(stack["OUTBOX_DSN"]), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, note text NOT NULL)")
        conn.execute(f"INSERT INTO {table} (note) VALUES (%s), (%s)", ("first", "second"))
        rows = conn.execute(f"SELECT note FROM {table} ORDER BY id").fetchall()
        conn.execute(f"DROP TABLE {table}")
    assert rows == [("first",), ("second",)]
