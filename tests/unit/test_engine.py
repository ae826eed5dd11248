"""The engine: graph wiring, record accounting, error policies, checkpoints and resume."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import Field

from tideflow.connectors.memory import clear, collected
from tideflow.core.contracts import Context, Sink, Source, SourceBatch
from tideflow.core.engine import Engine, RunObserver
from tideflow.errors import PipelineError
from tideflow.registry import Registry
from tideflow.spec.loader import load_pipeline_text
from tideflow.spec.models import Settings
from tideflow.state.store import StateStore


class CrashConfig(Settings):
    """Settings of the test sink."""

    collector: str
    crash_after: int = Field(-1, description="Raise once this many records were written.")


class CrashingSink(Sink):
    """A memory-like sink that dies after N records, like a process killed mid-run."""

    config_model = CrashConfig

    def open(self, ctx: Context, pending: Any) -> None:
        self.written = 0
        self.pending: list[pl.DataFrame] = []

    def write_batch(self, batch: pl.DataFrame) -> None:
        self.written += batch.height
        if 0 <= self.config.crash_after <= self.written:
            raise RuntimeError("simulated crash")
        self.pending.append(batch)

    def commit(self, token: Any) -> None:
        from tideflow.connectors import memory

        with memory._lock:
            memory._collected.setdefault(self.config.collector, []).extend(self.pending)
        self.pending = []


class TickConfig(Settings):
    """Settings of the unbounded test source."""

    per_batch: int = 100


class Ticker(Source):
    """An unbounded source of consecutive ids."""

    config_model = TickConfig
    bounded = False

    def open(self, ctx: Context, position: Any) -> None:
        self.ctx = ctx
        self.next = int(position or 0)

    def read_batch(self) -> SourceBatch | None:
        if self.ctx.wait(0.001):
            return SourceBatch(pl.DataFrame(), self.next)
        ids = pl.DataFrame({"id": range(self.next, self.next + self.config.per_batch)})
        self.next += self.config.per_batch
        return SourceBatch(ids, self.next)


class CountConfig(Settings):
    """Settings of the acknowledging test source."""

    count: int
    per_batch: int = 10


ACKED: list[tuple[Any, list[int]]] = []
"""(position acknowledged, ids committed to the memory collector at that moment)."""


class Acknowledging(Source):
    """A bounded source that records each acknowledgement and what was committed by then."""

    config_model = CountConfig

    def open(self, ctx: Context, position: Any) -> None:
        self.next = int(position or 0)

    def read_batch(self) -> SourceBatch | None:
        if self.next >= self.config.count:
            return None
        end = min(self.next + self.config.per_batch, self.config.count)
        ids = pl.DataFrame({"id": range(self.next, end)})
        self.next = end
        return SourceBatch(ids, end)

    def checkpointed(self, position: Any) -> None:
        committed = collected("acks")
        ACKED.append((position, committed["id"].to_list() if committed.height else []))


class StampedConfig(CountConfig):
    """Settings of the test source whose records carry their own time."""

    stamp: float


class Stamped(Acknowledging):
    """Batches whose oldest record is stamped ``stamp`` (Unix seconds)."""

    config_model = StampedConfig

    def read_batch(self) -> SourceBatch | None:
        batch = super().read_batch()
        if batch is not None:
            batch.event_time = self.config.stamp
        return batch

    def checkpointed(self, position: Any) -> None:
        pass


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    reg.load_plugins()
    reg.register("sink", "crashing")(CrashingSink)
    reg.register("source", "ticker")(Ticker)
    reg.register("source", "acking")(Acknowledging)
    reg.register("source", "stamped")(Stamped)
    return reg


def run(text: str, tmp_path: Path, registry: Registry | None = None, **kw: Any) -> Any:
    spec = load_pipeline_text(text, "p.yaml", registry=registry)
    return Engine(spec, tmp_path, registry=registry, **kw).run()


def test_fan_out_route_and_when_account_for_every_record(tmp_path: Path) -> None:
    for c in ("hot", "cold", "all", "big"):
        clear(f"t1-{c}")
    result = run(
        """
name: t1
source: {type: generate, shape: sequence, count: 1000, batch_size: 128}
steps:
  - {type: filter, expr: "id % 10 != 0"}
  - type: route
    name: split
    routes: {hot: "id >= 500"}
    default: cold
