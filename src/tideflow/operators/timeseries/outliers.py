"""The ``outliers`` step: score each value against the previous N values of its key."""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from tideflow.core.contracts import JSON, MAIN_PORT, Context, Step, StepOutput
from tideflow.core.settings import Settings
from tideflow.operators.timeseries._common import ALL, key_frame, require_columns
from tideflow.registry import component

OUTLIERS_PORT = "outliers"
DEFAULT_THRESHOLDS = {"zscore": 3.0, "mad": 3.5, "iqr": 1.5}
V, SEQ, HIST = "__v", "__seq", "__hist"


class OutliersConfig(Settings):
    """Settings of ``outliers``."""

    column: str = Field(description="Numeric column to check.")
    keys: list[str] = Field(default_factory=list, description="One history per key.")
    method: Literal["zscore", "mad", "iqr"] = Field(
        "zscore",
        description="Over the history H (the key's previous `window` non-null values; x itself "
        "is not in H): `zscore`: (x - mean(H)) / s(H), s the sample standard deviation (n - 1 "
        "in the denominator); `mad`: 0.6745 (x - median(H)) / MAD(H), MAD(H) = median(|h - "
        "median(H)|), a median of an even count being the mean of the middle two; `iqr`: "
        "(x - Q3) / (Q3 - Q1) above Q3, (Q1 - x) / (Q3 - Q1) below Q1, 0 between, with Q1 and "
        "Q3 the 25% and 75% quantiles of H, interpolated linearly. A zero spread (s, MAD or "
        "IQR) scores x equal to the centre 0 and any other x +inf or -inf, an outlier.",
    )
    window: int = Field(50, ge=2, description="How many previous values of the key to use.")
    min_points: int = Field(
        3, ge=2, description="Fewer previous values than this: no score, not an outlier."
    )
    threshold: float | None = Field(
        None, gt=0, description="|score| above this is an outlier (default 3, mad 3.5, iqr 1.5)."
    )
    mode: Literal["flag", "drop", "route"] = Field(
        "flag",
        description="`flag`: add `is_outlier` and `score`; `drop`: remove outliers (counted "
        "as filtered); `route`: send outliers to the `outliers` output.",
    )

    @model_validator(mode="after")
    def _points(self) -> OutliersConfig:
        if self.min_points > self.window:
            raise ValueError(f"min_points ({self.min_points}) exceeds window ({self.window})")
        return self


