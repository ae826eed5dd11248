"""Alert rules: fire once, repeat while holding, resolve; delivered to a real webhook receiver
on loopback (JSON and Slack shapes) and to the log."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.service.conftest import LOCAL, demo_pipeline, wait_for

from tideflow.observe.alerts import AlertManager
from tideflow.service.app import create_app
from tideflow.spec.models import AlertSpec, NotifySpec


class Receiver:
    """An HTTP server on loopback that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.bodies if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()


def rule(receiver: Receiver, **settings: Any) -> AlertSpec:
    return AlertSpec.model_validate(
        {
            "name": "too_many_dead",
            "metric": "dead_letter_rate",
            "above": 0.05,
            "for": 10,
            "notify": [
                {"type": "webhook", "url": receiver.url + "/json"},
                {"type": "webhook", "url": receiver.url + "/slack", "format": "slack"},
                {"type": "log"},
            ],
            **settings,
        }
    )


def test_an_alert_fires_once_repeats_and_resolves(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = AlertManager()
    rules = [rule(receiver, repeat=30)]
    caplog.set_level(logging.INFO, "tideflow.alerts")

    def at(t: float, records: float, dead: float) -> list[dict[str, Any]]:
        alerts.observe("p", records, dead, None, True, now=t)
        return alerts.evaluate("p", rules, now=t)

    assert at(0, 0, 0) == []
    assert at(5, 100, 10) == []  # the window of 10 s is not covered yet
    [fired] = at(10, 200, 20)  # 10% dead over the last 10 s
    assert fired["state"] == "firing" and fired["value"] == pytest.approx(0.1)
    assert at(20, 300, 30) == []  # still holding: no repeat before 30 s
    [again] = at(40, 500, 50)
    assert "still firing" in again["message"]
    [resolved] = at(50, 1500, 51)  # 1 dead in 1000 over the last 10 s
    assert resolved["state"] == "resolved"
    assert at(60, 2500, 52) == []
    wait_for(lambda: len(receiver.of("/json")) == 3 and len(receiver.of("/slack")) == 3)
    states = [b["state"] for b in receiver.of("/json")]
    assert sorted(states) == ["firing", "firing", "resolved"]
    assert {b["pipeline"] for b in receiver.of("/json")} == {"p"}
    assert all(set(b) == {"text"} for b in receiver.of("/slack"))
    assert any("RESOLVED p/too_many_dead" in b["text"] for b in receiver.of("/slack"))
    wait_for(lambda: sum("FIRING p/too_many_dead" in r.message for r in caplog.records) == 2)


def test_no_records_fires_only_while_running() -> None:
    sent: list[dict[str, Any]] = []
    alerts = AlertManager(send=lambda notify, event: sent.append(event))
    rules = [AlertSpec.model_validate({"name": "quiet", "metric": "no_records", "for": 5})]
    alerts.observe("p", 0, 0, None, False, now=0)
    alerts.observe("p", 0, 0, None, False, now=10)
    assert alerts.evaluate("p", rules, now=10) == []  # not running: nothing expected
    alerts.observe("p", 50, 0, None, True, now=11)
    alerts.observe("p", 80, 0, None, True, now=14)
    assert alerts.evaluate("p", rules, now=14) == []  # the window includes an idle sample
    alerts.observe("p", 80, 0, None, True, now=17)
    assert alerts.evaluate("p", rules, now=17) == []  # 30 records in the last 5 s
    alerts.observe("p", 80, 0, None, True, now=22)
    [event] = alerts.evaluate("p", rules, now=22)
    assert event["state"] == "firing" and "no records" in event["message"]
    assert alerts.firing()[0]["alert"] == "quiet"


def test_lag_rules_in_seconds_and_in_records_must_hold_for_their_time() -> None:
    sent: list[dict[str, Any]] = []
    alerts = AlertManager(send=lambda notify, event: sent.append(event))
    rules = [
        AlertSpec.model_validate({"name": "late", "metric": "source_lag", "above": 30, "for": 5}),
        AlertSpec.model_validate(
            {"name": "behind", "metric": "source_lag_records", "above": 1000, "for": 5}
        ),
    ]
    alerts.observe("p", 10, 0, 40.0, True, now=0, lag_records=500)
    assert alerts.evaluate("p", rules, now=0) == []  # seconds above, but not for 5 s yet
    alerts.observe("p", 20, 0, 45.0, True, now=5, lag_records=5000)
    [late] = alerts.evaluate("p", rules, now=5)  # records above only just now
    assert late["alert"] == "late" and late["value"] == 45.0
    assert "source lag 45s above 30" in late["message"]
    alerts.observe("p", 30, 0, 2.0, True, now=10, lag_records=4000)
    resolved, behind = alerts.evaluate("p", rules, now=10)
    assert (resolved["alert"], resolved["state"]) == ("late", "resolved")
    assert (behind["alert"], behind["state"], behind["value"]) == ("behind", "firing", 4000)
    assert "source lag 4000 records above 1000" in behind["message"]
    # A pipeline whose sources report no lag never fires a lag rule.
    alerts.observe("q", 1, 0, None, True, now=0)
    alerts.observe("q", 2, 0, None, True, now=100)
    assert alerts.evaluate("q", rules, now=100) == []


def test_a_webhook_that_fails_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    from tideflow.observe.alerts import deliver

    notify = NotifySpec(type="webhook", url="http://127.0.0.1:9/hook")
    deliver(notify, {"alert": "a", "state": "firing", "message": "m"})
    assert "webhook http://127.0.0.1:9/hook failed" in caplog.text


@pytest.mark.slow
def test_the_server_alerts_on_a_running_pipeline(receiver: Receiver, folder: Path) -> None:
    text = demo_pipeline(count=6000, rate=1500) + (
        "alerts:\n"
        "  - name: dead_letters\n"
        "    metric: dead_letter_rate\n"
        "    above: 0.05\n"
        "    for: 1\n"
        f"    notify: [{{type: webhook, url: '{receiver.url}/hook'}}]\n"
    )
    (folder / "demo.yaml").write_text(text, encoding="utf-8")
    with TestClient(create_app(folder, tick_seconds=0.2), base_url=LOCAL) as client:
        assert client.post("/api/pipelines/demo/start").status_code == 201
        wait_for(lambda: len(receiver.of("/hook")) >= 1, timeout=60)
        first = receiver.of("/hook")[0]
        assert first["state"] == "firing" and first["pipeline"] == "demo"
        assert first["value"] == pytest.approx(0.1, abs=0.02)
        # When the run ends the rule no longer holds: one resolved message.
        wait_for(lambda: [b["state"] for b in receiver.of("/hook")] == ["firing", "resolved"])
        shown = client.get("/api/alerts").json()
        assert [e["state"] for e in shown["events"]] == ["resolved", "firing"]


def test_a_rule_on_the_data_counts_matching_records_at_a_step(folder: Path) -> None:
    text = demo_pipeline(count=6000, rate=1500) + (
        "alerts:\n"
        "  - name: round_numbers\n"
        "    metric: matching_records\n"
        "    step: label\n"
        '    where: "id % 100 = 0"\n'
        "    above: 5\n"
        "    for: 1\n"
    )
    (folder / "demo.yaml").write_text(text, encoding="utf-8")
    with TestClient(create_app(folder, tick_seconds=0.2), base_url=LOCAL) as client:
        assert client.post("/api/pipelines/demo/start").status_code == 201

        def fired() -> list[dict[str, Any]]:
            events = client.get("/api/alerts").json()["events"]
            return [e for e in events if e["alert"] == "round_numbers"]

        wait_for(lambda: bool(fired()), timeout=60)
        event = fired()[-1]
        assert event["state"] == "firing" and event["metric"] == "matching_records"
        assert 5 < event["value"] <= 40  # 15 matching records a second, over 1 s
        assert "matched `id % 100 = 0`" in event["message"]


def test_data_rules_name_an_existing_step(write_pipeline: Any) -> None:
    from tideflow.errors import ConfigError
    from tideflow.spec.loader import load_pipeline

    path = write_pipeline(
        """
        name: p
        source: {type: generate, count: 5}
        sink: {type: stdout}
        alerts:
          - {name: a, metric: matching_records, step: nope, where: "x > 1", above: 1}
        """
    )
    with pytest.raises(ConfigError, match=r"alerts\[0\]\.step: no step named 'nope'"):
        load_pipeline(path)


class Failing:
    """A webhook receiver on loopback that answers 500, or, for `/slow`, answers nothing
    within the webhook timeout."""

    def __init__(self) -> None:
        release = self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/slow":
                    release.wait(30)
                self.send_response(500)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def test_each_notification_records_whether_it_was_sent_and_why_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Against real receivers: a 500, a closed port, a receiver that never answers, a URL
    that is not http(s), and the log. The UI's copy of the event says, per target, `sent`
    or `failed` with the reason; a webhook is named by scheme, host and port only (its path
    and query are often its secret); the message gives the rate as a rounded percentage."""
    from tests.service.conftest import free_port

    from tideflow.observe import alerts as alerts_module

    monkeypatch.setattr(alerts_module, "WEBHOOK_TIMEOUT", 0.5)
    failing = Failing()
    closed = free_port()
    try:
        spec = AlertSpec.model_validate(
            {
                "name": "dead",
                "metric": "dead_letter_rate",
                "above": 0.001,
                "for": 10,
                "notify": [
                    {"type": "webhook", "url": failing.url + "/T000/B000/secret?token=x1"},
                    {"type": "webhook", "url": f"http://127.0.0.1:{closed}/hook"},
                    {"type": "webhook", "url": failing.url + "/slow", "format": "slack"},
                    {"type": "webhook", "url": "ftp://example.invalid/x"},
                    {"type": "log"},
                ],
            }
        )
        manager = AlertManager()
        manager.observe("p", 0, 0, None, True, now=0)
        manager.observe("p", 149, 0.3125, None, True, now=10)  # 0.3125/149 = 0.0020973...
        [event] = manager.evaluate("p", [spec], now=10)
        assert event["value"] == pytest.approx(0.0020973154362416107)
        assert "dead-letter rate 0.21% of records read above 0.1%" in event["message"]
        assert "notifications" not in event  # what a webhook receives is unchanged

        def outcomes() -> list[dict[str, Any]]:
            return manager.recent()[0]["notifications"]

        wait_for(lambda: all(n["status"] != "sending" for n in outcomes()), timeout=30)
        port = failing.url.rsplit(":", 1)[1]
        assert outcomes() == [
            {
                "to": f"webhook http://127.0.0.1:{port}",
                "status": "failed",
                "error": "HTTP 500 Internal Server Error",
            },
            {
                "to": f"webhook http://127.0.0.1:{closed}",
                "status": "failed",
                "error": "Connection refused",
            },
            {
                "to": f"slack webhook http://127.0.0.1:{port}",
                "status": "failed",
                "error": "no answer within 0.5 s",
            },
            {
                "to": "webhook ftp://example.invalid",
                "status": "failed",
                "error": "the webhook URL must start with http:// or https://",
            },
            {"to": "log", "status": "sent", "error": None},
        ]
        firing = manager.firing()
        assert firing[0]["metric"] == "dead_letter_rate" and firing[0]["threshold"] == 0.001
    finally:
        failing.close()
