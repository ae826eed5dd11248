"""What a run does before it reads: fence the run before it, start over when asked, adopt a
checkpoint a sink kept, refuse to read everything again when the state is gone but the
output is not, record the run, find the checkpoint to resume from; and, per source, whether
its stored positions were taken in the system it reads now."""

from __future__ import annotations

import logging
from collections.abc import Callable

from tideflow.core.checkpointer import Checkpointer
from tideflow.core.checkpoints import Checkpoint, CheckpointStore
from tideflow.core.contracts import Context, ExistingOutput
from tideflow.core.faults import crash_point
from tideflow.core.graph import Node
from tideflow.core.partitions import keeps_state
from tideflow.core.plan import RunPlan
from tideflow.errors import (
    ConfigError,
    PipelineError,
    SourceMovedError,
    StateLostError,
    TideflowError,
)
from tideflow.secrets import redact

log = logging.getLogger("tideflow.engine")


def existing_output(
    sinks: list[Node], context: Callable[[Node], Context]
) -> list[tuple[Node, ExistingOutput]]:
    """What each sink already holds of this pipeline's output (see
    :meth:`Sink.committed_output`); opens nothing."""
    found = []
    for node in sinks:
        try:
            output = node.component.committed_output(context(node))
        except TideflowError:
            raise
        except Exception as exc:
            raise PipelineError(
                redact(f"sink {node.name!r} could not tell what output it holds: {exc}")
            ) from exc
        if output is not None:
            found.append((node, output))
    return found


def state_lost_message(
    name: str,
    store: CheckpointStore,
    rereading: list[Node],
    found: list[tuple[Node, ExistingOutput]],
) -> str:
    """Why a run of ``name`` refuses to read its input again, and the ways on."""
    sources = ", ".join(f"{n.name!r} ({n.type_name})" for n in rereading)
    lines = [
        f"pipeline {name!r}: the state store holds no checkpoint of it, but "
        "its output of an earlier run is there; its state was lost.",
        f"  state store: {store.describe()}",
        "  output found:",
    ]
    lines += [f"    sink {n.name!r} ({n.type_name}): {out.found}" for n, out in found]
    lines.append(
        f"A run now would read the input of source(s) {sources} again from the start "
        "and write all of it a second time. Nothing was read or written. Ways on:"
    )
    lines.append("  - restore the state store from a backup and run again;")
    clearing = [f"{n.name!r}: {out.clearing}" for n, out in found if out.clearing]
    keeping = [f"{n.name!r}" for n, out in found if not out.clearing]
    what = "; ".join(clearing) if clearing else "nothing"
    lines.append(
        "  - `tideflow run PIPELINE_FILE --from-scratch` (Python: `.run(from_scratch="
        f"True)`) starts over: it clears the output first ({what}) and the dead letters"
        + (f"; sink(s) {', '.join(keeping)} cannot take output back" if keeping else "")
        + ";"
    )
    lines.append(
        "  - `tideflow state reset --yes PIPELINE_FILE` accepts that the input is read "
        "again and written beside the output already there."
    )
    return "\n".join(lines)


def check_origin(
    node: Node, has_positions: bool, store: CheckpointStore, name: str, key: str
) -> None:
    """Refuse to resume positions taken in another system than the one ``node`` reads
    now (a log created anew, another Kafka cluster): they would skip records, or read
    some twice, without a word. Otherwise remember (under ``key``) where they are taken."""
    found = node.component.origin()
    if found is None:
        return
    identity, described = found
    stored = store.source_origin(key, node.name)
    if stored is not None and stored[0] != identity and has_positions:
        raise SourceMovedError(
            f"pipeline {name!r}, source {node.name!r}: the stored positions are "
            f"offsets in {stored[1]}, but the source now reads {described}. Resuming "
            "from them would skip records, or read some twice, without a word. Nothing "
            "was read or written. Ways on:\n"
            "  - point the source back at the system it read before;\n"
            "  - `tideflow state reset --yes PIPELINE_FILE` forgets the positions and "
            "reads the new one from its start (or `start: latest` for its end);\n"
            "  - `tideflow run PIPELINE_FILE --from-scratch` (Python: "
            "`.run(from_scratch=True)`) also clears the output first."
        )
    if stored is None or stored[0] != identity:
        store.record_source_origin(key, node.name, identity, described)


