"""``cast`` of text to times, checked against Python's own ISO 8601 parser.

Text is parsed as ISO 8601 with an offset first (the fast way) and again the general way
(Polars' format inference) where that fails; whichever way a value took, the result must be
the instant ``datetime.fromisoformat`` reads, and a value neither way reads is dead-lettered
with its reason.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import orjson
import polars as pl
import pytest

from tideflow.core.contracts import MAIN_PORT
from tideflow.operators.basic import Cast, CastConfig


def iso_texts(seed: int, n: int, offsets: bool) -> list[str]:
    """``n`` ISO 8601 times in the forms event sources write: ``T`` or a space, 0-6
    fractional digits, and (with ``offsets``) ``Z`` or a signed ``hh:mm`` offset."""
    rng = random.Random(seed)
    start = datetime(2020, 1, 1)
    texts = []
    for _ in range(n):
        moment = start + timedelta(microseconds=rng.randrange(10**15))
        text = moment.strftime("%Y-%m-%d") + rng.choice("T ") + moment.strftime("%H:%M:%S")
        digits = rng.choice([0, 1, 3, 6])
        if digits:
            text += "." + f"{moment.microsecond:06d}"[:digits]
        if offsets:
            minutes = rng.choice([0, 60, -300, 330, 845, -570])
            if minutes == 0 and rng.random() < 0.5:
                text += "Z"
            else:
                sign = "+" if minutes >= 0 else "-"
                text += f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        texts.append(text)
    return texts


def oracle(text: str) -> datetime:
    """The UTC instant of ``text`` as a naive datetime (naive text is taken as UTC)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def cast(texts: list[str | None], target: str) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    result = Cast(CastConfig(columns={"ts": target})).process(pl.DataFrame({"ts": texts}))
    return result.outputs[MAIN_PORT], result.dead


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", ["datetime_utc", "datetime"])
def test_times_with_offsets_are_the_instants_python_reads(seed: int, target: str) -> None:
    texts = iso_texts(seed, 2_000, offsets=True)
    out, dead = cast(texts, target)
    assert dead is None
    got = out["ts"].dt.replace_time_zone(None) if target == "datetime_utc" else out["ts"]
    assert got.to_list() == [oracle(t) for t in texts]


@pytest.mark.parametrize("target", ["datetime_utc", "datetime"])
def test_times_without_offsets_take_the_general_way_and_read_as_utc(target: str) -> None:
    texts = [t.replace(" ", "T") for t in iso_texts(7, 1_000, offsets=False)]
    out, dead = cast(texts, target)
    assert dead is None
    got = out["ts"].dt.replace_time_zone(None) if target == "datetime_utc" else out["ts"]
    assert got.to_list() == [oracle(t) for t in texts]


def test_a_time_zone_target_shows_the_same_instant_there() -> None:
    texts = iso_texts(11, 500, offsets=True)
    out, dead = cast(texts, "datetime_utc")
    assert dead is None
    local = out["ts"].dt.convert_time_zone("Asia/Kolkata").to_list()
    kolkata = timezone(timedelta(hours=5, minutes=30))
    assert [t.astimezone(kolkata).replace(tzinfo=None) for t in local] == [
        oracle(t) + timedelta(hours=5, minutes=30) for t in texts
    ]


def test_values_neither_way_reads_are_dead_lettered_and_nulls_pass() -> None:
    texts: list[str | None] = iso_texts(3, 300, offsets=True)
    bad = {17: "not a time", 120: "2024-13-45T00:00:00Z", 250: "yesterday"}
    for row, text in bad.items():
        texts[row] = text
    texts[40] = None
    out, dead = cast(texts, "datetime_utc")
    assert dead is not None
    assert sorted(dead["reason"].to_list()) == sorted(
        f"cannot cast ts value {text} to {pl.Datetime('us', 'UTC')}" for text in bad.values()
    )
    assert [orjson.loads(r)["ts"] for r in dead["record"]] == list(bad.values())
    kept = [t for i, t in enumerate(texts) if i not in bad]
    assert out.height + dead.height == len(texts)
    assert out["ts"].dt.replace_time_zone(None).to_list() == [
        None if t is None else oracle(t) for t in kept
    ]


def test_non_strict_turns_what_neither_way_reads_into_null() -> None:
    texts = ["2024-05-01T10:00:00+02:00", "garbage", "2024-05-01T10:00:00Z"]
    result = Cast(CastConfig(columns={"ts": "datetime_utc"}, strict=False)).process(
        pl.DataFrame({"ts": texts, "n": [1, 2, 3]})
    )
    out = result.outputs[MAIN_PORT]
    assert out.columns == ["ts", "n"]
    assert out["ts"].dt.replace_time_zone(None).to_list() == [
        datetime(2024, 5, 1, 8),
        None,
        datetime(2024, 5, 1, 10),
    ]


@pytest.mark.parametrize("target", ["datetime_utc", "datetime"])
def test_a_batch_opening_without_offset_still_reads_the_times_with_one(target: str) -> None:
    naive = iso_texts(5, 200, offsets=False)
    aware = iso_texts(6, 200, offsets=True)
    texts = [t for pair in zip(naive, aware, strict=True) for t in pair]
    out, dead = cast(texts, target)
    assert dead is None
    got = out["ts"].dt.replace_time_zone(None) if target == "datetime_utc" else out["ts"]
    assert got.to_list() == [oracle(t) for t in texts]
