"""The ``file`` sink: staged files made visible by rename at each checkpoint."""

from __future__ import annotations

import contextlib
import gzip
import os
import posixpath
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
import numpy as np
import polars as pl

from tideflow.connectors.files.paths import is_local, safe_name
from tideflow.connectors.files.settings import (
    HIVE_ESCAPE_RE,
    HIVE_ESCAPES,
    HIVE_NULL,
    MAX_SEGMENT_BYTES,
    STAGING_PREFIX,
    FileSinkConfig,
)
from tideflow.core.contracts import (
    JSON,
    Context,
    ExistingOutput,
    Sink,
    dead_letters,
)
from tideflow.core.faults import crash_point
from tideflow.errors import ConfigError, StateError, TerminalError
from tideflow.registry import component

_CLAIMS: dict[tuple[str, ...], str] = {}
"""Destinations (protocol, folder, prefix, scope) written by an open sink, and by which one."""
_CLAIMS_LOCK = threading.Lock()


@dataclass
class _OutFile:
    """A temporary file being written."""

    temp: str
    final: str
    raw: IO[bytes]
    stream: IO[bytes]
    opened_at: float
    columns: list[str] | None = None
    frames: list[pl.DataFrame] = field(default_factory=list)
    """parquet: rows waiting to be encoded, all at once, when the file is finished."""
    buffered: int = 0
    """parquet: estimated in-memory bytes of ``frames``."""

    @property
    def size(self) -> int:
        """Bytes the file holds or will hold (parquet: before compression)."""
        return self.buffered if self.frames else self.raw.tell()


def _hive_values(values: pl.Series) -> pl.Series:
    """Partition folder values: text, escaped like Hive, null and "" as the default partition."""
    text = values.cast(pl.String)
    if text.str.contains(HIVE_ESCAPE_RE).any():
        for char in HIVE_ESCAPES:
            if text.str.contains(char, literal=True).any():
                text = text.str.replace_all(char, f"%{ord(char):02X}", literal=True)
    return (
        pl.select(pl.when(text.is_null() | (text == "")).then(pl.lit(HIVE_NULL)).otherwise(text))
        .to_series()
        .alias(values.name)
    )


def _hive_name(name: str) -> str:
    for char in HIVE_ESCAPES:
        name = name.replace(char, f"%{ord(char):02X}")
    return name


def _parse_token(token: JSON | None, name: str) -> tuple[int, dict[str, str]] | None:
    if token is None:
        return None
    if (
        not isinstance(token, dict)
        or not isinstance(token.get("epoch"), int)
        or not isinstance(token.get("files"), dict)
    ):
        raise StateError(
            f"file sink {name!r}: the stored commit token {token!r} is not a file sink token; "
            "was the sink type changed? Reset the pipeline's state to start over"
        )
    return token["epoch"], {str(k): str(v) for k, v in token["files"].items()}


