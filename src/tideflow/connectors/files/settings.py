"""Settings of the ``file`` source and sink, and the names and limits they share."""

from __future__ import annotations

import posixpath
import re
from typing import Any, Literal

import pyarrow as pa
from fsspec.utils import infer_compression
from pydantic import Field, field_validator, model_validator

from tideflow.core.contracts import MAX_RECORD_BYTES
from tideflow.core.settings import Settings
from tideflow.errors import ConfigError, suggest

ReadFormat = Literal["csv", "ndjson", "json", "parquet"]
WriteFormat = Literal["csv", "ndjson", "parquet"]

EXTENSIONS: dict[str, ReadFormat] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
"""File extensions the source recognises, and the format each one means."""

TYPE_NAMES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "str": pa.string(),
    "utf8": pa.string(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "int": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "float": pa.float64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us"),
    "datetime_utc": pa.timestamp("us", tz="UTC"),
}
"""Type names accepted by the source's ``schema_overrides``."""

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
"""The partition folder value that stands for null or empty, as in Hive and Spark."""

GLOB_MAGIC = re.compile(r"[*?\[]")
# Hive's FileUtils.escapePathName set; "%" must be escaped first so escapes are not re-escaped.
HIVE_ESCAPES = "%" + "".join(chr(c) for c in range(1, 32)) + "\"#'*/:=?\\\x7f{[]^"
HIVE_ESCAPE_RE = "[" + re.escape(HIVE_ESCAPES) + "]"
MAX_SEGMENT_BYTES = 255
NDJSON_BLOCK = 4 << 20
STAGING_PREFIX = ".tideflow-tmp"
PARQUET_CODECS = ("none", "snappy", "gzip", "brotli", "lz4", "zstd")


# -- settings ------------------------------------------------------------------------------


# One text for the source and the sink: where S3 credentials come from.
STORAGE_OPTIONS_DOC = (
    "fsspec options for the path's file system, e.g. `{key: ..., secret: ..., endpoint_url: "
    "...}` for S3. Without them S3 (`s3://`, the `s3` extra) reads the standard AWS settings, "
    "as the AWS CLI does: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, "
    "`AWS_DEFAULT_REGION`, `AWS_PROFILE` with `~/.aws/credentials`, an "
    "instance or pod role, and `AWS_ENDPOINT_URL` for an S3-compatible store (MinIO...). "
    "Prefer those (or `${VAR}`) to secrets written in the file."
)


class CsvReadOptions(Settings):
    """How the source parses CSV."""

    delimiter: str = Field(
        ",", description="Field separator, one character; `.tsv` files default to a tab."
    )
    has_header: bool = Field(
        True, description="The first row holds column names; if not, columns are `f0`, `f1`, ..."
    )
    quote_char: str = Field('"', description="Quote character, one character.")
    newlines_in_values: bool = Field(
        True,
        description="Quoted values may contain line breaks; set false for files with stray "
        "quotes, so that one unbalanced quote cannot swallow the rest of the file.",
    )
    block_size: int = Field(
        1 << 20,
        ge=4096,
        description="Bytes parsed at a time; column types are inferred from the first block of "
        "each file.",
    )

    @field_validator("delimiter", "quote_char")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError(f"must be exactly one character, got {value!r} (for a tab use '\\t')")
        return value


class FileSourceConfig(Settings):
    """Settings of the ``file`` source."""

    path: str = Field(
        description="A file, a folder (read recursively) or a glob such as `in/**/*.csv`; local "
        "or any fsspec URL (`s3://bucket/prefix/`). Relative paths start at the pipeline file."
    )
    format: ReadFormat | None = Field(
        None,
        description="`csv`, `ndjson`, `json` (an array of objects) or `parquet`; inferred from "
        "each file's extension when omitted (`.gz`, `.bz2`, `.zst`... are decompressed).",
    )
    batch_size: int = Field(
        100_000,
        ge=1,
        description="Records per batch (at most); a batch with dead-lettered input may hold fewer.",
    )
    watch: bool = Field(
        False,
        description="Keep polling the folder or glob for new files (an unbounded stream). "
        "Producers should create files atomically (write a hidden name, then rename).",
    )
    poll_interval: float = Field(
        1.0, gt=0, description="watch: seconds to wait between two looks for new files."
    )
    tail: bool = Field(
        False,
        description="Read lines appended to NDJSON and CSV files after an earlier run (or, "
        "with `watch`, while the stream runs): a file read to its end is remembered by its "
        "byte offset, and the next run reads what was appended after it, exactly once. A "
        "last line without a newline is left until it is complete. One record per line "
        "(CSV values may not hold line breaks); uncompressed files only (others, and "
        "Parquet/JSON, are read once). A file rewritten rather than appended to is reported, "
        "not read.",
    )
    max_record_bytes: int = Field(
        MAX_RECORD_BYTES,
        ge=1024,
        description="Longest record read, in bytes (an NDJSON line, a CSV row, a whole JSON "
        "document). A longer one is dead-lettered with its file, line or row and size, and "
        "skipped without ever being held whole in memory. CSV rows are also limited by "
        "`csv.block_size`, the longest row the CSV parser takes.",
    )
    csv: CsvReadOptions = Field(default_factory=CsvReadOptions, description="CSV parsing options.")
    schema_overrides: dict[str, str] = Field(
        default_factory=dict,
        description="Column types to use instead of the inferred ones, e.g. "
        "`{id: int64, amount: float64, day: date}`. Values that do not convert are "
        "dead-lettered with their row. Types: " + ", ".join(sorted(TYPE_NAMES)) + ".",
    )
    include_path_column: str | None = Field(
        None, description="Name of a column to add holding each record's file URL."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description=STORAGE_OPTIONS_DOC,
    )

    @field_validator("path")
    @classmethod
    def _path_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a file, folder or glob, e.g. `data/*.csv`")
        return value

    @model_validator(mode="after")
    def _tail_reads_lines(self) -> FileSourceConfig:
        if self.tail and self.format in ("parquet", "json"):
            raise ValueError(
                f"tail reads lines appended to NDJSON and CSV files; {self.format} files "
                "are not appended to line by line"
            )
        if (
            self.tail
            and self.csv.newlines_in_values
            and "newlines_in_values" in (self.csv.model_fields_set)
        ):
            raise ValueError(
                "tail reads CSV one line at a time: a value holding a line break would be "
                "cut at a file's end; set `csv.newlines_in_values: false` (or leave it out)"
            )
        return self

    @field_validator("schema_overrides")
    @classmethod
    def _known_types(cls, value: dict[str, str]) -> dict[str, str]:
        for column, name in value.items():
            if name.lower() not in TYPE_NAMES:
                raise ValueError(
                    f"column {column!r}: unknown type {name!r}; {suggest(name, TYPE_NAMES)}"
                )
        return value


