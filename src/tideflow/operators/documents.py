"""Document-shaped data: ``flatten`` turns nested objects into prefixed columns.

Nested objects (Polars structs) become one column per leaf field, named by the path joined
with ``separator`` (``address.city`` -> ``address_city``); lists named in ``explode`` become
one row per element. JSON text can be parsed first. Everything works on the schema, level by
level, with Polars expressions: the cost does not grow with a Python loop over rows.
"""

from __future__ import annotations

import io

import polars as pl
from pydantic import Field

from tideflow.core.contracts import Step, StepOutput
from tideflow.core.settings import Settings
from tideflow.errors import PipelineError, RecordError
from tideflow.registry import component


class FlattenConfig(Settings):
    """Settings of ``flatten``."""

    columns: list[str] | None = Field(
        None, description="Object columns to flatten; every object column if unset."
    )
    separator: str = Field("_", min_length=1, description="Joins a parent and a field name.")
    max_depth: int | None = Field(
        None, ge=1, description="Levels to flatten; deeper objects stay nested (as JSON in SQL)."
    )
    explode: list[str] = Field(
        default_factory=list,
        description="List columns to turn into one row per element (an empty or null list "
        "keeps its row, with a null element).",
    )
    parse_json: list[str] = Field(
        default_factory=list, description="Text columns holding JSON to parse before flattening."
    )


def _json_dtype(column: pl.Series) -> pl.DataType:
    """The type that holds every JSON value of a text column, inferred from all of them."""
    wrapped = ('{"v":' + column.drop_nulls() + "}").str.join("\n")
    text = wrapped.item() if wrapped.len() else ""
    if not text:
        return pl.String()
    try:
        return pl.read_ndjson(io.BytesIO(text.encode()), infer_schema_length=None).schema["v"]
    except pl.exceptions.ComputeError as exc:
        raise RecordError(
            f"flatten: column {column.name!r} holds text that is not JSON: {exc}"
        ) from exc


@component("step", "flatten")
class Flatten(Step[FlattenConfig]):
    """Nested objects to prefixed columns; chosen lists to rows."""

    config_model = FlattenConfig

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Flatten one batch."""
        cfg = self.config
        frame = batch
        if cfg.parse_json:
            frame = frame.with_columns(
                pl.col(c).str.json_decode(_json_dtype(frame.get_column(c))) for c in cfg.parse_json
            )
        for name in cfg.explode:
            if name not in frame.columns:
                raise PipelineError(f"flatten: cannot explode {name!r}: not in the batch")
            frame = frame.explode(name, empty_as_null=True, keep_nulls=True)
        chosen = set(cfg.columns) if cfg.columns is not None else None
        depth = 0
        while cfg.max_depth is None or depth < cfg.max_depth:
            structs = [
                c
                for c, t in frame.schema.items()
                if isinstance(t, pl.Struct) and (chosen is None or c in chosen)
            ]
            if not structs:
                break
            frame = self._unnest(frame, structs)
            if chosen is not None:
                # Children of a chosen column are flattened too.
                chosen |= {c for c in frame.columns if any(c.startswith(s) for s in structs)}
            depth += 1
        return StepOutput.reshaped(frame, batch.height)

    def _unnest(self, frame: pl.DataFrame, structs: list[str]) -> pl.DataFrame:
        sep = self.config.separator
        exprs: list[pl.Expr] = []
        for name, dtype in frame.schema.items():
            if name not in structs:
                exprs.append(pl.col(name))
                continue
            assert isinstance(dtype, pl.Struct)
            exprs += [
                pl.col(name).struct.field(f.name).alias(f"{name}{sep}{f.name}")
                for f in dtype.fields
            ]
        names = [e.meta.output_name() for e in exprs]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise PipelineError(
                f"flatten: the flattened names {clashes} clash with existing columns; "
                "choose another `separator` or rename first"
            )
        return frame.select(exprs)
