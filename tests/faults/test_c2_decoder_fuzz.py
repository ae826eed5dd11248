"""C2: fuzz the file decoders (CSV, NDJSON, JSON, Parquet) with arbitrary and damaged bytes.

No input may crash or hang the source: every record either arrives or is dead-lettered with a
reason, and a file that cannot be decoded at all becomes one dead letter naming the file.
"""

from __future__ import annotations

import io
import tempfile
import threading
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.faults.oracle import trials

from tideflow.connectors.files.settings import FileSourceConfig
from tideflow.connectors.files.source import FileSource
from tideflow.core.contracts import Context

FORMATS = ("csv", "ndjson", "json", "parquet")


def decode(path: Path, fmt: str) -> tuple[int, int, list[str]]:
    """Read ``path`` to the end: (records, dead letters, their reasons)."""
    ctx = Context("fuzz", "file", path.parent, path.parent / ".state", threading.Event())
    source = FileSource(FileSourceConfig(path=str(path), format=fmt, batch_size=64))
    source.open(ctx, None)
    good = dead = 0
    reasons: list[str] = []
    try:
        for _ in range(100_000):  # a bound, so a decoder that loops forever fails the test
            batch = source.read_batch()
            if batch is None:
                return good, dead, reasons
            good += batch.data.height
            if batch.dead is not None:
                dead += batch.dead.height
                reasons += batch.dead["reason"].to_list()
        raise AssertionError("the source never ended")
    finally:
        source.close()


def valid_bytes(fmt: str, rows: int) -> bytes:
    frame = pl.DataFrame({"id": list(range(rows)), "name": [f"n{i}" for i in range(rows)]})
    buf = io.BytesIO()
    if fmt == "csv":
        frame.write_csv(buf)
    elif fmt == "ndjson":
        frame.write_ndjson(buf)
    elif fmt == "json":
        frame.write_json(buf)
    else:
        frame.write_parquet(buf)
    return buf.getvalue()


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(FORMATS))
    if draw(st.booleans()):
        return fmt, draw(st.binary(max_size=400))
    data = bytearray(valid_bytes(fmt, draw(st.integers(0, 40))))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[i] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[i:]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return fmt, bytes(data)


@settings(
    max_examples=trials(2_000, 20_000),
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(damaged())
def test_c2_damaged_files_never_crash_the_source(case: tuple[str, bytes]) -> None:
    fmt, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input.{fmt}"
        path.write_bytes(data)
        good, dead, reasons = decode(path, fmt)
        assert good >= 0 and dead >= 0
        assert all(reason.strip() for reason in reasons), reasons
        if good == 0 and dead == 0 and data.strip():
            # Non-blank input that yields nothing must be a format with a legitimately empty
            # reading (a header-only CSV, an empty JSON array, a Parquet file with no rows).
            assert fmt in ("csv", "json", "parquet"), (fmt, data[:80])


def test_c2_a_corrupt_parquet_file_is_one_dead_letter_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    good, dead, reasons = decode(path, "parquet")
    assert (good, dead) == (0, 1)
    assert "broken.parquet" in reasons[0]
