"""Which log (embedded or a Kafka broker) each processor of a stream last ran on, so that a
checkpoint is never resumed on another one."""

from __future__ import annotations

from pathlib import Path

import orjson

from tideflow.errors import ConfigError
from tideflow.secrets import redact


def check_backend(base_dir: Path, stream: str, here: str, pipelines: dict[str, str]) -> None:
    """Refuse to resume a processor on another backend than its checkpoint's; then record
    ``here`` as the backend of every processor in ``pipelines`` (processor -> pipeline name).

    A checkpoint holds offsets of the log it was taken on; on another log they name other
    records (resuming the embedded log's offset 3 on a new Kafka topic would skip its first
    three records without a word). The backend each processor last ran on is kept beside
    the state store, in ``.tideflow/streams/<stream>.json`` under the stream's ``base_dir``.
    """
    state = base_dir / ".tideflow"
    marker = state / "streams" / f"{stream}.json"
    known: dict[str, str] = orjson.loads(marker.read_bytes()) if marker.is_file() else {}
    mismatched = [(name, known[name]) for name in pipelines if known.get(name, here) != here]
    if mismatched and (state / "state.db").is_file():
        from tideflow.state.store import StateStore

        store = StateStore(state / "state.db")
        try:
            stale = [
                (name, before)
                for name, before in mismatched
                if store.load_checkpoint(pipelines[name]) is not None
            ]
        finally:
            store.close()
        if stale:
            name, before = stale[0]
            raise ConfigError(
                redact(
                    f"processor {name!r} last ran on {before}, and its checkpoint holds "
                    f"offsets of that log, which mean other records on {here}; run it "
                    f"from another folder (state_dir), or forget the checkpoint with "
                    f"`tideflow state reset {pipelines[name]} --yes` in {base_dir} (its "
                    "input is then read from the start)"
                )
            )
    known.update({name: here for name in pipelines})
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(orjson.dumps(known, option=orjson.OPT_INDENT_2))
