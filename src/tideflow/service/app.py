"""The HTTP API and the web UI of `tideflow serve` (FastAPI).

Every JSON response goes through :class:`RedactedJSON`, so a secret registered anywhere in
the server (a password in a pipeline file, the server's own token) never leaves it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Body, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from tideflow.errors import ConfigError, TideflowError
from tideflow.observe.alerts import AlertManager
from tideflow.observe.figures import source_lag
from tideflow.observe.metrics import CONTENT_TYPE, PipelineMetrics
from tideflow.secrets import redact, register_secret
from tideflow.service.catalog import (
    ID_PATTERN,
    MAX_PIPELINE_BYTES,
    Catalog,
    Conflict,
    Entry,
    NotFound,
    issue_json,
)
from tideflow.service.grouplag import GroupLagCollector
from tideflow.service.policy import Policy
from tideflow.service.runs import ACTIVE, Run, RunManager
from tideflow.service.scheduler import Scheduler, Ticker
from tideflow.service.security import MAX_BODY_BYTES, Guard, allowed_hosts
from tideflow.state.locate import open_state_store

log = logging.getLogger("tideflow.service")
STATIC = Path(__file__).parent / "static"
"""The web UI's files."""


NONCE = "{{nonce}}"
"""Where index.html takes the page's style nonce."""


