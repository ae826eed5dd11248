"""What every format's reader shares: the ``Reader`` protocol, the chunks it returns, the
file and byte window it reads."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl
import pyarrow as pa

from tideflow.connectors.files.settings import FileSourceConfig, ReadFormat


def to_frame(data: Any) -> pl.DataFrame:
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


class ReaderClass(Protocol):
    """A format's reader class: ``open`` makes its reader for one file (the lookup table in
    ``formats`` maps each format name to one)."""

    def open(
        self,
        fs: Any,
        ref: FileRef,
        skip: int,
        config: FileSourceConfig,
        targets: dict[str, pa.DataType],
        window: Window | None,
    ) -> Reader:
        """A reader of ``ref`` positioned after its first ``skip`` rows (of ``window``, a
        byte range of complete lines, when tailing)."""
        ...


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


def open_window(fs: Any, path: str, window: Window) -> Any:
    """``window`` of the file at ``path``, opened for reading."""
    return io.BufferedReader(_WindowFile(fs.open(path, "rb"), window.start, window.end))
