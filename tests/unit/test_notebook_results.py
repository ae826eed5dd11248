"""DataFrames in, DataFrames out: tf.records() takes frames, a run's result gives each step's
output, an HTML summary for Jupyter, and fresh re-runs."""

from __future__ import annotations

import datetime
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

import tideflow as tf
from tideflow.testing import collected


def orders(n: int = 1_000) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "order_id": pl.int_range(n, eager=True).cast(pl.Int32),
            "country": pl.Series([["DE", "FR", "NL"][i % 3] for i in range(n)]).cast(
                pl.Categorical
            ),
            "amount": [round((i * 7919) % 1000 / 10 - 5, 1) for i in range(n)],
            "ordered_at": [
                datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(minutes=i)
                for i in range(n)
            ],
        }
    )


def test_records_takes_a_polars_frame_as_it_is() -> None:
    frame = orders(10)
    spec = tf.Pipeline("frame").source(tf.records(frame)).sink(tf.collect("frame")).build()
    assert spec.all_sources[0].records is frame  # type: ignore[attr-defined]  # no copy


def test_outputs_match_the_same_computation_done_in_polars(tmp_path: Path) -> None:
    frame = orders()
    result = (
        tf.Pipeline("explore")
        .source(tf.records(frame, batch_size=97))
        .filter("amount > 0", name="paid")
        .with_columns(name="gross", gross="amount * 1.19")
        .sink(tf.collect("explore-all"), name="everything")
        .sink(tf.collect("explore-big"), name="big", when="gross > 50")
        .run(tmp_path)
    )
    assert result.status == "succeeded"
    expected = frame.filter(pl.col("amount") > 0)
    # column types survive the trip (a list of dicts would make Int32 Int64 and drop the
    # categorical)
    assert_frame_equal(result.to_polars("memory"), frame)
    assert_frame_equal(result.to_polars("paid"), expected)
    gross = expected.with_columns(gross=pl.col("amount") * 1.19)
    assert_frame_equal(result.to_polars("gross"), gross)
    assert_frame_equal(result.to_polars("everything"), gross)
    assert_frame_equal(result.to_polars("big"), gross.filter(pl.col("gross") > 50))
    # what the sink was handed is what it committed
    assert_frame_equal(collected("explore-big"), result.to_polars("big"))
    pandas_frame = result.to_pandas("big")
    assert isinstance(pandas_frame, pd.DataFrame)
    assert pandas_frame["order_id"].tolist() == result.to_polars("big")["order_id"].to_list()


def test_pandas_and_arrow_inputs_keep_their_data(tmp_path: Path) -> None:
    indexed = pd.DataFrame(
        {"total": [3.5, float("nan"), 1.0]},
        index=pd.Index(["DE", "FR", "NL"], name="country"),
    )
    result = (
        tf.Pipeline("pandas-in").source(tf.records(indexed)).sink(tf.collect("pd")).run(tmp_path)
    )
    out = result.to_polars("memory")
    # a named index is data (a group_by key), and pandas' NaN is a missing value
    assert out.to_dicts() == [
        {"country": "DE", "total": 3.5},
        {"country": "FR", "total": None},
        {"country": "NL", "total": 1.0},
    ]
    table = pa.table({"id": pa.array([1, 2], pa.int16()), "tag": ["a", None]})
    arrow = tf.Pipeline("arrow-in").source(tf.records(table)).sink(tf.collect("pa"))
    out = arrow.run(tmp_path).to_polars("memory")
    assert out.schema == pl.Schema({"id": pl.Int16, "tag": pl.String})
    assert out.to_dicts() == [{"id": 1, "tag": "a"}, {"id": 2, "tag": None}]


def test_records_refuses_what_is_not_records() -> None:
    with pytest.raises(tf.ConfigError, match="takes a list of dicts, a Polars or pandas"):
        tf.records({"a": [1, 2]})  # type: ignore[arg-type]
    with pytest.raises(tf.ConfigError, match=r"records\[0\]: expected a mapping, got 1"):
        tf.Pipeline("bad").source(tf.records([1, 2])).sink(tf.stdout()).build()  # type: ignore[list-item]


