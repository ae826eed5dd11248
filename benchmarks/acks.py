"""Acknowledged once durable, within milliseconds (issue 24): webhook posts and broker
messages, with tideflow's default settings.

    python -m benchmarks.acks                                 # everything, 3 runs each
    python -m benchmarks.acks --only webhook --sinks file --repeat 5
    python -m benchmarks.acks --only brokers

**Webhook.** Each server runs in its own process; the client is this process, with one
keep-alive ``http.client`` connection per sender thread (the standard library's HTTP client,
the cheapest in CPU on a shared 2-core machine, and the same for every server). Servers:

- ``fastapi``: the baseline, a plain FastAPI endpoint that appends each body to a file and
  fsyncs it before answering (``benchmarks/webhook_baseline.py``, uvicorn defaults);
- ``tideflow-file``: ``source: {type: webhook}`` -> ``file`` sink (NDJSON);
- ``tideflow-postgres``: ``source: {type: webhook}`` -> ``sql`` sink (PostgreSQL, append);
- ``tideflow-file-ids`` (``--sinks file-ids``): as ``tideflow-file``, with
  ``idempotency_header`` (the client sends a delivery id with every post).

Loads, one after the other on one server process: one sender posting single records one
after another; 32 concurrent senders posting single records; 8 senders posting NDJSON bodies
of 1,000 records. Every post must be answered 200 and every record must be in the output at
the end (checked). Targets: sequential p50 <= 20 ms and p99 <= 100 ms; 32 senders >= 1,000
posts/s with p99 <= 500 ms; NDJSON >= 100,000 records/s.

**Brokers.** A pipeline (``mqtt``, ``amqp`` or ``redis_streams`` source -> ``file`` sink,
default settings) runs in this process while a publisher sends 100 messages a second; the
time from each message's publication to the acknowledgement tideflow sends for it (PUBACK,
``basic.ack``, XACK, observed on the client library's call) is measured. Target: p99 <= 200
ms at this low load.

Figures depend on how busy the machine is: run it when it is quiet, several times.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql://postgres@127.0.0.1:5432/tideflow_bench"
SEQUENTIAL_POSTS = 500
CONCURRENT_SENDERS = 32
CONCURRENT_POSTS = 100  # per sender
NDJSON_SENDERS = 8
NDJSON_POSTS = 25  # per sender
NDJSON_RECORDS = 1_000


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A server under test: its process, URL, and how to count the records it stored."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    stored: Callable[[], int]


def fresh_table() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname='tideflow_bench'").fetchone():
            conn.execute("CREATE DATABASE tideflow_bench")
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS webhook_bench")


def table_rows() -> int:
    import psycopg

    with psycopg.connect(PG_URL) as conn:
        row = conn.execute("SELECT count(*) FROM webhook_bench").fetchone()
    return int(row[0]) if row else 0


def ndjson_lines(folder: Path) -> int:
    files = [p for p in folder.glob("*.ndjson") if not p.name.startswith(".")]
    return sum(p.read_bytes().count(b"\n") for p in files)


@contextmanager
def server(kind: str, work: Path) -> Iterator[Server]:
    """Start one server in its own process; stop it (SIGTERM: tideflow's last checkpoint)."""
    port = free_port()
    env = dict(os.environ)
    if kind == "fastapi":
        out = work / "baseline.ndjson"
        env["WEBHOOK_BASELINE_FILE"] = str(out)
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.webhook_baseline:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]

        def stored() -> int:
            return out.read_bytes().count(b"\n") if out.exists() else 0

        cwd = Path(__file__).parents[1]
    else:
        if kind.startswith("tideflow-file"):
            sink = "{type: file, path: out, format: ndjson}"

            def stored() -> int:
                return ndjson_lines(work / "out")
        else:
            fresh_table()
            sink = f"{{type: sql, url: '{PG_URL}', table: webhook_bench}}"
            stored = table_rows
        ids = ", idempotency_header: X-Delivery" if kind.endswith("-ids") else ""
        (work / "p.yaml").write_text(
            f"name: hook-bench\nsource: {{type: webhook, port: {port}, path: /in{ids}}}\n"
            f"sink: {sink}\n",
            encoding="utf-8",
        )
        command = [sys.executable, "-m", "tideflow.cli.main", "run", "p.yaml"]
        cwd = work
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} ended: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} never listened") from None
                time.sleep(0.05)
        yield Server(kind, proc, f"http://127.0.0.1:{port}/in", stored)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


# -- the client --------------------------------------------------------------------------------


