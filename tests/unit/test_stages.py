"""How group workers cut a pipeline into stages joined by repartition topics (issue 15 item 1):
where the cuts go, what each stage reads and writes, and what is refused. The runs themselves
are in tests/scaleout/test_repartition.py."""

from __future__ import annotations

from typing import Any

import pytest

from tideflow.errors import ConfigError
from tideflow.run.stages import plan_stages
from tideflow.spec.loader import load_pipeline_text
from tideflow.spec.models import PipelineSpec

SOURCE = "source: {type: topic, topic: rooms, group: g, broker: embedded, stop_at_end: true"


def spec(body: str, declared: str = "") -> PipelineSpec:
    return load_pipeline_text(f"name: p\n{SOURCE}{declared}}}\n{body}")


def nodes(stage: PipelineSpec) -> dict[str, list[tuple[str, str]]]:
    """Each kind's (name, type) in a stage."""
    return {
        "sources": [(s.name or "", s.type) for s in stage.all_sources],
        "steps": [(s.name or "", s.type) for s in stage.steps],
        "sinks": [(s.name or "", s.type) for s in stage.all_sinks],
    }


def settings(node: Any) -> dict[str, Any]:
    return dict(node.model_dump(exclude_none=True))


ROOM_TOTALS = """
steps:
  - {type: cast, columns: {ts: datetime_utc}}
  - {type: aggregate, keys: [room], aggregations: {n: count()}}
sink: {type: stdout}
"""


def test_a_step_keyed_by_what_the_topic_is_not_partitioned_by_starts_a_stage() -> None:
    first, second = (s.spec for s in plan_stages(spec(ROOM_TOTALS), partitions=lambda _: 6))
    assert first.name == "p" and second.name == "p~aggregate"
    assert nodes(first) == {
        "sources": [("topic", "topic")],
        "steps": [("cast", "cast")],
        "sinks": [("aggregate-repartition", "repartition")],
    }
    write = settings(first.all_sinks[0])
    assert write["topic"] == "p-g-aggregate-repartition"
    assert write["by"] == ["room"] and write["partitions"] == 6 and write["input"] == ["cast"]
    assert nodes(second) == {
        "sources": [("aggregate-repartitioned", "repartition")],
        "steps": [("aggregate", "aggregate")],
        "sinks": [("stdout", "stdout")],
    }
    read = settings(second.all_sources[0])
    assert read["topic"] == write["topic"] and read["by"] == ["room"]
    assert read["group"] == "g-aggregate-repartition"
    assert read["stop_at_end"] is True  # a bounded job's stages are bounded too


def test_a_declared_partitioning_by_the_keys_needs_no_stage() -> None:
    stages = plan_stages(spec(ROOM_TOTALS, ", partitioned_by: {column: room}"))
    assert len(stages) == 1 and stages[0].spec.name == "p"
    assert [s.type for s in stages[0].spec.all_sinks] == ["stdout"]


def test_a_declaration_by_another_column_still_repartitions() -> None:
    stages = plan_stages(spec(ROOM_TOTALS, ", partitioned_by: {column: floor}"))
    assert [s.spec.name for s in stages] == ["p", "p~aggregate"]


def test_branches_keyed_differently_each_get_a_stage_and_later_keys_cut_again() -> None:
    body = """
steps:
  - {type: aggregate, name: per_room, keys: [room], aggregations: {n: count()}}
  - {type: aggregate, name: per_floor, input: topic, keys: [floor],
     aggregations: {n: count()}}
  - {type: aggregate, name: rooms_per_floor, input: per_room, keys: [floor],
     aggregations: {rooms: count()}}
sinks:
  - {type: stdout, name: rooms, input: per_room}
  - {type: stdout, name: floors, input: per_floor}
  - {type: stdout, name: both, input: rooms_per_floor}
"""
    stages = [s.spec for s in plan_stages(spec(body))]
    assert [s.name for s in stages] == ["p", "p~per_room", "p~per_floor", "p~rooms_per_floor"]
    assert nodes(stages[0])["sinks"] == [
        ("per_room-repartition", "repartition"),
        ("per_floor-repartition", "repartition"),
    ]
    assert nodes(stages[1])["steps"] == [("per_room", "aggregate")]
    # rooms_per_floor reads per_room's output, so per_room's stage writes its repartition.
    assert nodes(stages[1])["sinks"] == [
        ("rooms_per_floor-repartition", "repartition"),
        ("rooms", "stdout"),
    ]
    assert nodes(stages[2])["sinks"] == [("floors", "stdout")]
    assert nodes(stages[3])["steps"] == [("rooms_per_floor", "aggregate")]
    assert settings(stages[3].all_sources[0])["by"] == ["floor"]


def test_state_over_all_records_goes_through_one_partition() -> None:
    body = "steps:\n  - {type: aggregate, keys: [], aggregations: {n: count()}}\n"
    body += "sink: {type: stdout}\n"
    first, second = (s.spec for s in plan_stages(spec(body), partitions=lambda _: 6))
    assert settings(first.all_sinks[-1])["partitions"] == 1
    assert settings(second.all_sources[0])["by"] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            """
steps:
  - {type: aggregate, keys: [room], aggregations: {n: count()}}
sink: {type: stdout, input: [topic, aggregate]}
""",
            "'stdout' merges records from before and after a repartition",
        ),
        (
            """
steps:
  - {type: cast, name: aggregate-repartition, columns: {n: int}}
  - {type: aggregate, keys: [room], aggregations: {n: count()}}
sink: {type: stdout}
""",
            "are the ends of the repartition",
        ),
    ],
)
def test_what_cannot_be_cut_is_refused_with_the_way_on(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_stages(spec(body))


def test_steps_without_state_stay_in_one_stage() -> None:
    body = "steps:\n  - {type: filter, expr: n > 1}\nsink: {type: stdout}\n"
    (only,) = plan_stages(spec(body))
    assert only.spec.name == "p" and only.internal == ()