class CsvWriteOptions(Settings):
    """How the sink writes CSV."""

    delimiter: str = Field(",", description="Field separator, one character.")
    include_header: bool = Field(True, description="Write the column names as the first row.")

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError(f"must be exactly one character, got {value!r}")
        return value


class FileSinkConfig(Settings):
    """Settings of the ``file`` sink."""

    path: str = Field(
        description="Destination folder, local or an fsspec URL (`s3://bucket/prefix/`); "
        "relative paths start at the pipeline file."
    )
    format: WriteFormat = Field("parquet", description="`parquet` (default), `csv` or `ndjson`.")
    partition_by: list[str] = Field(
        default_factory=list,
        description="Columns whose values name Hive-style folders (`day=2026-01-01/`); the "
        "columns are stored in the folder names, not in the files.",
    )
    roll_bytes: int = Field(
        128 << 20,
        ge=1,
        description="Start a new file after roughly this many bytes (for parquet: bytes of "
        "buffered rows in memory, before compression).",
    )
    buffer_bytes: int = Field(
        256 << 20,
        ge=1 << 20,
        description="parquet: memory the sink may hold in rows not yet encoded, across all "
        "partitions; past it the largest pending file is written out.",
    )
    roll_seconds: float | None = Field(
        None, gt=0, description="Also start a new file once a file has been open this long."
    )
    compression: str | None = Field(
        None,
        description="parquet: one of " + ", ".join(PARQUET_CODECS) + " (default `zstd`); "
        "csv and ndjson: `gzip` or none (default).",
    )
    prefix: str = Field(
        "part",
        description="Start of every file name. Sinks sharing a folder need different "
        "prefixes (also across processes).",
    )
    max_open_files: int = Field(
        64,
        ge=1,
        description="Partition files kept open at once; the least recently used is "
        "finished when more are needed.",
    )
    csv: CsvWriteOptions = Field(
        default_factory=CsvWriteOptions, description="CSV writing options."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description=STORAGE_OPTIONS_DOC,
    )

    @field_validator("path")
    @classmethod
    def _path_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a destination folder, e.g. `out/orders`")
        return value

    @field_validator("prefix")
    @classmethod
    def _safe_prefix(cls, value: str) -> str:
        # Readers skip names starting with "." or "_", so such a prefix would hide the output.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", value):
            raise ValueError(
                f"{value!r} is not a usable file name prefix: use letters, digits, `_`, `-` "
                "or `.`, starting with a letter or digit"
            )
        return value

    @field_validator("partition_by")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if any(not name for name in value):
            raise ValueError("column names must not be empty")
        if len(set(value)) != len(value):
            raise ValueError(f"lists a column twice: {value}")
        return value

    @model_validator(mode="after")
    def _codec_fits_format(self) -> FileSinkConfig:
        codec = (self.compression or "").lower()
        if self.format == "parquet" and codec and codec not in PARQUET_CODECS:
            raise ValueError(
                f"compression {self.compression!r} is not a parquet codec; use one of "
                + ", ".join(PARQUET_CODECS)
            )
        if self.format != "parquet" and codec not in ("", "none", "gzip"):
            raise ValueError(
                f"compression {self.compression!r} is not supported for {self.format}; "
                "use `gzip` or leave it out"
            )
        return self


# -- helpers shared by source and sink -----------------------------------------------------


def extension(path: str) -> str:
    """The extension that names the format, under any compression suffix (``x.csv.gz``)."""
    name = posixpath.basename(path.rstrip("/")).lower()
    if infer_compression(name) is not None:
        name = name.rsplit(".", 1)[0]
    return posixpath.splitext(name)[1]


def infer_format(path: str) -> ReadFormat:
    """The format a file's extension names, after any compression suffix (``x.csv.gz``)."""
    ext = extension(path)
    if ext not in EXTENSIONS:
        known = ", ".join(sorted(EXTENSIONS))
        raise ConfigError(
            f"file source: cannot tell the format of {path!r} from its extension "
            f"(known: {known}); set `format:` to csv, ndjson, json or parquet"
        )
    return EXTENSIONS[ext]
