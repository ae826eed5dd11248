"""The server's guard: a token on every route when reachable from other hosts, and a limit
on request bodies. Written as plain ASGI middleware so it covers every route, including
ones FastAPI adds itself (``/openapi.json``, ``/docs``) and the static UI.

The token is accepted as ``Authorization: Bearer <token>`` or as the ``tideflow_token``
cookie. Opening the UI once with ``?token=<token>`` sets that cookie (HttpOnly, SameSite
Strict) and redirects to the same page without the token in the address bar.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import suppress
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

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


def needs_token(host: str) -> bool:
    """True when a server bound to ``host`` is reachable from other machines."""
    return host not in LOCAL_HOSTS


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
    """ASGI middleware enforcing the token (when set) and the body limit."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body

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
