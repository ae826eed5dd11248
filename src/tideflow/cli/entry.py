"""The entry point of the ``tideflow`` script and of ``python -m tideflow``.

It imports the CLI with the garbage collector paused. Starting up imports Polars, pydantic,
click and rich and defines their classes: a few hundred thousand objects, all of them live for
the whole process. The collector scanned them again and again while they were being created
(more than a tenth of a short run's time, with nothing to free). Once the imports are done,
``gc.freeze`` moves those objects out of the collector's sight and it is resumed, so a
pipeline's own garbage is collected as always.
"""

from __future__ import annotations

import gc


def main(prog_name: str | None = None) -> None:
    """Run the ``tideflow`` command (``prog_name`` as shown in help and errors)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        from tideflow.cli.main import cli
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    cli(prog_name=prog_name)