@dataclass
class Load:
    """What one load measured."""

    posts: int = 0
    records: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Client:
    """Senders posting to one URL, each on its own keep-alive connection."""

    def __init__(self, url: str) -> None:
        self.host, rest = url.removeprefix("http://").split(":", 1)
        port, path = rest.split("/", 1)
        self.port, self.path = int(port), "/" + path
        self.next_id = 0
        self.lock = threading.Lock()

    def ids(self, count: int) -> range:
        with self.lock:
            start = self.next_id
            self.next_id += count
        return range(start, start + count)

    def run(self, senders: int, posts: int, records: int) -> Load:
        """``senders`` threads, each sending ``posts`` posts of ``records`` records."""
        load = Load()
        barrier = threading.Barrier(senders + 1)
        errors: list[str] = []

        def sender() -> None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            bodies = []
            for _ in range(posts):
                ids = self.ids(records)
                headers = {"X-Delivery": f"d-{ids[0]}"}
                if records == 1:
                    body = json.dumps({"id": ids[0], "name": "x"}).encode()
                    headers["Content-Type"] = "application/json"
                else:
                    frame = pl.DataFrame({"id": list(ids), "name": ["x"] * records})
                    body = frame.write_ndjson().encode()
                    headers["Content-Type"] = "application/x-ndjson"
                bodies.append((body, headers))
            barrier.wait()
            mine = []
            for body, headers in bodies:
                started = time.perf_counter()
                conn.request("POST", self.path, body, headers)
                reply = conn.getresponse()
                reply.read()
                mine.append(time.perf_counter() - started)
                if reply.status != 200:
                    errors.append(f"status {reply.status}")
            conn.close()
            with self.lock:
                load.latencies.extend(mine)

        threads = [threading.Thread(target=sender) for _ in range(senders)]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        load.seconds = time.perf_counter() - started
        if errors:
            raise RuntimeError(f"{len(errors)} posts not answered 200, e.g. {errors[0]}")
        load.posts = senders * posts
        load.records = load.posts * records
        return load


def webhook_run(kind: str) -> tuple[dict[str, Load], int]:
    """The three loads against a fresh server; checks that every record was stored.
    Returns the loads and the number of output files (file sink: one per checkpoint)."""
    work = Path(tempfile.mkdtemp(prefix=f"tideflow-bench-acks-{kind}-"))
    try:
        with server(kind, work) as srv:
            client = Client(srv.url)
            client.run(1, 20, 1)  # warm-up: connections, table creation, first files
            loads = {
                "sequential": client.run(1, SEQUENTIAL_POSTS, 1),
                "concurrent": client.run(CONCURRENT_SENDERS, CONCURRENT_POSTS, 1),
                "ndjson": client.run(NDJSON_SENDERS, NDJSON_POSTS, NDJSON_RECORDS),
            }
        stored = srv.stored()
        if stored != client.next_id:
            raise RuntimeError(f"{kind}: {stored} records stored, {client.next_id} sent")
        files = len(list((work / "out").glob("*.ndjson"))) if "file" in kind else 0
        return loads, files
    finally:
        shutil.rmtree(work, ignore_errors=True)


def webhook(sinks: list[str], repeat: int) -> bool:
    kinds = ["fastapi"] + [f"tideflow-{s}" for s in sinks]
    print(
        "webhook: single-record posts (sequential: 1 sender; concurrent: "
        f"{CONCURRENT_SENDERS} senders) and NDJSON posts of {NDJSON_RECORDS:,} records "
        f"({NDJSON_SENDERS} senders); latencies in ms"
    )
    header = (
        f"  {'server':<18} {'seq p50':>8} {'seq p99':>8} {'conc/s':>8} {'conc p50':>9} "
        f"{'conc p99':>9} {'ndjson rec/s':>13} {'nd p50':>8} {'nd p99':>8} {'files':>6}"
    )
    print(header)
    ok = True
    for kind in kinds:
        rows = []
        for _ in range(repeat):
            loads, files = webhook_run(kind)
            seq, conc, nd = loads["sequential"], loads["concurrent"], loads["ndjson"]
            row = (
                seq.percentile(0.5),
                seq.percentile(0.99),
                conc.posts / conc.seconds,
                conc.percentile(0.5),
                conc.percentile(0.99),
                nd.records / nd.seconds,
                nd.percentile(0.5),
                nd.percentile(0.99),
            )
            rows.append(row)
            print(f"  {kind:<18} " + _cells(row) + (f" {files:6d}" if files else ""), flush=True)
        if repeat > 1:
            median = tuple(statistics.median(r[i] for r in rows) for i in range(8))
            print(f"  {'  median':<18} " + _cells(median))
        else:
            median = rows[0]
        if kind != "fastapi":
            met = (
                median[0] <= 20
                and median[1] <= 100
                and median[2] >= 1000
                and median[4] <= 500
                and median[5] >= 100_000
            )
            ok &= met
            print(f"  {'  targets':<18} {'met' if met else 'MISSED'} (medians)")
    print(
        f"  {'target':<18} {'<=20':>8} {'<=100':>8} {'>=1000':>8} {'':>9} {'<=500':>9} "
        f"{'>=100000':>13}"
    )
    return ok


