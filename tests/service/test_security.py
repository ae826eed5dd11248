"""A server reachable from other machines answers nothing without its token."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route
from tests.service.conftest import LOCAL, Server, run_to_end, wait_for

from tideflow.service.app import create_app
from tideflow.service.policy import Policy
from tideflow.service.security import allowed_hosts, host_name, needs_token
from tideflow.spec.loader import load_pipeline_text

TOKEN = "s3rvice-token-for-tests"


def flat_routes(routes: list[Any]) -> Iterator[Any]:
    """Every route, those of included routers too (FastAPI >= 0.165 keeps an included
    router as one entry that holds its routes)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from flat_routes(inner.routes)
        else:
            yield route


def every_request(app: object) -> list[tuple[str, str]]:
    """(method, path) for every route of the app, path parameters filled in."""
    requests = []
    for route in flat_routes(app.routes):  # type: ignore[attr-defined]
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
    with TestClient(app, base_url=LOCAL) as client:
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
    with TestClient(app, base_url=LOCAL, follow_redirects=False) as client:
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


# -- DNS rebinding, cross-site requests, the pipeline policy -----------------------------


def test_every_route_refuses_a_foreign_host_name(folder: Path) -> None:
    """A DNS-rebinding page reaches the loopback server under its own name: refused."""
    app = create_app(folder, background=False)
    requests = every_request(app)
    with TestClient(app, base_url="http://attacker.example") as client:
        for method, path in requests:
            response = client.request(method, path)
            assert response.status_code == 421, (method, path, response.status_code)
            if method != "HEAD":
                assert "--allowed-host" in response.json()["detail"]
        # The port does not make a name acceptable, nor does a trailing dot on a good one.
        assert (
            client.get("/api/pipelines", headers={"host": "attacker.example:80"}).status_code == 421
        )
    with TestClient(app, base_url=LOCAL) as client:
        for name in ("127.0.0.1", "localhost", "LOCALHOST:8080", "[::1]:8080", "localhost."):
            assert client.get("/api/pipelines", headers={"host": name}).status_code == 200, name
        # 0.0.0.0 reaches loopback on Linux browsers ("0.0.0.0 day"): never a valid name.
        assert client.get("/api/pipelines", headers={"host": "0.0.0.0:8080"}).status_code == 421


def test_allowed_hosts_are_the_bound_address_localhost_and_the_named_ones() -> None:
    hosts = allowed_hosts("192.0.2.7", ["tideflow.internal", "Box.Example:8080"])
    assert hosts is not None
    assert {"192.0.2.7", "localhost", "127.0.0.1", "::1", "tideflow.internal"} <= hosts
    assert "box.example" in hosts and "attacker.example" not in hosts
    everywhere = allowed_hosts("0.0.0.0")
    assert everywhere is not None and "0.0.0.0" not in everywhere
    assert socket.gethostname().lower() in everywhere
    assert allowed_hosts("127.0.0.1", ["*"]) is None
    assert host_name("[::1]:8080") == "::1" and host_name("Example.COM.:80") == "example.com"


def test_an_allowed_host_name_is_answered(folder: Path) -> None:
    app = create_app(folder, background=False, hosts=("tideflow.internal",))
    with TestClient(app, base_url="http://tideflow.internal:8080") as client:
        assert client.get("/api/pipelines").status_code == 200


def test_cross_site_state_changes_are_refused_on_every_route(folder: Path) -> None:
    """A page on another site POSTs `text/plain` (no CORS preflight): it must not start a
    run, nor change anything else; the same request from the server's own page passes."""
    app = create_app(folder, background=False)
    changing = [(m, p) for m, p in every_request(app) if m not in ("GET", "HEAD", "OPTIONS")]
    assert ("POST", "/api/pipelines/demo/start") in changing and len(changing) >= 8
    foreign = [
        {"origin": "http://attacker.example", "content-type": "text/plain"},
        {"origin": "null", "content-type": "text/plain"},
        {"sec-fetch-site": "cross-site", "content-type": "text/plain"},
        {"sec-fetch-site": "same-site", "origin": "http://ui.127.0.0.1.example"},
        # A browser that sends Sec-Fetch-Site decides, whatever Origin says.
        {"sec-fetch-site": "cross-site", "origin": LOCAL},
    ]
    with TestClient(app, base_url=LOCAL) as client:
        for method, path in changing:
            for headers in foreign:
                response = client.request(method, path, headers=headers, content=b"{}")
                assert response.status_code == 403, (method, path, headers, response.text)
                assert "another web site" in response.json()["detail"]
        assert client.get("/api/pipelines/demo").json()["status"] == "idle"
        # The UI's own requests (same origin) and non-browser clients (no such headers).
        same = {"origin": LOCAL, "sec-fetch-site": "same-origin"}
        started = client.post("/api/pipelines/demo/start", headers=same)
        assert started.status_code == 201, started.text
        wait_for(
            lambda: (
                client.get(f"/api/runs/{started.json()['id']}").json()["status"]
                not in ("starting", "running", "stopping")
            )
        )
        assert client.post("/api/validate", json={"yaml": "name: x\n"}).status_code == 200
        # Reading stays open: GET is never refused for its origin.
        assert client.get("/api/pipelines", headers=foreign[0]).status_code == 200


