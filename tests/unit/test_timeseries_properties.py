"""Property tests: streaming time-series steps equal a batch computation of the same data.

Random events are delivered out of order (within ``max_out_of_orderness``), split into random
batches, and the step is snapshotted, encoded with the state codec, decoded and restored into
a fresh instance at random batch boundaries. The concatenated streaming output must equal an
independent batch computation (Polars ``group_by_dynamic`` or plain Python) over all events.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tideflow.core.codec import decode_state, encode_state
from tideflow.core.contracts import MAIN_PORT, Context, Step, StepOutput

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
DELAY = 10  # seconds of out-of-orderness the generated streams use
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AGGS = {
    "n": "count()",
    "n_v": "count(v)",
    "total": "sum(v)",
    "avg": "mean(v)",
    "lo": "min(v)",
    "hi": "max(v)",
    "first_v": "first(v)",
    "last_v": "last(v)",
    "sd": "stddev(v)",
    "var": "variance(v)",
    "distinct": "count_distinct(v)",
    "med": "median(v)",
    "p75": "quantile(v, 0.75)",
}


@st.composite
def streams(
    draw: Any, max_n: int = 60, span: int = 300, delay: int = DELAY, unique: bool = False
) -> dict[str, Any]:
    """Events (equal times allowed: first/last then go by arrival, like a stable sort), their
    arrival order (each event delayed by at most ``delay`` seconds), batch cut points and
    restore points."""
    n = draw(st.integers(0, max_n))
    times = draw(st.lists(st.integers(0, span), min_size=n, max_size=n, unique=unique))
    keys = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n))
    values = draw(st.lists(st.one_of(st.none(), st.integers(-20, 20)), min_size=n, max_size=n))
    delays = draw(st.lists(st.integers(0, delay), min_size=n, max_size=n))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    restores = draw(st.sets(st.integers(0, 9)))
    events = pl.DataFrame(
        {
            "ts": [EPOCH + timedelta(seconds=t) for t in times],
            "k": keys,
            "v": pl.Series(values, dtype=pl.Int64).cast(pl.Float64),
            "arrival": [t + d for t, d in zip(times, delays, strict=True)],
        },
        schema={
            "ts": pl.Datetime("us", "UTC"),
            "k": pl.String,
            "v": pl.Float64,
            "arrival": pl.Int64,
        },
    )
    # Arrival order: by time + delay, so when an event arrives nothing seen is more than
    # DELAY seconds newer than it (the out-of-orderness bound holds).
    arrived = events.sort("arrival", maintain_order=True).drop("arrival")
    return {"events": arrived, "cuts": cuts, "restores": restores}


def ctx() -> Context:
    return Context("p", "s", Path("."), Path("."), threading.Event())


def stream_through(
    make: Callable[[], Step], data: dict[str, Any], late_ok: bool = False
) -> tuple[pl.DataFrame, list[StepOutput]]:
    """Feed the batches, restoring from an encoded snapshot at the chosen boundaries."""
    events: pl.DataFrame = data["events"]
    bounds = [0, *data["cuts"], events.height]
    step = make()
    step.open(ctx(), None)
    results: list[StepOutput] = []
    for i, (lo, hi) in enumerate(pairwise(bounds)):
        results.append(step.process(events.slice(lo, hi - lo)))
        if i in data["restores"]:
            state = decode_state(encode_state(step.snapshot()))
            step = make()
            step.open(ctx(), state)
    results.append(step.finish())
    frames = [f for r in results if (f := r.outputs.get(MAIN_PORT)) is not None and f.height]
    out = pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()
    records_in = events.height
    assert_balanced(records_in, results, late_ok)
    return out, results


def assert_balanced(records_in: int, results: list[StepOutput], late_ok: bool = False) -> None:
    """``in + generated == out + filtered + dead + consumed`` over the whole stream."""
    out = sum(f.height for r in results for f in r.outputs.values())
    dead = sum(r.dead.height for r in results if r.dead is not None)
    generated = sum(r.generated for r in results)
    rest = sum(r.filtered + r.consumed for r in results)
    assert records_in + generated == out + dead + rest
    assert late_ok or dead == 0, "no record is late when the out-of-orderness bound holds"


def py_aggs(rows: list[tuple[int, float | None]]) -> dict[str, Any]:
    """The aggregations of AGGS in plain Python over (time, value) rows."""
    rows = sorted(rows, key=lambda r: r[0])  # stable: equal times stay in arrival order
    vals = [v for _, v in rows if v is not None]
    distinct = len({v for _, v in rows})  # null is a distinct value too, as in SQL n_unique
    return {
        "n": len(rows),
        "n_v": len(vals),
        "total": float(sum(vals)),
        "avg": statistics.fmean(vals) if vals else None,
        "lo": min(vals) if vals else None,
        "hi": max(vals) if vals else None,
        "first_v": rows[0][1],
        "last_v": rows[-1][1],
        "sd": statistics.stdev(vals) if len(vals) > 1 else None,
        "var": statistics.variance(vals) if len(vals) > 1 else None,
        "distinct": distinct,
        "med": statistics.median(vals) if vals else None,
        "p75": pl.Series(vals, dtype=pl.Float64).quantile(0.75, "nearest") if vals else None,
    }


def assert_rows_equal(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Row lists equal, floats to 1e-9 relative."""
    assert len(got) == len(expected), (got, expected)
    for g, e in zip(got, expected, strict=True):
        assert g.keys() == e.keys()
        for name, value in e.items():
            other = g[name]
            if isinstance(value, float) and other is not None:
                assert math.isclose(other, value, rel_tol=1e-9, abs_tol=1e-9), (name, g, e)
            else:
                assert other == value, (name, g, e)