def _cells(row: tuple[float, ...]) -> str:
    return (
        f"{row[0]:8.1f} {row[1]:8.1f} {row[2]:8.0f} {row[3]:9.1f} {row[4]:9.1f} "
        f"{row[5]:13,.0f} {row[6]:8.1f} {row[7]:8.1f}"
    )


# -- brokers -----------------------------------------------------------------------------------


class AckClock:
    """Publication and acknowledgement times of every message, by message number."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.published: dict[int, float] = {}
        self.acked: dict[int, float] = {}

    def publish(self, i: int) -> None:
        with self.lock:
            self.published[i] = time.monotonic()

    def ack(self, numbers: list[int]) -> None:
        now = time.monotonic()
        with self.lock:
            for i in numbers:
                self.acked.setdefault(i, now)

    def delays_ms(self) -> list[float]:
        with self.lock:
            return sorted((self.acked[i] - t) * 1000 for i, t in self.published.items())


def patch(cls: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Wrap a method of a library class for this process (the benchmark's instrument)."""
    setattr(cls, name, wrapper(getattr(cls, name)))


def broker_run(kind: str, rate: float, count: int) -> list[float]:
    """Publish ``count`` messages at ``rate`` a second through a default pipeline; the
    publication -> acknowledgement delay of each, in ms."""
    from tideflow.run.plan import engine_for
    from tideflow.spec.loader import load_pipeline_text

    clock = AckClock()
    name = f"bench{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix=f"tideflow-bench-acks-{kind}-"))
    sources = {
        "mqtt": f'{{type: mqtt, topics: ["{name}/t"]}}',
        "amqp": f"{{type: amqp, queue: {name}}}",
        "redis_streams": f"{{type: redis_streams, stream: {name}, group: g, format: json}}",
    }
    spec = load_pipeline_text(
        f"name: {name}\nsource: {sources[kind]}\nsink: {{type: file, path: out, format: ndjson}}\n",
        "p.yaml",
    )
    engine = engine_for(spec, work)
    publish, cleanup = _instrument(kind, name, clock, engine)
    runner = threading.Thread(target=engine.run, daemon=True)
    runner.start()
    try:
        _wait_ready(kind, engine)
        started = time.monotonic()
        for i in range(count):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            publish(i)
        deadline = time.monotonic() + 60
        while len(clock.acked) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: {len(clock.acked)} of {count} acknowledged")
            time.sleep(0.05)
    finally:
        engine.stop()
        runner.join(60)
        cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return clock.delays_ms()


def _wait_ready(kind: str, engine: Any) -> None:
    source = engine.graph.sources[0].component
    deadline = time.monotonic() + 60
    while True:
        ready = {
            "mqtt": lambda: getattr(source, "_suback", None) is not None,
            "amqp": lambda: getattr(source, "_link", None) is not None,
            "redis_streams": lambda: getattr(source, "client", None) is not None,
        }[kind]()
        if ready:
            time.sleep(0.5)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind} source never started")
        time.sleep(0.05)


