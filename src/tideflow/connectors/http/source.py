"""The ``http`` source: paginated, rate-limited, incremental REST extraction.

One batch per page. The position returned with each page is

``{"since": <cursor sent this sweep>, "seen": <largest field value so far>, "next": <paging
state of the next request, or null between sweeps>}``

so a crash in the middle of paging resumes at the page after the last one processed, and the
incremental cursor (``since``) moves to ``seen`` only once the sweep that covered it has been
read to the end.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

import orjson
import polars as pl

from tideflow.connectors.http import pagination
from tideflow.connectors.http.client import (
    ClientLifecycle,
    HttpClient,
    Interrupted,
    Response,
    describe_failure,
    dig,
    render,
)
from tideflow.connectors.http.settings import HttpSourceConfig
from tideflow.core.contracts import JSON, Context, Source, SourceBatch, raw_dead_letters
from tideflow.errors import StateError, TerminalError, TransientError
from tideflow.registry import component
from tideflow.secrets import redact

ALWAYS_FAIL = (401, 403, 407, 429)
"""Statuses that are not about one page (credentials, rate limits): never skipped."""

EXCERPT = 500
"""Characters of a broken page's body kept in its dead letter."""


class _BrokenPage(TerminalError):
    """One page cannot be used; with ``on_error: skip`` it is dead-lettered. ``transient``:
    the server kept answering a status worth retrying (a restart may get past it)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def records_frame(records: list[Any], flatten: bool) -> pl.DataFrame:
    """A page's records as a DataFrame (objects become rows, scalars a ``value`` column)."""
    if not records:
        return pl.DataFrame()
    rows = [r if isinstance(r, dict) else {"value": r} for r in records]
    try:
        if flatten:
            return pl.json_normalize(rows, infer_schema_length=None)
        return pl.from_dicts(rows, infer_schema_length=None)
    except pl.exceptions.PolarsError as exc:
        raise _BrokenPage(
            "the records of one page do not share a schema (a field holds a list in one "
            f"record and text in another?): {str(exc).splitlines()[0]}"
        ) from exc


