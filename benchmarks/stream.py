"""The Stream API on the embedded log: how soon output is visible, and what that costs.

    python -m benchmarks.stream                      # latency and throughput
    python -m benchmarks.stream --records 200000 --samples 40

Latency: a running doubling processor (and a chain of two); one record published every
250 ms; the time from ``stream_data`` returning to the record's result being readable in the
output topic, at the default checkpoint interval (0.5 s) and at ``tideflow run``'s (10 s).

Throughput: a bounded run of the doubling processor over N records at both intervals, in
fresh state folders; the difference is what checkpointing twice a second costs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def double(data: Any) -> Any:
    """The processor under test."""
    return data * 2


def _latencies(folder: Path, checkpoint: float, samples: int, chain: bool) -> list[float]:
    from tideflow import Stream
    from tideflow.topics.embedded import open_log

    s = Stream("latency", state_dir=folder, checkpoint_seconds=checkpoint)
    s.register_processor("first", double, input_topic="in", output_topic="mid")
    if chain:
        s.register_processor("second", double, input_topic="mid", output_topic="out")
    target = "out" if chain else "mid"
    s.start(block=False)
    log = open_log(folder / ".tideflow" / "topics.db")
    seen: dict[int, float] = {}
    done = threading.Event()

    def watch() -> None:
        offset = 0
        while not done.is_set():
            got = log.read(target, 0, offset, 1000)
            now = time.perf_counter()
            for value, at in zip(got.values, got.offsets, strict=True):
                seen[int(value or b"0") // (4 if chain else 2)] = now
                offset = at + 1
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    published: dict[int, float] = {}
    try:
        for i in range(1, samples + 1):
            s.stream_data([i], stream_name="in")
            published[i] = time.perf_counter()
            time.sleep(0.25)
        deadline = time.monotonic() + 60
        while len(seen) < samples and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        s.stop()
    return [seen[i] - published[i] for i in published if i in seen]


def _throughput(folder: Path, checkpoint: float, records: int) -> float:
    from tideflow import Stream

    s = Stream("throughput", state_dir=folder, checkpoint_seconds=checkpoint)
    s.register_processor("double", double, input_topic="in", output_topic="out")
    for start in range(0, records, 50_000):
        s.stream_data(list(range(start, min(start + 50_000, records))), stream_name="in")
    started = time.perf_counter()
    s.start(stop_at_end=True)
    seconds = time.perf_counter() - started
    assert s.results["double"].counts["double"]["out"] == records
    return seconds


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:6.0f} ms  p95 {p95 * 1000:6.0f} ms  "
        f"max {ordered[-1] * 1000:6.0f} ms  ({len(ordered)} records)"
    )


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from tideflow.registry import default_registry

    default_registry.load_plugins()
    print("publish -> visible downstream (embedded log):")
    for checkpoint in (0.5, 10.0):
        for chain in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                got = _latencies(Path(tmp), checkpoint, args.samples, chain)
            what = "chain of 2" if chain else "1 processor"
            print(f"  checkpoint {checkpoint:4.1f} s, {what:11}  {_percentiles(got)}")
    print(f"bounded run of {args.records:,} records through one processor (best of {args.repeat}):")
    runs: dict[float, list[float]] = {10.0: [], 0.5: []}
    for _ in range(args.repeat):  # alternating, so that load on the machine hits both alike
        for checkpoint, times in runs.items():
            with tempfile.TemporaryDirectory() as tmp:
                times.append(_throughput(Path(tmp), checkpoint, args.records))
    timings = {checkpoint: min(times) for checkpoint, times in runs.items()}
    for checkpoint, seconds in timings.items():
        rate = args.records / seconds
        print(f"  checkpoint {checkpoint:4.1f} s  {seconds:6.2f} s  {rate:9,.0f}/s")
    print(f"  checkpointing every 0.5 s costs {timings[0.5] / timings[10.0]:.2f}x the time")


if __name__ == "__main__":
    main()
