"""The ``webhook`` source: an HTTP endpoint that receives JSON or NDJSON posts.

A post is answered only once its records are **durable**: the handler thread holds the
request open until the engine's checkpoint covering those records is stored and the sinks
have committed (:meth:`WebhookSource.checkpointed`). Then the sender gets ``200``. A sender
that gets anything else (or no answer, because the process died) sends again, so nothing
acknowledged is ever lost. While senders wait, the engine checkpoints as soon as
``checkpoint.min_interval`` allows (:meth:`WebhookSource.awaiting_ack`), so a post is
answered within about one checkpoint, and concurrent posts share it (group commit).

A resend after a crash between checkpoint and answer is a duplicate, so delivery is at least
once; with ``idempotency_header`` (the delivery id most senders put on every post) it is
exactly once: the source remembers the ids it took (:mod:`.delivery_ids`) and answers a
repeat with ``200`` without taking its records again.

Back-pressure: while more than ``max_pending`` records wait for their checkpoint, or the
oldest post has waited longer than ``max_pending_seconds`` for it, new posts get ``429`` with
``Retry-After`` at once instead of a long wait the sender would give up on.
Authentication: a shared secret in a header, or an HMAC-SHA256 signature of the body
(``sha256=<hex>``, as GitHub and many others send it).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import orjson
import polars as pl
from pydantic import Field

from tideflow.connectors.files.paths import safe_name
from tideflow.connectors.http.delivery_ids import DeliveryIds
from tideflow.core.contracts import (
    JSON,
    MAX_RECORD_BYTES,
    Context,
    Source,
    SourceBatch,
    long_record_letter,
    raw_dead_letters,
)
from tideflow.core.settings import Settings
from tideflow.errors import StateError, TerminalError
from tideflow.registry import component
from tideflow.secrets import register_secret


class WebhookConfig(Settings):
    """Settings of the ``webhook`` source."""

    host: str = Field("127.0.0.1", description="Address to listen on (`0.0.0.0`: all).")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0: any free one).")
    path: str = Field("/", description="URL path that accepts posts; others get 404.")
    format: Literal["auto", "json", "ndjson"] = Field(
        "auto",
        description="`json` (an object or an array of objects), `ndjson` (one object per "
        "line) or `auto` (by Content-Type, then by content).",
    )
    secret: str | None = Field(
        None, description="Shared secret the sender puts in `secret_header` (use `${ENV}`)."
    )
    secret_header: str = Field("X-Webhook-Token", description="Header carrying `secret`.")
    hmac_secret: str | None = Field(
        None, description="Key of an HMAC-SHA256 signature of the body (use `${ENV}`)."
    )
    signature_header: str = Field(
        "X-Signature-256", description="Header carrying `sha256=<hex digest>`."
    )
    max_pending: int = Field(
        10_000,
        ge=1,
        description="Records waiting for their checkpoint before new posts get 429.",
    )
    max_pending_seconds: float = Field(
        2.0,
        gt=0,
        description="New posts get 429 while the oldest post waiting for its checkpoint has "
        "waited longer than this (the pipeline is not keeping up): keep it well below "
        "senders' timeouts (often 5-10 s).",
    )
    idempotency_header: str | None = Field(
        None,
        description="Header carrying the sender's delivery id (`X-GitHub-Delivery`, "
        "`Idempotency-Key`, ...): a post repeating the id of one already taken is answered "
        "200 without taking its records again (exactly once for senders that resend).",
    )
    idempotency_retention: float = Field(
        86_400.0,
        gt=0,
        description="Seconds a delivery id is remembered after its post was taken (kept in "
        "a SQLite file beside the state store).",
    )
    max_body_bytes: int = Field(10_000_000, ge=1, description="Larger posts are refused with 413.")
    max_record_bytes: int = Field(
        MAX_RECORD_BYTES,
        ge=1024,
        description="Longest record of a post (an NDJSON line, an array element); a longer "
        "one is dead-lettered with the post's number and its size, the rest of the post is "
        "taken. (Bodies are limited by `max_body_bytes` first.)",
    )
    batch_size: int = Field(5_000, ge=1, description="Most records handed on per batch.")
    max_wait: float = Field(
        0.2, gt=0, description="Seconds a read waits for posts before handing on what it has."
    )
    ack_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a sender is kept waiting for the checkpoint; then 503 (it "
        "should send again).",
    )
    retry_after: int = Field(1, ge=0, description="`Retry-After` seconds sent with 429.")


@dataclass
class _Post:
    """One accepted post: its records and the event its handler waits on."""

    seq: int
    records: list[dict[str, Any]]
    key: str | None = None
    """The sender's delivery id (``idempotency_header``)."""
    received: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    dead: list[tuple[str, str]] = field(default_factory=list)
    """(record, reason) of records too long to take."""


