"""The web UI in headless Chromium: open it, start a pipeline, watch counters move by server
push, open the tap and the dead letters, see end-to-end latency, source lag and state size;
charts with axes and clock times, the YAML editor with line numbers and issues on their
lines, alerts in their units with each notification's outcome, the run's log.
Screenshots go to tests/artifacts/ (not committed)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tests.service.conftest import Server, demo_pipeline, free_port, wait_for
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


# A user's select-all and paste: CodeMirror handles the paste event itself (typing a
# multi-line text key by key would be auto-indented; the browser's own insertText would
# bypass the editor and write inline styles, which the page's CSP refuses).
PASTE = """(element, text) => {
  const data = new DataTransfer();
  data.setData("text/plain", text);
  element.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data, bubbles: true,
                                                     cancelable: true}));
}"""
OK_GREEN, BAD_RED = "rgb(46, 125, 50)", "rgb(198, 40, 40)"
"""--ok and --bad of style.css."""
CLOCK = re.compile(r"^\d{2}:\d{2}:\d{2}$")


@pytest.fixture
def chromium():  # type: ignore[no-untyped-def]
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser test: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, console: bool = True, **context: Any):  # type: ignore[no-untyped-def]
    """A page in a context of its own, and the list of its script errors and (``console``)
    of the browser's console errors: a style or script the CSP refused, a failed request."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}, **context).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if console:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return page, errors


@pytest.fixture
def browser_page(chromium):  # type: ignore[no-untyped-def]
    return open_page(chromium)


def paste(page, selector: str, text: str) -> None:  # type: ignore[no-untyped-def]
    """Replace the text of the editor at ``selector`` as a user does: select all, paste."""
    content = page.locator(f"{selector} .cm-content")
    content.click()
    page.keyboard.press("Control+A")
    content.evaluate(PASTE, text)


def color(page, selector: str) -> str:  # type: ignore[no-untyped-def]
    return str(page.locator(selector).first.evaluate("e => getComputedStyle(e).color"))


