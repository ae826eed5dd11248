"""The published OpenAPI document, and schemathesis against it: no request makes a 500."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from tests.service.conftest import LOCAL

from tideflow.service.app import create_app

schemathesis = pytest.importorskip("schemathesis")

FOLDER = Path(__file__).parent / "openapi-pipelines"
"""Kept outside tmp_path because the schema is built when this module is imported."""


def make_app():  # type: ignore[no-untyped-def]
    FOLDER.mkdir(exist_ok=True)
    (FOLDER / "demo.yaml").write_text(
        "name: demo\nsource: {type: generate, shape: sequence, count: 10}\nsink: {type: stdout}\n",
        encoding="utf-8",
    )
    # schemathesis' ASGI client names the host `testserver`.
    return create_app(FOLDER, background=False, hosts=("testserver",))


APP = make_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


def test_openapi_document_is_published() -> None:
    with TestClient(APP, base_url=LOCAL) as client:
        document = client.get("/openapi.json").json()
    assert document["info"]["title"] == "tideflow"
    paths = set(document["paths"])
    assert {"/api/pipelines", "/api/pipelines/{pid}/start", "/metrics"} <= paths
    assert "/api/pipelines/{pid}/deadletters/replay" in paths


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_makes_a_server_error(case) -> None:  # type: ignore[no-untyped-def]
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
