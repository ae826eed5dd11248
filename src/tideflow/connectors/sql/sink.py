"""The ``sql`` sink: bulk loads into PostgreSQL, MySQL/MariaDB, SQLite and DuckDB.

The sink owns the connection, its transactions, the target table's schema (created or
evolved under the policy) and the checkpoints; loading a batch and setting its rejected rows
apart is :mod:`~tideflow.connectors.sql.sink_rows`, the settings are
:mod:`~tideflow.connectors.sql.sink_settings`.

Delivery:

- default: each batch commits in its own transaction as it arrives (at-least-once; with
  ``upsert`` a replay rewrites the same rows, so the result is exact);
- ``transactional: true``: batches stay in one open transaction until the checkpoint,
  which commits them together with the pipeline's checkpoint (source positions, step state)
  stored in the target database. After a crash the engine resumes from that stored
  checkpoint, so every record lands exactly once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import polars as pl

from tideflow.connectors.sql.dialects import dialect_for
from tideflow.connectors.sql.dialects.base import Dialect
from tideflow.connectors.sql.schema import TablePlan, plan, wanted_columns
from tideflow.connectors.sql.sink_rows import RowLoader
from tideflow.connectors.sql.sink_settings import (
    CHECKPOINT_TABLE,
    SqlSinkConfig,
    replace_table_name,
)
from tideflow.connectors.sql.urls import DatabaseUrl, parse_url
from tideflow.core.contracts import Context, ExistingOutput, Sink
from tideflow.core.faults import crash_point
from tideflow.core.retry import with_retries
from tideflow.errors import PipelineError
from tideflow.registry import component
from tideflow.secrets import redact

T = TypeVar("T")


@component("sink", "sql")
class SqlSink(RowLoader, Sink[SqlSinkConfig]):
    """Load batches into a SQL table: append, upsert or replace, exactly-once on request."""

    config_model = SqlSinkConfig

    def __init__(self, config: SqlSinkConfig) -> None:
        super().__init__(config)
        self.keeps_checkpoint = config.transactional
        self.dialect: Dialect | None = None
        self.url: DatabaseUrl | None = None
        self.conn: Any = None
        self.pipeline = ""
        self._table: TablePlan | None = None
        self._planned: dict[str, pl.DataType] = {}
        self._in_transaction = False
        self._checkpoint: bytes | None = None
        self._uncommitted: list[pl.DataFrame] = []
        self._flushed = False
        self.ctx: Context | None = None
        self._loading = False
        self._end = False
        self._unindexed: str | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def _connect(self, ctx: Context) -> None:
        if self.conn is not None:
            return
        self.ctx = ctx
        self.pipeline = ctx.pipeline if ctx.scope == "main" else f"{ctx.pipeline}#{ctx.scope}"
        self.url = parse_url(self.config.url, ctx.base_dir)
        self.dialect = dialect_for(self.url).for_writing()
        self.conn = self._retrying(self._open_connection, "cannot connect")

    def _open_connection(self) -> Any:
        assert self.dialect is not None and self.url is not None
        try:
            return self.dialect.driver.connect(self.url)
        except Exception as exc:
            if self.dialect.driver.is_connection_error(exc):
                raise  # retried
            raise PipelineError(
                redact(f"sql sink cannot connect to {self.url.raw}: {exc}")
            ) from exc

    def _reconnect(self) -> None:
        """A fresh connection after an outage; temporary tables and caches went with the
        old one."""
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None
        self._in_transaction = False
        self._table = None
        assert self.ctx is not None
        self.conn = self._open_connection()

    def _retrying(
        self,
        operation: Callable[[], T],
        what: str,
        replay: bool = False,
        committed: Callable[[], bool] | None = None,
    ) -> T:
        """Run ``operation`` through outages: reconnect, and (transactional) replay the
        batches of the open transaction, which the outage rolled back — unless
        ``committed`` says the interrupted commit went through after all."""
        assert self.ctx is not None and self.dialect is not None

        def recover() -> None:
            self._reconnect()
            if committed is not None and committed():
                self._flushed = True
            elif replay:
                for batch in self._uncommitted:
                    self._write(batch)

        def attempt() -> T:
            if self.conn is None:  # the last reconnect failed: the server is still away
                recover()
            return operation()

        return with_retries(
            attempt,
            self.dialect.driver.is_connection_error,
            self.ctx,
            self.config.retry,
            f"sql sink {self.config.table!r} {what}",
            recover,
            probe=self.dialect.driver.probe(self.url) if self.url is not None else None,
        )

    def open(self, ctx: Context, pending: Any) -> None:
        """Connect; finish a swap the last checkpoint decided; forget an aborted load."""
        self._connect(ctx)
        self._retrying(lambda: self._open_target(pending), "opening")

    def _open_target(self, pending: Any) -> None:
        if self.config.transactional:
            self._in_tx(self._ensure_checkpoint_table)
        if self.config.mode != "replace":
            return
        new = replace_table_name(self.config.table)
        if self.config.transactional:
            # The new table commits atomically with the checkpoint the run resumes from.
            assert self.dialect is not None
            self._loading = (
                self.dialect.driver.columns(self.conn, new, self.config.db_schema) is not None
            )
            self._commit()
            return
        state = pending.get("replace") if isinstance(pending, dict) else None
        if state == "swap":
            self._in_tx(self._swap)
        # Resuming a load keeps what the checkpoint covers; otherwise start over.
        self._loading = state == "loading"
        if not self._loading:
            self._in_tx(lambda: self._drop(new))

    def close(self) -> None:
        """Roll back anything uncommitted and disconnect."""
        if self.conn is None:
            return
        try:
            if self._in_transaction:
                self._rollback()
        finally:
            self.conn.close()
            self.conn = None

    def stored_checkpoint(self, ctx: Context) -> bytes | None:
        """The checkpoint committed with the rows (transactional mode)."""
        self._connect(ctx)
        return self._retrying(self._read_checkpoint, "reading its checkpoint")

    def _read_checkpoint(self) -> bytes | None:
        assert self.dialect is not None
        if self.dialect.driver.columns(self.conn, CHECKPOINT_TABLE, self.config.db_schema) is None:
            self._commit()
            return None
        rows = self._exec(
            f"SELECT payload FROM {self._q(CHECKPOINT_TABLE)} WHERE pipeline = {self._p(1)}",  # nosec B608 - identifiers quoted, values bound
            (self.pipeline,),
        )
        self._commit()
        return bytes(rows[0][0]) if rows else None

    def committed_output(self, ctx: Context) -> ExistingOutput | None:
        """Rows in the target table, or a checkpoint this pipeline stored with them: two
        cheap queries (``LIMIT 1``), no count."""
        self._connect(ctx)
        rows, checkpoint = self._retrying(self._holds, "looking at its table")
        if not (rows or checkpoint):
            return None
        table, what = self.config.table, []
        if rows:
            what.append(f"table {table} holds rows")
        if checkpoint:
            what.append(f"{CHECKPOINT_TABLE} holds a checkpoint of this pipeline")
        clearing = f"delete every row of table {table}" if rows else ""
        if checkpoint:
            clearing += (" and " if clearing else "delete ") + "its stored checkpoint"
        # An upsert rewrites the same keys and a replace rebuilds the table: no duplicates.
        idempotent = self.config.mode in ("upsert", "replace")
        return ExistingOutput(found=" and ".join(what), clearing=clearing, idempotent=idempotent)

    def _holds(self) -> tuple[bool, bool]:
        assert self.dialect is not None
        d, schema = self.dialect, self.config.db_schema
        rows = False
        if d.driver.columns(self.conn, self.config.table, schema) is not None:
            table = d.grammar.table(self.config.table, schema)
            rows = bool(self._exec(f"SELECT 1 FROM {table} LIMIT 1"))  # nosec B608 - quoted
        self._commit()
        return rows, self._read_checkpoint() is not None

    def clear_output(self, ctx: Context) -> None:
        """``--from-scratch``: delete the table's rows (its columns, indexes and grants
        stay), an unfinished ``replace`` load, and this pipeline's stored checkpoint."""
        self._connect(ctx)
        self._retrying(lambda: self._in_tx(self._clear), "clearing its table")

    def _clear(self) -> None:
        assert self.dialect is not None
        d, schema = self.dialect, self.config.db_schema
        if d.driver.columns(self.conn, self.config.table, schema) is not None:
            self._exec(f"DELETE FROM {d.grammar.table(self.config.table, schema)}")  # nosec B608 - identifiers quoted
        if self.config.mode == "replace":
            self._drop(replace_table_name(self.config.table))
        if d.driver.columns(self.conn, CHECKPOINT_TABLE, schema) is not None:
            self._exec(
                f"DELETE FROM {self._q(CHECKPOINT_TABLE)} WHERE pipeline = {self._p(1)}",  # nosec B608 - identifiers quoted, values bound
                (self.pipeline,),
            )

    def attach_checkpoint(self, payload: bytes) -> None:
        """Store ``payload`` with the rows at the next flush."""
        self._checkpoint = payload

    def end_of_input(self) -> None:
        """Every bounded source ended: a ``replace`` load swaps at the next checkpoint."""
        self._end = True

    # -- writing --------------------------------------------------------------------------

    def write_batch(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Load ``batch``; return the rows the database rejected, with its reasons."""
        if self.config.mode == "upsert":
            # One statement cannot update a row twice: the last record of a key wins.
            batch = batch.unique(self.config.key, keep="last", maintain_order=True)
        transactional = self.config.transactional
        dead = self._retrying(lambda: self._write(batch), "writing", replay=transactional)
        if transactional:
            # Until the checkpoint commits, an outage rolls this batch back: keep it to replay.
            self._uncommitted.append(batch)
        return dead

    def _write(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self.config.transactional:
            self._begin()
            self._prepare_table(batch.schema)
        else:
            # DDL commits on its own so that a rejected row never rolls a new table back.
            self._in_tx(lambda: self._prepare_table(batch.schema))
            self._begin()
        try:
            dead = self._load(batch)
        except BaseException:
            self._rollback()
            raise
        if not self.config.transactional:
            self._commit()
        return dead

    def flush(self) -> Any:
        """Commit the open transaction with the checkpoint (transactional mode); decide
        the swap of a finished ``replace`` load."""
        swap = self.config.mode == "replace" and self._end and self._loading
        if self.config.transactional:
            self._flushed = False
            self._retrying(
                lambda: self._commit_checkpoint(swap),
                "committing",
                replay=True,
                committed=self._committed_already,
            )
            self._uncommitted = []
            self._checkpoint = None
            return None
        if self.config.mode == "replace":
            return {"replace": "swap" if swap else "loading" if self._loading else "idle"}
        return None

    def _commit_checkpoint(self, swap: bool) -> None:
        if self._flushed:
            return  # the outage hit after the commit went through
        self._begin()
        if swap:
            self._swap()
        if self._checkpoint is not None:
            self._store_checkpoint(self._checkpoint)
        crash_point("sql_sink.before_commit")
        self._commit()

    def _committed_already(self) -> bool:
        """After a reconnect: did the interrupted commit reach the database? (Checkpoint
        payloads differ from one checkpoint to the next: they carry its number.)"""
        return self._checkpoint is not None and self._read_checkpoint() == self._checkpoint

    def commit(self, token: Any) -> None:
        """Swap in a finished ``replace`` load (idempotent)."""
        if isinstance(token, dict) and token.get("replace") == "swap":
            self._retrying(lambda: self._in_tx(self._swap), "swapping in the new table")

    # -- planning ---------------------------------------------------------------------------

    def plan_schema(self, schema: pl.Schema) -> TablePlan:
        """The DDL the sink would run for batches of ``schema`` (``tideflow schema plan``)."""
        assert self.dialect is not None
        existing = self.dialect.driver.columns(
            self.conn, self._target_name(), self.config.db_schema
        )
        return plan(
            self.dialect.grammar,
            self._target_name(),
            self.config.db_schema,
            existing,
            wanted_columns(schema, self.config.columns),
            self.config.key,
            self.config.columns,
            self.config.indexes,
            self.config.schema_policy,
        )

    def plan_ddl(self, ctx: Context, schema: pl.Schema) -> list[str]:
        """The DDL for batches of ``schema``, without running it (``tideflow schema plan``)."""
        self._connect(ctx)
        try:
            return [s for s in self.plan_schema(schema).statements if s]
        finally:
            self._rollback()
            self.close()

    # -- internals ------------------------------------------------------------------------

    def _target_name(self) -> str:
        if self.config.mode == "replace":
            return replace_table_name(self.config.table)
        return self.config.table

    def _prepare_table(self, schema: pl.Schema) -> None:
        """Create or change the target so the batch loads; kept until the schema moves.

        Schema changes run under the database's lock for this table (workers of a group,
        or several pipelines, may start on a missing table at the same moment), and are
        planned again once it is held: whoever waited finds the table another one created
        or evolved, and changes only what is still missing."""
        if self._table is not None and self._planned == dict(schema):
            return
        assert self.dialect is not None
        self._begin()
        table_plan = self.plan_schema(schema)
        if table_plan.statements:
            with self._schema_lock(self._target_name()):
                table_plan = self.plan_schema(schema)
                for statement in table_plan.statements:
                    self._exec(statement)
        self._table, self._planned = table_plan, dict(schema)
        if self.config.mode == "replace":
            self._loading = True

    def _swap(self) -> None:
        assert self.dialect is not None
        d = self.dialect
        new = replace_table_name(self.config.table)
        schema = self.config.db_schema
        if d.driver.columns(self.conn, new, schema) is None:
            return
        exists = d.driver.columns(self.conn, self.config.table, schema) is not None
        for statement in d.grammar.swap_tables(self.config.table, new, schema, exists):
            self._exec(statement)
        self._loading = False
        self._table = None

    def _drop(self, table: str) -> None:
        assert self.dialect is not None
        self._exec(
            f"DROP TABLE IF EXISTS {self.dialect.grammar.table(table, self.config.db_schema)}"
        )

    def _ensure_checkpoint_table(self) -> None:
        assert self.dialect is not None
        if (
            self.dialect.driver.columns(self.conn, CHECKPOINT_TABLE, self.config.db_schema)
            is not None
        ):
            return
        blob = "BYTEA" if self.url and self.url.dialect == "postgresql" else "BLOB"
        # IF NOT EXISTS alone is not enough: two PostgreSQL sessions creating the same table
        # at once still collide on its row type (pg_type_typname_nsp_index).
        with self._schema_lock(CHECKPOINT_TABLE):
            self._exec(
                f"CREATE TABLE IF NOT EXISTS {self._q(CHECKPOINT_TABLE)} "
                f"(pipeline TEXT PRIMARY KEY, payload {blob} NOT NULL)"
            )

    def _schema_lock(self, table: str) -> contextlib.AbstractContextManager[None]:
        """The database's lock serializing schema changes of ``table`` (see
        :meth:`Driver.schema_lock`), inside the open transaction."""
        assert self.dialect is not None
        self._begin()
        return self.dialect.driver.schema_lock(
            self.conn, table, self.config.db_schema, self.config.schema_lock_timeout
        )

    def _store_checkpoint(self, payload: bytes) -> None:
        table = self._q(CHECKPOINT_TABLE)
        self._exec(
            f"INSERT INTO {table} (pipeline, payload) VALUES ({self._p(1)}, {self._p(2)}) "  # nosec B608 - identifiers quoted, values bound
            "ON CONFLICT (pipeline) DO UPDATE SET payload = excluded.payload",
            (self.pipeline, payload),
        )

    def _q(self, table: str) -> str:
        assert self.dialect is not None
        return self.dialect.grammar.table(table, self.config.db_schema)

    def _p(self, index: int) -> str:
        assert self.dialect is not None
        return self.dialect.driver.placeholder(index)

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self.dialect is not None
        self._begin()
        return self.dialect.driver.execute(self.conn, sql, params)

    def _in_tx(self, fn: Any) -> None:
        self._begin()
        try:
            fn()
        except BaseException:
            self._rollback()
            raise
        self._commit()

    def _begin(self) -> None:
        if not self._in_transaction:
            assert self.dialect is not None
            self.dialect.begin(self.conn)
            self._in_transaction = True

    def _commit(self) -> None:
        if self._in_transaction:
            assert self.dialect is not None
            self.dialect.commit(self.conn)
            self._in_transaction = False

    def _rollback(self) -> None:
        if self._in_transaction:
            assert self.dialect is not None
            self.dialect.rollback(self.conn)
            self._in_transaction = False
