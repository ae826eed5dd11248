"""The CSV reader parses in parallel until the first malformed row (whose number pyarrow
cannot tell then), and from there on one thread: every row still lands exactly once, in
order, bad ones as dead letters naming their row, and reads resume exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from tests.unit.test_files import make_ctx, read_all

from tideflow.connectors.files.formats.base import FileRef
from tideflow.connectors.files.formats.csv import CsvReader
from tideflow.connectors.files.settings import CsvReadOptions

ROWS = 20_000
SETTINGS: dict[str, Any] = {"path": "big.csv", "batch_size": 3_000, "csv": {"block_size": 8192}}


def write_rows(path: Path, broken: dict[int, str]) -> list[int]:
    rows = [f"{i},{i % 7},v{i}" for i in range(ROWS)]
    for index, text in broken.items():
        rows[index] = text
    path.write_text("id,n,name\n" + "\n".join(rows) + "\n")
    return [i for i in range(ROWS) if i not in broken]


def test_a_malformed_row_after_clean_parallel_blocks_is_the_only_dead_letter(
    tmp_path: Path,
) -> None:
    broken = {12_345: "12345,1", 12_346: "12346,2,x,EXTRA", 19_000: "19000,not a number,x"}
    good = write_rows(tmp_path / "big.csv", broken)
    ctx = make_ctx(tmp_path)
    full = read_all(ctx, **SETTINGS)
    assert full.data["id"].to_list() == good
    assert len(full.reasons) == 3
    for index in broken:
        assert sum(f"big.csv: row {index + 2}:" in r for r in full.reasons) == 1, index
    assert full.data.height + len(full.reasons) == ROWS
    delivered, dead = 0, 0
    for position, frame, letters in zip(full.positions, full.frames, full.deads, strict=True):
        delivered += frame.height
        dead += 0 if letters is None else letters.height
        rest = read_all(ctx, position=position, **SETTINGS)
        assert (rest.data["id"].to_list() if rest.data.height else []) == good[delivered:]
        assert rest.reasons == full.reasons[dead:]


def test_a_clean_file_is_parsed_in_parallel_to_the_end(tmp_path: Path) -> None:
    good = write_rows(tmp_path / "big.csv", {})
    ref = FileRef(str(tmp_path / "big.csv"), str(tmp_path / "big.csv"), "csv")
    from fsspec.implementations.local import LocalFileSystem

    reader = CsvReader(
        LocalFileSystem(), ref, 0, CsvReadOptions(block_size=8192), ",", {"n": pa.int32()}
    )
    ids: list[int] = []
    while (chunk := reader.read(5_000)) is not None:
        assert chunk.dead is None
        ids += chunk.data["id"].to_list()
    reader.close()
    assert ids == good
    assert reader._threaded  # no malformed row: never fell back to one thread


def test_null_spellings_past_the_first_block_are_nulls_as_before(tmp_path: Path) -> None:
    """Columns are converted in one cast when no spelling of null could convert to a value;
    "NaN" and "nan" do convert to floats, so a float column holding them is nulled first."""
    rows = [f"{i},{i * 0.5},2026-01-01T00:00:{i % 60:02d},{i % 2}" for i in range(5_000)]
    spelled = {
        3_000: "3000,NaN,2026-01-01T00:00:00,1",
        3_001: "3001,nan,NA,0",
        4_000: "NULL,1.5,,1",
    }
    for index, text in spelled.items():
        rows[index] = text
    (tmp_path / "s.csv").write_text("id,v,ts,flag\n" + "\n".join(rows) + "\n")
    result = read_all(make_ctx(tmp_path), path="s.csv", batch_size=1_000, csv={"block_size": 8192})
    assert result.reasons == []
    data = result.data
    assert data.height == 5_000
    assert data["v"].is_nan().sum() == 0
    assert data["v"].null_count() == 2 and data["v"][3_000] is None and data["v"][3_001] is None
    assert data["ts"].null_count() == 2 and data["ts"][3_001] is None
    assert data["id"].null_count() == 1 and data["id"][4_000] is None
    assert data["v"][10] == 5.0 and data["id"][4_999] == 4_999
