"""Report readings that never arrived: a gap in a sensor's sequence numbers.

The simulator numbers each sensor's readings (``seq`` from 0 per ``boot``). The pipeline
sends every reading through :func:`check` (a ``python`` step on its own branch): a reading
whose number is more than one above the last one seen from that sensor and boot is
dead-lettered with the size of the gap, so readings lost before tideflow saw them (a broker
that dropped queued messages, an expired session) show in the summary and in
``tideflow deadletters list`` instead of passing unnoticed. Readings in sequence stop here
(filtered); the valid ones reach the sinks through the other branch.

The last number per sensor and boot is kept in ``.tideflow/iot-sequence.json`` beside the
pipeline, so a gap across runs is found too. A number not above the last one (a message the
broker delivers again after a crash) is not a gap. A gap is found when the next reading after
it arrives: readings dropped at the end of a stream show when the sensor sends again.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

STATE = Path(__file__).resolve().parent / ".tideflow" / "iot-sequence.json"


@cache
def _load() -> dict[str, int]:
    """The last number seen per sensor and boot (read once per run, then kept here)."""
    found: dict[str, int] = json.loads(STATE.read_text(encoding="utf-8")) if STATE.is_file() else {}
    return found


def _save(last: dict[str, int]) -> None:
    STATE.parent.mkdir(parents=True, exist_ok=True)
    partial = STATE.with_suffix(".tmp")
    partial.write_text(json.dumps(last), encoding="utf-8")
    os.replace(partial, STATE)  # never a half-written file


def check(record: dict[str, Any]) -> None:
    """Filter a reading in sequence; raise (dead-letter it, with the gap) after a gap."""
    seq, boot = record.get("seq"), record.get("boot")
    if seq is None or boot is None:
        return None  # a reading without numbers cannot be checked
    last = _load()
    key = f"{record['sensor_id']}/{boot}"
    previous = last.get(key, -1)
    if seq <= previous:
        return None  # delivered again (after a crash): nothing is missing
    last[key] = seq
    _save(last)
    if seq > previous + 1:
        missing = seq - previous - 1
        raise LookupError(
            f"sequence gap: {missing} reading(s) of sensor {record['sensor_id']} (boot {boot}) "
            f"never arrived, numbers {previous + 1} to {seq - 1}"
        )
    return None
