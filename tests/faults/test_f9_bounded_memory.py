"""F9: a stateless stream's peak memory does not grow with the number of records.

Each size runs in a fresh process whose own peak RSS (``ru_maxrss``) is compared: 1M and 5M
records in CI, 2M and 20M under `make faults` (the issue's sizes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from tests.faults.oracle import trials

PIPELINE = """
name: f9
source: {type: generate, shape: sequence, count: "${N}", batch_size: 100000}
steps:
  - {type: filter, expr: "id % 7 <> 0"}
  - {type: with_columns, columns: {label: "'row-' || CAST(id AS VARCHAR)", half: "id / 2"}}
sink: {type: file, path: out, format: parquet}
checkpoint: {every_records: 500000}
"""


def peak_rss_kb(workdir: Path, n: int) -> int:
    """Run the pipeline over ``n`` records in a fresh process; its peak RSS in KiB."""
    code = (
        "import resource, sys\n"
        "from tideflow.cli.main import cli\n"
        "cli.main(['run', 'p.yaml', '-q'], standalone_mode=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=workdir,
        env={**os.environ, "N": str(n)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return int(run.stdout.strip().splitlines()[-1])


def test_f9_peak_memory_is_independent_of_the_record_count(tmp_path: Path) -> None:
    small, large = trials(1_000_000, 2_000_000), trials(5_000_000, 20_000_000)
    peaks = {}
    for n in (small, large):
        workdir = tmp_path / str(n)
        workdir.mkdir()
        (workdir / "p.yaml").write_text(PIPELINE, encoding="utf-8")
        peaks[n] = peak_rss_kb(workdir, n)
        written = sum(pq.ParquetFile(f).metadata.num_rows for f in workdir.rglob("*.parquet"))
        assert written == n - (n + 6) // 7, "the run did not stream every record"
    print(f"F9 peak RSS in KiB by record count: {peaks}")
    assert peaks[large] <= peaks[small] * 1.10, f"peak RSS in KiB by record count: {peaks}"
