"""The ``emit`` setting of ``aggregate``: on_update, on_end and every, each checked against an
independent Polars ``group_by`` of the input, across snapshots and partition scopes."""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from tideflow.core.codec import decode_state, encode_state
from tideflow.core.contracts import MAIN_PORT, Context, StepOutput
from tideflow.core.partitions import ScopedStep
from tideflow.errors import ConfigError
from tideflow.operators.timeseries.aggregate import Aggregate, AggregateConfig
from tideflow.run.plan import engine_for
from tideflow.spec.loader import load_pipeline_text

AGGS = {"total": "sum(v)", "n": "count()", "top": "max(v)"}
KEYS = 50


def batches(seed: int, count: int = 4, size: int = 300) -> list[pl.DataFrame]:
    """``count`` batches over ``KEYS`` keys: the first has them all, the others only the first
    half (keys that do not come back show whether what a step holds back survives)."""
    rng = random.Random(seed)
    out = []
    for b in range(count):
        keys = [f"k{i:02d}" for i in range(KEYS)] if b == 0 else []
        spread = KEYS if b == 0 else KEYS // 2
        keys += [f"k{rng.randrange(spread):02d}" for _ in range(size - len(keys))]
        out.append(pl.DataFrame({"k": keys, "v": [rng.randrange(-50, 1000) for _ in keys]}))
    return out


