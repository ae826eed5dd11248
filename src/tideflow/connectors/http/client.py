"""One HTTP client for the source, sink and enrich step: authentication, a shared rate limit,
and retries with exponential backoff and jitter that honour ``Retry-After``.

Built on the standard library (``urllib.request``), so the HTTP components need no extra
package. Every request goes over a real socket; tests serve a real API on loopback
(:mod:`tideflow.testing.fake_api`).
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from tideflow.connectors.http.settings import AuthConfig, RateLimitConfig, RetryConfig
from tideflow.core.contracts import JSON
from tideflow.errors import TerminalError, TransientError
from tideflow.secrets import looks_secret, redact, register_secret

TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\}\}")
USER_AGENT = "tideflow-http/1"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


def register_secret_values(values: dict[str, Any]) -> None:
    """Register header or parameter values that carry credentials (``Authorization``,
    ``Cookie``, ``X-API-Key``, ``api_token``...) so they never appear in logs or errors.
    For ``Authorization: Bearer abc`` both the whole value and ``abc`` are registered."""
    for name, value in values.items():
        if not isinstance(value, str) or not value:
            continue
        if name.lower() in SECRET_HEADERS or looks_secret(name):
            register_secret(value)
            scheme, _, credential = value.partition(" ")
            if credential and scheme.isalpha():
                register_secret(credential.strip())


class Interrupted(TransientError):
    """The run was asked to stop while a request waited for its slot or a retry."""


class _TransportFailure(Exception):
    """A request got no HTTP response (refused, reset, timed out); retried by the client."""


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


def has_placeholders(template: Any) -> bool:
    """True when ``template`` (a string, dict or list) holds a ``{{name}}`` placeholder."""
    if isinstance(template, str):
        return TEMPLATE.search(template) is not None
    if isinstance(template, dict):
        return any(has_placeholders(v) for v in template.values())
    if isinstance(template, list):
        return any(has_placeholders(v) for v in template)
    return False


def _lookup(values: dict[str, Any], name: str) -> Any:
    if name not in values:
        raise TerminalError(
            f"template placeholder {{{{{name}}}}} has no value; known names: "
            + ", ".join(sorted(values))
        )
    return values[name]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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


def with_params(url: str, params: dict[str, Any] | None) -> str:
    """``url`` with ``params`` merged into its query string.

    Parameters already in the URL are kept (a ``next`` URL from the server carries its own
    paging parameters) unless ``params`` names them, in which case ``params`` wins. ``None``
    values are left out, lists repeat the parameter, booleans are ``true``/``false``.
    """
    if not params:
        return url
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    added: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None:
            continue
        values = value if isinstance(value, list | tuple) else [value]
        added.extend((key, _text(v)) for v in values)
    return urlunsplit(parts._replace(query=urlencode(kept + added)))


@dataclass
class Response:
    """An HTTP response: status, headers (lower-case names), body and what was asked."""

    status_code: int
    headers: dict[str, str]
    content: bytes
    method: str
    url: str
    elapsed: float = 0.0
    _json: Any = field(default=None, repr=False)

    @property
    def text(self) -> str:
        """The body as text (invalid UTF-8 replaced)."""
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ``ValueError`` when it is not JSON."""
        if self._json is None:
            try:
                self._json = orjson.loads(self.content)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"body is not JSON ({exc})") from exc
        return self._json

    @property
    def ok(self) -> bool:
        """True for 2xx."""
        return 200 <= self.status_code < 300


