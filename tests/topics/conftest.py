"""Fixtures of the topic tests."""

from __future__ import annotations

import pytest

BACKENDS = ["embedded", "kafka"]


@pytest.fixture(params=BACKENDS)
def broker(request: pytest.FixtureRequest) -> str:
    """`embedded`, or the kafka:// address of the test broker."""
    if request.param == "embedded":
        return "embedded"
    return "kafka://" + request.getfixturevalue("kafka_broker")