@component("sink", "file")
class FileSink(Sink[FileSinkConfig]):
    """Write Parquet, CSV or NDJSON files into a folder (local or fsspec), optionally
    Hive-partitioned; files appear atomically at each checkpoint."""

    config_model = FileSinkConfig

    def __init__(
        self, config: FileSinkConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(config)
        self._clock = clock
        self._ctx: Context | None = None
        self._fs: Any = None
        self._root = ""
        self._local = True
        self._staging = ""
        self._scope_part = ""
        self._epoch = 1
        self._seq = 0
        self._open_files: OrderedDict[str, _OutFile] = OrderedDict()
        self._finished: dict[str, str] = {}
        self._staging_ready = False
        self._claim_key: tuple[str, ...] | None = None
        codec = (config.compression or "").lower()
        # Parquet compresses inside the file; text formats may be gzipped as a whole.
        self._parquet_codec = {"": "zstd", "none": "uncompressed"}.get(codec, codec)
        self._gzip = config.format != "parquet" and codec == "gzip"
        self._ext = ".parquet" if config.format == "parquet" else f".{config.format}"
        self._ext += ".gz" if self._gzip else ""

    # -- lifecycle

    def open(self, ctx: Context, pending: JSON | None) -> None:
        """Finish the renames of the last durable checkpoint, then delete every temporary file
        written after it (by a run that crashed before its checkpoint was durable)."""
        self._ctx = ctx
        url = ctx.resolve(self.config.path)
        self._fs, root = fsspec.core.url_to_fs(url, **self.config.storage_options)
        self._fs.invalidate_cache()  # another process may have changed the folder
        self._root = root.rstrip("/")
        self._local = is_local(self._fs)
        scope = safe_name(ctx.scope)
        self._scope_part = "" if ctx.scope == "main" else f"-{scope}"
        self._staging = f"{STAGING_PREFIX}-{scope}-{safe_name(ctx.pipeline)}-{safe_name(ctx.name)}"
        self._claim()
        parsed = _parse_token(pending, ctx.name)
        if parsed is not None:
            epoch, files = parsed
            self._rename(files)
            self._epoch = epoch + 1
        else:
            self._epoch = self._next_free_epoch()
        self._discard_staging()
        self._seq = 0

    def _committed_files(self, ctx: Context) -> tuple[Any, list[str]]:
        """The filesystem and the committed files of this sink for ``ctx``'s pipeline: names
        ``PREFIX-EPOCH-SEQ.EXT`` of main runs and ``PREFIX-replay-STAMP-EPOCH-SEQ.EXT`` of
        dead-letter replays, anywhere below the destination (partition folders)."""
        fs, root = fsspec.core.url_to_fs(
            ctx.resolve(self.config.path), **self.config.storage_options
        )
        fs.invalidate_cache()
        root = root.rstrip("/")
        if not fs.exists(root) or not fs.isdir(root):
            return fs, []
        name = re.compile(
            re.escape(self.config.prefix)
            + r"(?:-replay-\d{8}T\d{6})?-\d+-\d+"
            + re.escape(self._ext)
            + "$"
        )
        found = [path for path in fs.find(root) if name.match(posixpath.basename(path))]
        return fs, sorted(found)

    def committed_output(self, ctx: Context) -> ExistingOutput | None:
        """The files this sink committed in earlier runs (one listing of the destination)."""
        fs, files = self._committed_files(ctx)
        if not files:
            return None
        shown = f"{self.config.prefix}-*{self._ext}"
        return ExistingOutput(
            found=f"{len(files):,} committed file(s) named {shown} in {self.config.path} "
            f"(e.g. {files[0] if is_local(fs) else fs.unstrip_protocol(files[0])})",
            clearing=f"delete those {len(files):,} file(s)",
        )

    def clear_output(self, ctx: Context) -> None:
        """Delete the committed files (``--from-scratch``) and the partition folders that
        are left empty."""
        fs, files = self._committed_files(ctx)
        folders = {posixpath.dirname(path) for path in files}
        for path in files:
            fs.rm_file(path)
        if is_local(fs):
            root = fs._strip_protocol(ctx.resolve(self.config.path)).rstrip("/")
            for deepest in sorted(folders, key=len, reverse=True):
                folder = deepest
                while folder.startswith(root + "/"):
                    try:
                        os.rmdir(folder)
                    except OSError:
                        break  # not empty: something else lives there
                    folder = posixpath.dirname(folder)
            _fsync_dir(root)
        fs.invalidate_cache()

    def _claim(self) -> None:
        # Two sinks numbering files in one folder with one prefix would pick the same epochs and
        # overwrite each other's files at commit; refuse that instead of losing data.
        key = (str(self._fs.protocol), self._root, self.config.prefix, self._scope_part)
        assert self._ctx is not None
        owner = f"{self._ctx.pipeline}.{self._ctx.name}"
        with _CLAIMS_LOCK:
            holder = _CLAIMS.get(key)
            if holder is not None and holder != owner:
                raise ConfigError(
                    f"sink {self._ctx.name!r}: {holder} already writes files named "
                    f"{self.config.prefix!r}-* into {self.config.path!r}; give one of them a "
                    "different `prefix` or `path`"
                )
            _CLAIMS[key] = owner
        self._claim_key = key

    def close(self) -> None:
        """Abandon open files; the next ``open`` deletes what no checkpoint covers."""
        if self._claim_key is not None:
            with _CLAIMS_LOCK:
                _CLAIMS.pop(self._claim_key, None)
            self._claim_key = None
        for out in self._open_files.values():
            try:
                if out.stream is not out.raw:
                    out.stream.close()
            finally:
                out.raw.close()
        self._open_files.clear()

    # -- writing

    def write_batch(self, batch: pl.DataFrame) -> pl.DataFrame | None:
        """Append the batch to the open file of each partition it touches.

        Returns dead letters only for rows whose partition value is too long for a folder name.
        """
        if self.config.roll_seconds is not None:
            self.roll_expired()
        if batch.height == 0:
            return None
        if not self.config.partition_by:
            self._write("", batch)
            return None
        groups, dead = self._partition(batch)
        for folder, frame in groups:
            self._write(folder, frame)
        return dead

    def roll_expired(self, now: float | None = None) -> int:
        """Finish every file open for ``roll_seconds`` or longer; returns how many."""
        limit = self.config.roll_seconds
        if limit is None:
            return 0
        now = self._clock() if now is None else now
        expired = [key for key, out in self._open_files.items() if now - out.opened_at >= limit]
        for key in expired:
            self._finish(self._open_files.pop(key))
        return len(expired)

    def flush(self) -> JSON | None:
        """Finish every open file (fsync'd) and return the token of renames to make visible."""
        for out in list(self._open_files.values()):
            self._finish(out)
        self._open_files.clear()
        if not self._finished:
            return {"v": 1, "epoch": self._epoch - 1, "files": {}}
        if self._local:
            _fsync_dir(self._path(self._staging))
        token = {"v": 1, "epoch": self._epoch, "files": dict(self._finished)}
        self._finished = {}
        self._epoch += 1
        self._seq = 0
        return token

    def commit(self, token: JSON | None) -> None:
        """Rename the token's temporary files to their final names (idempotent)."""
        parsed = _parse_token(token, self._ctx.name if self._ctx else "file")
        if parsed is None:
            return
        self._rename(parsed[1])
        if self._local and not self._open_files and not self._finished:
            # Not empty or already gone: either way there is nothing to tidy.
            with contextlib.suppress(OSError):
                os.rmdir(self._path(self._staging))
            self._staging_ready = False

    # -- internals

    def _path(self, rel: str) -> str:
        return posixpath.join(self._root, rel) if rel else self._root

    def _partition(
        self, batch: pl.DataFrame
    ) -> tuple[list[tuple[str, pl.DataFrame]], pl.DataFrame | None]:
        cols = self.config.partition_by
        missing = [c for c in cols if c not in batch.columns]
        if missing:
            raise TerminalError(
                f"file sink: partition column(s) {missing} are not in the records "
                f"(columns: {batch.columns}); fix `partition_by`"
            )
        segments = []
        for col in cols:
            dtype = batch.schema[col]
            if dtype.is_nested() or dtype == pl.Binary:
                raise TerminalError(
                    f"file sink: cannot partition by {col!r} of type {dtype}; partition by a "
                    "column of text, numbers, booleans or dates"
                )
            segments.append(f"{_hive_name(col)}=" + _hive_values(batch.get_column(col)))
        too_long = np.zeros(batch.height, dtype=bool)
        for seg in segments:
            too_long |= (seg.str.len_bytes() > MAX_SEGMENT_BYTES).to_numpy()
        key = "__tideflow_partition__"
        folders = pl.concat_str(segments, separator="/") if len(segments) > 1 else segments[0]
        frame = batch.with_columns(folders.alias(key))
        dead: pl.DataFrame | None = None
        if too_long.any():
            mask = pl.Series(too_long)
            dead = dead_letters(
                batch.filter(mask),
                f"partition value too long for a folder name (over {MAX_SEGMENT_BYTES} bytes "
                f"once escaped) in {cols}",
            )
            frame = frame.filter(~mask)
        groups = frame.partition_by(key, as_dict=True, maintain_order=True, include_key=False)
        return [(str(k[0]), g.drop(cols)) for k, g in groups.items()], dead

    def _write(self, folder: str, frame: pl.DataFrame) -> None:
        out = self._open_files.get(folder)
        if out is not None and not self._append(out, frame):
            self._finish(self._open_files.pop(folder))
            out = None
        if out is None:
            while len(self._open_files) >= self.config.max_open_files:
                _, lru = self._open_files.popitem(last=False)
                self._finish(lru)
            out = self._new_file(folder)
            self._open_files[folder] = out
            if not self._append(out, frame):
                raise TerminalError("file sink: could not write a batch to a new file")
        self._open_files.move_to_end(folder)
        if out.size >= self.config.roll_bytes:
            self._finish(self._open_files.pop(folder))
        elif self.config.format == "parquet":
            self._bound_buffer()

    def _bound_buffer(self) -> None:
        """Write out the largest pending parquet files until the buffer fits its budget."""
        total = sum(out.buffered for out in self._open_files.values())
        while total > self.config.buffer_bytes and self._open_files:
            folder = max(self._open_files, key=lambda k: self._open_files[k].buffered)
            out = self._open_files.pop(folder)
            total -= out.buffered
            self._finish(out)

    def _append(self, out: _OutFile, frame: pl.DataFrame) -> bool:
        """Write to ``out``; False when the frame's columns do not fit the file's."""
        fmt = self.config.format
        if fmt == "parquet":
            # Rows are buffered and encoded by Polars in one call when the file is finished:
            # its encoder runs column chunks in parallel and is about twice as fast as
            # appending row groups through pyarrow's ParquetWriter.
            if out.frames:
                first = out.frames[0].schema
                if frame.schema != first:
                    if set(frame.columns) != set(first.names()):
                        return False
                    try:
                        frame = frame.select(first.names()).cast(first)
                    except (pl.exceptions.PolarsError, TypeError):
                        return False
            out.frames.append(frame)
            out.buffered += int(frame.estimated_size())
            return True
        if fmt == "csv":
            nested = [name for name, dt in frame.schema.items() if dt.is_nested()]
            if nested:
                raise TerminalError(
                    f"file sink: CSV cannot hold the nested column(s) {nested}; write ndjson or "
                    "parquet, or flatten them with a step first"
                )
            if out.columns is None:
                out.columns = frame.columns
                frame.write_csv(
                    out.stream,
                    include_header=self.config.csv.include_header,
                    separator=self.config.csv.delimiter,
                )
                return True
            if frame.columns != out.columns:
                if set(frame.columns) != set(out.columns):
                    return False
                frame = frame.select(out.columns)
            frame.write_csv(out.stream, include_header=False, separator=self.config.csv.delimiter)
            return True
        frame.write_ndjson(out.stream)
        return True

    def _new_file(self, folder: str) -> _OutFile:
        name = f"{self._epoch:08d}-{self._seq:05d}"
        final_name = f"{self.config.prefix}{self._scope_part}-{name}{self._ext}"
        final = posixpath.join(folder, final_name) if folder else final_name
        temp = posixpath.join(self._staging, f"{name}{self._ext}.tmp")
        self._seq += 1
        full = self._path(temp)
        raw: IO[bytes]
        if self._local:
            if not self._staging_ready:
                os.makedirs(self._path(self._staging), exist_ok=True)
                self._staging_ready = True
            raw = open(full, "wb")  # noqa: SIM115 - closed in _finish
        else:
            raw = self._fs.open(full, "wb")
        stream: IO[bytes] = raw
        if self._gzip:
            stream = gzip.GzipFile(fileobj=raw, mode="wb")  # type: ignore[assignment]
        return _OutFile(temp, final, raw, stream, self._clock())

    def _finish(self, out: _OutFile) -> None:
        """Complete a temporary file and queue its rename for the next commit."""
        if out.frames:
            frames, out.frames, out.buffered = out.frames, [], 0
            data = pl.concat(frames, how="vertical", rechunk=False)
            data.write_parquet(out.stream, compression=self._parquet_codec)  # type: ignore[arg-type]
            crash_point("file_sink.mid_write")  # written but neither fsync'd nor closed
        if out.stream is not out.raw:
            out.stream.close()
        if self._local:
            out.raw.flush()
            os.fsync(out.raw.fileno())
        out.raw.close()
        self._finished[out.temp] = out.final

    def _rename(self, files: dict[str, str]) -> None:
        """temp -> final for each pair; pairs already renamed are left alone."""
        fs = self._fs
        folders: set[str] = set()
        for temp, final in files.items():
            src, dst = self._path(temp), self._path(final)
            if fs.exists(src):
                if self._local:
                    os.makedirs(posixpath.dirname(dst), exist_ok=True)
                    os.replace(src, dst)
                    crash_point("file_sink.mid_rename")
                    folders.add(posixpath.dirname(dst))
                else:
                    # No atomic rename on object stores: copy then delete. A crash between the
                    # two leaves both, and the next open copies the same bytes again.
                    fs.mv(src, dst)
            elif not fs.exists(dst) and self._ctx is not None:
                self._ctx.log.warning(
                    "committed file %s is missing (deleted after its commit?)", dst
                )
        for folder in folders:
            _fsync_dir(folder)

    def _discard_staging(self) -> None:
        staging = self._path(self._staging)
        if self._local:
            shutil.rmtree(staging, ignore_errors=True)
        elif self._fs.exists(staging):
            self._fs.rm(staging, recursive=True)
        self._staging_ready = False
        self._fs.invalidate_cache()

    def _next_free_epoch(self) -> int:
        """With no token, start above every epoch already in the destination, so a fresh start
        (a reset state, a new preview) never overwrites files made visible before."""
        fs = self._fs
        if not fs.exists(self._root):
            return 1
        pattern = re.compile(re.escape(f"{self.config.prefix}{self._scope_part}-") + r"(\d+)-\d+\.")
        highest = 0
        for path in fs.find(self._root):
            match = pattern.match(posixpath.basename(path))
            if match:
                highest = max(highest, int(match.group(1)))
        return highest + 1


def _fsync_dir(path: str) -> None:
    """Make renames and new entries in a local folder durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync folders; the file data itself is synced
    finally:
        os.close(fd)
