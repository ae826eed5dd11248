"""The Stream/Processor API on the embedded log and on Kafka (tansu).

Expected outputs are computed independently in the test (the function applied in plain
Python, or Polars over the generated input), never copied from a run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tideflow import Processor, Stream
from tideflow.connectors.topic.admin import Admin
from tideflow.errors import ConfigError, PipelineError
from tideflow.state.store import StateStore
from tideflow.topics.embedded import open_log


class Doubler(Processor):
    """Doubles ``value``; refuses negative values (they must reach the dead-letter ledger)."""

    def process(self, data: dict[str, Any]) -> dict[str, Any] | None:
        if data["value"] < 0:
            raise ValueError(f"negative value {data['value']}")
        if data["value"] == 0:
            return None
        return {**data, "value": data["value"] * 2}


def double(data: Any) -> Any:
    """The classic example, unchanged."""
    return data * 2


@pytest.fixture(params=["embedded", "kafka"])
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    monkeypatch.delenv("KAFKA_BROKER", raising=False)
    return None if request.param == "embedded" else request.getfixturevalue("kafka_broker")


def fresh(prefix: str) -> str:
    """A topic name no other test uses (also where tests share one embedded log)."""
    return f"{prefix}-{time.time_ns()}-{uuid.uuid4().hex[:6]}"


def test_processors_transform_every_record_and_dead_letter_failures(
    tmp_path: Path, broker: str | None
) -> None:
    topic = fresh("readings")
    stream = Stream("sensors", broker=broker, state_dir=tmp_path)
    stream.register_processor("double", Doubler(), input_topic=topic, output_topic=f"{topic}-x2")
    values = [*range(-3, 0), 0, *range(1, 50)]
    assert stream.stream_data([{"id": i, "value": v} for i, v in enumerate(values)], topic) == 53
    stream.start(stop_at_end=True)

    doubled = sorted(r["value"] for r in stream.read_data(f"{topic}-x2"))
    assert doubled == sorted(v * 2 for v in values if v > 0)
    store = StateStore(tmp_path / ".tideflow" / "state.db")
    letters = store.ledger.letters("sensors-double")
    store.close()
    assert sorted(orjson.loads(d.record)["value"] for d in letters) == [-3, -2, -1]
    assert all("negative value" in d.reason for d in letters)
    counts = stream.results["double"].counts["double"]
    assert (counts["in"], counts["out"], counts["filtered"], counts["dead_lettered"]) == (
        53,
        49,
        1,
        3,
    )


def test_settings_come_from_a_config_file_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAM_NAME", "from-env")
    monkeypatch.setenv("TOPIC", "env-topic")
    monkeypatch.delenv("KAFKA_BROKER", raising=False)
    assert (Stream().name, Stream().topic) == ("from-env", "env-topic")
    config = tmp_path / "stream.yaml"
    config.write_text("name: from-file\ntopic: file-topic\n", encoding="utf-8")
    stream = Stream(config=config)
    assert (stream.name, stream.topic, stream.broker) == ("from-file", "file-topic", None)


# -- publishing ----------------------------------------------------------------------------


def test_stream_data_appends_every_record_on_every_call_and_from_a_new_process(
    tmp_path: Path, broker: str | None
) -> None:
    topic = fresh("in")
    stream = Stream("x", broker=broker, state_dir=tmp_path)
    sent = [
        stream.stream_data([{"value": 1}, {"value": 2}, {"value": 3}], stream_name=topic),
        stream.stream_data([{"value": 4}, {"value": 5}, {"value": 6}], stream_name=topic),
        stream.stream_data([{"value": v} for v in (7, 8, 9, 10)], stream_name=topic),
    ]
    assert sent == [3, 3, 4]
    assert [r["value"] for r in stream.read_data(topic)] == list(range(1, 11))

    # Another Stream object of the same name, in another process, appends too.
    code = (
        "import sys; from tideflow import Stream; "
        "s = Stream('x', broker=sys.argv[1] or None, state_dir=sys.argv[2]); "
        "print(s.stream_data([{'value': 11}, {'value': 12}], stream_name=sys.argv[3]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BROKER"}
    done = subprocess.run(
        [sys.executable, "-c", code, broker or "", str(tmp_path), topic],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
    assert [
        r["value"] for r in Stream("x", broker=broker, state_dir=tmp_path).read_data(topic)
    ] == [*range(1, 13)]


def test_stream_data_refuses_what_is_not_json_and_publishes_nothing(tmp_path: Path) -> None:
    topic = fresh("in")
    stream = Stream("x", state_dir=tmp_path)
    with pytest.raises(TypeError, match=r"record 1 \(set\) cannot be published"):
        stream.stream_data([1, {2}, 3], stream_name=topic)
    assert stream.stream_data([], stream_name=topic) == 0
    assert topic not in Admin(None, tmp_path / ".tideflow").names()
    with pytest.raises(PipelineError, match="does not exist"):
        stream.read_data(topic)  # a misspelt topic is an error, not an empty list


def test_a_processor_does_not_resume_on_another_backend_from_its_checkpoint(
    tmp_path: Path, kafka_broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded log's offsets mean other records on Kafka: resuming there from them
    would skip records without a word, so the stream refuses and says what to do."""
    monkeypatch.delenv("KAFKA_BROKER", raising=False)
    data_in, data_out = fresh("in"), fresh("out")
    embedded = Stream("moving", state_dir=tmp_path)
    embedded.register_processor("p", double, input_topic=data_in, output_topic=data_out)
    embedded.stream_data([1, 2, 3], stream_name=data_in)
    embedded.start(stop_at_end=True)

    on_kafka = Stream("moving", broker=kafka_broker, state_dir=tmp_path)
    on_kafka.register_processor("p", double, input_topic=data_in, output_topic=data_out)
    on_kafka.stream_data([1, 2, 3], stream_name=data_in)
    with pytest.raises(ConfigError, match=r"last ran on embedded.*tideflow state reset moving-p"):
        on_kafka.start(stop_at_end=True)
    assert on_kafka.results == {}  # nothing ran

    cli_reset = subprocess.run(
        [sys.executable, "-m", "tideflow.cli.main", "state", "reset", "moving-p", "--yes"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert cli_reset.returncode == 0, cli_reset.stderr
    on_kafka.start(stop_at_end=True)
    assert on_kafka.read_data(data_out) == [2, 4, 6]


# -- records of any JSON value ---------------------------------------------------------------


def test_the_classic_doubling_example_runs_unchanged(tmp_path: Path, broker: str | None) -> None:
    data_in, data_out = fresh("input"), fresh("double")
    s = Stream("MyPipeline", broker=broker, state_dir=tmp_path)
    s.register_processor("double_numbers", double, input_topic=data_in, output_topic=data_out)
    s.stream_data(data=[1, 2, 3], stream_name=data_in)
    s.start(stop_at_end=True)
    assert s.read_data(data_out) == [2, 4, 6]


def test_any_json_value_reaches_a_processor_as_itself_and_may_be_returned(
    tmp_path: Path, broker: str | None
) -> None:
    data_in, data_out = fresh("values"), fresh("doubled")
    records: list[Any] = [
        1,
        2.5,
        "ab",
        [1, "x"],
        {"a": 1},  # a dict cannot be doubled: dead-lettered, the others go on
        {"a": 1, "nested": {"b": [1, 2]}},
        True,
        None,
        0,
    ]

    def process(data: Any) -> Any:
        if data == 0:
            return None  # dropped (filtered)
        if isinstance(data, dict) and "nested" in data:
            return {**data, "seen": True}  # a dict keeps its own shape: no added keys
        return data * 2

    s = Stream("values", broker=broker, state_dir=tmp_path)
    s.register_processor("proc", process, input_topic=data_in, output_topic=data_out)
    assert s.stream_data(records, stream_name=data_in) == len(records)
    s.start(stop_at_end=True)

    expected = []
    failed = 0
    for record in records:
        try:
            result = process(record)
        except TypeError:
            failed += 1
            continue
        if result is not None:
            expected.append(result)
    assert s.read_data(data_out) == expected
    counts = s.results["proc"].counts["proc"]
    assert counts["dead_lettered"] == failed == 2  # {"a": 1} * 2 and None * 2
    assert counts["filtered"] == 1


# -- failures are loud -----------------------------------------------------------------------


class Fatal(BaseException):
    """Not an Exception: escapes the per-record dead-letter path, as a bug in the runtime
    would."""


def explode(data: dict[str, Any]) -> dict[str, Any]:
    if data["value"] == 3:
        raise Fatal("the processor's thread dies here")
    return data


def test_a_dying_processor_makes_a_blocking_start_raise(tmp_path: Path, broker: str | None) -> None:
    data_in = fresh("in")
    s = Stream("loud", broker=broker, state_dir=tmp_path)
    s.register_processor("explode", explode, input_topic=data_in, output_topic=fresh("out"))
    s.stream_data([{"value": v} for v in (1, 2, 3, 4)], stream_name=data_in)
    with pytest.raises(PipelineError, match=r"'explode' failed.*Fatal.*thread dies here"):
        s.start(stop_at_end=True)
    result = s.results["explode"]
    assert result.status == "failed"
    assert result.error is not None and "Fatal" in result.error


def test_a_dying_processor_stops_the_stream_and_join_and_stop_raise(tmp_path: Path) -> None:
    data_in = fresh("in")
    s = Stream("loud", state_dir=tmp_path)
    s.register_processor("explode", explode, input_topic=data_in, output_topic=fresh("out"))
    s.register_processor("idle", double, input_topic=fresh("quiet"), output_topic=fresh("out"))
    s.stream_data([{"value": v} for v in (1, 2, 3)], stream_name=data_in)
    s.start(block=False)  # unbounded: without the failure the stream would run for ever
    with pytest.raises(PipelineError, match="'explode' failed"):
        s.join(timeout=120)
    assert s.results["explode"].status == "failed"
    assert s.results["idle"].status == "stopped"  # the others were stopped, not left running
    with pytest.raises(PipelineError, match="'explode' failed"):
        s.stop()


def test_a_processor_failing_outside_the_record_path_is_raised(tmp_path: Path) -> None:
    from tideflow.stream import window

    data_in = fresh("in")
    s = Stream("loud", state_dir=tmp_path)
    # The records have no `temperature`: the window step fails the run, not one record.
    s.register_processor(
        "avg",
        window("ts", size="1m", columns=["temperature"]),
        input_topic=data_in,
        output_topic=fresh("out"),
    )
    s.stream_data([{"ts": "2024-01-01T00:00:00Z", "humidity": 1}], stream_name=data_in)
    with pytest.raises(PipelineError, match=r"'avg' failed.*temperature"):
        s.start(stop_at_end=True)


# -- topic names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("input ", "' ' (space) at position 5"),
        ("a/b", "'/' (solidus) at position 1"),
        ("caf\u00e9", "'\u00e9' (latin small letter e with acute) at position 3"),
        ("", "cannot be empty"),
        ("..", "'..' cannot be a topic name"),
        ("x" * 250, "250 characters long; at most 249"),
    ],
)
def test_topic_names_follow_kafkas_rule_on_both_backends(
    tmp_path: Path, broker: str | None, name: str, shown: str
) -> None:
    s = Stream("names", broker=broker, state_dir=tmp_path)
    with pytest.raises(ConfigError, match=shown.replace("(", r"\(").replace(")", r"\)")):
        s.register_processor("p", double, input_topic=name, output_topic="fine")
    with pytest.raises(ConfigError, match="output_topic"):
        s.register_processor("p", double, input_topic="fine", output_topic=name)
    with pytest.raises(ConfigError, match="stream_name"):
        s.stream_data([1], stream_name=name)
    admin = Admin(broker, tmp_path / ".tideflow")
    with pytest.raises(ConfigError, match=r"topic name|cannot be"):
        admin.create(name, 1)
    if broker is None:
        with pytest.raises(ConfigError):
            open_log(tmp_path / ".tideflow" / "topics.db").create_topic(name)
    assert name not in admin.names()


