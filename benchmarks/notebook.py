"""What keeping outputs for ``result.to_polars()`` costs, and why the cut row is copied.

    python -m benchmarks.notebook                  # 2,000,000 rows, best of 3
    python -m benchmarks.notebook --rows 500000 --repeat 1

Part 1 runs one pipeline (a DataFrame through filter and with_columns into a memory sink)
with ``keep_rows`` 0, the default (100,000) and None (everything), each in a fresh process,
and prints the run's time and the process's peak RSS beside the same work hand-written in
Polars. Part 2 keeps 10 rows of each of N large batches, once as a slice (``head``) and once
copied (``gather``), and prints how much memory stays alive: a slice keeps its whole batch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import gc, json, resource, sys, time
import polars as pl
mode, rows = sys.argv[1], int(sys.argv[2])
frame = pl.DataFrame({
    "id": pl.int_range(rows, eager=True),
    "amount": (pl.int_range(rows, eager=True) * 7919 % 1000).cast(pl.Float64) / 10 - 5,
    "tag": pl.int_range(rows, eager=True).cast(pl.String),
})
if mode == "polars":
    started = time.perf_counter()
    out = frame.filter(pl.col("amount") > 0).with_columns(gross=pl.col("amount") * 1.19)
    seconds = time.perf_counter() - started
else:
    import tideflow as tf
    keep = None if mode == "all" else int(mode)
    pipeline = (
        tf.Pipeline("bench").source(tf.records(frame, batch_size=100_000))
        .filter("amount > 0", name="paid").with_columns(name="gross", gross="amount * 1.19")
        .sink(tf.collect("bench"))
    )
    started = time.perf_counter()
    result = pipeline.run(sys.argv[3], fresh=True, keep_rows=keep)
    seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mb": peak}))
"""

SLICES = r"""
import gc, json, sys
import polars as pl
import psutil
mode, batches = sys.argv[1], int(sys.argv[2])
process = psutil.Process()
gc.collect()
before = process.memory_info().rss
kept = []
for _ in range(batches):
    batch = pl.DataFrame({"a": pl.int_range(5_000_000, eager=True)})
    kept.append(batch.head(10) if mode == "head" else batch.gather(pl.int_range(10, eager=True)))
    del batch
gc.collect()
print(json.dumps({"alive_mb": (process.memory_info().rss - before) / 1e6}))
"""


def _child(code: str, *args: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    """Print both parts."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"part 1: {args.rows:,} rows, best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        for mode, label in (
            ("polars", "hand-written Polars"),
            ("0", "tideflow keep_rows=0"),
            ("100000", "tideflow keep_rows=100000 (default)"),
            ("all", "tideflow keep_rows=None"),
        ):
            runs = [_child(CHILD, mode, str(args.rows), tmp) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            print(f"  {label:38} {best['seconds']:7.3f} s   peak {best['peak_mb']:7.0f} MB")
    print("part 2: 10 rows kept of each 5,000,000-row batch")
    for batches in (2, 8):
        for mode in ("head", "gather"):
            alive = _child(SLICES, mode, str(batches))["alive_mb"]
            print(f"  {batches} batches, {mode:6}: {alive:7.0f} MB still alive")


if __name__ == "__main__":
    main()