class Resumption:
    """The start of one run of ``plan`` under ``state_key``: what the store and the sinks
    hold decides whether it may resume, must start over, or must refuse."""

    def __init__(
        self,
        plan: RunPlan,
        store: CheckpointStore,
        state_key: str,
        run_id: str,
        checkpointer: Checkpointer,
        context: Callable[[Node], Context],
        main_output: bool,
        from_scratch: bool,
    ) -> None:
        self.plan = plan
        self.store = store
        self.state_key = state_key
        self.run_id = run_id
        self.checkpointer = checkpointer
        self.context = context
        self.main_output = main_output
        """Whether the run writes the pipeline's real output (not a preview, test or
        replay, which have scopes of their own)."""
        self.from_scratch = from_scratch
        self.notices: list[str] = []
        """Sentences for the person who ran it: what was cleared, what is read again."""
        self._recorded = False

    def begin(self) -> Checkpoint | None:
        """Claim the lease, :meth:`prepare`, record the run; the checkpoint to resume from
        (None: the start), with what was staged for a later one that never committed
        dropped."""
        # From here on, a run of this pipeline (or this worker id) started before is
        # fenced: its next checkpoint fails instead of overwriting ours.
        self.checkpointer.lease = self.store.claim_lease(self.state_key, self.run_id)
        self.prepare()
        self.record_start()
        checkpoint = self.store.load_checkpoint(self.state_key)
        # Output staged for a checkpoint that never committed (stored ahead of a keeper's
        # commit that did not happen) was never decided: forget it.
        dropped = self.store.drop_outbox_after(self.state_key, checkpoint.id if checkpoint else 0)
        if dropped:
            log.info("dropped %d outbox entries of a checkpoint that did not commit", dropped)
        return checkpoint

    def record_start(self) -> None:
        """Write this run into the run history (once)."""
        if not self._recorded:
            self._recorded = True
            self.store.start_run(self.run_id, self.state_key)

    def existing_output(self) -> list[tuple[Node, ExistingOutput]]:
        """What each sink already holds of this pipeline's output; opens nothing."""
        return existing_output(self.plan.sinks(), self.context)

    def prepare(self) -> None:
        """Before anything opens: start over if asked, adopt a checkpoint a sink kept, and
        refuse to read everything again when the state is gone but the output is not."""
        known = self.store.knows(self.plan.name)
        if not self.from_scratch:
            self._refuse_single_run_of_a_group()
        if self.from_scratch:
            if not self.main_output:
                raise ConfigError("from_scratch applies to a pipeline's main run only")
            self._start_over()
        keeper = self.checkpointer.keeper()
        if keeper is not None:
            self.checkpointer.adopt_stored_checkpoint(keeper, self.context(keeper))
        if (
            self.from_scratch
            or known
            or not self.main_output
            or self.store.load_checkpoint(self.state_key) is not None
        ):
            return
        rereading = [n for n in self.plan.graph.sources if n.component.replays_without_state]
        if not rereading:
            return
        found = self.existing_output()
        if any(not output.idempotent for _, output in found):
            raise StateLostError(state_lost_message(self.plan.name, self.store, rereading, found))
        for node, output in found:
            self.notices.append(
                f"the state store held nothing of this pipeline, so every input is read "
                f"from the start; sink {node.name!r} already held {output.found} and "
                "writes the same records again without duplicating them"
            )

    def _refuse_single_run_of_a_group(self) -> None:
        """A pipeline whose group workers keep its keyed state per partition is not run by
        one plain process: that run would start its steps' state empty and overwrite the
        workers' results with partial ones."""
        if self.state_key != self.plan.name or not any(
            keeps_state(node.component) for node in self.plan.graph.steps
        ):
            return
        parts = self.store.partition_states(self.plan.name)
        if parts:
            raise ConfigError(
                f"pipeline {self.plan.name!r} was run by group workers (`--workers`, "
                f"`--worker-id`), which keep its positions and step state per partition "
                f"({len(parts)} partition(s) in the state store); a single process does not "
                "read them, so its steps would start empty and overwrite the workers' results "
                "with partial ones. Run it with --workers N (or --worker-id), or start over "
                "with --from-scratch"
            )

    def _start_over(self) -> None:
        """``from_scratch``: forget the state and the dead letters, then clear what the sinks
        can clear. The run is recorded as ``clearing`` meanwhile: interrupted, it leaves the
        store knowing nothing of the pipeline, so the next run refuses again (rather than
        reading everything beside half-cleared output)."""
        self.store.start_run(self.run_id, self.state_key, "clearing")
        self._recorded = True
        self.store.reset(self.plan.name, dead_letters=True)
        # The reset forgot the leases too: this run claims its own again.
        self.checkpointer.lease = self.store.claim_lease(self.state_key, self.run_id)
        crash_point("from_scratch.mid_clear")
        for node, output in self.existing_output():
            if output.clearing is None:
                self.notices.append(
                    f"from scratch: sink {node.name!r} keeps what it holds ({output.found}): "
                    "it cannot take output back"
                )
                continue
            node.component.clear_output(self.context(node))
            self.notices.append(
                f"from scratch: sink {node.name!r} was cleared first ({output.clearing}), "
                "with the checkpoint and the dead letters"
            )
            log.info("from scratch: sink %s: %s", node.name, output.clearing)
        self.store.start_run(self.run_id, self.state_key, "running")