def test_pipeline_files_refuse_bad_topic_names(write_pipeline: Any) -> None:
    from tideflow.spec.loader import load_pipeline

    path = write_pipeline(
        """
        name: bad-topic
        source: {type: topic, topic: "input ", group: g}
        sink: {type: topic, topic: "out/put"}
        """
    )
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    message = str(caught.value)
    assert "source.topic" in message and "' ' (space)" in message
    assert "sink.topic" in message and "'/' (solidus)" in message


# -- bounded chains end by data --------------------------------------------------------------


def slow_fahrenheit(data: dict[str, Any]) -> dict[str, Any]:
    """Slower than the old quiet-time end (2 s for the whole input): the downstream
    processor of a chain must wait for it however long it takes."""
    time.sleep(0.15)
    return {**data, "f": data["c"] * 9 / 5 + 32}


def label(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "label": "hot" if data["f"] > 80 else "cold"}


def test_a_bounded_chain_ends_only_after_each_processor_read_all_its_upstream_wrote(
    tmp_path: Path, broker: str | None
) -> None:
    readings, fahrenheit, labelled = fresh("c"), fresh("f"), fresh("labelled")
    s = Stream("chain", broker=broker, state_dir=tmp_path)
    # Registered downstream first: the order of registration must not matter.
    s.register_processor("label", label, input_topic=fahrenheit, output_topic=labelled)
    s.register_processor("convert", slow_fahrenheit, input_topic=readings, output_topic=fahrenheit)
    records = [{"id": i, "c": c} for i, c in enumerate(range(10, 30))]
    s.stream_data(records, stream_name=readings)
    s.start(stop_at_end=True)

    expected = [
        {**r, "f": r["c"] * 9 / 5 + 32, "label": "hot" if r["c"] * 9 / 5 + 32 > 80 else "cold"}
        for r in records
    ]
    assert s.read_data(labelled) == expected
    assert s.results["label"].counts["topic"]["out"] == 20
    assert s.results["convert"].counts["topic"]["out"] == 20


