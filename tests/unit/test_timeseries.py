"""Time-series steps: lateness, accounting, configuration, outliers, normalisation and an
end-to-end run through the engine, each checked against an independent computation."""

from __future__ import annotations

import math
import statistics
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from tideflow.connectors.generate import GenerateConfig, _block
from tideflow.connectors.memory import clear, collected
from tideflow.core.codec import decode_state, encode_state
from tideflow.core.contracts import MAIN_PORT, Context, Sink, StepOutput
from tideflow.core.settings import Settings
from tideflow.errors import ConfigError, PipelineError
from tideflow.operators.timeseries._common import parse_duration
from tideflow.operators.timeseries.aggregate import Aggregate, AggregateConfig
from tideflow.operators.timeseries.dedupe import Dedupe, DedupeConfig
from tideflow.operators.timeseries.interpolate import Interpolate, InterpolateConfig
from tideflow.operators.timeseries.normalize import Normalize, NormalizeConfig
from tideflow.operators.timeseries.outliers import Outliers, OutliersConfig
from tideflow.operators.timeseries.window import Window, WindowConfig
from tideflow.registry import Registry
from tideflow.run.plan import engine_for
from tideflow.spec.loader import load_pipeline_text

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(*seconds: int) -> list[datetime]:
    return [T0 + timedelta(seconds=s) for s in seconds]


def frame(seconds: list[int], **cols: list[Any]) -> pl.DataFrame:
    return pl.DataFrame({"ts": at(*seconds), **cols})


def balanced(records_in: int, *results: StepOutput) -> bool:
    out = sum(f.height for r in results for f in r.outputs.values())
    dead = sum(r.dead.height for r in results if r.dead is not None)
    left = sum(r.filtered + r.consumed for r in results)
    return records_in + sum(r.generated for r in results) == out + dead + left


def restored(step: Any, make: Any) -> Any:
    fresh = make()
    fresh.open(Context("p", "s", Path("."), Path("."), threading.Event()), None)
    fresh.open(
        Context("p", "s", Path("."), Path("."), threading.Event()),
        decode_state(encode_state(step.snapshot())),
    )
    return fresh


# -- durations and configuration -----------------------------------------------------------