def test_policy_refuses_python_steps_outside_files_and_sql_file_access(
    folder: Path, tmp_path: Path
) -> None:
    """The holes of issue 20: code execution and reading any file through the API."""
    secret = tmp_path / "secret.txt"
    secret.write_text("name\nhunter2\n", encoding="utf-8")
    hostile = {
        "popen": (
            "name: popen\nsource: {type: generate, shape: sequence, count: 1}\n"
            "steps:\n  - {type: sql, query: \"SELECT 'id' AS args FROM batch\"}\n"
            "  - type: python\n    function: 'subprocess:Popen'\n    mode: batch\n"
            "sink: {type: stdout}\n",
            "steps[1].function",
            6,
            "--allow-python",
        ),
        "passwd": (
            f"name: passwd\nsource:\n  type: file\n  path: {secret}\n  format: csv\n"
            "sink: {type: stdout}\n",
            "source.path",
            4,
            "--allow-path",
        ),
        "climb": (
            "name: climb\nsource: {type: generate, shape: sequence, count: 1}\n"
            "sink: {type: file, path: ../../escaped, format: ndjson}\n",
            "sink.path",
            3,
            "--allow-path",
        ),
        "polars": (
            "name: polars\nsource: {type: generate, shape: sequence, count: 1}\n"
            "steps:\n  - type: sql\n    engine: polars\n"
            f"    query: \"SELECT * FROM batch, READ_CSV('{secret}')\"\n"
            "sink: {type: stdout}\n",
            "steps[0].query",
            6,
            "--allow-sql-files",
        ),
        "attach": (
            "name: attach\nsource:\n  type: sql\n  url: sqlite:///local.db\n"
            f"  query: \"ATTACH '{secret}' AS s\"\nsink: {{type: stdout}}\n",
            "source.query",
            5,
            "--allow-sql-files",
        ),
        "state": (
            "name: state\nsource: {type: generate, shape: sequence, count: 1}\n"
            f"sink: {{type: stdout}}\nstate: {tmp_path / 'elsewhere.db'}\n",
            "state",
            4,
            "--allow-path",
        ),
    }
    app = create_app(folder, background=False)
    with TestClient(app, base_url=LOCAL) as client:
        for pid, (text, field, line, flag) in hostile.items():
            created = client.post("/api/pipelines", json={"id": pid, "yaml": text})
            assert created.status_code == 422, (pid, created.text)
            [issue] = created.json()["issues"]
            assert (issue["path"], issue["line"], issue["file"]) == (field, line, f"{pid}.yaml")
            assert flag in issue["message"], issue
            checked = client.post("/api/validate", json={"yaml": text}).json()
            assert not checked["valid"] and checked["issues"][0]["path"] == field
            assert not (folder / f"{pid}.yaml").exists()
        # A file put in the folder by hand is held to the same rules: listed as invalid,
        # and a start is refused with the reason.
        (folder / "popen.yaml").write_text(hostile["popen"][0], encoding="utf-8")
        listed = {p["id"]: p for p in client.get("/api/pipelines").json()}
        assert not listed["popen"]["valid"]
        refused = client.post("/api/pipelines/popen/start")
        assert refused.status_code == 409 and "--allow-python" in refused.json()["detail"]
        # Inside the folder, files, SQLite databases and DuckDB's own batch are fine.
        fine = (
            "name: fine\nsource: {type: generate, shape: sequence, count: 5}\n"
            "steps:\n  - {type: sql, query: 'SELECT id * 2 AS twice FROM batch'}\n"
            "sinks:\n  - {type: file, path: out/fine, format: ndjson}\n"
            "  - {type: sql, url: 'sqlite:///fine.db', table: fine}\n"
        )
        assert client.post("/api/pipelines", json={"yaml": fine}).status_code == 201
        assert run_to_end(client, "fine")["status"] == "succeeded"


