"""Monitoring a Stream: Prometheus metrics, alert rules, and the CLI by pipeline name."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.system.helpers import cli

from tideflow import Stream
from tideflow.errors import ConfigError

# Families `tideflow run --metrics-port` exports for a run that read, processed and wrote.
RUN_FAMILIES = (
    "tideflow_records_total",
    "tideflow_batches_total",
    "tideflow_step_seconds_total",
    "tideflow_batch_latency_seconds",
    "tideflow_end_to_end_latency_seconds",
    "tideflow_source_lag_records",
    "tideflow_source_lag_seconds",
    "tideflow_pipeline_running",
)


def fresh(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}-{uuid.uuid4().hex[:6]}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fail_on_odd(data: int) -> int:
    if data % 2:
        raise ValueError(f"odd value {data}")
    return data


def wait_for(check: Any, what: str, seconds: float = 90) -> Any:
    """Poll ``check`` until it returns something truthy (a safety bound, not a timing)."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_metrics_port_exports_the_run_metrics_of_every_processor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_BROKER", raising=False)
    port = free_port()
    data_in = fresh("in")
    s = Stream("mon", state_dir=tmp_path, metrics_port=port)
    s.register_processor("evens", fail_on_odd, input_topic=data_in, output_topic=fresh("out"))
    s.start(block=False)
    try:
        s.stream_data(list(range(30)), stream_name=data_in)
        wanted = (
            'tideflow_records_total{kind="step",outcome="out",pipeline="mon-evens",'
            'step="evens"} 15.0'
        )

        def counted() -> str | None:
            text = scrape(port)
            return text if wanted in text else None

        text = wait_for(counted, "the counts")
        assert (
            'tideflow_records_total{kind="step",outcome="dead_lettered",pipeline="mon-evens",'
            'step="evens"} 15.0'
        ) in text
        families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        exported = {f.removesuffix("_total") for f in families}
        assert {f.removesuffix("_total") for f in RUN_FAMILIES} <= exported
        assert 'tideflow_pipeline_running{pipeline="mon-evens"} 1.0' in text
    finally:
        s.stop()
    with pytest.raises(OSError):
        scrape(port)  # the endpoint lives as long as the stream runs


class Receiver:
    """A webhook receiver on loopback that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        received = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def firing(self, alert: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["alert"] == alert and e["state"] == "firing"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.server.shutdown()


def test_alert_rules_attach_as_in_a_pipeline_file_and_fire(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_BROKER", raising=False)
    data_in = fresh("in")
    notify = [{"type": "webhook", "url": receiver.url}]
    s = Stream("alerting", state_dir=tmp_path)
    s.register_processor(
        "evens",
        fail_on_odd,
        input_topic=data_in,
        output_topic=fresh("out"),
        alerts=[
            {"name": "quiet", "metric": "no_records", "for": 1, "notify": notify},
            {
                "name": "failing",
                "metric": "dead_letter_rate",
                "above": 0.3,
                "for": 1,
                "notify": notify,
            },
        ],
    )
    s.start(block=False)
    try:
        [quiet] = wait_for(lambda: receiver.firing("quiet"), "the no_records alert")
        assert quiet["pipeline"] == "alerting-evens" and "no records read" in quiet["message"]

        def failing() -> list[dict[str, Any]]:
            s.stream_data([1, 3, 5, 2], stream_name=data_in)  # 3 of 4 dead-lettered
            return receiver.firing("failing")

        [event] = wait_for(failing, "the dead_letter_rate alert")
        assert event["value"] > 0.3 and "dead-letter rate" in event["message"]
    finally:
        s.stop()


def test_a_bad_alert_rule_is_refused_when_the_processor_is_registered(tmp_path: Path) -> None:
    s = Stream("alerting", state_dir=tmp_path)
    with pytest.raises(ConfigError, match="no step named 'nope'"):
        s.register_processor(
            "p",
            fail_on_odd,
            input_topic="a",
            output_topic="b",
            alerts=[
                {
                    "name": "x",
                    "metric": "matching_records",
                    "above": 1,
                    "step": "nope",
                    "where": "true",
                },
            ],
        )


def test_the_cli_finds_a_streams_dead_letters_by_pipeline_name(tmp_path: Path) -> None:
    data_in = fresh("in")
    s = Stream("sensors", state_dir=tmp_path)
    s.register_processor("evens", fail_on_odd, input_topic=data_in, output_topic=fresh("out"))
    s.stream_data([1, 2, 3, 4], stream_name=data_in)
    s.start(stop_at_end=True)

    listed = cli("deadletters", "list", "sensors-evens", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "ValueError: odd value 1" in listed.stdout and "ValueError: odd value 3" in listed.stdout
    # The stream's name stands for its only processor.
    assert cli("deadletters", "list", "sensors", cwd=tmp_path).stdout == listed.stdout
    shown = cli("state", "show", "sensors-evens", cwd=tmp_path)
    assert shown.returncode == 0 and "checkpoint" in shown.stdout

    # Running it needs a pipeline file, which a Stream does not have: said, not guessed.
    ran = cli("run", "sensors-evens", cwd=tmp_path)
    assert ran.returncode == 2 and "has no pipeline file" in ran.stderr
    unknown = cli("deadletters", "list", "nothing-here", cwd=tmp_path)
    assert unknown.returncode == 2 and "sensors-evens" in unknown.stderr

    s.register_processor("odds", fail_on_odd, input_topic=data_in, output_topic=fresh("out"))
    s.start(stop_at_end=True)
    ambiguous = cli("deadletters", "list", "sensors", cwd=tmp_path)
    assert ambiguous.returncode == 2 and "ambiguous" in ambiguous.stderr