def _instrument(
    kind: str, name: str, clock: AckClock, engine: Any
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A publisher of message ``i`` and a cleanup; wraps the client library's ack call so
    that each acknowledgement is timed when tideflow sends it."""
    payload = lambda i: json.dumps({"i": i}).encode()  # noqa: E731
    if kind == "redis_streams":
        import redis

        client = redis.Redis()
        by_id: dict[bytes, int] = {}

        def xack(original: Callable[..., Any]) -> Callable[..., Any]:
            def timed(self: Any, stream: Any, group: Any, *ids: Any) -> Any:
                result = original(self, stream, group, *ids)
                clock.ack([by_id[i] for i in ids if i in by_id])
                return result

            return timed

        patch(redis.Redis, "xack", xack)

        def send(i: int) -> None:
            clock.publish(i)
            by_id[client.xadd(name, {"payload": payload(i)})] = i

        def cleanup() -> None:
            client.delete(name)
            client.close()

        return send, cleanup
    if kind == "amqp":
        import pika
        from pika.adapters.blocking_connection import BlockingChannel

        from tideflow.connectors.amqp import AmqpSource

        by_tag: dict[int, int] = {}

        def on_message(original: Callable[..., Any]) -> Callable[..., Any]:
            def timed(self: Any, channel: Any, method: Any, props: Any, body: bytes) -> Any:
                by_tag[method.delivery_tag] = json.loads(body)["i"]
                return original(self, channel, method, props, body)

            return timed

        def basic_ack(original: Callable[..., Any]) -> Callable[..., Any]:
            def timed(self: Any, delivery_tag: int = 0, multiple: bool = False) -> Any:
                result = original(self, delivery_tag=delivery_tag, multiple=multiple)
                tags = [t for t in by_tag if t <= delivery_tag] if multiple else [delivery_tag]
                clock.ack([by_tag.pop(t) for t in tags if t in by_tag])
                return result

            return timed

        patch(AmqpSource, "_on_message", on_message)
        patch(BlockingChannel, "basic_ack", basic_ack)
        connection = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1/"))
        channel = connection.channel()
        channel.queue_declare(name, durable=True)

        def send(i: int) -> None:
            clock.publish(i)
            channel.basic_publish("", name, payload(i))

        def cleanup() -> None:
            channel.queue_delete(name)
            connection.close()

        return send, cleanup
    import paho.mqtt.client as mqtt

    from tideflow.connectors.mqtt import MqttSource

    unacked: list[tuple[int, int]] = []  # (packet id, message number), in delivery order

    def on_mqtt(original: Callable[..., Any]) -> Callable[..., Any]:
        def timed(self: Any, client: Any, userdata: Any, message: Any) -> Any:
            unacked.append((message.mid, json.loads(message.payload)["i"]))
            return original(self, client, userdata, message)

        return timed

    def ack(original: Callable[..., Any]) -> Callable[..., Any]:
        def timed(self: Any, mid: int, qos: int) -> Any:
            result = original(self, mid, qos)
            for k, (packet, number) in enumerate(unacked):
                if packet == mid:
                    del unacked[k]
                    clock.ack([number])
                    break
            return result

        return timed

    patch(MqttSource, "_on_message", on_mqtt)
    patch(mqtt.Client, "ack", ack)
    publisher = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    publisher.connect("127.0.0.1", 1883)
    publisher.loop_start()

    def send_mqtt(i: int) -> None:
        clock.publish(i)
        publisher.publish(f"{name}/t", payload(i), qos=1)

    def cleanup_mqtt() -> None:
        publisher.disconnect()
        publisher.loop_stop()

    return send_mqtt, cleanup_mqtt


def brokers(kinds: list[str], rate: float, count: int) -> bool:
    print(
        f"brokers: {count} messages at {rate:.0f}/s -> file sink, default settings; "
        "publication -> acknowledgement in ms (target p99 <= 200)"
    )
    ok = True
    for kind in kinds:
        # Each broker in its own process: the instruments patch library classes.
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.acks", "--broker-run", kind, str(rate), str(count)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} failed:\n{proc.stderr}")
        delays = json.loads(proc.stdout.strip().splitlines()[-1])
        p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))]
        met = p99 <= 200
        ok &= met
        print(
            f"  {kind:<14} p50 {statistics.median(delays):7.1f}  p99 {p99:7.1f}  "
            f"max {delays[-1]:7.1f}  ({len(delays)} acknowledged; {'met' if met else 'MISSED'})",
            flush=True,
        )
    return ok


def main() -> None:
    """Run the selected measurements and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["webhook", "brokers"], help="one part only")
    parser.add_argument(
        "--sinks", default="file,postgres", help="webhook sinks (file,postgres,file-ids)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per webhook server")
    parser.add_argument("--brokers", default="mqtt,amqp,redis_streams")
    parser.add_argument("--rate", type=float, default=100.0, help="broker messages a second")
    parser.add_argument("--messages", type=int, default=1000, help="broker messages per run")
    parser.add_argument("--broker-run", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.broker_run:
        kind, rate, count = args.broker_run
        print(json.dumps(broker_run(kind, float(rate), int(count))))
        return
    ok = True
    if args.only in (None, "webhook"):
        ok &= webhook(args.sinks.split(","), args.repeat)
    if args.only in (None, "brokers"):
        ok &= brokers(args.brokers.split(","), args.rate, args.messages)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
