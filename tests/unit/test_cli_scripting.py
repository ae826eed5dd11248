"""The CLI for people and scripts (issue 21): install hints, `validate` finding every problem
at once, `--json` documents, the aggregated count, progress totals, refusals and replays."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result

from tideflow.cli.main import cli
from tideflow.connectors.memory import clear, collected

Write = Callable[..., Path]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def block_import(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail as when its package is not installed."""
    for module in modules:
        for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, module, None)


POSTGRES_SINK = """
name: pg-demo
source: {type: memory, records: [{a: 1}]}
sink: {type: sql, url: "postgresql://127.0.0.1/test", table: t}
"""


# -- install hints and validate -------------------------------------------------------------


def test_validate_names_the_extra_of_a_missing_driver(
    write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_pipeline(POSTGRES_SINK)
    assert invoke("validate", str(path)).exit_code == 0  # installed here: ok
    block_import(monkeypatch, "psycopg", "adbc_driver_postgresql")
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert f"{path}:3: sink: sink 'sql' (sql) needs the Python packages 'psycopg' and " in (
        result.output
    )
    assert 'pip install "tideflow[postgres]"' in result.output
    assert "ok" not in result.output


def test_run_and_metrics_port_keep_the_extra_in_the_install_hint(
    write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_pipeline(POSTGRES_SINK)
    # (the metrics module too: imported by an earlier test, it would not import again)
    blocked = ("psycopg", "adbc_driver_postgresql", "prometheus_client", "tideflow.observe.metrics")
    block_import(monkeypatch, *blocked)
    metrics = invoke("run", str(path), "--metrics-port", "1", "-q")
    assert metrics.exit_code == 1
    assert 'pip install "tideflow[service]"' in metrics.output
    ran = invoke("run", str(path), "-q")
    assert ran.exit_code == 1
    assert 'pip install "tideflow[postgres]"' in ran.output


def test_serve_keeps_the_extra_in_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    block_import(monkeypatch, "fastapi", "tideflow.service.app")
    result = invoke("serve", "--port", "0")
    assert result.exit_code == 1
    assert 'pip install "tideflow[service]"' in result.output


def test_validate_reports_unset_variables_with_every_other_problem(
    write_pipeline: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("H21_COND", raising=False)
    monkeypatch.delenv("H21_OUT", raising=False)
    monkeypatch.delenv("H21_TYPE", raising=False)
    path = write_pipeline(
        """
        name: demo
        source: {type: memory, records: [{country: a, v: 1}]}
        steps:
          - {type: filter, name: f, expr: "${H21_COND}"}
          - {type: cast, name: c, columns: {v: nonsense, w: "${H21_TYPE}"}}
        sink: {type: file, path: "${H21_OUT}", format: csv, bogus: 1}
        """
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"{path}:4: steps[0].expr: ${{H21_COND}} is not set")
    assert lines[1].startswith(f"{path}:5: steps[1].columns.w: ${{H21_TYPE}} is not set")
    assert lines[2].startswith(f"{path}:6: sink.path: ${{H21_OUT}} is not set")
    assert any(line.startswith(f"{path}:5: steps[1].columns") for line in lines[3:]), lines
    assert any(line.startswith(f"{path}:6: sink.bogus: unknown key") for line in lines[3:])
    assert len(lines) == 5, lines  # nothing about the values left unset
    assert "'nonsense'" in lines[3] or "'nonsense'" in lines[4]


def test_a_scalar_where_a_list_is_expected_is_a_one_element_list(write_pipeline: Write) -> None:
    from tideflow.spec.loader import load_pipeline

    path = write_pipeline(
        """
        name: demo
        source: {type: memory, records: [{country: a, v: 1}]}
        steps:
          - {type: aggregate, name: agg, keys: country, aggregations: {n: "count()"}}
          - {type: select, name: keep, columns: country}
        sink: {type: memory, collector: h21-scalar}
        """
    )
    spec = load_pipeline(path)
    assert spec.steps[0].keys == ["country"]  # type: ignore[union-attr]
    assert spec.steps[1].columns == ["country"]  # type: ignore[union-attr]


def test_values_of_harmless_fields_are_shown_and_secrets_are_not(write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: demo
        source:
          type: http
          url: http://127.0.0.1:9/x
          auth: {type: bearer, token: [hunter2-secret]}
        steps:
          - {type: aggregate, name: agg, keys: {a: 1}, aggregations: {n: "count()"}}
        sink: {type: memory, collector: h21-show}
        """
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert "steps[0].keys: Input should be a valid list; got {'a': 1}" in result.output
    assert "hunter2-secret" not in result.output and "<redacted>" in result.output


def test_validate_json(write_pipeline: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("H21_OUT", raising=False)
    good = write_pipeline(POSTGRES_SINK, "good.yaml")
    bad = write_pipeline(
        'name: bad\nsource: {type: memory, records: []}\nsink: {type: file, path: "${H21_OUT}"}\n',
        "bad.yaml",
    )
    result = invoke("validate", "--json", str(good), str(bad))
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert [(f["file"], f["ok"]) for f in document["files"]] == [
        (str(good), True),
        (str(bad), False),
    ]
    (error,) = document["files"][1]["errors"]
    assert (error["file"], error["line"], error["field"]) == (str(bad), 3, "sink.path")
    assert "H21_OUT" in error["message"]


# -- connectors ------------------------------------------------------------------------------


def test_connectors_json_lists_and_describes() -> None:
    from tideflow.registry import default_registry

    listed = json.loads(invoke("connectors", "--json", "--kind", "sink").stdout)
    assert {(c["kind"], c["type"]) for c in listed} == {
        ("sink", name) for name in default_registry.items("sink")
    }
    (described,) = json.loads(invoke("connectors", "describe", "filter", "--json").stdout)
    settings = {s["name"]: s for s in described["settings"]}
    assert described["kind"] == "step" and settings["expr"]["required"] is True
    assert settings["input"]["required"] is False and settings["input"]["default"] is None


@pytest.mark.parametrize(
    ("typed", "suggested"), [("fliter", "'filter'"), ("postgres", "'sql'"), ("nope", "'drop'")]
)
def test_connectors_describe_suggests_a_type(typed: str, suggested: str) -> None:
    result = invoke("connectors", "describe", typed)
    assert result.exit_code == 2
    assert result.output.startswith("refused: tideflow connectors describe\n")
    assert "did you mean" in result.output and suggested in result.output


def test_a_refused_option_names_the_command(write_pipeline: Write) -> None:
    path = write_pipeline(POSTGRES_SINK)
    result = invoke("run", str(path), "--workers", "2", "--preview", "3")
    assert result.exit_code == 2
    assert result.output.startswith("refused: tideflow run\n--workers cannot be combined")


# -- summary and progress ------------------------------------------------------------------

AGGREGATING = """
name: agg-demo
source:
  type: memory
  records: [{k: a, v: 1}, {k: a, v: 2}, {k: b, v: 3}, {k: c, v: -1}, {k: c, v: "x"}]
steps:
  - {type: cast, name: typed, columns: {v: int}}
  - {type: filter, name: positive, expr: "v > 0"}
  - {type: sql, name: per_key, query: "SELECT k, sum(v) AS total FROM batch GROUP BY k"}
sink: {type: memory, collector: h21-agg}
"""


def test_records_absorbed_by_aggregation_are_not_counted_as_filtered(
    write_pipeline: Write,
) -> None:
    path = write_pipeline(AGGREGATING)
    counts = json.loads(invoke("run", str(path), "--json").stdout)["counts"]
    # 5 read; "x" dead-lettered by the cast; -1 filtered; 3 rows absorbed into 2 groups
    assert counts["typed"]["dead_lettered"] == 1
    assert counts["positive"]["filtered"] == 1
    per_key = counts["per_key"]
    assert (per_key["in"], per_key["filtered"], per_key["consumed"]) == (3, 0, 3)
    assert (per_key["out"], per_key["generated"]) == (2, 2)
    clear("h21-agg")
    table = invoke("run", str(path), "--from-scratch").output
    header = next(line for line in table.splitlines() if "filtered" in line)
    assert "aggregated" in header
    assert f"inspect them with `tideflow deadletters list {path}`" in table


def test_progress_shows_the_total_and_the_time_left() -> None:
    from tideflow.observe.progress import progress_text

    # 25,000 of 100,000 in 5 s: 5,000/s, so 75,000 left take 15 s
    text = progress_text("demo", 25_000, 100_000, 5.0, 2)
    assert "25,000 / 100,000 records (25%)" in text and "ETA 15s" in text
    assert "ETA" not in progress_text("demo", 100_000, 100_000, 5.0, 2)
    unknown = progress_text("demo", 25_000, None, 5.0, 2)
    assert "25,000 records" in unknown and "/" not in unknown.split("records")[0]
    assert "ETA 2m05s" in progress_text("demo", 1_000, 26_000, 5.0, 0)  # 25,000 at 200/s


def test_sources_know_their_size(tmp_path: Path) -> None:
    from tideflow.connectors.generate import Generate, GenerateConfig
    from tideflow.connectors.memory import MemorySource, MemorySourceConfig
    from tideflow.core.contracts import Context

    ctx = Context("demo", "gen", tmp_path, tmp_path, threading.Event())
    generated = Generate(GenerateConfig(count=1_000))
    generated.open(ctx, {"index": 400})
    assert generated.expected_records() == 600
    inline = MemorySource(MemorySourceConfig(records=[{"a": 1}, {"a": 2}, {"a": 3}]))
    inline.open(ctx, 1)
    assert inline.expected_records() == 2
    from tideflow.connectors.files.settings import FileSourceConfig
    from tideflow.connectors.files.source import FileSource

    pl.DataFrame({"a": [1, 2, 3]}).write_parquet(tmp_path / "one.parquet")
    pl.DataFrame({"a": [4, 5, 6, 7]}).write_parquet(tmp_path / "two.parquet")
    (tmp_path / "three.csv").write_text("a\n8\n")
    parquet = FileSource(FileSourceConfig(path="*.parquet"))
    parquet.open(ctx, None)
    assert parquet.expected_records() == 7
    parquet.close()
    text = FileSource(FileSourceConfig(path="*.csv"))
    text.open(ctx, None)
    assert text.expected_records() is None  # rows of text are known only once read
    text.close()


# -- state and dead letters as JSON ----------------------------------------------------------


def test_state_and_dead_letters_as_json(write_pipeline: Write) -> None:
    path = write_pipeline(AGGREGATING)
    assert invoke("run", str(path), "-q").exit_code == 0
    state = json.loads(invoke("state", "show", str(path), "--json").stdout)
    assert state["pipeline"] == "agg-demo" and state["checkpoint"]["id"] >= 1
    assert datetime.fromisoformat(state["checkpoint"]["created_at"]).tzinfo is not None
    assert [run["status"] for run in state["runs"]] == ["succeeded"]
    listed = json.loads(invoke("deadletters", "list", str(path), "--json").stdout)
    assert listed["counts"] == [
        {"step": "typed", "reason": listed["counts"][0]["reason"], "count": 1}
    ]
    (letter,) = listed["letters"]
    assert letter["record"] == {"k": "c", "v": "x"} and letter["record_is_json"] is True
    assert datetime.fromisoformat(letter["created_at"]).tzinfo is not None
    shown = json.loads(invoke("deadletters", "show", str(path), str(letter["id"]), "--json").stdout)
    assert shown == [letter]
    missing = invoke("deadletters", "show", str(path), "999")
    assert missing.exit_code == 2 and "no dead letter with id 999" in missing.output


# -- replay ---------------------------------------------------------------------------------

REPLAYED = """
name: rp
source:
  type: file
  path: in.csv
  format: csv
  schema_overrides: {amount: float64, day: date}
steps:
  - {type: with_columns, name: calc, columns: {double: "amount * 2"}}
sink: {type: memory, collector: h21-replay}
"""


def test_replay_reapplies_the_source_parsing_and_skips_raw_text(write_pipeline: Write) -> None:
    path = write_pipeline(REPLAYED)
    # row 3: amount unreadable; row 4: day unreadable; row 5: not even a CSV row
    (path.parent / "in.csv").write_text(
        'id,amount,day\n1,10.5,2026-01-01\n2,abc,2026-01-02\n3,7.25,2026-13-01\n4,"broken\n'
    )
    clear("h21-replay")
    assert invoke("run", str(path), "-q").exit_code == 0
    assert collected("h21-replay")["double"].to_list() == [21.0]
    fix = ("--set", "source.schema_overrides.day=string")
    strict = invoke("deadletters", "replay", str(path), "--step", "file", *fix, "--strict")
    assert strict.exit_code == 2 and "dead letter 3: holds text" in strict.output
    assert collected("h21-replay").height == 1  # refused: nothing ran
    result = invoke("deadletters", "replay", str(path), "--step", "file", *fix)
    assert result.exit_code == 0, result.output
    # The amount of row 4 is read as a float again, so the step computes with it.
    replayed = collected("h21-replay")
    assert replayed["double"].to_list() == [21.0, 14.5]
    # The other columns of a CSV row are typed as a read infers them: `id` is an integer
    # in the replayed row as in the first run's, not the text its letter holds.
    assert replayed["id"].to_list() == [1, 3] and replayed.schema["id"] == pl.Int64
    assert replayed["day"].to_list()[1] == "2026-13-01"
    assert "dead letter 3 skipped: holds text" in result.output
    assert "1 dead letter(s) skipped, 2 replayed" in result.output
    listed = json.loads(invoke("deadletters", "list", str(path), "--json").stdout)
    reasons = sorted(letter["reason"] for letter in listed["letters"])
    # Row 3's amount still does not read: dead-lettered anew, in the pipeline's own ledger.
    assert len(reasons) == 2 and "row 5" in reasons[0]
    assert reasons[1] == "dead letter 1 replayed: column 'amount': cannot read 'abc' as double"


def test_replayed_csv_text_is_typed_as_a_read_types_it() -> None:
    from tideflow.connectors.files.formats.csv import infer_text_columns

    letters = pl.DataFrame(
        {
            "id": ["1", None, "3"],
            "note": ["two\nlines", None, ""],  # kept: its type is given
            "price": ["1.5", "2", "NA"],  # a null spelling in a number column
            "code": ["NA", "x", None],  # text stays exactly as it was
        }
    )
    typed = infer_text_columns(letters, {"note"})
    assert typed.schema == {
        "id": pl.Int64,
        "note": pl.String,
        "price": pl.Float64,
        "code": pl.String,
    }
    assert typed["id"].to_list() == [1, None, 3]
    assert typed["price"].to_list() == [1.5, 2.0, None]
    assert typed["note"].to_list() == ["two\nlines", None, ""]
    assert typed["code"].to_list() == ["NA", "x", None]


def test_replay_skips_a_record_too_long_to_read(write_pipeline: Write) -> None:
    path = write_pipeline(
        """
        name: long
        source: {type: file, path: in.ndjson, max_record_bytes: 1024}
        sink: {type: memory, collector: h21-long}
        """
    )
    long_line = '{"id": 2, "text": "' + "x" * 2000 + '"}'
    (path.parent / "in.ndjson").write_text('{"id": 1}\n' + long_line + "\n")
    clear("h21-long")
    assert invoke("run", str(path), "-q").exit_code == 0
    (letter,) = json.loads(invoke("deadletters", "list", str(path), "--json").stdout)["letters"]
    # Its letter is a JSON object (where it was, its first bytes), but not the record.
    assert letter["record_is_json"] and "head" in letter["record"]
    result = invoke("deadletters", "replay", str(path), "--step", "file")
    assert result.exit_code == 2
    assert f"dead letter {letter['id']}: was too long to read" in result.output
    assert collected("h21-long")["id"].to_list() == [1]
