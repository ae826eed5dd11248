"""Streaming readers, one per file format, that resume after a given number of rows."""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from tideflow.connectors.files.parquet_check import check_pages
from tideflow.connectors.files.paths import is_local
from tideflow.connectors.files.settings import (
    NDJSON_BLOCK,
    CsvReadOptions,
    FileSourceConfig,
    ReadFormat,
    extension,
)
from tideflow.core.contracts import (
    HEAD_EXCERPT,
    MAX_RECORD_BYTES,
    dead_letters,
    long_record_letter,
    raw_dead_letters,
    too_long,
)


def _to_frame(data: Any) -> pl.DataFrame:
    """Arrow table or batch -> DataFrame (``pl.from_arrow`` is typed as frame-or-series)."""
    frame = pl.from_arrow(data)
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"expected a table, got {type(frame).__name__}")
    return frame


def concat_dead(parts: Iterable[pl.DataFrame | None]) -> pl.DataFrame | None:
    """The non-empty dead-letter frames of ``parts`` as one frame, or None."""
    frames = [p for p in parts if p is not None and p.height]
    if not frames:
        return None
    return frames[0] if len(frames) == 1 else pl.concat(frames)


def _castable(value: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(value, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    return True


@functools.lru_cache(maxsize=128)
def _spellings_read_as(spellings: tuple[str, ...], target: pa.DataType) -> str:
    """What the null spellings that convert to ``target`` become: "none" when none converts,
    "nan" when all that do become NaN (floats read "NaN" and "nan"), else "values"."""
    read = []
    for spelling in spellings:
        try:
            read.append(pc.cast(pa.array([spelling], pa.string()), target)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            continue
    if not read:
        return "none"
    return "nan" if all(isinstance(v, float) and math.isnan(v) for v in read) else "values"


def _cast_without_spellings(
    column: pa.ChunkedArray, target: pa.DataType, null_values: pa.Array
) -> pa.ChunkedArray | None:
    """``column`` cast to ``target`` in one go, when that is what nulling its null spellings
    first would give (no spelling of null is in it that converts to a value); else None."""
    kind = _spellings_read_as(tuple(null_values.to_pylist()), target)
    if kind == "values":
        return None
    try:
        cast = pc.cast(column, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if kind == "nan" and pc.any(pc.is_nan(cast)).as_py():
        return None  # "NaN" (null) or a NaN spelt otherwise: the spellings decide
    return cast


def _decode_text(
    table: pa.Table, where: Callable[[np.ndarray], list[str]], delimiter: str
) -> tuple[pa.Table, pl.DataFrame | None, np.ndarray]:
    """Decode CSV fields read as bytes into text; rows holding invalid UTF-8 become dead letters.

    Each column is decoded at once; only a column that fails is walked value by value to find
    the offending rows (as for type conversion). Returns the decoded good rows, the dead
    letters and the indices of the dead rows.
    """
    columns: list[pa.Array] = []
    bad_rows: dict[int, str] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        try:
            columns.append(pc.cast(column, pa.string()))
            continue
        except pa.ArrowInvalid:
            pass
        values = column.to_pylist()
        decoded: list[str | None] = []
        for row, value in enumerate(values):  # fallback only: a column with invalid bytes
            try:
                decoded.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append(None)
                bad_rows.setdefault(row, name)
        columns.append(pa.array(decoded, pa.string()))
    decoded_table = pa.Table.from_arrays(columns, names=table.column_names)
    if not bad_rows:
        return decoded_table, None, np.array([], dtype=np.int64)
    failed = np.array(sorted(bad_rows), dtype=np.int64)
    raw = table.take(pa.array(failed)).to_pylist()
    records = [
        delimiter.join("" if v is None else v.decode("utf-8", "replace") for v in row.values())
        for row in raw
    ]
    labels = where(failed)
    reasons = [
        f"{label}: invalid UTF-8 in column {bad_rows[int(r)]!r}"
        for label, r in zip(labels, failed, strict=True)
    ]
    keep = np.ones(table.num_rows, dtype=bool)
    keep[failed] = False
    return decoded_table.filter(pa.array(keep)), raw_dead_letters(records, reasons), failed


def _convert_columns(
    table: pa.Table,
    targets: dict[str, pa.DataType],
    null_values: pa.Array | None,
    where: Callable[[np.ndarray], list[str]],
) -> tuple[pa.Table, pl.DataFrame | None, np.ndarray]:
    """Cast columns to ``targets``; rows with a value that does not convert become dead letters.

    The whole column is cast at once; only when that fails is the column walked value by value
    to find the offending rows. ``null_values`` (CSV) are the spellings of null in text that
    becomes another type (``NA``, ``null``...); text columns keep them as text.
    ``where(indices)`` describes rows for the reasons (file and row number). Returns the
    converted good rows, the dead letters and the indices of the dead rows.
    """
    converted = table
    problems: dict[int, list[str]] = {}
    for name, target in targets.items():
        index = table.schema.get_field_index(name)
        if index < 0:
            continue
        column = table.column(index)
        if (
            null_values is not None
            and pa.types.is_string(column.type)
            and not pa.types.is_string(target)
        ):
            # Most columns hold no spelling of null that would convert: one cast does.
            direct = _cast_without_spellings(column, target, null_values)
            if direct is not None:
                converted = converted.set_column(index, name, direct)
                continue
            column = pc.if_else(pc.is_in(column, value_set=null_values), None, column)
        if column.type == target:
            converted = converted.set_column(index, name, column)
            continue
        try:
            cast = pc.cast(column, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            flat = column.combine_chunks()
            bad = np.zeros(len(flat), dtype=bool)
            for i in range(len(flat)):  # only on failure: find which values do not convert
                if flat[i].is_valid and not _castable(flat.slice(i, 1), target):
                    bad[i] = True
                    problems.setdefault(i, []).append(
                        f"column {name!r}: cannot read {flat[i].as_py()!r} as {target}"
                    )
            cast = pc.cast(pc.if_else(pa.array(bad), None, flat), target)
        converted = converted.set_column(index, name, cast)
    if not problems:
        return converted, None, np.array([], dtype=np.int64)
    rows = np.array(sorted(problems), dtype=np.int64)
    keep = np.ones(table.num_rows, dtype=bool)
    keep[rows] = False
    labels = where(rows)
    reasons = [f"{w}: {'; '.join(problems[int(r)])}" for w, r in zip(labels, rows, strict=True)]
    failed = _to_frame(table.take(pa.array(rows)))
    dead = dead_letters(failed, pl.lit(pl.Series("reason", reasons, dtype=pl.String)))
    return converted.filter(pa.array(keep)), dead, rows


def convert_replayed(
    frame: pl.DataFrame,
    targets: dict[str, pa.DataType],
    null_values: pa.Array | None,
    labels: list[str],
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Records replayed from dead letters converted to ``targets`` as a read converts them:
    the rows that convert, and dead letters for those that do not (``labels[i]`` names row
    ``i`` in their reasons)."""
    table = frame.to_arrow()
    # Polars hands text over as string views; the conversion (and the null spellings) work
    # on plain strings, as a read produces them.
    plain = pa.schema(
        [
            f.with_type(pa.string())
            if pa.types.is_string_view(f.type) or pa.types.is_large_string(f.type)
            else f
            for f in table.schema
        ]
    )
    converted, dead, _ = _convert_columns(
        table.cast(plain), targets, null_values, lambda rows: [labels[int(i)] for i in rows]
    )
    return _to_frame(converted), dead


def infer_text_columns(frame: pl.DataFrame, keep: set[str]) -> pl.DataFrame:
    """Text columns typed as the CSV reader infers them (integers, floats, dates, times,
    null spellings), except ``keep``, left as text (their types are given). For CSV rows
    replayed from dead letters, whose JSON holds only the text that was read."""
    data = frame.write_csv().encode()
    options = pa_csv.ConvertOptions(
        column_types={name: pa.string() for name in frame.columns if name in keep}
    )
    # One line per row, empty ones too (a row of one null column), values with line breaks.
    parsing = pa_csv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False)
    # A few letters: no reader threads (a threaded read here could abort the interpreter at
    # exit, a pyarrow/polars teardown race seen in this environment).
    reading = pa_csv.ReadOptions(use_threads=False)
    try:
        table = pa_csv.read_csv(
            pa.py_buffer(data),
            read_options=reading,
            parse_options=parsing,
            convert_options=options,
        )
        typed = _to_frame(table)
    except pa.ArrowInvalid:
        return frame  # left as text: the conversion below reports what does not convert
    if typed.shape != frame.shape:
        return frame
    # Columns still text are the letters' own values (CSV text cannot tell null from "").
    return typed.with_columns(
        frame[name] for name, dtype in typed.schema.items() if dtype == pl.String
    )


# -- source: per-format chunk readers ------------------------------------------------------


@dataclass
class Chunk:
    """Records read from one file, its dead letters, and the rows consumed (good + dead)."""

    data: pl.DataFrame
    dead: pl.DataFrame | None
    consumed: int


class Reader(Protocol):
    """Reads one file in chunks of at most ``limit`` rows; None at the end."""

    def read(self, limit: int) -> Chunk | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class FileRef:
    """One file to read: where it is and in which format."""

    url: str
    """How the file appears in positions and dead-letter reasons."""
    path: str
    """The path the filesystem understands."""
    format: ReadFormat
    size: int | None = None
    """Bytes, as listed (None when the listing did not say)."""
    mtime: float | str | None = None
    """Last modification as listed: Unix seconds, or the store's own text."""


@dataclass(frozen=True)
class Window:
    """The byte range of a file a tailing read covers: from where the last read ended to
    the end of its last complete line. ``rows_before`` numbers the rows for reasons."""

    start: int
    end: int
    rows_before: int


class _WindowFile(io.RawIOBase):
    """A file handle that reads ``[start, end)`` of another one and then reports the end."""

    def __init__(self, fh: Any, start: int, end: int) -> None:
        super().__init__()
        self._fh = fh
        self._left = end - start
        fh.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._left)
        if want <= 0:
            return 0
        data = self._fh.read(want)
        view[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


def _open_window(fs: Any, path: str, window: Window) -> Any:
    return io.BufferedReader(_WindowFile(fs.open(path, "rb"), window.start, window.end))


class _LocalParquetReader:
    """Record batches from a local Parquet file through Polars' reader.

    A slice of a lazy scan reads only the row groups it needs, decoded in parallel: about
    three times faster than pyarrow's ``iter_batches``. Remote files keep the pyarrow reader,
    which streams from a file handle where Polars would first load the whole object.
    """

    def __init__(self, ref: FileRef, skip: int, targets: dict[str, pa.DataType]) -> None:
        self._ref = ref
        self._targets = targets
        # Polars aborts the process on some damaged page headers; refuse those first
        # (a ValueError makes the file a dead letter, like any undecodable file)
        with open(ref.path, "rb") as handle:
            check_pages(handle, os.fstat(handle.fileno()).st_size)
        self._scan = pl.scan_parquet(ref.path)
        self._row = skip

    def read(self, limit: int) -> Chunk | None:
        frame = self._scan.slice(self._row, limit).collect()
        if frame.height == 0:
            return None
        start, rows = self._row, frame.height
        self._row += rows
        dead = None
        if self._targets:
            table, dead, _ = _convert_columns(
                frame.to_arrow(),
                self._targets,
                None,
                lambda rows: [f"{self._ref.url}: row {start + int(r) + 1}" for r in rows],
            )
            frame = _to_frame(table)
        return Chunk(frame, dead, rows)

    def close(self) -> None:
        """Nothing to release: each read opens and closes the file."""


class _ParquetReader:
    """Record batches from a Parquet file; resuming skips whole row groups by metadata."""

    def __init__(
        self, fs: Any, ref: FileRef, skip: int, batch_size: int, targets: dict[str, pa.DataType]
    ) -> None:
        self._ref = ref
        self._targets = targets
        self._fh = fs.open(ref.path, "rb")
        parquet = pq.ParquetFile(self._fh)
        meta = parquet.metadata
        group, before = 0, 0
        while group < meta.num_row_groups and before + meta.row_group(group).num_rows <= skip:
            before += meta.row_group(group).num_rows
            group += 1
        self._drop = skip - before
        self._row = skip
        self._batches: Any = iter(())
        if group < meta.num_row_groups:
            groups = list(range(group, meta.num_row_groups))
            self._batches = parquet.iter_batches(batch_size=batch_size, row_groups=groups)
        self._pending: Any = None

    def read(self, limit: int) -> Chunk | None:
        while self._pending is None or self._pending.num_rows == 0:
            batch = next(self._batches, None)
            if batch is None:
                return None
            if self._drop:
                dropped = min(self._drop, batch.num_rows)
                self._drop -= dropped
                batch = batch.slice(dropped)
            self._pending = batch
        take = self._pending.slice(0, limit)
        self._pending = self._pending.slice(take.num_rows)
        start = self._row
        self._row += take.num_rows
        table = pa.Table.from_batches([take])
        dead = None
        if self._targets:
            table, dead, _ = _convert_columns(
                table,
                self._targets,
                None,
                lambda rows: [f"{self._ref.url}: row {start + int(r) + 1}" for r in rows],
            )
        return Chunk(_to_frame(table), dead, take.num_rows)

    def close(self) -> None:
        self._fh.close()


LONG_ROW_MARK = "tideflow-record-too-long-"
"""Start of the line that stands in for a CSV line too long to read (see _LongLineFilter)."""


class _LongLineFilter(io.RawIOBase):
    """A CSV byte stream in which every line longer than ``limit`` bytes is replaced by a
    marker line with more fields than any row (so the parser hands it to the invalid-row
    handler, at its exact row) and skipped block by block, never held whole. ``found``
    receives each replaced line's size and first bytes, by marker number."""

    def __init__(
        self, fh: Any, limit: int, delimiter: bytes, found: dict[int, tuple[int, bytes]]
    ) -> None:
        super().__init__()
        self._fh = fh
        self._limit = limit
        self._delimiter = delimiter
        self._found = found
        self._out = bytearray()
        self._carry = bytearray()
        self._skipping: list[Any] | None = None  # [head, size] of the line being skipped
        self._fields: int | None = None
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out and not self._eof:
            self._fill()
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._out))
        view[:n] = self._out[:n]
        del self._out[:n]
        return n

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()

    def _marker(self, head: bytes, size: int) -> bytes:
        number = len(self._found)
        self._found[number] = (size, head)
        fields = self._fields or 4096
        return f"{LONG_ROW_MARK}{number}".encode() + self._delimiter * fields + b"\n"

    def _fill(self) -> None:
        block = self._fh.read(NDJSON_BLOCK)
        if not block:
            self._eof = True
            if self._skipping is not None:
                self._out += self._marker(*self._skipping)
                self._skipping = None
            self._out += self._carry
            self._carry = bytearray()
            return
        if self._skipping is not None:
            end = block.find(b"\n")
            if end < 0:
                self._skipping[1] += len(block)
                return
            self._skipping[1] += end
            self._out += self._marker(*self._skipping)
            self._skipping = None
            block = block[end + 1 :]
        data = self._carry + block
        last = data.rfind(b"\n")
        complete, tail = data[: last + 1], data[last + 1 :]
        if self._fields is None and complete:
            self._fields = complete[: complete.find(b"\n")].count(self._delimiter) + 2
        if len(complete) > self._limit:
            complete = self._replace_long(complete)
        self._out += complete
        if len(tail) > self._limit:
            self._skipping = [bytes(tail[:HEAD_EXCERPT]), len(tail)]
            self._carry = bytearray()
        else:
            self._carry = tail

    def _replace_long(self, complete: bytearray) -> bytearray:
        raw = np.frombuffer(complete, dtype=np.uint8)
        ends = np.flatnonzero(raw == 10)
        del raw
        starts = np.concatenate(([0], ends[:-1] + 1))
        too_long = np.flatnonzero(ends - starts > self._limit)
        if not len(too_long):
            return complete
        out, pos = bytearray(), 0
        for i in too_long:
            begin, end = int(starts[i]), int(ends[i])
            out += complete[pos:begin]
            out += self._marker(bytes(complete[begin : begin + HEAD_EXCERPT]), end - begin)
            pos = end + 1
        out += complete[pos:]
        return out


def _straddles(exc: Exception) -> bool:
    """Is this pyarrow's complaint about a row longer than its block?"""
    return "straddl" in str(exc)


class _CsvReader:
    """Streaming CSV: pyarrow's reader with every column read as text, then converted.

    Column types are inferred once per file from its first block (so a resumed read gets the
    same types), and values are converted batch by batch: a value that does not fit the type
    makes its row a dead letter instead of failing the file. Malformed rows (wrong number of
    fields) reach ``invalid_row_handler``, which records their row number; the numbers place
    each dead row between the good rows, so the rows consumed by every chunk, and therefore the
    resume offset, are exact even though pyarrow parses ahead.

    pyarrow cannot parse a row longer than its block: when it says so, the rest of the file
    is read again through :class:`_LongLineFilter` with blocks of ``max_bytes``, so rows up to
    that size load and longer lines become dead letters at their row. Files without such a
    row pay nothing for this.
    """

    def __init__(
        self,
        fs: Any,
        ref: FileRef,
        skip: int,
        opts: CsvReadOptions,
        delimiter: str,
        targets: dict[str, pa.DataType],
        window: Window | None = None,
        max_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self._fs = fs
        self._ref = ref
        self._window = window
        self._max = max_bytes
        self._header_rows = 1 if opts.has_header else 0
        # A window after the file's start holds no header line; rows are numbered on from
        # the rows before it.
        self._header_in_stream = self._header_rows if window is None or not window.start else 0
        self._rows_before = window.rows_before if window is not None else 0
        newlines_in_values = opts.newlines_in_values and window is None
        self._invalid: list[tuple[int, str, str]] = []
        self._long: dict[int, tuple[int, bytes]] = {}
        self._filtered = False
        # Parsing in parallel is about twice as fast, but pyarrow then cannot number the
        # malformed rows it reports: at the first one, the read starts again after the rows
        # handed on, on one thread, where it can (see read).
        self._threaded = True
        self._lost = False
        self._next = skip
        self._pending: Any = None
        self._eof = False
        self._fh: Any = None
        self._reader: Any = None
        self._block = opts.block_size
        self._read_opts: dict[str, Any] = {
            "use_threads": False,
            "autogenerate_column_names": not opts.has_header,
        }

        def parse_options(handler: Callable[[Any], str]) -> Any:
            return pa_csv.ParseOptions(
                delimiter=delimiter,
                quote_char=opts.quote_char,
                newlines_in_values=newlines_in_values,
                # Blank lines must count as rows: skip_rows_after_names counts them, and the
                # resume offset has to agree with what was consumed.
                ignore_empty_lines=False,
                invalid_row_handler=handler,
            )

        self._parse_options = parse_options
        self._delimiter = delimiter
        try:
            schema = self._probe(filtered=False)
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                self._eof = True
                return
            if not _straddles(exc):
                raise  # undecodable (e.g. invalid UTF-8 in a row): the source dead-letters it
            schema = self._probe(filtered=True)
        self._schema = schema
        self._targets: dict[str, pa.DataType] = {}
        for fld in schema:
            inferred = pa.string() if pa.types.is_null(fld.type) else fld.type
            self._targets[fld.name] = targets.get(fld.name, inferred)
        self._nulls = pa.array(pa_csv.ConvertOptions().null_values, pa.string())
        try:
            self._open(filtered=False)
        except pa.ArrowInvalid as exc:
            if not _straddles(exc):
                raise
            self._open(filtered=True)

    def _stream(self, filtered: bool, whole: bool = False) -> Any:
        """The bytes to parse: the window (when tailing) or the whole file."""
        window = None if whole else self._window
        if window is not None:
            fh = _open_window(self._fs, self._ref.path, window)
        else:
            fh = self._fs.open(self._ref.path, "rb", compression="infer")
        if not filtered:
            return fh
        delimiter = self._delimiter.encode()
        return io.BufferedReader(_LongLineFilter(fh, self._max, delimiter, self._long))

    def _block_size(self, filtered: bool) -> int:
        # Unfiltered, a row longer than max_bytes must not parse (it straddles a block, and
        # the filter takes over); filtered, no line is longer, and blocks that large parse
        # every row.
        if filtered:
            return max(self._block, self._max + (1 << 16))
        return min(self._block, self._max)

    def _probe(self, filtered: bool) -> Any:
        """The file's columns, typed from its first block (of the file, not the window:
        the header is there)."""
        with self._stream(filtered, whole=True) as probe_fh:
            probe = pa_csv.open_csv(
                probe_fh,
                read_options=pa_csv.ReadOptions(
                    **self._read_opts, block_size=self._block_size(filtered)
                ),
                parse_options=self._parse_options(lambda row: "skip"),
                # Invalid UTF-8 is a problem of one row, found when reading, not of the file.
                convert_options=pa_csv.ConvertOptions(check_utf8=False),
            )
            schema = probe.schema
            probe.close()
        self._long.clear()  # the probe's markers are found again by the reader
        return schema

    def _open(self, filtered: bool) -> None:
        """(Re)start reading after the rows consumed so far."""
        if self._reader is not None:
            self._reader.close()
        if self._fh is not None:
            self._fh.close()
        self._filtered = filtered
        # Rows not yet handed on are read again: forget what was noted about them.
        self._invalid = [item for item in self._invalid if item[0] < self._next]
        self._long.clear()
        self._fh = self._stream(filtered)
        self._pending = None
        self._lost = False
        read_opts = dict(
            self._read_opts,
            block_size=self._block_size(filtered),
            use_threads=self._threaded and not filtered,
        )
        if self._window is not None and self._window.start:
            # no header line here: the names come from the file's start
            read_opts["autogenerate_column_names"] = False
            read_opts["column_names"] = self._schema.names
        self._reader = pa_csv.open_csv(
            self._fh,
            read_options=pa_csv.ReadOptions(**read_opts, skip_rows_after_names=self._next),
            parse_options=self._parse_options(self._on_invalid),
            # Everything as bytes, decoded per batch so invalid UTF-8 dead-letters its row: an
            # unquoted empty field is null, a quoted one ("") is an empty string, as Polars
            # reads and writes them.
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.binary() for name in self._schema.names},
                check_utf8=False,
                strings_can_be_null=True,
                null_values=[""],
                quoted_strings_can_be_null=False,
            ),
        )

    def _on_invalid(self, row: Any) -> str:
        if row.number is None and self._threaded and not self._filtered:
            self._lost = True  # which row, pyarrow cannot say: read again on one thread
            return "skip"
        ordinal = self._next if row.number is None else row.number - 1 - self._header_in_stream
        text: str = row.text
        if text.startswith(LONG_ROW_MARK) and self._filtered:
            number = int(text[len(LONG_ROW_MARK) :].split(self._delimiter, 1)[0])
            size, head = self._long[number]
            record, _ = long_record_letter(self._row_label(ordinal), size, head, self._max)
            self._invalid.append((ordinal, record, too_long(size, self._max)))
            return "skip"
        if text.strip():
            why = f"expected {row.expected_columns} fields, found {row.actual_columns}"
        else:
            why = ""
        self._invalid.append((ordinal, text, why))
        return "skip"

    def _row_label(self, ordinal: int) -> str:
        # Spreadsheet numbering: the header is row 1.
        return f"{self._ref.url}: row {self._rows_before + ordinal + 1 + self._header_rows}"

    def read(self, limit: int) -> Chunk | None:
        while not self._eof and (self._pending is None or self._pending.num_rows == 0):
            try:
                self._pending = self._reader.read_next_batch()
            except StopIteration:
                self._eof = True
            except pa.ArrowInvalid as exc:
                if _straddles(exc) and not self._filtered:
                    self._open(filtered=True)  # a row longer than a block: see the class
                    continue
                if self._threaded:
                    # Parsed ahead in parallel, the failing block may lie past rows not yet
                    # handed on: read on from them on one thread, which fails in its place.
                    self._threaded = False
                    self._open(filtered=False)
                    continue
                # The parser cannot go on (a stray quote swallowing the rest, a malformed row
                # that is not UTF-8): the source dead-letters the rest of the file, this reason.
                raise ValueError(
                    f"cannot parse after {self._row_label(self._next).rpartition(': ')[2]}: "
                    f"{exc}; fix the file, or set `csv.newlines_in_values: false` if a stray "
                    "quote is the cause"
                ) from exc
            if self._lost:
                # A malformed row in what was parsed since the last rows handed on (a batch
                # is returned only once parsed): drop it all, read it again on one thread.
                self._threaded, self._eof = False, False
                self._open(filtered=False)
        if self._pending is not None and self._pending.num_rows:
            take = self._pending.slice(0, limit)
            self._pending = self._pending.slice(take.num_rows)
        elif self._invalid:
            take = None
        else:
            return None
        start = self._next
        self._invalid.sort(key=lambda item: item[0])
        if take is None:  # the end of the file: whatever malformed rows are left
            taken, end = len(self._invalid), start + len(self._invalid)
        else:
            # Malformed rows sit between good ones: each one before the current end pushes
            # the end one row further.
            taken, end = 0, start + take.num_rows
            while taken < len(self._invalid) and self._invalid[taken][0] < end:
                taken += 1
                end += 1
        bad = self._invalid[:taken]
        del self._invalid[:taken]
        self._next = end
        shown = [(o, text, why) for o, text, why in bad if why]
        dead = None
        if shown:
            dead = raw_dead_letters(
                [text for _, text, _ in shown],
                [f"{self._row_label(o)}: {why}" for o, _, why in shown],
            )
        if take is None:
            return Chunk(pl.DataFrame(), dead, end - start)
        table = pa.Table.from_batches([take])
        bad_ordinals = np.array([o for o, _, _ in bad], dtype=np.int64)
        ordinals: np.ndarray | None = None
        if table.num_columns > 1:
            # pyarrow reads a blank line as a row of empty fields. It is counted (the resume
            # offset counts it too) but is no record; in a one-column file it is a null value.
            blank = pc.is_null(table.column(0))
            for column in table.columns[1:]:
                blank = pc.and_(blank, pc.is_null(column))
            if pc.any(blank).as_py():
                keep = pc.invert(blank)
                ordinals = np.setdiff1d(np.arange(start, end, dtype=np.int64), bad_ordinals)
                ordinals = ordinals[keep.to_numpy(zero_copy_only=False)]
                table = table.filter(keep)

        def where(rows: np.ndarray) -> list[str]:
            good = ordinals
            if good is None:
                good = np.setdiff1d(np.arange(start, end, dtype=np.int64), bad_ordinals)
            return [self._row_label(int(good[r])) for r in rows]

        table, text_dead, failed = _decode_text(table, where, self._delimiter)
        if len(failed):
            survivors = np.delete(np.arange(table.num_rows + len(failed)), failed)
            located = where

            def where(rows: np.ndarray) -> list[str]:
                return located(survivors[rows])

        table, conv_dead, _ = _convert_columns(table, self._targets, self._nulls, where)
        return Chunk(_to_frame(table), concat_dead([dead, text_dead, conv_dead]), end - start)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._fh is not None:
            self._fh.close()


def nesting_conflict(before: pl.Schema, now: pl.Schema) -> str | None:
    """A field that is an object or list in one record and a scalar in another.

    Polars would "relax" such a pair by wrapping the scalar into the struct, silently changing
    the value; numbers and text mixing is fine (it becomes text, as when Polars parses both).
    """
    for name, dtype in now.items():
        old = before.get(name)
        if old is None or pl.Null in (old, dtype):
            continue
        if old.is_nested() != dtype.is_nested():
            return f"field {name!r} is {dtype} here but {old} before"
    return None


def _frame_from_json_lines(
    lines: list[bytes], label: Callable[[int], str]
) -> tuple[pl.DataFrame, list[int], list[str]]:
    """Parse JSON objects (one per line, all valid JSON) into one frame.

    Polars parses them together; if it cannot (a field is an object in one record and a number
    in another), records are parsed one by one and those whose types conflict with the records
    before them are returned as failed (their indices, with reasons).
    """
    if not lines:
        return pl.DataFrame(), [], []
    try:
        return pl.read_ndjson(io.BytesIO(b"\n".join(lines)), infer_schema_length=None), [], []
    except (pl.exceptions.PolarsError, ValueError):
        pass
    frames: list[pl.DataFrame] = []
    seen = pl.DataFrame()
    failed: list[int] = []
    reasons: list[str] = []
    for i, line in enumerate(lines):  # fallback only
        try:
            frame = pl.read_ndjson(io.BytesIO(line))
            conflict = nesting_conflict(seen.schema, frame.schema)
            if conflict is None:
                seen = pl.concat([seen, frame.clear()], how="diagonal_relaxed")
        except (pl.exceptions.PolarsError, ValueError) as exc:
            conflict = str(exc)
        if conflict is not None:
            failed.append(i)
            reasons.append(f"{label(i)}: field types conflict with earlier records: {conflict}")
            continue
        frames.append(frame)
    data = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    return data, failed, reasons


def _judge_json_line(line: bytes) -> str | None:
    """Why ``line`` is not a record: None for a JSON object, "" for a blank line, else the
    reason."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return "" if not line.strip() else f"invalid JSON: {exc}"
    return None if type(value) is dict else "expected a JSON object"


_WHITESPACE = np.frombuffer(b" \t\r\n\x0b\x0c", dtype=np.uint8)
"""The bytes ``bytes.strip`` removes."""


def _line_bounds(
    raw: np.ndarray, count: int, newlines: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Where each of the first ``count`` lines of ``raw`` starts, and ends (exclusive, before
    its newline); ``newlines``, where the newlines of ``raw`` are, saves looking for them."""
    ends = (np.flatnonzero(raw == 10) if newlines is None else newlines)[:count]
    if len(ends) < count:  # a last line without a newline
        ends = np.append(ends, len(raw))
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    return starts, ends


def _first_bytes(raw: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The first byte of each line (of an empty line: the next one; a chunk is never empty)."""
    first: np.ndarray = raw[np.minimum(starts, len(raw) - 1)]
    return first


def _blank_lines(raw: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """True for each line holding only whitespace (Polars skips those). Only lines starting
    with whitespace are looked at one by one."""
    blank = ends <= starts
    for i in np.flatnonzero(~blank & np.isin(_first_bytes(raw, starts), _WHITESPACE)):
        blank[i] = not raw[starts[i] : ends[i]].tobytes().strip()
    return blank


def _parse_json_lines(
    chunk: bytes, count: int, first: int, url: str, parse: Callable[[bytes, int], pl.DataFrame]
) -> tuple[pl.DataFrame, np.ndarray, list[str], list[str]]:
    """Locate bad lines (the fallback when a whole chunk does not parse).

    ``first`` is the line number of the chunk's first line; ``parse(lines, count)`` reads
    whole lines (raising PolarsError or ValueError when it cannot). Returns the good records as a
    frame, the index of the line of each, and the text and reason of each bad line.
    """
    raw = np.frombuffer(chunk, dtype=np.uint8)
    starts, ends = _line_bounds(raw, count)
    # A cheap first guess, over all lines at once: an object line starts with "{" and ends
    # with "}" (before a CR). Only the other lines are looked at one by one: blank, bad, or
    # an object after all (with spaces around it).
    last = raw[np.maximum(ends - 1, 0)]
    before_cr = raw[np.maximum(ends - 2, 0)]
    last = np.where((last == 13) & (ends - starts >= 2), before_cr, last)
    good = (ends > starts) & (_first_bytes(raw, starts) == ord("{")) & (last == ord("}"))
    bad: dict[int, str] = {}  # line index -> reason
    for i in np.flatnonzero(~good):
        why = _judge_json_line(raw[starts[i] : ends[i]].tobytes())
        good[i] = why is None
        if why:
            bad[int(i)] = why
    failed: list[int] = []
    more_reasons: list[str] = []
    good_at = np.flatnonzero(good)
    try:
        # The good lines with their newlines, cut out of the chunk without a copy per line.
        span = np.diff(np.append(starts, len(raw)))
        data = parse(raw[np.repeat(good, span)].tobytes(), len(good_at))
    except (pl.exceptions.PolarsError, ValueError):
        # A line that looked right is not JSON after all: judge every line.
        lines = [raw[starts[i] : ends[i]].tobytes() for i in range(count)]
        judged = [_judge_json_line(line) for line in lines]
        bad = {i: why for i, why in enumerate(judged) if why}
        good_at = np.array([i for i, why in enumerate(judged) if why is None], dtype=np.int64)
        data, failed, more_reasons = _frame_from_json_lines(
            [lines[i] for i in good_at], lambda i: f"{url}: line {first + int(good_at[i])}"
        )
    records: list[str] = []
    reasons: list[str] = []
    for at, why in sorted(bad.items()):
        line = raw[starts[at] : ends[at]].tobytes()
        records.append(line.decode("utf-8", "replace").rstrip("\r"))
        reasons.append(f"{url}: line {first + at}: {why}")
    records += [
        raw[starts[good_at[i]] : ends[good_at[i]]].tobytes().decode("utf-8", "replace")
        for i in failed
    ]
    kept = np.delete(good_at, failed) if failed else good_at
    return data, kept, records, reasons + more_reasons


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
    starts, ends = _line_bounds(raw, count, newlines)
    filled = np.flatnonzero(~_blank_lines(raw, starts, ends))
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
    return _to_frame(table.select(order))


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


class _NdjsonReader:
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
            self._fh = _open_window(fs, ref.path, window)
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
            data, kept, records, reasons = _parse_json_lines(
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
                starts, ends = _line_bounds(raw, count)
                good_lines = np.flatnonzero(~_blank_lines(raw, starts, ends)) + first
            lines_of = good_lines

            def where(rows: np.ndarray) -> list[str]:
                return [f"{self._ref.url}: line {int(lines_of[r])}" for r in rows]

            table, conv_dead, _ = _convert_columns(data.to_arrow(), self._targets, None, where)
            data = _to_frame(table)
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


class _JsonReader:
    """A JSON array of objects (or a single object), loaded whole: JSON is not streamable."""

    def __init__(
        self,
        fs: Any,
        ref: FileRef,
        skip: int,
        targets: dict[str, pa.DataType],
        max_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self._ref = ref
        with fs.open(ref.path, "rb", compression="infer") as fh:
            raw = fh.read(max_bytes + 1)
            if len(raw) > max_bytes:
                size, raw = len(raw), b""
                while block := fh.read(NDJSON_BLOCK):
                    size += len(block)
                raise ValueError(
                    f"{too_long(size, max_bytes)}: a JSON document is read whole; write "
                    "NDJSON (one record per line) for larger inputs, or raise max_record_bytes"
                )
        dead: list[tuple[int, str, str]] = []
        try:
            data = pl.read_json(io.BytesIO(raw), infer_schema_length=None)
            good_at = np.arange(data.height, dtype=np.int64)
            total = data.height
        except (pl.exceptions.PolarsError, ValueError):
            data, good_at, total = self._fallback(raw, dead)
        if targets and data.height:
            table, conv, failed = _convert_columns(
                data.to_arrow(),
                targets,
                None,
                lambda rows: [f"{ref.url}: element {int(good_at[r])}" for r in rows],
            )
            if conv is not None:
                for i, record, reason in zip(failed, conv["record"], conv["reason"], strict=True):
                    dead.append((int(good_at[i]), record, reason))
                good_at = np.delete(good_at, failed)
            data = _to_frame(table)
        dead = sorted(d for d in dead if d[0] >= skip)
        keep = good_at >= skip
        self._data = data.filter(pl.Series(keep)) if data.height else data
        self._good_at = good_at[keep]
        self._dead = deque(dead)
        self._next = skip
        self._total = total
        self._offset = 0

    def _fallback(
        self, raw: bytes, dead: list[tuple[int, str, str]]
    ) -> tuple[pl.DataFrame, np.ndarray, int]:
        """Parse element by element to find the ones that are not usable records."""
        url = self._ref.url
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            dead.append((0, raw.decode("utf-8", "replace"), f"{url}: invalid JSON: {exc}"))
            return pl.DataFrame(), np.array([], dtype=np.int64), 1
        elements = value if isinstance(value, list) else [value]
        lines: list[bytes] = []
        positions: list[int] = []
        for i, element in enumerate(elements):  # fallback only
            if isinstance(element, dict):
                lines.append(orjson.dumps(element))
                positions.append(i)
            else:
                dead.append(
                    (
                        i,
                        orjson.dumps(element).decode(),
                        f"{url}: element {i}: expected a JSON object, "
                        f"found {type(element).__name__}",
                    )
                )
        data, failed, reasons = _frame_from_json_lines(
            lines, lambda i: f"{url}: element {positions[i]}"
        )
        for i, reason in zip(failed, reasons, strict=True):
            dead.append((positions[i], lines[i].decode(), reason))
        good = np.delete(np.array(positions, dtype=np.int64), failed)
        return data, good, len(elements)

    def read(self, limit: int) -> Chunk | None:
        if self._offset >= self._data.height and not self._dead:
            return None
        take = self._data.slice(self._offset, limit)
        self._offset += take.height
        end = int(self._good_at[self._offset - 1]) + 1 if take.height else self._total
        records: list[str] = []
        reasons: list[str] = []
        while self._dead and self._dead[0][0] < end:
            _, record, reason = self._dead.popleft()
            records.append(record)
            reasons.append(reason)
        start = self._next
        self._next = max(end, start)
        dead = raw_dead_letters(records, reasons) if records else None
        return Chunk(take, dead, self._next - start)

    def close(self) -> None:
        self._data = pl.DataFrame()


# -- source ------------------------------------------------------------------------------


def open_reader(
    fs: Any,
    ref: FileRef,
    skip: int,
    config: FileSourceConfig,
    targets: dict[str, pa.DataType],
    window: Window | None = None,
) -> Reader:
    """A streaming reader for one file, positioned after its first ``skip`` rows (of
    ``window``, a byte range of complete lines, when tailing)."""
    cfg = config
    if ref.format == "parquet" and is_local(fs):
        return _LocalParquetReader(ref, skip, targets)
    if ref.format == "parquet":
        return _ParquetReader(fs, ref, skip, cfg.batch_size, targets)
    if ref.format == "csv":
        delimiter = cfg.csv.delimiter
        if "delimiter" not in cfg.csv.model_fields_set and extension(ref.path) == ".tsv":
            delimiter = "\t"
        return _CsvReader(fs, ref, skip, cfg.csv, delimiter, targets, window, cfg.max_record_bytes)
    if ref.format == "ndjson":
        return _NdjsonReader(fs, ref, skip, targets, window, cfg.max_record_bytes)
    return _JsonReader(fs, ref, skip, targets, cfg.max_record_bytes)