def test_a_bounded_run_reads_what_its_input_held_at_the_start(tmp_path: Path) -> None:
    """Records published after a bounded processor started are left for its next run, and
    that run reads each exactly once."""
    data_in, data_out = fresh("in"), fresh("out")
    s = Stream("bounded", state_dir=tmp_path)
    gate = tmp_path / "gate"

    def publish_more_while_running(data: Any) -> Any:
        if data == 1 and not gate.exists():
            gate.touch()
            Stream("bounded", state_dir=tmp_path).stream_data([100, 101], stream_name=data_in)
        return data

    s.register_processor(
        "p", publish_more_while_running, input_topic=data_in, output_topic=data_out
    )
    s.stream_data([1, 2, 3], stream_name=data_in)
    s.start(stop_at_end=True)
    assert s.read_data(data_out) == [1, 2, 3]
    s.start(stop_at_end=True)
    assert s.read_data(data_out) == [1, 2, 3, 100, 101]


def test_processors_feeding_each_other_cannot_run_bounded(tmp_path: Path) -> None:
    s = Stream("loop", state_dir=tmp_path)
    s.register_processor("a", double, input_topic="x", output_topic="y")
    s.register_processor("b", double, input_topic="y", output_topic="x")
    with pytest.raises(ConfigError, match="a, b feed each other"):
        s.start(stop_at_end=True)