def _larger(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    try:
        return b if b > a else a
    except TypeError as exc:
        raise TerminalError(
            f"incremental field values {a!r} and {b!r} cannot be compared; the field must "
            "hold one type (numbers or ISO-8601 text)"
        ) from exc


@component("source", "http")
class HttpSource(Source[HttpSourceConfig]):
    """Read records from a REST API: pagination, auth, rate limits, retries, incremental."""

    config_model = HttpSourceConfig

    def __init__(self, config: HttpSourceConfig) -> None:
        super().__init__(config)
        self.bounded = config.poll_interval is None
        # Without an incremental cursor every sweep reads everything anyway.
        self.replays_without_state = config.incremental is not None
        self._ctx: Context | None = None
        self._http = ClientLifecycle()
        self._since: Any = None
        self._seen: Any = None
        self._next: dict[str, Any] | None = None
        self._pages = 0
        self._swept = False
        self._records = 0
        self._start_since: Any = None
        self._broken_in_a_row = 0
        self._skipped_pages = 0

    @property
    def client(self) -> HttpClient | None:
        """The HTTP client while open (it counts requests and retries)."""
        return self._http.client

    def report(self) -> dict[str, JSON] | None:
        """Requests sent and retried (and pages skipped), for the run summary."""
        figures = self._http.figures()
        if self._skipped_pages:
            figures["pages skipped"] = self._skipped_pages
        return figures or None

    def open(self, ctx: Context, position: JSON | None) -> None:
        """Resume from ``position``: in the middle of a sweep, or between sweeps."""
        self._ctx = ctx
        cfg = self.config
        self._since = cfg.incremental.initial if cfg.incremental else None
        if position is not None:
            if not isinstance(position, dict) or not {"since", "seen", "next"} <= set(position):
                raise StateError(
                    f"http source {ctx.name!r}: the stored position {position!r} is not an "
                    "http position; was the source type changed? Reset the pipeline's state"
                )
            self._since, self._seen, self._next = (
                position["since"],
                position["seen"],
                position["next"],
            )
        self._start_since = self._since if position is not None else None
        self._http.open(cfg, ctx.stop_event, cfg.headers, cfg.params)

    def close(self) -> None:
        """Close connections."""
        self._http.close()

    def notices(self) -> list[str]:
        """Why an incremental run read nothing: the API has no record newer than the cursor
        earlier runs reached."""
        inc = self.config.incremental
        if inc is None or self._records or self._start_since is None:
            return []
        return [
            f"the API returned no record newer than {inc.param}={self._start_since!r}, where "
            "earlier runs left the cursor (`tideflow state reset` reads everything again)"
        ]

    def position(self) -> JSON:
        """Where the source stands now."""
        return {"since": self._since, "seen": self._seen, "next": self._next}

    def read_batch(self) -> SourceBatch | None:
        """Fetch one page; its records with the position after it.

        A stop request while a request waits (rate limit, backoff) returns an empty batch at
        the unchanged position, so the engine can drain and checkpoint promptly.
        """
        assert self._ctx is not None
        if self._next is None:
            if self._swept:
                if self.bounded:
                    return None
                if self._ctx.wait(self.config.poll_interval or 0):
                    return SourceBatch(pl.DataFrame(), self.position())
            self._next = pagination.first_state(self.config.pagination)
            self._seen = None
            self._pages = 0
        try:
            return self._fetch(self._next)
        except Interrupted:
            return SourceBatch(pl.DataFrame(), self.position())

    def _fetch(self, state: dict[str, Any]) -> SourceBatch:
        cfg = self.config
        url = state.get("url") or cfg.url
        params = {} if "url" in state else dict(cfg.params)
        params.update(pagination.request_params(cfg.pagination, state))
        body = None
        values = pagination.template_values(cfg.pagination, state)
        values["since"] = self._since
        if cfg.body is not None:
            body = render(cfg.body, values)
        inc = cfg.incremental
        if inc is not None and self._since is not None:
            if inc.send_in == "query":
                params[inc.param] = self._since
            else:
                body = {**(body if isinstance(body, dict) else {}), inc.param: self._since}
        response = self._http.opened().send(cfg.method, url, params=params, json=body)
        try:
            self._check(response)
            try:
                payload = response.json()
            except ValueError as exc:
                raise _BrokenPage(
                    redact(f"{cfg.method} {response.url} did not return JSON: {exc}")
                ) from exc
            found = pagination_records(payload, cfg.records_path, response.url)
            frame = records_frame(found, cfg.flatten)
        except _BrokenPage as exc:
            if cfg.on_error == "skip":
                return self._skip(state, response, exc)
            hint = ""
            if cfg.pagination.style not in ("cursor", "next_url"):
                hint = (
                    "; `on_error: skip` on the http source dead-letters a broken page and goes on"
                )
            error = TransientError if exc.transient else TerminalError
            raise error(f"{exc}{hint}") from exc
        self._broken_in_a_row = 0
        self._records += frame.height
        if inc is not None and frame.height:
            if inc.field not in frame.columns:
                raise TerminalError(
                    f"incremental field {inc.field!r} is not in the records from {cfg.url}; "
                    f"columns: {', '.join(frame.columns)}"
                )
            self._seen = _larger(self._seen, frame.get_column(inc.field).max())
        self._pages += 1
        nxt = pagination.next_state(
            cfg.pagination, state, payload, response.headers, len(found), self._pages
        )
        if nxt is not None and "url" in nxt:
            nxt = {"url": urljoin(response.url, nxt["url"])}
        if nxt is not None and nxt == state:
            raise TerminalError(
                redact(
                    f"{cfg.url}: the response names the page just read ({state}) as the next "
                    "one; paging would never end. Check `pagination` (style, cursor_path, "
                    "next_url_path) against the API's documentation"
                )
            )
        self._next = nxt
        if nxt is None:  # the sweep is complete: the cursor may now cover what it read
            self._since = _larger(self._since, self._seen)
            self._seen = None
            self._swept = True
        return SourceBatch(frame, self.position())

    def _check(self, response: Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        message = describe_failure(response, 300)
        if status in self.config.retry.statuses:
            text = (
                f"{message} (still failing after {self.config.retry.max_attempts} attempts; "
                "the run can be restarted and resumes at this page)"
            )
            if status in ALWAYS_FAIL:
                raise TransientError(text)
            raise _BrokenPage(text, transient=True)
        hint = " (check `auth`)" if status in (401, 403) else ""
        if status in ALWAYS_FAIL:
            raise TerminalError(message + hint)
        raise _BrokenPage(message)

    def _skip(self, state: dict[str, Any], response: Response, exc: Exception) -> SourceBatch:
        """``on_error: skip``: dead-letter the broken page and go on with the next one, when
        it is known without the page's body."""
        cfg = self.config
        self._pages += 1
        known, nxt = pagination.next_state_without_body(
            cfg.pagination, state, response.headers, response.ok, self._pages
        )
        if not known:
            raise TerminalError(
                f"{exc}; on_error: skip cannot go past this page: with `link_header` paging "
                "the next page is named by a Link header, and this response has none"
            ) from exc
        self._broken_in_a_row += 1
        if self._broken_in_a_row > cfg.skip_limit:
            raise TerminalError(
                f"{exc}; that is {self._broken_in_a_row} broken pages in a row (skip_limit "
                f"{cfg.skip_limit}): the API is failing, not one page of it"
            ) from exc
        if nxt is not None and "url" in nxt:
            nxt = {"url": urljoin(response.url, nxt["url"])}
        self._skipped_pages += 1
        body = response.text
        excerpt = body[:EXCERPT] + ("..." if len(body) > EXCERPT else "")
        record = {
            "url": response.url,
            "status": response.status_code,
            "page": state,
            "bytes": len(response.content),
            "body": excerpt,
        }
        reason = f"page skipped (on_error: skip): {exc}"
        dead = raw_dead_letters([redact(orjson.dumps(record).decode())], [redact(reason)])
        self._next = nxt
        if nxt is None:  # that was the last page: the sweep is complete
            self._since = _larger(self._since, self._seen)
            self._seen = None
            self._swept = True
        return SourceBatch(pl.DataFrame(), self.position(), dead)


def pagination_records(payload: Any, path: str | None, url: str) -> list[Any]:
    """The record list at ``path`` (a single object counts as one record)."""
    found = dig(payload, path) if path else payload
    if found is None:  # an empty last page often leaves the key out
        return []
    if isinstance(found, dict):
        return [found]
    if not isinstance(found, list):
        raise _BrokenPage(
            f"records_path {path!r} in the response from {redact(url)} is a "
            f"{type(found).__name__}, not a list of records"
        )
    return found