def rows_of(frame: pl.DataFrame, order: list[str]) -> list[dict[str, Any]]:
    if frame.height == 0:
        return []
    return frame.sort(order).to_dicts()


# -- window ------------------------------------------------------------------------------


def window_step(**kw: Any) -> Callable[[], Step]:
    from tideflow.operators.timeseries.window import Window, WindowConfig

    cfg = {
        "time_column": "ts",
        "keys": ["k"],
        "aggregations": AGGS,
        "max_out_of_orderness": f"{DELAY}s",
        **kw,
    }
    return lambda: Window(WindowConfig(**cfg))


def polars_reference(events: pl.DataFrame, size: int) -> pl.DataFrame:
    """Tumbling windows by Polars' own batch operator."""
    v = pl.col("v")
    return (
        events.sort("ts", maintain_order=True)
        .group_by_dynamic(
            "ts",
            every=f"{size}s",
            closed="left",
            label="left",
            include_boundaries=True,
            group_by="k",
        )
        .agg(
            pl.len().alias("n"),
            v.count().alias("n_v"),
            v.sum().alias("total"),
            v.mean().alias("avg"),
            v.min().alias("lo"),
            v.max().alias("hi"),
            v.first().alias("first_v"),
            v.last().alias("last_v"),
            v.std().alias("sd"),
            v.var().alias("var"),
            v.n_unique().alias("distinct"),
            v.median().alias("med"),
            v.quantile(0.75, "nearest").alias("p75"),
        )
        .rename({"_lower_boundary": "window_start", "_upper_boundary": "window_end"})
        .select("window_start", "window_end", "k", *AGGS)
        .with_columns(pl.col("n").cast(pl.Int64), pl.col("n_v").cast(pl.Int64))
    )


def normalise(frame: pl.DataFrame) -> pl.DataFrame:
    """Counts as Int64 so streaming and reference rows compare by value."""
    return frame.with_columns(
        pl.col(c).cast(pl.Int64) for c in ("n", "n_v", "distinct") if c in frame.columns
    )


@SETTINGS
@given(streams(), st.sampled_from([7, 10, 45]))
def test_tumbling_windows_equal_group_by_dynamic(data: dict[str, Any], size: int) -> None:
    out, _ = stream_through(window_step(size=f"{size}s"), data)
    expected = polars_reference(data["events"], size)
    order = ["window_start", "k"]
    assert_rows_equal(rows_of(normalise(out), order), rows_of(normalise(expected), order))


