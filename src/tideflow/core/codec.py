"""Serialise step state: JSON for small values, Arrow IPC for DataFrames inside it.

State snapshots are columnar (partial aggregates as DataFrames); JSON would lose types and
pickle would execute code on load, so frames travel as Arrow IPC next to a JSON skeleton.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import orjson
import polars as pl

_MAGIC = b"TFS1"
_FRAME_KEY = "__tideflow_frame__"


def encode_state(value: Any) -> bytes:
    """Encode a JSON-like value that may contain Polars DataFrames."""
    frames: list[bytes] = []

    def walk(node: Any) -> Any:
        if isinstance(node, pl.DataFrame):
            buf = io.BytesIO()
            node.write_ipc(buf)
            frames.append(buf.getvalue())
            return {_FRAME_KEY: len(frames) - 1}
        if isinstance(node, dict):
            return {str(k): walk(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [walk(v) for v in node]
        return node

    skeleton = orjson.dumps(walk(value))
    parts = [_MAGIC, struct.pack(">I", len(skeleton)), skeleton]
    for frame in frames:
        parts += [struct.pack(">Q", len(frame)), frame]
    return b"".join(parts)


def decode_state(data: bytes) -> Any:
    """Inverse of :func:`encode_state`."""
    if data[:4] != _MAGIC:
        raise ValueError("not a tideflow state blob")
    (n,) = struct.unpack(">I", data[4:8])
    skeleton = orjson.loads(data[8 : 8 + n])
    pos = 8 + n
    frames: list[pl.DataFrame] = []
    while pos < len(data):
        (size,) = struct.unpack(">Q", data[pos : pos + 8])
        frames.append(pl.read_ipc(io.BytesIO(data[pos + 8 : pos + 8 + size])))
        pos += 8 + size

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {_FRAME_KEY}:
                return frames[node[_FRAME_KEY]]
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(skeleton)
