"""The engine: graph wiring, record accounting, error policies, checkpoints and resume."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import Field

from tideflow.connectors.memory import clear, collected
from tideflow.core.contracts import Context, Sink, Source, SourceBatch
from tideflow.core.engine import Engine
from tideflow.core.observer import RunObserver
from tideflow.core.settings import Settings
from tideflow.errors import PipelineError
from tideflow.registry import Registry
from tideflow.run.plan import engine_for
from tideflow.spec.loader import load_pipeline_text
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


class SendersConfig(Settings):
    """Settings of the test source whose senders wait for acknowledgements."""

    batches: int = 5
    per_batch: int = 3
    queue_first: int = Field(
        1, description="Batches handed on before the first one must be acknowledged."
    )
    give_up: float = Field(30.0, description="Safety bound (s) on waiting for an ack.")


class Senders(Source):
    """A bounded source like a webhook's senders: it hands on ``queue_first`` batches, then
    each next one (and its end) only once everything before it was acknowledged (a
    sequential sender). ``awaiting_ack`` is true while something handed on is not."""

    config_model = SendersConfig

    def open(self, ctx: Context, position: Any) -> None:
        self.handed = int(position or 0)
        self.acked = self.handed
        self.lock = threading.Lock()
        self.acked_event = threading.Event()
        self.gave_up = False
        self.acks: list[int] = []
        self.queued = threading.Event()
        """Set once ``queue_first`` batches have been handed on."""

    def awaiting_ack(self) -> bool:
        with self.lock:
            return self.acked < self.handed

    def read_batch(self) -> SourceBatch | None:
        cfg = self.config
        if self.handed >= cfg.queue_first * cfg.per_batch:
            self.queued.set()
            # The sender waits for its answer (a bounded wait, so a missing checkpoint
            # fails the test instead of hanging it), the last one too.
            if not self.acked_event.wait(cfg.give_up):
                self.gave_up = True
                return None
        if self.handed >= cfg.batches * cfg.per_batch:
            return None
        with self.lock:
            self.acked_event.clear()
            ids = pl.DataFrame({"id": range(self.handed, self.handed + cfg.per_batch)})
            self.handed += cfg.per_batch
            return SourceBatch(ids, self.handed)

    def checkpointed(self, position: Any) -> None:
        with self.lock:
            if position is not None and position > self.acked:
                self.acked = position
                self.acks.append(position)
            if self.acked >= self.handed:
                self.acked_event.set()


class HoldingSink(CrashingSink):
    """A memory sink whose first write waits until the test lets it go."""

    release: threading.Event | None = None

    def write_batch(self, batch: pl.DataFrame) -> None:
        if self.release is not None:
            assert self.release.wait(30), "the test never released the sink"
            HoldingSink.release = None
        super().write_batch(batch)


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    reg.load_plugins()
    reg.register("sink", "crashing")(CrashingSink)
    reg.register("source", "ticker")(Ticker)
    reg.register("source", "acking")(Acknowledging)
    reg.register("source", "stamped")(Stamped)
    reg.register("source", "senders")(Senders)
    reg.register("sink", "holding")(HoldingSink)
    return reg


def run(text: str, tmp_path: Path, registry: Registry | None = None, **kw: Any) -> Any:
    spec = load_pipeline_text(text, "p.yaml", registry=registry)
    return engine_for(spec, tmp_path, registry=registry, **kw).run()


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
    letters = store.ledger.letters("t3")
    assert sorted(letter.record for letter in letters) == ['{"v":"4.5"}', '{"v":"x"}']
    assert all("cannot cast v value" in letter.reason for letter in letters)
    assert {letter.step for letter in letters} == {"cast"}


def test_cast_of_several_columns_dead_letters_each_failed_row_with_its_reason(
    tmp_path: Path,
) -> None:
    clear("t3b")
    result = run(
        """
name: t3b
source:
  type: memory
  records:
    - {a: "1", t: "2026-01-01T00:00:00Z", k: 1}
    - {a: "x", t: "2026-01-01T00:00:01Z", k: 2}
    - {a: "3", t: "not a time", k: 3}
    - {a: "y", t: "never", k: 4}
    - {a: null, t: null, k: 5}
steps:
  - {type: cast, columns: {a: int, t: datetime_utc}}
sink: {type: memory, collector: t3b}
""",
        tmp_path,
    )
    kept = collected("t3b")
    assert kept["k"].to_list() == [1, 5]
    assert kept["a"].to_list() == [1, None]
    assert kept.schema["t"] == pl.Datetime("us", "UTC")
    assert result.counts["cast"] == {**result.counts["cast"], "in": 5, "out": 2, "dead_lettered": 3}
    store = StateStore(tmp_path / ".tideflow" / "state.db")
    reasons = {json.loads(d.record)["k"]: d.reason for d in store.ledger.letters("t3b")}
    assert reasons[2].startswith("cannot cast a value x to Int64")
    assert reasons[3].startswith("cannot cast t value not a time to Datetime")
    assert reasons[4].startswith("cannot cast a value y")  # the first failing column names it


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
    assert StateStore(tmp_path / ".tideflow" / "state.db").ledger.letters("t5") == []


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
        engine = engine_for(
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
    engine = engine_for(spec, tmp_path)
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


def senders_engine(
    tmp_path: Path, registry: Registry, source: str, checkpoint: str, sink: str = "crashing"
) -> Engine:
    text = f"""
