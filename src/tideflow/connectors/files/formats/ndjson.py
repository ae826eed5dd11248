"""The NDJSON reader: chunks of whole lines, parsed by pyarrow with the columns learnt so far
or by Polars; bad lines become dead letters naming their line."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from tideflow.connectors.files.formats.base import (
    Chunk,
    FileRef,
    Reader,
    Window,
    concat_dead,
    open_window,
    to_frame,
)
from tideflow.connectors.files.formats.convert import convert_columns
from tideflow.connectors.files.formats.lines import blank_lines, line_bounds, parse_json_lines
from tideflow.connectors.files.settings import NDJSON_BLOCK, FileSourceConfig
from tideflow.core.contracts import (
    HEAD_EXCERPT,
    MAX_RECORD_BYTES,
    long_record_letter,
    raw_dead_letters,
)

_FAST_JSON_BLOCK = 1 << 20
"""Block size of pyarrow's JSON parser: blocks are parsed in parallel (a line longer than a
block fails the fast parse and takes Polars' path)."""

_SAMPLE_BYTES = 1 << 18
"""How much of a file's first chunk Polars reads to learn the columns before the fast parse."""


def _arrow_type(dtype: Any) -> pa.DataType | None:
    """The Arrow type pyarrow's JSON parser fills exactly as Polars would for ``dtype`` (a
    Polars type or type class), or None for types the fast parse does not handle (structs: a
    sub-field absent from a whole chunk would still appear, where Polars leaves it out)."""
    if isinstance(dtype, pl.List):
        inner = _arrow_type(dtype.inner)
        return None if inner is None else pa.list_(inner)
    simple = {
        pl.Boolean: pa.bool_(),
        pl.Int64: pa.int64(),
        pl.Float64: pa.float64(),
        pl.String: pa.string(),
        pl.Null: pa.null(),
    }
    for polars_type, arrow_type in simple.items():
        if dtype == polars_type:
            return arrow_type
    return None


def _arrow_schema(schema: pl.Schema) -> pa.Schema | None:
    """``schema`` (as Polars inferred it) for pyarrow's JSON parser; None when not every
    column has a type the fast parse handles."""
    fields = []
    for name, dtype in schema.items():
        arrow_type = _arrow_type(dtype)
        if arrow_type is None:
            return None
        fields.append(pa.field(name, arrow_type))
    return pa.schema(fields) if fields else None


def _has_nan(column: pa.ChunkedArray) -> bool:
    """Does a float column (or list of floats) hold NaN or infinity? Valid JSON cannot spell
    them; pyarrow reads ``NaN`` and ``Infinity`` where Polars refuses the line."""
    values: Any = column
    while pa.types.is_list(values.type):
        values = pc.list_flatten(values)
    if not pa.types.is_floating(values.type) or len(values) == 0:
        return False
    return bool(pc.any(pc.invert(pc.is_finite(values))).as_py())


def _fast_json(
    chunk: bytes, count: int, schema: pa.Schema, newlines: np.ndarray | None = None
) -> pl.DataFrame | None:
    """``count`` lines (``newlines``: where their newlines are, when known) parsed by pyarrow
    (in parallel) with the columns ``schema`` names, or None when the result might differ
    from what Polars makes of them.

    pyarrow fails on a field not in ``schema`` and on a value of another kind, so a chunk
    whose records still fit the columns learnt from earlier ones parses in one pass, with no
    inference. Where pyarrow is more lenient than Polars, the result is checked instead:
    one record per non-blank line (pyarrow reads ``{..}{..}`` as two), no NaN or infinity,
    valid UTF-8 text, and no column that is null throughout while its name may appear
    (Polars gives a present, all-null field the type Null and leaves an absent one out).
    """
    try:
        table = pa_json.read_json(
            pa.py_buffer(chunk),
            read_options=pa_json.ReadOptions(use_threads=True, block_size=_FAST_JSON_BLOCK),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="error"
            ),
        )
        table.validate(full=True)  # pyarrow does not check that text is UTF-8
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if table.num_rows == 0:
        return None
    raw = np.frombuffer(chunk, dtype=np.uint8)
    starts, ends = line_bounds(raw, count, newlines)
    filled = np.flatnonzero(~blank_lines(raw, starts, ends))
    if table.num_rows != len(filled):
        return None
    absent = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if _has_nan(column):
            return None
        if column.null_count == table.num_rows:
            # Absent for sure only when the key's JSON spelling never occurs and no key
            # could be spelt with escapes.
            if orjson.dumps(name) in chunk or b"\\u" in chunk:
                return None
            absent.append(name)
    if absent:
        table = table.drop_columns(absent)
    order = _first_seen_order(chunk[starts[filled[0]] : ends[filled[0]]], table.column_names)
    if order is None:
        return None
    return to_frame(table.select(order))


