"""What a run made, for notebooks: each step's output as a DataFrame, and an HTML summary.

:meth:`tideflow.Pipeline.run` returns a :class:`PipelineResult`: the counts every run reports
(:class:`~tideflow.RunResult`) plus the records each source, step and sink saw, kept in
memory up to a bound (``keep_rows`` per name), and the run's dead letters::

    result = pipeline.run()
    result.to_polars("clean")      # a step's output
    result.to_pandas("warehouse")  # what a sink was given to write
    result                         # in Jupyter: a table of counts

What is kept, and why:

- a source: the records it read (parse failures are dead letters, not output);
- a step: the records it emitted on its main output; ``"step.port"`` names another output
  (``route``, ``outliers`` with ``mode: route``);
- a sink: the records handed to it to write, after its ``when`` condition. A row the target
  then rejected is among them and also in the dead letters (the counts say how many); the
  records become visible in the target only at the checkpoint that follows, so a failed run
  may have kept records its sinks never committed.

Memory is bounded: at most ``keep_rows`` rows per name are kept (the first ones), with the
exact number of rows seen; asking for an output that was cut raises
:class:`OutputTruncatedError` rather than handing back part of it unannounced
(``partial=True`` takes the kept rows anyway). ``keep_rows=0`` keeps nothing (only counts),
``keep_rows=None`` keeps everything.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import polars as pl

from tideflow.core.observer import RunObserver
from tideflow.core.result import RunResult
from tideflow.errors import ConfigError, TideflowError, require, suggest

DEFAULT_KEEP_ROWS = 100_000
"""Rows kept per source, step and sink by default (about 8 MB for ten numeric columns)."""


DEAD_LETTER_SCHEMA = {
    "id": pl.Int64,
    "step": pl.String,
    "reason": pl.String,
    "record": pl.String,
    "created_at": pl.Float64,
}
"""Columns of :meth:`PipelineResult.dead_letters` as read from the ledger (``created_at``
in Unix seconds, shown as a UTC datetime)."""


def dead_letter_frame(rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    """Ledger rows (id, step, reason, record, created_at) as the frame results give."""
    micros = (pl.col("created_at") * 1_000_000).cast(pl.Int64)
    return pl.DataFrame(rows, schema=DEAD_LETTER_SCHEMA, orient="row").with_columns(
        pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC").alias("created_at")
    )


class OutputTruncatedError(TideflowError):
    """An output asked for was longer than the rows the run kept of it."""


@dataclass
class _Kept:
    """The first rows of one output, and how many rows it had in all."""

    frames: list[pl.DataFrame] = field(default_factory=list)
    kept: int = 0
    seen: int = 0


class OutputTap:
    """Keeps the first ``keep_rows`` rows of every output of a run (see the module doc)."""

    def __init__(self, keep_rows: int | None) -> None:
        if keep_rows is not None and keep_rows < 0:
            raise ConfigError(f"keep_rows must be 0 or more, or None for all; got {keep_rows}")
        self.keep_rows = keep_rows
        self._kept: dict[str, _Kept] = {}
        self._lock = threading.Lock()

    def observer(self, user: RunObserver | None = None) -> RunObserver:
        """A run observer that keeps outputs, calling ``user``'s hooks too."""
        base = user or RunObserver()
        return replace(
            base,
            on_output=_both(base.on_output, self._on_output),
            on_sink_input=_both(base.on_sink_input, self.keep),
        )

    def _on_output(self, node: str, port: str, frame: pl.DataFrame) -> None:
        self.keep(node if port == "out" else f"{node}.{port}", frame)

    def keep(self, name: str, frame: pl.DataFrame) -> None:
        """Count ``frame`` under ``name`` and keep the rows that fit in the bound."""
        with self._lock:
            kept = self._kept.setdefault(name, _Kept())
            kept.seen += frame.height
            room = frame.height if self.keep_rows is None else self.keep_rows - kept.kept
            if room <= 0:
                return
            # A slice would keep the whole batch's buffers alive; gather copies the rows kept.
            part = frame if frame.height <= room else frame.gather(pl.int_range(room, eager=True))
            kept.frames.append(part)
            kept.kept += part.height

    def outputs(self) -> dict[str, tuple[pl.DataFrame, int]]:
        """Each name's kept rows as one frame, with the number of rows it had in all."""
        with self._lock:
            return {
                name: (
                    pl.concat(k.frames, how="diagonal_relaxed") if k.frames else pl.DataFrame(),
                    k.seen,
                )
                for name, k in self._kept.items()
            }


def _both(first: Callable[..., None] | None, second: Callable[..., None]) -> Callable[..., None]:
    if first is None:
        return second

    def call(*args: Any) -> None:
        first(*args)
        second(*args)

    return call


