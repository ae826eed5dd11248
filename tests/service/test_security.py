"""A server reachable from other machines answers nothing without its token."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route
from tests.service.conftest import Server

from tideflow.service.app import create_app
from tideflow.service.security import needs_token

TOKEN = "s3rvice-token-for-tests"


def every_request(app: object) -> list[tuple[str, str]]:
    """(method, path) for every route of the app, path parameters filled in."""
    requests = []
    for route in app.routes:  # type: ignore[attr-defined]
        if isinstance(route, APIRoute | Route):
            path = re.sub(r"\{[^}]+\}", "demo", route.path)
            requests += [(method, path) for method in sorted(route.methods or {"GET"})]
        elif isinstance(route, Mount):
            requests.append(("GET", route.path + "/app.js"))
    return requests


def test_every_route_needs_the_token(folder: Path) -> None:
    app = create_app(folder, token=TOKEN, background=False)
    requests = every_request(app)
    paths = {path for _, path in requests}
    assert {"/", "/metrics", "/openapi.json", "/docs", "/static/app.js"} <= paths
    assert "/api/pipelines/demo/events" in paths  # the UI's event stream
    assert len(requests) > 20
    with TestClient(app) as client:
        for method, path in requests:
            response = client.request(method, path)
            assert response.status_code == 401, (method, path, response.status_code)
            assert TOKEN not in response.text
            wrong = client.request(method, path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, (method, path)
        for method, path in requests:
            if method != "GET":
                continue
            response = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code != 401, (method, path)


def test_the_ui_token_becomes_an_http_only_cookie(folder: Path) -> None:
    app = create_app(folder, token=TOKEN, background=False)
    with TestClient(app, follow_redirects=False) as client:
        response = client.get(f"/?token={TOKEN}")
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        client.cookies.set("tideflow_token", TOKEN)
        assert client.get("/api/pipelines").status_code == 200
        client.cookies.set("tideflow_token", "wrong")
        assert client.get("/api/pipelines").status_code == 401


def test_only_loopback_binds_go_without_a_token() -> None:
    assert not needs_token("127.0.0.1") and not needs_token("localhost")
    assert needs_token("0.0.0.0") and needs_token("192.168.1.10") and needs_token("::")


@pytest.mark.slow
def test_serve_on_all_interfaces_requires_the_token(folder: Path) -> None:
    server = Server(folder, "--host", "0.0.0.0", token=TOKEN)
    try:
        assert server.http.get("/api/pipelines").status_code == 200
        anonymous = httpx.get(server.url + "/api/pipelines")
        assert anonymous.status_code == 401
        assert httpx.get(server.url + "/metrics").status_code == 401
        page = httpx.get(server.url + f"/?token={TOKEN}", follow_redirects=True)
        assert page.status_code == 200 and "app.js" in page.text  # through the cookie
        assert httpx.get(server.url + "/api/pipelines/demo/events").status_code == 401
        # The UI's EventSource sends the cookie that opening the page set.
        with httpx.Client(base_url=server.url, follow_redirects=True) as browser:
            browser.get(f"/?token={TOKEN}")
            stream = browser.get("/api/pipelines/demo/events")
        assert stream.status_code == 200 and "event: end" in stream.text
        assert TOKEN not in stream.text
    finally:
        server.close()
    log = server.log.read_text()
    assert "GET /?token=***" in log and TOKEN not in log and "Traceback" not in log
