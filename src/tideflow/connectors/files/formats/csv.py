"""The CSV reader: pyarrow's streaming parser, every column read as text and then converted."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

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
from tideflow.connectors.files.settings import (
    NDJSON_BLOCK,
    CsvReadOptions,
    FileSourceConfig,
    extension,
)
from tideflow.core.contracts import (
    HEAD_EXCERPT,
    MAX_RECORD_BYTES,
    long_record_letter,
    raw_dead_letters,
    too_long,
)


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
        typed = to_frame(table)
    except pa.ArrowInvalid:
        return frame  # left as text: the conversion below reports what does not convert
    if typed.shape != frame.shape:
        return frame
    # Columns still text are the letters' own values (CSV text cannot tell null from "").
    return typed.with_columns(
        frame[name] for name, dtype in typed.schema.items() if dtype == pl.String
    )


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


class CsvReader:
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
        """The reader of ``ref``; the delimiter is a tab for ``.tsv`` unless configured."""
        delimiter = config.csv.delimiter
        if "delimiter" not in config.csv.model_fields_set and extension(ref.path) == ".tsv":
            delimiter = "\t"
        return cls(fs, ref, skip, config.csv, delimiter, targets, window, config.max_record_bytes)

    def _stream(self, filtered: bool, whole: bool = False) -> Any:
        """The bytes to parse: the window (when tailing) or the whole file."""
        window = None if whole else self._window
        if window is not None:
            fh = open_window(self._fs, self._ref.path, window)
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

        table, conv_dead, _ = convert_columns(table, self._targets, self._nulls, where)
        return Chunk(to_frame(table), concat_dead([dead, text_dead, conv_dead]), end - start)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._fh is not None:
            self._fh.close()