def expected(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The aggregates computed by Polars directly, the oracle."""
    return (
        pl.concat(frames)
        .group_by("k")
        .agg(
            pl.col("v").sum().alias("total"),
            pl.len().cast(pl.Int64).alias("n"),
            pl.col("v").max().alias("top"),
        )
        .sort("k")
    )


def ctx() -> Context:
    return Context("p", "s", Path("."), Path("."), threading.Event())


def make(emit: Any, clock: list[float] | None = None) -> Aggregate:
    step = Aggregate(AggregateConfig(keys=["k"], aggregations=AGGS, emit=emit))
    if clock is not None:
        step.clock = lambda: clock[0]
    step.open(ctx(), None)
    return step


def restore(step: Aggregate, emit: Any, clock: list[float] | None = None) -> Aggregate:
    """A new instance from ``step``'s snapshot, through the state codec (as after a crash)."""
    fresh = Aggregate(AggregateConfig(keys=["k"], aggregations=AGGS, emit=emit))
    if clock is not None:
        fresh.clock = lambda: clock[0]
    fresh.open(ctx(), decode_state(encode_state(step.snapshot())))
    return fresh


def out(result: StepOutput) -> pl.DataFrame:
    return result.outputs.get(MAIN_PORT, pl.DataFrame(schema={"k": pl.String}))


def newest(rows: list[pl.DataFrame]) -> pl.DataFrame:
    """What an upsert sink keyed on ``k`` holds after the rows, in order."""
    return pl.concat([r for r in rows if r.height]).unique("k", keep="last").sort("k")


def test_on_end_emits_one_final_row_per_key_once() -> None:
    data = batches(1)
    step = make("on_end")
    results = [step.process(b) for b in data]
    assert all(out(r).height == 0 for r in results)
    assert sum(r.consumed for r in results) == sum(b.height for b in data)
    final = step.finish()
    assert final.generated == KEYS == out(final).height  # 4 batches, 50 keys: 50 rows, not 200
    assert_frame_equal(out(final).sort("k"), expected(data))
    assert out(step.finish()).height == 0  # emitted once
    # A later run on the same state emits only the keys its input changed, with full totals.
    more = pl.DataFrame({"k": ["k03", "k07"], "v": [5, 6]})
    again = restore(step, "on_end")
    again.process(more)
    assert_frame_equal(
        out(again.finish()).sort("k"),
        expected([*data, more]).filter(pl.col("k").is_in(["k03", "k07"])),
    )


def test_on_end_resumed_from_a_mid_run_snapshot_is_exact() -> None:
    data = batches(2)
    step = make("on_end")
    for b in data[:2]:
        step.process(b)
    resumed = restore(step, "on_end")
    for b in data[2:]:
        resumed.process(b)
    assert_frame_equal(out(resumed.finish()).sort("k"), expected(data))


def test_every_emits_only_the_keys_changed_since_the_last_emission() -> None:
    data = batches(3)
    clock = [100.0]
    step = make({"every": "10s"}, clock)
    emitted = [out(step.process(data[0]))]
    assert emitted[0].height == 0  # nothing before the period has passed
    clock[0] = 105.0
    assert out(step.idle(0)).height == 0
    clock[0] = 110.0
    first = out(step.idle(0))
    assert_frame_equal(first.sort("k"), expected(data[:1]))
    assert out(step.idle(0)).height == 0  # nothing changed since
    small = pl.DataFrame({"k": ["k05", "k09", "k05"], "v": [1, 2, 3]})
    step.process(small)
    clock[0] = 115.0
    assert out(step.idle(0)).height == 0  # at most once per period
    clock[0] = 120.0
    second = out(step.idle(0))
    assert second.get_column("k").sort().to_list() == ["k05", "k09"]
    assert_frame_equal(
        second.sort("k"), expected([data[0], small]).filter(pl.col("k").is_in(["k05", "k09"]))
    )
    # A snapshot holds what is not emitted yet: restored, it is emitted once, and no more.
    step.process(data[1])
    resumed = restore(step, {"every": "10s"}, clock)
    clock[0] = 131.0
    third = out(resumed.idle(0))
    assert_frame_equal(
        third.sort("k"),
        expected([data[0], small, data[1]]).filter(
            pl.col("k").is_in(data[1].get_column("k").implode())
        ),
    )
    for b in data[2:]:
        resumed.process(b)
    rest = out(resumed.finish())  # a bounded input's end emits the rest
    assert_frame_equal(newest([first, second, third, rest]), expected([data[0], small, *data[1:]]))


def test_on_update_is_unchanged_and_restores_state_without_flags() -> None:
    data = batches(4)
    step = make("on_update")
    rows = []
    for b in data:
        got = out(step.process(b))
        assert got.height == b.get_column("k").n_unique()  # every key the batch changed
        rows.append(got)
    assert_frame_equal(newest(rows), expected(data))
    assert out(step.finish()).height == 0
    # A snapshot taken before the flag existed restores as "everything emitted".
    old = step.snapshot()
    old["partials"] = old["partials"].drop("__dirty")
    fresh = Aggregate(AggregateConfig(keys=["k"], aggregations=AGGS, emit="on_end"))
    fresh.open(ctx(), decode_state(encode_state(old)))
    assert out(fresh.finish()).height == 0


def test_expiry_emits_keys_not_yet_emitted() -> None:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    step = Aggregate(
        AggregateConfig(
            keys=["k"],
            aggregations={"n": "count()"},
            time_column="ts",
            expire_after="1m",
            emit="on_end",
        )
    )
    step.open(ctx(), None)
    first = step.process(pl.DataFrame({"ts": [t0, t0], "k": ["a", "b"]}))
    assert out(first).height == 0
    later = step.process(pl.DataFrame({"ts": [t0 + timedelta(minutes=5)], "k": ["a"]}))
    assert out(later).rows() == [("b", 1)]  # b expires: emitted as it is forgotten
    assert out(step.finish()).rows() == [("a", 2)]


def test_group_worker_scopes_keep_each_partitions_pending_keys() -> None:
    """One instance per partition; a partition's snapshot moves to another worker with the
    keys it has not emitted, which that worker emits at the end."""
    data = {"p0": batches(5, 2), "p1": batches(6, 2)}
    for emit in ("on_end", {"every": "1h"}):
        worker_a = ScopedStep(Aggregate(AggregateConfig(keys=["k"], aggregations=AGGS, emit=emit)))
        worker_a.open(ctx(), None)
        for part in data:
            worker_a.adopt(part, None)
        for part, frames in data.items():
            worker_a.current = part
            assert out(worker_a.process(frames[0])).height == 0
        worker_a.current = "p1"
        moved = decode_state(encode_state(worker_a.snapshot()))
        worker_a.drop("p1")  # revoked: taken over by worker b
        worker_b = ScopedStep(Aggregate(AggregateConfig(keys=["k"], aggregations=AGGS, emit=emit)))
        worker_b.open(ctx(), None)
        worker_b.adopt("p1", moved)
        worker_a.current = "p0"
        worker_b.current = "p1"
        worker_a.process(data["p0"][1])
        worker_b.process(data["p1"][1])
        assert_frame_equal(out(worker_a.finish()).sort("k"), expected(data["p0"]))
        assert_frame_equal(out(worker_b.finish()).sort("k"), expected(data["p1"]))


def test_emit_settings_are_validated() -> None:
    for bad in ("sometimes", {"every": "0s"}, {"every": "soon"}, {"each": "1m"}):
        with pytest.raises(ValidationError):
            AggregateConfig(keys=["k"], aggregations=AGGS, emit=bad)
    text = """
name: e
source: {type: generate, shape: sensors, count: 5}
steps:
  - {type: aggregate, keys: [sensor_id], aggregations: {n: count()}, emit: EMIT}
sink: {type: stdout}
"""
    wrong = {
        "sometimes": "write `on_update`, `on_end` or `{every: <duration>}`",
        "{every: soon}": "every: 'soon' is not a duration",
        "{each: 1m}": "every: required",
    }
    for emit, says in wrong.items():
        with pytest.raises(ConfigError) as info:
            load_pipeline_text(text.replace("EMIT", emit), "p.yaml")
        assert f"p.yaml:5: steps[0].emit: {says}" in str(info.value)
        assert len(info.value.issues) == 1  # the form written, not every form of the union


def test_on_end_is_refused_behind_a_source_that_never_ends(tmp_path: Path) -> None:
    text = """
name: endless
source: {type: generate, shape: sensors, keys: 3}
steps:
  - {type: with_columns, name: c, columns: {x: "humidity * 2"}}
  - {type: aggregate, name: totals, keys: [sensor_id], aggregations: {n: count()}, emit: on_end}
sink: {type: stdout}
"""
    with pytest.raises(ConfigError) as info:
        load_pipeline_text(text, "p.yaml")
    message = str(info.value)
    assert "p.yaml:6: steps[1].emit" in message, message  # file, line and field
    assert "'generate' (generate) does not end" in message
    assert "every" in message  # what to write instead
    bounded = load_pipeline_text(text.replace("keys: 3}", "keys: 3, count: 10}"), "p.yaml")
    engine_for(bounded, tmp_path)  # a bounded source is fine
    hidden = text.replace("  - {type: with_columns", "  - {type: with_columns, input: generate")
    with pytest.raises(ConfigError, match=r"steps\[1\]\.emit"):  # through explicit inputs too
        load_pipeline_text(hidden, "p.yaml")


# -- file source -> aggregate -> file and sql sinks, in the engine ---------------------------


def write_inputs(folder: Path, data: list[pl.DataFrame]) -> None:
    folder.mkdir()
    for i, b in enumerate(data):
        b.write_parquet(folder / f"part-{i}.parquet")


PIPELINE = """
name: emit-EMITNAME
source: {type: file, path: "in/*.parquet", format: parquet, batch_size: 300}
steps:
  - {type: aggregate, name: totals, keys: [k],
     aggregations: {total: sum(v), n: count(), top: max(v)}, emit: EMIT}
sinks:
  - {type: file, name: rows, path: out, format: parquet}
  - {type: sql, name: table, url: "sqlite:///totals.db", table: totals, mode: upsert, key: [k]}
checkpoint: {every_records: 500}
"""


@pytest.mark.parametrize("emit", ["on_update", "on_end", "{every: 1h}"])
def test_pipeline_results_equal_a_polars_group_by(tmp_path: Path, emit: str) -> None:
    data = batches(7)
    write_inputs(tmp_path / "in", data)
    name = emit.strip("{}").split(":")[0]
    text = PIPELINE.replace("EMITNAME", name).replace("EMIT", emit)
    result = engine_for(load_pipeline_text(text, "p.yaml"), tmp_path).run()
    assert result.records_in == sum(b.height for b in data)
    with sqlite3.connect(tmp_path / "totals.db") as conn:
        table = pl.DataFrame(
            conn.execute("SELECT k, total, n, top FROM totals").fetchall(),
            schema=["k", "total", "n", "top"],
            orient="row",
        )
    assert_frame_equal(table.sort("k"), expected(data), check_dtypes=False)
    rows = pl.read_parquet(tmp_path / "out" / "*.parquet")
    if emit == "on_update":
        assert rows.height == sum(b.get_column("k").n_unique() for b in data)
    else:  # bounded: one final row per key (every's period never passed in this short run)
        assert_frame_equal(rows.sort("k"), expected(data), check_dtypes=False)
    # Running again with no new input emits nothing more.
    engine_for(load_pipeline_text(text, "p.yaml"), tmp_path).run()
    assert pl.read_parquet(tmp_path / "out" / "*.parquet").height == rows.height
