"""Payload decoding and encoding shared by the broker connectors, and the ack ledger."""

from __future__ import annotations

import polars as pl
import pytest

from tideflow.connectors.messages import AckLedger, decode_payloads, encode_payloads
from tideflow.errors import ConfigError


def test_json_objects_become_columns_and_others_dead_letters() -> None:
    frame, dead = decode_payloads(
        [b'{"a": 1}', b"[1]", b"nope", b'{"b": "x"}', b"{}"],
        "json",
        "payload",
        {"topic": ["t1", "t2", "t3", "t4", "t5"]},
    )
    assert frame.height == 3
    assert frame.to_dicts() == [
        {"a": 1, "b": None, "topic": "t1"},
        {"a": None, "b": "x", "topic": "t4"},
        {"a": None, "b": None, "topic": "t5"},
    ]
    assert dead is not None and dead["record"].to_list() == ["[1]", "nope"]
    assert "expected a JSON object" in dead["reason"][0]


def test_text_rejects_invalid_utf8_and_bytes_keeps_everything() -> None:
    text, dead = decode_payloads([b"ok", b"\xff"], "text", "body")
    assert text["body"].to_list() == ["ok"] and dead is not None and dead.height == 1
    raw, none = decode_payloads([b"ok", b"\xff"], "bytes", "body")
    assert raw["body"].to_list() == [b"ok", b"\xff"] and none is None


def test_encoding_json_excludes_routing_columns_and_raw_needs_its_column() -> None:
    frame = pl.DataFrame({"t": ["a"], "n": [1], "nested": [{"x": [1, 2]}]})
    assert encode_payloads(frame, "json", "payload", ["t"]) == [b'{"n":1,"nested":{"x":[1,2]}}']
    with pytest.raises(ConfigError, match="payload_column"):
        encode_payloads(frame, "text", "payload")
    assert encode_payloads(pl.DataFrame({"payload": ["é", None]}), "text", "payload") == [
        "é".encode(),
        b"",
    ]


def test_ledger_releases_in_order_and_forgets_old_connections() -> None:
    ledger: AckLedger[int] = AckLedger(start=100)
    for tag in (1, 2, 3):
        ledger.delivered(tag)
    assert ledger.sequence == 103
    assert ledger.release(102) == [1, 2]
    ledger.new_generation()
    ledger.delivered(1)  # tag 1 again, on the new connection
    assert ledger.release(104) == [1]
    assert ledger.release(None) == [] and len(ledger) == 0