# -- latency ---------------------------------------------------------------------------------


def test_processors_checkpoint_twice_a_second_by_default_and_the_knob_is_honoured(
    tmp_path: Path,
) -> None:
    from tideflow.run.runner import revalidate

    default = Stream("lat", state_dir=tmp_path)
    default.register_processor("p", double, input_topic="a", output_topic="b")
    spec = revalidate(default._registered["p"].data)
    assert spec.checkpoint.every_seconds is not None and spec.checkpoint.every_seconds <= 1.0
    slow = Stream("lat", state_dir=tmp_path, checkpoint_seconds=7)
    slow.register_processor("p", double, input_topic="a", output_topic="b")
    assert revalidate(slow._registered["p"].data).checkpoint.every_seconds == 7


def test_output_becomes_visible_while_the_processor_keeps_running(tmp_path: Path) -> None:
    data_in, data_out = fresh("in"), fresh("out")
    s = Stream("live", state_dir=tmp_path)
    s.register_processor("p", double, input_topic=data_in, output_topic=data_out)
    s.start(block=False)
    try:
        s.stream_data([21], stream_name=data_in)
        deadline = time.monotonic() + 60  # a safety bound, not the latency (benchmarks/)
        while s.read_data(data_out) != [42]:
            assert time.monotonic() < deadline, "the output never became visible"
            time.sleep(0.05)
        assert s._running_now()  # still running: visible before any stop
    finally:
        s.stop()


def written(stream: Stream) -> int:
    """Records in the topic `out`, 0 before the stream's process created it."""
    try:
        return len(stream.read_data("out"))
    except PipelineError:
        return 0


def test_sigterm_stops_a_blocking_stream_gracefully(tmp_path: Path) -> None:
    """SIGTERM (docker stop) drains and checkpoints like Ctrl-C: start() returns, and a
    restart reads nothing twice."""
    import signal

    script = tmp_path / "run.py"
    script.write_text(
        "from tideflow import Stream\n"
        "def double(x):\n"
        "    return x * 2\n"
        "s = Stream('term')\n"
        "s.register_processor('p', double, input_topic='in', output_topic='out')\n"
        "s.start()\n"
        "print('ended', s.results['p'].status, s.results['p'].counts['p']['in'], flush=True)\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BROKER"}
    for run in range(2):
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stream = Stream("term", state_dir=tmp_path)
            stream.stream_data([1, 2, 3], stream_name="in")
            deadline = time.monotonic() + 60  # a safety bound

            while written(stream) < 3 * (run + 1):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the stream never processed its input"
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert "ended stopped 3" in out  # this run read only its own three records
    assert Stream("term", state_dir=tmp_path).read_data("out") == [2, 4, 6, 2, 4, 6]
