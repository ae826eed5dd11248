"""The Parquet page-header check that keeps a damaged file from aborting the process."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tideflow.connectors.files.parquet_check import check_pages
from tideflow.connectors.files.settings import FileSourceConfig
from tideflow.connectors.files.source import FileSource
from tideflow.core.contracts import Context


def damaged_parquet() -> bytes:
    """A two-row file whose second column's data page header claims a negative value count
    (found by the C2 fuzz): Polars 2.1 aborts the process reading it."""
    buf = io.BytesIO()
    pl.DataFrame({"id": [0, 1], "name": ["n0", "n1"]}).write_parquet(buf)
    data = bytearray(buf.getvalue())
    assert data[194] == 4  # num_values = 2, zigzag-encoded
    data[194] = 1  # num_values = -1
    return bytes(data)


def check(path: Path) -> None:
    with path.open("rb") as handle:
        check_pages(handle, path.stat().st_size)


def test_a_negative_value_count_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(damaged_parquet())
    with pytest.raises(ValueError, match="negative count in the page header"):
        check(path)


def test_the_file_source_dead_letters_the_damaged_file_instead_of_crashing(
    tmp_path: Path,
) -> None:
    (tmp_path / "bad.parquet").write_bytes(damaged_parquet())
    pl.DataFrame({"id": [5], "name": ["ok"]}).write_parquet(tmp_path / "good.parquet")
    source = FileSource(FileSourceConfig(path=str(tmp_path / "*.parquet"), batch_size=10))
    source.open(Context("p", "f", tmp_path, tmp_path / ".s", threading.Event()), None)
    good, dead = [], []
    try:
        while (batch := source.read_batch()) is not None:
            good += batch.data["id"].to_list() if batch.data.height else []
            dead += batch.dead["reason"].to_list() if batch.dead is not None else []
    finally:
        source.close()
    assert good == [5]
    assert len(dead) == 1 and "bad.parquet" in dead[0] and "negative count" in dead[0]


@pytest.mark.parametrize("compression", ["zstd", "snappy", "gzip", "lz4", "uncompressed"])
def test_valid_polars_files_pass(tmp_path: Path, compression: str) -> None:
    n = 20_000
    frame = pl.DataFrame(
        {
            "a": range(n),
            "b": [None if i % 7 == 0 else f"s{i % 100}" for i in range(n)],
            "c": [[i, i + 1] if i % 3 else None for i in range(n)],
            "d": [{"x": i, "y": "q"} for i in range(n)],
        }
    )
    path = tmp_path / "f.parquet"
    frame.write_parquet(path, compression=compression, row_group_size=3_000)
    check(path)


@pytest.mark.parametrize("page_version", ["1.0", "2.0"])
@pytest.mark.parametrize("dictionary", [True, False])
def test_valid_pyarrow_files_pass(tmp_path: Path, page_version: str, dictionary: bool) -> None:
    n = 20_000
    table = pa.table(
        {
            "a": list(range(n)),
            "b": [None if i % 5 == 0 else "x" * (i % 50) for i in range(n)],
            "big": ["y" * 100_000 if i == 0 else "z" for i in range(n)],  # long statistics
        }
    )
    path = tmp_path / "f.parquet"
    pq.write_table(
        table,
        path,
        data_page_version=page_version,
        use_dictionary=dictionary,
        row_group_size=7_000,
        data_page_size=4096,
        write_page_index=True,
        write_page_checksum=True,
    )
    check(path)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"x": pa.array([], pa.int64())}), empty)
    check(empty)
