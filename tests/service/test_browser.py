"""The web UI in headless Chromium: open it, start a pipeline, watch counters move by server
push, open the tap and the dead letters, see end-to-end latency, source lag and state size.
Screenshots go to tests/artifacts/ (not committed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tests.service.conftest import Server, demo_pipeline, wait_for
from tests.service.test_live import CONSUME, PRODUCE

ARTIFACTS = Path(__file__).parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The flags that work on these machines (no sandbox as root, no background network).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page():  # type: ignore[no-untyped-def]
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser test: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page, errors
        browser.close()


def count_of(page, selector: str) -> int:  # type: ignore[no-untyped-def]
    text = page.locator(selector).inner_text().replace(",", "")
    return int(text or 0)


@pytest.mark.slow
def test_ui_runs_a_pipeline_and_shows_counters_tap_and_dead_letters(
    tmp_path: Path, browser_page
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "demo.yaml").write_text(demo_pipeline(count=12000, rate=1500), encoding="utf-8")
    page, errors = browser_page
    ARTIFACTS.mkdir(exist_ok=True)
    server = Server(folder)
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("tr[data-pipeline=demo]")
        page.screenshot(path=str(ARTIFACTS / "service-list.png"))
        page.click("tr[data-pipeline=demo] a")
        page.wait_for_selector("#graph-svg g[data-node=typed]")
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.click("#start")

        # The counters move while the run goes on, pushed by the server: after the start,
        # the page asks for the pipeline once and never polls it or the tap.
        cell = "td[data-count='generate:out']"
        # (Polled from Python: the page's CSP forbids the eval that wait_for_function uses.)
        wait_for(lambda: count_of(page, cell) > 0)
        first = count_of(page, cell)
        wait_for(lambda: count_of(page, cell) > first)
        assert count_of(page, cell) > first
        assert page.locator("#title .badge").inner_text() in ("running", "starting", "succeeded")
        assert page.locator("#live-mode").inner_text() == "live: push"
        assert any(url.endswith("/api/pipelines/demo/events") for url in requests), requests
        assert [u for u in requests if u.endswith("/api/pipelines/demo")] == [
            server.url + "/api/pipelines/demo"
        ]
        assert not [u for u in requests if "/tap?" in u]

        # The tap shows the latest records at the chosen step.
        page.select_option("#tap-step", "typed")
        page.wait_for_selector("#tap-table[data-step=typed] td", timeout=15_000)
        assert "code" in page.locator("#tap-table th").all_inner_texts()
        page.screenshot(path=str(ARTIFACTS / "service-pipeline.png"), full_page=True)

        # Wait for the end, then the dead letters of the cast are listed and can be filtered.
        page.wait_for_selector("#title .badge[data-status=succeeded]", timeout=60_000)
        assert count_of(page, "td[data-count='typed:dead_lettered']") == 1200
        # End-to-end latency: every source batch became visible through a checkpoint.
        run = server.http.get("/api/pipelines/demo").json()["run"]
        assert run["counts"]["generate"]["batches"] == 120
        wait_for(lambda: count_of(page, "td[data-latency='generate:batches']") == 120)
        p95 = page.locator("td[data-latency='generate:p95']").inner_text()
        assert p95 == f"{run['end_to_end']['generate']['p95']:.3f} s"
        assert not [u for u in requests if u.endswith("/api/pipelines/demo/tap")]
        page.click("#tab-dead")
        page.wait_for_selector("#dead-table tr[data-dead-id]")
        page.fill("#dead-reason", "cannot cast")
        page.click("#dead-filter")
        page.wait_for_selector("#dead-summary b")
        assert "1,200" in page.locator("#dead-summary").inner_text()
        page.locator("#tab-body").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "service-dead-letters.png"))
        boxes = page.locator("#dead-table input[type=checkbox]")
        boxes.nth(0).check()
        boxes.nth(1).check()
        page.click("#dead-replay")
        wait_for(lambda: "replay run" in page.locator("#dead-status").inner_text())

        # Run history and logs.
        page.click("#tab-runs")
        page.wait_for_selector("#runs .badge[data-status=succeeded]")
        page.click("#tab-logs")
        wait_for(lambda: "succeeded" in page.locator("#logs").inner_text())

        # The YAML editor shows validation messages as one types.
        page.click("#tab-editor")
        page.wait_for_selector("#issues li.ok")
        page.fill("#yaml", "name: demo\nsource:\n  type: generat\nsink:\n  type: stdout\n")
        page.wait_for_selector("#issues li[data-line='3']")
        assert "did you mean 'generate'" in page.locator("#issues").inner_text()
        page.screenshot(path=str(ARTIFACTS / "service-editor.png"), full_page=True)

        # A topic consumer with a stateful step: its lag, latency and state size.
        (folder / "produce.yaml").write_text(PRODUCE, encoding="utf-8")
        (folder / "consume.yaml").write_text(CONSUME, encoding="utf-8")
        produced = server.http.post("/api/pipelines/produce/start").json()["id"]
        wait_for(
            lambda: server.http.get(f"/api/runs/{produced}").json()["status"] == "succeeded",
            timeout=60,
        )
        page.goto(server.url + "/#/p/consume")
        page.wait_for_selector("#graph-svg g[data-node=totals]")
        page.click("#start")
        page.wait_for_selector("#title .badge[data-status=succeeded]", timeout=60_000)
        run = server.http.get("/api/pipelines/consume").json()["run"]
        assert run["counts"]["read"]["out"] == 2000
        wait_for(lambda: count_of(page, "td[data-latency='read:batches']") == 20)
        assert page.locator("td[data-lag='read:records']").inner_text() == "0"
        assert page.locator("td[data-lag='read:seconds']").inner_text() == "0.000 s"
        state = run["state_bytes"]["totals"]
        assert state > 0 and count_of(page, "td[data-count='totals:state_bytes']") == state
        assert page.locator("td[data-count='read:state_bytes']").inner_text() == ""
        page.locator("#sources").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "service-latency-lag-state.png"), full_page=True)
        assert not errors, errors
    finally:
        server.close()