def _headers(message: Any) -> dict[str, str]:
    """Header names lower-cased; repeated headers (``Link``) joined with ``, ``."""
    out: dict[str, str] = {}
    for name, value in message.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _open(
    opener: urllib.request.OpenerDirector,
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    timeout: float,
) -> Response:
    """Send one request; raise :class:`_TransportFailure` when no response came back."""
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    started = time.monotonic()
    try:
        with opener.open(request, timeout=timeout) as reply:
            content = reply.read()
            return Response(
                reply.status,
                _headers(reply.headers),
                content,
                method,
                reply.url,
                time.monotonic() - started,
            )
    except urllib.error.HTTPError as exc:  # a non-2xx status is still a response
        try:
            content = exc.read()
        except (OSError, http.client.HTTPException):
            content = b""
        finally:
            exc.close()
        return Response(
            exc.code, _headers(exc.headers), content, method, url, time.monotonic() - started
        )
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError, timeouts, resets and refused connections are OSErrors; a malformed
        # status line is an HTTPException; ValueError is an unusable URL
        if isinstance(exc, ValueError) and not isinstance(exc, OSError):
            raise TerminalError(redact(f"{method} {url}: {exc}")) from exc
        reason = getattr(exc, "reason", None) or exc
        raise _TransportFailure(f"{type(exc).__name__}: {reason}") from exc


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib does, but never carries credentials to another origin
    (scheme, host or port), as browsers do not."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) != _origin(req.full_url):
            for name in list(new.headers):
                if name.lower() in SECRET_HEADERS or looks_secret(name):
                    del new.headers[name]
        return new


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class RateLimiter:
    """Spaces request starts at least ``interval`` seconds apart, across threads."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.interval = config.interval
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self, stop: threading.Event) -> bool:
        """Wait for this request's slot; False when the run was asked to stop meanwhile."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            if self.interval > 0:
                self._next = slot + self.interval
        if slot > now:
            return not stop.wait(slot - now)
        return not stop.is_set()

    def pause(self, seconds: float) -> None:
        """The server asked everyone to wait (``Retry-After``): push every slot back."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


def retry_after(response: Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class Auth:
    """Adds credentials to requests; OAuth2 tokens are fetched and refreshed here.

    Every credential (and every OAuth2 token fetched) is registered as a secret, so it is
    masked wherever tideflow prints text.
    """

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        for secret in (config.token, config.password, config.api_key, config.client_secret):
            if secret:
                register_secret(secret)
        if config.type == "basic":
            pair = f"{config.username}:{config.password}".encode()
            basic = base64.b64encode(pair).decode()
            register_secret(basic)
            self._basic = "Basic " + basic
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0

    def apply(self, client: HttpClient, headers: dict[str, str], params: dict[str, Any]) -> None:
        """Add the credentials to a request's headers or parameters."""
        cfg = self.config
        if cfg.type == "bearer":
            headers["Authorization"] = f"Bearer {cfg.token}"
        elif cfg.type == "basic":
            headers["Authorization"] = self._basic
        elif cfg.type == "api_key":
            target: dict[str, Any] = headers if cfg.key_in == "header" else params
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

    def _oauth_token(self, client: HttpClient) -> str:
        with self._lock:
            if self._token is not None and time.monotonic() < self._expires:
                return self._token
            cfg = self.config
            assert cfg.token_url and cfg.client_id and cfg.client_secret
            form = {"grant_type": "client_credentials"}
            if cfg.scope:
                form["scope"] = cfg.scope
            pair = base64.b64encode(f"{cfg.client_id}:{cfg.client_secret}".encode()).decode()
            register_secret(pair)
            response = client.raw(
                "POST",
                cfg.token_url,
                urlencode(form).encode(),
                {
                    "Authorization": "Basic " + pair,
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                },
            )
            if response.status_code in client.retry.statuses:
                raise _TransportFailure(f"token endpoint answered {response.status_code}")
            if response.status_code != 200:
                raise TerminalError(
                    redact(
                        f"OAuth2 token request to {cfg.token_url} returned "
                        f"{response.status_code}; check client_id / client_secret / scope"
                    )
                )
            try:
                body = response.json()
            except ValueError:
                body = None
            token = body.get("access_token") if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                raise TerminalError(
                    f"OAuth2 token response from {cfg.token_url} has no access_token"
                )
            register_secret(token)
            lifetime = float(body.get("expires_in") or 3600)
            # refresh a little early so a request never carries a token about to expire
            self._expires = time.monotonic() + max(lifetime - min(30.0, lifetime / 10), 0.0)
            self._token = token
            return token


