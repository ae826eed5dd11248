"""A lost state store never makes a run read everything again in silence.

When the state store is missing or empty but a sink holds output of earlier runs, `tideflow
run` refuses (exit code 2) and names the state file, the output and the ways on;
`--from-scratch` clears the output and starts over; `tideflow state reset` accepts reading
again. A damaged state file keeps its clear error. Output is always compared with the input,
read independently.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from tests.system.helpers import cli as cli_process
from tests.system.helpers import read_parquet_tree

import tideflow as tf
from tideflow.cli.main import cli
from tideflow.core.faults import CRASH_EXIT_CODE
from tideflow.errors import StateLostError

Write = Callable[..., Path]

PIPELINE = """
name: lost
source: {type: file, name: input, path: in/*.csv}
sink: {type: file, name: output, path: out, format: parquet}
"""


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def make_input(folder: Path, files: int = 3, rows: int = 50) -> pl.DataFrame:
    """CSV input files; the frame of every row they hold."""
    (folder / "in").mkdir(exist_ok=True)
    frames = []
    for k in range(files):
        frame = pl.DataFrame({"id": range(k * rows, (k + 1) * rows), "v": [f"r{k}"] * rows})
        frame.write_csv(folder / "in" / f"part{k}.csv")
        frames.append(frame)
    return pl.concat(frames)


def output_ids(folder: Path) -> list[int]:
    return sorted(read_parquet_tree(folder / "out")["id"].to_list())


def out_files(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "out").glob("*.parquet"))


def lose_state(folder: Path, how: str) -> None:
    state = folder / ".tideflow" / "state.db"
    for side in state.parent.glob("state.db-*"):  # WAL and shared memory
        side.unlink()
    if how == "deleted":
        state.unlink()
    elif how == "zero bytes":
        state.write_bytes(b"")
    elif how == "half-written":
        data = state.read_bytes()
        state.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        state.write_bytes(b"\x13\x37 not a database " * 500)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["deleted", "zero bytes"])
def test_a_missing_or_empty_state_store_with_output_present_is_refused(
    write_pipeline: Write, tmp_path: Path, how: str
) -> None:
    path = write_pipeline(PIPELINE)
    expected = make_input(tmp_path)
    code, output = invoke("run", str(path))
    assert code == 0, output
    assert output_ids(tmp_path) == sorted(expected["id"].to_list())
    files = out_files(tmp_path)

    lose_state(tmp_path, how)
    code, output = invoke("run", str(path))
    assert code == 2, output
    text = " ".join(output.split())  # rich wraps long lines
    assert "refused" in text
    assert str(tmp_path / ".tideflow" / "state.db") in text  # the state file, by name
    assert ("did not exist" if how == "deleted" else "was empty: 0 bytes") in text
    assert f"sink 'output' (file): {len(files)} committed file(s) named part-*.parquet" in text
    assert f"tideflow run {path} --from-scratch" in text
    assert f"tideflow state reset --yes {path}" in text
    # nothing was read or written
    assert out_files(tmp_path) == files
    assert output_ids(tmp_path) == sorted(expected["id"].to_list())
    # and refusing again is what the next plain run does too (a refusal is no run)
    assert invoke("run", str(path))[0] == 2


@pytest.mark.parametrize("how", ["half-written", "garbage"])
def test_a_damaged_state_file_keeps_its_clear_error(
    write_pipeline: Write, tmp_path: Path, how: str
) -> None:
    path = write_pipeline(PIPELINE)
    make_input(tmp_path)
    assert invoke("run", str(path))[0] == 0
    files = out_files(tmp_path)
    lose_state(tmp_path, how)
    run = cli_process("run", str(path), cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    why = "database disk image is malformed" if how == "half-written" else "file is not a database"
    assert f"cannot open the state store {tmp_path / '.tideflow' / 'state.db'}: {why}" in (
        run.stderr.replace("\n", "")
    )
    assert out_files(tmp_path) == files


def test_from_scratch_clears_the_output_and_writes_every_record_once(
    write_pipeline: Write, tmp_path: Path
) -> None:
    path = write_pipeline(PIPELINE + "on_error: {action: dead_letter}\n")
    expected = make_input(tmp_path)
    (tmp_path / "in" / "bad.csv").write_text("id,v\nnot-a-number,x\n")  # a dead letter
    path.write_text(path.read_text().replace("in/*.csv", "in/*.csv, schema_overrides: {id: int}"))
    assert invoke("run", str(path))[0] == 0
    lose_state(tmp_path, "deleted")
    assert invoke("run", str(path))[0] == 2

    code, output = invoke("run", str(path), "--from-scratch", "--json")
    assert code == 0, output
    assert output_ids(tmp_path) == sorted(expected["id"].to_list())  # once, not twice
    assert "from scratch: sink 'output' was cleared first (delete those 1 file(s))" in output
    db = sqlite3.connect(tmp_path / ".tideflow" / "state.db")
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone() == (1,)
    # a plain run afterwards goes on from the new checkpoint: nothing new, nothing twice
    assert invoke("run", str(path))[0] == 0
    assert output_ids(tmp_path) == sorted(expected["id"].to_list())


def test_an_interrupted_start_over_is_refused_again_rather_than_doubled(
    write_pipeline: Write, tmp_path: Path
) -> None:
    path = write_pipeline(PIPELINE)
    expected = make_input(tmp_path)
    assert invoke("run", str(path))[0] == 0
    files = out_files(tmp_path)
    # the state is forgotten, the output not yet cleared, when the process dies
    run = cli_process(
        "run",
        str(path),
        "--from-scratch",
        cwd=tmp_path,
        env={"TIDEFLOW_CRASH_AT": "from_scratch.mid_clear"},
    )
    assert run.returncode == CRASH_EXIT_CODE, run.stderr
    assert out_files(tmp_path) == files
    code, output = invoke("run", str(path))
    assert code == 2, output
    assert "holds no checkpoint of it" in output
    assert invoke("run", str(path), "--from-scratch")[0] == 0
    assert output_ids(tmp_path) == sorted(expected["id"].to_list())


def test_state_reset_says_what_is_read_again_and_the_next_run_reads_it(
    write_pipeline: Write, tmp_path: Path
) -> None:
    path = write_pipeline(PIPELINE)
    expected = make_input(tmp_path)
    assert invoke("run", str(path))[0] == 0
    lose_state(tmp_path, "deleted")
    code, output = invoke("state", "reset", str(path), "--yes")
    assert code == 0, output
    text = " ".join(output.split())
    assert "the next run reads the input of source(s) 'input' (file) again from the start" in text
    assert "sink 'output' already holds 1 committed file(s) named part-*.parquet" in text
    assert "written beside it" in text
    code, output = invoke("run", str(path))
    assert code == 0, output
    # what the user accepted: every record a second time
    assert output_ids(tmp_path) == sorted(expected["id"].to_list() * 2)


def test_a_first_run_into_an_empty_destination_is_not_refused(
    write_pipeline: Write, tmp_path: Path
) -> None:
    path = write_pipeline(PIPELINE)
    expected = make_input(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("not output of the pipeline")
    code, output = invoke("run", str(path))
    assert code == 0, output
    assert output_ids(tmp_path) == sorted(expected["id"].to_list())


def test_the_python_api_raises_and_can_start_from_scratch(tmp_path: Path) -> None:
    expected = make_input(tmp_path)
    pipeline = (
        tf.Pipeline("lost-api").source(tf.file("in/*.csv")).sink(tf.file("out", format="parquet"))
    )
    assert pipeline.run(tmp_path).records_in == expected.height
    lose_state(tmp_path, "zero bytes")
    with pytest.raises(StateLostError, match="its state was lost"):
        pipeline.run(tmp_path)
    assert output_ids(tmp_path) == sorted(expected["id"].to_list())
    result = pipeline.run(tmp_path, from_scratch=True)
    assert result.records_in == expected.height
    assert output_ids(tmp_path) == sorted(expected["id"].to_list())
    assert any("was cleared first" in notice for notice in result.notices)


def test_a_sql_table_with_rows_is_output_and_from_scratch_empties_it(tmp_path: Path) -> None:
    expected = make_input(tmp_path)
    url = f"sqlite:///{tmp_path / 'target.db'}"
    pipeline = (
        tf.Pipeline("lost-sql")
        .source(tf.file("in/*.csv"))
        .sink(tf.connector("sql", url=url, table="rows"))
    )
    pipeline.run(tmp_path)
    lose_state(tmp_path, "deleted")
    with pytest.raises(StateLostError, match="table rows holds rows"):
        pipeline.run(tmp_path)
    result = pipeline.run(tmp_path, from_scratch=True)
    assert "delete every row of table rows" in " ".join(result.notices)
    rows = sqlite3.connect(tmp_path / "target.db").execute("SELECT id FROM rows").fetchall()
    assert sorted(r[0] for r in rows) == sorted(expected["id"].to_list())


def test_a_transactional_sql_sink_resumes_from_its_own_checkpoint(tmp_path: Path) -> None:
    """The target keeps the checkpoint with the rows: a lost state store is recovered from
    it, exactly, with no refusal."""
    make_input(tmp_path)
    url = f"sqlite:///{tmp_path / 'target.db'}"
    pipeline = (
        tf.Pipeline("lost-tx")
        .source(tf.file("in/*.csv"))
        .sink(tf.connector("sql", url=url, table="rows", transactional=True))
    )
    pipeline.run(tmp_path)
    lose_state(tmp_path, "deleted")
    make_input(tmp_path, files=4)  # one more file arrives
    result = pipeline.run(tmp_path)
    assert result.records_in == 50  # only the new file
    rows = sqlite3.connect(tmp_path / "target.db").execute("SELECT id FROM rows").fetchall()
    assert sorted(r[0] for r in rows) == list(range(200))


def test_a_topic_sink_holding_messages_is_output_it_cannot_clear(tmp_path: Path) -> None:
    expected = make_input(tmp_path)
    pipeline = (
        tf.Pipeline("lost-topic")
        .source(tf.file("in/*.csv"))
        .sink(tf.connector("topic", topic="lost-topic-out", broker="embedded"))
    )
    pipeline.run(tmp_path)
    (tmp_path / ".tideflow" / "state.db").unlink()
    with pytest.raises(StateLostError) as refused:
        pipeline.run(tmp_path)
    message = str(refused.value)
    assert f"topic 'lost-topic-out' on the embedded log {tmp_path / '.tideflow' / 'topics.db'}" in (
        message
    )
    assert f"holds {expected.height} message(s)" in message
    assert "sink(s) 'topic' cannot take output back" in message
    result = pipeline.run(tmp_path, from_scratch=True)
    assert "sink 'topic' keeps what it holds" in " ".join(result.notices)


def test_a_source_that_resumes_from_its_group_offsets_is_not_refused(tmp_path: Path) -> None:
    """A topic source goes on from the group's committed offsets: losing the state store
    reads nothing twice, so there is nothing to refuse."""
    produced = [{"id": i} for i in range(40)]
    publish = tf.Pipeline("publish").source(tf.records(produced))
    publish.sink(tf.connector("topic", topic="lost-in", broker="embedded")).run(tmp_path)
    consume = (
        tf.Pipeline("consume")
        .source(
            tf.connector(
                "topic",
                topic="lost-in",
                group="g",
                broker="embedded",
                stop_at_end=True,
                idle_seconds=0.5,
            )
        )
        .sink(tf.file("out", format="parquet"))
    )
    assert consume.run(tmp_path).records_in == 40
    (tmp_path / ".tideflow" / "state.db").unlink()
    assert consume.run(tmp_path).records_in == 0
    assert output_ids(tmp_path) == list(range(40))


def test_an_upsert_table_is_read_again_with_a_notice_and_no_duplicates(tmp_path: Path) -> None:
    """Writing the same keys again changes nothing: the run goes on, and says so."""
    expected = make_input(tmp_path)
    url = f"sqlite:///{tmp_path / 'target.db'}"
    pipeline = (
        tf.Pipeline("lost-upsert")
        .source(tf.file("in/*.csv"))
        .sink(tf.connector("sql", url=url, table="rows", mode="upsert", key=["id"]))
    )
    pipeline.run(tmp_path)
    lose_state(tmp_path, "deleted")
    result = pipeline.run(tmp_path)
    assert result.records_in == expected.height
    notice = " ".join(result.notices)
    assert "the state store held nothing of this pipeline" in notice
    assert "table rows holds rows and writes the same records again" in notice
    rows = sqlite3.connect(tmp_path / "target.db").execute("SELECT id FROM rows").fetchall()
    assert sorted(r[0] for r in rows) == sorted(expected["id"].to_list())


def test_a_snapshot_source_reads_everything_every_run_and_is_not_refused(tmp_path: Path) -> None:
    """A `sql` source without a cursor reads the whole table on every run: losing its
    position changes nothing, so there is nothing to refuse."""
    db = tmp_path / "source.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE items (id INTEGER)")
        conn.executemany("INSERT INTO items VALUES (?)", [(i,) for i in range(20)])
    pipeline = (
        tf.Pipeline("lost-snapshot")
        .source(tf.connector("sql", url=f"sqlite:///{db}", table="items"))
        .sink(tf.file("out", format="parquet"))
    )
    assert pipeline.run(tmp_path).records_in == 20
    assert pipeline.run(tmp_path).records_in == 20  # a snapshot: read again, by design
    lose_state(tmp_path, "deleted")
    assert pipeline.run(tmp_path).records_in == 20
