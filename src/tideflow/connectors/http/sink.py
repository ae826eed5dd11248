"""The ``http`` sink: send records to an API, one per request or as JSON arrays.

What a response means:

- 2xx: delivered.
- a retryable status (429, 5xx, see ``retry.statuses``) or no response at all: retried with
  backoff; still failing after ``retry.max_attempts``, the run fails (the records are not
  lost: the run resumes from the last checkpoint and sends them again).
- any other status (400, 404, 422...): the receiver rejected *these* records, so the rows of
  that request go to the dead-letter ledger with the status and the start of the response
  body as the reason, and the run goes on.

Delivery is **at least once**. Requests are sent in ``write_batch`` so that a record the
receiver still rejects after retries can be returned as a dead letter (with the status code and
response body) in the same checkpoint as the records around it. A crash after a request and
before the next checkpoint replays those records on restart, so the receiver may see them
twice; ``idempotency_header`` sends a key derived from the records themselves (stable across
replays) so receivers that de-duplicate can drop the repeat.
"""

from __future__ import annotations

import hashlib

import orjson
import polars as pl

from tideflow.connectors.http.client import (
    ClientLifecycle,
    HttpClient,
    describe_failure,
    has_placeholders,
    render,
)
from tideflow.connectors.http.settings import HttpSinkConfig
from tideflow.core.contracts import JSON, Context, Sink, dead_letters
from tideflow.errors import TerminalError, TransientError
from tideflow.registry import component


def row_json(frame: pl.DataFrame) -> list[str]:
    """Each row as JSON text, encoded by Polars (dates and times become ISO-8601 strings)."""
    if frame.width == 0:
        return ["{}"] * frame.height
    return frame.select(pl.struct(pl.all()).struct.json_encode()).to_series().to_list()


def idempotency_key(rows: list[str]) -> str:
    """SHA-256 over the JSON of the rows in a request: the same records give the same key."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row.encode())
        digest.update(b"\n")
    return digest.hexdigest()


@component("sink", "http")
class HttpSink(Sink[HttpSinkConfig]):
    """POST (or PUT, PATCH...) records to an HTTP endpoint, with rate limits and retries."""

    config_model = HttpSinkConfig

    def __init__(self, config: HttpSinkConfig) -> None:
        super().__init__(config)
        self._http = ClientLifecycle()
        self._ctx: Context | None = None
        self._templated_url = has_placeholders(config.url)

    @property
    def client(self) -> HttpClient | None:
        """The HTTP client while open (it counts requests and retries)."""
        return self._http.client

    def report(self) -> dict[str, JSON] | None:
        """Requests sent and retried, for the run summary."""
        return self._http.figures() or None

    def open(self, ctx: Context, pending: JSON | None) -> None:
        """Create the client; nothing is pending, as requests are sent as batches arrive.

        The client is not interrupted by a stop request: a batch the engine hands over is
        sent (or fails) before the checkpoint that covers it.
        """
        cfg = self.config
        self._ctx = ctx
        if cfg.batch_size > 1 and has_placeholders(cfg.url):
            raise TerminalError(
                "http sink: `url` placeholders need `batch_size: 1` (one record per request)"
            )
        headers = {"Content-Type": "application/json", **cfg.headers}
        self._http.open(cfg, None, headers, workers=f"http-sink-{ctx.name}")

    def close(self) -> None:
        """Stop the worker threads and close connections."""
        self._http.close()

    def write_batch(self, batch: pl.DataFrame) -> pl.DataFrame | None:
        """Send the batch; the rows of requests the receiver rejected (4xx) come back as dead
        letters, with the status and the start of the response body as the reason."""
        pool = self._http.pool
        assert pool is not None
        cfg = self.config
        if cfg.idempotency_columns:
            missing = [c for c in cfg.idempotency_columns if c not in batch.columns]
            if missing:
                raise TerminalError(
                    f"http sink: idempotency_columns not in the batch: {', '.join(missing)}; "
                    f"columns: {', '.join(batch.columns)}"
                )
        rows = row_json(batch)
        chunks = [
            list(range(start, min(start + cfg.batch_size, len(rows))))
            for start in range(0, len(rows), cfg.batch_size)
        ]
        key_rows = rows
        if cfg.idempotency_header and cfg.idempotency_columns:
            key_rows = row_json(batch.select(cfg.idempotency_columns))
        results = list(pool.map(lambda c: self._send(c, rows, key_rows), chunks))
        failed: list[int] = []
        reasons: list[str] = []
        for chunk, reason in zip(chunks, results, strict=True):
            if reason is not None:
                failed.extend(chunk)
                reasons.extend([reason] * len(chunk))
        if not failed:
            return None
        return dead_letters(batch[failed], pl.lit(pl.Series(reasons, dtype=pl.String)))

    def _send(self, chunk: list[int], rows: list[str], key_rows: list[str]) -> str | None:
        """Send one request; None on success, the dead-letter reason on a client error.

        Raises :class:`TransientError` when the receiver still fails (5xx, 429, no response)
        after every retry.
        """
        cfg = self.config
        texts = [rows[i] for i in chunk]
        headers: dict[str, str] = {}
        if cfg.idempotency_header:
            headers[cfg.idempotency_header] = idempotency_key([key_rows[i] for i in chunk])
        if cfg.batch_size == 1:
            url = cfg.url
            content = texts[0].encode()
            if self._templated_url or cfg.body is not None:
                record = orjson.loads(texts[0])
                url = render(cfg.url, record)
                if cfg.body is not None:
                    content = orjson.dumps(render(cfg.body, record))
        else:
            url = cfg.url
            if cfg.body is None:
                content = ("[" + ",".join(texts) + "]").encode()
            else:
                content = orjson.dumps([render(cfg.body, orjson.loads(t)) for t in texts])
        response = self._http.opened().send(cfg.method, url, content=content, headers=headers)
        if response.ok:
            return None
        reason = describe_failure(response, cfg.max_body_chars)
        if response.status_code in cfg.retry.statuses or response.status_code >= 500:
            raise TransientError(
                f"http sink: {reason} (still failing after {cfg.retry.max_attempts} attempts; "
                "the run resumes from its last checkpoint and sends these records again)"
            )
        return reason