def test_duckdb_in_a_run_process_reaches_no_file(folder: Path, tmp_path: Path) -> None:
    """DuckDB's read_csv cannot be spotted in text reliably (a view, a macro, a string built
    at run time), so the run process opens DuckDB with external access off."""
    secret = tmp_path / "secret.csv"
    secret.write_text("word\nhunter2\n", encoding="utf-8")
    text = (
        "name: reader\nsource: {type: generate, shape: sequence, count: 1}\n"
        f"steps:\n  - {{type: sql, query: \"SELECT word FROM batch, read_csv('{secret}')\"}}\n"
        "sink: {type: file, path: out/reader, format: ndjson}\n"
    )
    app = create_app(folder, background=False)
    with TestClient(app, base_url=LOCAL) as client:
        assert client.post("/api/pipelines", json={"yaml": text}).status_code == 201
        run = run_to_end(client, "reader")
        assert run["status"] == "failed"
        assert "file system operations are disabled" in run["error"]
        assert "hunter2" not in str(client.get(f"/api/runs/{run['id']}/logs").json())
    # With --allow-sql-files the same pipeline reads the file.
    app = create_app(folder, background=False, policy=Policy(allow_sql_files=True))
    with TestClient(app, base_url=LOCAL) as client:
        assert run_to_end(client, "reader")["status"] == "succeeded"
    [written] = (folder / "out" / "reader").glob("*.ndjson")
    assert "hunter2" in written.read_text(encoding="utf-8")


def test_policy_flags_lift_each_limit(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "shared"
    outside.mkdir()
    (outside / "in.csv").write_text("a\n1\n", encoding="utf-8")
    text = (
        f"name: lifted\nsource: {{type: file, path: '{outside}/*.csv', format: csv}}\n"
        "steps:\n  - {type: python, function: 'json:dumps', mode: batch}\n"
        "sink: {type: stdout}\n"
    )
    strict = create_app(folder, background=False)
    with TestClient(strict, base_url=LOCAL) as client:
        issues = client.post("/api/validate", json={"yaml": text}).json()["issues"]
        assert {i["path"] for i in issues} == {"source.path", "steps[0].function"}
    lifted = Policy(allow_python=True, paths=(outside,))
    with TestClient(create_app(folder, background=False, policy=lifted), base_url=LOCAL) as client:
        assert client.post("/api/validate", json={"yaml": text}).json()["valid"]


@pytest.mark.slow
def test_serve_flags_reach_the_policy_and_the_host_check(folder: Path) -> None:
    server = Server(folder, "--allowed-host", "tideflow.internal", "--allow-python")
    try:
        assert (
            httpx.get(server.url + "/api/pipelines", headers={"host": "evil.example"}).status_code
            == 421
        )
        named = httpx.get(server.url + "/api/pipelines", headers={"host": "tideflow.internal:1"})
        assert named.status_code == 200
        text = (
            "name: py\nsource: {type: generate, shape: sequence, count: 1}\n"
            "steps:\n  - {type: python, function: 'json:dumps', mode: batch}\n"
            "sink: {type: stdout}\n"
        )
        assert server.http.post("/api/validate", json={"yaml": text}).json()["valid"]
        cross = server.http.post(
            "/api/pipelines/demo/start",
            headers={"origin": "http://attacker.example", "content-type": "text/plain"},
        )
        assert cross.status_code == 403
    finally:
        server.close()


def test_policy_paths_resolve_symlinks_home_globs_and_urls(tmp_path: Path) -> None:
    folder = tmp_path / "pipelines"
    (folder / "data").mkdir(parents=True)
    (folder / "inside").symlink_to(folder / "data")
    (folder / "outside").symlink_to(tmp_path)
    policy = Policy()

    def refused(path: str) -> bool:
        source = f"{{type: file, path: '{path}', format: csv}}"
        text = f"name: p\nsource: {source}\nsink: {{type: stdout}}\n"
        spec = load_pipeline_text(text, "p.yaml")
        return bool(policy.issues(spec, text, "p.yaml", folder))

    for fine in (
        "data/x.csv",
        "data/**/*.csv",
        "inside/x.csv",
        f"{folder}/data",
        "s3://b/k/",
        f"file://{folder}/data/x.csv",
    ):
        assert not refused(fine), fine
    for bad in (
        "outside/secret.csv",
        "../x.csv",
        "~/x.csv",
        "/etc/passwd",
        "/etc/*",
        "zip://a.csv::data/x.zip",
        "simplecache::s3://b/k",
        "http://example.com/x.csv",
        "file:///etc/passwd",
        "data/../../x.csv",
    ):
        assert refused(bad), bad
