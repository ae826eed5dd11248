"""The typed Python API: a constructor for every built-in source and sink, a method
for every built-in step (on :class:`tideflow.Pipeline`), and TypedDicts for nested settings.

Generated from the config models by ``python -m tideflow.codegen`` (``make docs``): do not
edit by hand. A test regenerates it and fails when it is stale.

Each function takes exactly the keys its model accepts, with their types, defaults and
descriptions, and returns the plain settings dict that ``Pipeline.source()`` /
``Pipeline.sink()`` take; only the arguments given are set (a key left out keeps the
model's default). A type that is both a source and a sink (``file``, ``sql``, ``kafka``...)
has one constructor taking the keys of both; a key only one of them has says so, and
validation rejects it on the other.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import Enum
from typing import Any, Literal, NotRequired, Self, TypedDict


class NotGiven(Enum):
    """The default of an argument whose default depends on where the component is used (a
    source or a sink), or is not a plain value: leaving it out keeps the model's default."""

    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven.NOT_GIVEN
_STEP_ENVELOPE = ("self", "name", "input")


def _given(
    function: Callable[..., Any] | str,
    values: dict[str, Any],
    keys: dict[str, str] | None = None,
    skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The arguments the caller gave: those that are not the parameter's own default
    object (so a left-out key keeps the model's default, whatever the component's kind).
    ``function`` is the function or the name of one in this module."""
    target = globals()[function] if isinstance(function, str) else function
    defaults = {name: p.default for name, p in inspect.signature(target).parameters.items()}
    return {
        (keys or {}).get(name, name): value
        for name, value in values.items()
        if name not in skip and value is not NOT_GIVEN and value is not defaults.get(name)
    }


class CheckpointSettings(TypedDict):
    """When to checkpoint: whichever interval is reached first.

    Keys:
        every_records: Checkpoint after this many source records.
        every_seconds: Checkpoint after this many seconds.
        compact_every: Incremental checkpoints: a step that can store only what changed since the
            last checkpoint (`aggregate`: the keys that changed) stores its whole state again at
            least every this many checkpoints, and sooner once the changes stored since outweigh
            it, so that a restore applies few deltas. 1: whole state every time.
        min_interval: Group commit: while a source's senders wait for an acknowledgement (webhook
            posts, unacknowledged MQTT/AMQP/Redis Streams messages), checkpoint as soon as the
            previous checkpoint is done and at least this many seconds after it began, instead of
            at `every_records`/`every_seconds`; everything that arrived meanwhile shares that
            checkpoint. Null: only the two thresholds.
    """

    every_records: NotRequired[int | None]
    every_seconds: NotRequired[float | None]
    compact_every: NotRequired[int]
    min_interval: NotRequired[float | None]


class OnErrorSettings(TypedDict):
    """What happens to a record that cannot be parsed, cast or processed.

    Keys:
        action: `fail` stops the run; `skip` drops and counts the record; `dead_letter` stores it
            with its reason (the default).
        sink: Where dead letters go; default is the ledger in the state store, read with `tideflow
            deadletters`.
    """

    action: NotRequired[Literal["fail", "skip", "dead_letter"]]
    sink: NotRequired[Mapping[str, Any] | None]


class NotifySettings(TypedDict):
    """Where an alert goes: a webhook (JSON, or Slack's `{"text": ...}` shape) or the log.

    Keys:
        type: `webhook` or `log`.
        url: The webhook's URL (for `webhook`).
        format: `json`: the full alert event; `slack`: `{"text": ...}`.
    """

    type: Literal["webhook", "log"]
    url: NotRequired[str | None]
    format: NotRequired[Literal["json", "slack"]]


# A rule checked by `tideflow serve` while the pipeline runs.
#
# Keys:
#     name: The alert's name, shown in messages.
#     metric: `dead_letter_rate`: dead-lettered / records read over the window; `no_records`: no
#         record read for the whole window; `source_lag`: seconds a source reports it is behind
#         (topic and kafka sources: the age of the newest record read while a backlog remains);
#         `source_lag_records`: records a source reports it is behind (topic and kafka: high
#         watermark minus position over its partitions); `matching_records`: records at `step`'s
#         output matching `where` over the window (a rule on the data itself).
#     above: Threshold: a rate for `dead_letter_rate` (0.01 = 1%), seconds for `source_lag`,
#         records for `source_lag_records` and `matching_records`.
#     step: For `matching_records`: the step (or `step.port`) whose output is checked.
#     where: For `matching_records`: SQL condition a record must match to count.
#     for: Seconds the condition must hold before firing.
#     repeat: Send again this often while the alert holds; once if omitted.
#     notify: Notifications; the log by default.
AlertSettings = TypedDict(
    "AlertSettings",
    {
        "name": str,
        "metric": Literal[
            "dead_letter_rate", "no_records", "source_lag", "source_lag_records", "matching_records"
        ],
        "above": NotRequired[float | None],
        "step": NotRequired[str | None],
        "where": NotRequired[str | None],
        "for": NotRequired[float],
        "repeat": NotRequired[float | None],
        "notify": NotRequired[list[NotifySettings]],
    },
)


class ScheduleSettings(TypedDict):
    """When `tideflow serve` starts a bounded pipeline on its own: a cron expression or an
    interval. A run that falls due while the previous one is still going is recorded as missed,
    never started beside it.

    Keys:
        cron: Five-field cron expression in UTC, e.g. `*/5 * * * *`.
        every: Seconds between run starts.
    """

    cron: NotRequired[str | None]
    every: NotRequired[float | None]


class RetryPolicy(TypedDict):
    """How long and how often to retry through an outage.

    Keys:
        first: Longest wait before the first retry (s).
        cap: Longest wait between two retries (s).
        give_up_after: Fail the run when an outage lasts longer than this (s).
        probe_every: While waiting, check this often whether the service is back (s), so that the
            run resumes soon after it returns, not at the end of a long backoff (connectors that
            can check cheaply: sql).
    """

    first: NotRequired[float]
    cap: NotRequired[float]
    give_up_after: NotRequired[float]
    probe_every: NotRequired[float]


class CsvReadOptions(TypedDict):
    """How the source parses CSV.

    Keys:
        delimiter: Field separator, one character; `.tsv` files default to a tab.
        has_header: The first row holds column names; if not, columns are `f0`, `f1`, ...
        quote_char: Quote character, one character.
        newlines_in_values: Quoted values may contain line breaks; set false for files with stray
            quotes, so that one unbalanced quote cannot swallow the rest of the file.
        block_size: Bytes parsed at a time; column types are inferred from the first block of each
            file.
    """

    delimiter: NotRequired[str]
    has_header: NotRequired[bool]
    quote_char: NotRequired[str]
    newlines_in_values: NotRequired[bool]
    block_size: NotRequired[int]


class CsvWriteOptions(TypedDict):
    """How the sink writes CSV.

    Keys:
        delimiter: Field separator, one character.
        include_header: Write the column names as the first row.
    """

    delimiter: NotRequired[str]
    include_header: NotRequired[bool]


class AuthConfig(TypedDict):
    """How requests authenticate. Secret values should come from `${ENV}` variables; they are never
    printed.

    Keys:
        type: `bearer` (token), `basic` (username/password), `api_key` (header or query parameter)
            or `oauth2` (client credentials, refreshed before it expires).
        token: Bearer token (`type: bearer`).
        username: User name (`type: basic`).
        password: Password (`type: basic`).
        api_key: The key (`type: api_key`).
        key_name: Header or query parameter that carries the API key.
        key_in: Send the API key as a `header` or a `query` parameter.
        token_url: OAuth2 token endpoint (`type: oauth2`).
        client_id: OAuth2 client id.
        client_secret: OAuth2 client secret.
        scope: OAuth2 scope, if the server wants one.
    """

    type: NotRequired[Literal["none", "bearer", "basic", "api_key", "oauth2"]]
    token: NotRequired[str | None]
    username: NotRequired[str | None]
    password: NotRequired[str | None]
    api_key: NotRequired[str | None]
    key_name: NotRequired[str]
    key_in: NotRequired[Literal["header", "query"]]
    token_url: NotRequired[str | None]
    client_id: NotRequired[str | None]
    client_secret: NotRequired[str | None]
    scope: NotRequired[str | None]


class PaginationConfig(TypedDict):
    """How the source walks pages, and when it stops.

    Keys:
        style: `page` (page number), `offset` (offset/limit), `cursor` (a cursor in the body sent
            back as a parameter), `next_url` (a URL in the body) or `link_header` (`Link: <...>;
            rel="next"`).
        page_param: Parameter carrying the page number.
        start_page: Number of the first page.
        offset_param: Parameter carrying the offset.
        size_param: Parameter carrying the page size (`limit`, `per_page`, ...); defaults to
            `limit` for offset paging.
        page_size: Records asked for per page; sent as `size_param`.
        cursor_param: Parameter carrying the cursor.
        cursor_path: Dotted path of the next cursor in the response body.
        next_url_path: Dotted path of the next page's URL in the response body.
        total_path: Dotted path of the total record count; paging stops once reached.
        stop_on_short_page: With `page_size`, a page with fewer records is the last one (saves a
            request for an empty page).
        max_pages: Stop a sweep after this many pages (a safety net).
    """

    style: NotRequired[Literal["none", "page", "offset", "cursor", "next_url", "link_header"]]
    page_param: NotRequired[str]
    start_page: NotRequired[int]
    offset_param: NotRequired[str]
    size_param: NotRequired[str | None]
    page_size: NotRequired[int | None]
    cursor_param: NotRequired[str]
    cursor_path: NotRequired[str]
    next_url_path: NotRequired[str]
    total_path: NotRequired[str | None]
    stop_on_short_page: NotRequired[bool]
    max_pages: NotRequired[int | None]


class RateLimitConfig(TypedDict):
    """Client-side request budget, shared by every request the component makes.

    Keys:
        requests_per_second: At most this many requests per second.
        requests_per_minute: At most this many requests per minute.
        concurrency: Requests in flight at once (sink and enrich; a source pages one request at a
            time because each page names the next).
    """

    requests_per_second: NotRequired[float | None]
    requests_per_minute: NotRequired[float | None]
    concurrency: NotRequired[int]


class RetryConfig(TypedDict):
    """Retries with exponential backoff and jitter; `Retry-After` is honoured.

    Keys:
        max_attempts: Attempts per request, the first included.
        backoff: First backoff in seconds; doubles each time.
        max_backoff: Longest single wait in seconds.
        jitter: Random share of each wait (0.5: between 50% and 100%).
        statuses: HTTP statuses retried; timeouts always are.
        timeout: Seconds before one request times out.
    """

    max_attempts: NotRequired[int]
    backoff: NotRequired[float]
    max_backoff: NotRequired[float]
    jitter: NotRequired[float]
    statuses: NotRequired[list[int]]
    timeout: NotRequired[float]


class IncrementalConfig(TypedDict):
    """Read only what is new: the largest value of `field` seen is kept with the source's position
    and sent as `param` on the next sweep.

    Keys:
        field: Record field that grows (an updated-at time, an id).
        param: Request parameter that carries the last value seen.
        initial: Value sent on the very first sweep (omit: none).
        send_in: Send the value as a `query` parameter or a top-level body key.
    """

    field: str
    param: str
    initial: NotRequired[Any]
    send_in: NotRequired[Literal["query", "body"]]


class PartitionedBy(TypedDict):
    """How a topic's records were put in partitions: by the text of one column as the message key,
    hashed by a named partitioner.

    Keys:
        column: The column whose value (as text) is each message's key.
        partitioner: `murmur2`: Kafka's Java clients and tideflow's `topic` sink; `crc32`:
            librdkafka's default (`consistent_random`) and clients built on it, for keyed messages.
    """

    column: str
    partitioner: NotRequired[Literal["murmur2", "crc32"]]


class TlsSettings(TypedDict):
    """TLS for a broker connection.

    Keys:
        ca_file: CA bundle that signed the server's certificate (system CAs if unset).
        cert_file: Client certificate (mutual TLS).
        key_file: Client certificate's private key.
        insecure: Skip the server certificate and host name checks (tests only; never in
            production).
    """

    ca_file: NotRequired[str | None]
    cert_file: NotRequired[str | None]
    key_file: NotRequired[str | None]
    insecure: NotRequired[bool]


class ColumnModel(TypedDict):
    """A declared target column; it overrides the type inferred from the data.

    Keys:
        type: A kind (boolean, smallint, integer, bigint, real, double, decimal, text, date, time,
            timestamp, timestamptz, binary, json), decimal(p,s) or varchar(n).
        nullable: False adds NOT NULL.
    """

    type: str
    nullable: NotRequired[bool]


class IndexModel(TypedDict):
    """A declared index, created with the table.

    Keys:
        columns: Indexed columns, in order.
        unique: A unique index.
    """

    columns: list[str]
    unique: NotRequired[bool]


class EmitEvery(TypedDict):
    """Periodic emission: ``emit: {every: 1m}``.

    Keys:
        every: Emit the keys changed since the last emission at most once per this period (wall
            clock, checked about twice a second), e.g. `30s`.
    """

    every: str


class PipelineSettings(TypedDict):
    """The top-level keys of a pipeline besides its name, as ``tf.Pipeline(name,
    **settings)`` takes them.

    Keys:
        description: (see the pipeline file reference)
        vars: Values for `${NAME}` interpolation.
        source: The source (or use `sources`).
        sources: Several sources, merged.
        steps: Steps, in order.
        sink: The sink (or use `sinks`).
        sinks: Several sinks; each gets the data.
        checkpoint: When to checkpoint: whichever interval is reached first.
        on_error: What happens to a record that cannot be parsed, cast or processed.
        state: State store: a SQLite file path (default `.tideflow/state.db` beside the pipeline
            file), or a `postgresql://` URL to share state between workers; unset: the
            `TIDEFLOW_STATE` environment variable, if set.
        queue_size: Batches buffered per source (back-pressure).
        schedule: Runs started by `tideflow serve` (bounded pipelines only).
        alerts: Alert rules checked by `tideflow serve`.
    """

    description: NotRequired[str | None]
    vars: NotRequired[Mapping[str, Any]]
    source: NotRequired[Mapping[str, Any]]
    sources: NotRequired[list[Mapping[str, Any]]]
    steps: NotRequired[list[Mapping[str, Any]]]
    sink: NotRequired[Mapping[str, Any]]
    sinks: NotRequired[list[Mapping[str, Any]]]
    checkpoint: NotRequired[CheckpointSettings]
    on_error: NotRequired[OnErrorSettings | Literal["fail", "skip", "dead_letter"]]
    state: NotRequired[str | None]
    queue_size: NotRequired[int]
    schedule: NotRequired[ScheduleSettings | None]
    alerts: NotRequired[list[AlertSettings]]


def amqp(
    *,
    max_wait: float = 0.5,
    stop_after_idle: float | None = None,
    max_record_bytes: int = 67108864,
    url: str = "amqp://guest:guest@127.0.0.1:5672/%2F",
    exchange: str = "",
    exchange_type: Literal["direct", "topic", "fanout", "headers"] = "direct",
    declare: bool = True,
    retry: RetryPolicy | NotGiven = NOT_GIVEN,
    queue: str | NotGiven | None = NOT_GIVEN,
    routing_keys: list[str] | NotGiven = NOT_GIVEN,
    prefetch: int = 10000,
    format: Literal["json", "text", "bytes"] = "json",
    payload_column: str = "payload",
    routing_key_column: str | NotGiven | None = NOT_GIVEN,
    batch_size: int = 1000,
    routing_key: str | None = None,
    persistent: bool = True,
    mandatory: bool = True,
    content_type: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``amqp`` source and sink.

    As a source: Consume a RabbitMQ queue; messages are acknowledged after the checkpoint.

    As a sink: Publish records to RabbitMQ with publisher confirms (at-least-once).

    Args:
        max_wait: Source only. Longest wait (s) for a message before handing on an empty batch; a
            batch is handed on as soon as no more messages are waiting on the connection.
        stop_after_idle: Source only. End the source after this many seconds without a message
            (drain what is waiting as a batch job). Unset: run until stopped.
        max_record_bytes: Source only. Longest message payload decoded; a longer one is
            dead-lettered with its origin and size (and acknowledged with its batch) instead of
            being parsed.
        url: AMQP URL: amqp://user:password@host:port/vhost (`%2F` is the default vhost `/`),
            amqps:// for TLS; the password is redacted in every message.
        exchange: Exchange; empty is the default exchange.
        exchange_type: Type used when declaring `exchange`.
        declare: Declare the exchange and queue (durable) if they do not exist; false when they are
            managed elsewhere.
        retry: Reconnecting through a broker outage (backoff with jitter). Default: the defaults of
            its keys.
        queue: As a source: Queue to consume. As a sink: Declare this durable queue (and bind it to
            `exchange` with `routing_key`) before publishing, so messages have somewhere to go. As
            a source: required. As a sink: ``None``.
        routing_keys: Source only. Bind `queue` to `exchange` with these routing keys (topic
            exchanges accept `*` and `#` patterns); needs a named `exchange`. Default: ``[]``.
        prefetch: Source only. Most unacknowledged messages the broker sends (basic.qos). Messages
            are acknowledged at checkpoints, so at most this many pass per checkpoint (a group
            commit follows each within `checkpoint.min_interval`; without group commit keep it
            above `checkpoint.every_records`).
        format: As a source: Payload format: `json` (one object per message), `text` or `bytes` (in
            `payload_column`). Messages that do not decode are dead-lettered. As a sink: `json`:
            each record as a JSON object (without `routing_key_column`); `text`/`bytes`: the value
            of `payload_column`.
        payload_column: As a source: Column of `text`/`bytes` payloads. As a sink: Column sent by
            `text`/`bytes`.
        routing_key_column: As a source: Column with each message's routing key; null to omit. As a
            sink: Column holding each record's routing key (instead of `routing_key`). As a source:
            ``'routing_key'``. As a sink: ``None``.
        batch_size: Source only. Most messages per batch.
        routing_key: Sink only. Routing key of every message (with the default exchange: the
            queue).
        persistent: Sink only. Persistent messages (delivery mode 2).
        mandatory: Sink only. Fail the run when a message matches no queue, instead of the broker
            dropping it silently.
        content_type: Sink only. Content type property; `application/json` for json by default.
        name: Unique name; defaults to the type.
    """
    return {"type": "amqp", **_given("amqp", locals())}


def file(
    path: str,
    *,
    format: Literal["csv", "ndjson", "json", "parquet"] | NotGiven | None = NOT_GIVEN,
    batch_size: int = 100000,
    watch: bool = False,
    poll_interval: float = 1.0,
    tail: bool = False,
    max_record_bytes: int = 67108864,
    csv: CsvReadOptions | CsvWriteOptions | NotGiven = NOT_GIVEN,
    schema_overrides: Mapping[str, str] | NotGiven = NOT_GIVEN,
    include_path_column: str | None = None,
    storage_options: Mapping[str, Any] | NotGiven = NOT_GIVEN,
    partition_by: list[str] | NotGiven = NOT_GIVEN,
    roll_bytes: int = 134217728,
    buffer_bytes: int = 268435456,
    roll_seconds: float | None = None,
    compression: str | None = None,
    prefix: str = "part",
    max_open_files: int = 64,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``file`` source and sink.

    As a source: Read CSV, NDJSON, JSON or Parquet files from a path, folder or glob (local or
    fsspec).

    As a sink: Write Parquet, CSV or NDJSON files into a folder (local or fsspec), optionally
    Hive-partitioned; files appear atomically at each checkpoint.

    Args:
        path: As a source: A file, a folder (read recursively) or a glob such as `in/**/*.csv`;
            local or any fsspec URL (`s3://bucket/prefix/`). Relative paths start at the pipeline
            file. As a sink: Destination folder, local or an fsspec URL (`s3://bucket/prefix/`);
            relative paths start at the pipeline file. Required.
        format: As a source: `csv`, `ndjson`, `json` (an array of objects) or `parquet`; inferred
            from each file's extension when omitted (`.gz`, `.bz2`, `.zst`... are decompressed). As
            a sink: `parquet` (default), `csv` or `ndjson`. As a source: ``None``. As a sink:
            ``'parquet'``.
        batch_size: Source only. Records per batch (at most); a batch with dead-lettered input may
            hold fewer.
        watch: Source only. Keep polling the folder or glob for new files (an unbounded stream).
            Producers should create files atomically (write a hidden name, then rename).
        poll_interval: Source only. watch: seconds to wait between two looks for new files.
        tail: Source only. Read lines appended to NDJSON and CSV files after an earlier run (or,
            with `watch`, while the stream runs): a file read to its end is remembered by its byte
            offset, and the next run reads what was appended after it, exactly once. A last line
            without a newline is left until it is complete. One record per line (CSV values may not
            hold line breaks); uncompressed files only (others, and Parquet/JSON, are read once). A
            file rewritten rather than appended to is reported, not read.
        max_record_bytes: Source only. Longest record read, in bytes (an NDJSON line, a CSV row, a
            whole JSON document). A longer one is dead-lettered with its file, line or row and
            size, and skipped without ever being held whole in memory. CSV rows are also limited by
            `csv.block_size`, the longest row the CSV parser takes.
        csv: As a source: CSV parsing options. As a sink: CSV writing options. Default: the
            defaults of its keys.
        schema_overrides: Source only. Column types to use instead of the inferred ones, e.g. `{id:
            int64, amount: float64, day: date}`. Values that do not convert are dead-lettered with
            their row. Types: bool, boolean, date, datetime, datetime_utc, double, float, float32,
            float64, int, int16, int32, int64, int8, str, string, uint16, uint32, uint64, uint8,
            utf8. Default: ``{}``.
        include_path_column: Source only. Name of a column to add holding each record's file URL.
        storage_options: fsspec options for the path's file system, e.g. `{key: ..., secret: ...,
            endpoint_url: ...}` for S3. Without them S3 (`s3://`, the `s3` extra) reads the
            standard AWS settings, as the AWS CLI does: `AWS_ACCESS_KEY_ID`,
            `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`, `AWS_PROFILE` with
            `~/.aws/credentials`, an instance or pod role, and `AWS_ENDPOINT_URL` for an
            S3-compatible store (MinIO...). Prefer those (or `${VAR}`) to secrets written in the
            file. Default: ``{}``.
        partition_by: Sink only. Columns whose values name Hive-style folders (`day=2026-01-01/`);
            the columns are stored in the folder names, not in the files. Default: ``[]``.
        roll_bytes: Sink only. Start a new file after roughly this many bytes (for parquet: bytes
            of buffered rows in memory, before compression).
        buffer_bytes: Sink only. parquet: memory the sink may hold in rows not yet encoded, across
            all partitions; past it the largest pending file is written out.
        roll_seconds: Sink only. Also start a new file once a file has been open this long.
        compression: Sink only. parquet: one of none, snappy, gzip, brotli, lz4, zstd (default
            `zstd`); csv and ndjson: `gzip` or none (default).
        prefix: Sink only. Start of every file name. Sinks sharing a folder need different prefixes
            (also across processes).
        max_open_files: Sink only. Partition files kept open at once; the least recently used is
            finished when more are needed.
        name: Unique name; defaults to the type.
    """
    return {"type": "file", **_given("file", locals())}


def generate(
    *,
    shape: Literal["sensors", "rooms", "orders", "sequence"] = "sensors",
    count: int | None = None,
    rate: float | None = None,
    seed: int = 0,
    keys: int = 10,
    batch_size: int = 10000,
    start: datetime | str | NotGiven = NOT_GIVEN,
    interval: float = 1.0,
    gap_rate: float = 0.02,
    spike_rate: float = 0.005,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``generate`` source.

    Synthetic records: sensors, rooms, orders or a plain sequence.

    Args:
        shape: `sensors`: readings per sensor with gaps (nulls) and spikes; `rooms`: people counts
            per room; `orders`: orders with PII columns (name, email, phone, card); `sequence`:
            just an `id` column.
        count: Records to produce; omit for an unbounded stream.
        rate: Records per second; omit to produce as fast as possible.
        seed: Same seed, same records.
        keys: Number of sensors / rooms / customers.
        batch_size: Records per batch.
        start: Event time of the first record. Default: ``2026-01-01T00:00:00+00:00``.
        interval: Seconds of event time between two readings of one key.
        gap_rate: sensors: share of null readings.
        spike_rate: sensors: share of spikes.
        name: Unique name; defaults to the type.
    """
    return {"type": "generate", **_given("generate", locals())}


def http(
    *,
    url: str,
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] | NotGiven = NOT_GIVEN,
    params: Mapping[str, Any] | NotGiven = NOT_GIVEN,
    headers: Mapping[str, str] | NotGiven = NOT_GIVEN,
    body: Any = None,
    records_path: str | None = None,
    auth: AuthConfig | NotGiven = NOT_GIVEN,
    pagination: PaginationConfig | NotGiven = NOT_GIVEN,
    rate_limit: RateLimitConfig | NotGiven = NOT_GIVEN,
    retry: RetryConfig | NotGiven = NOT_GIVEN,
    incremental: IncrementalConfig | None = None,
    poll_interval: float | None = None,
    flatten: bool = False,
    on_error: Literal["fail", "skip"] = "fail",
    skip_limit: int = 5,
    batch_size: int = 1,
    idempotency_header: str | None = None,
    idempotency_columns: list[str] | None = None,
    max_body_chars: int = 500,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``http`` source and sink.

    As a source: Read records from a REST API: pagination, auth, rate limits, retries, incremental.

    As a sink: POST (or PUT, PATCH...) records to an HTTP endpoint, with rate limits and retries.

    Args:
        url: As a source: Endpoint URL. As a sink: Endpoint URL; `{{column}}` is replaced by the
            record's value when `batch_size` is 1. Required.
        method: HTTP method. As a source: ``'GET'``. As a sink: ``'POST'``.
        params: Source only. Query parameters. Default: ``{}``.
        headers: Request headers. Default: ``{}``.
        body: As a source: JSON body (with POST). Strings may hold `{{cursor}}`, `{{page}}`,
            `{{offset}}`, `{{limit}}`, replaced per request. As a sink: JSON body template per
            record: strings that are exactly `{{column}}` take the value with its type, other
            strings get it as text. Omitted: the record.
        records_path: Source only. Dotted path of the record list in the response (`data.items`);
            omitted: the body itself is the list (or a single record).
        auth: Authentication. Default: the defaults of its keys.
        pagination: Source only. How to page. Default: the defaults of its keys.
        rate_limit: As a source: Request budget. As a sink: Request budget and concurrency.
            Default: the defaults of its keys.
        retry: Retries and timeouts. Default: the defaults of its keys.
        incremental: Source only. Incremental cursor; omitted: every sweep reads everything.
        poll_interval: Source only. Seconds between sweeps: the source runs until stopped (with
            `incremental`, each sweep asks only for what is new; without, it reads everything
            again). Omitted: one sweep, then the run ends.
        flatten: Source only. Flatten nested objects into `parent.child` columns.
        on_error: Source only. A page that stays broken (an error status after every retry, a body
            that is not JSON or not a list of records): `fail` the run at that page (it resumes
            there), or `skip` it: the page is dead-lettered (URL, status, a body excerpt, the
            reason) and paging goes on with the next page, which `page`, `offset` and `link_header`
            paging know without the body (`cursor` and `next_url` do not). Authentication failures
            (401/403) and rate limits (429) always fail.
        skip_limit: Source only. With `on_error: skip`: this many broken pages in a row fail the
            run (an API that fails every page is down, not broken in places).
        batch_size: Sink only. Records per request: 1 sends one object, more a JSON array.
        idempotency_header: Sink only. Header carrying a key derived from the request's records
            (SHA-256 of their JSON, or of `idempotency_columns`), for receivers that de-duplicate
            resends.
        idempotency_columns: Sink only. Columns the idempotency key is computed from (default:
            all).
        max_body_chars: Sink only. Characters of a failed response's body kept in the reason.
        name: Unique name; defaults to the type.
    """
    return {"type": "http", **_given("http", locals())}


def influxdb(
    *,
    url: str = "http://127.0.0.1:8086",
    database: str | None = None,
    retention_policy: str | None = None,
    username: str | None = None,
    password: str | None = None,
    bucket: str | None = None,
    org: str | None = None,
    token: str | None = None,
    measurement: str | None = None,
    measurement_column: str | None = None,
    tags: list[str] | NotGiven = NOT_GIVEN,
    fields: list[str] | None = None,
    time_column: str | None = None,
    precision: Literal["ns", "us", "ms", "s"] = "ns",
    batch_size: int = 5000,
    timeout: float = 30.0,
    retry: RetryPolicy | NotGiven = NOT_GIVEN,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``influxdb`` sink.

    Write points to InfluxDB 1.x or 2.x as line protocol over HTTP.

    Args:
        url: Server URL (http:// or https://).
        database: InfluxDB 1.x: database (`/write?db=`).
        retention_policy: InfluxDB 1.x: retention policy.
        username: InfluxDB 1.x: user name.
        password: InfluxDB 1.x: password (redacted).
        bucket: InfluxDB 2.x: bucket (`/api/v2/write`).
        org: InfluxDB 2.x: organisation name or id.
        token: InfluxDB 2.x: API token (redacted).
        measurement: Measurement of every point.
        measurement_column: Column holding each point's measurement (instead of `measurement`).
        tags: Columns written as tags (indexed, text). Default: ``[]``.
        fields: Columns written as fields; all columns that are not tags, time or measurement if
            unset.
        time_column: Timestamp column: a datetime, or an integer already in `precision` units.
            Unset: the server stamps each write (and a replay duplicates points).
        precision: Timestamp precision sent to the server.
        batch_size: Lines per HTTP request.
        timeout: Seconds to wait for each request.
        retry: Retries of 5xx, 429 and lost connections (backoff with jitter). Default: the
            defaults of its keys.
        name: Unique name; defaults to the type.
    """
    return {"type": "influxdb", **_given("influxdb", locals())}


def kafka(
    *,
    topic: str | list[str] | NotGiven = NOT_GIVEN,
    group: str | NotGiven = NOT_GIVEN,
    broker: str | None = None,
    start: Literal["earliest", "latest"] = "earliest",
    format: Literal["json", "csv", "raw"] = "json",
    csv_columns: list[str] | None = None,
    metadata: list[Literal["topic", "partition", "offset", "timestamp", "key", "headers"]]
    | NotGiven = NOT_GIVEN,
    batch_size: int = 10000,
    max_record_bytes: int = 67108864,
    poll_timeout: float = 0.5,
    stop_at_end: bool = False,
    idle_seconds: float = 2.0,
    end_offsets: Mapping[str, int] | None = None,
    max_wait: float | None = None,
    partitioned_by: PartitionedBy | None = None,
    isolation: Literal["read_committed", "read_uncommitted"] = "read_committed",
    options: Mapping[str, Any] | NotGiven = NOT_GIVEN,
    pattern: str | None = None,
    bootstrap: str | None = None,
    key: str | None = None,
    partitions: int = 1,
    value_column: str | None = None,
    headers: str | None = None,
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none",
    exactly_once: bool = True,
    transactional_id: str | None = None,
    buffer_bytes: int = 67108864,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``kafka`` source and sink.

    As a source: Read Kafka topics (or a topic pattern) as a consumer group member.

    As a sink: Write records to a Kafka topic (exactly-once by default, see ``exactly_once``).

    Args:
        topic: As a source: Topic name(s) to read (or give `pattern`). As a sink: Topic to write
            (created on first use). As a source: ``[]``. As a sink: required.
        group: Source only. Consumer group: groups read a topic independently. Required.
        broker: Kafka bootstrap servers, `kafka://host:port[,host:port]` (or without `kafka://`);
            default `KAFKA_BROKER`.
        start: Source only. Where a new group starts reading.
        format: Message format: json, csv or raw (bytes).
        csv_columns: Source only. Column names of csv messages.
        metadata: Source only. Message fields to add as `_topic`, `_partition`, `_offset`,
            `_timestamp`, `_key`, `_headers` columns. Default: ``[]``.
        batch_size: Source only. Most messages per batch.
        max_record_bytes: Source only. Longest message value decoded; a longer one is dead-lettered
            with its topic, partition, offset and size instead of being parsed.
        poll_timeout: Source only. Longest wait for messages (s).
        stop_at_end: Source only. A bounded run over what the topics hold: end once every partition
            is read to the end offset it had when the run started (by this member, or committed by
            another member of the group) and no message arrived for `idle_seconds`; by default the
            source keeps waiting.
        idle_seconds: Source only. With stop_at_end: quiet time to end.
        end_offsets: Source only. End once every listed partition (`topic:partition` -> next
            offset, e.g. from `tideflow topics describe`) has been read up to that offset, or has
            nothing more to read (Kafka: only transaction markers left); messages at or after it
            are left for the next run. A bounded run whose end is decided by the data, not by
            `idle_seconds` of quiet; implies `stop_at_end`. Partitions another member of the group
            owns count as read once the group committed them up to their offset.
        max_wait: Source only. Bounded runs: the longest the run waits (seconds from its start) for
            every partition of its topics to be read to the end offsets seen at the start (or
            `end_offsets`), by this member or another of the group; past it the run ends with exit
            code 3 and names the unread partitions. Null: as long as it takes (a warning names them
            every 30 s).
        partitioned_by: Source only. Declare that the topic is partitioned by a column, so group
            workers (`--workers`) may keep state per that column (an `aggregate`, `window`,
            `dedupe`, ... whose keys include it): every record is checked against it, and the run
            stops at the first record in another partition than the declaration puts it.
        isolation: Source only. Kafka: `read_committed` reads only messages of committed
            transactions (what exactly-once producers, tideflow's included, commit);
            `read_uncommitted` also those of open and aborted ones. The embedded log always reads
            committed.
        options: librdkafka settings for Kafka (TLS, SASL, ...). Default: ``{}``.
        pattern: Source only. A regular expression of topic names.
        bootstrap: Deprecated name of `broker` (still accepted).
        key: Sink only. Column whose value is the message key (and picks the partition).
        partitions: Sink only. Partitions when the sink creates the topic.
        value_column: Sink only. raw format: the column of bytes.
        headers: Sink only. Column of JSON objects sent as message headers.
        compression: Sink only. Kafka compression codec.
        exactly_once: Sink only. Kafka: each checkpoint's messages are stored in the checkpoint,
            then produced in one transaction (with the consumed offsets of a Kafka source on the
            same cluster), so `read_committed` readers see each record once across crashes; each
            message gets a `tideflow.id` header. false: an idempotent producer, at-least-once
            across a crash. The embedded log is always exactly-once.
        transactional_id: Sink only. Kafka transactional id of the exactly-once producer; default
            `tideflow-<state store id>-<pipeline>-<sink>-<scope>`. A second process with the same
            id fences the first.
        buffer_bytes: Sink only. Exactly-once on Kafka: bytes of a checkpoint interval's messages
            held in memory; beyond it they are spilled to files beside the state store.
        name: Unique name; defaults to the type.
    """
    return {"type": "kafka", **_given("kafka", locals())}


def mqtt(
    *,
    max_wait: float = 0.5,
    stop_after_idle: float | None = None,
    max_record_bytes: int = 67108864,
    host: str = "127.0.0.1",
    port: int = 1883,
    client_id: str | None = None,
    username: str | None = None,
    password: str | None = None,
    tls: TlsSettings | None = None,
    keepalive: int = 60,
    protocol: Literal["5", "3.1.1"] = "5",
    session_expiry: int = 86400,
    connect_timeout: float = 10.0,
    retry: RetryPolicy | NotGiven = NOT_GIVEN,
    topics: list[str] | NotGiven = NOT_GIVEN,
    qos: Literal[0, 1, 2] = 1,
    clean_session: bool | None = None,
    format: Literal["json", "text", "bytes"] = "json",
    payload_column: str = "payload",
    topic_column: str | NotGiven | None = NOT_GIVEN,
    batch_size: int = 1000,
    receive_maximum: int = 65535,
    topic: str | None = None,
    retain: bool = False,
    max_in_flight: int = 1000,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``mqtt`` source and sink.

    As a source: Subscribe to MQTT topics; QoS 1 messages are acknowledged after the checkpoint.

    As a sink: Publish records to MQTT; at the checkpoint every QoS 1/2 publish is acknowledged.

    Args:
        max_wait: Source only. Longest wait (s) for a message before handing on an empty batch; a
            batch is handed on as soon as no more messages are waiting on the connection.
        stop_after_idle: Source only. End the source after this many seconds without a message
            (drain what is waiting as a batch job). Unset: run until stopped.
        max_record_bytes: Source only. Longest message payload decoded; a longer one is
            dead-lettered with its origin and size (and acknowledged with its batch) instead of
            being parsed.
        host: Broker host.
        port: Broker port (8883 is usual for TLS).
        client_id: MQTT client id. Needed for a persistent session: the broker keeps the
            subscriptions and unacknowledged messages of this id while the pipeline is down. Two
            running clients must never share an id (the broker disconnects the first).
        username: User name.
        password: Password (redacted in every message).
        tls: Connect over TLS with these settings.
        keepalive: Seconds between keep-alive pings.
        protocol: MQTT version. With 5 the client tells the broker how many unacknowledged messages
            it may hold (`receive_maximum`); with 3.1.1 the broker's own limit applies (Mosquitto's
            `max_inflight_messages`, 20 by default). The source acknowledges at checkpoints, so at
            most that many messages pass per checkpoint (with `checkpoint.min_interval` unset, a
            QoS 1 stream then stalls until the next one).
        session_expiry: MQTT 5 persistent sessions: seconds the broker keeps the session (its
            subscriptions and unacknowledged messages) after the client disconnects.
        connect_timeout: Seconds to wait for CONNACK.
        retry: Reconnecting after a lost or refused connection (backoff with jitter). Default: the
            defaults of its keys.
        topics: Source only. Topic filters to subscribe to; `+` matches one level, `#` the rest
            (`sensors/+/temperature`, `plant/#`). Required.
        qos: As a source: Subscription QoS. 1 (default): acknowledged after the checkpoint,
            redelivered after a crash with a persistent session. 0: no acknowledgement, a crash
            loses messages in flight. 2: once per connection, but not redelivered after a crash. As
            a sink: Publish QoS; with 1 and 2 the checkpoint waits for the broker's ack.
        clean_session: Source only. Start with a fresh session. Defaults to false when `client_id`
            is set (a persistent session: messages published while the pipeline is down, and those
            not yet acknowledged, are delivered on the next run) and true otherwise.
        format: As a source: Payload format: `json` (one object per message, keys become columns),
            `text` (UTF-8 in `payload_column`) or `bytes` (raw, binary `payload_column`). Messages
            that do not decode are dead-lettered. As a sink: `json`: each record as a JSON object
            (without `topic_column`); `text`/`bytes`: the value of `payload_column`.
        payload_column: As a source: Column of `text`/`bytes` payloads. As a sink: Column sent by
            `text`/`bytes`.
        topic_column: As a source: Column with the topic each message arrived on; null to omit. As
            a sink: Column holding each record's topic (instead of `topic`). As a source:
            ``'topic'``. As a sink: ``None``.
        batch_size: Source only. Most messages per batch.
        receive_maximum: Source only. MQTT 5: most unacknowledged QoS 1/2 messages the broker may
            send before the next checkpoint acknowledges them: at most this many pass per
            checkpoint (a group commit follows each within `checkpoint.min_interval`; without group
            commit keep it above `checkpoint.every_records`).
        topic: Sink only. Topic every record is published to.
        retain: Sink only. Publish retained messages (last value per topic).
        max_in_flight: Sink only. Most unacknowledged QoS 1/2 messages before publishing waits.
        name: Unique name; defaults to the type.
    """
    return {"type": "mqtt", **_given("mqtt", locals())}


def redis(
    *,
    url: str = "redis://127.0.0.1:6379/0",
    password: str | None = None,
    retry: RetryPolicy | NotGiven = NOT_GIVEN,
    key_column: str,
    key_prefix: str = "",
    value: Literal["hash", "json"] = "hash",
    columns: list[str] | None = None,
    ttl: float | None = None,
    pipeline_size: int = 1000,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``redis`` sink.

    Write records to Redis as hashes or JSON strings, one key per record.

    Args:
        url: Redis URL: redis://[user:password@]host:port/db, rediss:// for TLS (the password is
            redacted in every message).
        password: Password, when not in the URL.
        retry: Retries through a Redis outage (backoff with jitter). Default: the defaults of its
            keys.
        key_column: Column whose value names each record's key. Required.
        key_prefix: Prefix of every key (`sensor:`).
        value: `hash`: HSET the other columns as fields (a null removes its field); `json`: SET the
            record (without the key column) as a JSON string.
        columns: Columns to store; all but the key column if unset.
        ttl: Expire each written key after this many seconds.
        pipeline_size: Records per pipelined round trip.
        name: Unique name; defaults to the type.
    """
    return {"type": "redis", **_given("redis", locals())}


def redis_streams(
    *,
    url: str = "redis://127.0.0.1:6379/0",
    password: str | None = None,
    retry: RetryPolicy | NotGiven = NOT_GIVEN,
    stream: str,
    group: str | NotGiven = NOT_GIVEN,
    consumer: str | None = None,
    start: str = "0",
    format: Literal["fields", "json", "text", "bytes"] = "fields",
    payload_field: str = "payload",
    id_column: str | None = "id",
    batch_size: int = 1000,
    max_record_bytes: int = 67108864,
    max_wait: float = 0.5,
    stop_after_idle: float | None = None,
    maxlen: int | None = None,
    pipeline_size: int = 1000,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``redis_streams`` source and sink.

    As a source: Read a Redis stream with a consumer group; XACK only after the checkpoint.

    As a sink: Append records to a Redis stream with XADD (at-least-once).

    Args:
        url: Redis URL: redis://[user:password@]host:port/db, rediss:// for TLS (the password is
            redacted in every message).
        password: Password, when not in the URL.
        retry: Retries through a Redis outage (backoff with jitter). Default: the defaults of its
            keys.
        stream: As a source: Stream key to read. As a sink: Stream key to append to. Required.
        group: Source only. Consumer group (created at `start` when missing). Required.
        consumer: Source only. Consumer name inside the group; defaults to `<pipeline>.<source>`.
            Keep it stable: the entries a consumer has not acknowledged are re-read by the consumer
            of the same name after a restart.
        start: Source only. Where a new group starts: `0` (the whole stream) or `$` (new entries
            only). Ignored when the group exists.
        format: As a source: `fields`: each entry's fields become text columns;
            `json`/`text`/`bytes`: decode the field `payload_field` (bad JSON is dead-lettered). As
            a sink: `fields`: each column a field (as text; nulls omitted); `json`: the record as
            JSON in `payload_field`.
        payload_field: As a source: Field decoded by json/text/bytes. As a sink: Field holding the
            JSON record.
        id_column: Source only. Column with the entry id; null to omit.
        batch_size: Source only. Most entries per XREADGROUP.
        max_record_bytes: Source only. Longest entry decoded (its payload field, or all fields for
            `fields`); a longer one is dead-lettered with its id and size instead of being parsed.
        max_wait: Source only. Longest block (s) waiting for new entries before handing on.
        stop_after_idle: Source only. End the source after this many seconds without an entry
            (drain a stream as a batch job). Unset: run until stopped.
        maxlen: Sink only. Trim the stream to about this many entries (MAXLEN ~).
        pipeline_size: Sink only. Entries per pipelined round trip.
        name: Unique name; defaults to the type.
    """
    return {"type": "redis_streams", **_given("redis_streams", locals())}


def sql(
    *,
    url: str,
    retry: RetryPolicy | NotGiven = NOT_GIVEN,
    table: str | NotGiven | None = NOT_GIVEN,
    db_schema: str | None = None,
    columns: list[str] | Mapping[str, ColumnModel] | NotGiven | None = NOT_GIVEN,
    query: str | None = None,
    cursor: str | None = None,
    initial_value: Any = None,
    order_by: list[str] | NotGiven = NOT_GIVEN,
    batch_size: int = 50000,
    poll_interval: float | None = None,
    partition_column: str | None = None,
    partitions: int = 1,
    mode: Literal["append", "upsert", "replace"] = "append",
    key: list[str] | NotGiven = NOT_GIVEN,
    schema_policy: Literal["evolve", "strict", "recreate"] = "evolve",
    indexes: list[IndexModel] | NotGiven = NOT_GIVEN,
    schema_lock_timeout: float = 300.0,
    transactional: bool = False,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``sql`` source and sink.

    As a source: Read a table or query from PostgreSQL, MySQL/MariaDB, SQLite or DuckDB.

    As a sink: Load batches into a SQL table: append, upsert or replace, exactly-once on request.

    Args:
        url: Database URL: postgresql://user:pass@host/db, mysql://root@host/db, sqlite:///file.db
            or duckdb:///file.duckdb (relative to the pipeline file). Required.
        retry: Retries through a database outage (backoff with jitter). Default: the defaults of
            its keys.
        table: As a source: Table to read (or give `query`). As a sink: Target table (created when
            missing). As a source: ``None``. As a sink: required.
        db_schema: As a source: Database schema of `table`. As a sink: Database schema (namespace)
            of the table; the default if unset.
        columns: As a source: Columns of `table` to read; all if unset. As a sink: Declared columns
            (type, nullable) overriding the types inferred from the data; declared columns missing
            from the data are created as well. As a source: ``None``. As a sink: ``{}``.
        query: Source only. A SELECT to read instead of a table; it is wrapped as a subquery.
        cursor: Source only. Incremental mode: a column that grows with new or changed rows (`id`,
            `updated_at`); only rows above the last value read are fetched.
        initial_value: Source only. Incremental mode: start after this cursor value on the first
            run.
        order_by: Source only. Full reads: columns giving a deterministic order, so a resumed read
            skips exactly the rows already delivered. Default: ``[]``.
        batch_size: Source only. Rows per batch.
        poll_interval: Source only. Incremental mode: keep running and look for new rows this often
            (seconds); without it the source ends when it has read everything.
        partition_column: Source only. Full reads: a numeric column to split the read by value
            range.
        partitions: Source only. Parallel range reads.
        mode: Sink only. append rows; upsert (merge on `key`); replace the table's contents (load a
            new table, swap it in atomically at the end of the run).
        key: Sink only. Key columns: the primary key; required by upsert. Default: ``[]``.
        schema_policy: Sink only. When the table differs from the data: evolve (add columns, widen
            types), strict (fail), recreate (drop and rebuild the table).
        indexes: Sink only. Indexes created with the table. Default: ``[]``.
        schema_lock_timeout: Sink only. Seconds to wait for another worker's or pipeline's change
            of the table's schema (creating it, adding columns) before failing with a message
            naming the lock; schema changes of one table are serialized by a database lock.
        transactional: Sink only. Exactly-once: commit rows and the pipeline checkpoint in one
            transaction per checkpoint (PostgreSQL, SQLite; not MySQL, whose DDL commits
            implicitly, nor DuckDB, which has no savepoints).
        name: Unique name; defaults to the type.
    """
    return {"type": "sql", **_given("sql", locals())}


def stdout(
    *,
    format: Literal["table", "jsonl"] = "table",
    max_rows: int = 20,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``stdout`` sink.

    Print records to standard output (a display, not a durable sink).

    Args:
        format: `table` or `jsonl`.
        max_rows: table: rows shown per batch.
        name: Unique name; defaults to the type.
    """
    return {"type": "stdout", **_given("stdout", locals())}


def topic(
    *,
    topic: str | list[str],
    group: str | NotGiven = NOT_GIVEN,
    broker: str | None = None,
    start: Literal["earliest", "latest"] = "earliest",
    format: Literal["json", "csv", "raw"] = "json",
    csv_columns: list[str] | None = None,
    metadata: list[Literal["topic", "partition", "offset", "timestamp", "key", "headers"]]
    | NotGiven = NOT_GIVEN,
    batch_size: int = 10000,
    max_record_bytes: int = 67108864,
    poll_timeout: float = 0.5,
    stop_at_end: bool = False,
    idle_seconds: float = 2.0,
    end_offsets: Mapping[str, int] | None = None,
    max_wait: float | None = None,
    partitioned_by: PartitionedBy | None = None,
    isolation: Literal["read_committed", "read_uncommitted"] = "read_committed",
    options: Mapping[str, Any] | NotGiven = NOT_GIVEN,
    key: str | None = None,
    partitions: int = 1,
    value_column: str | None = None,
    headers: str | None = None,
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none",
    exactly_once: bool = True,
    transactional_id: str | None = None,
    buffer_bytes: int = 67108864,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``topic`` source and sink.

    As a source: Read a topic as a consumer group member, on the embedded log or Kafka.

    As a sink: Write records as messages to a topic, on the embedded log or Kafka.

    Args:
        topic: As a source: Topic name(s) to read. As a sink: Topic to write (created on first
            use). Required.
        group: Source only. Consumer group: groups read a topic independently. Required.
        broker: `kafka://host:port` for Kafka, `embedded` for the local log; unset: Kafka if
            `KAFKA_BROKER` is set, else the embedded log.
        start: Source only. Where a new group starts reading.
        format: Message format: json, csv or raw (bytes).
        csv_columns: Source only. Column names of csv messages.
        metadata: Source only. Message fields to add as `_topic`, `_partition`, `_offset`,
            `_timestamp`, `_key`, `_headers` columns. Default: ``[]``.
        batch_size: Source only. Most messages per batch.
        max_record_bytes: Source only. Longest message value decoded; a longer one is dead-lettered
            with its topic, partition, offset and size instead of being parsed.
        poll_timeout: Source only. Longest wait for messages (s).
        stop_at_end: Source only. A bounded run over what the topics hold: end once every partition
            is read to the end offset it had when the run started (by this member, or committed by
            another member of the group) and no message arrived for `idle_seconds`; by default the
            source keeps waiting.
        idle_seconds: Source only. With stop_at_end: quiet time to end.
        end_offsets: Source only. End once every listed partition (`topic:partition` -> next
            offset, e.g. from `tideflow topics describe`) has been read up to that offset, or has
            nothing more to read (Kafka: only transaction markers left); messages at or after it
            are left for the next run. A bounded run whose end is decided by the data, not by
            `idle_seconds` of quiet; implies `stop_at_end`. Partitions another member of the group
            owns count as read once the group committed them up to their offset.
        max_wait: Source only. Bounded runs: the longest the run waits (seconds from its start) for
            every partition of its topics to be read to the end offsets seen at the start (or
            `end_offsets`), by this member or another of the group; past it the run ends with exit
            code 3 and names the unread partitions. Null: as long as it takes (a warning names them
            every 30 s).
        partitioned_by: Source only. Declare that the topic is partitioned by a column, so group
            workers (`--workers`) may keep state per that column (an `aggregate`, `window`,
            `dedupe`, ... whose keys include it): every record is checked against it, and the run
            stops at the first record in another partition than the declaration puts it.
        isolation: Source only. Kafka: `read_committed` reads only messages of committed
            transactions (what exactly-once producers, tideflow's included, commit);
            `read_uncommitted` also those of open and aborted ones. The embedded log always reads
            committed.
        options: librdkafka settings for Kafka (TLS, SASL, ...). Default: ``{}``.
        key: Sink only. Column whose value is the message key (and picks the partition).
        partitions: Sink only. Partitions when the sink creates the topic.
        value_column: Sink only. raw format: the column of bytes.
        headers: Sink only. Column of JSON objects sent as message headers.
        compression: Sink only. Kafka compression codec.
        exactly_once: Sink only. Kafka: each checkpoint's messages are stored in the checkpoint,
            then produced in one transaction (with the consumed offsets of a Kafka source on the
            same cluster), so `read_committed` readers see each record once across crashes; each
            message gets a `tideflow.id` header. false: an idempotent producer, at-least-once
            across a crash. The embedded log is always exactly-once.
        transactional_id: Sink only. Kafka transactional id of the exactly-once producer; default
            `tideflow-<state store id>-<pipeline>-<sink>-<scope>`. A second process with the same
            id fences the first.
        buffer_bytes: Sink only. Exactly-once on Kafka: bytes of a checkpoint interval's messages
            held in memory; beyond it they are spilled to files beside the state store.
        name: Unique name; defaults to the type.
    """
    return {"type": "topic", **_given("topic", locals())}


def webhook(
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    path: str = "/",
    format: Literal["auto", "json", "ndjson"] = "auto",
    secret: str | None = None,
    secret_header: str = "X-Webhook-Token",
    hmac_secret: str | None = None,
    signature_header: str = "X-Signature-256",
    max_pending: int = 10000,
    max_pending_seconds: float = 2.0,
    idempotency_header: str | None = None,
    idempotency_retention: float = 86400.0,
    max_body_bytes: int = 10000000,
    max_record_bytes: int = 67108864,
    batch_size: int = 5000,
    max_wait: float = 0.2,
    ack_timeout: float = 60.0,
    retry_after: int = 1,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``webhook`` source.

    Receive records posted over HTTP; answer each post once its records are durable.

    Args:
        host: Address to listen on (`0.0.0.0`: all).
        port: Port to listen on (0: any free one).
        path: URL path that accepts posts; others get 404.
        format: `json` (an object or an array of objects), `ndjson` (one object per line) or `auto`
            (by Content-Type, then by content).
        secret: Shared secret the sender puts in `secret_header` (use `${ENV}`).
        secret_header: Header carrying `secret`.
        hmac_secret: Key of an HMAC-SHA256 signature of the body (use `${ENV}`).
        signature_header: Header carrying `sha256=<hex digest>`.
        max_pending: Records waiting for their checkpoint before new posts get 429.
        max_pending_seconds: New posts get 429 while the oldest post waiting for its checkpoint has
            waited longer than this (the pipeline is not keeping up): keep it well below senders'
            timeouts (often 5-10 s).
        idempotency_header: Header carrying the sender's delivery id (`X-GitHub-Delivery`,
            `Idempotency-Key`, ...): a post repeating the id of one already taken is answered 200
            without taking its records again (exactly once for senders that resend).
        idempotency_retention: Seconds a delivery id is remembered after its post was taken (kept
            in a SQLite file beside the state store).
        max_body_bytes: Larger posts are refused with 413.
        max_record_bytes: Longest record of a post (an NDJSON line, an array element); a longer one
            is dead-lettered with the post's number and its size, the rest of the post is taken.
            (Bodies are limited by `max_body_bytes` first.)
        batch_size: Most records handed on per batch.
        max_wait: Seconds a read waits for posts before handing on what it has.
        ack_timeout: Seconds a sender is kept waiting for the checkpoint; then 503 (it should send
            again).
        retry_after: `Retry-After` seconds sent with 429.
        name: Unique name; defaults to the type.
    """
    return {"type": "webhook", **_given("webhook", locals())}


class StepMethods:
    """One method per built-in step, mixed into :class:`tideflow.Pipeline`."""

    def step(
        self,
        type_name: str,
        name: str | None = None,
        input: str | list[str] | None = None,
        **settings: Any,
    ) -> Self:
        """Add a step of any registered type (implemented by :class:`tideflow.Pipeline`)."""
        raise NotImplementedError

    def aggregate(
        self,
        *,
        keys: list[str] | NotGiven = NOT_GIVEN,
        aggregations: Mapping[str, str],
        time_column: str | None = None,
        expire_after: str | None = None,
        emit: Literal["on_update", "on_end"] | EmitEvery = "on_update",
        name: str | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Running aggregates per key, emitted after each batch, at the end, or periodically.

        The output (keys + one column per aggregation) is meant for an upsert sink keyed on the
        keys. State is one row of partial aggregates per key, with a flag for keys changed since
        they were last emitted. Input records count as ``consumed`` and emitted rows as
        ``generated``.

        Args:
            keys: Columns to aggregate by. Default: ``[]``.
            aggregations: Output column -> `func(column)`: count() / count(col), sum, mean, min,
                max, first, last, stddev, variance. Required.
            time_column: Event time; orders `first`/`last` (arrival order without it) and drives
                `expire_after`.
            expire_after: Forget a key when the newest event time seen is this much past the key's
                newest record (bounds state for streams of ever-new keys). A key with changes not
                yet emitted (`on_end`, `every`) is emitted as it is forgotten.
            emit: When rows go out. `on_update`: after each batch, the current row of every key it
                changed (an upsert sink keeps the newest). `on_end`: one final row per key when the
                input ends; only for bounded sources (refused with a source that never ends; a run
                that is stopped emits at the end of the run that completes the input). `{every:
                30s}`: for streams, the keys changed since the last emission, at most once per
                period, and the rest when a bounded input ends. Keys not yet emitted are kept in
                the checkpoint, so a crash neither loses nor repeats them.
            name: Unique name; defaults to the type.
            input: Where records come from: a source, step, or `step.port`; several names merge
                their records. Defaults to the previous step (or all sources).
        """
        settings = _given(StepMethods.aggregate, locals(), skip=_STEP_ENVELOPE)
        return self.step("aggregate", name, input, **settings)

    def dedupe(
        self,
        *,
        time_column: str,
        max_out_of_orderness: str = "0s",
        allowed_lateness: str = "0s",
        idle_timeout: str | None = None,
        keys: list[str],
        horizon: str,
        name: str | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Drop records whose keys were seen less than ``horizon`` earlier in event time.

        Records are held until the watermark (minus ``allowed_lateness``) passes them, so that one
        arriving out of order is compared with the records truly before it: the result is the same
        as sorting the whole input by time, whatever the arrival order within
        ``max_out_of_orderness``. Held records are reported as ``consumed`` when they arrive and as
        ``generated`` when released; released repeats count as ``filtered``. A record older than
        what was already released is dead-lettered with reason ``late``. State: the held records
        plus the newest time per key, forgotten once no new record can fall within the horizon.

        Args:
            time_column: Column holding each record's event time. Required.
            max_out_of_orderness: How far behind the newest event time a record may still arrive
                (e.g. `5s`). The watermark is the max event time seen minus this.
            allowed_lateness: Extra time, beyond the watermark, for which closed results still
                accept records; older records are dead-lettered with reason `late`.
            idle_timeout: When no record arrives for this long (wall clock), the watermark moves
                past every open window, so the last windows of a quiet stream close (records for
                them that come later are late). Replays are unaffected: their records arrive
                without pauses.
            keys: Columns that identify a repeat. Required.
            horizon: A record is a repeat when the previous record with the same keys (in event
                time) is less than this much older. Required.
            name: Unique name; defaults to the type.
            input: Where records come from: a source, step, or `step.port`; several names merge
                their records. Defaults to the previous step (or all sources).
        """
        settings = _given(StepMethods.dedupe, locals(), skip=_STEP_ENVELOPE)
        return self.step("dedupe", name, input, **settings)

    def flatten(
        self,
        *,
        columns: list[str] | None = None,
        separator: str = "_",
        max_depth: int | None = None,
        explode: list[str] | NotGiven = NOT_GIVEN,
        parse_json: list[str] | NotGiven = NOT_GIVEN,
        name: str | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Nested objects to prefixed columns; chosen lists to rows.

        Args:
            columns: Object columns to flatten; every object column if unset.
            separator: Joins a parent and a field name.
            max_depth: Levels to flatten; deeper objects stay nested (as JSON in SQL).
            explode: List columns to turn into one row per element (an empty or null list keeps its
                row, with a null element). Default: ``[]``.
            parse_json: Text columns holding JSON to parse before flattening. Default: ``[]``.
            name: Unique name; defaults to the type.
            input: Where records come from: a source, step, or `step.port`; several names merge
                their records. Defaults to the previous step (or all sources).
        """
        settings = _given(StepMethods.flatten, locals(), skip=_STEP_ENVELOPE)
        return self.step("flatten", name, input, **settings)

    def http_enrich(
        self,
        *,
        url: str,
        keys: list[str],
        method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET",
        headers: Mapping[str, str] | NotGiven = NOT_GIVEN,
        params: Mapping[str, Any] | NotGiven = NOT_GIVEN,
        batch_size: int = 1,
        response_path: str | None = None,
        fields: list[str] | None = None,
        prefix: str = "",
        not_found: Literal["null", "dead_letter"] = "null",
        cache_ttl: float = 300.0,
        cache_size: int = 100000,
        auth: AuthConfig | NotGiven = NOT_GIVEN,
        rate_limit: RateLimitConfig | NotGiven = NOT_GIVEN,
        retry: RetryConfig | NotGiven = NOT_GIVEN,
        name: str | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Merge fields looked up in an HTTP API (per distinct key or per batch of keys).

        Args:
            url: Endpoint URL; `{{column}}` is replaced by the key value(s) (per-key mode).
                Required.
            keys: Columns that identify what to look up. Required.
            method: HTTP method.
            headers: Request headers. Default: ``{}``.
            params: Query parameters (templated like `url`). Default: ``{}``.
            batch_size: Keys per request. 1: one request per distinct key. More: POST a JSON array
                of key objects; the response is a list of objects carrying the key columns.
            response_path: Dotted path of the object (or, batched, the list) in the response.
            fields: Response fields to merge (default: all top-level fields).
            prefix: Prefix for merged column names.
            not_found: A 404 (or a key missing from a batched reply): nulls or dead letter.
            cache_ttl: Seconds a looked-up key is reused (0: no cache).
            cache_size: Most keys kept in the cache.
            auth: Authentication. Default: the defaults of its keys.
            rate_limit: Request budget and concurrency. Default: ``{'concurrency': 8}``.
            retry: Retries and timeouts. Default: the defaults of its keys.
            name: Unique name; defaults to the type.
            input: Where records come from: a source, step, or `step.port`; several names merge
                their records. Defaults to the previous step (or all sources).
        """
        settings = _given(StepMethods.http_enrich, locals(), skip=_STEP_ENVELOPE)
        return self.step("http_enrich", name, input, **settings)

    def interpolate(
        self,
        *,
        time_column: str,
        max_out_of_orderness: str = "0s",
        allowed_lateness: str = "0s",
        idle_timeout: str | None = None,
        columns: list[str],
        keys: list[str] | NotGiven = NOT_GIVEN,
        interval: str,
        method: Literal["linear", "ffill", "none"] = "linear",
        max_gap: str | None = None,
        name: str | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Resample each key's series onto a fixed grid of ``interval``.

        Output rows: the time column (grid times), the keys and the value columns. A grid time is
        emitted once both points around it are known, so results do not depend on batch boundaries:
        points are held until the watermark (minus ``allowed_lateness``) passes them, and the last
        released point of each key is kept to bridge to the next batch. Held points count as
        ``consumed``; grid rows as ``generated``. A point older than what was released is
        dead-lettered ``late``. Of points with the same time, the first to arrive is used.
        ``finish`` releases everything held (no grid rows after a key's last point).

        Args:
            time_column: Column holding each record's event time. Required.
            max_out_of_orderness: How far behind the newest event time a record may still arrive
                (e.g. `5s`). The watermark is the max event time seen minus this.
            allowed_lateness: Extra time, beyond the watermark, for which closed results still
                accept records; older records are dead-lettered with reason `late`.
            idle_timeout: When no record arrives for this long (wall clock), the watermark moves
                past every open window, so the last windows of a quiet stream close (records for
                them that come later are late). Replays are unaffected: their records arrive
                without pauses.
            columns: Value columns to resample. Required.
            keys: One series per key. Default: ``[]``.
            interval: Grid step; grid times are multiples of it since the epoch (UTC). Required.
            method: Value at a grid time between two points: `linear` interpolation, `ffill` (the
                earlier point's value), or `none` (null unless a point is on the grid).
            max_gap: Between points further apart than this, no grid rows are invented (a point
                exactly on the grid is still emitted). Default: no limit.
            name: Unique name; defaults to the type.
            input: Where records come from: a source, step, or `step.port`; several names merge
                their records. Defaults to the previous step (or all sources).
        """
        settings = _given(StepMethods.interpolate, locals(), skip=_STEP_ENVELOPE)
        return self.step("interpolate", name, input, **settings)

    def normalize(
        self,
        *,
        columns: list[str],
        method: Literal["minmax", "zscore"] = "zscore",
        fit: Literal["fixed", "online"] = "online",
        params: Mapping[str, Mapping[str, float]] | NotGiven = NOT_GIVEN,
        keys: list[str] | NotGiven = NOT_GIVEN,
        name: str | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Scale numeric columns; results are Float64, null where the scale is zero or unknown.

        ``fit: online`` keeps, per key and column, the running count, mean, M2 (sum of squared
        deviations), min and max in state, and scales each value with the statistics of all values
        up to and including it (population standard deviation), across batches.

        Args:
            columns: Numeric columns to scale in place. Required.
            method: `minmax`: (x - min) / (max - min); `zscore`: (x - mean) / std, std the
                population standard deviation (n in the denominator; `outliers` uses the sample
                one). Online, min, max, mean and std are over the key's non-null values so far, x
                included, so a key's first value has no spread. A zero (or, fixed, negative) spread
                gives null.
            fit: `fixed`: use `params`; `online`: per key, the statistics of every value seen so
                far, this one included.
            params: fixed: column -> {min, max} (minmax) or {mean, std} (zscore). Default: ``{}``.
            keys: online: statistics per key. Default: ``[]``.
            name: Unique name; defaults to the type.
            input: Where records come from: a source, step, or `step.port`; several names merge
                their records. Defaults to the previous step (or all sources).
        """
        settings = _given(StepMethods.normalize, locals(), skip=_STEP_ENVELOPE)
        return self.step("normalize", name, input, **settings)

    def outliers(
        self,
        *,
        column: str,
        keys: list[str] | NotGiven = NOT_GIVEN,
        method: Literal["zscore", "mad", "iqr"] = "zscore",
        window: int = 50,
        min_points: int = 3,
        threshold: float | None = None,
        mode: Literal["flag", "drop", "route"] = "flag",
        name: str | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Detect outliers per key over the last ``window`` values, across batch boundaries.

        A value is scored against the values of its key that arrived before it (arrival order);
        every non-null value, outlier or not, then joins the history. Nulls get no score and are
        never outliers. A history without spread (all equal) scores any other value +inf or -inf
        (an outlier at every threshold: it is infinitely many spreads away) and an equal value 0.
        Parquet, CSV and PostgreSQL keep the infinities; JSON has none, so NDJSON/JSON sinks write
        such a score as null (``is_outlier`` still says true). State: the last ``window`` values
        per key. With ``mode: route`` read the outliers with ``input: <step>.outliers``.

        Args:
            column: Numeric column to check. Required.
            keys: One history per key. Default: ``[]``.
            method: Over the history H (the key's previous `window` non-null values; x itself is
                not in H): `zscore`: (x - mean(H)) / s(H), s the sample standard deviation (n - 1
                in the denominator); `mad`: 0.6745 (x - median(H)) / MAD(H), MAD(H) = median(|h -
                median(H)|), a median of an even count being the mean of the middle two; `iqr`: (x
                - Q3) / (Q3 - Q1) above Q3, (Q1 - x) / (Q3 - Q1) below Q1, 0 between, with Q1 and
                Q3 the 25% and 75% quantiles of H, interpolated linearly. A zero spread (s, MAD or
                IQR) scores x equal to the centre 0 and any other x +inf or -inf, an outlier.
            window: How many previous values of the key to use.
            min_points: Fewer previous values than this: no score, not an outlier.
            threshold: |score| above this is an outlier (default 3, mad 3.5, iqr 1.5).
            mode: `flag`: add `is_outlier` and `score`; `drop`: remove outliers (counted as
                filtered); `route`: send outliers to the `outliers` output.
            name: Unique name; defaults to the type.
            input: Where records come from: a source, step, or `step.port`; several names merge
                their records. Defaults to the previous step (or all sources).
        """
        settings = _given(StepMethods.outliers, locals(), skip=_STEP_ENVELOPE)
        return self.step("outliers", name, input, **settings)

    def pii(
        self,
        *,
        columns: Mapping[str, Literal["mask", "hash", "redact", "drop"]] | NotGiven = NOT_GIVEN,
        detect: Literal["auto"] | list[str] = "auto",
        scan: Literal["auto"] | list[str] = "auto",
        action: Literal["mask", "hash", "redact", "drop"] = "redact",
        actions: Mapping[str, Literal["mask", "hash", "redact", "drop"]] | NotGiven = NOT_GIVEN,
        patterns: Mapping[str, str] | NotGiven = NOT_GIVEN,
        keep_last: int = 4,
        salt: str | None = None,
        salt_env: str | None = None,
        redact_with: str = "[{name}]",
        name: str | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Detect and mask personal data: named columns and spans inside free text.

        Args:
            columns: Columns that are personal data as a whole, with the action for each: `{email:
                hash, card: mask, ssn: drop}`. Default: ``{}``.
            detect: Detectors that scan free text: `email`, `phone`, `credit_card` (Luhn-checked),
                `ipv4`, `ipv6` (`ip` for both), `iban` (checksum-verified), `person_name`
                (capitalised first name + surname from US Census name lists, or a title + surname;
                no model), and the names under `patterns`. `auto` (the default): every built-in
                one; `[]`: none.
            scan: Text columns the detectors scan; `auto`: every text column not named under
                `columns`.
            action: What happens to a detected span: mask, hash, redact or drop.
            actions: Per-detector action overriding `action`. Default: ``{}``.
            patterns: Your own detectors: name -> regular expression (Rust regex syntax). Default:
                ``{}``.
            keep_last: `mask` keeps this many last characters; values this short or shorter are
                masked entirely.
            salt: Salt for `hash` (use `${PII_SALT}`; it is kept out of logs).
            salt_env: Name of an environment variable holding the salt, read at start.
            redact_with: Replacement for `redact`; `{name}` is the detector or column.
            name: Unique name; defaults to the type.
            input: Where records come from: a source, step, or `step.port`; several names merge
                their records. Defaults to the previous step (or all sources).
        """
        settings = _given(StepMethods.pii, locals(), skip=_STEP_ENVELOPE)
        return self.step("pii", name, input, **settings)

    def python(
        self,
        *,
        function: str,
        mode: Literal["record", "batch", "value"] = "record",
        column: str = "value",
        kwargs: Mapping[str, Any] | NotGiven = NOT_GIVEN,
        name: str | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Run a user Python function per record or per batch.

        Args:
            function: `module:function` (importable) or `path/to/file.py:function` (relative to the
                pipeline file). Required.
            mode: `record`: fn(dict) -> dict | None, called per record (slow path); `batch`:
                fn(DataFrame) -> DataFrame (fast path); `value`: fn(any JSON value) -> JSON value |
                None, over the JSON text in `column` (per record).
            column: `value` mode: the column holding each record's JSON text, replaced by the
                function's result as JSON text (a `topic` source with `format: raw` reads `value`).
            kwargs: Extra keyword arguments passed to every call. Default: ``{}``.
            name: Unique name; defaults to the type.
            input: Where records come from: a source, step, or `step.port`; several names merge
                their records. Defaults to the previous step (or all sources).
        """
        settings = _given(StepMethods.python, locals(), skip=_STEP_ENVELOPE)
        return self.step("python", name, input, **settings)

    def resample(
        self,
        *,
        time_column: str,
        max_out_of_orderness: str = "0s",
        allowed_lateness: str = "0s",
        idle_timeout: str | None = None,
        columns: list[str],
        keys: list[str] | NotGiven = NOT_GIVEN,
        interval: str,
        method: Literal["linear", "ffill", "none"] = "linear",
        max_gap: str | None = None,
        name: str | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Alias of ``interpolate``: resample each key's series onto a fixed grid.

        Args:
            time_column: Column holding each record's event time. Required.
            max_out_of_orderness: How far behind the newest event time a record may still arrive
                (e.g. `5s`). The watermark is the max event time seen minus this.
            allowed_lateness: Extra time, beyond the watermark, for which closed results still
                accept records; older records are dead-lettered with reason `late`.
            idle_timeout: When no record arrives for this long (wall clock), the watermark moves
                past every open window, so the last windows of a quiet stream close (records for
                them that come later are late). Replays are unaffected: their records arrive
                without pauses.
            columns: Value columns to resample. Required.
            keys: One series per key. Default: ``[]``.
            interval: Grid step; grid times are multiples of it since the epoch (UTC). Required.
            method: Value at a grid time between two points: `linear` interpolation, `ffill` (the
                earlier point's value), or `none` (null unless a point is on the grid).
            max_gap: Between points further apart than this, no grid rows are invented (a point
                exactly on the grid is still emitted). Default: no limit.
            name: Unique name; defaults to the type.
            input: Where records come from: a source, step, or `step.port`; several names merge
                their records. Defaults to the previous step (or all sources).
        """
        settings = _given(StepMethods.resample, locals(), skip=_STEP_ENVELOPE)
        return self.step("resample", name, input, **settings)

    def window(
        self,
        *,
        time_column: str,
        max_out_of_orderness: str = "0s",
        allowed_lateness: str = "0s",
        idle_timeout: str | None = None,
        kind: Literal["tumbling", "sliding", "session"] = "tumbling",
        size: str | None = None,
        slide: str | None = None,
        gap: str | None = None,
        keys: list[str] | NotGiven = NOT_GIVEN,
        aggregations: Mapping[str, str] | NotGiven = NOT_GIVEN,
        columns: list[str] | NotGiven = NOT_GIVEN,
        emit: Literal["on_close", "on_update"] = "on_close",
        name: str | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Aggregate records per key over event-time windows.

        Outputs ``window_start``, ``window_end``, the keys and one column per aggregation. A window
        closes when the watermark reaches its end + ``allowed_lateness``. A record is dead-lettered
        with reason ``late`` when what it belongs to was already emitted: all its tumbling/sliding
        windows have closed (a sliding window record still counts in its open windows), or, for
        sessions, it is behind watermark - allowed_lateness and joins no open session. Records
        taken into state count as ``consumed`` and emitted window rows as ``generated``. ``finish``
        (bounded input ended) closes every window.

        Defaults from the environment: ``WINDOW_SIZE`` is the default ``size``;
        ``AGGREGATION_TYPE`` (e.g. ``max``) is applied to ``columns`` when ``aggregations`` is
        omitted. ``count_distinct``, ``median`` and ``quantile`` keep the raw values of open
        windows in state (bounded by the open windows); every other aggregation keeps a few numbers
        per key and window. With ``emit: on_update`` a session that merges with another is
        re-emitted under its new start, so the sink should key on (keys, window_start) and tolerate
        superseded sessions.

        Args:
            time_column: Column holding each record's event time. Required.
            max_out_of_orderness: How far behind the newest event time a record may still arrive
                (e.g. `5s`). The watermark is the max event time seen minus this.
            allowed_lateness: Extra time, beyond the watermark, for which closed results still
                accept records; older records are dead-lettered with reason `late`.
            idle_timeout: When no record arrives for this long (wall clock), the watermark moves
                past every open window, so the last windows of a quiet stream close (records for
                them that come later are late). Replays are unaffected: their records arrive
                without pauses.
            kind: `tumbling`: fixed, non-overlapping windows of `size`; `sliding`: windows of
                `size` starting every `slide`; `session`: per key, records closer than `gap` share
                a window.
            size: Window length (tumbling, sliding). Default: $WINDOW_SIZE (a bare number there is
                seconds: `WINDOW_SIZE=60` is `60s`).
            slide: Sliding: distance between starts.
            gap: Session: inactivity that ends it.
            keys: Columns to window by, if any. Default: ``[]``.
            aggregations: Output column -> `func(column)`: count() / count(col), sum, mean, min,
                max, first, last, stddev, variance, count_distinct, median, quantile(col, q).
                Default: $AGGREGATION_TYPE (or mean) of each of `columns`, or count(). Default:
                ``{}``.
            columns: Columns aggregated with $AGGREGATION_TYPE when `aggregations` is omitted.
                Default: ``[]``.
            emit: `on_close`: one final row per window when it closes; `on_update`: after each
                batch, the current row of every window the batch changed (for upserts).
            name: Unique name; defaults to the type.
            input: Where records come from: a source, step, or `step.port`; several names merge
                their records. Defaults to the previous step (or all sources).
        """
        settings = _given(StepMethods.window, locals(), skip=_STEP_ENVELOPE)
        return self.step("window", name, input, **settings)


__all__ = [
    "NOT_GIVEN",
    "AlertSettings",
    "AuthConfig",
    "CheckpointSettings",
    "ColumnModel",
    "CsvReadOptions",
    "CsvWriteOptions",
    "EmitEvery",
    "IncrementalConfig",
    "IndexModel",
    "NotGiven",
    "NotifySettings",
    "OnErrorSettings",
    "PaginationConfig",
    "PartitionedBy",
    "PipelineSettings",
    "RateLimitConfig",
    "RetryConfig",
    "RetryPolicy",
    "ScheduleSettings",
    "StepMethods",
    "TlsSettings",
    "amqp",
    "file",
    "generate",
    "http",
    "influxdb",
    "kafka",
    "mqtt",
    "redis",
    "redis_streams",
    "sql",
    "stdout",
    "topic",
    "webhook",
]