@SETTINGS
@given(streams(), st.sampled_from([(20, 5), (30, 10), (9, 4)]))
def test_sliding_windows_equal_plain_python(data: dict[str, Any], shape: tuple[int, int]) -> None:
    size, slide = shape
    out, _ = stream_through(window_step(kind="sliding", size=f"{size}s", slide=f"{slide}s"), data)
    events = data["events"]
    groups: dict[tuple[int, str], list[tuple[int, float | None]]] = {}
    for ts, k, v in events.iter_rows():
        t = int((ts - EPOCH).total_seconds())
        first = (t - size) // slide + 1  # first start s with s + size > t, s a multiple of slide
        for start in range(first * slide, t + 1, slide):
            groups.setdefault((start, k), []).append((t, v))
    expected = [
        {
            "window_start": EPOCH + timedelta(seconds=s),
            "window_end": EPOCH + timedelta(seconds=s + size),
            "k": k,
            **py_aggs(rows),
        }
        for (s, k), rows in sorted(groups.items())
    ]
    assert_rows_equal(rows_of(normalise(out), ["window_start", "k"]), expected)


def python_sessions(events: pl.DataFrame, gap: int) -> list[dict[str, Any]]:
    """Sessions in plain Python: per key, sorted by time, a new session when the distance to
    the previous event is at least ``gap``."""
    by_key: dict[str, list[tuple[int, float | None]]] = {}
    for ts, k, v in events.iter_rows():
        by_key.setdefault(k, []).append((int((ts - EPOCH).total_seconds()), v))
    result = []
    for k, rows in by_key.items():
        rows.sort(key=lambda r: r[0])
        session = [rows[0]]
        for row in rows[1:]:
            if row[0] - session[-1][0] >= gap:
                result.append((k, session))
                session = []
            session.append(row)
        result.append((k, session))
    return sorted(
        (
            {
                "window_start": EPOCH + timedelta(seconds=s[0][0]),
                "window_end": EPOCH + timedelta(seconds=s[-1][0] + gap),
                "k": k,
                **py_aggs(s),
            }
            for k, s in result
        ),
        key=lambda r: (r["window_start"], r["k"]),
    )


@SETTINGS
@given(streams(), st.sampled_from([3, 8, 25]), st.booleans())
def test_session_windows_equal_plain_python(
    data: dict[str, Any], gap: int, null_keys: bool
) -> None:
    events: pl.DataFrame = data["events"]
    if null_keys:  # key "c" becomes null, a key of its own
        nulls = events.with_columns(pl.when(pl.col("k") != "c").then(pl.col("k")).alias("k"))
        data = {**data, "events": nulls}
    out, _ = stream_through(window_step(kind="session", gap=f"{gap}s"), data)
    if null_keys and out.height:
        out = out.with_columns(pl.col("k").fill_null("c"))
    expected = python_sessions(events, gap)
    assert_rows_equal(rows_of(normalise(out), ["window_start", "k"]), expected)


@SETTINGS
@given(streams(), st.sampled_from(["tumbling", "session"]))
def test_on_update_converges_to_the_on_close_result(data: dict[str, Any], kind: str) -> None:
    shape = {"size": "10s"} if kind == "tumbling" else {"gap": "6s"}
    closed, _ = stream_through(window_step(kind=kind, **shape), data)
    updates, _ = stream_through(window_step(kind=kind, emit="on_update", **shape), data)
    if closed.height == 0:
        assert updates.height == 0
        return
    # The last update of each window is its final value. Sessions that merged leave behind
    # superseded rows under an older start; keep only rows whose window still exists.
    latest = updates.unique(["window_start", "k"], keep="last", maintain_order=True)
    latest = latest.join(closed.select("window_start", "k"), on=["window_start", "k"], how="semi")
    order = ["window_start", "k"]
    assert_rows_equal(rows_of(normalise(latest), order), rows_of(normalise(closed), order))


# -- aggregate and dedupe ------------------------------------------------------------------

MERGEABLE = {k: v for k, v in AGGS.items() if k not in ("distinct", "med", "p75")}


