"""The ``file`` source: files, folders, globs and watched folders, resumable by row."""

from __future__ import annotations

from collections import deque
from typing import Any

import fsspec
import orjson
import polars as pl
import pyarrow as pa

from tideflow.connectors.files.readers import (
    FileRef,
    Reader,
    concat_dead,
    is_local,
    nesting_conflict,
    open_reader,
)
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


def _parse_position(position: JSON | None, name: str) -> tuple[list[str], str | None, int]:
    if position is None:
        return [], None, 0
    if (
        not isinstance(position, dict)
        or not isinstance(position.get("done", []), list)
        or not isinstance(position.get("row", 0), int)
        or not isinstance(position.get("file"), str | None)
    ):
        raise StateError(
            f"file source {name!r}: the stored position {position!r} is not a file position; "
            "was the source type changed? Reset the pipeline's state to start over"
        )
    done = [str(d) for d in position.get("done", [])]
    return done, position.get("file"), position.get("row", 0)


DECODE_ERRORS = (
    pl.exceptions.PolarsError,
    pl.exceptions.PanicException,  # Polars panics (catchably) on some damaged Parquet pages
    pa.ArrowException,
    UnicodeDecodeError,
    ValueError,
)
"""What a decoder raises for bytes it cannot read (not I/O failures, which end the run)."""


@component("source", "file")
class FileSource(Source):
    """Read CSV, NDJSON, JSON or Parquet files from a path, folder or glob (local or fsspec)."""

    config_model = FileSourceConfig

    def __init__(self, config: FileSourceConfig) -> None:
        super().__init__(config)
        self.config: FileSourceConfig = config
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
        self._targets = {
            column: TYPE_NAMES[name.lower()] for column, name in config.schema_overrides.items()
        }

    # -- lifecycle

    def open(self, ctx: Context, position: JSON | None) -> None:
        """List the files and resume after ``position``: finished files are skipped and the
        current file continues at its row offset."""
        self._ctx = ctx
        self._url = ctx.resolve(self.config.path)
        self._fs, self._target = fsspec.core.url_to_fs(self._url, **self.config.storage_options)
        done, current, row = _parse_position(position, ctx.name)
        self._done = list(done)
        self._done_set = set(done)
        self._fs.invalidate_cache()  # fsspec caches listings per filesystem instance
        files = self._list()
        if not files and self.bounded:
            raise ConfigError(
                f"file source {ctx.name!r}: no files match {self._url!r}; check `path` (a file, "
                "folder or glob such as `data/*.csv`), or set `watch: true` to wait for files"
            )
        by_url = {ref.url: ref for ref in files}
        self._current, self._row = None, 0
        if current is not None and current not in self._done_set:
            if current in by_url:
                self._current, self._row = by_url[current], row
            else:
                ctx.log.warning("file %s, read up to row %d, is gone; skipping it", current, row)
                self._mark_done(current)
        self._queue = deque(
            ref for ref in files if ref.url not in self._done_set and ref is not self._current
        )
        self._last_position = self._position()

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
                    self._reader = open_reader(
                        self._fs, self._current, self._row, self.config, self._targets
                    )
                chunk = self._reader.read(limit - rows)
            except DECODE_ERRORS as exc:
                parts.append(self._undecodable(exc))
                continue
            if chunk is None:
                self._reader.close()
                self._reader = None
                assert self._current is not None
                self._mark_done(self._current.url)
                self._current, self._row = None, 0
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
        return {
            "done": list(self._done),
            "file": self._current.url if self._current is not None else None,
            "row": self._row if self._current is not None else 0,
        }

    def _mark_done(self, url: str) -> None:
        if url not in self._done_set:
            self._done.append(url)
            self._done_set.add(url)

    # -- listing

    def _refresh(self) -> None:
        """watch: queue files that appeared since the last look, in sorted order."""
        self._fs.invalidate_cache()
        known = self._done_set | {ref.url for ref in self._queue}
        if self._current is not None:
            known.add(self._current.url)
        self._queue.extend(ref for ref in self._list(strict=False) if ref.url not in known)

    def _list(self, strict: bool = True) -> list[FileRef]:
        """The files to read, sorted. A file whose format cannot be told is an error at the
        start; when it shows up later in a watched folder it is skipped with a warning, so a
        stray file cannot stop a running stream."""
        fs, target = self._fs, self._target
        base = target
        magic = GLOB_MAGIC.search(target)
        if magic:
            base = target[: magic.start()].rpartition("/")[0]
            found = fs.glob(target, detail=True)
            paths = [p for p, info in found.items() if info.get("type") == "file"]
        elif fs.isdir(target):
            base = target.rstrip("/")
            paths = list(fs.find(target))
        elif fs.exists(target):
            paths, base = [target], ""
        else:
            paths = []
        paths = sorted(p for p in paths if not base or not _hidden(p, base, target))
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
            refs.append(FileRef(url, path, fmt))
        return refs
