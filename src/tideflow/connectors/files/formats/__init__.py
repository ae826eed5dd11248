"""Streaming readers, one module per file format, that resume after a given number of rows.

``READERS`` maps each format name to its reader class; :func:`open_reader` looks the file's
format up there. What the readers share is in ``base`` (the ``Reader`` protocol, chunks,
files and byte windows), ``convert`` (typing columns, dead-lettering what does not convert)
and ``lines`` (the numpy line scanner and JSON-lines parsing).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from tideflow.connectors.files.formats.base import FileRef, Reader, ReaderClass, Window
from tideflow.connectors.files.formats.csv import CsvReader
from tideflow.connectors.files.formats.json import JsonReader
from tideflow.connectors.files.formats.ndjson import NdjsonReader
from tideflow.connectors.files.formats.parquet import ParquetReader
from tideflow.connectors.files.settings import FileSourceConfig, ReadFormat

READERS: dict[ReadFormat, ReaderClass] = {
    "csv": CsvReader,
    "ndjson": NdjsonReader,
    "json": JsonReader,
    "parquet": ParquetReader,
}
"""The reader class of each format."""


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
    return READERS[ref.format].open(fs, ref, skip, config, targets, window)
