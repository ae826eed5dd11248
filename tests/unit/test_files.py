"""The ``file`` source and sink, driven directly through the Source / Sink contract."""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from tideflow.connectors import files
from tideflow.connectors.files.settings import FileSinkConfig, FileSourceConfig
from tideflow.connectors.files.sink import FileSink
from tideflow.connectors.files.source import FileSource
from tideflow.core.contracts import Context
from tideflow.errors import ConfigError, StateError, TerminalError
from tideflow.registry import Registry

# -- helpers -------------------------------------------------------------------------------


def plain(position: dict[str, Any]) -> dict[str, Any]:
    """A file position without the fingerprints of finished files."""
    return {k: v for k, v in position.items() if k not in ("seen", "tail")}


def make_ctx(base: Path, name: str = "files", scope: str = "main") -> Context:
    return Context(
        pipeline="p",
        name=name,
        base_dir=base,
        state_dir=base / ".state",
        stop_event=threading.Event(),
        scope=scope,
    )


@dataclass
class ReadResult:
    frames: list[pl.DataFrame] = field(default_factory=list)
    deads: list[pl.DataFrame | None] = field(default_factory=list)
    positions: list[Any] = field(default_factory=list)

    @property
    def data(self) -> pl.DataFrame:
        useful = [f for f in self.frames if f.height]
        return pl.concat(useful, how="diagonal_relaxed") if useful else pl.DataFrame()

    @property
    def reasons(self) -> list[str]:
        return [r for d in self.deads if d is not None for r in d["reason"].to_list()]

    @property
    def records(self) -> list[str]:
        return [r for d in self.deads if d is not None for r in d["record"].to_list()]


def read_all(ctx: Context, position: Any = None, **settings: Any) -> ReadResult:
    source = FileSource(FileSourceConfig(**settings))
    source.open(ctx, position)
    out = ReadResult()
    try:
        for _ in range(100_000):
            batch = source.read_batch()
            if batch is None:
                return out
            # Positions are stored as JSON at checkpoints and must survive the round trip.
            assert json.loads(json.dumps(batch.position)) == batch.position
            out.frames.append(batch.data)
            out.deads.append(batch.dead)
            out.positions.append(batch.position)
    finally:
        source.close()
    raise AssertionError("a bounded source never ended")


