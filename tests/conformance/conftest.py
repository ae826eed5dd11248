"""Fixtures of the conformance suite."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conformance.cases import Env
from tests.influxdb.conftest import influx  # noqa: F401 - the session fixture, shared

from tideflow.core.contracts import Context


@pytest.fixture
def env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Env]:
    """A folder, a unique name and a context factory; cleanups run afterwards."""

    def ctx(name: str) -> Context:
        return Context("conformance", name, tmp_path, tmp_path / ".tideflow", threading.Event())

    environment = Env(tmp_path, f"tfc{uuid.uuid4().hex[:10]}", ctx)
    if "influxdb" in request.node.name:
        environment.influx_url = request.getfixturevalue("influx").url
    yield environment
    for cleanup in reversed(environment.cleanups):
        cleanup()
