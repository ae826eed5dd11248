"""The ``influxdb`` sink: line protocol over HTTP, to InfluxDB 1.x (``/write``) or 2.x
(``/api/v2/write``).

Lines are built by Polars string expressions, one column at a time: the measurement, the
tags (sorted by key, as InfluxDB prefers; null or empty values omitted, since line protocol
has no empty tag), the fields (integers ``i``-suffixed, floats, booleans, quoted strings;
nulls and non-finite floats omitted) and the timestamp at the configured precision.
Escaping follows the line-protocol rules: commas and spaces in measurements; commas, equals
signs and spaces in tag keys, tag values and field keys; double quotes and backslashes in
string field values. A record line protocol cannot express (no field left, a newline in a
name or tag) is dead-lettered before anything is sent.

Each batch goes out in requests of ``batch_size`` lines. A 5xx, 429 or lost connection is
retried with backoff; a 400 (a line the server rejects) is bisected down to the single
lines, which are dead-lettered with the server's message, while their neighbours are
written. Writing a point again overwrites it (same series and timestamp), so the bisection
and replays after a crash change nothing when records carry their time; without a
``time_column`` the server stamps each write and a replay adds points (at-least-once).
"""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import polars as pl
from pydantic import Field, model_validator

from tideflow.core.contracts import Context, Sink, dead_letters
from tideflow.core.retry import RetryPolicy, with_retries
from tideflow.core.settings import Settings
from tideflow.errors import ConfigError, PipelineError
from tideflow.registry import component
from tideflow.secrets import redact, register_secret

Precision = Literal["ns", "us", "ms", "s"]
_V1_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
_INTEGERS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
_FLOATS = (pl.Float32, pl.Float64)


class InfluxSinkConfig(Settings):
    """Settings of the ``influxdb`` sink."""

    url: str = Field("http://127.0.0.1:8086", description="Server URL (http:// or https://).")
    database: str | None = Field(None, description="InfluxDB 1.x: database (`/write?db=`).")
    retention_policy: str | None = Field(None, description="InfluxDB 1.x: retention policy.")
    username: str | None = Field(None, description="InfluxDB 1.x: user name.")
    password: str | None = Field(None, description="InfluxDB 1.x: password (redacted).")
    bucket: str | None = Field(None, description="InfluxDB 2.x: bucket (`/api/v2/write`).")
    org: str | None = Field(None, description="InfluxDB 2.x: organisation name or id.")
    token: str | None = Field(None, description="InfluxDB 2.x: API token (redacted).")
    measurement: str | None = Field(None, description="Measurement of every point.")
    measurement_column: str | None = Field(
        None, description="Column holding each point's measurement (instead of `measurement`)."
    )
    tags: list[str] = Field(
        default_factory=list, description="Columns written as tags (indexed, text)."
    )
    fields: list[str] | None = Field(
        None,
        description="Columns written as fields; all columns that are not tags, time or "
        "measurement if unset.",
    )
    time_column: str | None = Field(
        None,
        description="Timestamp column: a datetime, or an integer already in `precision` "
        "units. Unset: the server stamps each write (and a replay duplicates points).",
    )
    precision: Precision = Field("ns", description="Timestamp precision sent to the server.")
    batch_size: int = Field(5000, ge=1, description="Lines per HTTP request.")
    timeout: float = Field(30.0, gt=0, description="Seconds to wait for each request.")
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy,
        description="Retries of 5xx, 429 and lost connections (backoff with jitter).",
    )

    @model_validator(mode="after")
    def _target(self) -> InfluxSinkConfig:
        if (self.database is None) == (self.bucket is None):
            raise ValueError("give `database` (InfluxDB 1.x) or `bucket` (2.x), not both")
        if self.bucket is not None and self.org is None:
            raise ValueError("InfluxDB 2.x writes need `org` with `bucket`")
        if (self.measurement is None) == (self.measurement_column is None):
            raise ValueError("give exactly one of `measurement` or `measurement_column`")
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"`url` must start with http:// or https://, not {self.url!r}")
        return self


def escape(expr: pl.Expr, chars: str) -> pl.Expr:
    """Backslash-escape each of ``chars`` in a string expression (line-protocol rules)."""
    for char in chars:
        expr = expr.str.replace_all(char, "\\" + char, literal=True)
    return expr