@component("step", "outliers")
class Outliers(Step[OutliersConfig]):
    """Detect outliers per key over the last ``window`` values, across batch boundaries.

    A value is scored against the values of its key that arrived before it (arrival order);
    every non-null value, outlier or not, then joins the history. Nulls get no score and are
    never outliers. A history without spread (all equal) scores any other value +inf or -inf
    (an outlier at every threshold: it is infinitely many spreads away) and an equal value 0.
    Parquet, CSV and PostgreSQL keep the infinities; JSON has none, so NDJSON/JSON sinks write
    such a score as null (``is_outlier`` still says true).
    State: the last ``window`` values per key. With ``mode: route`` read the outliers with
    ``input: <step>.outliers``.
    """

    config_model = OutliersConfig

    @classmethod
    def ports(cls, config: Any) -> tuple[str, ...]:
        """``out``, plus ``outliers`` when routing."""
        return (MAIN_PORT, OUTLIERS_PORT) if config.mode == "route" else (MAIN_PORT,)

    def __init__(self, config: OutliersConfig) -> None:
        super().__init__(config)
        self.gkeys = list(config.keys) or [ALL]
        self.threshold = config.threshold or DEFAULT_THRESHOLDS[config.method]
        self.tail: pl.DataFrame | None = None

    def open(self, ctx: Context, state: JSON | None) -> None:
        """Restore the per-key history."""
        if state:
            self.tail = state["tail"]

    def snapshot(self) -> JSON:
        """The last ``window`` values per key."""
        return {"tail": self.tail}

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Score the batch, then flag, drop or route the outliers."""
        require_columns(batch, [*self.config.keys, self.config.column], "outliers")
        frame, _ = key_frame(batch.with_row_index("__row"), self.config.keys)
        scores = self._score(frame)
        scored = batch.with_columns(
            scores.get_column("score"), scores.get_column("is_outlier").fill_null(False)
        )
        mask = scored.get_column("is_outlier")
        if self.config.mode == "flag":
            return StepOutput.of(scored)
        normal = batch.filter(~mask)
        if self.config.mode == "drop":
            return StepOutput.of(normal, filtered=batch.height - normal.height)
        return StepOutput(outputs={MAIN_PORT: normal, OUTLIERS_PORT: batch.filter(mask)})

    def _score(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``score`` and ``is_outlier`` for every row of ``frame``, in its order."""
        n = self.config.window
        values = frame.filter(pl.col(self.config.column).is_not_null()).select(
            *self.gkeys, pl.col(self.config.column).cast(pl.Float64).alias(V), "__row"
        )
        both = values
        if self.tail is not None and self.tail.height:
            prior = self.tail.with_columns(pl.lit(None, pl.UInt32).alias("__row"))
            both = pl.concat([prior.select(values.columns), values], how="vertical_relaxed")
        # Per-key arrival number: the history of a row is the `window` rows before it.
        both = both.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over(self.gkeys).alias(SEQ))
        both = both.sort([*self.gkeys, SEQ], nulls_last=True)
        if self.config.method == "mad":
            history = both.rolling(
                index_column=SEQ, period=f"{n}i", closed="left", group_by=self.gkeys
            ).agg(pl.col(V).alias(HIST))
            both = both.join(
                history, on=[*self.gkeys, SEQ], how="left", nulls_equal=True, maintain_order="left"
            )
        enough = pl.min_horizontal(pl.col(SEQ), n) >= self.config.min_points
        # Statistics first, as columns: the score refers to each several times.
        both = both.with_columns(**self._statistics())
        rows = both.with_columns(pl.when(enough).then(self._method_score()).alias("score"))
        rows = rows.filter(pl.col("__row").is_not_null()).select(
            "__row", "score", (pl.col("score").abs() > self.threshold).alias("is_outlier")
        )
        self.tail = both.filter(pl.col(SEQ) > pl.col(SEQ).max().over(self.gkeys) - n).select(
            *self.gkeys, V
        )
        return frame.select("__row").join(rows, on="__row", how="left", maintain_order="left")

    def _statistics(self) -> dict[str, pl.Expr]:
        """Location (``__c``) and spread statistics of each row's history. Rows are sorted by
        key and arrival, so rolling expressions over the shifted values see exactly the
        previous ``window`` values of the key."""
        n = self.config.window
        previous = pl.col(V).shift(1)
        if self.config.method == "zscore":
            return {
                "__c": previous.rolling_mean(n, min_samples=1).over(self.gkeys),
                "__s": previous.rolling_std(n, min_samples=2).over(self.gkeys),
            }
        if self.config.method == "iqr":
            return {
                name: previous.rolling_quantile(q, "linear", window_size=n, min_samples=1).over(
                    self.gkeys
                )
                for name, q in (("__q1", 0.25), ("__q3", 0.75))
            }
        # MAD has no rolling form: `_score` built each row's history list (a rolling
        # group_by); median and median absolute deviation are list operations on it.
        centre = pl.col(HIST).list.median()
        return {
            "__c": centre,
            "__s": (pl.col(HIST) - centre).list.eval(pl.element().abs()).list.median(),
        }

    def _method_score(self) -> pl.Expr:
        x = pl.col(V)
        if self.config.method == "zscore":
            return _ratio(x - pl.col("__c"), pl.col("__s"))
        if self.config.method == "iqr":
            q1, q3 = pl.col("__q1"), pl.col("__q3")
            outside = pl.when(x > q3).then(x - q3).when(x < q1).then(q1 - x).otherwise(0.0)
            return _ratio(outside, q3 - q1)
        return _ratio(0.6745 * (x - pl.col("__c")), pl.col("__s"))


def _ratio(distance: pl.Expr, spread: pl.Expr) -> pl.Expr:
    """distance / spread; with no spread a distance is infinitely far, no distance is 0."""
    return (
        pl.when(spread > 0)
        .then(distance / spread)
        .when(distance == 0)
        .then(0.0)
        .otherwise(pl.lit(float("inf")) * distance.sign())
    )
