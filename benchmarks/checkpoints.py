"""What a checkpoint of keyed state costs as the state grows, the changed keys staying the same.

    python -m benchmarks.checkpoints                  # 2,000,000 keys
    TIDEFLOW_BENCH_BIG=1 python -m benchmarks.checkpoints   # and 20,000,000 keys (slow)

An ``aggregate`` (``emit: on_end``) first reads every key once, then 20 batches of 100,000
records over the same 100,000 keys, checkpointing after every batch. Printed: the median time
of those last 20 checkpoints, and the state store's size. With checkpoints that store only
the changed keys, the median stays about the same however many keys the state holds (each
run in a fresh process; the data is generated outside the timing).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.data import keyed_updates

CHANGED = 100_000
BATCHES = 20


def one(keys: int, out: Path) -> dict[str, float]:
    """Run the pipeline over ``keys`` keys in this process; the checkpoints' times."""
    import tideflow as tf
    from tideflow.core.observer import RunObserver

    seconds: list[float] = []
    observer = RunObserver(on_checkpoint_seconds=lambda _id, s: seconds.append(s))
    started = time.perf_counter()
    (
        tf.Pipeline(
            "bench-checkpoints",
            state=str(out / "state.db"),
            checkpoint={"every_records": CHANGED, "every_seconds": 3600},
        )
        .source(tf.file(str(keyed_updates(keys, CHANGED, BATCHES)), batch_size=CHANGED))
        .step("aggregate", keys=["k"], aggregations={"s": "sum(v)", "n": "count()"}, emit="on_end")
        .sink(tf.file(str(out / "data"), format="parquet"))
        .run(out, observer=observer)
    )
    wall = time.perf_counter() - started
    # The checkpoints of the update batches: the last BATCHES before the final one at the end.
    updates = seconds[-BATCHES - 1 : -1]
    return {
        "keys": keys,
        "checkpoints": len(seconds),
        "median_update_checkpoint_s": statistics.median(updates),
        "max_update_checkpoint_s": max(updates),
        "all_checkpoints_s": sum(seconds),
        "wall_s": wall,
        "state_mb": sum(f.stat().st_size for f in out.glob("state.db*")) / 1e6,
    }


def main() -> None:
    """Measure 2M keys (and 20M with ``TIDEFLOW_BENCH_BIG=1``), each in a fresh process."""
    if len(sys.argv) == 3:
        print(json.dumps(one(int(sys.argv[1]), Path(sys.argv[2]))))
        return
    sizes = [2_000_000] + ([20_000_000] if os.environ.get("TIDEFLOW_BENCH_BIG") else [])
    for keys in sizes:
        keyed_updates(keys, CHANGED, BATCHES)  # outside the timing
        with tempfile.TemporaryDirectory(prefix="tideflow-bench-cp-") as tmp:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.checkpoints", str(keys), tmp],
                capture_output=True,
                text=True,
                check=True,
            )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{keys:>11,} keys: {BATCHES} checkpoints of {CHANGED:,} changed keys, median "
            f"{r['median_update_checkpoint_s'] * 1000:7.1f} ms (max "
            f"{r['max_update_checkpoint_s'] * 1000:7.1f} ms); all {r['checkpoints']} "
            f"checkpoints {r['all_checkpoints_s']:6.2f} s of {r['wall_s']:6.2f} s wall; "
            f"state {r['state_mb']:6.1f} MB"
        )


if __name__ == "__main__":
    main()