@SETTINGS
@given(streams())
def test_running_aggregates_end_at_the_batch_group_by(data: dict[str, Any]) -> None:
    from tideflow.operators.timeseries.aggregate import Aggregate, AggregateConfig

    cfg = AggregateConfig(keys=["k"], aggregations=MERGEABLE, time_column="ts")
    updates, results = stream_through(lambda: Aggregate(cfg), data)
    # Every batch emits exactly the keys it contained.
    events: pl.DataFrame = data["events"]
    assert sum(r.generated for r in results) == updates.height
    by_key: dict[str, list[tuple[int, float | None]]] = {}
    for ts, k, v in events.iter_rows():
        by_key.setdefault(k, []).append((int((ts - EPOCH).total_seconds()), v))
    expected = [
        {"k": k, **{n: val for n, val in py_aggs(rows).items() if n in MERGEABLE}}
        for k, rows in sorted(by_key.items())
    ]
    latest = updates.unique("k", keep="last", maintain_order=True) if updates.height else updates
    assert_rows_equal(rows_of(normalise(latest), ["k"]), expected)


@SETTINGS
@given(streams(max_n=80, span=120), st.sampled_from([1, 4, 15]))
def test_dedupe_equals_sorting_then_comparing_with_the_previous(
    data: dict[str, Any], horizon: int
) -> None:
    from tideflow.operators.timeseries.dedupe import Dedupe, DedupeConfig

    cfg = DedupeConfig(
        time_column="ts", keys=["k"], horizon=f"{horizon}s", max_out_of_orderness=f"{DELAY}s"
    )
    out, results = stream_through(lambda: Dedupe(cfg), data)
    previous: dict[str, datetime] = {}
    expected = []
    for ts, k, v in sorted(data["events"].iter_rows(), key=lambda r: (r[1], r[0])):
        if k not in previous or ts - previous[k] >= timedelta(seconds=horizon):
            expected.append({"ts": ts, "k": k, "v": v})
        previous[k] = ts
    assert_rows_equal(rows_of(out, ["k", "ts"]), sorted(expected, key=lambda r: (r["k"], r["ts"])))
    assert sum(r.filtered for r in results) == data["events"].height - len(expected)


# -- interpolate ---------------------------------------------------------------------------


