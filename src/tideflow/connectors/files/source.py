"""The ``file`` source: files, folders, globs and watched folders, resumable by row.

Its position holds the files finished (each with a fingerprint: size, modification time and
a hash of its first 64 KiB, so a later run can say which of them changed), the current file
and the rows consumed in it, and with ``tail`` the byte offset each file was read to.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import fsspec
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.csv as pa_csv
from fsspec.utils import infer_compression

from tideflow.connectors.files.formats import open_reader
from tideflow.connectors.files.formats.base import FileRef, Reader, Window, concat_dead
from tideflow.connectors.files.formats.convert import convert_replayed
from tideflow.connectors.files.formats.csv import infer_text_columns
from tideflow.connectors.files.formats.lines import nesting_conflict
from tideflow.connectors.files.paths import is_local
from tideflow.connectors.files.settings import (
    GLOB_MAGIC,
    TYPE_NAMES,
    FileSourceConfig,
    infer_format,
)
from tideflow.core.contracts import (
    JSON,
    Context,
    Source,
    SourceBatch,
    empty_dead_letters,
    raw_dead_letters,
)
from tideflow.errors import ConfigError, StateError
from tideflow.registry import component


def _hidden(path: str, base: str, pattern: str) -> bool:
    """Is a listed file hidden (a component below ``base`` starts with "." or "_")?

    A component the pattern itself spells with a leading "." or "_" is what the user asked for.
    """
    rel = path[len(base) :].strip("/") if base and path.startswith(base) else path
    wanted = pattern[len(base) :].strip("/").split("/") if base else pattern.split("/")
    for depth, part in enumerate(rel.split("/")):
        asked = wanted[depth] if depth < len(wanted) else ""
        if part.startswith((".", "_")) and not asked.startswith((".", "_")):
            return True
    return False


HEAD_BYTES = 1 << 16
"""How much of a file's start its fingerprint hashes."""


@dataclass
class _Resume:
    """A file source's stored position, parsed."""

    done: list[str] = field(default_factory=list)
    file: str | None = None
    row: int = 0
    seen: dict[str, list[Any]] = field(default_factory=dict)
    """Finished files: [size, modification time, hash of the head]."""
    tail: dict[str, list[Any]] = field(default_factory=dict)
    """tail: files read up to a line end: [byte offset, rows before it, hash of the head]."""
    at: int = 0
    line: int = 0


def _parse_position(position: JSON | None, name: str) -> _Resume:
    if position is None:
        return _Resume()
    if (
        not isinstance(position, dict)
        or not isinstance(position.get("done", []), list)
        or not isinstance(position.get("row", 0), int)
        or not isinstance(position.get("file"), str | None)
        or not isinstance(position.get("seen", {}), dict)
        or not isinstance(position.get("tail", {}), dict)
    ):
        raise StateError(
            f"file source {name!r}: the stored position {position!r} is not a file position; "
            "was the source type changed? Reset the pipeline's state to start over"
        )
    return _Resume(
        done=[str(d) for d in position.get("done", [])],
        file=position.get("file"),
        row=position.get("row", 0),
        seen=dict(position.get("seen", {})),
        tail=dict(position.get("tail", {})),
        at=int(position.get("at", 0)),
        line=int(position.get("line", 0)),
    )


def _mtime(info: dict[str, Any]) -> float | str | None:
    """A listing's modification time, whatever the filesystem calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float | str):
            return value
    return None


def _head_hash(fs: Any, path: str, length: int) -> str:
    """A hash of a file's first ``length`` bytes (as stored: compressed files' raw bytes)."""
    with fs.open(path, "rb") as fh:
        data = fh.read(length) if length else b""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _line_end(fs: Any, path: str, start: int) -> int:
    """Where the last complete line of the file ends (just after its newline), looking
    from ``start``; ``start`` when no newline follows it (a last line still being written
    is left for later)."""
    with fs.open(path, "rb") as fh:
        end = int(fh.seek(0, 2))
        while end > start:
            begin = max(start, end - HEAD_BYTES)
            fh.seek(begin)
            block = fh.read(end - begin)
            cut = block.rfind(b"\n")
            if cut >= 0:
                return int(begin + cut + 1)
            end = begin
    return start


def _size_text(n: int) -> str:
    return f"{n:,} bytes"


DECODE_ERRORS = (
    pl.exceptions.PolarsError,
    pl.exceptions.PanicException,  # Polars panics (catchably) on some damaged Parquet pages
    pa.ArrowException,
    UnicodeDecodeError,
    ValueError,
)
"""What a decoder raises for bytes it cannot read (not I/O failures, which end the run)."""


_COUNTED_FILES = 256
"""The most Parquet files whose footers are read for the progress line's total."""


