"""The live progress line and the end-of-run summary table."""

from __future__ import annotations

import sys
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from tideflow.core.engine import Engine, RunResult


def _rate(n: int, seconds: float) -> str:
    if seconds <= 0:
        return "-"
    rate = n / seconds
    if rate >= 1_000_000:
        return f"{rate / 1_000_000:.2f}M/s"
    if rate >= 1_000:
        return f"{rate / 1_000:.1f}k/s"
    return f"{rate:.0f}/s"


class ProgressLine:
    """Live progress: records read, rate, elapsed, checkpoints.

    On a terminal, one line redrawn in place. Elsewhere (a service log, CI, a pipe) a plain
    line every ``log_every`` seconds, so a long-running stream shows it is alive without
    flooding the log.
    """

    def __init__(self, stream: IO[str] | None = None, log_every: float = 30.0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = True
        self.terminal = self.stream.isatty()
        self.log_every = log_every
        self._last_logged = 0.0  # the first line after log_every: short runs need none
        self._width = 0

    def update(self, engine: Engine) -> None:
        """Redraw (terminal) or log (elsewhere) the line from the engine's counts."""
        if not self.enabled:
            return
        elapsed = engine.elapsed
        if not self.terminal:
            if elapsed - self._last_logged < self.log_every:
                return
            self._last_logged = elapsed
        read = sum(c["in"] for c in engine.counts().values() if c["kind"] == "source")
        text = (
            f"  {engine.spec.name}: {read:,} records  {_rate(read, elapsed)}  "
            f"{elapsed:6.1f}s  checkpoints {engine.checkpoints}"
        )
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
    for column in ("node", "kind", "type", "in", "out", "filtered", "dead-lettered", "rate"):
        table.add_column(
            column,
            justify="right"
            if column in ("in", "out", "filtered", "dead-lettered", "rate")
            else "left",
        )
    for name, c in result.counts.items():
        extra = ""
        if c.get("consumed"):
            extra = f" (+{c['consumed']:,} aggregated)"
        if c.get("generated"):
            extra = f" ({c['generated']:,} created)"
        table.add_row(
            name,
            c["kind"],
            c["type"],
            f"{c['in']:,}",
            f"{c['out']:,}{extra}",
            f"{c['filtered']:,}",
            f"{c['dead_lettered']:,}",
            _rate(c["in"], result.seconds),
        )
    return table


def print_summary(result: RunResult, console: Console | None = None) -> None:
    """Print the summary table and the accounting check."""
    console = console or Console()
    console.print(summary_table(result))
    if result.unbalanced:
        console.print(
            f"[red]record accounting does not balance for: {', '.join(result.unbalanced)}[/red]"
        )
    else:
        console.print(
            "every record accounted for: in = out + filtered + dead-lettered at every step"
        )
    for name, c in result.counts.items():
        if c.get("report"):
            figures = ", ".join(f"{k}: {_figure(v)}" for k, v in c["report"].items())
            console.print(f"{name}: {figures}", markup=False)
    dead = sum(c["dead_lettered"] for c in result.counts.values())
    if dead:
        console.print(
            f"{dead:,} record(s) dead-lettered; inspect them with "
            f"`tideflow deadletters list PIPELINE`"
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
    }
