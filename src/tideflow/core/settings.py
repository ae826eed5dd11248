"""The settings models the engine itself reads: the strict base every component's settings
model derives from, and the checkpoint policy. They live in ``core`` so that the engine and
the retry helpers need nothing from ``spec``, which builds the pipeline model from them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    """Base for every component's settings model: frozen and strict about unknown keys."""

    # defer_build: a model's validator is built when it is first used, not when its class is
    # defined. A run validates with one model of the pipeline (the envelope, checkpoint and
    # component models built into it), so building each class's own as well cost start-up.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class CheckpointSpec(Settings):
    """When to checkpoint: whichever interval is reached first."""

    every_records: int | None = Field(
        100_000, gt=0, description="Checkpoint after this many source records."
    )
    every_seconds: float | None = Field(
        10.0, gt=0, description="Checkpoint after this many seconds."
    )
    compact_every: int = Field(
        20,
        gt=0,
        description="Incremental checkpoints: a step that can store only what changed since "
        "the last checkpoint (`aggregate`: the keys that changed) stores its whole state again "
        "at least every this many checkpoints, and sooner once the changes stored since "
        "outweigh it, so that a restore applies few deltas. 1: whole state every time.",
    )
    min_interval: float | None = Field(
        0.01,
        ge=0,
        description="Group commit: while a source's senders wait for an acknowledgement "
        "(webhook posts, unacknowledged MQTT/AMQP/Redis Streams messages), checkpoint as soon "
        "as the previous checkpoint is done and at least this many seconds after it began, "
        "instead of at `every_records`/`every_seconds`; everything that arrived meanwhile "
        "shares that checkpoint. Null: only the two thresholds.",
    )
