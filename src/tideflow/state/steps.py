"""Step state in the state database: whole snapshots or a base and the deltas after it, of a
pipeline's steps and of each group partition's.

A step's state is stored encoded (``core.codec``): whole in ``step_state``, or, for a group
worker, packed with the partition's other steps into one blob of ``partition_state`` (each
step's size kept). A state that is a :class:`~tideflow.core.delta.StateDelta` goes to
``state_deltas`` after the step's base (``epoch``, ``seq`` order; a partition's under its
``scope``), applied on load. Storing a full snapshot deletes the deltas after the old base
(compaction), in the same transaction.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from tideflow.core.checkpoints import GroupCheckpoint, PartitionLostError
from tideflow.core.codec import decode_state, encode_state
from tideflow.core.delta import StateDelta, apply_delta, is_delta
from tideflow.core.faults import crash_point
from tideflow.errors import StateError
from tideflow.state.database import Database


class StepStates:
    """The step states of every pipeline in a state store, read and written in the store's
    transactions (each method takes the connection the caller holds)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def load(self, conn: Any, pipeline: str) -> dict[str, Any]:
        """The pipeline's step states as of its last checkpoint."""
        states = self.db.execute(
            conn, "SELECT step, data FROM step_state WHERE pipeline=?", (pipeline,)
        ).fetchall()
        return _restore(dict(states), self._deltas(conn, pipeline, ""))

    def store(
        self,
        conn: Any,
        pipeline: str,
        checkpoint_id: int,
        step_states: dict[str, Any],
        encoded: dict[str, bytes],
    ) -> None:
        """Store the pipeline's step states (``encoded`` by :func:`encode`): a delta after
        the step's base, a full state as the new base, its deltas deleted."""
        for step, data in encoded.items():
            if isinstance(step_states[step], StateDelta):
                self._insert_delta(conn, pipeline, "", step, 0, checkpoint_id, data)
                continue
            self.db.execute(
                conn,
                "INSERT INTO step_state (pipeline, step, data) VALUES (?,?,?) "
                "ON CONFLICT(pipeline, step) DO UPDATE SET data=excluded.data",
                (pipeline, step, data),
            )
            # A new base: the deltas stored after the old one are in it (compaction).
            gone = self.db.execute(
                conn,
                "DELETE FROM state_deltas WHERE pipeline=? AND scope='' AND step=?",
                (pipeline, step),
            )
            if gone.rowcount:
                crash_point("checkpoint.compacted")

    def store_partitions(
        self,
        conn: Any,
        group: GroupCheckpoint,
        checkpoint_id: int,
        written: dict[tuple[str, str, str], int] | None,
    ) -> dict[str, int]:
        """Store the position and step states of each partition ``group`` checkpoints,
        fenced by the epoch of the worker's claim (:class:`PartitionLostError` for a
        partition claimed by another worker since); the bytes stored per step. ``written``,
        when given, receives the bytes stored per (step, source, partition)."""
        sizes: dict[str, int] = {}
        for part in group.partitions:
            states = {step: encode(state) for step, state in part.step_states.items()}
            for step, data in states.items():
                sizes[step] = sizes.get(step, 0) + len(data)
                if written is not None:
                    written[(step, part.source, part.part)] = len(data)
            deltas = [s for s, v in part.step_states.items() if isinstance(v, StateDelta)]
            if deltas and len(deltas) != len(states):
                # The packed base holds every step of the partition: it is replaced whole.
                raise StateError(
                    f"partition {part.part}: the states of {', '.join(deltas)} are deltas "
                    "and others full snapshots; a partition's are all one or the other"
                )
            fence = (group.pipeline, part.source, part.part, group.owner, part.epoch)
            if deltas:
                updated = self.db.execute(
                    conn,
                    "UPDATE partition_state SET position=? WHERE pipeline=? AND "
                    "source=? AND part=? AND owner=? AND epoch=?",
                    (orjson.dumps(part.position), *fence),
                )
            else:
                updated = self.db.execute(
                    conn,
                    "UPDATE partition_state SET position=?, states=? WHERE pipeline=? AND "
                    "source=? AND part=? AND owner=? AND epoch=?",
                    (orjson.dumps(part.position), _pack(states), *fence),
                )
            if updated.rowcount == 1:
                scope = _scope(part.source, part.part)
                if deltas:
                    for step, data in states.items():
                        self._insert_delta(
                            conn, group.pipeline, scope, step, part.epoch, checkpoint_id, data
                        )
                else:
                    gone = self.db.execute(
                        conn,
                        "DELETE FROM state_deltas WHERE pipeline=? AND scope=?",
                        (group.pipeline, scope),
                    )
                    if gone.rowcount:
                        crash_point("checkpoint.compacted")
            if updated.rowcount != 1:
                raise PartitionLostError(
                    f"partition {part.part} of source {part.source!r} has been claimed by "
                    f"another worker since {group.owner} took it; this worker stops so that "
                    "it cannot overwrite newer state"
                )
        return sizes

    def claimed(self, conn: Any, pipeline: str, source: str, part: str, packed: Any) -> Any:
        """The step states of a partition just claimed, from its ``packed`` base."""
        return _restore(_unpack(packed), self._deltas(conn, pipeline, _scope(source, part)))

    def _deltas(self, conn: Any, pipeline: str, scope: str) -> list[tuple[str, bytes]]:
        """(step, encoded delta) stored for ``scope`` after each step's base, in order."""
        rows = self.db.execute(
            conn,
            "SELECT step, data FROM state_deltas WHERE pipeline=? AND scope=? "
            "ORDER BY step, epoch, seq",
            (pipeline, scope),
        ).fetchall()
        return [(str(step), bytes(data)) for step, data in rows]

    def _insert_delta(
        self, conn: Any, pipeline: str, scope: str, step: str, epoch: int, seq: int, data: bytes
    ) -> None:
        self.db.execute(
            conn,
            "INSERT INTO state_deltas (pipeline, scope, step, epoch, seq, data) "
            "VALUES (?,?,?,?,?,?)",
            (pipeline, scope, step, epoch, seq, data),
        )