def committed_files(root: Path) -> list[str]:
    """Visible output files, relative to ``root``: the staging folder is not output."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def staging_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and ".tideflow-tmp" in str(p)]


def write_committed(ctx: Context, frames: list[pl.DataFrame], **settings: Any) -> Any:
    sink = FileSink(FileSinkConfig(**settings))
    sink.open(ctx, None)
    for frame in frames:
        assert sink.write_batch(frame) is None
    token = sink.flush()
    sink.commit(token)
    sink.close()
    return token


SEQ_IDS = list(range(50))


def sequence_frame(ids: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"id": ids, "name": [f"n{i}" for i in ids]})


def write_input(path: Path, fmt: str, frame: pl.DataFrame) -> None:
    """Write an input file without the sink, so source tests do not depend on it."""
    if fmt == "parquet":
        # Small row groups so that a resume has whole groups to skip.
        pq.write_table(frame.to_arrow(), path, row_group_size=8)
    elif fmt == "csv":
        frame.write_csv(path)
    elif fmt == "ndjson":
        frame.write_ndjson(path)
    else:
        path.write_bytes(orjson.dumps(frame.to_dicts()))


# -- round trips ---------------------------------------------------------------------------


def test_parquet_round_trip_keeps_types_and_values(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    original = pl.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "price": [1.5, None, -2.25, 0.0],
            "name": ["a", "b,c", None, 'quote "q"'],
            "ok": [True, False, None, True],
            "day": [date(2026, 1, 1), date(2026, 1, 2), None, date(2026, 2, 28)],
            "at": [datetime(2026, 1, 1, 10, 0), None, datetime(2026, 1, 1, 11, 30, 5), None],
            "tags": [["x"], [], None, ["y", "z"]],
            "pos": [{"x": 1, "y": 2}, None, {"x": 3, "y": None}, {"x": 0, "y": 0}],
        }
    )
    write_committed(ctx, [original.head(2), original.tail(2)], path="out", format="parquet")
    assert [Path(f).suffix for f in committed_files(tmp_path / "out")] == [".parquet"]
    got = read_all(ctx, path="out").data
    assert_frame_equal(got, original)


def test_csv_round_trip_infers_types(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    original = pl.DataFrame(
        {
            "id": [1, 2, 3, 4, 5],
            "price": [1.5, 2.0, -3.25, None, 0.0],
            "name": ["plain", "with, comma", 'with "quotes"', "", None],
            "ok": [True, False, True, None, False],
        }
    )
    write_committed(ctx, [original], path="out", format="csv")
    [name] = committed_files(tmp_path / "out")
    assert name.endswith(".csv")
    assert (tmp_path / "out" / name).read_text().splitlines()[0] == "id,price,name,ok"
    assert_frame_equal(read_all(ctx, path="out").data, original)


def test_ndjson_round_trip_keeps_nested_values(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    original = pl.DataFrame(
        {
            "id": [1, 2, 3],
            "score": [0.5, None, 2.0],
            "name": ["x", None, "z"],
            "ok": [True, None, False],
            "tags": [["a", "b"], [], None],
            "pos": [{"x": 1}, {"x": 2}, None],
        }
    )
    write_committed(ctx, [original.head(1), original.tail(2)], path="out", format="ndjson")
    [name] = committed_files(tmp_path / "out")
    assert len((tmp_path / "out" / name).read_text().splitlines()) == 3
    assert_frame_equal(read_all(ctx, path="out").data, original)


def test_gzip_csv_round_trip(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    original = pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]})
    write_committed(ctx, [original], path="out", format="csv", compression="gzip")
    [name] = committed_files(tmp_path / "out")
    assert name.endswith(".csv.gz")
    assert gzip.decompress((tmp_path / "out" / name).read_bytes()).startswith(b"id,name\n")
    assert_frame_equal(read_all(ctx, path="out").data, original)


def test_json_array_source(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    records = [{"id": 1, "name": "a", "v": 1.5}, {"id": 2, "name": None, "v": None}]
    (tmp_path / "in.json").write_bytes(orjson.dumps(records))
    expected = pl.DataFrame(
        {"id": [1, 2], "name": ["a", None], "v": [1.5, None]},
        schema={"id": pl.Int64, "name": pl.String, "v": pl.Float64},
    )
    assert_frame_equal(read_all(ctx, path="in.json").data, expected)


def test_json_array_elements_that_are_not_objects_are_dead_letters(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    (tmp_path / "in.json").write_bytes(b'[{"id": 1}, 7, {"id": 3}, "text", {"id": 5}]')
    result = read_all(ctx, path="in.json", batch_size=1)
    assert result.data["id"].to_list() == [1, 3, 5]
    assert result.records == ["7", '"text"']
    assert all("in.json" in r for r in result.reasons)
    assert "element 1" in result.reasons[0] and "element 3" in result.reasons[1]
    # Positions count elements, dead ones included: resuming after "{id: 3}" skips "text".
    after_3 = next(
        p
        for p, f in zip(result.positions, result.frames, strict=True)
        if f.height and f["id"][0] == 3
    )
    assert after_3["row"] == 3
    resumed = read_all(ctx, position=after_3, path="in.json")
    assert resumed.data["id"].to_list() == [5]
    assert resumed.records == ['"text"']


# -- listing -------------------------------------------------------------------------------


def test_glob_and_folder_read_files_in_sorted_order_and_skip_hidden(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    inbox = tmp_path / "in"
    (inbox / "sub").mkdir(parents=True)
    (inbox / ".staging").mkdir()
    for name, value in [
        ("b.csv", 2),
        ("a.csv", 1),
        ("sub/c.csv", 3),
        (".hidden.csv", 98),
        (".staging/x.csv", 99),
        ("_tmp.csv", 97),
    ]:
        (inbox / name).write_text(f"v\n{value}\n")
    (inbox / "_SUCCESS").write_text("")
    assert read_all(ctx, path="in/*.csv").data["v"].to_list() == [1, 2]
    assert read_all(ctx, path="in/**/*.csv").data["v"].to_list() == [1, 2, 3]
    assert read_all(ctx, path="in").data["v"].to_list() == [1, 2, 3]
    # A name the pattern asks for explicitly is not "hidden".
    assert read_all(ctx, path="in/_*.csv").data["v"].to_list() == [97]
    # A single file, given absolutely, and a path column on request.
    one = read_all(ctx, path=str(inbox / "b.csv"), include_path_column="src").data
    assert one.to_dicts() == [{"v": 2, "src": str(inbox / "b.csv")}]


def test_unknown_extension_and_no_match_give_clear_errors(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    (tmp_path / "data.dat").write_text("x\n1\n")
    with pytest.raises(ConfigError, match=r"data\.dat.*set `format:`"):
        read_all(ctx, path="data.dat")
    assert read_all(ctx, path="data.dat", format="csv").data["x"].to_list() == [1]
    with pytest.raises(ConfigError, match=r"no files match .*nothing/\*\.csv"):
        read_all(ctx, path="nothing/*.csv")


def test_settings_are_validated_with_actionable_messages() -> None:
    with pytest.raises(ValidationError, match="exactly one character"):
        FileSourceConfig(path="x.csv", csv={"delimiter": ";;"})
    with pytest.raises(ValidationError, match="did you mean 'int64'"):
        FileSourceConfig(path="x.csv", schema_overrides={"id": "int46"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        FileSourceConfig(path="x.csv", bogus=1)
    with pytest.raises(ValidationError, match="not a parquet codec"):
        FileSinkConfig(path="out", compression="zip")
    with pytest.raises(ValidationError, match="not supported for csv"):
        FileSinkConfig(path="out", format="csv", compression="zstd")
    with pytest.raises(ValidationError, match="usable file name prefix"):
        FileSinkConfig(path="out", prefix=".hidden")
    with pytest.raises(ValidationError, match="twice"):
        FileSinkConfig(path="out", partition_by=["a", "a"])


def test_components_register_under_file() -> None:
    registry = Registry()
    registry.add_module(files)
    assert registry.get("source", "file").cls is FileSource
    assert registry.get("sink", "file").cls is FileSink
    assert FileSource(FileSourceConfig(path="x", watch=True)).bounded is False
    assert FileSource(FileSourceConfig(path="x")).bounded is True


# -- resuming ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv", "ndjson", "json"])
def test_resume_from_every_position_reads_exactly_the_rest(tmp_path: Path, fmt: str) -> None:
    ctx = make_ctx(tmp_path)
    (tmp_path / "in").mkdir()
    write_input(tmp_path / "in" / f"a.{fmt}", fmt, sequence_frame(SEQ_IDS[:30]))
    write_input(tmp_path / "in" / f"b.{fmt}", fmt, sequence_frame(SEQ_IDS[30:]))
    full = read_all(ctx, path="in", batch_size=7)
    assert full.data["id"].to_list() == SEQ_IDS
    assert all(f.height <= 7 for f in full.frames)
    seen = 0
    for position, frame in zip(full.positions, full.frames, strict=True):
        seen += frame.height
        rest = read_all(ctx, position=position, path="in", batch_size=7).data
        assert (rest["id"].to_list() if rest.height else []) == SEQ_IDS[seen:], position
    mid_a = full.positions[1]
    assert plain(mid_a) == {"done": [], "file": str(tmp_path / "in" / f"a.{fmt}"), "row": 14}


def test_finished_files_are_never_read_again(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("id\n1\n2\n")
    (tmp_path / "in" / "b.csv").write_text("id\n3\n4\n")
    full = read_all(ctx, path="in", batch_size=2)
    a, b = str(tmp_path / "in" / "a.csv"), str(tmp_path / "in" / "b.csv")
    assert [plain(p) for p in full.positions] == [
        {"done": [], "file": a, "row": 2},
        {"done": [a], "file": b, "row": 2},
        {"done": [a, b], "file": None, "row": 0},
    ]
    # If a.csv were read again, 100 would show up.
    (tmp_path / "in" / "a.csv").write_text("id\n100\n")
    assert read_all(ctx, position=full.positions[1], path="in").data.height == 0
    done_a = {"done": [a], "file": None, "row": 0}
    assert read_all(ctx, position=done_a, path="in").data["id"].to_list() == [3, 4]
    everything_done = full.positions[-1]
    assert everything_done["file"] is None and len(everything_done["done"]) == 2
    assert read_all(ctx, position=everything_done, path="in").data.height == 0


def test_a_garbled_position_is_refused(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    (tmp_path / "a.csv").write_text("id\n1\n")
    with pytest.raises(StateError, match="not a file position"):
        read_all(ctx, position=12, path="a.csv")


# -- malformed input -----------------------------------------------------------------------


def test_malformed_csv_rows_are_dead_letters_and_offsets_stay_exact(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    rows = [f"{i},{i * 10},name {i}" for i in range(3000)]
    broken = {
        0: "0,0,name 0,EXTRA",
        1: "1,oops",
        500: "500,5000,x,y,z",
        1499: "1499",
        1500: "1500,15000,a,b",
        2999: "2999,29990,last,bad",
    }
    for index, text in broken.items():
        rows[index] = text
    rows[1700] = "1700,abc,not a number"  # beyond the first block, where n is inferred int64
    blank = {42, 2000}  # blank lines are counted as rows but are not records
    for index in blank:
        rows[index] = ""
    (tmp_path / "big.csv").write_text("id,n,name\n" + "\n".join(rows) + "\n")
    settings = {"path": "big.csv", "batch_size": 97, "csv": {"block_size": 4096}}
    full = read_all(ctx, **settings)
    good = [i for i in range(3000) if i not in broken and i not in blank and i != 1700]
    assert full.data["id"].to_list() == good
    assert full.data.schema == pl.Schema({"id": pl.Int64, "n": pl.Int64, "name": pl.String})
    assert full.data.filter(pl.col("id") == 7).row(0) == (7, 70, "name 7")
    assert len(full.reasons) == 7
    # Spreadsheet row numbers: the header is row 1, so data row i is row i + 2.
    for index in [*broken, 1700]:
        assert any(f"big.csv: row {index + 2}:" in r for r in full.reasons), index
    assert sum("fields" in r for r in full.reasons) == 6
    assert "1500,15000,a,b" in full.records
    assert any("'abc'" in r and "int64" in r for r in full.reasons)
    # The first read takes 97 rows after the malformed rows 0 and 1; row 42 among them is
    # blank: 96 records and 2 dead letters, 98 records in, so the batch is full at row 99.
    assert full.positions[0]["row"] == 99
    assert full.frames[0].height == 96 and full.deads[0] is not None and full.deads[0].height == 2
    # Every position counts good and dead rows, so resuming anywhere loses and repeats nothing.
    ids_so_far, dead_so_far = 0, 0
    for position, frame, dead in zip(full.positions, full.frames, full.deads, strict=True):
        ids_so_far += frame.height
        dead_so_far += 0 if dead is None else dead.height
        rest = read_all(ctx, position=position, **settings)
        assert (rest.data["id"].to_list() if rest.data.height else []) == good[ids_so_far:]
        assert rest.reasons == full.reasons[dead_so_far:]


def test_malformed_ndjson_lines_are_dead_letters_and_good_lines_flow(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    lines = [json.dumps({"id": i, "v": i * 0.5}) for i in range(400)]
    lines[3] = '{"id": 3, "v": '
    lines[10] = "[1, 2]"
    lines[11] = ""
    lines[250] = "not json at all"
    lines[399] = '{"id": 399} trailing'
    (tmp_path / "events.ndjson").write_text("\n".join(lines))  # no final newline
    settings = {"path": "events.ndjson", "batch_size": 25}
    full = read_all(ctx, **settings)
    good = [i for i in range(400) if i not in (3, 10, 11, 250, 399)]
    assert full.data["id"].to_list() == good
    assert full.data.schema == pl.Schema({"id": pl.Int64, "v": pl.Float64})
    assert len(full.reasons) == 4
    for line in (4, 11, 251, 400):
        assert any(f"events.ndjson: line {line}:" in r for r in full.reasons), line
    assert "invalid JSON" in full.reasons[0] and "expected a JSON object" in full.reasons[1]
    assert full.records[2] == "not json at all"
    # The first 25 records in (23 loaded, 2 dead-lettered) end at line 26 (line 12 is blank).
    assert full.positions[0]["row"] == 26
    assert full.frames[0].height == 23 and full.deads[0] is not None and full.deads[0].height == 2
    ids_so_far, dead_so_far = 0, 0
    for position, frame, dead in zip(full.positions, full.frames, full.deads, strict=True):
        ids_so_far += frame.height
        dead_so_far += 0 if dead is None else dead.height
        rest = read_all(ctx, position=position, **settings)
        assert (rest.data["id"].to_list() if rest.data.height else []) == good[ids_so_far:]
        assert rest.reasons == full.reasons[dead_so_far:]
    assert plain(full.positions[-1]) == {
        "done": [str(tmp_path / "events.ndjson")],
        "file": None,
        "row": 0,
    }


def test_ndjson_records_with_conflicting_field_types_are_dead_lettered(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    (tmp_path / "e.jsonl").write_text('{"a": 1}\n{"a": {"nested": 1}}\n{"a": 3}\n')
    result = read_all(ctx, path="e.jsonl")
    assert result.data["a"].to_list() == [1, 3]
    assert result.reasons and "line 2" in result.reasons[0]


def test_schema_overrides_convert_and_dead_letter_what_does_not_fit(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    (tmp_path / "in.csv").write_text("id,amount,day\n1,2.5,2026-01-01\n2,lots,2026-01-02\n3,4,\n")
    result = read_all(
        ctx, path="in.csv", schema_overrides={"id": "string", "amount": "float32", "day": "date"}
    )
    expected = pl.DataFrame(
        {"id": ["1", "3"], "amount": [2.5, 4.0], "day": [date(2026, 1, 1), None]},
        schema={"id": pl.String, "amount": pl.Float32, "day": pl.Date},
    )
    assert_frame_equal(result.data, expected)
    assert result.reasons == [
        f"{tmp_path / 'in.csv'}: row 3: column 'amount': cannot read 'lots' as float"
    ]
    assert orjson.loads(result.records[0]) == {"id": "2", "amount": "lots", "day": "2026-01-02"}
    (tmp_path / "in.ndjson").write_text('{"id": 1, "n": "7"}\n{"id": 2, "n": "x"}\n')
    nd = read_all(ctx, path="in.ndjson", schema_overrides={"n": "int64"})
    assert nd.data.to_dicts() == [{"id": 1, "n": 7}]
    assert nd.reasons and "line 2" in nd.reasons[0] and "'x'" in nd.reasons[0]


def test_tsv_defaults_to_tab_and_empty_files_are_fine(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tsv").write_text("a\tb\n1\tx,y\n")
    (tmp_path / "in" / "b.csv").write_text("")
    (tmp_path / "in" / "c.csv").write_text("a,b\n")
    result = read_all(ctx, path="in")
    assert result.data.to_dicts() == [{"a": 1, "b": "x,y"}]
    assert len(result.positions[-1]["done"]) == 3


# -- sink layout ---------------------------------------------------------------------------


def test_hive_partitioning_layout_and_content(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    original = pl.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "day": ["2026-01-01", "2026-01-01", "2026-01-02", "2026-01-02", None, "2026-01-01"],
            "kind": ["a", "b/c", "a", "a", "a", ""],
            "v": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    )
    write_committed(
        ctx, [original.head(3), original.tail(3)], path="out", partition_by=["day", "kind"]
    )
    out = tmp_path / "out"
    folders = sorted({str(Path(f).parent) for f in committed_files(out)})
    assert folders == [
        "day=2026-01-01/kind=__HIVE_DEFAULT_PARTITION__",
        "day=2026-01-01/kind=a",
        "day=2026-01-01/kind=b%2Fc",
        "day=2026-01-02/kind=a",
        "day=__HIVE_DEFAULT_PARTITION__/kind=a",
    ]
    # Partition values live in the folder names, not in the files.
    one = pl.read_parquet(out / "day=2026-01-02" / "kind=a")
    assert one.to_dicts() == [{"id": 3, "v": 3.0}, {"id": 4, "v": 4.0}]
    # A Hive-aware reader gets the records back (empty and null both mean "default").
    back = pl.read_parquet(out / "**" / "*.parquet", hive_partitioning=True).sort("id")
    expected = original.with_columns(
        pl.col("day").str.to_date(),  # Polars infers dates from the folder names
        pl.when(pl.col("kind") == "").then(None).otherwise(pl.col("kind")).alias("kind"),
    )
    assert_frame_equal(back.select(expected.columns), expected)


def test_too_long_partition_values_are_dead_lettered(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    sink = FileSink(FileSinkConfig(path="out", partition_by=["k"]))
    sink.open(ctx, None)
    dead = sink.write_batch(pl.DataFrame({"k": ["ok", "x" * 300], "v": [1, 2]}))
    assert dead is not None and dead.height == 1
    assert "too long" in dead["reason"][0] and '"v":2' in dead["record"][0]
    sink.commit(sink.flush())
    assert [Path(f).parent.name for f in committed_files(tmp_path / "out")] == ["k=ok"]


def test_missing_partition_column_fails_clearly(tmp_path: Path) -> None:
    sink = FileSink(FileSinkConfig(path="out", partition_by=["day"]))
    sink.open(make_ctx(tmp_path), None)
    with pytest.raises(TerminalError, match=r"partition column.*\['day'\]"):
        sink.write_batch(pl.DataFrame({"v": [1]}))


def test_roll_bytes_starts_new_files_and_keeps_every_row(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    batches = [sequence_frame(list(range(i * 10, i * 10 + 10))) for i in range(4)]
    token = write_committed(ctx, batches, path="out", roll_bytes=1)
    names = committed_files(tmp_path / "out")
    assert len(names) == 4 == len(token["files"])
    assert names == [f"part-00000001-{i:05d}.parquet" for i in range(4)]
    assert read_all(ctx, path="out").data["id"].to_list() == list(range(40))


def test_open_partition_files_are_capped(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    sink = FileSink(FileSinkConfig(path="out", partition_by=["k"], max_open_files=3))
    sink.open(ctx, None)
    for round_ in range(3):
        frame = pl.DataFrame({"k": [f"p{i}" for i in range(10)], "v": [round_] * 10})
        sink.write_batch(frame)
        assert len(sink._open_files) <= 3
    sink.commit(sink.flush())
    back = pl.read_parquet(tmp_path / "out" / "**" / "*.parquet", hive_partitioning=True)
    counts = back.group_by("k").agg(pl.col("v").sort()).sort("k")
    assert counts["k"].to_list() == [f"p{i}" for i in range(10)]
    assert all(v == [0, 1, 2] for v in counts["v"].to_list())


def test_roll_seconds_uses_the_injected_clock(tmp_path: Path) -> None:
    now = [100.0]
    sink = FileSink(FileSinkConfig(path="out", roll_seconds=10), clock=lambda: now[0])
    sink.open(make_ctx(tmp_path), None)
    sink.write_batch(sequence_frame([1]))
    now[0] = 105.0
    sink.write_batch(sequence_frame([2]))  # same file: open for 5 s only
    assert sink.roll_expired() == 0
    now[0] = 110.0
    sink.write_batch(sequence_frame([3]))  # the first file expired; this goes to a new one
    assert sink.roll_expired(now=115.0) == 0
    assert sink.roll_expired(now=120.0) == 1
    token = sink.flush()
    assert len(token["files"]) == 2
    sink.commit(token)
    first, second = committed_files(tmp_path / "out")
    assert pl.read_parquet(tmp_path / "out" / first)["id"].to_list() == [1, 2]
    assert pl.read_parquet(tmp_path / "out" / second)["id"].to_list() == [3]


def test_csv_sink_starts_a_new_file_when_columns_change(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    frames = [
        pl.DataFrame({"a": [1], "b": ["x"]}),
        pl.DataFrame({"b": ["y"], "a": [2]}),  # same columns, other order: same file
        pl.DataFrame({"c": [3.5]}),
    ]
    write_committed(ctx, frames, path="out", format="csv")
    first, second = committed_files(tmp_path / "out")
    assert (tmp_path / "out" / first).read_text() == "a,b\n1,x\n2,y\n"
    assert (tmp_path / "out" / second).read_text() == "c\n3.5\n"


# -- two-phase commit and crash recovery ---------------------------------------------------


def test_nothing_is_visible_before_commit(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    sink = FileSink(FileSinkConfig(path="out"))
    sink.open(ctx, None)
    sink.write_batch(sequence_frame([1, 2, 3]))
    assert committed_files(tmp_path / "out") == []
    token = sink.flush()
    assert committed_files(tmp_path / "out") == []
    assert not list((tmp_path / "out").rglob("*.parquet"))  # temps do not look like output
    with pytest.raises(ConfigError, match="no files match"):
        read_all(ctx, path="out")
    sink.commit(token)
    assert committed_files(tmp_path / "out") == ["part-00000001-00000.parquet"]
    assert staging_files(tmp_path / "out") == []
    assert not any(p.name.startswith(".tideflow") for p in (tmp_path / "out").iterdir())


def test_crash_after_flush_is_committed_by_the_next_open(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    sink = FileSink(FileSinkConfig(path="out", partition_by=["k"]))
    sink.open(ctx, None)
    sink.write_batch(pl.DataFrame({"k": ["a", "b", "a"], "v": [1, 2, 3]}))
    token = json.loads(json.dumps(sink.flush()))  # the checkpoint stored it; then the crash
    assert committed_files(tmp_path / "out") == []
    recovered = FileSink(FileSinkConfig(path="out", partition_by=["k"]))
    recovered.open(ctx, token)
    assert committed_files(tmp_path / "out") == sorted(token["files"].values())
    assert staging_files(tmp_path / "out") == []
    back = pl.read_parquet(tmp_path / "out" / "**" / "*.parquet", hive_partitioning=True)
    assert sorted(back["v"].to_list()) == [1, 2, 3]
    # The next epoch follows the recovered one, so nothing committed is ever overwritten.
    recovered.write_batch(pl.DataFrame({"k": ["a"], "v": [4]}))
    next_token = recovered.flush()
    assert next_token["epoch"] == token["epoch"] + 1
    assert set(next_token["files"].values()).isdisjoint(token["files"].values())


def test_crash_before_checkpoint_leaves_no_orphans_and_no_duplicates(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    config = FileSinkConfig(path="out", roll_bytes=1)
    first = FileSink(config)
    first.open(ctx, None)
    first.write_batch(sequence_frame([1, 2]))
    durable = first.flush()
    first.commit(durable)
    first.write_batch(sequence_frame([3, 4]))
    lost = first.flush()  # flushed, but the checkpoint never became durable
    first.write_batch(sequence_frame([5]))  # and this was never even flushed
    assert len(staging_files(tmp_path / "out")) == 2
    # Restart from the last durable checkpoint: the source replays 3, 4 and 5.
    second = FileSink(config)
    second.open(ctx, durable)
    assert staging_files(tmp_path / "out") == []
    assert committed_files(tmp_path / "out") == ["part-00000001-00000.parquet"]
    second.write_batch(sequence_frame([3, 4]))
    second.write_batch(sequence_frame([5]))
    replayed = second.flush()
    assert set(lost["files"].values()) <= set(replayed["files"].values())  # same names again
    second.commit(replayed)
    ids = read_all(ctx, path="out").data["id"].to_list()
    assert ids == [1, 2, 3, 4, 5]


def test_commit_and_recovery_are_idempotent(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    sink = FileSink(FileSinkConfig(path="out"))
    sink.open(ctx, None)
    sink.write_batch(sequence_frame([1, 2]))
    token = sink.flush()
    sink.commit(token)
    before = {f: (tmp_path / "out" / f).read_bytes() for f in committed_files(tmp_path / "out")}
    sink.commit(token)
    again = FileSink(FileSinkConfig(path="out"))
    again.open(ctx, token)
    again.close()
    after = {f: (tmp_path / "out" / f).read_bytes() for f in committed_files(tmp_path / "out")}
    assert after == before and len(after) == 1
    empty = again.flush()
    assert empty == {"v": 1, "epoch": token["epoch"], "files": {}}


def test_fresh_start_without_a_token_never_overwrites_existing_files(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    write_committed(ctx, [sequence_frame([1])], path="out")
    [existing] = committed_files(tmp_path / "out")
    old_bytes = (tmp_path / "out" / existing).read_bytes()
    token = write_committed(ctx, [sequence_frame([2])], path="out")  # state was lost
    assert token["epoch"] == 2
    assert len(committed_files(tmp_path / "out")) == 2
    assert (tmp_path / "out" / existing).read_bytes() == old_bytes


def test_other_scopes_get_their_own_names_and_staging(tmp_path: Path) -> None:
    main_ctx = make_ctx(tmp_path)
    replay_ctx = make_ctx(tmp_path, scope="replay-1")
    main = FileSink(FileSinkConfig(path="out"))
    main.open(main_ctx, None)
    main.write_batch(sequence_frame([1]))
    main_token = main.flush()
    replay_token = write_committed(replay_ctx, [sequence_frame([2])], path="out")
    # The replay's start did not delete the main run's uncommitted staging files.
    main.commit(main_token)
    assert committed_files(tmp_path / "out") == [
        "part-00000001-00000.parquet",
        "part-replay-1-00000001-00000.parquet",
    ]
    assert replay_token["epoch"] == 1
    assert sorted(read_all(main_ctx, path="out").data["id"].to_list()) == [1, 2]


# -- watch mode ----------------------------------------------------------------------------


def test_watch_mode_picks_up_new_files_and_idles_with_empty_batches(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    inbox = tmp_path / "in"
    inbox.mkdir()
    source = FileSource(FileSourceConfig(path="in/*.csv", watch=True, poll_interval=0.01))
    assert source.bounded is False
    source.open(ctx, None)  # no files yet: fine when watching
    idle = source.read_batch()
    assert idle is not None and idle.data.height == 0
    assert plain(idle.position) == {"done": [], "file": None, "row": 0}
    (inbox / "a.csv").write_text("id\n1\n2\n")
    got = []
    position: Any = None
    for _ in range(10):
        batch = source.read_batch()
        assert batch is not None
        got += batch.data["id"].to_list() if batch.data.height else []
        position = batch.position
        if position["done"]:
            break
    assert got == [1, 2]
    assert plain(position) == {"done": [str(inbox / "a.csv")], "file": None, "row": 0}
    idle = source.read_batch()
    assert idle is not None and idle.data.height == 0 and idle.position == position
    (inbox / "b.csv").write_text("id\n3\n")
    (inbox / ".b.csv.partial").write_text("id\n99\n")
    batch = source.read_batch()
    assert batch is not None and batch.data["id"].to_list() == [3]
    source.close()
    # A watching source resumed from its position does not read a.csv again.
    resumed = FileSource(FileSourceConfig(path="in/*.csv", watch=True, poll_interval=0.01))
    resumed.open(ctx, batch.position)
    after = resumed.read_batch()
    assert after is not None and after.data.height == 0


def test_watch_wait_returns_promptly_when_stopping(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    (tmp_path / "in").mkdir()
    source = FileSource(FileSourceConfig(path="in", watch=True, poll_interval=3600))
    source.open(ctx, None)
    ctx.stop_event.set()  # a one-hour poll must not block a stopping run
    batch = source.read_batch()
    assert batch is not None and batch.data.height == 0


# -- S3 (moto) -----------------------------------------------------------------------------


def test_s3_sink_and_source_round_trip_with_recovery(tmp_path: Path, s3_endpoint: str) -> None:
    options = {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": s3_endpoint,
        "client_kwargs": {"region_name": "us-east-1"},
    }
    root = f"s3://tideflow-test/{uuid.uuid4().hex}/out"
    ctx = make_ctx(tmp_path)
    original = pl.DataFrame({"id": [1, 2, 3, 4], "k": ["a", "b", "a", "b"]})
    settings = {"path": root, "partition_by": ["k"], "storage_options": options}
    sink = FileSink(FileSinkConfig(**settings))
    sink.open(ctx, None)
    sink.write_batch(original.head(2))
    sink.commit(sink.flush())
    sink.write_batch(original.tail(2))
    pending = sink.flush()  # crash before commit; the checkpoint was durable
    sink.write_batch(pl.DataFrame({"id": [99], "k": ["a"]}))  # orphan, never flushed
    recovered = FileSink(FileSinkConfig(**settings))
    recovered.open(ctx, pending)
    recovered.open(ctx, pending)  # recovery twice is harmless
    import fsspec

    fs = fsspec.filesystem("s3", **options)
    fs.invalidate_cache()
    keys = sorted(fs.find(root.removeprefix("s3://")))
    assert not [k for k in keys if ".tideflow-tmp" in k]
    assert [k.split("/out/")[1] for k in keys] == [
        "k=a/part-00000001-00000.parquet",
        "k=a/part-00000002-00000.parquet",
        "k=b/part-00000001-00001.parquet",
        "k=b/part-00000002-00001.parquet",
    ]
    result = read_all(
        ctx, path=f"{root}/**/*.parquet", storage_options=options, include_path_column="file"
    )
    assert sorted(result.data["id"].to_list()) == [1, 2, 3, 4]
    assert all(f.startswith(f"{root}/k=") for f in result.data["file"].to_list())


def test_files_whose_types_cannot_merge_are_returned_in_separate_batches(
    tmp_path: Path,
) -> None:
    ctx = make_ctx(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.ndjson").write_text('{"a": 1}\n{"a": 2}\n')
    (tmp_path / "in" / "b.ndjson").write_text('{"a": {"x": 3}}\n')
    (tmp_path / "in" / "c.ndjson").write_text('{"a": {"x": 4}}\n')
    result = read_all(ctx, path="in")
    assert [f.to_dicts() for f in result.frames if f.height] == [
        [{"a": 1}, {"a": 2}],
        [{"a": {"x": 3}}, {"a": {"x": 4}}],
    ]
    first = result.positions[0]
    assert first["done"] == [str(tmp_path / "in" / "a.ndjson")] and first["file"] is None
    rest = read_all(ctx, position=first, path="in").data
    assert rest["a"].to_list() == [{"x": 3}, {"x": 4}]


def test_ndjson_conversion_failures_name_the_right_line_next_to_bad_json(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    (tmp_path / "e.ndjson").write_text('{"n": "1"}\nbroken\n\n{"n": "x"}\n{"n": "4"}\n')
    result = read_all(ctx, path="e.ndjson", schema_overrides={"n": "int32"})
    assert result.data["n"].to_list() == [1, 4]
    assert result.data.schema["n"] == pl.Int32
    assert [r.split(": ", 2)[1] for r in result.reasons] == ["line 2", "line 4"]


@pytest.mark.parametrize("dirty", [False, True])
def test_ndjson_objects_with_spaces_crlf_and_blank_lines_are_records(
    tmp_path: Path, dirty: bool
) -> None:
    """Whitespace around an object, CRLF line ends and whitespace-only lines are not bad
    lines, whether the chunk parses at once or line by line (a bad line in it); line numbers
    of conversion failures count every line."""
    ctx = make_ctx(tmp_path)
    lines = ['{"n": "1"}', '  {"n": "2"}  ', "   ", "\t", '{"n": "x"}\r', "", '{"n": "5"}\r']
    if dirty:
        lines.insert(1, "{broken")
    (tmp_path / "e.ndjson").write_text("\n".join(lines) + "\n")
    result = read_all(ctx, path="e.ndjson", schema_overrides={"n": "int32"})
    assert result.data["n"].to_list() == [1, 2, 5]
    expected = ["line 2", "line 6"] if dirty else ["line 5"]
    assert [r.split(": ", 2)[1] for r in result.reasons] == expected, result.reasons


def test_watching_a_folder_skips_files_of_unknown_format_that_appear_later(
    tmp_path: Path,
) -> None:
    ctx = make_ctx(tmp_path)
    (tmp_path / "in").mkdir()
    source = FileSource(FileSourceConfig(path="in", watch=True, poll_interval=0.01))
    source.open(ctx, None)
    (tmp_path / "in" / "notes.txt").write_text("hello")
    (tmp_path / "in" / "z.csv").write_text("id\n5\n")
    batch = source.read_batch()
    assert batch is not None and batch.data["id"].to_list() == [5]
    source.close()
    # At the start, the same stray file is reported instead.
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        FileSource(FileSourceConfig(path="in", watch=True)).open(ctx, None)


def test_two_sinks_writing_the_same_folder_and_prefix_are_refused(tmp_path: Path) -> None:
    from tideflow import Pipeline
    from tideflow.errors import ConfigError

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        """
name: clash
source: {type: generate, shape: sensors, count: 10}
sinks:
  - {name: a, type: file, path: out}
  - {name: b, type: file, path: out}
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"different `prefix`"):
        Pipeline.from_yaml(pipeline).run(tmp_path)
    pipeline.write_text(
        pipeline.read_text().replace(
            "b, type: file, path: out", "b, type: file, path: out, prefix: b"
        )
    )
    assert Pipeline.from_yaml(pipeline).run(tmp_path).status == "succeeded"
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "out").glob("*.parquet")) == [
        "b",
        "part",
    ]