def test_a_route_port_and_an_unknown_name(tmp_path: Path) -> None:
    result = (
        tf.Pipeline("routed")
        .source(tf.records(orders(30)))
        .route("split", default="rest", de="country = 'DE'", us="country = 'US'")
        .sink(tf.collect("routed-de"), input="split.de")
        .run(tmp_path)
    )
    assert set(result.to_polars("split.de")["country"].to_list()) == {"DE"}
    assert result.to_polars("split.rest").height == 20
    assert result.to_polars("split.us").height == 0  # a declared output that got nothing
    with pytest.raises(tf.ConfigError, match="did you mean 'split'"):
        result.to_polars("splt")
    with pytest.raises(tf.ConfigError, match=r"did you mean 'split\.us'"):
        result.to_polars("split.uk")


def test_a_bounded_output_is_never_handed_back_cut_without_a_word(tmp_path: Path) -> None:
    frame = orders(1_000)
    pipeline = tf.Pipeline("bounded").source(tf.records(frame, batch_size=300))
    pipeline = pipeline.filter("order_id >= 0", name="all").sink(tf.collect("bounded"))
    result = pipeline.run(tmp_path, keep_rows=250)
    with pytest.raises(tf.OutputTruncatedError, match="had 1,000 rows; the run kept the first 250"):
        result.to_polars("all")
    assert_frame_equal(result.to_polars("all", partial=True), frame.head(250))
    assert result.counts["all"]["out"] == 1_000

    everything = pipeline.run(tmp_path, fresh=True, keep_rows=None)
    assert_frame_equal(everything.to_polars("all"), frame)
    nothing = pipeline.run(tmp_path, fresh=True, keep_rows=0)
    with pytest.raises(tf.OutputTruncatedError):
        nothing.to_polars("all")
    assert nothing.to_polars("all", partial=True).height == 0


def test_a_rerun_that_reads_nothing_says_so_and_fresh_reads_again(tmp_path: Path) -> None:
    pipeline = (
        tf.Pipeline("again")
        .source(tf.records([{"x": 1}, {"x": 2}, {"x": 3}]))
        .sink(tf.collect("again"))
    )
    first = pipeline.run(tmp_path)
    assert first.records_in == 3
    second = pipeline.run(tmp_path)
    assert second.records_in == 0 and second.status == "succeeded"
    # the run's own notice (why), and how to read them again from Python
    assert second.notices == [
        "source 'memory': all 3 records were read by earlier runs (`tideflow state reset` "
        "reads them again)"
    ]
    page = second._repr_html_()
    assert "all 3 records were read by earlier runs" in page
    assert "run(fresh=True) reads every source from its start" in page

    fresh = pipeline.run(tmp_path, fresh=True)
    assert fresh.records_in == 3
    assert fresh.to_polars("memory")["x"].to_list() == [1, 2, 3]
    # the collector was emptied first: three records, not six
    assert collected("again")["x"].to_list() == [1, 2, 3]
    # and the pipeline's own checkpoint was neither used nor changed
    assert pipeline.run(tmp_path).records_in == 0


def test_fresh_is_refused_where_it_would_duplicate_or_consume(tmp_path: Path) -> None:
    to_files = (
        tf.Pipeline("to-files").source(tf.records([{"x": 1}])).sink(tf.file("out", format="ndjson"))
    )
    with pytest.raises(tf.ConfigError, match=r"sink 'file' \(file\) would write the output"):
        to_files.run(tmp_path, fresh=True)
    assert not (tmp_path / "out").exists()
    from_topic = (
        tf.Pipeline("from-topic")
        .source(tf.topic(topic="t", group="g"))
        .sink(tf.collect("from-topic"))
    )
    with pytest.raises(tf.ConfigError, match=r"source 'topic' \(topic\) takes what it reads"):
        from_topic.run(tmp_path, fresh=True)
    with pytest.raises(tf.ConfigError, match="not both"):
        from_topic.run(tmp_path, fresh=True, from_scratch=True)


