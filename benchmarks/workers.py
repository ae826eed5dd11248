"""One worker against two on a 6-partition topic, with and without a repartition (issue 15
item 5): records/s and CPU seconds.

    python -m benchmarks.workers                       # embedded log and Kafka, 200,000 records
    python -m benchmarks.workers --only embedded --records 500000
    python -m benchmarks.workers --only kafka --variant repartition --repeat 1

The topic holds room events keyed by room (tideflow's own `topic` sink: murmur2), published
before the clock starts. The measured job is `tideflow run consume.yaml --workers N`: a bounded
group read (`stop_at_end`) -> `aggregate` per room -> `sql` upsert into SQLite, in two variants:

- `declared`: the topic source declares `partitioned_by: room`, so each worker aggregates the
  partitions it reads (one stage);
- `repartition`: the same pipeline without the declaration, so the run is cut in front of the
  aggregate: stage 1 writes the records to the internal topic `consume-aggregate-repartition`
  (partition = murmur2 of the room, 6 partitions), stage 2 reads it in its own group and
  aggregates (the stages run one after the other, the read being bounded).

Whole processes are timed from the supervisor's start to its end, CPU seconds summed over the
supervisor and its workers (and the broker, shown apart); the best of `--repeat` runs is shown.
Every run (each in a new group) is checked against a Polars `group_by` of the published
events; a run that fails or gives other totals is shown as such in the table, with the reason
below it, and makes the exit status 1. There is no target on a 2-core machine: two workers
there mostly share the same two cores.
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
         idle_seconds: 1{declared}}}
steps:
  - {{type: aggregate, keys: [room], aggregations: {{people: sum(count), readings: count()}}}}
sink: {{type: sql, url: "sqlite:///totals.db", table: totals, mode: upsert, key: [room]}}
"""

VARIANTS = {"declared": ", partitioned_by: {column: room}", "repartition": ""}
"""What each variant adds to the topic source: the declared partitioning, or nothing (so the
aggregate's records go through the repartition topic)."""


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
    """What the run upserted (nothing when it made no table)."""
    with sqlite3.connect(folder / "totals.db") as conn:
        try:
            rows = conn.execute("SELECT room, people, readings FROM totals").fetchall()
        except sqlite3.OperationalError:
            rows = []
    return pl.DataFrame(rows, schema=["room", "people", "readings"], orient="row").sort("room")


class RunFailed(Exception):
    """A run that did not end well, or whose totals are not the topic's (a product bug)."""


def run_group(
    folder: Path,
    broker: str,
    variant: str,
    workers: int,
    broker_process: psutil.Process | None,
    expected: pl.DataFrame,
) -> dict[str, float]:
    """One timed ``--workers N`` run of ``variant`` in a new group, its totals checked; its
    wall and CPU seconds."""
    group = f"totals-{time.time_ns()}"
    (folder / "consume.yaml").write_text(
        CONSUME.format(broker=broker, group=group, declared=VARIANTS[variant])
    )
    (folder / "totals.db").unlink(missing_ok=True)
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (folder / ".tideflow" / name).unlink(missing_ok=True)
    command = ["tideflow", "run", "consume.yaml", "--workers", str(workers), "-q"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    broker_cpu = sum(broker_process.cpu_times()[:2]) if broker_process else 0.0
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    broker_spent = (sum(broker_process.cpu_times()[:2]) - broker_cpu) if broker_process else 0.0
    if done.returncode != 0:
        raise RunFailed(
            f"`{' '.join(command)}` exited with {done.returncode} after {seconds:.2f} s:\n"
            f"{(done.stdout + done.stderr)[-3000:]}"
        )
    got = totals(folder)
    if not got.equals(expected):
        raise RunFailed(
            f"`{' '.join(command)}`: totals differ from the topic's\n{differences(got, expected)}"
        )
    return {"seconds": seconds, "cpu": cpu, "broker_cpu": broker_spent}


def differences(got: pl.DataFrame, expected: pl.DataFrame) -> str:
    """How the upserted totals differ from the topic's: the sums, and the first rooms apart."""
    apart = expected.join(got, on="room", how="full", suffix="_got", coalesce=True).filter(
        (pl.col("people") != pl.col("people_got")).fill_null(True)
        | (pl.col("readings") != pl.col("readings_got")).fill_null(True)
    )
    return (
        f"  rooms {got.height} of {expected.height}, readings {got['readings'].sum():,} of "
        f"{expected['readings'].sum():,}, people {got['people'].sum():,} of "
        f"{expected['people'].sum():,}; {apart.height} rooms apart, first ones:\n"
        f"{apart.head(5)}"
    )


def publish(folder: Path, broker: str, records: int) -> pl.DataFrame:
    """Publish the room events (untimed); their totals per room, read back from the topic."""
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
    return expected


def measure(backend: str, records: int, repeat: int, variants: list[str]) -> list[str]:
    """Publish once, then time each variant with one and two workers ``repeat`` times (best
    shown); the failures, each with its reason."""
    folder = Path(tempfile.mkdtemp(prefix=f"tideflow-workers-{backend}-"))
    broker_process = None
    failures: list[str] = []
    try:
        broker = "embedded"
        if backend == "kafka":
            from benchmarks import workloads

            broker = "kafka://" + workloads._broker()
            broker_process = workloads.BROKER_PROCESS
        expected = publish(folder, broker, records)
        print(f"{backend}: {records:,} room events in {PARTITIONS} partitions, best of {repeat}")
        print(
            f"  {'variant':<12} {'workers':>7} {'seconds':>8} {'records/s':>10} {'CPU s':>7}"
            f" {'broker CPU s':>12}  totals"
        )
        for variant in variants:
            for workers in (1, 2):
                row = f"  {variant:<12} {workers:>7}"
                runs: list[dict[str, float]] = []
                try:
                    while len(runs) < repeat:
                        runs.append(
                            run_group(folder, broker, variant, workers, broker_process, expected)
                        )
                except RunFailed as failed:
                    failures.append(
                        f"{backend}, {variant}, --workers {workers}, run {len(runs) + 1} of "
                        f"{repeat} in this folder: {failed}"
                    )
                    print(f"{row} {'-':>8} {'-':>10} {'-':>7} {'-':>12}  FAILED (see below)")
                    continue
                best = min(runs, key=lambda r: r["seconds"])
                broker_cpu = f"{best['broker_cpu']:12.2f}" if broker_process else f"{'-':>12}"
                print(
                    f"{row} {best['seconds']:8.2f} {records / best['seconds']:10,.0f}"
                    f" {best['cpu']:7.2f} {broker_cpu}  exact"
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return failures


def main() -> None:
    """Parse arguments, measure, and list the failures (exit status 1 when any)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["embedded", "kafka"])
    parser.add_argument("--variant", choices=list(VARIANTS))
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    variants = [args.variant] if args.variant else list(VARIANTS)
    failures: list[str] = []
    for backend in [args.only] if args.only else ["embedded", "kafka"]:
        failures += measure(backend, args.records, args.repeat, variants)
    for failure in failures:
        print(f"\nFAILED {failure}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