def page_headers(nonce: str) -> dict[str, str]:
    """Headers of the UI page. Its scripts and style sheets are its own files, nothing
    remote, no inline script; the one inline style the page may hold is the YAML editor's
    (CodeMirror writes its theme into a <style> element), allowed by this response's nonce."""
    return {
        "Cache-Control": "no-store",
        "Content-Security-Policy": f"default-src 'self'; style-src 'self' 'nonce-{nonce}'; "
        "img-src 'self' data:; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


DOCS_HEADERS = {
    "Cache-Control": "no-store",
    # Swagger UI and ReDoc come from the package fastapi-offline, served from /docs-assets;
    # the page's only inline script is FastAPI's call that starts Swagger UI.
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; worker-src 'self' blob:; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""Headers of the API documentation pages (/docs, /redoc)."""
DOCS_ASSETS = "/docs-assets"
"""Where Swagger UI's and ReDoc's files are served from (no CDN)."""


def docs_assets() -> Path:
    """The folder of Swagger UI's and ReDoc's files, as the package fastapi-offline ships
    them (the `service` extra installs it)."""
    from importlib.resources import files

    from tideflow.errors import MissingDependencyError

    try:
        return Path(str(files("fastapi_offline") / "static"))
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("fastapi-offline", "service") from exc


STREAM_INTERVAL = 0.5
"""Seconds between looks at a run for the event stream (the engine's progress interval)."""
STREAM_LIFETIME = 600.0
"""Seconds after which an event stream ends even while its run goes on; the browser's
EventSource reconnects at once, so no connection outlives proxies' idle limits by much."""
STREAM_RETRY_MS = 2000
"""How long a browser waits before reconnecting to a stream that ended (no run active)."""
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
"""Stream headers: never cached, never buffered by a proxy."""


def sse(event: str, data: Any) -> bytes:
    """One server-sent event, its JSON data redacted like every other response."""
    text = redact(orjson.dumps(data, default=str).decode())
    return f"event: {event}\ndata: {text}\n\n".encode()


class RedactedJSON(JSONResponse):
    """JSON with every registered secret and URL password masked."""

    def render(self, content: Any) -> bytes:
        """Serialise, then redact the text."""
        return redact(orjson.dumps(content, default=str).decode()).encode()


class PipelineText(BaseModel):
    """A pipeline file's text."""

    yaml: str = Field(max_length=MAX_PIPELINE_BYTES, description="The pipeline file (YAML).")


class NewPipeline(PipelineText):
    """A pipeline to create; the id defaults to its `name:`."""

    id: str | None = Field(None, pattern=ID_PATTERN, max_length=100)


class ReplayRequest(BaseModel):
    """Dead letters to send through the pipeline again."""

    step: str = Field(max_length=200, description="The step where the records failed.")
    ids: list[int] = Field(
        default_factory=list,
        max_length=10_000,
        description="Ledger ids; all of the step's if empty.",
    )


PidPath = Annotated[str, Field(pattern=ID_PATTERN, max_length=100)]


class Service:
    """The server's parts, wired together."""

    def __init__(self, folder: str | Path, policy: Policy | None = None) -> None:
        self.catalog = Catalog(folder, policy)
        self.metrics = PipelineMetrics()
        self.metrics.registry.register(GroupLagCollector(self.catalog))
        self.alerts = AlertManager()
        self.runs = RunManager(self.catalog, self.metrics)
        self.scheduler = Scheduler(self.catalog, self.runs)
        self._alert_runs: dict[str, str] = {}

    def tick(self) -> None:
        """One background pass: scheduled starts, then alert rules."""
        self.scheduler.tick()
        self.check_alerts()

    def check_alerts(self, now: float | None = None) -> None:
        """Sample every pipeline with alert rules and evaluate them."""
        for entry in self.catalog.entries():
            if entry.spec is None or not entry.spec.alerts:
                continue
            run = self.runs.active(entry.id)
            if run is not None:
                if self._alert_runs.get(entry.id) != run.id:
                    self.alerts.reset(entry.id)
                    self._alert_runs[entry.id] = run.id
                lag, lag_records = source_lag(run.counts)
                self.alerts.observe(
                    entry.id,
                    run.records_in,
                    run.dead_lettered,
                    lag,
                    True,
                    now=now,
                    matches=run.matches,
                    lag_records=lag_records,
                )
            else:
                self.alerts.observe(entry.id, 0, 0, None, False, now=now)
            self.alerts.evaluate(entry.id, list(entry.spec.alerts), now=now)

    # -- views ---------------------------------------------------------------------------

    def pipeline_summary(self, entry: Entry) -> dict[str, Any]:
        """A pipeline for the list view."""
        schedule = self.scheduler.describe(entry.id) if entry.spec is not None else None
        return {
            "id": entry.id,
            "name": entry.name,
            "file": entry.path.name,
            "description": entry.spec.description if entry.spec is not None else None,
            "valid": entry.spec is not None,
            "issues": entry.issues,
            **self._run_state(entry.id),
            "schedule": schedule,
            "alerts": [a.name for a in entry.spec.alerts] if entry.spec is not None else [],
        }

    def pipeline_detail(self, entry: Entry) -> dict[str, Any]:
        """A pipeline for its own page: the summary, the text, the graph and the live run."""
        latest = self.runs.latest(entry.id)
        detail = self.pipeline_summary(entry)
        detail.update(
            yaml=entry.text,
            graph=entry.graph(),
            bounded=entry.bounded if entry.spec is not None else None,
            run=latest.summary() if latest is not None else None,
            taps=sorted(latest.taps) if latest is not None else [],
        )
        return detail

    def live(self, pid: str) -> dict[str, Any]:
        """What changes while a pipeline runs: its status, throughput and latest run (with
        counts, lag, end-to-end latency and state sizes) and the steps with a tap."""
        latest = self.runs.latest(pid)
        return {
            **self._run_state(pid),
            "run": latest.summary() if latest is not None else None,
            "taps": sorted(latest.taps) if latest is not None else [],
        }

    def _run_state(self, pid: str) -> dict[str, Any]:
        """The latest run's status and figures, as the list and the live stream show them."""
        latest = self.runs.latest(pid)
        active = latest is not None and latest.status in ACTIVE
        return {
            "status": latest.status if latest is not None else "idle",
            "active": active,
            "rate": latest.rate if latest is not None and active else 0.0,
            "records_in": latest.records_in if latest is not None else 0,
            "dead_lettered": latest.dead_lettered if latest is not None else 0,
            "run_id": latest.id if latest is not None else None,
        }

    async def stream(
        self,
        pid: str,
        request: Request,
        interval: float = STREAM_INTERVAL,
        lifetime: float = STREAM_LIFETIME,
    ) -> AsyncIterator[bytes]:
        """Server-sent events of a pipeline's latest run: ``run`` (see :meth:`live`)
        whenever it changes, ``tap`` ``{step, records}`` whenever a step's latest records
        change, and ``end`` once no run is active, after which the stream closes (the
        browser reconnects after ``retry``; a started run is followed from then on)."""
        yield f"retry: {STREAM_RETRY_MS}\n\n".encode()
        sent_live = b""
        sent_taps: dict[str, Any] = {}
        deadline = time.monotonic() + lifetime
        quiet_since = time.monotonic()
        while True:
            live = self.live(pid)
            packed = orjson.dumps(live, default=str)
            if packed != sent_live:
                sent_live = packed
                quiet_since = time.monotonic()
                yield sse("run", live)
            run = self.runs.latest(pid)
            for step, records in list(run.taps.items()) if run is not None else []:
                # The reader thread swaps in a new list per update: identity means "unchanged".
                if sent_taps.get(step) is not records:
                    sent_taps[step] = records
                    yield sse("tap", {"step": step, "records": records})
            if not live["active"]:
                yield sse("end", {"status": live["status"], "run_id": live["run_id"]})
                return
            if time.monotonic() >= deadline or await request.is_disconnected():
                return
            if time.monotonic() - quiet_since >= 15:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"  # a comment: proxies see traffic, clients ignore it
            await asyncio.sleep(interval)

    def history(self, entry: Entry, limit: int) -> list[dict[str, Any]]:
        """Run history from the state store, with how each run was started where known."""
        if entry.spec is None:
            return []
        store = open_state_store(entry.spec.state, entry.path.parent)
        try:
            rows = store.history.runs(entry.spec.name, limit=limit)
        finally:
            store.close()
        known = {r.id: r for r in self.runs.runs(entry.id)}
        for row in rows:
            run = known.get(row["id"])
            row["trigger"] = run.trigger if run is not None else None
            if run is not None and row["status"] == "running" and run.status not in ACTIVE:
                row["status"] = run.status
        return rows


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

    _routes(app, service)
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


def _routes(app: FastAPI, service: Service) -> None:
    catalog, runs = service.catalog, service.runs

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        nonce = secrets.token_urlsafe(18)  # new for every page: guessing it is futile
        page = (STATIC / "index.html").read_text(encoding="utf-8").replace(NONCE, nonce)
        return HTMLResponse(page, headers=page_headers(nonce))

    @app.get("/api/health", tags=["server"])
    def health() -> dict[str, Any]:
        """The server is up; how many runs are active."""
        active = [r.id for r in runs.runs() if r.status in ACTIVE]
        return {"status": "ok", "active_runs": len(active), "folder": catalog.folder.name}

    @app.get("/metrics", tags=["server"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics of every pipeline and step."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/api/pipelines", tags=["pipelines"])
    def list_pipelines() -> list[dict[str, Any]]:
        """Every pipeline of the folder with its status and throughput."""
        return [service.pipeline_summary(e) for e in catalog.entries()]

    @app.post("/api/pipelines", tags=["pipelines"], status_code=201)
    def create_pipeline(body: NewPipeline) -> dict[str, Any]:
        """Create a pipeline file; invalid text is refused (422) with every issue."""
        spec, issues = catalog.validate(body.yaml, f"{body.id or 'new'}.yaml")
        if spec is None:
            return RedactedJSON(  # type: ignore[return-value]
                {"detail": "invalid pipeline", "issues": issues}, status_code=422
            )
        entry = catalog.save(body.id or spec.name, body.yaml, create=True)
        return service.pipeline_detail(entry)

    @app.post("/api/validate", tags=["pipelines"])
    def validate(body: PipelineText) -> dict[str, Any]:
        """Validate pipeline text without saving it: `issues` carry file, line and field."""
        spec, issues = catalog.validate(body.yaml, "pipeline.yaml")
        return {"valid": spec is not None, "name": spec.name if spec else None, "issues": issues}

    @app.get("/api/pipelines/{pid}", tags=["pipelines"])
    def get_pipeline(pid: PidPath) -> dict[str, Any]:
        """One pipeline: text, step graph, schedule and its latest run with live counts."""
        return service.pipeline_detail(catalog.get(pid))

    @app.put("/api/pipelines/{pid}", tags=["pipelines"])
    def update_pipeline(pid: PidPath, body: PipelineText) -> dict[str, Any]:
        """Replace a pipeline file; invalid text is refused (422) and the file kept."""
        return service.pipeline_detail(catalog.save(pid, body.yaml, create=False))

    @app.delete("/api/pipelines/{pid}", tags=["pipelines"])
    def delete_pipeline(pid: PidPath) -> dict[str, Any]:
        """Delete a pipeline file; refused while it runs. Its history stays in the store."""
        if runs.active(pid) is not None:
            raise Conflict(f"pipeline {pid!r} is running; stop it before deleting it")
        catalog.delete(pid)
        return {"deleted": pid}

    @app.post("/api/pipelines/{pid}/start", tags=["runs"], status_code=201)
    def start(pid: PidPath) -> dict[str, Any]:
        """Start a run in its own process (409 if one is active)."""
        return runs.start(pid).summary()

    @app.post("/api/pipelines/{pid}/stop", tags=["runs"])
    def stop(pid: PidPath) -> dict[str, Any]:
        """Ask the active run to drain, checkpoint and end."""
        catalog.get(pid)
        run = runs.active(pid)
        if run is None:
            raise Conflict(f"pipeline {pid!r} has no active run")
        return runs.stop(run.id).summary()

    @app.post("/api/pipelines/{pid}/restart", tags=["runs"], status_code=201)
    def restart(pid: PidPath) -> dict[str, Any]:
        """Stop the active run (if any), wait for it to end, and start a new one."""
        catalog.get(pid)
        run = runs.active(pid)
        if run is not None:
            runs.stop(run.id)
            deadline = time.monotonic() + 35
            while run.status in ACTIVE and time.monotonic() < deadline:
                time.sleep(0.1)
        return runs.start(pid).summary()

    @app.get("/api/pipelines/{pid}/runs", tags=["runs"])
    def history(
        pid: PidPath, limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> list[dict[str, Any]]:
        """Run history from the state store (missed scheduled runs included), newest first."""
        return service.history(catalog.get(pid), limit)

    @app.get(
        "/api/pipelines/{pid}/events",
        tags=["runs"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def events(pid: PidPath, request: Request) -> StreamingResponse:
        """Server-sent events of the latest run, pushed as they change: `run` (status,
        rate, counts, lag, end-to-end latency, state sizes), `tap` (`{step, records}`), and
        `end` when no run is active, after which the stream closes and the browser
        reconnects after `retry` milliseconds. Same token rules as every route (the UI's
        cookie, or `Authorization: Bearer`)."""
        await asyncio.to_thread(catalog.get, pid)  # 404 before any stream starts
        return StreamingResponse(
            service.stream(pid, request), media_type="text/event-stream", headers=STREAM_HEADERS
        )

    @app.get("/api/pipelines/{pid}/tap", tags=["runs"])
    def tap(pid: PidPath, step: Annotated[str, Query(max_length=200)]) -> dict[str, Any]:
        """The latest records seen at a step's output in the latest run."""
        catalog.get(pid)
        run = runs.latest(pid)
        records = run.taps.get(step, []) if run is not None else []
        return {"step": step, "run_id": run.id if run else None, "records": records}

    @app.get("/api/pipelines/{pid}/deadletters", tags=["dead letters"])
    def dead_letters(
        pid: PidPath,
        step: Annotated[str | None, Query(max_length=200)] = None,
        reason: Annotated[str | None, Query(max_length=500)] = None,
        include_replayed: bool = False,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    ) -> dict[str, Any]:
        """Browse the dead-letter ledger, filtered by step and by text in the reason."""
        entry = catalog.get(pid)
        if entry.spec is None:
            raise Conflict(f"pipeline {pid!r} is not valid")
        store = open_state_store(entry.spec.state, entry.path.parent)
        try:
            summary = store.ledger.summary(entry.spec.name)
            rows = store.ledger.letters(
                entry.spec.name,
                step=step,
                reason=reason,
                include_replayed=include_replayed,
                limit=limit,
            )
        finally:
            store.close()
        return {
            "summary": [{"step": s, "reason": r, "count": n} for s, r, n in summary],
            "records": [row.__dict__ for row in rows],
        }

    @app.post("/api/pipelines/{pid}/deadletters/replay", tags=["dead letters"], status_code=201)
    def replay(pid: PidPath, body: Annotated[ReplayRequest, Body()]) -> dict[str, Any]:
        """Replay selected dead letters from the step where they failed, in a run process."""
        entry = catalog.get(pid)
        if entry.spec is None:
            raise Conflict(f"pipeline {pid!r} is not valid")
        names = {node["name"] for node in entry.graph()}
        if body.step not in names:
            raise NotFound(f"pipeline {pid!r} has no step {body.step!r}")
        return runs.start(pid, kind="replay", options=body.model_dump()).summary()

    @app.get("/api/runs/{run_id}", tags=["runs"])
    def get_run(run_id: Annotated[str, Field(max_length=64)]) -> dict[str, Any]:
        """A run started by this server: status and per-step counts."""
        return runs.get(run_id).summary()

    @app.post("/api/runs/{run_id}/stop", tags=["runs"])
    def stop_run(run_id: Annotated[str, Field(max_length=64)]) -> dict[str, Any]:
        """Ask a run to drain, checkpoint and end."""
        return runs.stop(run_id).summary()

    @app.get("/api/runs/{run_id}/logs", tags=["runs"])
    def run_logs(
        run_id: Annotated[str, Field(max_length=64)],
        after: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """The run's log lines numbered after `after` (poll with the last `seq` seen)."""
        run: Run = runs.get(run_id)
        lines = [line for line in list(run.logs) if line["seq"] > after]
        return {"run_id": run.id, "status": run.status, "lines": lines}

    @app.get("/api/alerts", tags=["alerts"])
    def alerts() -> dict[str, Any]:
        """Alerts firing now (with metric, value and threshold) and the latest alert events,
        each with the outcome of its notifications (`sent`, or `failed` with the reason)."""
        return {"firing": service.alerts.firing(), "events": service.alerts.recent(100)}


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