@component("source", "file")
class FileSource(Source[FileSourceConfig]):
    """Read CSV, NDJSON, JSON or Parquet files from a path, folder or glob (local or fsspec)."""

    config_model = FileSourceConfig

    @classmethod
    def declared_types(cls, config: Any) -> dict[str, Any]:
        """``schema_overrides`` as Polars dtypes: every record has them (or is dead-lettered)."""
        return {
            column: pl.from_arrow(pa.array([], type=TYPE_NAMES[name.lower()])).dtype  # type: ignore[union-attr]
            for column, name in config.schema_overrides.items()
        }

    def __init__(self, config: FileSourceConfig) -> None:
        super().__init__(config)
        self.bounded = not config.watch
        self._ctx: Context | None = None
        self._fs: Any = None
        self._target = ""
        self._url = ""
        self._done: list[str] = []
        self._done_set: set[str] = set()
        self._queue: deque[FileRef] = deque()
        self._current: FileRef | None = None
        self._row = 0
        self._reader: Reader | None = None
        self._held: deque[tuple[pl.DataFrame, pl.DataFrame | None, JSON]] = deque()
        self._last_position: JSON = None
        self._skipped: set[str] = set()
        self._seen: dict[str, list[Any]] = {}
        self._tails: dict[str, list[Any]] = {}
        self._window: Window | None = None
        self._resume_window: tuple[int, int] | None = None
        self._print: list[Any] | None = None
        self._earlier = 0
        self._warnings: list[str] = []
        self._read_rows = 0
        self._expected: int | Literal[False] | None = False  # False: not counted yet
        self._targets = {
            column: TYPE_NAMES[name.lower()] for column, name in config.schema_overrides.items()
        }

    # -- lifecycle

    def open(self, ctx: Context, position: JSON | None) -> None:
        """List the files and resume after ``position``: finished files are skipped (a
        warning names those that changed since) and the current file continues at its row
        offset; with ``tail``, files grown since are read from where they were left."""
        self._ctx = ctx
        self._url = ctx.resolve(self.config.path)
        self._fs, self._target = fsspec.core.url_to_fs(self._url, **self.config.storage_options)
        resume = _parse_position(position, ctx.name)
        self._done = list(resume.done)
        self._done_set = set(resume.done)
        self._seen = resume.seen
        self._tails = resume.tail
        self._fs.invalidate_cache()  # fsspec caches listings per filesystem instance
        files = self._list()
        if not files and self.bounded:
            raise ConfigError(
                f"file source {ctx.name!r}: no files match {self._url!r}; check `path` (a file, "
                "folder or glob such as `data/*.csv`), or set `watch: true` to wait for files"
            )
        by_url = {ref.url: ref for ref in files}
        self._current, self._row = None, 0
        current = resume.file
        if current is not None and current not in self._done_set:
            if current in by_url:
                self._current, self._row = by_url[current], resume.row
                if resume.at or current in self._tails:
                    self._resume_window = (resume.at, resume.line)
            else:
                ctx.log.warning(
                    "file %s, read up to row %d, is gone; skipping it", current, resume.row
                )
                self._mark_done(current)
        self._queue = deque(
            ref for ref in files if ref is not self._current and self._wanted(ref, first=True)
        )
        for text in self._warnings:
            ctx.log.warning("%s", text)
        self._last_position = self._position()

    def expected_records(self) -> int | None:
        """The rows this run reads when every file is Parquet (their footers say how many;
        read once, for at most ``_COUNTED_FILES`` files); None for text formats, whose rows
        are known only once read, and for a watched folder, which has no end."""
        if self._expected is not False:
            return self._expected
        self._expected = None
        refs = ([self._current] if self._current is not None else []) + list(self._queue)
        if self.config.watch or len(refs) > _COUNTED_FILES:
            return None
        if any(ref.format != "parquet" for ref in refs):
            return None
        import pyarrow.parquet as pq

        try:
            total = 0
            for ref in refs:
                with self._fs.open(ref.path, "rb") as fh:
                    total += pq.ParquetFile(fh).metadata.num_rows
        except (OSError, pa.ArrowException):
            return None  # the read reports what is wrong with the file
        # What this run read already, plus what is left of the files not finished.
        self._expected = self._read_rows + max(total - self._row, 0)
        return self._expected

    def reparse(self, frame: pl.DataFrame, labels: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
        """``schema_overrides`` applied to replayed dead letters; a value that still does
        not convert makes its row a dead letter again. Letters of CSV rows hold only text:
        their other columns get their types as a read infers them (from the letters'
        values), and CSV's null spellings apply. Letters of other formats keep the types
        their JSON gives."""
        if frame.height == 0:
            return frame, empty_dead_letters()
        nulls = None
        if self.config.format in (None, "csv") and all(t == pl.String for t in frame.dtypes):
            frame = infer_text_columns(frame, set(self._targets))
            nulls = pa.array(pa_csv.ConvertOptions().null_values, pa.string())
        if not self._targets:
            return frame, empty_dead_letters()
        converted, dead = convert_replayed(frame, self._targets, nulls, labels)
        return converted, dead if dead is not None else empty_dead_letters()

    def notices(self) -> list[str]:
        """Files that changed since an earlier run read them, and, when this run read
        nothing, how many files earlier runs had read."""
        notes = list(self._warnings)
        if not self._read_rows and self._earlier:
            appended = " and nothing was appended to them since" if self.config.tail else ""
            notes.append(
                f"{self._earlier:,} input file(s) were read by earlier runs{appended} "
                "(`tideflow state show` lists them; `tideflow state reset` reads them again)"
            )
        return notes

    def _tailing(self, ref: FileRef) -> bool:
        """Is ``ref`` read by line ends and byte offsets (``tail``)?"""
        return (
            self.config.tail
            and ref.format in ("ndjson", "csv")
            and infer_compression(ref.url) is None
        )

    def _wanted(self, ref: FileRef, first: bool) -> bool:
        """Should ``ref`` be read (now)? Files an earlier run finished are not: they are
        counted and, when they changed since, named in a warning (once)."""
        url = ref.url
        if url in self._done_set:
            if first:
                self._earlier += 1
                self._check_unchanged(ref)
            return False
        if url not in self._tails:
            return True  # never read
        offset, _, head = self._tails[url][:3]
        if ref.size is not None and ref.size == offset:
            if first:
                self._earlier += 1
            return False
        if (ref.size is not None and ref.size < offset) or self._head(ref, offset) != head:
            if url not in self._skipped:
                self._skipped.add(url)
                self._warnings.append(
                    f"file {url} was read up to byte {offset:,} by an earlier run and has "
                    f"been rewritten since (now {_size_text(ref.size or 0)}, its first bytes "
                    "differ): it is not read again; `tideflow state reset` reads every file "
                    "again"
                )
            return False
        return True

    def _check_unchanged(self, ref: FileRef) -> None:
        old = self._seen.get(ref.url)
        if old is None or (ref.size is None and ref.mtime is None):
            return
        size, mtime, head = old[:3]
        if ref.size == size and (ref.mtime == mtime or ref.mtime is None):
            return
        grown = (
            ref.size is not None
            and isinstance(size, int)
            and ref.size > size
            and self._head(ref, size) == head
        )
        if grown and self.config.tail:
            hint = (
                "the appended part is not read: the file was finished before `tail` was set "
                "(`tideflow state reset` reads every file again, then follows them)"
            )
        elif grown:
            hint = (
                "the appended part is not read (set `tail: true` on the source to read lines "
                "appended to files)"
            )
            what = f"has grown since by {_size_text(ref.size - size)}"
        else:
            hint = "its new content is not read (`tideflow state reset` reads every file again)"
            what = f"has changed since (size {size} -> {ref.size}, modified {mtime} -> {ref.mtime})"
        self._warnings.append(f"file {ref.url} was read by an earlier run and {what}: {hint}")

    def _head(self, ref: FileRef, size: int) -> str:
        return _head_hash(self._fs, ref.path, min(HEAD_BYTES, size))

    def close(self) -> None:
        """Close the file being read."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- reading

    def read_batch(self) -> SourceBatch | None:
        """Up to ``batch_size`` records, possibly from several files, with the position after
        them; ``None`` once a bounded source has read every file."""
        limit = self.config.batch_size
        parts: list[tuple[pl.DataFrame, pl.DataFrame | None, JSON]] = []
        rows = 0
        listed = False
        while rows < limit:
            if self._held:
                part = self._held.popleft()
                parts.append(part)
                rows += part[0].height
                continue
            if self._reader is None and self._current is None:
                if not self._queue and not self.bounded and not listed:
                    self._refresh()
                    listed = True
                if not self._queue:
                    break
                self._current, self._row = self._queue.popleft(), 0
            assert self._current is not None
            try:
                if self._reader is None:
                    if not self._open_current():
                        continue  # a tailed file with no new complete line
                    assert self._reader is not None
                chunk = self._reader.read(limit - rows)
            except DECODE_ERRORS as exc:
                parts.append(self._undecodable(exc))
                continue
            if chunk is None:
                self._reader.close()
                self._reader = None
                self._finish_current()
                if parts:  # nothing was read since: the last part also ends the file
                    parts[-1] = (parts[-1][0], parts[-1][1], self._position())
                continue
            self._row += chunk.consumed
            data = chunk.data
            if self.config.include_path_column and self._current is not None:
                data = data.with_columns(
                    pl.lit(self._current.url).alias(self.config.include_path_column)
                )
            parts.append((data, chunk.dead, self._position()))
            # Dead-lettered records count: they came in with the batch, and a chunk with bad
            # lines would otherwise be topped up by ever smaller reads.
            rows += data.height + (0 if chunk.dead is None else chunk.dead.height)
            self._read_rows += data.height + (0 if chunk.dead is None else chunk.dead.height)
        if parts:
            return self._combine(parts)
        position = self._position()
        if position != self._last_position:
            self._last_position = position
            return SourceBatch(pl.DataFrame(), position)
        if self.bounded:
            return None
        assert self._ctx is not None
        self._ctx.wait(self.config.poll_interval)
        return SourceBatch(pl.DataFrame(), position)

    def _open_current(self) -> bool:
        """Open the reader of the current file (of its new complete lines, when tailing);
        False, and the file left as it was, when a tailed file has no new complete line."""
        ref = self._current
        assert ref is not None
        window = None
        if self._tailing(ref):
            start, before = self._resume_window or (self._tails.get(ref.url) or [0, 0])[:2]
            self._resume_window = None
            end = _line_end(self._fs, ref.path, start)
            if end <= start:
                self._current, self._row = None, 0
                return False
            window = Window(start, end, before)
        else:
            size = ref.size if ref.size is not None else self._fs.size(ref.path)
            self._print = [size, ref.mtime, self._head(ref, size)]
        self._window = window
        self._reader = open_reader(self._fs, ref, self._row, self.config, self._targets, window)
        return True

    def _finish_current(self) -> None:
        """The current file (or its window) is read to the end."""
        ref = self._current
        assert ref is not None
        if self._window is not None:
            window = self._window
            # Rows of the window: the reader counted them (the resume offset).
            self._tails[ref.url] = [
                window.end,
                window.rows_before + self._row,
                self._head(ref, window.end),
            ]
            self._window = None
        else:
            self._mark_done(ref.url)
            if self._print is not None:
                self._seen[ref.url] = self._print
        self._print = None
        self._current, self._row = None, 0

    def _undecodable(self, exc: Exception) -> tuple[pl.DataFrame, pl.DataFrame, JSON]:
        """The rest of a file its decoder rejects becomes one dead letter naming the file and
        the row it stopped at; the file counts as finished and the run goes on."""
        assert self._current is not None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        url, row = self._current.url, self._row
        record = orjson.dumps({"file": url, "from_row": row + 1}).decode()
        reason = f"{url}: cannot decode {self._current.format} from row {row + 1}: {exc}"
        self._mark_done(url)
        self._tails.pop(url, None)
        self._window = self._print = None
        self._current, self._row = None, 0
        return pl.DataFrame(), raw_dead_letters([record], [reason]), self._position()

    def _combine(self, parts: list[tuple[pl.DataFrame, pl.DataFrame | None, JSON]]) -> SourceBatch:
        """One batch from the parts; parts whose columns cannot be merged wait for the next.

        Parts come from different files or chunks whose types were inferred separately. Numbers
        and text merge; a field that is nested in one part and not in another must not (Polars
        would wrap the scalars into structs), so the batch ends before such a part.
        """
        fit = len(parts)
        schema: dict[str, pl.DataType] = {}
        for k, (frame, _, _) in enumerate(parts):
            if not frame.height:
                continue
            if nesting_conflict(pl.Schema(schema), frame.schema) is not None:
                fit = k
                break
            for name, dtype in frame.schema.items():
                if schema.get(name, pl.Null) == pl.Null:
                    schema[name] = dtype
        while True:
            try:
                data = self._concat([p[0] for p in parts[:fit]])
                break
            except (pl.exceptions.PolarsError, ValueError):
                if fit <= 1:
                    raise
                fit -= 1
        if fit < len(parts):
            self._held.extendleft(reversed(parts[fit:]))
        dead = concat_dead(p[1] for p in parts[:fit])
        position = self._position() if not self._held else parts[fit - 1][2]
        self._last_position = position
        return SourceBatch(data, position, dead)

    @staticmethod
    def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
        useful = [f for f in frames if f.height]
        if not useful:
            return frames[0] if frames else pl.DataFrame()
        return useful[0] if len(useful) == 1 else pl.concat(useful, how="diagonal_relaxed")

    def _position(self) -> JSON:
        position: dict[str, Any] = {
            "done": list(self._done),
            "file": self._current.url if self._current is not None else None,
            "row": self._row if self._current is not None else 0,
        }
        if self._seen:
            position["seen"] = dict(self._seen)
        if self._tails:
            position["tail"] = dict(self._tails)
        if self._current is not None and self._window is not None:
            position["at"] = self._window.start
            position["line"] = self._window.rows_before
        return position

    def _mark_done(self, url: str) -> None:
        if url not in self._done_set:
            self._done.append(url)
            self._done_set.add(url)

    # -- listing

    def _refresh(self) -> None:
        """watch: queue files that appeared since the last look, in sorted order."""
        self._fs.invalidate_cache()
        known = {ref.url for ref in self._queue}
        if self._current is not None:
            known.add(self._current.url)
        self._queue.extend(
            ref
            for ref in self._list(strict=False)
            if ref.url not in known and self._wanted(ref, first=False)
        )

    def _list(self, strict: bool = True) -> list[FileRef]:
        """The files to read, sorted. A file whose format cannot be told is an error at the
        start; when it shows up later in a watched folder it is skipped with a warning, so a
        stray file cannot stop a running stream."""
        fs, target = self._fs, self._target
        base = target
        magic = GLOB_MAGIC.search(target)
        infos: dict[str, dict[str, Any]] = {}
        if magic:
            base = target[: magic.start()].rpartition("/")[0]
            found = fs.glob(target, detail=True)
            infos = {p: info for p, info in found.items() if info.get("type") == "file"}
        elif fs.isdir(target):
            base = target.rstrip("/")
            infos = dict(fs.find(target, detail=True))
        elif fs.exists(target):
            infos, base = {target: fs.info(target)}, ""
        paths = sorted(p for p in infos if not base or not _hidden(p, base, target))
        local = is_local(fs)
        refs = []
        for path in paths:
            url = path if local else fs.unstrip_protocol(path)
            try:
                fmt = self.config.format or infer_format(url)
            except ConfigError:
                if strict:
                    raise
                if url not in self._skipped and self._ctx is not None:
                    self._ctx.log.warning("skipping %s: its extension names no format", url)
                self._skipped.add(url)
                continue
            info = infos[path]
            size = info.get("size")
            refs.append(
                FileRef(url, path, fmt, size if isinstance(size, int) else None, _mtime(info))
            )
        return refs