def _pack(blobs: dict[str, bytes]) -> bytes:
    """Several named state blobs as one (each step's size stays known without re-encoding)."""
    out = [struct.pack(">I", len(blobs))]
    for name, data in blobs.items():
        raw = name.encode()
        out += [struct.pack(">IQ", len(raw), len(data)), raw, data]
    return b"".join(out)


def _unpack(data: bytes | None) -> dict[str, bytes]:
    """Inverse of :func:`_pack`; no blob at all is no state."""
    if data is None:
        return {}
    data = bytes(data)
    (count,) = struct.unpack_from(">I", data)
    pos, out = 4, {}
    for _ in range(count):
        name_len, size = struct.unpack_from(">IQ", data, pos)
        pos += 12
        name = data[pos : pos + name_len].decode()
        pos += name_len
        out[name] = data[pos : pos + size]
        pos += size
    return out


def encode(state: Any) -> bytes:
    """A step's state (a full snapshot or a :class:`StateDelta`) as stored."""
    return encode_state(state.encodable() if isinstance(state, StateDelta) else state)


def _scope(source: str, part: str) -> str:
    """The ``state_deltas.scope`` of one source partition's step state ('' outside groups)."""
    return orjson.dumps([source, part]).decode()


def _restore(bases: dict[str, bytes], deltas: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Step states: each step's base snapshot with the deltas stored after it applied in
    order (a step may have deltas only: its first state was empty)."""
    states: dict[str, Any] = {step: decode_state(data) for step, data in bases.items()}
    for step, data in deltas:
        delta = decode_state(data)
        if not is_delta(delta):
            raise StateError(f"step {step!r}: a stored state delta is not a delta")
        states[step] = apply_delta(states.get(step), delta)
    return states
