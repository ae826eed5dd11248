"""System test of the "service" example: `tideflow serve` on its pipelines folder, as the
README starts it, driven through the HTTP API."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.service.conftest import Server, wait_for
from tests.system.helpers import EXAMPLES

pytest.importorskip("fastapi")


def finished(server: Server, run_id: str) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def ended() -> bool:
        result.update(server.http.get(f"/api/runs/{run_id}").json())
        return result["status"] not in ("starting", "running", "stopping")

    wait_for(ended, timeout=120)
    return result


@pytest.mark.slow
def test_the_service_example_serves_runs_and_schedules_its_pipelines(tmp_path: Path) -> None:
    example = tmp_path / "service"
    shutil.copytree(
        EXAMPLES / "service", example, ignore=shutil.ignore_patterns("out", ".*", "*.db")
    )
    server = Server(example / "pipelines")
    try:
        http = server.http
        listed = {p["id"]: p for p in http.get("/api/pipelines").json()}
        assert set(listed) == {"quickstart", "sensors-live", "sql-etl", "sql-etl-seed"}
        assert all(p["valid"] for p in listed.values()), listed
        schedule = listed["quickstart"]["schedule"]
        assert schedule["cron"] == "* * * * *" and schedule["problem"] is None
        assert schedule["next"] is not None
        assert listed["sensors-live"]["alerts"] == ["too_many_spikes", "stalled", "running_hot"]

        # The bounded ETL: seed the source database, then load it.
        seeded = finished(server, http.post("/api/pipelines/sql-etl-seed/start").json()["id"])
        assert seeded["status"] == "succeeded", seeded
        loaded = finished(server, http.post("/api/pipelines/sql-etl/start").json()["id"])
        assert loaded["status"] == "succeeded", loaded
        assert loaded["counts"]["sql"]["out"] > 0
        assert (example / "pipelines" / "analytics.duckdb").exists()

        # The endless stream: runs until stopped, dead-letters spikes.
        run_id = http.post("/api/pipelines/sensors-live/start").json()["id"]
        wait_for(lambda: http.get(f"/api/runs/{run_id}").json()["dead_lettered"] > 0, timeout=90)
        tap = http.get("/api/pipelines/sensors-live/tap", params={"step": "convert"}).json()
        assert tap["records"] and "temperature_f" in tap["records"][0]
        http.post("/api/pipelines/sensors-live/stop")
        assert finished(server, run_id)["status"] == "stopped"
        dead = http.get("/api/pipelines/sensors-live/deadletters").json()
        assert dead["summary"][0]["step"] == "typed"

        metrics = http.get("/metrics").text
        assert 'tideflow_runs_total{pipeline="sensors-live",status="stopped"} 1.0' in metrics
        history = http.get("/api/pipelines/sql-etl/runs").json()
        assert history[0]["status"] == "succeeded"
    finally:
        server.close()
