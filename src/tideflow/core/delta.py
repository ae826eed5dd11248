"""Incremental step state: what changed since the previous checkpoint, and how to apply it.

A step whose state is mostly keyed rows (``aggregate``: one row of partials per key) can
tell the engine only what changed since its previous snapshot, as a :class:`StateDelta`:
its small values anew, and for each keyed frame the rows changed (upserted), the keys
removed, and columns set to one value on every row (``aggregate`` clears its *not emitted
yet* flag on every key when it emits). The state store keeps the last full snapshot (the
*base*) and the deltas stored after it; restoring applies them in order to the base, so the
result is the state the step held at the last checkpoint (:func:`apply_delta`), and the step
itself never sees a delta. Applying is columnar: one anti-join and one concatenation per
frame and delta.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

DELTA_MARK = "__tideflow_delta__"
"""Key marking an encoded delta (a full snapshot never has it)."""


@dataclass
class FrameDelta:
    """What changed in one keyed frame of a step's state since its previous snapshot.

    Applied in this order: ``reset`` (columns set on every row), ``delete`` (rows of these
    keys removed), then ``upsert`` (rows replacing those of the same keys, or added)."""

    keys: list[str]
    upsert: pl.DataFrame
    delete: pl.DataFrame | None = None
    reset: dict[str, Any] = field(default_factory=dict)


@dataclass
class StateDelta:
    """What changed in a step's state since its previous snapshot: top-level ``values``
    replaced as they are, keyed ``frames`` changed row by row."""

    values: dict[str, Any] = field(default_factory=dict)
    frames: dict[str, FrameDelta] = field(default_factory=dict)

    def encodable(self) -> dict[str, Any]:
        """The delta as a JSON-like value with frames (for ``core.codec.encode_state``)."""
        return {
            DELTA_MARK: 1,
            "values": self.values,
            "frames": {
                name: {
                    "keys": f.keys,
                    "upsert": f.upsert,
                    "delete": f.delete,
                    "reset": f.reset,
                }
                for name, f in self.frames.items()
            },
        }


def is_delta(decoded: Any) -> bool:
    """Whether a decoded state blob is a delta (else a full snapshot)."""
    return isinstance(decoded, dict) and DELTA_MARK in decoded


def apply_delta(base: Any, delta: dict[str, Any]) -> dict[str, Any]:
    """The state ``base`` (a decoded full snapshot, or None) with a decoded ``delta`` applied."""
    if base is not None and not isinstance(base, dict):
        raise ValueError(f"a state delta applies to a snapshot that is a mapping, not {base!r}")
    state: dict[str, Any] = dict(base or {})
    state.update(delta["values"])
    for name, change in delta["frames"].items():
        state[name] = _apply_frame(state.get(name), change)
    return state


def _apply_frame(frame: pl.DataFrame | None, change: dict[str, Any]) -> pl.DataFrame | None:
    keys: list[str] = change["keys"]
    upsert: pl.DataFrame = change["upsert"]
    delete: pl.DataFrame | None = change["delete"]
    if frame is None:
        # No rows before: nothing to reset or delete (a key removed in the same interval it
        # was added in is not among the upserted rows).
        return upsert if upsert.height or upsert.width else None
    if change["reset"]:
        frame = frame.with_columns(
            pl.lit(value, dtype=frame.schema[column]).alias(column)
            for column, value in change["reset"].items()
        )
    # Keys compare null to null: a key column may hold nulls (one group for them).
    if delete is not None and delete.height:
        frame = frame.join(delete.select(keys), on=keys, how="anti", nulls_equal=True)
    if upsert.height:
        kept = frame.join(upsert.select(keys), on=keys, how="anti", nulls_equal=True)
        frame = pl.concat([kept, upsert.select(kept.columns)], how="vertical_relaxed")
    return frame