class HttpClient:
    """Sends requests with auth, rate limit and retries. Thread-safe.

    ``stop`` interrupts waiting (for a rate-limit slot or a retry): :meth:`send` then raises
    :class:`Interrupted`. Components whose work must finish before a checkpoint (the sink,
    the enrich step) pass an event that is never set, so their retries run to the end.
    """

    def __init__(
        self,
        auth: AuthConfig,
        rate_limit: RateLimitConfig,
        retry: RetryConfig,
        stop: threading.Event | None = None,
        headers: dict[str, str] | None = None,
        seed: int | None = None,
    ) -> None:
        self.retry = retry
        self.stop = stop or threading.Event()
        self.limiter = RateLimiter(rate_limit)
        self.auth = Auth(auth)
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        register_secret_values(self.headers)
        self._opener = urllib.request.build_opener(_RedirectHandler())
        self._random = random.Random(seed)
        self.requests = 0
        self.retries = 0
        self._count_lock = threading.Lock()

    def close(self) -> None:
        """Release resources (each request uses its own connection; nothing is pooled)."""

    def raw(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Response:
        """One request, no auth, no retry; raises :class:`_TransportFailure` on no response."""
        with self._count_lock:
            self.requests += 1
        return _open(self._opener, method, url, body, headers, self.retry.timeout)

    def send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send one request, retrying timeouts, connection errors and retryable statuses.

        Returns the last response (the caller decides what a non-2xx status means). Raises
        :class:`TransientError` when no response came back after every attempt, and
        :class:`Interrupted` when the run is stopped while waiting.
        """
        body = content
        base_headers = {**self.headers, **(headers or {})}
        if json is not None:
            body = orjson.dumps(json)
            base_headers.setdefault("Content-Type", "application/json")
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            if not self.limiter.acquire(self.stop):
                raise Interrupted(f"{method} {redact(url)} interrupted: the run is stopping")
            req_headers = dict(base_headers)
            req_params = dict(params or {})
            try:
                self.auth.apply(self, req_headers, req_params)
                response = self.raw(method, with_params(url, req_params), body, req_headers)
            except _TransportFailure as exc:
                if attempt >= self.retry.max_attempts:
                    raise TransientError(
                        redact(f"{method} {url} failed after {attempt} attempt(s): {exc}")
                    ) from exc
                self._wait(attempt, None, method, url)
                continue
            if response.status_code == 401 and not refreshed and self.auth.invalidate():
                refreshed = True  # the OAuth2 token was revoked or expired early: once more
                attempt -= 1
                continue
            if response.status_code not in self.retry.statuses:
                return response
            if attempt >= self.retry.max_attempts:
                return response
            after = retry_after(response)
            if after is not None:
                self.limiter.pause(after)
            self._wait(attempt, after, method, url)

    def backoff(self, attempt: int, after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``: exponential with jitter, at least
        the server's ``Retry-After`` (which is not capped by ``max_backoff``)."""
        cfg = self.retry
        delay: float = min(cfg.backoff * 2.0 ** (attempt - 1), cfg.max_backoff)
        delay *= 1 - cfg.jitter * self._random.random()
        if after is not None:
            delay = max(delay, after)
        return delay

    def _wait(self, attempt: int, after: float | None, method: str, url: str) -> None:
        with self._count_lock:
            self.retries += 1
        if self.stop.wait(self.backoff(attempt, after)):
            raise Interrupted(f"{method} {redact(url)} interrupted: the run is stopping")


class ClientSettings(Protocol):
    """What :class:`ClientLifecycle` reads of a component's settings."""

    @property
    def auth(self) -> AuthConfig:
        """How requests authenticate."""

    @property
    def rate_limit(self) -> RateLimitConfig:
        """The request budget (and the worker count)."""

    @property
    def retry(self) -> RetryConfig:
        """Retries and timeouts."""


class ClientLifecycle:
    """The :class:`HttpClient` of one http component (source, sink or enrich step) from
    ``open`` to ``close``, with the worker threads that send its requests concurrently
    (sink and enrich step), and the request counts the run summary shows after ``close``."""

    def __init__(self) -> None:
        self.client: HttpClient | None = None
        self.pool: ThreadPoolExecutor | None = None
        self._figures: dict[str, JSON] = {}

    def open(
        self,
        config: ClientSettings,
        stop: threading.Event | None,
        headers: dict[str, str],
        secret_params: dict[str, Any] | None = None,
        workers: str | None = None,
    ) -> HttpClient:
        """Create the client: ``stop`` interrupts its waits (None: never), ``headers`` go on
        every request, values of ``secret_params`` that carry credentials are registered as
        secrets. ``workers`` names a pool of ``rate_limit.concurrency`` threads."""
        if secret_params is not None:
            register_secret_values(secret_params)
        self.client = HttpClient(config.auth, config.rate_limit, config.retry, stop, headers)
        if workers is not None:
            self.pool = ThreadPoolExecutor(
                max_workers=config.rate_limit.concurrency, thread_name_prefix=workers
            )
        return self.client

    def opened(self) -> HttpClient:
        """The client; only between ``open`` and ``close``."""
        assert self.client is not None, "the http component is not open"
        return self.client

    def figures(self) -> dict[str, JSON]:
        """Requests sent and retried: live while open, as they were at ``close`` after it
        (empty when never opened)."""
        if self.client is not None:
            return {"requests": self.client.requests, "retries": self.client.retries}
        return dict(self._figures)

    def close(self) -> None:
        """Wait for the worker threads, keep the counts, release the client."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
        if self.client is not None:
            self._figures = self.figures()
            self.client.close()
            self.client = None


def describe_failure(response: Response, limit: int) -> str:
    """``HTTP 503 from POST url: <body>`` with the body cut to ``limit`` characters."""
    body = response.text.strip()
    if len(body) > limit:
        body = body[:limit] + "..."
    return redact(f"HTTP {response.status_code} from {response.method} {response.url}: {body}")
