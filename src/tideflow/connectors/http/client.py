"""One HTTP client for the source, sink and enrich step: authentication, a shared rate limit,
and retries with exponential backoff and jitter that honour ``Retry-After``.

``httpx`` is imported here, and this module is imported only when a component opens, so
``import tideflow`` does not need the ``http`` extra.
"""

from __future__ import annotations

import email.utils
import random
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from tideflow.connectors.http.settings import AuthConfig, RateLimitConfig, RetryConfig
from tideflow.errors import MissingDependencyError, TerminalError, TransientError
from tideflow.secrets import redact, register_secret

if TYPE_CHECKING:
    import httpx

TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\}\}")


def import_httpx() -> Any:
    """``httpx``, or an error naming the extra to install."""
    try:
        import httpx
    except ImportError as exc:
        raise MissingDependencyError("httpx", "http") from exc
    return httpx


def render(template: Any, values: dict[str, Any]) -> Any:
    """Fill ``{{name}}`` placeholders in strings, recursively through dicts and lists.

    A string that is exactly one placeholder takes the value with its JSON type; otherwise the
    value is inserted as text. A name without a value is an error (naming the name).
    """
    if isinstance(template, str):
        whole = TEMPLATE.fullmatch(template)
        if whole:
            return _lookup(values, whole.group(1))
        return TEMPLATE.sub(lambda m: _text(_lookup(values, m.group(1))), template)
    if isinstance(template, dict):
        return {k: render(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, values) for v in template]
    return template


def _lookup(values: dict[str, Any], name: str) -> Any:
    if name not in values:
        raise TerminalError(
            f"template placeholder {{{{{name}}}}} has no value; known names: "
            + ", ".join(sorted(values))
        )
    return values[name]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def dig(body: Any, path: str | None) -> Any:
    """Follow a dotted path (``data.items``) into a JSON body; None when a key is missing."""
    if not path:
        return body
    for part in path.split("."):
        if isinstance(body, dict):
            body = body.get(part)
        elif isinstance(body, list) and part.isdigit() and int(part) < len(body):
            body = body[int(part)]
        else:
            return None
    return body


class RateLimiter:
    """Spaces request starts at least ``interval`` seconds apart, across threads."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.interval = config.interval
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self, stop: threading.Event) -> None:
        """Wait for this request's slot (returns early when the run stops)."""
        if self.interval <= 0:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            stop.wait(slot - now)

    def pause(self, seconds: float) -> None:
        """The server asked everyone to wait (``Retry-After``): push every slot back."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.replace(".", "", 1).isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class Auth:
    """Adds credentials to requests; OAuth2 tokens are fetched and refreshed here."""

    def __init__(self, config: AuthConfig, retry: RetryConfig) -> None:
        self.config = config
        self.retry = retry
        for secret in (config.token, config.password, config.api_key, config.client_secret):
            if secret:
                register_secret(secret)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0

    def apply(self, client: httpx.Client, headers: dict[str, str], params: dict[str, Any]) -> None:
        """Add the credentials to a request's headers or parameters."""
        cfg = self.config
        if cfg.type == "bearer":
            headers["Authorization"] = f"Bearer {cfg.token}"
        elif cfg.type == "basic":
            import base64

            pair = f"{cfg.username}:{cfg.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif cfg.type == "api_key":
            target = headers if cfg.key_in == "header" else params
            target[cfg.key_name] = cfg.api_key
        elif cfg.type == "oauth2":
            headers["Authorization"] = f"Bearer {self._oauth_token(client)}"

    def invalidate(self) -> bool:
        """Forget a rejected OAuth2 token; True when a fresh one is worth a retry."""
        if self.config.type != "oauth2":
            return False
        with self._lock:
            self._token = None
        return True

    def _oauth_token(self, client: httpx.Client) -> str:
        with self._lock:
            if self._token is not None and time.monotonic() < self._expires:
                return self._token
            cfg = self.config
            data = {"grant_type": "client_credentials"}
            if cfg.scope:
                data["scope"] = cfg.scope
            assert cfg.token_url and cfg.client_id and cfg.client_secret
            httpx = import_httpx()
            try:
                response = client.post(
                    cfg.token_url,
                    data=data,
                    auth=httpx.BasicAuth(cfg.client_id, cfg.client_secret),
                    timeout=self.retry.timeout,
                )
            except httpx.TransportError as exc:
                raise TransientError(
                    redact(f"OAuth2 token request to {cfg.token_url} failed: {exc}")
                ) from exc
            if response.status_code != 200:
                raise TerminalError(
                    f"OAuth2 token request to {cfg.token_url} returned "
                    f"{response.status_code}; check client_id / client_secret / scope"
                )
            body = response.json()
            token = body.get("access_token") if isinstance(body, dict) else None
            if not isinstance(token, str):
                raise TerminalError(
                    f"OAuth2 token response from {cfg.token_url} has no access_token"
                )
            register_secret(token)
            lifetime = float(body.get("expires_in", 3600))
            # refresh a little early so a request never carries a token about to expire
            self._expires = time.monotonic() + max(lifetime - min(30.0, lifetime / 10), 0.0)
            self._token = token
            return token