def test_durations() -> None:
    assert parse_duration("5s") == 5_000_000
    assert parse_duration("1m") == 60_000_000
    assert parse_duration("1h30m") == 5_400_000_000
    assert parse_duration("250ms") == 250_000
    assert parse_duration("0s") == 0
    for bad in ("5", "s", "5 parsecs", "1m5"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_configuration_errors_say_what_to_write() -> None:
    with pytest.raises(ValidationError, match="needs `slide`"):
        WindowConfig(time_column="ts", kind="sliding", size="1m")
    with pytest.raises(ValidationError, match="needs `gap`"):
        WindowConfig(time_column="ts", kind="session")
    with pytest.raises(ValidationError, match="unknown aggregation 'avrage'"):
        WindowConfig(time_column="ts", size="1m", aggregations={"x": "avrage(v)"})
    with pytest.raises(ValidationError, match="not a duration"):
        WindowConfig(time_column="ts", size="ten seconds")
    with pytest.raises(ValidationError, match="use it in a `window` step"):
        AggregateConfig(keys=["k"], aggregations={"m": "median(v)"})
    with pytest.raises(ValidationError, match="0 <= q <= 1"):
        WindowConfig(time_column="ts", size="1m", aggregations={"x": "quantile(v, 2)"})


def test_pipeline_file_errors_have_lines() -> None:
    with pytest.raises(ConfigError, match="needs `size`"):
        load_pipeline_text(
            "name: x\nsource: {type: generate, count: 1}\n"
            "steps:\n  - {type: window, time_column: ts}\nsink: {type: stdout}\n",
            "p.yaml",
        )


def test_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WINDOW_SIZE", "30s")
    monkeypatch.setenv("AGGREGATION_TYPE", "max")
    cfg = WindowConfig(time_column="ts", columns=["v"])
    assert cfg.size == "30s"
    assert cfg.aggregations == {"max_v": "max(v)"}
    explicit = WindowConfig(time_column="ts", size="1m", aggregations={"n": "count()"})
    assert explicit.size == "1m" and explicit.aggregations == {"n": "count()"}
    monkeypatch.delenv("AGGREGATION_TYPE")
    assert WindowConfig(time_column="ts").aggregations == {"count": "count()"}


def test_a_non_time_column_is_an_actionable_error() -> None:
    step = Window(WindowConfig(time_column="ts", size="10s"))
    with pytest.raises(PipelineError, match="cast"):
        step.process(pl.DataFrame({"ts": ["2026-01-01"]}))
    with pytest.raises(PipelineError, match="did you mean"):
        Window(WindowConfig(time_column="tss", size="10s")).process(frame([1]))


# -- event time, watermark, lateness -------------------------------------------------------


def test_windows_close_on_the_watermark_and_late_records_are_dead_lettered() -> None:
    step = Window(
        WindowConfig(
            time_column="ts",
            size="10s",
            max_out_of_orderness="5s",
            aggregations={"n": "count()", "total": "sum(v)"},
        )
    )
    r1 = step.process(frame([1, 12], v=[1, 2]))
    assert r1.outputs[MAIN_PORT].height == 0  # watermark 7s: [0, 10) still open
    r2 = step.process(frame([8, 16], v=[3, 4]))  # 8 is out of order but in time
    assert r2.outputs[MAIN_PORT].to_dicts() == [
        {"window_start": at(0)[0], "window_end": at(10)[0], "n": 2, "total": 4}
    ]
    r3 = step.process(frame([9, 19], v=[100, 5]))  # 9 belongs to the closed window
    assert r3.dead is not None
    assert r3.dead["reason"].to_list() == ["late"]
    assert '"v":100' in r3.dead["record"][0]
    assert r3.consumed == 1
    r4 = step.finish()
    assert r4.outputs[MAIN_PORT].select("n", "total").to_dicts() == [{"n": 3, "total": 11}]
    assert balanced(6, r1, r2, r3, r4)


def test_allowed_lateness_keeps_windows_open_longer() -> None:
    step = Window(
        WindowConfig(
            time_column="ts", size="10s", allowed_lateness="5s", aggregations={"n": "count()"}
        )
    )
    step.process(frame([1, 12], v=[1, 2]))
    late_but_allowed = step.process(frame([3], v=[1]))
    assert late_but_allowed.dead is None and late_but_allowed.consumed == 1
    closing = step.process(frame([16], v=[1]))
    assert closing.outputs[MAIN_PORT]["n"].to_list() == [2]
    too_late = step.process(frame([4], v=[1]))
    assert too_late.dead is not None and too_late.dead.height == 1


def test_records_without_event_time_are_dead_lettered() -> None:
    step = Window(WindowConfig(time_column="ts", size="10s"))
    batch = pl.DataFrame({"ts": [T0, None]}, schema={"ts": pl.Datetime("us", "UTC")})
    result = step.process(batch)
    assert result.dead is not None and "no event time" in result.dead["reason"][0]
    assert balanced(2, result)


def test_late_session_record_is_dead_lettered_but_one_joining_an_open_session_is_not() -> None:
    step = Window(WindowConfig(time_column="ts", kind="session", gap="5s"))
    step.process(frame([0, 2, 30], k=["a"] * 3))  # watermark 30: session [0, 7) closes
    joins = step.process(frame([28], k=["a"]))  # before the watermark, joins the open session
    assert joins.dead is None
    # 6 is behind the watermark and joins no open session (it would extend the closed one);
    # 40 is on time; 12 is behind the watermark with nothing open near it.
    mixed = step.process(frame([6, 40, 12], k=["a"] * 3))
    assert mixed.dead is not None and mixed.dead["reason"].to_list() == ["late", "late"]
    assert mixed.consumed == 1
    last = step.finish().outputs[MAIN_PORT]
    assert last.select("window_start", "window_end", "count").to_dicts() == [
        {"window_start": at(40)[0], "window_end": at(45)[0], "count": 1}
    ]


def test_window_state_is_bounded_by_open_windows() -> None:
    step = Window(WindowConfig(time_column="ts", size="10s", aggregations={"m": "median(v)"}))
    for start in range(0, 1000, 50):
        step.process(frame(list(range(start, start + 50)), v=list(range(50))))
    assert step.partials is not None and step.partials.height <= 2
    assert step.raw is not None and step.raw.height <= 20


def test_tz_and_unit_of_the_time_column_are_kept() -> None:
    batch = pl.DataFrame({"ts": at(1, 2)}).with_columns(
        pl.col("ts").dt.convert_time_zone("Europe/Paris").dt.cast_time_unit("ms")
    )
    out = Window(WindowConfig(time_column="ts", size="1h")).process(batch)
    rows = Window(WindowConfig(time_column="ts", size="1h"))
    rows.process(batch)
    result = rows.finish().outputs[MAIN_PORT]
    assert out.outputs[MAIN_PORT].height == 0
    assert result.schema["window_start"] == pl.Datetime("ms", "Europe/Paris")
    assert result["window_start"][0] == T0


# -- aggregate, dedupe, interpolate --------------------------------------------------------


def test_aggregate_emits_changed_keys_and_expires_idle_ones() -> None:
    step = Aggregate(
        AggregateConfig(
            keys=["k"],
            aggregations={"n": "count()", "last": "last(v)"},
            time_column="ts",
            expire_after="1m",
        )
    )
    first = step.process(frame([0, 1, 2], k=["a", "b", "a"], v=[1, 2, 3]))
    assert sorted(first.outputs[MAIN_PORT].rows()) == [("a", 2, 3), ("b", 1, 2)]
    second = step.process(frame([100], k=["a"], v=[9]))
    assert second.outputs[MAIN_PORT].rows() == [("a", 3, 9)]
    assert step.state is not None and step.state["k"].to_list() == ["a"]  # b expired
    assert balanced(4, first, second)


def test_dedupe_drops_repeats_counts_them_and_dead_letters_late_records() -> None:
    step = Dedupe(DedupeConfig(time_column="ts", keys=["id"], horizon="10s"))
    r1 = step.process(frame([0, 3, 20, 25], id=[1, 1, 1, 2]))
    r2 = step.process(frame([26, 40], id=[2, 1]))
    r3 = step.process(frame([5], id=[3]))
    r4 = step.finish()
    kept = pl.concat(
        [r.outputs[MAIN_PORT] for r in (r1, r2, r3, r4) if r.outputs[MAIN_PORT].height]
    )
    assert kept.rows() == [(at(0)[0], 1), (at(20)[0], 1), (at(25)[0], 2), (at(40)[0], 1)]
    assert sum(r.filtered for r in (r1, r2, r3, r4)) == 2
    assert r3.dead is not None and r3.dead["reason"].to_list() == ["late"]
    assert balanced(7, r1, r2, r3, r4)


def test_interpolation_bridges_batches_and_respects_max_gap() -> None:
    def make() -> Interpolate:
        return Interpolate(
            InterpolateConfig(
                time_column="ts", keys=["k"], columns=["v"], interval="10s", max_gap="30s"
            )
        )

    step = make()
    step.process(frame([5], k=["a"], v=[0.0]))
    step.process(frame([25], k=["a"], v=[20.0]))
    step = restored(step, make)  # the last point per key survives a restart
    step.process(frame([100], k=["a"], v=[0.0]))  # gap 75s > max_gap: nothing invented
    out = pl.concat([step.process(frame([120], k=["a"], v=[5.0])).outputs[MAIN_PORT]])
    final = step.finish().outputs[MAIN_PORT]
    rows = pl.concat([out, final], how="vertical_relaxed") if out.height else final
    assert rows.select("ts", "v").rows() == [
        (at(100)[0], 0.0),
        (at(110)[0], 2.5),
        (at(120)[0], 5.0),
    ]


def test_resample_is_an_alias() -> None:
    reg = Registry()
    reg.load_plugins()
    assert reg.get("step", "resample").cls.config_model is InterpolateConfig


# -- outliers and normalize ----------------------------------------------------------------


def python_scores(values: list[float | None], method: str, window: int) -> list[float | None]:
    """Scores in plain Python: each value against the previous `window` non-null values."""
    history: list[float] = []
    out: list[float | None] = []
    for x in values:
        if x is None:
            out.append(None)
            continue
        h = history[-window:]
        if len(h) < 3:
            score = None
        elif method == "zscore":
            score = (x - statistics.fmean(h)) / statistics.stdev(h)
        elif method == "mad":
            med = statistics.median(h)
            score = 0.6745 * (x - med) / statistics.median(abs(v - med) for v in h)
        else:
            q1, _, q3 = statistics.quantiles(h, n=4, method="inclusive")
            score = (x - q3) / (q3 - q1) if x > q3 else (q1 - x) / (q3 - q1) if x < q1 else 0.0
        out.append(score)
        history.append(x)
    return out


@pytest.mark.parametrize("method", ["zscore", "mad", "iqr"])
def test_outlier_scores_cross_batches_and_match_plain_python(method: str) -> None:
    values: list[float | None] = [10.0, 11.5, 9.0, 10.5, 50.0, None, 10.2, 8.7, 11.1, -30.0]
    values += [10.0 + (i % 5) * 0.7 for i in range(20)]
    keys = ["a" if i % 3 else "b" for i in range(len(values))]

    def make() -> Outliers:
        return Outliers(OutliersConfig(column="v", keys=["k"], method=method, window=6))

    step = make()
    got: list[pl.DataFrame] = []
    for lo in range(0, len(values), 7):
        batch = pl.DataFrame({"k": keys[lo : lo + 7], "v": values[lo : lo + 7]})
        got.append(step.process(batch).outputs[MAIN_PORT])
        step = restored(step, make)
    scored = pl.concat(got)
    for key in ("a", "b"):
        mine = scored.filter(pl.col("k") == key)["score"].to_list()
        expected = python_scores(
            [v for v, k in zip(values, keys, strict=True) if k == key], method, 6
        )
        for g, e in zip(mine, expected, strict=True):
            assert (g is None and e is None) or math.isclose(g, e, rel_tol=1e-9), (mine, expected)
    assert scored.filter(pl.col("v") == -30.0)["is_outlier"].to_list() == [True]


@pytest.mark.parametrize("method", ["zscore", "mad", "iqr"])
def test_a_history_without_spread_scores_other_values_infinite(method: str) -> None:
    # Four equal values: no spread by any measure. The documented rule: an equal value scores
    # 0 (not an outlier), a larger one +inf and a smaller one -inf (iqr: +inf, a distance),
    # both outliers whatever the threshold.
    # Two keys, so that the larger value does not join the history the smaller one meets.
    batch = pl.DataFrame({"k": ["a"] * 6 + ["b"] * 5, "v": [5.0] * 5 + [9.0] + [5.0] * 4 + [1.0]})
    cfg = OutliersConfig(column="v", keys=["k"], method=method, window=4, threshold=1e300)
    scored = Outliers(cfg).process(batch).outputs[MAIN_PORT]
    below = -math.inf if method != "iqr" else math.inf
    none3 = [None, None, None]
    assert scored["score"].to_list() == [*none3, 0.0, 0.0, math.inf, *none3, 0.0, below]
    assert scored["is_outlier"].to_list() == [False] * 5 + [True] + [False] * 4 + [True]


def test_zscore_uses_the_sample_and_normalize_the_population_deviation() -> None:
    history = [1.0, 2.0, 3.0, 4.0]
    # sample: sqrt(sum((h - 2.5)^2) / 3) = sqrt(5 / 3); population: sqrt(5 / 4)
    scored = Outliers(OutliersConfig(column="v", window=4)).process(
        pl.DataFrame({"v": [*history, 10.0]})
    )
    assert math.isclose(scored.outputs[MAIN_PORT]["score"][4], 7.5 / math.sqrt(5 / 3))
    scaled = Normalize(NormalizeConfig(columns=["v"])).process(pl.DataFrame({"v": history}))
    assert math.isclose(scaled.outputs[MAIN_PORT]["v"][3], 1.5 / math.sqrt(5 / 4))
    assert scaled.outputs[MAIN_PORT]["v"][0] is None  # a first value has no spread: null


def test_outliers_drop_and_route_account_for_every_record() -> None:
    batch = pl.DataFrame({"v": [1.0, 2.0, 1.0, 2.0, 90.0, 1.5]})
    dropped = Outliers(OutliersConfig(column="v", mode="drop")).process(batch)
    assert dropped.outputs[MAIN_PORT]["v"].to_list() == [1.0, 2.0, 1.0, 2.0, 1.5]
    assert dropped.filtered == 1
    cfg = OutliersConfig(column="v", mode="route")
    assert Outliers.ports(cfg) == ("out", "outliers")
    routed = Outliers(cfg).process(batch)
    assert routed.outputs["outliers"]["v"].to_list() == [90.0]
    assert balanced(6, routed) and balanced(6, dropped)


def test_normalize_online_matches_running_statistics() -> None:
    values = [3.0, 7.0, None, 1.0, 1e9 + 1, 1e9 + 3, 5.0, 4.0]
    keys = ["a", "a", "a", "b", "c", "c", "a", "b"]

    def make(method: str) -> Normalize:
        return Normalize(NormalizeConfig(columns=["v"], keys=["k"], method=method))

    for method in ("zscore", "minmax"):
        step = make(method)
        first = step.process(pl.DataFrame({"k": keys[:5], "v": values[:5]}))
        step = restored(step, lambda m=method: make(m))
        second = step.process(pl.DataFrame({"k": keys[5:], "v": values[5:]}))
        got = pl.concat([first.outputs[MAIN_PORT], second.outputs[MAIN_PORT]])["v"].to_list()
        seen: dict[str, list[float]] = {}
        for g, k, x in zip(got, keys, values, strict=True):
            if x is None:
                assert g is None
                continue
            seen.setdefault(k, []).append(x)
            h = seen[k]
            if method == "zscore":
                spread, centre = statistics.pstdev(h), statistics.fmean(h)
            else:
                spread, centre = max(h) - min(h), min(h)
            expected = None if spread == 0 else (x - centre) / spread
            assert (g is None and expected is None) or math.isclose(g, expected, rel_tol=1e-9)


def test_normalize_fixed_parameters() -> None:
    step = Normalize(
        NormalizeConfig(
            columns=["v"], method="minmax", fit="fixed", params={"v": {"min": 0, "max": 50}}
        )
    )
    assert step.process(pl.DataFrame({"v": [0, 25, 100]})).outputs[MAIN_PORT]["v"].to_list() == [
        0.0,
        0.5,
        2.0,
    ]
    assert step.snapshot() is None
    with pytest.raises(ValidationError, match="needs"):
        NormalizeConfig(columns=["v"], fit="fixed", params={"v": {"mean": 1}})


# -- end to end ----------------------------------------------------------------------------


def test_a_windowed_pipeline_equals_group_by_dynamic(tmp_path: Path) -> None:
    clear("ts-e2e")
    clear("ts-e2e-in")
    spec = load_pipeline_text(
        """
name: ts-e2e
source: {type: generate, shape: sensors, count: 5000, keys: 4, batch_size: 333, seed: 7}
steps:
  - type: window
    time_column: ts
    keys: [sensor_id]
    size: 1m
    aggregations:
      readings: count()
      avg_temp: mean(temperature_c)
      max_temp: max(temperature_c)
      p50: median(humidity)
sinks:
  - {type: memory, collector: ts-e2e}
  - {type: memory, collector: ts-e2e-in, input: generate}
checkpoint: {every_records: 1000}
""",
        "p.yaml",
    )
    result = engine_for(spec, tmp_path).run()
    got = collected("ts-e2e").sort("window_start", "sensor_id")
    source = collected("ts-e2e-in")
    expected = (
        source.sort("ts")
        .group_by_dynamic("ts", every="1m", group_by="sensor_id", include_boundaries=True)
        .agg(
            pl.len().alias("readings"),
            pl.col("temperature_c").mean().alias("avg_temp"),
            pl.col("temperature_c").max().alias("max_temp"),
            pl.col("humidity").median().alias("p50"),
        )
        .rename({"_lower_boundary": "window_start", "_upper_boundary": "window_end"})
        .select(got.columns)
        .sort("window_start", "sensor_id")
    )
    assert got.height == expected.height == 5000 // 4 // 60 * 4 + 4
    # Means come from sum / count in the stream and from Polars' mean in the batch.
    assert_frame_equal(
        got.with_columns(pl.col("readings").cast(pl.Int64)),
        expected.with_columns(pl.col("readings").cast(pl.Int64)),
        rel_tol=1e-12,
    )
    assert result.unbalanced == []
    assert result.counts["window"]["consumed"] == 5000
    assert result.counts["window"]["generated"] == got.height


class _CrashConfig(Settings):
    """Settings of the crashing test sink."""

    collector: str
    crash_after: int = -1


class _CrashingSink(Sink):
    """Commits to a memory collector; raises once ``crash_after`` rows were written."""

    config_model = _CrashConfig

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


def test_window_state_survives_crashes_exactly_once(tmp_path: Path) -> None:
    """Crash twice mid-run; the resumed runs restore window state from the state store and
    the committed output equals one uninterrupted batch computation."""
    registry = Registry()
    registry.load_plugins()
    registry.register("sink", "crashing")(_CrashingSink)
    clear("ts-crash")
    text = """
name: ts-crash
source: {type: generate, shape: sensors, count: 6000, keys: 3, batch_size: 250, seed: 3}
steps:
  - {type: window, time_column: ts, keys: [sensor_id], size: 20s, max_out_of_orderness: 2s,
     aggregations: {n: count(), total: sum(humidity), sd: stddev(humidity)}}
checkpoint: {every_records: 700}
sink: {type: crashing, collector: ts-crash, crash_after: CRASH}
"""
    for crash_after in (90, 150):
        spec = load_pipeline_text(
            text.replace("CRASH", str(crash_after)), "p.yaml", registry=registry
        )
        with pytest.raises(PipelineError, match="simulated crash"):
            engine_for(spec, tmp_path, registry=registry).run()
    spec = load_pipeline_text(text.replace("CRASH", "-1"), "p.yaml", registry=registry)
    result = engine_for(spec, tmp_path, registry=registry).run()
    assert result.records_in < 6000  # it resumed
    got = collected("ts-crash").sort("window_start", "sensor_id")
    source = pl.concat([_block(GenerateConfig(shape="sensors", keys=3, seed=3), b) for b in (0, 1)])
    expected = (
        source.head(6000)
        .sort("ts")
        .group_by_dynamic("ts", every="20s", group_by="sensor_id", include_boundaries=True)
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            pl.col("humidity").sum().alias("total"),
            pl.col("humidity").std().alias("sd"),
        )
        .rename({"_lower_boundary": "window_start", "_upper_boundary": "window_end"})
        .select(got.columns)
        .sort("window_start", "sensor_id")
    )
    assert_frame_equal(got, expected, rel_tol=1e-9)


