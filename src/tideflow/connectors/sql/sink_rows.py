"""The ``sql`` sink's write path: a batch into the target table, rejected rows set apart.

Every batch goes to a staging relation by the database's bulk path, then into the target
with one ``INSERT ... SELECT`` (an upsert merges on the key). When the database rejects some
rows, the rejected ones are searched for inside savepoints: good rows load, each rejected
row goes to the dead-letter ledger with the database's message. PostgreSQL searches in the
server, learning the row a failed statement stopped at from a marker
(``BulkLoader.locate_rejected``); the other databases bisect over the (then indexed) staging row
numbers, O(bad rows x log(batch)) statements instead of one per row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

from tideflow.connectors.sql.dialects.base import ROW, Dialect, Insert, Rejected
from tideflow.connectors.sql.schema import TablePlan
from tideflow.connectors.sql.sink_settings import SqlSinkConfig
from tideflow.core.contracts import dead_letters, empty_dead_letters
from tideflow.secrets import redact


class RowLoader:
    """The loading of one batch into the prepared target table, mixed into
    :class:`~tideflow.connectors.sql.sink.SqlSink` (which owns the connection, the
    transaction and the table plan)."""

    config: SqlSinkConfig
    dialect: Dialect | None
    conn: Any
    _table: TablePlan | None
    _unindexed: str | None

    if TYPE_CHECKING:  # provided by SqlSink

        def _target_name(self) -> str: ...

        def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...

        def _commit(self) -> None: ...

        def _rollback(self) -> None: ...

    def _load(self, batch: pl.DataFrame) -> pl.DataFrame:
        assert self.dialect is not None and self._table is not None
        d, table = self.dialect, self._table
        staged = batch.with_columns(pl.int_range(batch.height, dtype=pl.Int64).alias(ROW))
        staging = d.loader.stage(self.conn, staged, table.kinds)
        cols = ", ".join(d.grammar.quote(c) for c in batch.columns)
        select = ", ".join(
            d.loader.select_expr(c, table.sql_types[c], table.kinds[c]) for c in batch.columns
        )
        upsert = self.config.mode == "upsert"
        merge = (
            d.grammar.upsert_clause(
                self.config.key, batch.columns, self._target_name(), table.sql_types
            )
            if upsert
            else ""
        )
        head = (
            f"INSERT INTO {d.grammar.table(self._target_name(), self.config.db_schema)} ({cols}) "  # nosec B608 - identifiers quoted, values bound
            f"SELECT {select} FROM {d.grammar.quote(staging)} s WHERE "
        )

        def insert(rows: str) -> str:
            """The insert of the staging rows ``s`` that ``rows`` chooses."""
            return head + rows + merge

        self._unindexed = staging
        try:
            rejected = self._isolate(insert, staging, batch.height)
        finally:
            d.loader.unstage(self.conn, staging)
        if not rejected:
            return empty_dead_letters()
        index = pl.DataFrame(
            {"__tf_i": [r for r, _ in rejected], "reason": [why for _, why in rejected]},
            schema={"__tf_i": pl.UInt32, "reason": pl.String},
        )
        bad = batch.with_row_index("__tf_i").join(index, on="__tf_i").sort("__tf_i")
        return dead_letters(bad.drop("__tf_i", "reason"), pl.lit(bad.get_column("reason")))

    def _isolate(self, insert: Insert, staging: str, n: int) -> Rejected:
        """Insert rows [0, n): one statement for a clean batch; otherwise let the database
        locate the rejected ones where it can (PostgreSQL, see
        :meth:`BulkLoader.locate_rejected`), else bisect."""
        assert self.dialect is not None
        d = self.dialect
        if d.loader.locates_rejected:
            if self._attempt(insert, 0, n) is None:
                return []  # the common case
            located = d.loader.locate_rejected(self.conn, insert, staging, n)
            if located is not None:
                return [(r, redact(f"{d.name} rejected the row: {why}")) for r, why in located]
        return self._bisect(insert, 0, n, commit_each=False)

    def _attempt(self, insert: Insert, lo: int, hi: int) -> Exception | None:
        """Insert rows [lo, hi) inside a savepoint; the database's rejection, if any, with
        the savepoint rolled back. An empty range loads nothing."""
        if lo >= hi:
            return None
        assert self.dialect is not None
        statement = self._rows(insert, lo, hi)
        together = self.dialect.driver.statements_together
        try:
            if together:  # one round trip instead of three
                self._exec(f"SAVEPOINT tf_rows; {statement}; RELEASE SAVEPOINT tf_rows")
            else:
                self._exec("SAVEPOINT tf_rows")
                self._exec(statement)
        except Exception as exc:
            if not self.dialect.driver.is_row_error(exc):
                raise
            self._exec("ROLLBACK TO SAVEPOINT tf_rows")
            return exc
        if not together:
            self._exec("RELEASE SAVEPOINT tf_rows")
        return None

    def _rows(self, insert: Insert, lo: int, hi: int) -> str:
        """``insert`` for staging rows [lo, hi)."""
        assert self.dialect is not None
        row = f"s.{self.dialect.grammar.quote(ROW)}"
        # Row numbers are integers generated here, so formatting them into SQL is safe.
        return insert(f"{row} >= {int(lo)} AND {row} < {int(hi)}")

    def _bisect(self, insert: Insert, lo: int, hi: int, commit_each: bool) -> Rejected:
        """Insert rows [lo, hi); on a data error split the range, down to single rows.

        With savepoints, the batch stays one transaction. Without (DuckDB), a failed attempt
        rolls back the transaction, so while isolating bad rows each accepted range commits
        on its own.
        """
        assert self.dialect is not None
        d = self.dialect
        statement = self._rows(insert, lo, hi)
        if d.driver.savepoints:
            self._exec("SAVEPOINT tf_rows")
        try:
            self._exec(statement)
        except Exception as exc:
            if not d.driver.is_row_error(exc):
                raise
            if d.driver.savepoints:
                self._exec("ROLLBACK TO SAVEPOINT tf_rows")
            else:
                self._rollback()
            if hi - lo == 1:
                return [(lo, redact(f"{d.name} rejected the row: {_first_line(exc)}"))]
            if self._unindexed is not None:
                # Only a batch with rejected rows pays for the index.
                d.loader.index_staging(self.conn, self._unindexed)
                self._unindexed = None
            mid = (lo + hi) // 2
            isolate = not d.driver.savepoints
            return self._bisect(insert, lo, mid, isolate) + self._bisect(insert, mid, hi, isolate)
        if d.driver.savepoints:
            self._exec("RELEASE SAVEPOINT tf_rows")
        elif commit_each:
            self._commit()
        return []


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