@pytest.mark.parametrize("fresh", [False, True])
def test_the_runs_dead_letters_are_in_the_result(tmp_path: Path, fresh: bool) -> None:
    rows = [{"id": "1"}, {"id": "two"}, {"id": "3"}, {"id": "four"}]
    pipeline = (
        tf.Pipeline("letters")
        .source(tf.records(rows))
        .cast({"id": "int"}, name="typed")
        .sink(tf.collect(f"letters-{fresh}"))
    )
    result = pipeline.run(tmp_path, fresh=fresh)
    assert result.to_polars("typed")["id"].to_list() == [1, 3]
    letters = result.dead_letters()
    assert letters.columns == ["id", "step", "reason", "record", "created_at"]
    assert letters["step"].to_list() == ["typed", "typed"]
    assert [r for r in letters["record"].to_list()] == ['{"id":"two"}', '{"id":"four"}']
    skipping = tf.Pipeline("skips", on_error="skip").source(tf.records(rows))
    skipped = skipping.cast({"id": "int"}).sink(tf.collect(f"skips-{fresh}")).run(tmp_path)
    assert skipped.dead_letters().columns == letters.columns
    assert skipped.dead_letters().height == 0 and skipped.counts["cast"]["dead_lettered"] == 2
    cut = pipeline.run(tmp_path, fresh=True, keep_rows=1)
    with pytest.raises(tf.OutputTruncatedError):
        cut.dead_letters()
    assert cut.dead_letters(partial=True).height == 1


def test_html_summary_counts_each_step(tmp_path: Path) -> None:
    result = (
        tf.Pipeline("html")
        .source(tf.records([{"x": i} for i in range(5)]))
        .filter("x < 2", name="small")
        .sink(tf.collect("html"))
        .run(tmp_path)
    )
    page = result._repr_html_()
    assert "<table>" in page and "succeeded" in page
    row = page.split("<td>small</td>")[1].split("</tr>")[0]
    cells = [c.split(">")[-1] for c in row.split("</td>") if ">" in c]
    # kind, in, out, filtered, ... and the kept rows
    assert cells[:4] == ["step", "5", "2", "3"]


def test_from_yaml_text_and_a_path(tmp_path: Path) -> None:
    text = "name: text\nsource: {type: generate, count: 3}\nsink: {type: stdout}\n"
    assert tf.Pipeline.from_yaml_text(text).build().name == "text"
    # from_yaml takes the text too: multi-line, or one line of flow-style YAML
    assert tf.Pipeline.from_yaml(text).build().name == "text"
    one_line = "{name: flat, source: {type: generate, count: 2}, sink: {type: stdout}}"
    assert tf.Pipeline.from_yaml(one_line).build().name == "flat"
    # a path that does not exist is still a missing file, not YAML
    with pytest.raises(tf.ConfigError, match=r"missing\.yaml"):
        tf.Pipeline.from_yaml(str(tmp_path / "missing.yaml"))
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "input.ndjson").write_text('{"a": 1}\n{"a": 2}\n', encoding="utf-8")
    (folder / "p.yaml").write_text(
        "name: beside\nsource: {type: file, path: input.ndjson}\nsink: {type: stdout}\n",
        encoding="utf-8",
    )
    # relative paths and the state store resolve beside the file, as `tideflow run` does
    result = tf.Pipeline.from_yaml(folder / "p.yaml").run()
    assert result.to_polars("file")["a"].to_list() == [1, 2]
    assert (folder / ".tideflow" / "state.db").exists()


def test_the_test_kit_takes_a_frame_too() -> None:
    from tideflow.testing import run_pipeline

    pipeline = (
        tf.Pipeline("kit").source(tf.generate(count=1)).filter("amount > 0", name="paid")
    ).sink(tf.stdout())
    frame = orders(50)
    out = run_pipeline(pipeline, frame).at("paid")
    assert_frame_equal(out, frame.filter(pl.col("amount") > 0))


def test_to_pandas_without_pandas_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    result = tf.Pipeline("no-pandas").source(tf.records([{"x": 1}])).sink(tf.collect("np"))
    done = result.run(tmp_path)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(tf.TideflowError, match=r'pip install "tideflow\[pandas\]"'):
        done.to_pandas("memory")


def test_to_yaml_writes_a_frame_as_its_records(tmp_path: Path) -> None:
    frame = pl.DataFrame({"id": [1, 2], "at": [datetime.date(2026, 1, 1), None]})
    built = tf.Pipeline("as-yaml").source(tf.records(frame)).sink(tf.collect("as-yaml"))
    text = built.to_yaml()
    assert "- id: 1\n    at: '2026-01-01'\n" in text
    again = tf.Pipeline.from_yaml_text(text).run(tmp_path, fresh=True)
    assert again.to_polars("memory").to_dicts() == [
        {"id": 1, "at": "2026-01-01"},
        {"id": 2, "at": None},
    ]