def _key(name: str, chars: str = ", =") -> str:
    """A tag or field key escaped for line protocol."""
    for char in chars:
        name = name.replace(char, "\\" + char)
    return name


def _field(name: str, dtype: pl.DataType) -> pl.Expr:
    """``key=value`` for one field column, null where the value is null (omitted)."""
    col = pl.col(name)
    key = pl.lit(_key(name) + "=")
    if dtype in _INTEGERS:
        value = col.cast(pl.String) + pl.lit("i")
    elif dtype in _FLOATS:
        # NaN and infinity have no line-protocol spelling: such a field is left out.
        finite = col.cast(pl.Float64)
        value = pl.when(finite.is_finite()).then(finite.cast(pl.String))
    elif dtype == pl.Boolean:
        value = pl.when(col).then(pl.lit("true")).otherwise(pl.lit("false"))
    elif isinstance(dtype, (pl.Struct, pl.List, pl.Array)):
        text = pl.struct(col.alias("v")).struct.json_encode().str.slice(5).str.head(-1)
        value = pl.lit('"') + escape(text, '\\"') + pl.lit('"')
    else:
        value = pl.lit('"') + escape(col.cast(pl.String), '\\"') + pl.lit('"')
    return pl.when(col.is_not_null()).then(key + value)


def build_lines(frame: pl.DataFrame, config: InfluxSinkConfig) -> tuple[pl.Series, pl.Series]:
    """The line of every record (null where it cannot be written) and the reason."""
    schema = frame.schema
    for name in [*config.tags, *(config.fields or [])]:
        if name not in schema:
            raise ConfigError(
                f"influxdb sink: column {name!r} does not exist (columns: {', '.join(schema)})"
            )
    special = {config.time_column, config.measurement_column, *config.tags}
    fields = config.fields or [c for c in frame.columns if c not in special]
    if config.measurement_column is not None:
        measurement = escape(pl.col(config.measurement_column).cast(pl.String), ", ")
    else:
        measurement = pl.lit(_key(config.measurement or "", ", "))
    tag_parts = []
    newline_in_tag = pl.lit(False)
    for tag in sorted(config.tags):
        value = pl.col(tag).cast(pl.String)
        newline_in_tag = newline_in_tag | value.str.contains("\n", literal=True).fill_null(False)
        tag_parts.append(
            pl.when(value.is_not_null() & (value != ""))
            .then(pl.lit("," + _key(tag) + "=") + escape(value, ", ="))
            .otherwise(pl.lit(""))
        )
    tag_text = pl.concat_str(tag_parts) if tag_parts else pl.lit("")
    field_text = pl.concat_str(
        [_field(f, schema[f]) for f in fields], separator=",", ignore_nulls=True
    )
    if config.time_column is None:
        stamp = pl.lit("")
    else:
        col = pl.col(config.time_column)
        dtype = schema[config.time_column]
        if isinstance(dtype, pl.Datetime) or dtype == pl.Date:
            epoch = col.dt.epoch(config.precision)
        elif dtype in _INTEGERS:
            epoch = col
        else:
            raise ConfigError(
                f"influxdb sink: `time_column` {config.time_column!r} is {dtype}; it must "
                "be a datetime or an integer in `precision` units (cast it in a step)"
            )
        stamp = (
            pl.when(col.is_not_null())
            .then(pl.lit(" ") + epoch.cast(pl.String))
            .otherwise(pl.lit(""))
        )
    measurement_ok = measurement.is_not_null() & (measurement != "")
    reason = (
        pl.when(~measurement_ok)
        .then(pl.lit("influxdb sink: the measurement is empty"))
        .when(field_text.is_null() | (field_text == ""))
        .then(pl.lit("influxdb sink: no field has a value (a point needs at least one)"))
        .when(newline_in_tag | measurement.str.contains("\n", literal=True))
        .then(pl.lit("influxdb sink: a tag or the measurement contains a newline"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    out = frame.select(
        reason.alias("reason"),
        (measurement + tag_text + pl.lit(" ") + field_text + stamp).alias("line"),
    )
    line = pl.when(out["reason"].is_null()).then(out["line"])
    return out.select(line.alias("line"))["line"], out["reason"]


class _Rejected(Exception):
    """The server refused lines (HTTP 400/413): bisect to find them."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Transient(Exception):
    """Worth retrying: 5xx, 429, a lost connection."""


@component("sink", "influxdb")
class InfluxSink(Sink[InfluxSinkConfig]):
    """Write points to InfluxDB 1.x or 2.x as line protocol over HTTP."""

    config_model = InfluxSinkConfig

    def __init__(self, config: InfluxSinkConfig) -> None:
        super().__init__(config)
        self.ctx: Context | None = None
        self._conn: http.client.HTTPConnection | None = None
        for secret in (config.password, config.token):
            if secret:
                register_secret(secret)
        parts = urlsplit(config.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        base = parts.path.rstrip("/")
        cfg = config
        if cfg.bucket is not None:
            query = {"bucket": cfg.bucket, "org": cfg.org, "precision": cfg.precision}
            self._path = f"{base}/api/v2/write?{urlencode(query)}"
            self._headers = {"Authorization": f"Token {cfg.token}"} if cfg.token else {}
        else:
            query = {"db": cfg.database, "precision": _V1_PRECISION[cfg.precision]}
            if cfg.retention_policy:
                query["rp"] = cfg.retention_policy
            self._path = f"{base}/write?{urlencode(query)}"
            self._headers = {}
            if cfg.username is not None:
                basic = f"{cfg.username}:{cfg.password or ''}".encode()
                self._headers["Authorization"] = "Basic " + base64.b64encode(basic).decode()
        self._headers["Content-Type"] = "text/plain; charset=utf-8"

    def open(self, ctx: Context, pending: Any) -> None:
        """Nothing to recover: points are written as batches arrive."""
        self.ctx = ctx

    def write_batch(self, batch: pl.DataFrame) -> pl.DataFrame | None:
        """Write the batch's points; return the records the server (or line protocol)
        rejected as dead letters."""
        assert self.ctx is not None
        if batch.height == 0:
            return None
        lines, reasons = build_lines(batch, self.config)
        dead_rows: list[int] = []
        dead_reasons: list[str] = []
        invalid = reasons.is_not_null()
        if invalid.any():
            idx = invalid.arg_true().to_list()
            dead_rows += idx
            dead_reasons += reasons.gather(idx).to_list()
        good_idx = (~invalid).arg_true().to_list()
        text = lines.gather(good_idx).to_list()
        for start in range(0, len(text), self.config.batch_size):
            chunk = list(range(start, min(start + self.config.batch_size, len(text))))
            for pos, reason in self._write_range(text, chunk):
                dead_rows.append(good_idx[pos])
                dead_reasons.append(reason)
        if not dead_rows:
            return None
        letters = dead_letters(batch[dead_rows], "")
        return letters.with_columns(pl.Series("reason", dead_reasons, dtype=pl.String))

    def _write_range(self, text: list[str], idx: list[int]) -> list[tuple[int, str]]:
        """POST the lines ``idx``; bisect on a rejection. Returns (line index, reason)."""
        assert self.ctx is not None
        body = "\n".join(text[i] for i in idx).encode()
        try:
            with_retries(
                lambda: self._post(body),
                lambda exc: isinstance(exc, _Transient | OSError | http.client.HTTPException),
                self.ctx,
                self.config.retry,
                f"write {len(idx)} points to InfluxDB at {self._host}:{self._port}",
                self._reset,
            )
        except _Rejected as exc:
            if len(idx) == 1:
                return [(idx[0], f"influxdb rejected the point: {exc}")]
            # A partial write stored the good points already; writing them again overwrites
            # them with the same values, so bisecting is safe.
            half = len(idx) // 2
            return self._write_range(text, idx[:half]) + self._write_range(text, idx[half:])
        return []

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.config.timeout)
        return self._conn

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _post(self, body: bytes) -> None:
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self._reset()
            raise
        status = response.status
        if status in (200, 204):
            return
        message = _error_message(payload)
        if status in (400, 413, 422):
            raise _Rejected(status, message)
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}: {message}")
        hint = ""
        if status in (401, 403):
            hint = "; check `token` (2.x) or `username`/`password` (1.x)"
        elif status == 404:
            hint = "; does the database/bucket exist (1.x: CREATE DATABASE) and is `url` right?"
        raise PipelineError(
            redact(f"influxdb sink: HTTP {status} from {self._host}:{self._port}: {message}{hint}")
        )

    def close(self) -> None:
        """Close the HTTP connection."""
        self._reset()


def _error_message(payload: bytes) -> str:
    text = payload.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(parsed, dict):
        return str(parsed.get("error") or parsed.get("message") or parsed)[:500]
    return text[:500]