@dataclass
class _Accepted:
    """What a handler waits on: its own post, or the post whose delivery id it repeats."""

    post: _Post
    duplicate: bool = False


class _Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_records(
    body: bytes, content_type: str, fmt: str, max_record_bytes: int | None = None
) -> tuple[list[dict[str, Any]], list[tuple[str, int, bytes]]]:
    """Records from a JSON object, a JSON array of objects, or NDJSON lines; and (where in
    the post, size, first bytes) of each record longer than ``max_record_bytes``, left out.
    Only a body longer than the limit can hold such a record, so others are not measured."""
    kind = fmt
    if kind == "auto":
        kind = "ndjson" if "ndjson" in content_type or "jsonl" in content_type else "json"
    limit = (
        max_record_bytes if max_record_bytes is not None and len(body) > max_record_bytes else None
    )
    long: list[tuple[str, int, bytes]] = []
    try:
        if kind == "json":
            try:
                value = orjson.loads(body)
            except orjson.JSONDecodeError as not_json:
                if fmt == "auto" and b"\n" in body.strip():
                    # Perhaps an NDJSON body sent as application/json.
                    try:
                        return parse_records(body, "", "ndjson", max_record_bytes)
                    except _Rejected:
                        pass
                # The sender said JSON: the error speaks of JSON, not of the NDJSON tried.
                raise _Rejected(400, f"the body is not valid JSON: {not_json}") from not_json
            items = value if isinstance(value, list) else [value]
            if limit is not None:
                kept = []
                for i, item in enumerate(items):
                    text = orjson.dumps(item)
                    if len(text) > limit:
                        long.append((f"element {i}", len(text), text[:256]))
                    else:
                        kept.append(item)
                items = kept
        else:
            lines = [line for line in body.splitlines() if line.strip()]
            if limit is not None:
                long = [
                    (f"line {i + 1}", len(x), x[:256])
                    for i, x in enumerate(lines)
                    if len(x) > limit
                ]
                lines = [x for x in lines if len(x) <= limit]
            items = [orjson.loads(line) for line in lines]
    except orjson.JSONDecodeError as exc:
        raise _Rejected(400, f"the body is not valid {kind.upper()}: {exc}") from exc
    if not all(isinstance(item, dict) for item in items):
        raise _Rejected(400, "every record must be a JSON object")
    return items, long


