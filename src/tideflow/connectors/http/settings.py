"""Settings shared by the ``http`` source, the ``http`` sink and the ``http_enrich`` step."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tideflow.core.settings import Settings

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

RETRY_STATUSES = (408, 425, 429, 500, 502, 503, 504)
"""Statuses retried by default: timeouts, rate limits and server errors."""


class AuthConfig(Settings):
    """How requests authenticate. Secret values should come from `${ENV}` variables; they are
    never printed."""

    type: Literal["none", "bearer", "basic", "api_key", "oauth2"] = Field(
        "none",
        description="`bearer` (token), `basic` (username/password), `api_key` (header or query "
        "parameter) or `oauth2` (client credentials, refreshed before it expires).",
    )
    token: str | None = Field(None, description="Bearer token (`type: bearer`).")
    username: str | None = Field(None, description="User name (`type: basic`).")
    password: str | None = Field(None, description="Password (`type: basic`).")
    api_key: str | None = Field(None, description="The key (`type: api_key`).")
    key_name: str = Field(
        "X-API-Key", description="Header or query parameter that carries the API key."
    )
    key_in: Literal["header", "query"] = Field(
        "header", description="Send the API key as a `header` or a `query` parameter."
    )
    token_url: str | None = Field(None, description="OAuth2 token endpoint (`type: oauth2`).")
    client_id: str | None = Field(None, description="OAuth2 client id.")
    client_secret: str | None = Field(None, description="OAuth2 client secret.")
    scope: str | None = Field(None, description="OAuth2 scope, if the server wants one.")

    @model_validator(mode="after")
    def _complete(self) -> AuthConfig:
        needed = {
            "none": (),
            "bearer": ("token",),
            "basic": ("username", "password"),
            "api_key": ("api_key",),
            "oauth2": ("token_url", "client_id", "client_secret"),
        }[self.type]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"auth type {self.type!r} needs: {', '.join(missing)}")
        return self


class RateLimitConfig(Settings):
    """Client-side request budget, shared by every request the component makes."""

    requests_per_second: float | None = Field(
        None, gt=0, description="At most this many requests per second."
    )
    requests_per_minute: float | None = Field(
        None, gt=0, description="At most this many requests per minute."
    )
    concurrency: int = Field(
        1,
        ge=1,
        le=256,
        description="Requests in flight at once (sink and enrich; a source pages one "
        "request at a time because each page names the next).",
    )

    @property
    def interval(self) -> float:
        """Minimum seconds between request starts (0 when unlimited)."""
        gaps = [0.0]
        if self.requests_per_second:
            gaps.append(1.0 / self.requests_per_second)
        if self.requests_per_minute:
            gaps.append(60.0 / self.requests_per_minute)
        return max(gaps)


class RetryConfig(Settings):
    """Retries with exponential backoff and jitter; `Retry-After` is honoured."""

    max_attempts: int = Field(6, ge=1, description="Attempts per request, the first included.")
    backoff: float = Field(0.2, ge=0, description="First backoff in seconds; doubles each time.")
    max_backoff: float = Field(30.0, ge=0, description="Longest single wait in seconds.")
    jitter: float = Field(
        0.5, ge=0, le=1, description="Random share of each wait (0.5: between 50% and 100%)."
    )
    statuses: list[int] = Field(
        list(RETRY_STATUSES), description="HTTP statuses retried; timeouts always are."
    )
    timeout: float = Field(30.0, gt=0, description="Seconds before one request times out.")


class PaginationConfig(Settings):
    """How the source walks pages, and when it stops."""

    style: Literal["none", "page", "offset", "cursor", "next_url", "link_header"] = Field(
        "none",
        description="`page` (page number), `offset` (offset/limit), `cursor` (a cursor in the "
        "body sent back as a parameter), `next_url` (a URL in the body) or `link_header` "
        '(`Link: <...>; rel="next"`).',
    )
    page_param: str = Field("page", description="Parameter carrying the page number.")
    start_page: int = Field(1, description="Number of the first page.")
    offset_param: str = Field("offset", description="Parameter carrying the offset.")
    size_param: str | None = Field(
        None,
        description="Parameter carrying the page size (`limit`, `per_page`, ...); defaults to "
        "`limit` for offset paging.",
    )
    page_size: int | None = Field(
        None, ge=1, description="Records asked for per page; sent as `size_param`."
    )
    cursor_param: str = Field("cursor", description="Parameter carrying the cursor.")
    cursor_path: str = Field(
        "next_cursor", description="Dotted path of the next cursor in the response body."
    )
    next_url_path: str = Field(
        "next", description="Dotted path of the next page's URL in the response body."
    )
    total_path: str | None = Field(
        None, description="Dotted path of the total record count; paging stops once reached."
    )
    stop_on_short_page: bool = Field(
        True,
        description="With `page_size`, a page with fewer records is the last one (saves a "
        "request for an empty page).",
    )
    max_pages: int | None = Field(
        None, ge=1, description="Stop a sweep after this many pages (a safety net)."
    )

    @model_validator(mode="after")
    def _size(self) -> PaginationConfig:
        if self.style == "offset" and self.page_size is None:
            raise ValueError("offset pagination needs `page_size` (records per request)")
        return self


class IncrementalConfig(Settings):
    """Read only what is new: the largest value of `field` seen is kept with the source's
    position and sent as `param` on the next sweep."""

    field: str = Field(description="Record field that grows (an updated-at time, an id).")
    param: str = Field(description="Request parameter that carries the last value seen.")
    initial: Any = Field(None, description="Value sent on the very first sweep (omit: none).")
    send_in: Literal["query", "body"] = Field(
        "query", description="Send the value as a `query` parameter or a top-level body key."
    )


class HttpSourceConfig(Settings):
    """Settings of the ``http`` source."""

    url: str = Field(description="Endpoint URL.")
    method: Method = Field("GET", description="HTTP method.")
    params: dict[str, Any] = Field(default_factory=dict, description="Query parameters.")
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers.")
    body: Any = Field(
        None,
        description="JSON body (with POST). Strings may hold `{{cursor}}`, `{{page}}`, "
        "`{{offset}}`, `{{limit}}`, replaced per request.",
    )
    records_path: str | None = Field(
        None,
        description="Dotted path of the record list in the response (`data.items`); omitted: "
        "the body itself is the list (or a single record).",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Authentication.")
    pagination: PaginationConfig = Field(
        default_factory=PaginationConfig, description="How to page."
    )
    rate_limit: RateLimitConfig = Field(
        default_factory=RateLimitConfig, description="Request budget."
    )
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retries and timeouts.")
    incremental: IncrementalConfig | None = Field(
        None, description="Incremental cursor; omitted: every sweep reads everything."
    )
    poll_interval: float | None = Field(
        None,
        gt=0,
        description="Seconds between sweeps: the source runs until stopped (with "
        "`incremental`, each sweep asks only for what is new; without, it reads everything "
        "again). Omitted: one sweep, then the run ends.",
    )
    flatten: bool = Field(False, description="Flatten nested objects into `parent.child` columns.")
    on_error: Literal["fail", "skip"] = Field(
        "fail",
        description="A page that stays broken (an error status after every retry, a body "
        "that is not JSON or not a list of records): `fail` the run at that page (it resumes "
        "there), or `skip` it: the page is dead-lettered (URL, status, a body excerpt, the "
        "reason) and paging goes on with the next page, which `page`, `offset` and "
        "`link_header` paging know without the body (`cursor` and `next_url` do not). "
        "Authentication failures (401/403) and rate limits (429) always fail.",
    )
    skip_limit: int = Field(
        5,
        ge=1,
        description="With `on_error: skip`: this many broken pages in a row fail the run "
        "(an API that fails every page is down, not broken in places).",
    )

    @model_validator(mode="after")
    def _skip_needs_a_known_next_page(self) -> HttpSourceConfig:
        style = self.pagination.style
        if self.on_error == "skip" and style in ("cursor", "next_url"):
            where = "cursor" if style == "cursor" else "next page's URL"
            raise ValueError(
                f"on_error: skip cannot go past a broken page with `{style}` paging: the "
                f"{where} is in the page's body, which a broken page does not have; use "
                "`on_error: fail` (the run stops at that page and resumes there), or an API "
                "paging by `page`, `offset` or `link_header`"
            )
        return self


class HttpSinkConfig(Settings):
    """Settings of the ``http`` sink."""

    url: str = Field(
        description="Endpoint URL; `{{column}}` is replaced by the record's value when "
        "`batch_size` is 1."
    )
    method: Method = Field("POST", description="HTTP method.")
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers.")
    body: Any = Field(
        None,
        description="JSON body template per record: strings that are exactly `{{column}}` "
        "take the value with its type, other strings get it as text. Omitted: the record.",
    )
    batch_size: int = Field(
        1, ge=1, description="Records per request: 1 sends one object, more a JSON array."
    )
    idempotency_header: str | None = Field(
        None,
        description="Header carrying a key derived from the request's records (SHA-256 of "
        "their JSON, or of `idempotency_columns`), for receivers that de-duplicate resends.",
    )
    idempotency_columns: list[str] | None = Field(
        None, description="Columns the idempotency key is computed from (default: all)."
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Authentication.")
    rate_limit: RateLimitConfig = Field(
        default_factory=RateLimitConfig, description="Request budget and concurrency."
    )
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retries and timeouts.")
    max_body_chars: int = Field(
        500, ge=0, description="Characters of a failed response's body kept in the reason."
    )


class HttpEnrichConfig(Settings):
    """Settings of the ``http_enrich`` step."""

    url: str = Field(
        description="Endpoint URL; `{{column}}` is replaced by the key value(s) (per-key mode)."
    )
    keys: list[str] = Field(min_length=1, description="Columns that identify what to look up.")
    method: Method = Field("GET", description="HTTP method.")
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Query parameters (templated like `url`)."
    )
    batch_size: int = Field(
        1,
        ge=1,
        description="Keys per request. 1: one request per distinct key. More: POST a JSON "
        "array of key objects; the response is a list of objects carrying the key columns.",
    )
    response_path: str | None = Field(
        None, description="Dotted path of the object (or, batched, the list) in the response."
    )
    fields: list[str] | None = Field(
        None, description="Response fields to merge (default: all top-level fields)."
    )
    prefix: str = Field("", description="Prefix for merged column names.")
    not_found: Literal["null", "dead_letter"] = Field(
        "null", description="A 404 (or a key missing from a batched reply): nulls or dead letter."
    )
    cache_ttl: float = Field(
        300.0, ge=0, description="Seconds a looked-up key is reused (0: no cache)."
    )
    cache_size: int = Field(100_000, ge=0, description="Most keys kept in the cache.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Authentication.")
    rate_limit: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(concurrency=8),
        description="Request budget and concurrency.",
    )
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retries and timeouts.")
