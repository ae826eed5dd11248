"""The numpy line scanner and JSON-lines parsing shared by the NDJSON and JSON readers:
where lines start and end, which are blank, and which lines are usable records."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import orjson
import polars as pl


def nesting_conflict(before: pl.Schema, now: pl.Schema) -> str | None:
    """A field that is an object or list in one record and a scalar in another.

    Polars would "relax" such a pair by wrapping the scalar into the struct, silently changing
    the value; numbers and text mixing is fine (it becomes text, as when Polars parses both).
    """
    for name, dtype in now.items():
        old = before.get(name)
        if old is None or pl.Null in (old, dtype):
            continue
        if old.is_nested() != dtype.is_nested():
            return f"field {name!r} is {dtype} here but {old} before"
    return None


def frame_from_json_lines(
    lines: list[bytes], label: Callable[[int], str]
) -> tuple[pl.DataFrame, list[int], list[str]]:
    """Parse JSON objects (one per line, all valid JSON) into one frame.

    Polars parses them together; if it cannot (a field is an object in one record and a number
    in another), records are parsed one by one and those whose types conflict with the records
    before them are returned as failed (their indices, with reasons).
    """
    if not lines:
        return pl.DataFrame(), [], []
    try:
        return pl.read_ndjson(io.BytesIO(b"\n".join(lines)), infer_schema_length=None), [], []
    except (pl.exceptions.PolarsError, ValueError):
        pass
    frames: list[pl.DataFrame] = []
    seen = pl.DataFrame()
    failed: list[int] = []
    reasons: list[str] = []
    for i, line in enumerate(lines):  # fallback only
        try:
            frame = pl.read_ndjson(io.BytesIO(line))
            conflict = nesting_conflict(seen.schema, frame.schema)
            if conflict is None:
                seen = pl.concat([seen, frame.clear()], how="diagonal_relaxed")
        except (pl.exceptions.PolarsError, ValueError) as exc:
            conflict = str(exc)
        if conflict is not None:
            failed.append(i)
            reasons.append(f"{label(i)}: field types conflict with earlier records: {conflict}")
            continue
        frames.append(frame)
    data = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    return data, failed, reasons


def _judge_json_line(line: bytes) -> str | None:
    """Why ``line`` is not a record: None for a JSON object, "" for a blank line, else the
    reason."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return "" if not line.strip() else f"invalid JSON: {exc}"
    return None if type(value) is dict else "expected a JSON object"


_WHITESPACE = np.frombuffer(b" \t\r\n\x0b\x0c", dtype=np.uint8)
"""The bytes ``bytes.strip`` removes."""


def line_bounds(
    raw: np.ndarray, count: int, newlines: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Where each of the first ``count`` lines of ``raw`` starts, and ends (exclusive, before
    its newline); ``newlines``, where the newlines of ``raw`` are, saves looking for them."""
    ends = (np.flatnonzero(raw == 10) if newlines is None else newlines)[:count]
    if len(ends) < count:  # a last line without a newline
        ends = np.append(ends, len(raw))
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    return starts, ends


def _first_bytes(raw: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The first byte of each line (of an empty line: the next one; a chunk is never empty)."""
    first: np.ndarray = raw[np.minimum(starts, len(raw) - 1)]
    return first


def blank_lines(raw: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """True for each line holding only whitespace (Polars skips those). Only lines starting
    with whitespace are looked at one by one."""
    blank = ends <= starts
    for i in np.flatnonzero(~blank & np.isin(_first_bytes(raw, starts), _WHITESPACE)):
        blank[i] = not raw[starts[i] : ends[i]].tobytes().strip()
    return blank


def parse_json_lines(
    chunk: bytes, count: int, first: int, url: str, parse: Callable[[bytes, int], pl.DataFrame]
) -> tuple[pl.DataFrame, np.ndarray, list[str], list[str]]:
    """Locate bad lines (the fallback when a whole chunk does not parse).

    ``first`` is the line number of the chunk's first line; ``parse(lines, count)`` reads
    whole lines (raising PolarsError or ValueError when it cannot). Returns the good records as a
    frame, the index of the line of each, and the text and reason of each bad line.
    """
    raw = np.frombuffer(chunk, dtype=np.uint8)
    starts, ends = line_bounds(raw, count)
    # A cheap first guess, over all lines at once: an object line starts with "{" and ends
    # with "}" (before a CR). Only the other lines are looked at one by one: blank, bad, or
    # an object after all (with spaces around it).
    last = raw[np.maximum(ends - 1, 0)]
    before_cr = raw[np.maximum(ends - 2, 0)]
    last = np.where((last == 13) & (ends - starts >= 2), before_cr, last)
    good = (ends > starts) & (_first_bytes(raw, starts) == ord("{")) & (last == ord("}"))
    bad: dict[int, str] = {}  # line index -> reason
    for i in np.flatnonzero(~good):
        why = _judge_json_line(raw[starts[i] : ends[i]].tobytes())
        good[i] = why is None
        if why:
            bad[int(i)] = why
    failed: list[int] = []
    more_reasons: list[str] = []
    good_at = np.flatnonzero(good)
    try:
        # The good lines with their newlines, cut out of the chunk without a copy per line.
        span = np.diff(np.append(starts, len(raw)))
        data = parse(raw[np.repeat(good, span)].tobytes(), len(good_at))
    except (pl.exceptions.PolarsError, ValueError):
        # A line that looked right is not JSON after all: judge every line.
        lines = [raw[starts[i] : ends[i]].tobytes() for i in range(count)]
        judged = [_judge_json_line(line) for line in lines]
        bad = {i: why for i, why in enumerate(judged) if why}
        good_at = np.array([i for i, why in enumerate(judged) if why is None], dtype=np.int64)
        data, failed, more_reasons = frame_from_json_lines(
            [lines[i] for i in good_at], lambda i: f"{url}: line {first + int(good_at[i])}"
        )
    records: list[str] = []
    reasons: list[str] = []
    for at, why in sorted(bad.items()):
        line = raw[starts[at] : ends[at]].tobytes()
        records.append(line.decode("utf-8", "replace").rstrip("\r"))
        reasons.append(f"{url}: line {first + at}: {why}")
    records += [
        raw[starts[good_at[i]] : ends[good_at[i]]].tobytes().decode("utf-8", "replace")
        for i in failed
    ]
    kept = np.delete(good_at, failed) if failed else good_at
    return data, kept, records, reasons + more_reasons
