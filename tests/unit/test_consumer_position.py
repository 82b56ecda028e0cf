"""Where a consumer starts on a partition its group never committed, from its properties."""

from __future__ import annotations

import pytest

from kcg_operator.workload.consumer_config import ConsumerConfig

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("reset,earliest", [
    ("earliest", True), ("smallest", True), ("beginning", True), (" Earliest ", True),
    ("latest", False), ("largest", False), ("end", False), ("error", False), (None, False),
])
def test_librdkafkas_names_for_the_log_start_count_the_whole_log_as_lag(
        reset: str | None, earliest: bool) -> None:
    props = {} if reset is None else {"auto.offset.reset": reset}
    assert ConsumerConfig(consumer=props, producer=None).starts_from_earliest is earliest
