"""The server's guard, in front of every route: the ``Host`` header must name this server,
a state-changing request must come from the server's own pages (not another web site), a
token is required when the server is reachable from other hosts, and request bodies are
limited. Written as plain ASGI middleware so it covers every route, including ones FastAPI
adds itself (``/openapi.json``, ``/docs``) and the static UI.

Why the first two: a web page on any site can send requests to ``127.0.0.1``. Through DNS
rebinding (a name of the attacker's that first resolves to their server, then to
127.0.0.1) its scripts even read the answers, as same-origin requests; they then carry the
attacker's name in ``Host``, which is refused. A plain cross-site form or ``fetch`` POST
with a "simple" content type needs no CORS preflight and would start a run; browsers mark
such requests with ``Sec-Fetch-Site: cross-site`` and a foreign ``Origin``, which are
refused for every method but GET, HEAD and OPTIONS. Clients that are not browsers (curl,
scripts) send neither header and pass.

The token is accepted as ``Authorization: Bearer <token>`` or as the ``tideflow_token``
cookie. Opening the UI once with ``?token=<token>`` sets that cookie (HttpOnly, SameSite
Strict) and redirects to the same page without the token in the address bar.
"""

from __future__ import annotations

import hmac
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from contextlib import suppress
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""Bind addresses that only this machine can reach."""
COOKIE = "tideflow_token"
"""The cookie carrying the token for the browser UI."""
MAX_BODY_BYTES = 1024 * 1024
"""Default limit on a request body."""


WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # nosec B104 - recognised to refuse them, never bound
"""Bind addresses meaning every interface (never accepted as a ``Host``)."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing; every other one gets the cross-site check."""


def needs_token(host: str) -> bool:
    """True when a server bound to ``host`` is reachable from other machines."""
    return host not in LOCAL_HOSTS


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without port, brackets or a trailing dot, lowercase:
    ``[::1]:8080`` -> ``::1``, ``Example.COM.:80`` -> ``example.com``."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _machine_names() -> set[str]:
    """This machine's host name and the addresses it resolves to (what a server bound to
    every interface is reached by without DNS set up for it)."""
    name = socket.gethostname().lower()
    found = {name}
    with suppress(OSError):
        found |= {str(info[4][0]).lower() for info in socket.getaddrinfo(name, None)}
    return found


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The ``Host`` names a server bound to ``bind`` answers to: the bound address,
    ``localhost`` and the loopback addresses, this machine's name and addresses when bound
    to every interface, and ``extra`` (``--allowed-host``). None (any host) when ``extra``
    holds ``*``."""
    wanted = {host_name(h) for h in extra if h.strip()}
    if "*" in wanted:
        return None
    hosts = set(LOCAL_HOSTS) | {host_name(bind)} | wanted
    if host_name(bind) in WILDCARDS:
        hosts |= _machine_names()
    return frozenset(hosts - WILDCARDS)


def cross_site(headers: dict[str, str]) -> str | None:
    """Why a request looks sent by another web site, or None: ``Sec-Fetch-Site`` other
    than ``same-origin``/``none`` where the browser sends it, else an ``Origin`` whose
    host and port differ from ``Host``."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return None if site in ("same-origin", "none") else f"Sec-Fetch-Site: {site[:40]}"
    origin = headers.get("origin")
    if origin is None:
        return None
    if urlsplit(origin).netloc.lower() != headers.get("host", "").strip().lower():
        return f"Origin: {origin[:200]}"
    return None


class _TooLarge(Exception):
    """The body grew past the limit while it was being read."""


async def _reply(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware enforcing the allowed hosts, same-site state changes, the token
    (when set) and the body limit."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        max_body: int = MAX_BODY_BYTES,
        hosts: frozenset[str] | None = LOCAL_HOSTS,
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.hosts = hosts

    def _valid(self, candidate: str | None) -> bool:
        if self.token is None:
            return True
        # compare_digest takes time independent of where the strings differ.
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, then hand it to the app."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        http = scope["type"] == "http"
        if self.hosts is not None and host_name(headers.get("host", "")) not in self.hosts:
            if http:
                shown = headers.get("host", "")[:100]
                await _reply(
                    send,
                    421,
                    f"this server does not answer to the host name {shown!r}; if it is "
                    "really this server's name, start it with `--allowed-host NAME`",
                    [],
                )
            return
        why = cross_site(headers) if http and scope["method"] not in SAFE_METHODS else None
        if why is not None:
            await _reply(
                send,
                403,
                f"refused a {scope['method']} sent from another web site ({why}); use the "
                "server's own pages, or a client that is not a browser",
                [],
            )
            return
        if self.token is not None and not self._authorised(headers):
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if (
                scope["type"] == "http"
                and scope["method"] == "GET"
                and self._valid(query.get("token"))
            ):
                await self._set_cookie(scope, query, send)
                return
            if scope["type"] == "http":
                await _reply(
                    send,
                    401,
                    "a token is required: send `Authorization: Bearer <token>`",
                    [(b"www-authenticate", b"Bearer")],
                )
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _reply(send, 413, f"the request body may hold at most {self.max_body} bytes", [])
            return
        await self._limited(scope, receive, send)

    def _authorised(self, headers: dict[str, str]) -> bool:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._valid(value.strip()):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is simply no token
            return False
        morsel = cookie.get(COOKIE)
        return morsel is not None and self._valid(morsel.value)

    async def _set_cookie(self, scope: Scope, query: dict[str, str], send: Send) -> None:
        query.pop("token", None)
        location = scope["path"] + ("?" + urlencode(query) if query else "")
        assert self.token is not None
        cookie = f"{COOKIE}={self.token.decode()}; HttpOnly; SameSite=Strict; Path=/"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode()),
                    (b"set-cookie", cookie.encode()),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count body bytes as they arrive (a chunked body has no Content-Length); past the
        limit, answer 413 at once and drop whatever the app answers after that."""
        seen = 0
        started = False
        rejected = False
        detail = f"the request body may hold at most {self.max_body} bytes"

        async def counted() -> Message:
            nonlocal seen, rejected
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body and not rejected:
                    rejected = True
                    if not started:
                        await _reply(send, 413, detail, [])
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with suppress(_TooLarge):  # already answered with 413
            await self.app(scope, counted, tracked)