@pytest.mark.parametrize("codec", ["gzip", "none", "snappy", "zstd"])
def test_parquet_codecs_compress_inside_a_readable_parquet_file(tmp_path: Path, codec: str) -> None:
    frame = pl.DataFrame({"id": range(1000), "text": [f"row {i}" for i in range(1000)]})
    sink = FileSink(FileSinkConfig(path=str(tmp_path / "out"), compression=codec))
    sink.open(make_ctx(tmp_path), None)
    sink.write_batch(frame)
    sink.commit(sink.flush())
    sink.close()
    [name] = committed_files(tmp_path / "out")
    assert name.endswith(".parquet")
    path = tmp_path / "out" / name
    expected = "UNCOMPRESSED" if codec == "none" else codec.upper()
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == expected
    assert pl.read_parquet(path).equals(frame)


def test_parquet_buffer_budget_writes_the_largest_partition_first(tmp_path: Path) -> None:
    rows = 200_000
    frame = pl.DataFrame({"part": ["big"] * (rows - 100) + ["small"] * 100, "v": range(rows)})
    budget = 1 << 20  # a quarter of what the batch holds in memory
    assert frame.estimated_size() > 2 * budget
    sink = FileSink(
        FileSinkConfig(path=str(tmp_path / "out"), partition_by=["part"], buffer_bytes=budget)
    )
    sink.open(make_ctx(tmp_path), None)
    for chunk in frame.iter_slices(10_000):
        sink.write_batch(chunk)
    sink.commit(sink.flush())
    sink.close()
    big = committed_files(tmp_path / "out" / "part=big")
    assert len(big) >= 2, "the budget must force the big partition out before the checkpoint"
    assert len(committed_files(tmp_path / "out" / "part=small")) == 1
    back = pl.read_parquet(tmp_path / "out" / "**" / "*.parquet", hive_partitioning=True)
    assert sorted(back["v"].to_list()) == list(range(rows))


