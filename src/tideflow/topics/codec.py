"""Records to message bytes and back, column-wise.

Formats: ``json`` (one JSON object per message), ``csv`` (one CSV row per message, header
given by ``columns`` or inferred from the first batch) and ``raw`` (the bytes as they are, in a
``value`` column). Message metadata — key, partition, offset, timestamp, headers, topic —
travel as ``_key``, ``_partition``, ``_offset``, ``_timestamp``, ``_headers`` and ``_topic``
columns when asked for, and are never serialised into the value.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import orjson
import polars as pl

from tideflow.core.contracts import empty_dead_letters, raw_dead_letters

Format = Literal["json", "csv", "raw"]

Offsets = dict[str, int]
"""Next offset to read per ``"topic:partition"``."""


def tp(topic: str, partition: int) -> str:
    """The key of a partition in positions."""
    return f"{topic}:{partition}"


def split_tp(key: str) -> tuple[str, int]:
    """Inverse of :func:`tp`."""
    topic, _, part = key.rpartition(":")
    return topic, int(part)


META = ("_topic", "_partition", "_offset", "_timestamp", "_key", "_headers")


@dataclass
class RawMessages:
    """A batch of consumed messages, one list per field (built by the backends)."""

    topics: list[str] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    headers: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)

    def extend(self, other: RawMessages) -> None:
        """Append another batch."""
        for name in vars(self):
            getattr(self, name).extend(getattr(other, name))

    def by_partition(self) -> dict[tuple[str, int], RawMessages]:
        """The batch split by (topic, partition), each part in its original order."""
        rows: dict[tuple[str, int], list[int]] = {}
        for i, key in enumerate(zip(self.topics, self.partitions, strict=True)):
            rows.setdefault(key, []).append(i)
        if len(rows) == 1:
            return {next(iter(rows)): self}
        parts = {}
        for key, index in rows.items():
            part = RawMessages()
            for name, values in vars(self).items():
                getattr(part, name).extend(values[i] for i in index)
            parts[key] = part
        return parts


def encode_values(frame: pl.DataFrame, fmt: Format, value_column: str | None) -> pl.Series:
    """One message value (bytes) per row, the metadata columns left out."""
    data = frame.drop([c for c in META if c in frame.columns])
    if fmt == "raw":
        column = value_column or "value"
        series = data.get_column(column)
        return series.cast(pl.Binary) if series.dtype != pl.Binary else series
    if fmt == "csv":
        text = data.write_csv(include_header=False).rstrip("\n").split("\n")
        return pl.Series("value", text, dtype=pl.String).cast(pl.Binary)
    if data.width == 0:
        return pl.Series("value", [b"{}"] * data.height, dtype=pl.Binary)
    return data.select(pl.struct(pl.all()).struct.json_encode().cast(pl.Binary)).to_series()


def decode_values(
    raw: RawMessages,
    fmt: Format,
    label: Callable[[int], str],
    csv_columns: list[str] | None = None,
) -> tuple[pl.DataFrame, list[int], pl.DataFrame]:
    """Decode message values into a frame; returns it, the index of the message behind each
    row, and dead letters (message text and reason) for values that do not decode."""
    n = len(raw)
    if n == 0:
        return pl.DataFrame(), [], empty_dead_letters()
    values = pl.Series("v", raw.values, dtype=pl.Binary)
    if fmt == "raw":
        return pl.DataFrame({"value": values}), list(range(n)), empty_dead_letters()
    text = values.cast(pl.String, strict=False)
    bad = text.is_null() & values.is_not_null()
    if fmt == "csv":
        return _decode_csv(text, bad, label, csv_columns)
    # JSON whitespace may be a newline, never inside a string: flattening keeps it valid.
    lines = text.str.replace_all("\n", " ", literal=True).str.replace_all("\r", " ", literal=True)
    good = ~bad & lines.is_not_null()
    joined = lines.filter(good).str.join("\n").item() if good.any() else ""
    try:
        frame = pl.read_ndjson(io.BytesIO(joined.encode()), infer_schema_length=None)
        if frame.height == int(good.sum()):
            kept = good.arg_true().to_list()
            return frame, kept, _bad_letters(values, bad, label, "not UTF-8 text")
    except (pl.exceptions.PolarsError, ValueError):
        pass
    return _decode_json_one_by_one(values, lines, bad, label)


def _bad_letters(
    values: pl.Series, bad: pl.Series, label: Callable[[int], str], why: str
) -> pl.DataFrame:
    at = bad.arg_true().to_list()
    if not at:
        return empty_dead_letters()
    records = [bytes(values[i]).decode("utf-8", "replace") for i in at]
    return raw_dead_letters(records, [f"{label(i)}: {why}" for i in at])


def _decode_json_one_by_one(
    values: pl.Series, lines: pl.Series, bad: pl.Series, label: Callable[[int], str]
) -> tuple[pl.DataFrame, list[int], pl.DataFrame]:
    """The fallback when a batch does not parse as a whole: find the bad messages."""
    kept: list[int] = []
    good_lines: list[str] = []
    records: list[str] = []
    reasons: list[str] = []
    for i, (line, is_bad) in enumerate(zip(lines.to_list(), bad.to_list(), strict=True)):
        if is_bad or line is None:
            records.append(bytes(values[i] or b"").decode("utf-8", "replace"))
            reasons.append(f"{label(i)}: " + ("not UTF-8 text" if is_bad else "empty message"))
            continue
        try:
            parsed = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            records.append(line)
            reasons.append(f"{label(i)}: invalid JSON: {exc}")
            continue
        if not isinstance(parsed, dict):
            records.append(line)
            reasons.append(f"{label(i)}: expected a JSON object")
            continue
        kept.append(i)
        good_lines.append(line)
    frame = (
        pl.read_ndjson(io.BytesIO("\n".join(good_lines).encode()), infer_schema_length=None)
        if good_lines
        else pl.DataFrame()
    )
    return frame, kept, raw_dead_letters(records, reasons)


def _decode_csv(
    text: pl.Series,
    bad: pl.Series,
    label: Callable[[int], str],
    columns: list[str] | None,
) -> tuple[pl.DataFrame, list[int], pl.DataFrame]:
    good = ~bad & text.is_not_null()
    kept = good.arg_true().to_list()
    body = text.filter(good).str.join("\n").item() if kept else ""
    try:
        frame = pl.read_csv(
            io.BytesIO(body.encode()),
            has_header=False,
            new_columns=columns,
            infer_schema_length=None,
        )
    except (pl.exceptions.PolarsError, ValueError) as exc:
        records = text.filter(good).to_list()
        reasons = [f"{label(i)}: CSV does not parse: {exc}" for i in kept]
        return pl.DataFrame(), [], raw_dead_letters(records, reasons)
    return frame, kept, _bad_letters(text.cast(pl.Binary), bad, label, "not UTF-8 text")