def test_python_api_chains_time_series_steps_and_routes_outliers(tmp_path: Path) -> None:
    import tideflow as tf

    for c in ("ts-api-win", "ts-api-out", "ts-api-in"):
        clear(c)
    result = (
        tf.Pipeline("ts-api")
        .source(tf.generate(shape="sensors", count=3000, keys=3, spike_rate=0.02, seed=5))
        .dedupe(time_column="ts", keys=["sensor_id"], horizon="1s")
        .outliers(column="temperature_c", keys=["sensor_id"], window=30, mode="route")
        .window(
            time_column="ts",
            keys=["sensor_id"],
            size="5m",
            aggregations={"n": "count()", "hi": "max(temperature_c)"},
        )
        .sink(tf.collect("ts-api-win"))
        .sink(tf.collect("ts-api-out"), input="outliers.outliers")
        .sink(tf.collect("ts-api-in"), input="generate")
        .run(tmp_path)
    )
    assert result.unbalanced == []
    source, spikes = collected("ts-api-in"), collected("ts-api-out")
    windows = collected("ts-api-win")
    # Every reading is 1s after the previous one of its sensor: no repeats within 1s.
    assert result.counts["dedupe"]["filtered"] == 0
    assert spikes.height > 0 and int(windows["n"].sum()) + spikes.height == source.height
    expected = (
        source.join(spikes, on=["sensor_id", "ts"], how="anti")
        .sort("ts")
        .group_by_dynamic("ts", every="5m", group_by="sensor_id")
        .agg(pl.len().cast(pl.Int64).alias("n"), pl.col("temperature_c").max().alias("hi"))
        .sort("ts", "sensor_id")
    )
    got = windows.sort("window_start", "sensor_id")
    assert got["n"].to_list() == expected["n"].to_list()
    assert got["hi"].to_list() == expected["hi"].to_list()


