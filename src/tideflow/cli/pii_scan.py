"""Read a sample for ``tideflow pii scan``: a data file, or the first records of a pipeline's
sources (read through the source itself; no step runs, no sink is written, no state kept)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import polars as pl

from tideflow.core.contracts import Context, Source
from tideflow.errors import ConfigError
from tideflow.registry import default_registry
from tideflow.spec.loader import load_pipeline

READERS = {
    ".csv": lambda p, n: pl.read_csv(p, n_rows=n, infer_schema_length=1000),
    ".parquet": lambda p, n: pl.read_parquet(p, n_rows=n),
    ".json": lambda p, n: pl.read_json(p).head(n),
    ".ndjson": lambda p, n: pl.read_ndjson(p, n_rows=n),
    ".jsonl": lambda p, n: pl.read_ndjson(p, n_rows=n),
}
EMPTY_READS = 20
"""An unbounded source that returns this many empty batches in a row has nothing more."""


def read_sample(target: str, rows: int) -> tuple[pl.DataFrame, str]:
    """Up to ``rows`` records from a data file or a pipeline file, and what was read."""
    path = Path(target)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _from_pipeline(path, rows)
    reader = READERS.get(suffix)
    if reader is None:
        raise ConfigError(
            f"{target}: cannot scan {suffix or 'this file'}; give a pipeline file (.yaml) or "
            f"a data file ({', '.join(sorted(READERS))})"
        )
    if not path.is_file():
        raise ConfigError(f"{target}: no such file")
    return reader(str(path), rows), str(path)


def _from_pipeline(path: Path, rows: int) -> tuple[pl.DataFrame, str]:
    spec = load_pipeline(str(path))
    base = path.resolve().parent
    frames: list[pl.DataFrame] = []
    names = []
    with tempfile.TemporaryDirectory(prefix="tideflow-pii-scan-") as scratch:
        for src in spec.all_sources:
            name = src.name or src.type
            names.append(name)
            source = default_registry.get("source", src.type).cls(src)
            assert isinstance(source, Source)
            ctx = Context(spec.name, name, base, Path(scratch), threading.Event(), "pii-scan")
            source.open(ctx, None)
            try:
                have, empty = 0, 0
                while have < rows and empty < EMPTY_READS:
                    batch = source.read_batch()
                    if batch is None:
                        break
                    if batch.data.height == 0:
                        empty += 1
                        continue
                    empty = 0
                    frames.append(batch.data.head(rows - have))
                    have += frames[-1].height
            finally:
                source.close()
    data = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    return data, f"{spec.name} (source {', '.join(names)})"
