"""The one helper for optional imports: ``tideflow.errors.require``."""

from __future__ import annotations

import json
import sys

import pytest

from tideflow.errors import MissingDependencyError, require


def test_an_installed_module_is_returned() -> None:
    assert require("json", "service") is json


def test_a_missing_module_names_itself_and_the_extra() -> None:
    with pytest.raises(MissingDependencyError) as caught:
        require("tideflow_no_such_module", "kafka")
    message = str(caught.value)
    assert "'tideflow_no_such_module'" in message
    assert 'pip install "tideflow[kafka]"' in message
    assert isinstance(caught.value.__cause__, ImportError)


def test_the_pip_name_is_named_when_it_differs_from_the_module() -> None:
    with pytest.raises(MissingDependencyError, match=r"'paho-mqtt'.*tideflow\[mqtt\]"):
        require("tideflow_no_such_module.client", "mqtt", "paho-mqtt")


def test_a_blocked_module_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pika", None)
    with pytest.raises(MissingDependencyError, match=r"'pika'.*tideflow\[amqp\]"):
        require("pika", "amqp")