def test_idle_timeout_closes_the_last_window_of_a_quiet_stream(tmp_path: Path) -> None:
    """An unbounded source sends one batch and then nothing: without an idle timeout its
    window would stay open for ever; with one, it closes and reaches the sink."""
    import threading as _threading
    import time as _time

    from tideflow.connectors.memory import clear, collected
    from tideflow.core.contracts import SourceBatch
    from tideflow.spec.loader import load_pipeline_text

    text = """
name: quiet
source:
  type: memory
  records: [{t: "2026-01-01T00:00:05", v: 1}, {t: "2026-01-01T00:00:20", v: 2}]
steps:
  - {type: cast, columns: {t: datetime}}
  - type: window
    time_column: t
    size: 1m
    idle_timeout: 1s
    aggregations: {n: count(), s: sum(v)}
sink: {type: memory, collector: quiet-windows}
"""
    clear("quiet-windows")
    spec = load_pipeline_text(text)
    engine = engine_for(spec, tmp_path)
    # Keep the run going after the memory source ends, like a live stream gone quiet.
    source = engine.graph.sources[0].component
    source.bounded = False
    read = source.read_batch

    def quiet_after_the_records() -> SourceBatch:
        batch = read()
        if batch is None:
            _time.sleep(0.05)
            return SourceBatch(pl.DataFrame(), source.offset)
        return batch

    source.read_batch = quiet_after_the_records
    runner = _threading.Thread(target=engine.run)
    runner.start()
    try:
        deadline = _time.monotonic() + 30
        while collected("quiet-windows").height == 0 and _time.monotonic() < deadline:
            _time.sleep(0.05)
    finally:
        engine.stop()
        runner.join(timeout=30)
    got = collected("quiet-windows")
    assert got.select("n", "s").rows() == [(2, 3)]


def test_the_run_summary_reports_each_stateful_steps_state_size(tmp_path: Path) -> None:
    from tideflow.run.runner import run
    from tideflow.spec.loader import load_pipeline_text

    text = """
name: sized
source: {type: generate, shape: sensors, count: 2000, keys: 4, interval: 10}
steps:
  - {type: window, time_column: ts, keys: [sensor_id], size: 1h,
     aggregations: {m: mean(temperature_c)}}
sink: {type: memory, collector: sized}
"""
    result = run(load_pipeline_text(text), tmp_path)
    assert result.counts["window"]["report"]["state_bytes"] > 0
    assert "state_bytes" not in result.counts["memory"].get("report", {})
