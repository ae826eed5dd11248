"""A one-minute moving average per sensor, every 10 seconds, upserted into PostgreSQL.

A built-in processor (the `window` step, sliding) registered like a function, writing to a
SQL table instead of a topic. Set DB_URL (default: the local test database):

    DB_URL=postgresql://postgres@127.0.0.1:5432/test python moving_average.py

Re-running is safe: the table is upserted on (sensor, window_start), and the stream's
consumer group only reads readings it has not read yet.
"""

import os
import random
from datetime import UTC, datetime, timedelta

import tideflow
from tideflow import Stream
from tideflow.stream import window

DB_URL = os.environ.get("DB_URL", "postgresql://postgres@127.0.0.1:5432/test")
START = datetime(2024, 1, 1, tzinfo=UTC)


def readings(count=600, seed=1):
    """Three sensors, one reading each about every 3 seconds, for 10 minutes."""
    rng = random.Random(seed)
    for i in range(count):
        yield {
            "sensor": f"s{i % 3}",
            "ts": (START + timedelta(seconds=i)).isoformat(),
            "temperature": round(20 + 5 * rng.random(), 2),
        }


stream = Stream("sensors")
stream.register_processor(
    "moving_average",
    window(
        "ts",  # each reading's own time (ISO-8601)
        kind="sliding",
        size="1m",
        slide="10s",
        keys=["sensor"],
        aggregations={"avg_temperature": "mean(temperature)", "readings": "count()"},
    ),
    input_topic="sensor_readings",
    sink=tideflow.connector(
        "sql", url=DB_URL, table="moving_average", mode="upsert", key=["sensor", "window_start"]
    ),
)
print("published:", stream.stream_data(readings(), stream_name="sensor_readings"))
stream.start(stop_at_end=True)

counts = stream.results["moving_average"].counts
print(f"windows written: {counts['sql']['out']}")
