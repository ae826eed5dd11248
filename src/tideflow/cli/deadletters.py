"""``tideflow deadletters``: list, show and replay the records a pipeline could not
process."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tideflow.cli.common import handle_errors, load, out, state_dir_option, store_for
from tideflow.cli.targets import resolve
from tideflow.errors import ConfigError
from tideflow.secrets import redact


@click.group()
def deadletters() -> None:
    """Browse and replay records that could not be processed."""


@deadletters.command("list")
@click.argument("pipeline", type=click.Path())
@click.option("--step", help="Only this step.")
@click.option("--reason", help="Only reasons containing this text.")
@click.option("--limit", default=50, show_default=True)
@click.option("--all", "include_replayed", is_flag=True, help="Include replayed records.")
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the counts and letters as JSON.")
@handle_errors
def deadletters_list(
    pipeline: str,
    step: str | None,
    reason: str | None,
    limit: int,
    include_replayed: bool,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """List dead letters, newest last, with a count per step and reason (PIPELINE: a file,
    or the name of a pipeline that ran in this folder, such as a Stream processor's)."""
    target = resolve(pipeline, state_dir=state_dir)
    store = store_for(target)
    if as_json:
        from tideflow.cli.listing import dead_letter_json

        try:
            summary = store.ledger.summary(target.name)
            rows = store.ledger.letters(
                target.name,
                step=step,
                reason=reason,
                include_replayed=include_replayed,
                limit=limit,
            )
        finally:
            store.close()
        document = {
            "pipeline": target.name,
            "counts": [{"step": s, "reason": redact(r), "count": n} for s, r, n in summary],
            "letters": [dead_letter_json(row) for row in rows],
        }
        click.echo(json.dumps(document, indent=2))
        return
    for step_name, why, count in store.ledger.summary(target.name):
        out.print(f"{count:>8}  {step_name}: {why}", markup=False)
    rows = store.ledger.letters(
        target.name, step=step, reason=reason, include_replayed=include_replayed, limit=limit
    )
    for row in rows:
        mark = " (replayed)" if row.replayed_at else ""
        out.print(f"#{row.id} [{row.step}] {row.reason}{mark}: {row.record[:120]}", markup=False)
    store.close()


@deadletters.command("show")
@click.argument("pipeline", type=click.Path())
@click.argument("ids", nargs=-1, type=int, required=True)
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of the letters.")
@handle_errors
def deadletters_show(
    pipeline: str, ids: tuple[int, ...], state_dir: Path | None, as_json: bool
) -> None:
    """Print dead letters in full, as JSON: the record as an object (its text when it never
    parsed), times in ISO 8601 (PIPELINE: a file, or a pipeline's name)."""
    from tideflow.cli.listing import dead_letter_json

    target = resolve(pipeline, state_dir=state_dir)
    store = store_for(target)
    try:
        rows = store.ledger.letters(target.name, ids=list(ids))
    finally:
        store.close()
    letters = [dead_letter_json(row) for row in rows]
    missing = sorted(set(ids) - {letter["id"] for letter in letters})
    if as_json:
        click.echo(json.dumps(letters, indent=2))
    else:
        for letter in letters:
            click.echo(json.dumps(letter, indent=2))
    if missing:
        raise ConfigError(
            f"{target.name} has no dead letter with id {', '.join(map(str, missing))}"
        )


@deadletters.command("replay")
@click.argument("pipeline", type=click.Path())
@click.option("--step", required=True, help="Replay the records that failed at this step.")
@click.option("--id", "ids", multiple=True, type=int, help="Only these ledger ids.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a field.")
@click.option(
    "--strict",
    is_flag=True,
    help="Refuse the replay when any letter cannot be replayed (raw text rather than a "
    "record), instead of skipping it.",
)
@handle_errors
def deadletters_replay(
    pipeline: str, step: str, ids: tuple[int, ...], sets: tuple[str, ...], strict: bool
) -> None:
    """Send dead letters through the pipeline again, from the step where they failed.

    A source's letters go through its parsing settings again (`schema_overrides`). Letters
    that hold raw text rather than a record are listed and skipped (or, with --strict, the
    replay is refused); they stay in the ledger."""
    from tideflow.observe.progress import print_summary
    from tideflow.run import runner

    spec, base = load(pipeline, sets)
    result = runner.replay(spec, base, step, list(ids), strict=strict)
    print_summary(result, out, pipeline)
