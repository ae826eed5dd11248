"""The JSON reader: an array of objects (or one object), loaded whole."""

from __future__ import annotations

import io
from collections import deque
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa

from tideflow.connectors.files.formats.base import Chunk, FileRef, Reader, Window, to_frame
from tideflow.connectors.files.formats.convert import convert_columns
from tideflow.connectors.files.formats.lines import frame_from_json_lines
from tideflow.connectors.files.settings import NDJSON_BLOCK, FileSourceConfig
from tideflow.core.contracts import MAX_RECORD_BYTES, raw_dead_letters, too_long


class JsonReader:
    """A JSON array of objects (or a single object), loaded whole: JSON is not streamable."""

    def __init__(
        self,
        fs: Any,
        ref: FileRef,
        skip: int,
        targets: dict[str, pa.DataType],
        max_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self._ref = ref
        with fs.open(ref.path, "rb", compression="infer") as fh:
            raw = fh.read(max_bytes + 1)
            if len(raw) > max_bytes:
                size, raw = len(raw), b""
                while block := fh.read(NDJSON_BLOCK):
                    size += len(block)
                raise ValueError(
                    f"{too_long(size, max_bytes)}: a JSON document is read whole; write "
                    "NDJSON (one record per line) for larger inputs, or raise max_record_bytes"
                )
        dead: list[tuple[int, str, str]] = []
        try:
            data = pl.read_json(io.BytesIO(raw), infer_schema_length=None)
            good_at = np.arange(data.height, dtype=np.int64)
            total = data.height
        except (pl.exceptions.PolarsError, ValueError):
            data, good_at, total = self._fallback(raw, dead)
        if targets and data.height:
            table, conv, failed = convert_columns(
                data.to_arrow(),
                targets,
                None,
                lambda rows: [f"{ref.url}: element {int(good_at[r])}" for r in rows],
            )
            if conv is not None:
                for i, record, reason in zip(failed, conv["record"], conv["reason"], strict=True):
                    dead.append((int(good_at[i]), record, reason))
                good_at = np.delete(good_at, failed)
            data = to_frame(table)
        dead = sorted(d for d in dead if d[0] >= skip)
        keep = good_at >= skip
        self._data = data.filter(pl.Series(keep)) if data.height else data
        self._good_at = good_at[keep]
        self._dead = deque(dead)
        self._next = skip
        self._total = total
        self._offset = 0

    @classmethod
    def open(
        cls,
        fs: Any,
        ref: FileRef,
        skip: int,
        config: FileSourceConfig,
        targets: dict[str, pa.DataType],
        window: Window | None,
    ) -> Reader:
        """The reader of ``ref``, read whole (``window`` is not used)."""
        return cls(fs, ref, skip, targets, config.max_record_bytes)

    def _fallback(
        self, raw: bytes, dead: list[tuple[int, str, str]]
    ) -> tuple[pl.DataFrame, np.ndarray, int]:
        """Parse element by element to find the ones that are not usable records."""
        url = self._ref.url
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            dead.append((0, raw.decode("utf-8", "replace"), f"{url}: invalid JSON: {exc}"))
            return pl.DataFrame(), np.array([], dtype=np.int64), 1
        elements = value if isinstance(value, list) else [value]
        lines: list[bytes] = []
        positions: list[int] = []
        for i, element in enumerate(elements):  # fallback only
            if isinstance(element, dict):
                lines.append(orjson.dumps(element))
                positions.append(i)
            else:
                dead.append(
                    (
                        i,
                        orjson.dumps(element).decode(),
                        f"{url}: element {i}: expected a JSON object, "
                        f"found {type(element).__name__}",
                    )
                )
        data, failed, reasons = frame_from_json_lines(
            lines, lambda i: f"{url}: element {positions[i]}"
        )
        for i, reason in zip(failed, reasons, strict=True):
            dead.append((positions[i], lines[i].decode(), reason))
        good = np.delete(np.array(positions, dtype=np.int64), failed)
        return data, good, len(elements)

    def read(self, limit: int) -> Chunk | None:
        if self._offset >= self._data.height and not self._dead:
            return None
        take = self._data.slice(self._offset, limit)
        self._offset += take.height
        end = int(self._good_at[self._offset - 1]) + 1 if take.height else self._total
        records: list[str] = []
        reasons: list[str] = []
        while self._dead and self._dead[0][0] < end:
            _, record, reason = self._dead.popleft()
            records.append(record)
            reasons.append(reason)
        start = self._next
        self._next = max(end, start)
        dead = raw_dead_letters(records, reasons) if records else None
        return Chunk(take, dead, self._next - start)

    def close(self) -> None:
        self._data = pl.DataFrame()