def _first_seen_order(first: bytes, names: list[str]) -> list[str] | None:
    """``names`` in the order Polars gives them, when the chunk's first record holds every
    one of them: that record's key order. None otherwise (Polars' order for fields first
    seen in later records is not simply the order of their appearance)."""
    try:
        record = orjson.loads(first)
    except orjson.JSONDecodeError:
        return None
    if type(record) is not dict or any(name not in record for name in names):
        return None
    wanted = set(names)
    return [key for key in record if key in wanted]


@dataclass(frozen=True)
class _LongLine:
    """A line longer than ``max_record_bytes``, skipped: its size and first bytes."""

    size: int
    head: bytes


class NdjsonReader:
    """Newline-delimited JSON, read in chunks of whole lines.

    A chunk is parsed by Polars in one go; only if that fails are its lines checked one by one,
    so good lines still flow and bad ones become dead letters naming their line. A line longer
    than ``max_bytes`` is skipped block by block (never held whole) and dead-lettered with
    its size.
    """

    def __init__(
        self,
        fs: Any,
        ref: FileRef,
        skip: int,
        targets: dict[str, pa.DataType],
        window: Window | None = None,
        max_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self._ref = ref
        self._targets = targets
        self._max = max_bytes
        if window is None:
            self._fh = fs.open(ref.path, "rb", compression="infer")
        else:
            self._fh = open_window(fs, ref.path, window)
        self._lines_before = window.rows_before if window is not None else 0
        self._buf = bytearray()
        self._eof = False
        self._dirty = False
        # The columns of the last chunk Polars parsed (for the fast parse); None before the
        # first chunk, or when they have types the fast parse does not handle.
        self._columns: pa.Schema | None = None
        self._sampled = False
        self._newlines: np.ndarray | None = None
        """Where the newlines of the chunk ``_take`` returned last are, when it knows."""
        self._line = 0
        while self._line < skip:
            got = self._take(min(skip - self._line, 1 << 16))
            if got is None:
                break
            self._line += 1 if isinstance(got, _LongLine) else got[1]

    @classmethod
    def open(
        cls,
        fs: Any,
        ref: FileRef,
        skip: int,
        config: FileSourceConfig,
        targets: dict[str, pa.DataType],
        window: Window | None,
    ) -> Reader:
        """The reader of ``ref`` (of ``window`` when tailing)."""
        return cls(fs, ref, skip, targets, window, config.max_record_bytes)

    def _take(self, limit: int) -> tuple[bytes, int] | _LongLine | None:
        """Up to ``limit`` whole lines and how many, or one line too long to read; None at
        the end of the file.

        Blocks read are kept as a list and joined once into the chunk: growing one buffer
        block by block copied it again at every growth."""
        counted, scanned, line_start, size = 0, 0, 0, len(self._buf)
        found: list[np.ndarray] = []  # where the newlines are (kept for the parse)
        self._newlines = None
        parts: list[bytes | bytearray] = [self._buf] if self._buf else []
        in_last = -1  # where the cut is in the last part, when there
        while True:
            if size > scanned:  # the last part is not scanned yet
                newlines = np.flatnonzero(np.frombuffer(parts[-1], dtype=np.uint8) == 10)
                if counted + len(newlines) >= limit:
                    in_last = int(newlines[limit - counted - 1]) + 1
                    cut = scanned + in_last
                    found.append(newlines[: limit - counted] + scanned)
                    counted = limit
                    break
                counted += len(newlines)
                found.append(newlines + scanned)
                if len(newlines):
                    line_start = scanned + int(newlines[-1]) + 1
                scanned = size
            if size - line_start > self._max:  # an open line already too long
                if counted:
                    cut = line_start  # hand on the lines before it first
                    break
                self._buf = bytearray(b"".join(parts))
                return self._skip_long()
            if self._eof:
                cut = size
                if cut and parts[-1][-1] != 10:
                    counted += 1  # a last line without a newline
                if counted == 0:
                    self._buf = bytearray()
                    return None
                break
            block = self._fh.read(NDJSON_BLOCK)
            if block:
                parts.append(block)
                size += len(block)
            else:
                self._eof = True
        if in_last >= 0 and cut <= self._max:  # the common case: one join, no buffer
            last = memoryview(parts[-1])
            chunk = b"".join([*parts[:-1], last[:in_last]])
            self._buf = bytearray(last[in_last:])
            del last
            self._newlines = np.concatenate(found)
            return chunk, counted
        self._buf = bytearray(b"".join(parts))
        if cut > self._max:  # only then can a whole line in it be too long
            long_line = self._cut_long(cut, counted)
            if long_line is not None:
                return long_line
        chunk = bytes(memoryview(self._buf)[:cut])  # one copy (a slice would make two)
        del self._buf[:cut]
        self._newlines = np.concatenate(found) if found else None
        return chunk, counted

    def _cut_long(self, cut: int, counted: int) -> tuple[bytes, int] | _LongLine | None:
        """A chunk of ``counted`` whole lines holding one longer than allowed: the lines
        before it, or (when it comes first) that line, dropped."""
        raw = np.frombuffer(self._buf, dtype=np.uint8)[:cut]
        ends = np.flatnonzero(raw == 10)[:counted]
        del raw
        if len(ends) < counted:
            ends = np.append(ends, cut)
        starts = np.concatenate(([0], ends[:-1] + 1))
        too_long = np.flatnonzero(ends - starts > self._max)
        if not len(too_long):
            return None
        first = int(too_long[0])
        if first:
            chunk = bytes(self._buf[: int(starts[first])])
            del self._buf[: int(starts[first])]
            return chunk, first
        size = int(ends[0])
        head = bytes(self._buf[:HEAD_EXCERPT])
        del self._buf[: min(size + 1, len(self._buf))]
        return _LongLine(size, head)

    def _skip_long(self) -> _LongLine:
        """The buffer starts with a line longer than allowed and holds no newline: read on,
        block by block, to its end, keeping only its first bytes."""
        head = bytes(self._buf[:HEAD_EXCERPT])
        size = len(self._buf)
        self._buf = bytearray()
        while True:
            block = self._fh.read(NDJSON_BLOCK)
            if not block:
                self._eof = True
                break
            end = block.find(b"\n")
            if end >= 0:
                size += end
                self._buf += block[end + 1 :]
                break
            size += len(block)
        return _LongLine(size, head)

    def read(self, limit: int) -> Chunk | None:
        got = self._take(limit)
        if got is None:
            return None
        if isinstance(got, _LongLine):
            self._line += 1
            origin = f"{self._ref.url}: line {self._lines_before + self._line}"
            record, reason = long_record_letter(origin, got.size, got.head, self._max)
            return Chunk(pl.DataFrame(), raw_dead_letters([record], [reason]), 1)
        chunk, count = got
        first = self._lines_before + self._line + 1
        self._line += count
        records: list[str] = []
        reasons: list[str] = []
        good_lines: np.ndarray | None = None
        data = None
        if not self._dirty:
            with contextlib.suppress(pl.exceptions.PolarsError, ValueError):
                data = self._parse(chunk, count, self._newlines)
        if data is None:
            data, kept, records, reasons = parse_json_lines(
                chunk, count, first, self._ref.url, self._parse
            )
            good_lines = kept + first
            # Bad lines come in runs (a broken producer): after one, check lines first
            # instead of paying for a failed whole-chunk parse every time.
            self._dirty = bool(records)
        dead = raw_dead_letters(records, reasons) if records else None
        if self._targets and data.height:
            if good_lines is None:
                raw = np.frombuffer(chunk, dtype=np.uint8)
                starts, ends = line_bounds(raw, count)
                good_lines = np.flatnonzero(~blank_lines(raw, starts, ends)) + first
            lines_of = good_lines

            def where(rows: np.ndarray) -> list[str]:
                return [f"{self._ref.url}: line {int(lines_of[r])}" for r in rows]

            table, conv_dead, _ = convert_columns(data.to_arrow(), self._targets, None, where)
            data = to_frame(table)
            dead = concat_dead([dead, conv_dead])
        return Chunk(data, dead, count)

    def _parse(self, lines: bytes, count: int, newlines: np.ndarray | None = None) -> pl.DataFrame:
        """``count`` whole lines as records, as Polars reads them (with every line's fields
        and types), raising PolarsError or ValueError when they are not all JSON objects.

        The fast parse (:func:`_fast_json`) serves chunks whose records fit the columns
        learnt so far; any other chunk is Polars' to read, and teaches the columns. Before
        the first chunk, Polars reads a sample of it to learn them."""
        if not self._sampled:
            self._sampled = True
            if len(lines) > 2 * _SAMPLE_BYTES:
                sample = lines[: lines.rfind(b"\n", 0, _SAMPLE_BYTES) + 1]
                with contextlib.suppress(pl.exceptions.PolarsError, ValueError):
                    learnt = pl.read_ndjson(io.BytesIO(sample), infer_schema_length=None)
                    self._columns = _arrow_schema(learnt.schema)
        if self._columns is not None:
            data = _fast_json(lines, count, self._columns, newlines)
            if data is not None:
                return data
        data = pl.read_ndjson(io.BytesIO(lines), infer_schema_length=None)
        self._columns = _arrow_schema(data.schema)
        return data

    def close(self) -> None:
        self._fh.close()