def texts(page, selector: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [t.strip() for t in page.locator(selector).all_text_contents()]


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
        paste(page, "#yaml", "name: demo\nsource:\n  type: generat\nsink:\n  type: stdout\n")
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


@pytest.mark.slow
def test_api_docs_render_offline(tmp_path: Path, chromium) -> None:  # type: ignore[no-untyped-def]
    """/docs and /redoc draw every operation with every request to anything but the server
    blocked: Swagger UI and ReDoc come from the installed package, not a CDN."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "demo.yaml").write_text(demo_pipeline(count=10), encoding="utf-8")
    # Script errors only: ReDoc asks for its logo from a CDN, which the CSP refuses (and the
    # route below blocks), and says so on the console.
    page, errors = open_page(chromium, console=False)
    server = Server(folder)
    foreign: list[str] = []

    def only_the_server(route) -> None:  # type: ignore[no-untyped-def]
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    try:
        document = server.http.get("/openapi.json").json()
        operations = sum(len(methods) for methods in document["paths"].values())
        assert operations > 15
        page.route("**/*", only_the_server)
        page.goto(server.url + "/docs")
        page.wait_for_selector(".opblock", timeout=30_000)
        assert page.locator(".opblock").count() == operations
        shown = page.locator("#swagger-ui").inner_text()
        assert "/api/pipelines/{pid}/start" in shown and "List Pipelines" in shown
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "service-docs.png"))
        # "Try it out" sends a same-origin request, which the cross-site check lets through.
        health = page.locator(".opblock-get", has_text="/api/health")
        health.locator(".opblock-summary").click()
        health.locator("button.try-out__btn").click()
        health.locator("button.execute").click()
        page.wait_for_selector(".opblock-get .live-responses-table .response-col_status")
        assert '"status": "ok"' in health.locator(".live-responses-table").inner_text()

        page.goto(server.url + "/redoc")
        page.locator("h2", has_text="List Pipelines").first.wait_for(timeout=30_000)
        assert "Replay selected dead letters" in page.content()
        assert foreign == [], foreign
        assert not errors, errors
    finally:
        server.close()


SENSORS = """
name: sensors
source: {type: generate, shape: sensors, count: 3000, rate: 500, batch_size: 50, keys: 10}
sink: {type: file, path: out/sensors, format: ndjson}
"""


def seconds_of_day(label: str) -> int:
    hours, minutes, seconds = (int(part) for part in label.split(":"))
    return hours * 3600 + minutes * 60 + seconds


@pytest.mark.slow
def test_charts_have_axes_units_and_clock_times(tmp_path: Path, chromium) -> None:  # type: ignore[no-untyped-def]
    """Throughput over wall-clock time and a tap column over the records' own time column,
    each with round y ticks, the y unit, clock-time x labels and the browser's UTC offset
    (a zone with a half-hour offset, so the labels are converted, not copied)."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "sensors.yaml").write_text(SENSORS, encoding="utf-8")
    zone = ZoneInfo("Asia/Kolkata")
    page, errors = open_page(chromium, timezone_id="Asia/Kolkata")
    server = Server(folder)
    try:
        page.goto(server.url + "/#/p/sensors")
        page.wait_for_selector("#graph-svg g[data-node=generate]")
        started = datetime.now(zone)
        page.click("#start")
        page.wait_for_selector("#title .badge[data-status=succeeded]", timeout=60_000)
        ended = datetime.now(zone)

        chart = "#throughput-chart"
        assert texts(page, f"{chart} .axis-y .axis-title") == ["records/s"]
        assert texts(page, f"{chart} .axis-x .axis-title") == ["time (UTC+05:30)"]
        y_ticks = [float(t.replace(",", "")) for t in texts(page, f"{chart} .axis-y .tick")]
        steps = {round(b - a, 6) for a, b in itertools.pairwise(y_ticks)}
        assert y_ticks[0] == 0 and len(y_ticks) >= 3 and len(steps) == 1, y_ticks
        # The run read 500 records/s: the top tick is above that, and not absurdly so.
        assert 500 <= y_ticks[-1] <= 2000, y_ticks
        x_ticks = texts(page, f"{chart} .axis-x .tick")
        assert len(x_ticks) >= 2 and all(CLOCK.match(t) for t in x_ticks), x_ticks
        first, span = seconds_of_day(started.strftime("%H:%M:%S")), (ended - started).seconds
        for label in x_ticks:  # Kolkata wall-clock times during the run (+ the page's load)
            assert (seconds_of_day(label) - first + 30) % 86400 <= span + 60, (label, started)
        points = page.locator(f"{chart} path.line").get_attribute("d") or ""
        assert points.count("L") >= 5

        # The tap of the source: temperature over the records' `ts`, in the browser's zone.
        page.select_option("#tap-step", "generate")
        page.wait_for_selector("#tap-table[data-step=generate] td")
        page.select_option("#tap-chart-column", "temperature_c")
        tap = "#tap-chart-svg"
        page.wait_for_selector(f"{tap} .axis-y .axis-title:text('temperature_c')")
        assert texts(page, f"{tap} .axis-x .axis-title") == ["ts (UTC+05:30)"]
        header = texts(page, "#tap-table th")
        rows = [
            dict(zip(header, texts(page_row, "td"), strict=True))
            for page_row in [page.locator("#tap-table tr").nth(i) for i in range(1, 21)]
        ]
        stamps = [datetime.fromisoformat(r["ts"]).astimezone(zone) for r in rows]
        temps = [float(r["temperature_c"]) for r in rows if r["temperature_c"]]
        x_labels = texts(page, f"{tap} .axis-x .tick")
        assert x_labels and all(CLOCK.match(t) for t in x_labels), x_labels
        lo, hi = min(stamps).replace(microsecond=0), max(stamps)
        for label in x_labels:  # event times of the records shown, converted to +05:30
            at = datetime.combine(lo.date(), datetime.strptime(label, "%H:%M:%S").time(), zone)
            assert lo <= at <= hi + timedelta(seconds=1), (label, lo, hi)
        tap_y = [float(t.replace(",", "")) for t in texts(page, f"{tap} .axis-y .tick")]
        assert tap_y[0] <= min(temps) and tap_y[-1] >= max(temps), (tap_y, temps)
        assert page.locator(f"{tap} circle.dot").count() == len(temps)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "service-charts.png"), full_page=True)
        assert not errors, errors
    finally:
        server.close()


