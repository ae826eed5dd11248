"""Every registered component has a Python form without hand-written glue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

import tideflow as tf
from tideflow.core.contracts import Step, StepOutput
from tideflow.core.settings import Settings
from tideflow.registry import default_registry
from tideflow.testing import collected


class _NegateConfig(Settings):
    """Settings of the test-only ``negate`` step."""

    column: str


class _Negate(Step):
    """Negate one column (registered by this test only)."""

    config_model = _NegateConfig

    def process(self, batch: pl.DataFrame) -> StepOutput:
        return StepOutput.of(batch.with_columns(-pl.col(self.config.column)))


@pytest.fixture
def negate_step() -> Iterator[None]:
    default_registry.register("step", "negate")(_Negate)
    yield
    default_registry._items["step"].pop("negate")
    default_registry.version += 1


def test_a_plugin_step_is_a_pipeline_method(negate_step: None, tmp_path: Path) -> None:
    result = (
        tf.Pipeline("negated")
        .source(tf.generate(shape="sequence", count=5))
        .negate(column="id", name="neg")
        .sink(tf.collect("negated"))
        .run(tmp_path)
    )
    assert result.status == "succeeded"
    assert collected("negated")["id"].to_list() == [0, -1, -2, -3, -4]
    assert tf.Pipeline("x").negate.__doc__ == "Negate one column (registered by this test only)."


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no step type"):
        tf.Pipeline("x").negate_nothing  # noqa: B018
    with pytest.raises(AttributeError):
        tf.no_such_connector  # noqa: B018