def test_s3_credentials_from_the_aws_environment_and_a_multipart_upload(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `storage_options`: the standard AWS variables configure S3. With 5 MiB parts (set
    through fsspec's configuration, as `FSSPEC_S3` would), a 12 MB file goes up as a multipart
    upload and appears only under its final key, at the commit."""
    import fsspec
    import numpy as np

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"default_block_size": 5 * 2**20})
    root = f"s3://tideflow-test/{uuid.uuid4().hex}/big"
    rng = np.random.default_rng(0)
    # Random bytes do not compress: the CSV is well over one 5 MiB part.
    blobs = [rng.bytes(48).hex() for _ in range(120_000)]
    frame = pl.DataFrame({"id": range(120_000), "blob": blobs})
    ctx = make_ctx(tmp_path)
    sink = FileSink(FileSinkConfig(path=root, format="csv"))
    sink.open(ctx, None)
    sink.write_batch(frame)
    token = sink.flush()
    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint)
    fs.invalidate_cache()
    visible = [k for k in fs.find(root.removeprefix("s3://")) if ".tideflow-tmp" not in k]
    assert not visible, "an object is visible under its final key before the commit"
    sink.commit(token)
    fs.invalidate_cache()
    keys = [k for k in fs.find(root.removeprefix("s3://")) if ".tideflow-tmp" not in k]
    assert len(keys) == 1 and fs.size(keys[0]) > 10 * 2**20
    result = read_all(ctx, path=f"{root}/*.csv")
    assert result.data.height == frame.height
    assert result.data["id"].to_list() == frame["id"].to_list()