sinks:
  - {type: memory, collector: t1-hot, input: split.hot}
  - {type: memory, collector: t1-cold, input: split.cold}
  - {type: memory, collector: t1-all, input: [split.hot, split.cold]}
  - {type: memory, collector: t1-big, input: split.hot, when: "id > 900"}
""",
        tmp_path,
    )
    ids = [i for i in range(1000) if i % 10 != 0]
    assert sorted(collected("t1-hot")["id"]) == [i for i in ids if i >= 500]
    assert sorted(collected("t1-cold")["id"]) == [i for i in ids if i < 500]
    assert sorted(collected("t1-all")["id"]) == ids
    assert sorted(collected("t1-big")["id"]) == [i for i in ids if i > 900]
    assert result.counts["filter"]["filtered"] == 100
    assert result.counts["memory_4"]["filtered"] == len([i for i in ids if 500 <= i <= 900])
    assert result.unbalanced == []


def test_fan_in_of_two_sources(tmp_path: Path) -> None:
    clear("t2")
    result = run(
        """
name: t2
sources:
  - {type: generate, name: a, shape: sequence, count: 300}
  - {type: memory, name: b, records: [{id: -1}, {id: -2}]}
steps:
  - {type: with_columns, columns: {double: "id * 2"}}
sink: {type: memory, collector: t2}
""",
        tmp_path,
    )
    out = collected("t2")
    assert sorted(out["id"]) == [-2, -1, *range(300)]
    assert (out["double"] == out["id"] * 2).all()
    assert result.records_in == 302


def test_dead_letters_go_to_the_ledger_with_reasons(tmp_path: Path) -> None:
    clear("t3")
    result = run(
        """
name: t3
source:
  type: memory
  records: [{v: "1"}, {v: "x"}, {v: "3"}, {v: "4.5"}]
steps:
  - {type: cast, columns: {v: int}}
sink: {type: memory, collector: t3}
""",
        tmp_path,
    )
    assert sorted(collected("t3")["v"]) == [1, 3]
    assert result.counts["cast"] == {**result.counts["cast"], "in": 4, "out": 2, "dead_lettered": 2}
    store = StateStore(tmp_path / ".tideflow" / "state.db")
    letters = store.dead_letters("t3")
    assert sorted(letter.record for letter in letters) == ['{"v":"4.5"}', '{"v":"x"}']
    assert all("cannot cast v value" in letter.reason for letter in letters)
    assert {letter.step for letter in letters} == {"cast"}


def test_on_error_fail_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="rejected 1 record"):
        run(
            """
name: t4
source: {type: memory, records: [{v: "x"}]}
steps: [{type: cast, columns: {v: int}}]
sink: {type: memory, collector: t4}
on_error: fail
""",
            tmp_path,
        )


def test_on_error_skip_counts_but_stores_nothing(tmp_path: Path) -> None:
    result = run(
        """
name: t5
source: {type: memory, records: [{v: "x"}, {v: "2"}]}
steps: [{type: cast, columns: {v: int}}]
sink: {type: memory, collector: t5}
on_error: skip
""",
        tmp_path,
    )
    assert result.counts["cast"]["dead_lettered"] == 1
    assert StateStore(tmp_path / ".tideflow" / "state.db").dead_letters("t5") == []


def test_dead_letter_sink_receives_records_with_step_and_reason(tmp_path: Path) -> None:
    clear("t6-dead")
    run(
        """
name: t6
source: {type: memory, records: [{v: "x"}, {v: "2"}]}
steps: [{type: cast, name: typed, columns: {v: int}}]
sink: {type: memory, collector: t6}
on_error:
  action: dead_letter
  sink: {type: memory, collector: t6-dead}
""",
        tmp_path,
    )
    dead = collected("t6-dead")
    assert dead.select("record", "step", "pipeline").row(0) == ('{"v":"x"}', "typed", "t6")
    assert "cannot cast" in dead["reason"][0]


def test_crash_then_resume_delivers_every_record_exactly_once(
    tmp_path: Path, registry: Registry
) -> None:
    clear("t7")
    text = """
name: t7
source: {type: generate, shape: sequence, count: 5000, batch_size: 100}
checkpoint: {every_records: 700}
sink: {type: crashing, collector: t7, crash_after: CRASH}
"""
    for crash_after in (1234, 2000, 950):  # records written by that run before it dies
        with pytest.raises(PipelineError, match="simulated crash"):
            run(text.replace("CRASH", str(crash_after)), tmp_path, registry)
    result = run(text.replace("CRASH", "-1"), tmp_path, registry)
    ids = collected("t7")["id"].to_list()
    assert sorted(ids) == list(range(5000))
    assert result.records_in < 5000  # it resumed instead of starting over


def test_stop_drains_checkpoints_and_resumes(tmp_path: Path, registry: Registry) -> None:
    clear("t8")
    text = """
