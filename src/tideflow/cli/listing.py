"""What the CLI's ``--json`` options print: plain JSON documents for scripts.

Records are JSON objects (not JSON text inside JSON), times are ISO 8601 in UTC, and every
document has the same keys whatever it holds, so a script can rely on them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from tideflow.registry import Registration
from tideflow.secrets import redact
from tideflow.spec.models import ENVELOPES


def iso(timestamp: float | None) -> str | None:
    """A Unix time as ISO 8601 in UTC (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(float(timestamp), UTC).isoformat()


def _default(info: FieldInfo) -> Any:
    factory = info.default_factory
    value = factory() if factory is not None else info.default  # type: ignore[call-arg]
    return to_jsonable_python(value, fallback=repr)


def component_json(reg: Registration) -> dict[str, Any]:
    """One component type and its settings (envelope keys such as ``name`` included)."""
    from tideflow.cli.docs import field_rows

    types = {row[0]: row[1] for row in field_rows(reg)}
    settings = []
    fields = {**ENVELOPES[reg.kind].model_fields, **reg.config_model.model_fields}
    for name, info in fields.items():
        if name == "type":
            continue
        required = info.is_required()
        settings.append(
            {
                "name": name,
                "type": types.get(name, ""),
                "required": required,
                "default": None if required else _default(info),
                "description": info.description or "",
            }
        )
    doc = [line.strip() for line in (reg.cls.__doc__ or "").strip().splitlines()[1:]]
    return {
        "kind": reg.kind,
        "type": reg.type_name,
        "summary": reg.summary,
        "description": " ".join(line for line in doc if line),
        "settings": settings,
    }


def record_json(text: str) -> tuple[Any, bool]:
    """A dead letter's stored record as JSON and whether it was JSON: a record that never
    parsed (a broken CSV row, invalid JSON) stays its text."""
    try:
        return orjson.loads(text), True
    except orjson.JSONDecodeError:
        return text, False


def dead_letter_json(row: Any) -> dict[str, Any]:
    """One dead letter as a JSON object."""
    record, parsed = record_json(redact(row.record))
    return {
        "id": row.id,
        "pipeline": row.pipeline,
        "step": row.step,
        "reason": redact(row.reason),
        "record": record,
        "record_is_json": parsed,
        "created_at": iso(row.created_at),
        "run_id": row.run_id,
        "replayed_at": iso(row.replayed_at),
    }


def run_json(row: dict[str, Any]) -> dict[str, Any]:
    """One run of the state store's history, with ISO times."""
    return {
        "id": row["id"],
        "status": row["status"],
        "started_at": iso(row.get("started_at")),
        "ended_at": iso(row.get("ended_at")),
        "counts": row.get("counts"),
        "error": redact(row["error"]) if row.get("error") else None,
    }


def state_json(name: str, store: Any) -> dict[str, Any]:
    """What ``tideflow state show`` prints, as one document."""
    checkpoint = store.load_checkpoint(name)
    return {
        "pipeline": name,
        "checkpoint": None
        if checkpoint is None
        else {
            "id": checkpoint.id,
            "created_at": iso(checkpoint.created_at),
            "positions": to_jsonable_python(checkpoint.positions, fallback=repr),
            "step_states": {
                step: type(value).__name__ for step, value in checkpoint.step_states.items()
            },
        },
        "partitions": [
            {
                "source": source,
                "partition": part,
                "worker": owner,
                "claim": epoch,
                "position": to_jsonable_python(position, fallback=repr),
            }
            for source, part, owner, epoch, position in store.partition_states(name)
        ],
        "outboxes": [
            {"key": key, "sink": sink, "checkpoint": checkpoint_id}
            for key, sink, checkpoint_id in store.outbox_summary(name)
        ],
        "runs": [run_json(row) for row in store.history.runs(name, limit=5)],
    }
