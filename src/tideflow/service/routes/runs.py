"""Runs: start, stop, restart, history, live events, taps and logs."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from tideflow.service.catalog import Conflict
from tideflow.service.runs import ACTIVE, Run
from tideflow.service.server import Service
from tideflow.service.web import STREAM_HEADERS, PidPath


def router(service: Service) -> APIRouter:
    """The routes of this resource, served by ``service``."""
    api = APIRouter()
    catalog, runs = service.catalog, service.runs

    @api.post("/api/pipelines/{pid}/start", tags=["runs"], status_code=201)
    def start(pid: PidPath) -> dict[str, Any]:
        """Start a run in its own process (409 if one is active)."""
        return runs.start(pid).summary()

    @api.post("/api/pipelines/{pid}/stop", tags=["runs"])
    def stop(pid: PidPath) -> dict[str, Any]:
        """Ask the active run to drain, checkpoint and end."""
        catalog.get(pid)
        run = runs.active(pid)
        if run is None:
            raise Conflict(f"pipeline {pid!r} has no active run")
        return runs.stop(run.id).summary()

    @api.post("/api/pipelines/{pid}/restart", tags=["runs"], status_code=201)
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

    @api.get("/api/pipelines/{pid}/runs", tags=["runs"])
    def history(
        pid: PidPath, limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> list[dict[str, Any]]:
        """Run history from the state store (missed scheduled runs included), newest first."""
        return service.history(catalog.get(pid), limit)

    @api.get(
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

    @api.get("/api/pipelines/{pid}/tap", tags=["runs"])
    def tap(pid: PidPath, step: Annotated[str, Query(max_length=200)]) -> dict[str, Any]:
        """The latest records seen at a step's output in the latest run."""
        catalog.get(pid)
        run = runs.latest(pid)
        records = run.taps.get(step, []) if run is not None else []
        return {"step": step, "run_id": run.id if run else None, "records": records}

    @api.get("/api/runs/{run_id}", tags=["runs"])
    def get_run(run_id: Annotated[str, Field(max_length=64)]) -> dict[str, Any]:
        """A run started by this server: status and per-step counts."""
        return runs.get(run_id).summary()

    @api.post("/api/runs/{run_id}/stop", tags=["runs"])
    def stop_run(run_id: Annotated[str, Field(max_length=64)]) -> dict[str, Any]:
        """Ask a run to drain, checkpoint and end."""
        return runs.stop(run_id).summary()

    @api.get("/api/runs/{run_id}/logs", tags=["runs"])
    def run_logs(
        run_id: Annotated[str, Field(max_length=64)],
        after: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """The run's log lines numbered after `after` (poll with the last `seq` seen)."""
        run: Run = runs.get(run_id)
        lines = [line for line in list(run.logs) if line["seq"] > after]
        return {"run_id": run.id, "status": run.status, "lines": lines}

    return api