class HttpClient:
    """Sends requests with auth, rate limit and retries. Thread-safe (httpx.Client is)."""

    def __init__(
        self,
        auth: AuthConfig,
        rate_limit: RateLimitConfig,
        retry: RetryConfig,
        stop: threading.Event,
        headers: dict[str, str] | None = None,
    ) -> None:
        httpx = import_httpx()
        self._httpx = httpx
        self.retry = retry
        self.stop = stop
        self.limiter = RateLimiter(rate_limit)
        self.auth = Auth(auth, retry)
        limits = httpx.Limits(max_connections=max(rate_limit.concurrency, 1) + 2)
        self.client: httpx.Client = httpx.Client(
            headers=headers or {}, timeout=retry.timeout, limits=limits, follow_redirects=True
        )
        self.requests = 0
        self.retries = 0
        self._count_lock = threading.Lock()

    def close(self) -> None:
        """Close connections."""
        self.client.close()

    def send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request, retrying timeouts, connection errors and retryable statuses.

        Returns the last response (the caller decides what a non-2xx status means). Raises
        :class:`TransientError` when a connection keeps failing; a stop request ends the
        waiting and returns what the last attempt got.
        """
        httpx = self._httpx
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            self.limiter.acquire(self.stop)
            req_headers = dict(headers or {})
            req_params = dict(params or {})
            self.auth.apply(self.client, req_headers, req_params)
            with self._count_lock:
                self.requests += 1
            try:
                response = self.client.request(
                    method,
                    url,
                    params=req_params,
                    json=json,
                    content=content,
                    headers=req_headers,
                )
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt >= self.retry.max_attempts or self.stop.is_set():
                    raise TransientError(
                        redact(
                            f"{method} {url} failed after {attempt} attempt(s): "
                            f"{type(exc).__name__}: {exc}"
                        )
                    ) from exc
                self._wait(attempt, None)
                continue
            if response.status_code == 401 and not refreshed and self.auth.invalidate():
                refreshed = True  # the OAuth2 token expired early: fetch a new one, once
                continue
            if response.status_code not in self.retry.statuses:
                return response
            if attempt >= self.retry.max_attempts or self.stop.is_set():
                return response
            after = retry_after(response)
            if after is not None:
                self.limiter.pause(after)
            self._wait(attempt, after)

    def _wait(self, attempt: int, after: float | None) -> None:
        with self._count_lock:
            self.retries += 1
        cfg = self.retry
        delay = min(cfg.backoff * 2 ** (attempt - 1), cfg.max_backoff)
        delay *= 1 - cfg.jitter * random.random()
        if after is not None:
            delay = max(delay, min(after, max(cfg.max_backoff, after)))
        self.stop.wait(delay)


def describe_failure(response: httpx.Response, limit: int) -> str:
    """``HTTP 503 from POST url: <body>`` with the body cut to ``limit`` characters."""
    body = response.text
    if len(body) > limit:
        body = body[:limit] + "..."
    req = response.request
    return redact(f"HTTP {response.status_code} from {req.method} {req.url}: {body}")