def python_grid(
    events: pl.DataFrame, interval: int, method: str, max_gap: int | None
) -> list[dict[str, Any]]:
    """Resampling in plain Python, one key at a time over its sorted points."""
    by_key: dict[str, list[tuple[int, float | None]]] = {}
    for ts, k, v in events.iter_rows():
        by_key.setdefault(k, []).append((int((ts - EPOCH).total_seconds()), v))
    out = []
    for k, points in by_key.items():
        points.sort(key=lambda r: r[0])  # of equal times, the first to arrive is used
        t_first, v_first = points[0]
        if t_first % interval == 0:
            out.append((t_first, k, v_first))
        for (t0, v0), (t1, v1) in pairwise(points):
            if max_gap is not None and t1 - t0 > max_gap:
                if t1 % interval == 0:
                    out.append((t1, k, v1))
                continue
            g = (t0 // interval + 1) * interval
            while g <= t1:
                if g == t1:
                    value = v1
                elif method == "ffill":
                    value = v0
                elif method == "none" or v0 is None or v1 is None:
                    value = None
                else:
                    value = v0 + (v1 - v0) * (g - t0) / (t1 - t0)
                out.append((g, k, value))
                g += interval
    return [{"ts": EPOCH + timedelta(seconds=g), "k": k, "v": v} for g, k, v in sorted(out)]


@SETTINGS
@given(
    streams(max_n=40, span=200),
    st.sampled_from([1, 3, 7]),
    st.sampled_from(["linear", "ffill", "none"]),
    st.sampled_from([None, 12]),
)
def test_interpolation_equals_plain_python(
    data: dict[str, Any], interval: int, method: str, max_gap: int | None
) -> None:
    from tideflow.operators.timeseries.interpolate import Interpolate, InterpolateConfig

    cfg = InterpolateConfig(
        time_column="ts",
        keys=["k"],
        columns=["v"],
        interval=f"{interval}s",
        method=method,  # type: ignore[arg-type]
        max_gap=None if max_gap is None else f"{max_gap}s",
        max_out_of_orderness=f"{DELAY}s",
    )
    out, _ = stream_through(lambda: Interpolate(cfg), data)
    expected = python_grid(data["events"], interval, method, max_gap)
    assert_rows_equal(rows_of(out, ["ts", "k"]), expected)


@SETTINGS
@given(streams(delay=60, unique=True), st.sampled_from([10, 30]), st.sampled_from([0, 15]))
def test_tumbling_with_late_records_equals_the_batch_of_accepted_records(
    data: dict[str, Any], size: int, lateness: int
) -> None:
    """With disorder beyond the bound, records are either dead-lettered as late or counted in
    full: the output equals the batch computation over the records that were not late."""
    out, results = stream_through(
        window_step(size=f"{size}s", allowed_lateness=f"{lateness}s"), data, late_ok=True
    )
    dead = [r.dead for r in results if r.dead is not None]
    late = (
        pl.concat(dead) if dead else pl.DataFrame(schema={"record": pl.String, "reason": pl.String})
    )
    assert set(late["reason"].to_list()) <= {"late"}
    late_times = {pl.Series([r]).str.json_decode().struct.field("ts")[0] for r in late["record"]}
    events: pl.DataFrame = data["events"]
    accepted = events.filter(
        ~pl.col("ts")
        .dt.to_string("%Y-%m-%dT%H:%M:%S")
        .is_in(
            [t[:19] for t in late_times]  # JSON times as text; second precision suffices
        )
    )
    assert accepted.height == events.height - late.height
    expected = polars_reference(accepted, size)
    order = ["window_start", "k"]
    assert_rows_equal(rows_of(normalise(out), order), rows_of(normalise(expected), order))


@SETTINGS
@given(streams(), st.booleans())
def test_tumbling_without_keys_or_with_null_keys(data: dict[str, Any], no_keys: bool) -> None:
    """No key columns: one series; a null key is a key of its own, as in a group_by."""
    events: pl.DataFrame = data["events"].with_columns(
        pl.when(pl.col("k") == "c").then(None).otherwise(pl.col("k")).alias("k")
    )
    data = {**data, "events": events}
    out, _ = stream_through(window_step(size="20s", keys=[] if no_keys else ["k"]), data)
    if no_keys:
        expected = polars_reference(events.with_columns(pl.lit("all").alias("k")), 20).drop("k")
        order = ["window_start"]
    else:
        expected = polars_reference(events, 20)
        order = ["window_start", "k"]
    if out.height == 0:
        assert expected.height == 0
        return
    got = out if no_keys else out.with_columns(pl.col("k").fill_null("~"))
    want = expected if no_keys else expected.with_columns(pl.col("k").fill_null("~"))
    assert_rows_equal(rows_of(normalise(got), order), rows_of(normalise(want), order))


# -- arrival-order steps: batch boundaries and restores change nothing -----------------------


@SETTINGS
@given(
    streams(),
    st.sampled_from(
        [
            ("outliers", {"column": "v", "keys": ["k"], "method": "zscore", "window": 5}),
            ("outliers", {"column": "v", "keys": ["k"], "method": "mad", "window": 4}),
            ("outliers", {"column": "v", "keys": ["k"], "method": "iqr", "window": 6}),
            ("normalize", {"columns": ["v"], "keys": ["k"], "method": "zscore"}),
            ("normalize", {"columns": ["v"], "keys": ["k"], "method": "minmax"}),
        ]
    ),
)
def test_arrival_order_steps_do_not_depend_on_batches(
    data: dict[str, Any], shape: tuple[str, dict[str, Any]]
) -> None:
    """Scores and scaled values are the same for any batching and restore points as for
    one batch (whose values the unit tests check against plain Python)."""
    from tideflow.operators.timeseries.normalize import Normalize, NormalizeConfig
    from tideflow.operators.timeseries.outliers import Outliers, OutliersConfig

    kind, cfg = shape

    def make() -> Step:
        if kind == "outliers":
            return Outliers(OutliersConfig(**cfg))
        return Normalize(NormalizeConfig(**cfg))

    streamed, _ = stream_through(make, data)
    whole = make().process(data["events"]).outputs[MAIN_PORT]
    if whole.height == 0:
        assert streamed.height == 0
        return
    assert_rows_equal(streamed.to_dicts(), whole.to_dicts())