name: t8
source: {type: ticker, per_batch: 50}
checkpoint: {every_records: 100000, every_seconds: 3600}
sink: {type: memory, collector: t8}
"""
    spec = load_pipeline_text(text, "p.yaml", registry=registry)
    for _ in range(2):
        seen = threading.Event()
        engine = Engine(
            spec,
            tmp_path,
            registry=registry,
            observer=RunObserver(on_output=lambda *a, ev=seen: ev.set()),
        )
        runner = threading.Thread(target=engine.run)
        runner.start()
        assert seen.wait(10)
        time.sleep(0.05)
        engine.stop()
        runner.join(10)
        assert not runner.is_alive()
    ids = collected("t8")["id"].to_list()
    # Only checkpointed (committed) data is visible, it is contiguous and has no duplicate.
    assert ids == list(range(len(ids)))
    assert len(ids) >= 100


def test_bounded_queue_limits_read_ahead(tmp_path: Path) -> None:
    """With queue_size 1 the source can be at most a few batches ahead of processing."""
    clear("t9")
    gaps = []
    spec = load_pipeline_text(
        """
name: t9
queue_size: 1
source: {type: generate, shape: sequence, count: 2000, batch_size: 10}
sink: {type: memory, collector: t9}
""",
        "p.yaml",
    )
    engine = Engine(spec, tmp_path)
    source = engine.graph.sources[0].component

    def on_output(node: str, port: str, frame: pl.DataFrame) -> None:
        if node == "generate":
            gaps.append(source.next_index - int(frame["id"].max()) - 1)
            time.sleep(0.001)

    engine.observer = RunObserver(on_output=on_output)
    engine.run()
    # processed batch + one queued + one being produced: at most 3 batches of read-ahead
    assert max(gaps) <= 30


def test_sources_are_acknowledged_only_after_the_sinks_commit(
    tmp_path: Path, registry: Registry
) -> None:
    clear("acks")
    ACKED.clear()
    text = """
name: acks
source: {type: acking, count: 95}
sink: {type: memory, collector: acks}
checkpoint: {every_records: 30}
"""
    run(text, tmp_path, registry)
    assert ACKED, "the source was never acknowledged"
    for position, committed in ACKED:
        # Everything up to the acknowledged position is committed when the ack happens.
        assert committed == list(range(position)), (position, committed[-3:])
    assert ACKED[-1][0] == 95


@pytest.mark.parametrize("source", ["generate", "stamped"])
def test_end_to_end_latency_is_reported_when_the_checkpoint_commits(
    tmp_path: Path, registry: Registry, source: str
) -> None:
    """One latency per source batch, reported by the checkpoint that made the batch visible:
    from the batch's own timestamp where the source gives one, else from its arrival."""
    clear("e2e")
    stamp = 1_000_000_000.0  # 2001: every latency measured from it is at least 20 years
    settings = (
        "{type: generate, shape: sequence, count: 95, batch_size: 10}"
        if source == "generate"
        else f"{{type: stamped, count: 95, stamp: {stamp}}}"
    )
    events: list[tuple[str, float]] = []
    observer = RunObserver(
        on_visible=lambda name, seconds: events.append((name, seconds)),
        on_checkpoint=lambda cp: events.append(("checkpoint", cp)),
    )
    text = f"""
name: e2e
source: {settings}
sink: {{type: memory, collector: e2e}}
checkpoint: {{every_records: 30}}
"""
    before = time.time()
    run(text, tmp_path, registry, observer=observer)
    after = time.time()
    groups, current = [], 0
    for name, _ in events:
        if name == "checkpoint":
            groups.append(current)
            current = 0
        else:
            assert name == source
            current += 1
    # 10 batches of 10 (the last of 5); a checkpoint after every 30 records and at the end.
    assert groups == [3, 3, 3, 1]
    seconds = [value for name, value in events if name != "checkpoint"]
    origin = (before, after) if source == "generate" else (stamp, stamp)
    assert all(max(before - origin[1], 0) <= s <= after - origin[0] for s in seconds), seconds