@pytest.mark.slow
def test_the_yaml_editor_numbers_lines_and_marks_the_lines_of_issues(
    tmp_path: Path, chromium
) -> None:  # type: ignore[no-untyped-def]
    """CodeMirror from the server itself (every other request is refused): line numbers,
    the cited line highlighted and marked, the issue list in red and a valid text in
    green; clicking an issue goes to its line; typing the fix clears it."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "demo.yaml").write_text(demo_pipeline(count=10), encoding="utf-8")
    page, errors = open_page(chromium)
    server = Server(folder)
    foreign: list[str] = []

    def only_the_server(route) -> None:  # type: ignore[no-untyped-def]
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    try:
        page.route("**/*", only_the_server)
        page.goto(server.url + "/#/p/demo")
        page.click("#tab-editor")
        page.wait_for_selector("#yaml .cm-editor")
        page.wait_for_selector("#issues li.ok")
        assert page.locator("#issues").get_attribute("data-valid") == "true"
        assert "valid" in page.locator("#issues li.ok").inner_text()
        assert color(page, "#issues li.ok") == OK_GREEN
        lines = len(demo_pipeline(count=10).splitlines())
        # (CodeMirror draws the lines in the window: bring the editor into it first.)
        page.locator("#yaml").scroll_into_view_if_needed()
        numbers = [str(i) for i in range(1, lines + 2)]
        # The pipeline's own text, though the tab was opened before the page had loaded it.
        assert texts(page, "#yaml .cm-line")[:2] == ["name: demo", demo_pipeline().splitlines()[1]]
        wait_for(lambda: texts(page, "#yaml .cm-lineNumbers .cm-gutterElement:visible") == numbers)

        paste(page, "#yaml", "name: demo\nsource:\n  type: generat\nsink:\n  type: stdout\n")
        page.wait_for_selector("#issues li[data-line='3']")
        assert page.locator("#issues").get_attribute("data-valid") == "false"
        assert color(page, "#issues li[data-line='3']") == BAD_RED
        assert texts(page, "#yaml .cm-line.tf-error-line") == ["type: generat"]
        gutter = page.locator("#yaml .cm-gutter-lint .cm-gutterElement")
        marked = [
            i
            for i in range(gutter.count())
            if gutter.nth(i).locator(".cm-lint-marker-error").count()
        ]
        assert len(marked) == 1
        # The marker stands in the row of line 3: same top as line number 3.
        mark_box = gutter.nth(marked[0]).bounding_box()
        three = page.locator("#yaml .cm-lineNumbers .cm-gutterElement", has_text=re.compile("^3$"))
        assert mark_box is not None and three.bounding_box() is not None
        assert abs(mark_box["y"] - three.bounding_box()["y"]) < 2  # type: ignore[index]
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#tab-body").screenshot(path=str(ARTIFACTS / "service-editor-issue.png"))

        # The issue takes the cursor to its line; typing the missing letter fixes it.
        page.click("#issues li[data-line='3']")
        assert texts(page, "#yaml .cm-activeLine") == ["type: generat"]
        page.keyboard.press("End")
        page.keyboard.type("e")
        page.wait_for_selector("#issues li.ok")
        assert page.locator("#yaml .cm-line.tf-error-line").count() == 0
        assert color(page, "#issues li.ok") == OK_GREEN
        page.click("#save")
        wait_for(lambda: page.locator("#save-status").inner_text() == "saved")
        saved = server.http.get("/api/pipelines/demo").json()["yaml"]
        assert saved == "name: demo\nsource:\n  type: generate\nsink:\n  type: stdout\n"
        assert foreign == [], foreign
        assert not errors, errors  # among them: any style the CSP refused
    finally:
        server.close()


class Refusing:
    """A webhook receiver on loopback that answers every POST with 500."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(500)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def refusing() -> Iterator[Refusing]:
    receiver = Refusing()
    yield receiver
    receiver.server.shutdown()