@component("source", "webhook")
class WebhookSource(Source[WebhookConfig]):
    """Receive records posted over HTTP; answer each post once its records are durable."""

    config_model = WebhookConfig
    bounded = False
    replays_without_state = False  # senders resend only what was not answered

    def __init__(self, config: WebhookConfig) -> None:
        super().__init__(config)
        self._lock = threading.Condition()
        self._queue: deque[_Post] = deque()
        self._waiting: dict[int, _Post] = {}  # handed to the engine, not yet durable
        self._pending = 0  # records in _queue and _waiting
        self._seq = 0  # the last sequence number given to a post
        self._handed = 0  # the last one handed to the engine: the position
        self._committed = 0  # the last one a checkpoint covers
        self._by_key: dict[str, _Post] = {}  # posts with a delivery id, not yet durable
        self._ids: DeliveryIds | None = None
        self._closed = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.refused = 0
        self.accepted = 0
        self.duplicates = 0

    @property
    def url(self) -> str:
        """The endpoint's URL (with the port actually bound)."""
        assert self._server is not None, "open() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self.config.path}"

    @property
    def pending(self) -> int:
        """Records received and not yet covered by a checkpoint."""
        with self._lock:
            return self._pending

    def open(self, ctx: Context, position: JSON | None) -> None:
        """Start listening. ``position`` only carries the sequence number on, so positions
        keep growing across restarts (posts themselves cannot be replayed: unanswered senders
        send again)."""
        cfg = self.config
        if position is not None:
            if not isinstance(position, dict) or not isinstance(position.get("seq"), int):
                raise StateError(
                    f"webhook source {ctx.name!r}: the stored position {position!r} is not a "
                    "webhook position; was the source type changed? Reset the pipeline's state"
                )
            self._seq = self._handed = self._committed = position["seq"]
        if cfg.idempotency_header:
            scope = "" if ctx.scope == "main" else f"-{safe_name(ctx.scope)}"
            path = ctx.state_dir / (
                f"webhook-{safe_name(ctx.pipeline)}-{safe_name(ctx.name)}{scope}.ids.db"
            )
            self._ids = DeliveryIds(path, cfg.idempotency_retention, self._committed)
        for secret in (cfg.secret, cfg.hmac_secret):
            if secret:
                register_secret(secret)
        handler = type("Handler", (_Handler,), {"source": self})
        try:
            self._server = _Server((cfg.host, cfg.port), handler)
        except OSError as exc:
            raise TerminalError(
                f"webhook source {ctx.name!r}: cannot listen on {cfg.host}:{cfg.port}: {exc}"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"webhook-{ctx.name}",
            daemon=True,
        )
        self._thread.start()
        ctx.log.info("webhook listening on %s", self.url)

    def read_batch(self) -> SourceBatch | None:
        """Records of the posts received so far (up to ``batch_size``, whole posts), or an
        empty batch after ``max_wait`` seconds without posts."""
        limit = self.config.batch_size
        taken: list[_Post] = []
        with self._lock:
            if not self._queue:
                self._lock.wait(self.config.max_wait)
            count = 0
            while self._queue and (not taken or count + len(self._queue[0].records) <= limit):
                post = self._queue.popleft()
                taken.append(post)
                count += len(post.records)
                self._waiting[post.seq] = post
                self._handed = post.seq
            position = {"seq": self._handed}
        if self._ids is not None:
            # Durable before the engine sees the posts, so before any checkpoint covers them.
            now = time.time()
            self._ids.remember((p.key, p.seq, now) for p in taken if p.key is not None)
        records = [r for post in taken for r in post.records]
        data = pl.from_dicts(records, infer_schema_length=None) if records else pl.DataFrame()
        letters = [letter for post in taken for letter in post.dead]
        dead = None
        if letters:
            dead = raw_dead_letters([r for r, _ in letters], [why for _, why in letters])
        return SourceBatch(data, position, dead)

    def awaiting_ack(self) -> bool:
        """Senders of posts handed to the engine wait for their answer."""
        with self._lock:
            return bool(self._waiting)

    def checkpointed(self, position: JSON | None) -> None:
        """Everything up to ``position`` is durable: answer those senders with 200."""
        if not isinstance(position, dict):
            return
        upto = position.get("seq")
        if not isinstance(upto, int):
            return
        with self._lock:
            self._committed = max(self._committed, upto)
            done = [seq for seq in self._waiting if seq <= upto]
            posts = [self._waiting.pop(seq) for seq in done]
            self._pending -= sum(len(p.records) for p in posts)
            for post in posts:
                if post.key is not None:
                    del self._by_key[post.key]
        for post in posts:
            post.ok = True
            post.done.set()

    def close(self) -> None:
        """Stop listening; senders still waiting get 503 and send again."""
        with self._lock:
            self._closed = True
            unanswered = list(self._queue) + list(self._waiting.values())
            self._queue.clear()
            self._waiting.clear()
            self._by_key.clear()
            self._pending = 0
            self._lock.notify_all()
        for post in unanswered:
            post.done.set()
        if self._ids is not None:
            self._ids.close()
            self._ids = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def report(self) -> dict[str, JSON] | None:
        """Posts accepted and refused (429/401/400...), for the run summary."""
        if not (self.accepted or self.refused):
            return None
        report: dict[str, JSON] = {"posts accepted": self.accepted, "posts refused": self.refused}
        if self.duplicates:
            report["repeated deliveries"] = self.duplicates
        return report

    # -- called by the handler threads ----------------------------------------------------

    def receive(self, headers: Any, body: bytes) -> _Accepted:
        """Check and queue a post; raises :class:`_Rejected` with the status to answer."""
        cfg = self.config
        if cfg.secret is not None:
            given = headers.get(cfg.secret_header) or ""
            if not hmac.compare_digest(given.encode(), cfg.secret.encode()):
                raise _Rejected(401, f"missing or wrong {cfg.secret_header}")
        if cfg.hmac_secret is not None:
            given = (headers.get(cfg.signature_header) or "").removeprefix("sha256=")
            expected = hmac.new(cfg.hmac_secret.encode(), body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(given.encode(), expected.encode()):
                raise _Rejected(401, f"missing or wrong {cfg.signature_header}")
        key = headers.get(cfg.idempotency_header) if cfg.idempotency_header else None
        if key is not None:
            repeated = self._repeated(key)
            if repeated is not None:
                return repeated
        records, long = parse_records(
            body, headers.get("Content-Type") or "", cfg.format, cfg.max_record_bytes
        )
        with self._lock:
            if self._closed:
                raise _Rejected(503, "the pipeline is stopping; send again later")
            if key is not None:
                # The same delivery may have come in while this one was parsed.
                repeated = self._repeated_locked(key)
                if repeated is not None:
                    return repeated
            self._admit(len(records))
            self._seq += 1
            carries = bool(records or long)  # records, or dead letters of too long ones
            post = _Post(self._seq, records, key if carries else None)
            post.dead = [
                long_record_letter(
                    f"webhook post {post.seq} {where}", size, head, cfg.max_record_bytes
                )
                for where, size, head in long
            ]
            if carries:
                self._pending += len(records)
                self._queue.append(post)
                if post.key is not None:
                    self._by_key[post.key] = post
                self._lock.notify_all()
            else:
                post.ok = True
                post.done.set()
        return _Accepted(post)

    def _repeated(self, key: str) -> _Accepted | None:
        with self._lock:
            return self._repeated_locked(key)

    def _repeated_locked(self, key: str) -> _Accepted | None:
        """A post repeating delivery ``key``: it waits for the original's answer while that
        is not durable, and is answered at once when a checkpoint covers the original."""
        if self._closed or self._ids is None:
            raise _Rejected(503, "the pipeline is stopping; send again later")
        waiting = self._by_key.get(key)
        if waiting is not None:
            return _Accepted(waiting, duplicate=True)
        if self._ids.taken(key, self._committed):
            done = _Post(0, [], key, ok=True)
            done.done.set()
            return _Accepted(done, duplicate=True)
        return None

    def _admit(self, count: int) -> None:
        """Refuse a post of ``count`` records with 429 when the pipeline is not keeping up:
        a sender told to come back later beats one that times out (and sends again).

        The age of the oldest waiting post is the signal: with group commit a post waits
        about one checkpoint, so a post that has waited ``max_pending_seconds`` means the
        sinks are slower than the arrivals. (A rate of records per second would not do:
        what a checkpoint costs depends as much on how many posts it answers as on how
        many records they hold.)"""
        if not self._pending:
            return
        cfg = self.config
        if self._pending + count > cfg.max_pending:
            raise _Rejected(429, "too many records waiting for their checkpoint")
        oldest = next(iter(self._waiting.values()), None) or self._queue[0]
        waited = time.monotonic() - oldest.received
        if waited > cfg.max_pending_seconds:
            raise _Rejected(429, f"the oldest post has waited {waited:.1f} s for its checkpoint")


class _Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    source: WebhookSource
    protocol_version = "HTTP/1.1"
    # The answer goes out as headers then body: with Nagle's algorithm the body waits for
    # the client's delayed ACK of the headers (some 40 ms per post).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet (the run summary counts posts)."""

    def _reply(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        source = self.source
        cfg = source.config
        if self.path.split("?", 1)[0] != cfg.path:
            self._reply(404, {"error": f"post to {cfg.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > cfg.max_body_bytes:
            source.refused += 1
            self.close_connection = True
            self._reply(413, {"error": f"body larger than {cfg.max_body_bytes} bytes"})
            return
        body = self.rfile.read(length) if length else b""
        try:
            accepted = source.receive(self.headers, body)
        except _Rejected as exc:
            source.refused += 1
            headers = {"Retry-After": str(cfg.retry_after)} if exc.status == 429 else None
            self._reply(exc.status, {"error": str(exc)}, headers)
            return
        post = accepted.post
        if post.done.wait(cfg.ack_timeout) and post.ok:
            if accepted.duplicate:
                source.duplicates += 1
                self._reply(200, {"accepted": 0, "duplicate": True})
                return
            source.accepted += 1
            self._reply(200, {"accepted": len(post.records)})
        else:
            source.refused += 1
            self._reply(503, {"error": "not yet durable; send again"})