name: senders
source: {source}
sink: {{type: {sink}, collector: senders}}
checkpoint: {checkpoint}
"""
    spec = load_pipeline_text(text, "p.yaml", registry=registry)
    return engine_for(spec, tmp_path, registry=registry)


def test_a_waiting_sender_gets_a_checkpoint_without_the_thresholds(
    tmp_path: Path, registry: Registry
) -> None:
    """Thresholds an hour and a million records away: each record a sender waits for is
    checkpointed (and acknowledged) on its own, one checkpoint per sequential post."""
    clear("senders")
    engine = senders_engine(
        tmp_path,
        registry,
        "{type: senders, batches: 5, per_batch: 3}",
        "{every_records: 1000000, every_seconds: 3600, min_interval: 0}",
    )
    result = engine.run()
    source = engine.graph.sources[0].component
    assert isinstance(source, Senders)
    assert not source.gave_up, "a waiting sender got no checkpoint"
    assert source.acks == [3, 6, 9, 12, 15]
    assert result.checkpoints == 6  # one per post, and the run's last (which covers nothing)
    assert collected("senders")["id"].to_list() == list(range(15))


def test_without_waiting_senders_the_thresholds_apply(tmp_path: Path, registry: Registry) -> None:
    clear("senders")
    result = senders_engine(
        tmp_path,
        registry,
        "{type: acking, count: 95, per_batch: 10}",
        "{every_records: 1000000, every_seconds: 3600, min_interval: 0}",
    ).run()
    assert result.checkpoints == 1  # only the last


def test_a_group_commit_takes_every_batch_already_read(tmp_path: Path, registry: Registry) -> None:
    """Batches queued while the engine was busy share the next checkpoint."""
    clear("senders")
    engine = senders_engine(
        tmp_path,
        registry,
        "{type: senders, batches: 4, per_batch: 2, queue_first: 3}",
        "{every_records: 1000000, every_seconds: 3600, min_interval: 0}",
        sink="holding",
    )
    HoldingSink.release = threading.Event()
    runner = threading.Thread(target=engine.run)
    runner.start()
    source = engine.graph.sources[0].component
    assert isinstance(source, Senders)
    # The sink holds the first batch until the other two are queued behind it.
    while not getattr(source, "queued", threading.Event()).wait(0.01):
        pass
    # `queued` is set by the read after the third batch, so the third is in the queue.
    HoldingSink.release.set()
    runner.join(30)
    assert not runner.is_alive()
    assert not source.gave_up
    assert source.acks == [6, 8]  # the first three batches in one checkpoint, then the fourth
    assert collected("senders")["id"].to_list() == list(range(8))


def test_min_interval_spaces_group_commits(tmp_path: Path, registry: Registry) -> None:
    """Senders that always wait get checkpoints no closer than ``min_interval`` (a lower
    bound on time, which a slow machine only makes easier to meet)."""
    clear("senders")
    began: list[float] = []
    engine = senders_engine(
        tmp_path,
        registry,
        "{type: senders, batches: 6, per_batch: 1}",
        "{every_records: 1000000, every_seconds: 3600, min_interval: 0.15}",
    )
    checkpoint = engine._checkpoint

    def timed() -> None:
        began.append(time.monotonic())
        checkpoint()

    engine._checkpoint = timed  # type: ignore[method-assign]
    result = engine.run()
    assert result.checkpoints == 7
    gaps = [b - a for a, b in itertools.pairwise(began[:-1])]  # the last: the run's end
    assert min(gaps) >= 0.15, gaps


def test_queued_batches_of_one_source_are_merged_only_when_their_columns_match() -> None:
    """What a group commit takes in one write: consecutive batches of one source with the
    same schema; another source, other columns or a frame without columns stay apart."""
    from tideflow.core.graph import Node
    from tideflow.core.source_queue import SourceItem, coalesce

    a = Node("a", "source", "x", Ticker(TickConfig()))
    b = Node("b", "source", "x", Ticker(TickConfig()))

    def item(node: Node, frame: pl.DataFrame, position: int, dead: int = 0) -> SourceItem:
        bad = pl.DataFrame({"record": ["?"] * dead, "reason": ["bad"] * dead}) if dead else None
        return SourceItem(node, batch=SourceBatch(frame, position, bad), received=position)

    ints = pl.DataFrame({"id": [1, 2]})
    floats = pl.DataFrame({"id": [1.5]})
    items = [
        item(a, ints, 1),
        item(a, ints, 2, dead=1),
        item(a, floats, 3),  # other dtype: not merged (no silent cast)
        item(b, floats, 4),  # other source
        item(b, pl.DataFrame(), 5),  # no columns
        SourceItem(b, ended=True),
        item(b, floats, 6),
    ]
    merged = coalesce(items)
    shapes = [
        (m.source.name, m.batch.size, m.batch.position) if m.batch else (m.source.name, "end")
        for m in merged
    ]
    assert shapes == [("a", 5, 2), ("a", 1, 3), ("b", 1, 4), ("b", 0, 5), ("b", "end"), ("b", 1, 6)]
    first = merged[0]
    assert first.batch is not None and first.received == 1
    assert first.batch.data["id"].to_list() == [1, 2, 1, 2]
    assert first.batch.dead is not None and first.batch.dead.height == 1
