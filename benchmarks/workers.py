"""One worker against two on a 6-partition topic (issue 15 item 5): records/s and CPU seconds.

    python -m benchmarks.workers                       # embedded log and Kafka, 200,000 records
    python -m benchmarks.workers --only embedded --records 500000

The topic holds room events keyed by room (tideflow's own `topic` sink: murmur2), published
before the clock starts. The measured job is `tideflow run consume.yaml --workers N`: a bounded
group read (`stop_at_end`) -> `aggregate` per room (declared `partitioned_by: room`) -> `sql`
upsert into SQLite, whole processes timed from the supervisor's start to its end, CPU seconds
summed over the supervisor and its workers (and the broker, shown apart). The result is
checked against a Polars `group_by` of the published events. There is no target on a 2-core
machine: two workers there mostly share the same two cores.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import psutil

PARTITIONS = 6
ROOMS = 60

PUBLISH = """
name: publish
source: {{type: generate, shape: rooms, count: {records}, keys: {rooms}, batch_size: 50000,
         seed: 5}}
sink: {{type: topic, topic: rooms, broker: {broker}, key: room, partitions: {partitions}}}
"""

CONSUME = """
name: consume
source: {{type: topic, topic: rooms, group: {group}, broker: {broker}, stop_at_end: true,
         idle_seconds: 1, partitioned_by: {{column: room}}}}
steps:
  - {{type: aggregate, keys: [room], aggregations: {{people: sum(count), readings: count()}}}}
sink: {{type: sql, url: "sqlite:///totals.db", table: totals, mode: upsert, key: [room]}}
"""


def published(folder: Path, broker: str | None) -> pl.DataFrame:
    """Totals per room of every event the topic holds, read back without a group."""
    from tideflow.connectors.topic.admin import Admin

    admin = Admin(broker, folder / ".tideflow")
    try:
        values = admin.read_all("rooms")
    finally:
        admin.close()
    frame = pl.DataFrame({"v": [v.decode() for v in values if v is not None]})
    rows = frame.select(
        pl.col("v").str.json_decode(pl.Struct({"room": pl.String, "count": pl.Int64}))
    )
    return (
        rows.unnest("v")
        .group_by("room")
        .agg(pl.col("count").sum().alias("people"), pl.len().alias("readings"))
        .sort("room")
    )


def totals(folder: Path) -> pl.DataFrame:
    """What the run upserted."""
    with sqlite3.connect(folder / "totals.db") as conn:
        rows = conn.execute("SELECT room, people, readings FROM totals").fetchall()
    return pl.DataFrame(rows, schema=["room", "people", "readings"], orient="row").sort("room")


def run_group(
    folder: Path, broker: str, workers: int, broker_process: psutil.Process | None
) -> dict[str, float]:
    """One timed ``--workers N`` run in a new group; its wall and CPU seconds."""
    group = f"totals-{time.time_ns()}"
    (folder / "consume.yaml").write_text(CONSUME.format(broker=broker, group=group))
    (folder / "totals.db").unlink(missing_ok=True)
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (folder / ".tideflow" / name).unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    broker_cpu = sum(broker_process.cpu_times()[:2]) if broker_process else 0.0
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tideflow", "run", "consume.yaml", "--workers", str(workers), "-q"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"--workers {workers} failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    broker = (sum(broker_process.cpu_times()[:2]) - broker_cpu) if broker_process else 0.0
    return {"seconds": seconds, "cpu": cpu, "broker_cpu": broker}


def measure(backend: str, records: int, repeat: int) -> None:
    """Publish once, then time one and two workers ``repeat`` times each (best shown)."""
    folder = Path(tempfile.mkdtemp(prefix=f"tideflow-workers-{backend}-"))
    broker_process = None
    try:
        broker = "embedded"
        if backend == "kafka":
            from benchmarks import workloads

            broker = "kafka://" + workloads._broker()
            broker_process = workloads.BROKER_PROCESS
        (folder / "publish.yaml").write_text(
            PUBLISH.format(records=records, rooms=ROOMS, broker=broker, partitions=PARTITIONS)
        )
        done = subprocess.run(
            [sys.executable, "-m", "tideflow", "run", "publish.yaml", "-q"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"publishing failed:\n{done.stderr[-3000:]}")
        expected = published(folder, None if broker == "embedded" else broker[8:])
        if expected["readings"].sum() != records:
            raise RuntimeError(f"the topic holds {expected['readings'].sum()} of {records}")
        print(f"{backend}: {records:,} room events in {PARTITIONS} partitions")
        for workers in (1, 2):
            runs = [run_group(folder, broker, workers, broker_process) for _ in range(repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            got = totals(folder)
            if not got.equals(expected):
                raise RuntimeError(f"--workers {workers}: totals differ from the topic's")
            broker_cpu = f" (+ broker {best['broker_cpu']:5.2f} s)" if broker_process else ""
            print(
                f"  --workers {workers}: {best['seconds']:6.2f} s  "
                f"{records / best['seconds'] / 1000:7.1f}k records/s  "
                f"cpu {best['cpu']:6.2f} s{broker_cpu}  (totals exact)"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    """Parse arguments and measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["embedded", "kafka"])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for backend in [args.only] if args.only else ["embedded", "kafka"]:
        measure(backend, args.records, args.repeat)


if __name__ == "__main__":
    main()
