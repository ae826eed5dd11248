"""``tideflow state``: show a pipeline's checkpoint and state, or reset them (saying what
the next run reads again)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tideflow.cli.common import handle_errors, out, state_dir_option, store_for
from tideflow.cli.targets import resolve
from tideflow.run.plan import engine_for


@click.group()
def state() -> None:
    """Inspect or reset a pipeline's checkpoint and state."""


@state.command("show")
@click.argument("pipeline", type=click.Path())
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the state as one JSON document.")
@handle_errors
def state_show(pipeline: str, state_dir: Path | None, as_json: bool) -> None:
    """Show the last checkpoint, step state sizes and recent runs (PIPELINE: a file, or the
    name of a pipeline that ran in this folder)."""
    target = resolve(pipeline, state_dir=state_dir)
    name = target.name
    store = store_for(target)
    if as_json:
        from tideflow.cli.listing import state_json

        try:
            click.echo(json.dumps(state_json(name, store), indent=2))
        finally:
            store.close()
        return
    checkpoint = store.load_checkpoint(name)
    if checkpoint is None:
        out.print(f"{name}: no checkpoint yet (a run starts from the beginning)")
    else:
        out.print(f"{name}: checkpoint {checkpoint.id}")
        spec = target.spec
        files = {str(s.name) for s in spec.all_sources if s.type == "file"} if spec else set()
        others = {k: v for k, v in checkpoint.positions.items() if k not in files}
        if others:
            out.print("  positions: " + json.dumps(others)[:2000], markup=False)
        for source in sorted(files & set(checkpoint.positions)):
            _show_file_position(source, checkpoint.positions[source])
        for step, value in checkpoint.step_states.items():
            out.print(f"  state of {step}: {type(value).__name__}")
    partitions = store.partition_states(name)
    if partitions:
        out.print(f"{name}: partitions of its group workers")
    for source, part, owner, epoch, position in partitions:
        out.print(
            f"  {source} {part}: next {position}, worker {owner} (claim {epoch})", markup=False
        )
    for key, sink, checkpoint_id in store.outbox_summary(name):
        owner = key.partition("#")[2] or "the pipeline"
        out.print(
            f"  outbox of sink {sink} ({owner}): checkpoint {checkpoint_id}, delivered unless "
            "a crash interrupted its commit (the next start of that run delivers what is "
            "missing)",
            markup=False,
        )
    for run_row in store.history.runs(name, limit=5):
        out.print(f"  run {run_row['id']}: {run_row['status']}", markup=False)
    store.close()


def _show_file_position(source: str, position: Any) -> None:
    """The files a file source has read: each one by name (what a re-run skips)."""
    if not isinstance(position, dict):
        return
    done, tails = position.get("done") or [], position.get("tail") or {}
    out.print(
        f"  source {source!r}: {len(done):,} file(s) read to the end"
        + (f", {len(tails):,} followed by tail" if tails else ""),
        markup=False,
    )
    for url in done:
        out.print(f"    {url}", markup=False, soft_wrap=True)
    for url, (offset, rows, *_) in tails.items():
        out.print(
            f"    {url}: up to byte {offset:,} ({rows:,} rows); lines appended after it are "
            "read next",
            markup=False,
            soft_wrap=True,
        )
    if position.get("file"):
        out.print(
            f"    reading {position['file']} from row {position.get('row', 0):,}",
            markup=False,
            soft_wrap=True,
        )


@state.command("reset")
@click.argument("pipeline", type=click.Path())
@click.option("--dead-letters", is_flag=True, help="Also delete the dead-letter ledger.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@state_dir_option
@handle_errors
def state_reset(pipeline: str, dead_letters: bool, yes: bool, state_dir: Path | None) -> None:
    """Forget the checkpoint, so the next run starts from the beginning: every input is
    read again and written beside the output already there (says which; PIPELINE: a file, or
    the name of a pipeline that ran in this folder). To clear that output as well, run with
    `--from-scratch` instead."""

    target = resolve(pipeline, state_dir=state_dir)
    if target.spec is None:
        # Known by name only (it ran from Python): no sinks to inspect.
        if not yes:
            click.confirm(f"reset the state of {target.name}?", abort=True)
        store = store_for(target)
        try:
            store.reset(target.name, dead_letters=dead_letters)
        finally:
            store.close()
        out.print(f"{target.name}: state reset")
        return
    spec = target.spec
    store = store_for(target)
    engine = engine_for(spec, target.base, state=store)
    try:
        lines = _reset_consequences(engine)
        for line in lines:
            out.print(line, markup=False, soft_wrap=True)
        if not yes:
            click.confirm(f"reset the state of {spec.name}?", abort=True)
        store.reset(spec.name, dead_letters=dead_letters)
        store.history.record_reset(engine.run_id, spec.name, "; ".join(lines))
    finally:
        store.close()
    out.print(f"{spec.name}: state reset")


def _reset_consequences(engine: Any) -> list[str]:
    """What the run after a reset reads again, and which output it writes beside."""
    lines = []
    rereading = [n for n in engine.graph.sources if n.component.replays_without_state]
    if rereading:
        names = ", ".join(f"{n.name!r} ({n.type_name})" for n in rereading)
        lines.append(f"the next run reads the input of source(s) {names} again from the start")
    others = [n for n in engine.graph.sources if not n.component.replays_without_state]
    if others:
        names = ", ".join(f"{n.name!r} ({n.type_name})" for n in others)
        lines.append(
            f"source(s) {names} go on from what their upstream remembers (committed offsets, "
            "acknowledgements), not from the start"
        )
    keepers = [n.name for n in engine.graph.sinks if n.component.keeps_checkpoint]
    if keepers:
        lines.append(
            f"sink(s) {', '.join(map(repr, keepers))} keep their own checkpoint with the "
            "data; the next run goes on from there unless it runs with --from-scratch"
        )
    if not rereading:
        return lines
    for node, output in engine.existing_output():
        clear = (
            f"; `tideflow run --from-scratch` would {output.clearing}" if output.clearing else ""
        )
        lines.append(
            f"sink {node.name!r} already holds {output.found}: what is read again is "
            f"written beside it{clear}"
        )
    return lines