@pytest.mark.slow
def test_alerts_show_values_in_units_and_why_a_notification_failed(
    tmp_path: Path, browser_page, refusing: Refusing
) -> None:  # type: ignore[no-untyped-def]
    """Every seventh record fails its cast: a dead-letter rate near 1/7 (measured over the
    rule's window, so batches make it vary), shown with three significant digits as a
    percentage of the records read; of three notifications the log one is sent, the
    webhook answering 500 and the one nobody listens on fail, each with its reason (and no
    webhook path)."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    closed = free_port()
    text = demo_pipeline(count=21000, rate=1500).replace("id % 10 = 0", "id % 7 = 0") + (
        "alerts:\n"
        "  - name: dead_letters\n"
        "    metric: dead_letter_rate\n"
        "    above: 0.05\n"
        "    for: 1\n"
        "    notify:\n"
        f"      - {{type: webhook, url: '{refusing.url}/hooks/secret-path?key=k1'}}\n"
        f"      - {{type: webhook, url: 'http://127.0.0.1:{closed}/hook'}}\n"
        "      - {type: log}\n"
    )
    (folder / "demo.yaml").write_text(text, encoding="utf-8")
    page, errors = browser_page
    server = Server(folder)
    try:
        page.goto(server.url + "/#/p/demo")
        page.wait_for_selector("#graph-svg g[data-node=typed]")
        page.click("#start")
        banner = page.locator("#pipeline-alerts .alert[data-alert=dead_letters]")
        banner.wait_for(timeout=60_000)
        assert re.fullmatch(
            r"alert dead_letters is firing: 1\d(\.\d)? % of records read "
            r"\(threshold 5 % of records read\)",
            banner.inner_text(),
        ), banner.inner_text()

        page.goto(server.url + "/#/alerts")
        row = page.locator("#alert-events tr[data-alert=dead_letters][data-state=firing]")
        row.first.wait_for()
        events = server.http.get("/api/alerts").json()["events"]
        value = next(e["value"] for e in events if e["state"] == "firing")
        assert 0.1 < value < 0.2
        shown_value = row.last.locator(".alert-value").inner_text()  # the first event
        assert shown_value == f"{value * 100:.3g} % of records read", (shown_value, value)
        deliveries = row.first.locator(".delivery")
        wait_for(lambda: "sending" not in deliveries.all_inner_texts())
        shown = sorted(deliveries.all_inner_texts())
        port = refusing.url.rsplit(":", 1)[1]
        assert shown == sorted(
            [
                "log: sent",
                f"webhook http://127.0.0.1:{closed}: failed: Connection refused",
                f"webhook http://127.0.0.1:{port}: failed: HTTP 500 Internal Server Error",
            ]
        ), shown
        assert color(page, ".delivery[data-delivery=failed]") == BAD_RED
        assert refusing.bodies and refusing.bodies[0]["value"] == pytest.approx(1 / 7, abs=0.01)
        assert "secret-path" not in page.content() and "key=k1" not in page.content()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "service-alerts.png"), full_page=True)
        assert not errors, errors
    finally:
        server.close()


@pytest.mark.slow
def test_the_logs_tab_shows_the_runs_progress_and_summary(tmp_path: Path, browser_page) -> None:  # type: ignore[no-untyped-def]
    """What `tideflow run` prints, line by line: the start, progress while it runs, the
    per-step table with the run's own counts, the accounting check, the end."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "demo.yaml").write_text(demo_pipeline(count=9000, rate=1500), encoding="utf-8")
    page, errors = browser_page
    server = Server(folder)
    try:
        page.goto(server.url + "/#/p/demo")
        page.wait_for_selector("#graph-svg g[data-node=typed]")
        page.click("#tab-logs")
        page.click("#start")
        page.wait_for_selector("#title .badge[data-status=succeeded]", timeout=60_000)
        run = server.http.get("/api/pipelines/demo").json()["run"]
        logged = server.http.get(f"/api/runs/{run['id']}/logs").json()["lines"]
        assert len(logged) > 10 and any("every record accounted for" in x["text"] for x in logged)
        wait_for(lambda: "succeeded after" in page.locator("#logs").inner_text())
        lines = texts(page, "#logs .log-text")
        seqs = [
            int(s or 0)
            for s in page.locator("#logs .log-line").evaluate_all(
                "ls => ls.map((l) => l.dataset.seq)"
            )
        ]
        assert seqs == list(range(1, len(seqs) + 1))  # each line once, in order
        assert lines[0].startswith("process ") and lines[-1].startswith(
            f"run {run['id']} succeeded"
        )
        assert any(
            t.startswith(f"run {run['id']} of demo started: generate (generate) -> 2 step(s)")
            for t in lines
        )
        assert any(t.startswith("progress:") and "records" in t for t in lines), lines
        typed = next(t for t in lines if re.match(r"[│|] typed ", t))
        cells = [c.strip() for c in re.split(r"[│|]", typed)[1:-1]]
        counts = run["counts"]["typed"]
        assert cells[:8] == [
            "typed",
            "step",
            "cast",
            f"{counts['in']:,}",
            f"{counts['out']:,}",
            f"{counts['filtered']:,}",
            f"{counts.get('consumed', 0):,}",  # aggregated
            f"{counts['dead_lettered']:,}",
        ]
        assert counts["in"] == 9000 and counts["dead_lettered"] == 900
        assert "every record accounted for" in " ".join(lines)
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#tab-body").screenshot(path=str(ARTIFACTS / "service-logs.png"))
        assert not errors, errors
    finally:
        server.close()
