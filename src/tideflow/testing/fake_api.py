"""A small JSON API served on loopback, for tests, examples and benchmarks.

It pages in every style the ``http`` source supports, authenticates, rate-limits with
``429`` + ``Retry-After``, fails transiently at a given rate, answers lookups and records
what is posted to it, counting everything server-side. Standard library only::

    with FakeApi(records=1000, fail_rate=0.1) as api:
        api.url("/page")          # http://127.0.0.1:PORT/page
        api.stats.requests        # what the server saw

Transient failures are deterministic per path: with ``fail_rate=0.1`` exactly one request in
every ten of each path gets ``503``, evenly spaced (where in the cycle the first one falls
depends on ``seed`` and the path). Which requests fail therefore does not depend on how
concurrent clients' requests interleave, and a path asked ``1 / fail_rate`` times or more
is sure to have failed at least once; ``fail_rate=1.0`` fails every request.

Endpoints (each list endpoint takes ``since``: only records with ``updated_at > since``):

- ``GET /page?page=&per_page=`` -> ``{"data": {"items": [...]}, "total": n}``
- ``GET /offset?offset=&limit=`` -> ``{"items": [...], "total": n}``
- ``GET /cursor?cursor=&limit=`` -> ``{"items": [...], "next_cursor": "..."|null}``
- ``GET /next?after=&limit=`` -> ``{"items": [...], "next": "/next?after=..."|null}``
- ``GET /link?after=&limit=`` -> ``[...]`` with a ``Link: <...>; rel="next"`` header
- ``POST /search`` with ``{"page": p, "per_page": n, "since": s}`` -> like ``/page``
- ``GET /lookup/<id>`` -> ``{"id": id, "score": ...}`` (404 for ids divisible by 13)
- ``POST /lookup`` with ``[{"id": ...}, ...]`` -> a list of lookups
- ``POST /sink`` (an object or an array) -> records them; ``422`` (keeping none) when one
  has ``"invalid": true``; ``POST /webhook-relay`` likewise
- ``GET /redirect?to=URL`` -> ``302`` to ``URL``; ``GET /echo-headers`` -> the request's headers
- ``POST /oauth/token`` -> a client-credentials token (form body, HTTP basic client auth),
  revoked after ``token_uses`` requests when that is set

Pages that stay broken: ``broken={("/page", "2"): "truncated", ("/offset", "100"): 500}``
makes that page (named by its ``page``, ``offset``, ``after`` or ``cursor`` parameter)
answer every time with its JSON cut in half (status 200, headers kept) or with that status
(and no ``Link`` header).
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class ApiStats:
    """What the server counted."""

    requests: int = 0
    ok: int = 0
    transient_failures: int = 0
    rate_limited: int = 0
    unauthorized: int = 0
    max_in_window: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    paths: Counter[str] = field(default_factory=Counter)
    failed_paths: Counter[str] = field(default_factory=Counter)
    """Transient failures (503) per path."""
    posted: list[Any] = field(default_factory=list)
    idempotency_keys: list[str] = field(default_factory=list)
    tokens_issued: int = 0
    broken_served: int = 0


def make_record(i: int) -> dict[str, Any]:
    """The ``i``-th record of the fake dataset (with some personal data in it)."""
    return {
        "id": i,
        "name": f"user {i}",
        "email": f"user{i}@example.com",
        "note": f"call +44 20 7946 {i % 10000:04d} about order {i}",
        "updated_at": i,
    }


class FakeApi:
    """A threaded HTTP server on ``127.0.0.1`` with a free port (see the module docstring)."""

    def __init__(
        self,
        records: int = 1000,
        fail_rate: float = 0.0,
        seed: int = 7,
        rate_limit: int | None = None,
        window: float = 1.0,
        retry_after: float = 0.2,
        auth: dict[str, str] | None = None,
        delay: float = 0.0,
        token_lifetime: float = 3600.0,
        token_uses: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        broken: dict[tuple[str, str], str | int] | None = None,
    ) -> None:
        self.records = [make_record(i) for i in range(1, records + 1)]
        self.broken = dict(broken or {})
        self.fail_rate = fail_rate
        self.rate_limit = rate_limit
        self.window = window
        self.retry_after = retry_after
        self.auth = auth or {}
        self.delay = delay
        self.token_lifetime = token_lifetime
        self.token_uses = token_uses
        self.stats = ApiStats()
        self.lock = threading.Lock()
        self.seed = seed
        self._random = random.Random(seed)
        self._phase: dict[str, float] = {}
        self._recent: deque[float] = deque()
        self._tokens: dict[str, int] = {}
        handler = type("Handler", (_Handler,), {"api": self})
        self.server = _Server((host, port), handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self.server.server_address[1])

    def url(self, path: str = "") -> str:
        """An absolute URL on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> FakeApi:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (``shutdown`` would wait forever if serving never started)."""
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server.server_close()

    def __enter__(self) -> FakeApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_records(self, n: int) -> None:
        """Append ``n`` new records (with larger ``updated_at``)."""
        with self.lock:
            start = len(self.records) + 1
            self.records.extend(make_record(i) for i in range(start, start + n))

    def posted_ids(self) -> list[Any]:
        """``id`` of every record posted to ``/sink``, in arrival order."""
        with self.lock:
            return [r.get("id") for r in self.stats.posted if isinstance(r, dict)]

    # -- decisions made per request (called by the handler)

    def admit(self, path: str) -> tuple[int, dict[str, str]] | None:
        """Count a request; an error status and headers when it must be refused."""
        with self.lock:
            now = time.monotonic()
            self.stats.requests += 1
            self.stats.paths[path] += 1
            if self.rate_limit is not None:
                while self._recent and self._recent[0] <= now - self.window:
                    self._recent.popleft()
                if len(self._recent) >= self.rate_limit:
                    self.stats.rate_limited += 1
                    return 429, {"Retry-After": str(self.retry_after)}
                self._recent.append(now)
                self.stats.max_in_window = max(self.stats.max_in_window, len(self._recent))
            if self._fails(path, self.stats.paths[path]):
                self.stats.transient_failures += 1
                self.stats.failed_paths[path] += 1
                return 503, {}
        return None

    def _fails(self, path: str, nth: int) -> bool:
        """Does the ``nth`` request of ``path`` fail? ``floor((n + phase) * rate)`` steps up
        once every ``1 / rate`` requests: those fail."""
        rate = self.fail_rate
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        if path not in self._phase:
            self._phase[path] = random.Random(f"{self.seed}:{path}").random() / rate
        phase = self._phase[path]
        return int((nth + phase) * rate) > int((nth - 1 + phase) * rate)

    def authorized(self, headers: Any, query: dict[str, str]) -> bool:
        """Check the configured credentials (``auth`` = ``{"type": ..., ...}``)."""
        kind = self.auth.get("type")
        if not kind:
            return True
        got = headers.get("Authorization", "")
        if kind == "bearer":
            return bool(got == f"Bearer {self.auth['token']}")
        if kind == "basic":
            pair = f"{self.auth['username']}:{self.auth['password']}".encode()
            return bool(got == "Basic " + base64.b64encode(pair).decode())
        if kind == "api_key":
            name = self.auth.get("name", "X-API-Key")
            return headers.get(name) == self.auth["key"] or query.get(name) == self.auth["key"]
        if kind == "oauth2":
            # a token is revoked after `token_uses` requests: deterministic, unlike a clock
            token = got.removeprefix("Bearer ")
            with self.lock:
                left = self._tokens.get(token)
                if left is None or left == 0:
                    return False
                if left > 0:  # -1: never revoked
                    self._tokens[token] = left - 1
            return True
        return False

    def issue_token(self, headers: Any) -> tuple[int, Any]:
        """OAuth2 client credentials (HTTP basic with the client id and secret)."""
        pair = f"{self.auth.get('client_id')}:{self.auth.get('client_secret')}".encode()
        if headers.get("Authorization", "") != "Basic " + base64.b64encode(pair).decode():
            return 401, {"error": "invalid_client"}
        with self.lock:
            self.stats.tokens_issued += 1
            token = f"tok-{self.stats.tokens_issued}-{self._random.random():.12f}"
            self._tokens[token] = -1 if self.token_uses is None else self.token_uses
        return 200, {"access_token": token, "expires_in": self.token_lifetime}

    def newer(self, since: str | None) -> list[dict[str, Any]]:
        """Records with ``updated_at > since``."""
        with self.lock:
            rows = list(self.records)
        if since in (None, ""):
            return rows
        floor = float(since)
        return [r for r in rows if r["updated_at"] > floor]


class _Server(ThreadingHTTPServer):
    # the default listen backlog (5) overflows under concurrent clients, and the kernel then
    # retries the refused SYN only after a second
    request_queue_size = 128
    daemon_threads = True


def _int(query: dict[str, str], name: str, default: int) -> int:
    return int(query.get(name, default))


def _after(rows: list[dict[str, Any]], after: int, limit: int) -> list[dict[str, Any]]:
    return [r for r in rows if r["id"] > after][:limit]


class _Handler(BaseHTTPRequestHandler):
    api: FakeApi
    protocol_version = "HTTP/1.1"
    _broken: str | int | None = None

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._done()  # before the client can see the answer and send its next request
        data = json.dumps(body).encode()
        broken, self._broken = self._broken, None
        if broken is not None:
            with self.api.lock:
                self.api.stats.broken_served += 1
            if broken == "truncated":
                data = data[: len(data) // 2]
            else:
                status, headers = int(broken), {}
                data = json.dumps({"error": "this page is broken"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", errors="replace")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        api = self.api
        self._active = True
        with api.lock:
            api.stats.in_flight += 1
            api.stats.max_in_flight = max(api.stats.max_in_flight, api.stats.in_flight)
        try:
            if api.delay:
                time.sleep(api.delay)  # widen the window in which requests overlap
            self._serve(method)
        finally:
            self._done()

    def _done(self) -> None:
        """Count this request as no longer in flight (once)."""
        if getattr(self, "_active", False):
            self._active = False
            with self.api.lock:
                self.api.stats.in_flight -= 1

    def _serve(self, method: str) -> None:
        api = self.api
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        body = self._body() if method == "POST" else None
        if path == "/oauth/token":
            self._reply(*api.issue_token(self.headers))
            return
        refused = api.admit(path)
        if refused is not None:
            self._reply(refused[0], {"error": "try again"}, refused[1])
            return
        if not api.authorized(self.headers, query):
            with api.lock:
                api.stats.unauthorized += 1
            self._reply(401, {"error": "unauthorized"})
            return
        with api.lock:
            api.stats.ok += 1
        self._route(method, path, query, body)

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
        api = self.api
        if method == "POST" and path in ("/sink", "/webhook-relay"):
            items = body if isinstance(body, list) else [body]
            invalid = [i for i in items if not isinstance(i, dict) or i.get("invalid")]
            if invalid:  # a client error: nothing of this request is kept
                self._reply(422, {"error": "invalid record", "record": invalid[0]})
                return
            with api.lock:
                api.stats.posted.extend(items)
                key = self.headers.get("Idempotency-Key")
                if key:
                    api.stats.idempotency_keys.append(key)
            self._reply(200, {"accepted": len(items)})
            return
        if path == "/redirect":  # 302 to `to` (for redirect tests)
            self._reply(302, {}, {"Location": query["to"]})
            return
        if path == "/echo-headers":
            self._reply(200, {k.lower(): v for k, v in self.headers.items()})
            return
        if path.startswith("/lookup"):
            self._lookup(method, path, body)
            return
        if method == "POST" and path == "/search":
            query = {k: str(v) for k, v in (body or {}).items() if v is not None}
            path = "/page"
        rows = api.newer(query.get("since"))
        limit = _int(query, "limit", _int(query, "per_page", 100))
        names = {"/page": ("page", "1"), "/offset": ("offset", "0"), "/cursor": ("cursor", "")}
        param, default = names.get(path, ("after", "0"))
        self._broken = api.broken.get((path, query.get(param, default)))
        if path == "/page":
            page = _int(query, "page", 1)
            items = rows[(page - 1) * limit : page * limit]
            self._reply(200, {"data": {"items": items}, "total": len(rows)})
        elif path == "/offset":
            offset = _int(query, "offset", 0)
            self._reply(200, {"items": rows[offset : offset + limit], "total": len(rows)})
        elif path == "/cursor":
            after = int(base64.b64decode(query["cursor"]).decode()) if "cursor" in query else 0
            items = _after(rows, after, limit)
            nxt = base64.b64encode(str(items[-1]["id"]).encode()).decode() if items else None
            self._reply(200, {"items": items, "next_cursor": nxt})
        elif path in ("/next", "/link"):
            items = _after(rows, _int(query, "after", 0), limit)
            more = bool(items) and items[-1]["id"] < rows[-1]["id"]
            since = f"&since={query['since']}" if "since" in query else ""
            nxt = f"{path}?after={items[-1]['id']}&limit={limit}{since}" if more else None
            if path == "/next":
                self._reply(200, {"items": items, "next": nxt})
            else:
                headers = {"Link": f'<{nxt}>; rel="next"'} if nxt else {}
                self._reply(200, items, headers)
        else:
            self._reply(404, {"error": f"no route {path}"})

    def _lookup(self, method: str, path: str, body: Any) -> None:
        def answer(ident: Any) -> dict[str, Any] | None:
            i = int(ident)
            return None if i % 13 == 0 else {"id": i, "score": i * 10, "tier": "gold"}

        if method == "POST":
            found = [answer(k["id"]) for k in body or []]
            self._reply(200, [a for a in found if a is not None])
            return
        result = answer(path.rsplit("/", 1)[-1])
        if result is None:
            self._reply(404, {"error": "not found"})
        else:
            self._reply(200, result)


def main(argv: list[str] | None = None) -> None:
    """``python -m tideflow.testing.fake_api --port 8765``: serve until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description="A small JSON API on loopback, for examples.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per second")
    args = parser.parse_args(argv)
    api = FakeApi(
        records=args.records,
        fail_rate=args.fail_rate,
        rate_limit=args.rate_limit,
        port=args.port,
    )
    print(f"serving {args.records} records on {api.url()} (Ctrl-C stops)", flush=True)
    try:
        api.server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        api.server.server_close()


if __name__ == "__main__":
    main()