@dataclass
class PipelineResult(RunResult):
    """A run's counts (:class:`~tideflow.RunResult`) plus what it kept of its outputs."""

    outputs: dict[str, tuple[pl.DataFrame, int]] = field(default_factory=dict, repr=False)
    """Kept rows and total rows seen, by source, step (``step.port``) or sink name."""
    names: list[str] = field(default_factory=list, repr=False)
    """Every source, step (``step.port`` for its other outputs) and sink, in order."""
    keep_rows: int | None = DEFAULT_KEEP_ROWS
    dead_letter_frame: pl.DataFrame | None = field(default=None, repr=False)
    """This run's dead letters from the ledger (None: they did not go to the ledger)."""
    dead_letters_cut: bool = False
    """The ledger holds more of this run's dead letters than were kept."""
    fresh: bool = False

    @classmethod
    def of(
        cls,
        result: RunResult,
        tap: OutputTap,
        names: list[str],
        dead_letters: tuple[pl.DataFrame, bool] | None,
        fresh: bool,
    ) -> PipelineResult:
        """Wrap an engine's result with the outputs ``tap`` kept."""
        base = {f.name: getattr(result, f.name) for f in fields(RunResult)}
        return cls(
            **base,
            outputs=tap.outputs(),
            names=names,
            keep_rows=tap.keep_rows,
            dead_letter_frame=dead_letters[0] if dead_letters else None,
            dead_letters_cut=dead_letters[1] if dead_letters else False,
            fresh=fresh,
        )

    def to_polars(self, name: str, partial: bool = False) -> pl.DataFrame:
        """The records of a source, step (``"step.port"`` for another output) or sink.

        Raises :class:`OutputTruncatedError` when the output had more rows than the run
        kept (``run(keep_rows=...)``), unless ``partial`` is true.
        """
        known = [*self.names, *(n for n in self.outputs if n not in self.names)]
        if name not in known:
            raise ConfigError(
                f"the pipeline has no source, step or sink {name!r}; {suggest(name, known)}"
            )
        frame, seen = self.outputs.get(name, (pl.DataFrame(), 0))
        if seen > frame.height and not partial:
            raise OutputTruncatedError(
                f"{name!r} had {seen:,} rows; the run kept the first {frame.height:,} "
                f"(keep_rows={self.keep_rows!r}). Run with keep_rows=None (or a larger "
                f"number) to keep them all, or call to_polars({name!r}, partial=True)"
            )
        return frame

    def to_pandas(self, name: str, partial: bool = False) -> Any:
        """:meth:`to_polars` as a pandas DataFrame (needs pandas installed)."""
        frame = self.to_polars(name, partial=partial)
        require("pandas", "pandas")
        return frame.to_pandas()

    def dead_letters(self, partial: bool = False) -> pl.DataFrame:
        """This run's dead letters (id, step, reason, record as JSON text, created_at), up to
        ``keep_rows``.

        Empty when the pipeline skips bad records (``on_error: skip``) or sends them to a
        sink of its own (read that sink instead).
        """
        frame = self.dead_letter_frame
        if frame is None:
            return dead_letter_frame([])
        if self.dead_letters_cut and not partial:
            raise OutputTruncatedError(
                f"the run dead-lettered more records than the {frame.height:,} kept "
                f"(keep_rows={self.keep_rows!r}); `tideflow deadletters list` shows them all, "
                "or pass partial=True"
            )
        return frame

    def _repr_html_(self) -> str:
        """The summary Jupyter shows: status, counts per step, what was kept."""
        return render_html(self)


def render_html(result: PipelineResult) -> str:
    """An HTML table of a run's counts, for notebooks."""
    esc = html.escape
    colour = {"succeeded": "#1a7f37", "failed": "#cf222e"}.get(result.status, "#9a6700")
    head = (
        f"<p><b>{esc(result.pipeline)}</b> <span style='color:{colour}'>{esc(result.status)}"
        f"</span> in {result.seconds:.2f} s, {result.checkpoints} checkpoint(s)"
        f"{' (fresh: nothing resumed, no state kept)' if result.fresh else ''}</p>"
    )
    notes = []
    if result.error:
        notes.append(f"error: {result.error}")
    notes += result.notices  # why a run read nothing, what changed since, what was cleared
    if result.status == "succeeded" and result.records_in == 0:
        notes.append("no records were read; run(fresh=True) reads every source from its start")
    for name in result.unbalanced:
        notes.append(f"counts do not balance at {name}")
    rows = []
    # Steps that hold records (windows, aggregates) count them as consumed and what they
    # emit as generated: shown when a run has any.
    present = {k for c in result.counts.values() for k in ("generated", "consumed") if c.get(k)}
    order = ("in", "generated", "out", "filtered", "consumed", "dead_lettered")
    columns = tuple(k for k in order if k not in ("generated", "consumed") or k in present)
    for name, c in result.counts.items():
        kept, seen = result.outputs.get(name, (None, 0))
        shown = (
            "" if kept is None else f"{kept.height:,}" + (" (cut)" if seen > kept.height else "")
        )
        cells = "".join(f"<td style='text-align:right'>{int(c.get(k, 0)):,}</td>" for k in columns)
        rows.append(
            f"<tr><td>{esc(name)}</td><td>{esc(str(c.get('kind', '')))}</td>{cells}"
            f"<td style='text-align:right'>{shown}</td></tr>"
        )
    header = "".join(f"<th>{h}</th>" for h in ("name", "kind", *columns, "kept rows"))
    note_html = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return (
        f"<div class='tideflow-result'>{head}"
        + (f"<ul>{note_html}</ul>" if note_html else "")
        + f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        + "<p style='font-size:smaller'>result.to_polars(name) / to_pandas(name): the kept rows"
        + "</p></div>"
    )
