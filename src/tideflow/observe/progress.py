"""The live progress line and the end-of-run summary table."""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from tideflow.core.result import RunResult
from tideflow.core.status import RunStatus


def _rate(n: int, seconds: float) -> str:
    if seconds <= 0:
        return "-"
    rate = n / seconds
    if rate >= 1_000_000:
        return f"{rate / 1_000_000:.2f}M/s"
    if rate >= 1_000:
        return f"{rate / 1_000:.1f}k/s"
    return f"{rate:.0f}/s"


def expected_total(engine: RunStatus) -> int | None:
    """The records the run's sources will read in all, when every one of them knows."""
    total = 0
    for node in engine.graph.sources:
        expected = node.component.expected_records()
        if expected is None:
            return None
        total += expected
    return total


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_text(name: str, read: int, total: int | None, elapsed: float, checkpoints: int) -> str:
    """The progress line: records read (of the total and the share done, with the time
    left at the rate so far, when the total is known), rate, elapsed time, checkpoints."""
    records = f"{read:,} records"
    eta = ""
    if total:
        records = f"{read:,} / {total:,} records ({min(read / total, 1.0):.0%})"
        if 0 < read < total and elapsed > 0:
            eta = f"  ETA {_duration((total - read) * elapsed / read)}"
    return (
        f"  {name}: {records}  {_rate(read, elapsed)}  {elapsed:6.1f}s{eta}  "
        f"checkpoints {checkpoints}"
    )


class ProgressLine:
    """Live progress: records read, rate, elapsed, checkpoints.

    On a terminal, one line redrawn in place. Elsewhere (a service log, CI, a pipe) a plain
    line every ``log_every`` seconds, so a long-running stream shows it is alive without
    flooding the log.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        log_every: float = 30.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = True
        self.log = log
        """With a logger (JSON log lines), each line is an info record with its figures."""
        self.terminal = self.stream.isatty() and log is None
        self.log_every = log_every
        self._last_logged = 0.0  # the first line after log_every: short runs need none
        self._width = 0

    def update(self, engine: RunStatus) -> None:
        """Redraw (terminal) or log (elsewhere) the line from the engine's counts."""
        if not self.enabled:
            return
        elapsed = engine.elapsed
        if not self.terminal:
            if elapsed - self._last_logged < self.log_every:
                return
            self._last_logged = elapsed
        read = sum(c["in"] for c in engine.counts().values() if c["kind"] == "source")
        total = expected_total(engine)
        text = progress_text(engine.plan.name, read, total, elapsed, engine.checkpoints)
        if self.log is not None:
            figures = {"records": read, "seconds": round(elapsed, 3)}
            figures["checkpoints"] = engine.checkpoints
            if total is not None:
                figures["total"] = total
            self.log.info("progress:%s", text, extra={"fields": figures})
            return
        if not self.terminal:
            self.stream.write(f"progress:{text}\n")
            self.stream.flush()
            return
        self.stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self.stream.flush()

    def done(self) -> None:
        """Clear the line."""
        if self.enabled and self.terminal and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


def summary_table(result: RunResult) -> Table:
    """A table of every node's counts and throughput."""
    table = Table(
        title=f"{result.pipeline}: {result.status} in {result.seconds:.2f}s, "
        f"{result.checkpoints} checkpoint(s)",
        title_justify="left",
    )
    # "aggregated": records absorbed into a step's groups or windows (the engine's
    # `consumed`), kept apart from "filtered" (dropped by a rule) so neither hides the other.
    figures = ("in", "out", "filtered", "aggregated", "dead-lettered", "rate")
    for column in ("node", "kind", "type", *figures):
        table.add_column(column, justify="right" if column in figures else "left")
    for name, c in result.counts.items():
        extra = f" ({c['generated']:,} created)" if c.get("generated") else ""
        table.add_row(
            name,
            c["kind"],
            c["type"],
            f"{c['in']:,}",
            f"{c['out']:,}{extra}",
            f"{c['filtered']:,}",
            f"{c.get('consumed', 0):,}",
            f"{c['dead_lettered']:,}",
            _rate(c["in"], result.seconds),
        )
    return table


def print_summary(
    result: RunResult, console: Console | None = None, pipeline: str | None = None
) -> None:
    """Print the summary table and the accounting check; ``pipeline`` is the file (or name)
    the run was started with, quoted in the hints as the command to type next."""
    console = console or Console()
    console.print(summary_table(result))
    if result.unbalanced:
        console.print(
            f"[red]record accounting does not balance for: {', '.join(result.unbalanced)}[/red]"
        )
    else:
        console.print(
            "every record accounted for: in (+ created) = out + filtered + aggregated + "
            "dead-lettered at every step"
        )
    for name, c in result.counts.items():
        report = c.get("report") or {}
        # A figure per key that is a sentence (a partition's start, end and reader) is a
        # table: one line each.
        tables = {k: v for k, v in report.items() if _is_table(v)}
        figures = ", ".join(f"{k}: {_figure(v)}" for k, v in report.items() if k not in tables)
        if figures:
            console.print(f"{name}: {figures}", markup=False)
        for title, rows in tables.items():
            console.print(f"{name} {title}:", markup=False)
            for key, row in rows.items():
                console.print(f"  {key}: {row}", markup=False, soft_wrap=True)
    dead = sum(c["dead_lettered"] for c in result.counts.values())
    if dead:
        target = _shell_word(pipeline) if pipeline else "PIPELINE"
        console.print(
            f"{dead:,} record(s) dead-lettered; inspect them with "
            f"`tideflow deadletters list {target}`",
            markup=False,
            soft_wrap=True,
        )
    for notice in result.notices:
        console.print(notice, markup=False, soft_wrap=True)


def _shell_word(text: str) -> str:
    """``text`` as one word of a shell command (quoted only when it needs to be)."""
    import shlex

    return shlex.quote(text)


def _is_table(value: Any) -> bool:
    return (
        isinstance(value, dict) and bool(value) and all(isinstance(v, str) for v in value.values())
    )


def _figure(value: Any) -> str:
    if isinstance(value, dict):
        return (
            ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in value.items())
            or "none"
        )
    return f"{value:,}" if isinstance(value, int) else str(value)


def counts_json(result: RunResult) -> dict[str, Any]:
    """The run result as plain JSON."""
    return {
        "run_id": result.run_id,
        "pipeline": result.pipeline,
        "status": result.status,
        "seconds": round(result.seconds, 3),
        "checkpoints": result.checkpoints,
        "counts": result.counts,
        "unbalanced": result.unbalanced,
        "notices": result.notices,
    }
