"""The HTTP API and the web UI of `tideflow serve` (FastAPI).

Every JSON response goes through :class:`RedactedJSON`, so a secret registered anywhere in
the server (a password in a pipeline file, the server's own token) never leaves it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from tideflow.errors import ConfigError, TideflowError
from tideflow.secrets import redact, register_secret
from tideflow.service.catalog import (
    Conflict,
    NotFound,
    issue_json,
)
from tideflow.service.policy import Policy
from tideflow.service.routes import add_routes
from tideflow.service.scheduler import Ticker
from tideflow.service.security import MAX_BODY_BYTES, Guard, allowed_hosts
from tideflow.service.server import Service
from tideflow.service.web import DOCS_ASSETS, DOCS_HEADERS, STATIC, RedactedJSON, docs_assets

log = logging.getLogger("tideflow.service")


def create_app(
    folder: str | Path,
    token: str | None = None,
    max_body: int = MAX_BODY_BYTES,
    background: bool = True,
    tick_seconds: float = 1.0,
    host: str = "127.0.0.1",
    hosts: tuple[str, ...] = (),
    policy: Policy | None = None,
) -> FastAPI:
    """The service for the pipelines in ``folder``. With ``token``, every route requires it;
    ``background`` runs the scheduler and alert checks every ``tick_seconds``. Requests
    must name ``host`` (the bound address), a loopback name or one of ``hosts`` in their
    ``Host`` header; pipelines are held to ``policy`` (by default: no python steps, files
    only in ``folder``, no file access from SQL)."""
    service = Service(folder, policy)
    if token:
        register_secret(token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ticker = Ticker(service.tick, tick_seconds) if background else None
        if ticker is not None:
            ticker.start()
        try:
            yield
        finally:
            if ticker is not None:
                ticker.stop()
            service.runs.shutdown()

    app = FastAPI(
        title="tideflow",
        summary="Run, watch and operate tideflow pipelines.",
        version="0.1.0",
        default_response_class=RedactedJSON,
        lifespan=lifespan,
        # Served below from the package's own files: FastAPI's pages load them from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(Guard, token=token, max_body=max_body, hosts=allowed_hosts(host, hosts))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return RedactedJSON({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> Response:
        return RedactedJSON({"detail": str(exc)}, status_code=409)

    @app.exception_handler(ConfigError)
    async def invalid(request: Request, exc: ConfigError) -> Response:
        issues = [issue_json(i) for i in exc.issues]
        return RedactedJSON({"detail": "invalid pipeline", "issues": issues}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the whole input back; this one names the field and the
        # problem only, so nothing sent (a secret, a huge body) is reflected.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return RedactedJSON({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(TideflowError)
    async def failed(request: Request, exc: TideflowError) -> Response:
        return RedactedJSON({"detail": str(exc)}, status_code=400)

    add_routes(app, service)
    _docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets()), name="docs-assets")
    return app


def _docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, with every file served by this server."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    @app.get("/docs", include_in_schema=False)
    def swagger() -> Response:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="tideflow API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            # No badge from the public validator service: nothing leaves the page.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers.update(DOCS_HEADERS)
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> Response:
        page = get_redoc_html(
            openapi_url="/openapi.json",
            title="tideflow API",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
        page.headers.update(DOCS_HEADERS)
        return page


class _RedactArguments(logging.Filter):
    """Redact a record's message and string arguments in place. uvicorn's access formatter
    unpacks ``record.args`` itself, so they must stay a tuple (unlike RedactingFilter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask secrets, keep the record."""
        record.msg = redact(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def serve(
    folder: str | Path,
    host: str,
    port: int,
    token: str | None,
    hosts: tuple[str, ...] = (),
    policy: Policy | None = None,
) -> None:
    """Run the server until interrupted (the `tideflow serve` command)."""
    import uvicorn

    app = create_app(folder, token=token, host=host, hosts=hosts, policy=policy)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", proxy_headers=False)
    # uvicorn configured its own handlers just now; the access log prints request URLs, which
    # may carry the token (`/?token=...`), so its lines are redacted like every other log.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_RedactArguments())
    uvicorn.Server(config).run()
