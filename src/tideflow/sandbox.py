"""Process-wide limits that a server sets in the processes that run its pipelines.

``tideflow serve`` calls :func:`refuse_sql_files` in each run process unless it was started
with ``--allow-sql-files``; the ``sql`` step and the DuckDB connection of the ``sql``
connectors then open DuckDB with ``enable_external_access = false``, so no query can read or
write a file, attach a database or install an extension. Plain ``tideflow run`` never calls
it. (The other rules of a server's policy are checked on the pipeline file itself, see
:mod:`tideflow.service.policy`.)
"""

from __future__ import annotations

from typing import Any

_limits = {"sql_files": True}


def refuse_sql_files() -> None:
    """From now on, DuckDB connections opened by this process reach no file."""
    _limits["sql_files"] = False


def duckdb_config() -> dict[str, Any]:
    """Settings for ``duckdb.connect(config=...)``: none, or external access off and the
    configuration locked (a query cannot ``SET`` it back)."""
    if _limits["sql_files"]:
        return {}
    return {"enable_external_access": False, "lock_configuration": True}
