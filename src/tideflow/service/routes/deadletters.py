"""The dead-letter ledger of a pipeline: browse it, replay from it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from tideflow.service.catalog import Conflict, NotFound
from tideflow.service.server import Service
from tideflow.service.web import PidPath, ReplayRequest
from tideflow.state.locate import open_state_store


def router(service: Service) -> APIRouter:
    """The routes of this resource, served by ``service``."""
    api = APIRouter()
    catalog, runs = service.catalog, service.runs

    @api.get("/api/pipelines/{pid}/deadletters", tags=["dead letters"])
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

    @api.post("/api/pipelines/{pid}/deadletters/replay", tags=["dead letters"], status_code=201)
    def replay(pid: PidPath, body: Annotated[ReplayRequest, Body()]) -> dict[str, Any]:
        """Replay selected dead letters from the step where they failed, in a run process."""
        entry = catalog.get(pid)
        if entry.spec is None:
            raise Conflict(f"pipeline {pid!r} is not valid")
        names = {node["name"] for node in entry.graph()}
        if body.step not in names:
            raise NotFound(f"pipeline {pid!r} has no step {body.step!r}")
        return runs.start(pid, kind="replay", options=body.model_dump()).summary()

    return api
