"""What a run checks before it resumes: the output its sinks already hold, the message when
the state is gone but that output is not, and whether stored positions were taken in the
system a source reads now."""

from __future__ import annotations

from collections.abc import Callable

from tideflow.core.checkpoints import CheckpointStore
from tideflow.core.contracts import Context, ExistingOutput
from tideflow.core.graph import Node
from tideflow.errors import PipelineError, SourceMovedError, TideflowError
from tideflow.secrets import redact


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
