"""The ``sql`` source: a table or a query, read in batches, in full or incrementally.

- **Full reads** stream the result through the driver's fastest path (Arrow where there is
  one) in batches; the position counts the rows emitted, so a crash mid-table resumes by
  skipping what was already delivered (give ``order_by`` for a deterministic order). A
  finished full read starts over on the next run: a table without a cursor is a snapshot.
- **Incremental reads** (``cursor``) page through the rows ordered by the cursor column,
  ``WHERE cursor > last``; the last value is the position, so each run (or each poll, with
  ``poll_interval``) reads only new or changed rows. A page never ends inside a run of equal
  cursor values: rows sharing the page's last value are held back to the next page, so a
  non-unique cursor such as ``updated_at`` loses nothing and repeats nothing.
- **Parallel reads** (``partition_column`` + ``partitions``) split a full read into value
  ranges read by one connection each.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import polars as pl
from pydantic import Field, model_validator

from tideflow.connectors.sql.dialects import dialect_for
from tideflow.connectors.sql.dialects.base import Dialect
from tideflow.connectors.sql.urls import DatabaseSettings, DatabaseUrl, parse_url
from tideflow.core.contracts import Context, Source, SourceBatch
from tideflow.core.retry import with_retries
from tideflow.errors import PipelineError
from tideflow.registry import component
from tideflow.secrets import redact

T = TypeVar("T")
CURSOR = "__tf_cursor"


class SqlSourceConfig(DatabaseSettings):
    """Settings of the ``sql`` source."""

    table: str | None = Field(None, description="Table to read (or give `query`).")
    db_schema: str | None = Field(None, description="Database schema of `table`.")
    columns: list[str] | None = Field(None, description="Columns of `table` to read; all if unset.")
    query: str | None = Field(
        None, description="A SELECT to read instead of a table; it is wrapped as a subquery."
    )
    cursor: str | None = Field(
        None,
        description="Incremental mode: a column that grows with new or changed rows "
        "(`id`, `updated_at`); only rows above the last value read are fetched.",
    )
    initial_value: Any = Field(
        None, description="Incremental mode: start after this cursor value on the first run."
    )
    order_by: list[str] = Field(
        default_factory=list,
        description="Full reads: columns giving a deterministic order, so a resumed read "
        "skips exactly the rows already delivered.",
    )
    batch_size: int = Field(50_000, ge=1, description="Rows per batch.")
    poll_interval: float | None = Field(
        None,
        gt=0,
        description="Incremental mode: keep running and look for new rows this often "
        "(seconds); without it the source ends when it has read everything.",
    )
    partition_column: str | None = Field(
        None, description="Full reads: a numeric column to split the read by value range."
    )
    partitions: int = Field(1, ge=1, le=64, description="Parallel range reads.")

    @model_validator(mode="after")
    def _consistent(self) -> SqlSourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table` or `query`")
        if self.columns is not None and self.table is None:
            raise ValueError("`columns` selects from `table`; write them into `query` instead")
        if self.poll_interval is not None and self.cursor is None:
            raise ValueError(
                "`poll_interval` needs a `cursor`: without one every poll would "
                "read the whole table again"
            )
        if self.partitions > 1 and (self.partition_column is None or self.cursor is not None):
            raise ValueError("`partitions` needs `partition_column` and a full read (no cursor)")
        return self


# -- cursor values in positions ---------------------------------------------------------------


def encode_value(value: Any) -> Any:
    """A cursor value as JSON, tagged so that it decodes to the same Python type."""
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"decimal": str(value)}
    return value


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value`."""
    if isinstance(value, dict):
        if "datetime" in value:
            return dt.datetime.fromisoformat(value["datetime"])
        if "date" in value:
            return dt.date.fromisoformat(value["date"])
        if "decimal" in value:
            return decimal.Decimal(value["decimal"])
    return value


@component("source", "sql")
class SqlSource(Source[SqlSourceConfig]):
    """Read a table or query from PostgreSQL, MySQL/MariaDB, SQLite or DuckDB."""

    config_model = SqlSourceConfig

    def __init__(self, config: SqlSourceConfig) -> None:
        super().__init__(config)
        self.bounded = config.poll_interval is None
        # Without a cursor every run reads the whole table (a snapshot): a lost position
        # makes no run read more than it would anyway.
        self.replays_without_state = config.cursor is not None
        self.url: DatabaseUrl | None = None
        self.dialect: Dialect | None = None
        self.conn: Any = None
        self.ctx: Context | None = None
        self._batches: Iterator[SourceBatch | None] | None = None
        self._partition_queue: queue.Queue[Any] | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._declared: dict[str, str] = {}
        self._position: Any = None
        self._start_cursor: Any = None
        self._rows = 0

    def open(self, ctx: Context, position: Any) -> None:
        """Connect and plan the read from ``position``."""
        self.ctx = ctx
        self.url = parse_url(self.config.url, ctx.base_dir)
        self.dialect = dialect_for(self.url)
        self.conn = self._retrying(self._connect, "cannot connect")
        if self.config.table is not None:
            found = self._retrying(self._table_columns, "reading the catalogue")
            if found is None:
                raise PipelineError(f"sql source: table {self.config.table!r} does not exist")
            self._declared = found
        self._position = position
        if self.config.cursor is not None and position:
            self._start_cursor = decode_value(position["cursor"])
        self._plan(position)

    def notices(self) -> list[str]:
        """Why an incremental run read nothing: no row is past the cursor earlier runs
        reached."""
        if self.config.cursor is None or self._rows or self._start_cursor is None:
            return []
        return [
            f"no row has {self.config.cursor} > {self._start_cursor!r}, where earlier runs "
            "left the cursor (`tideflow state reset` reads every row again)"
        ]

    def _table_columns(self) -> dict[str, str] | None:
        assert self.dialect is not None and self.config.table is not None
        found = self.dialect.driver.columns(self.conn, self.config.table, self.config.db_schema)
        self.dialect.driver.end_read(self.conn)
        return found

    def _plan(self, position: Any) -> None:
        """Set up the reads that follow ``position``."""
        if self.config.cursor is not None:
            start = decode_value(position["cursor"]) if position else self.config.initial_value
            self._batches = self._incremental(start)
        elif self.config.partitions > 1:
            self._batches = self._partitioned(position)
        else:
            done = isinstance(position, dict) and position.get("done")
            skip = 0 if (done or not position) else int(position["rows"])
            self._batches = self._full(skip)

    def read_batch(self) -> SourceBatch | None:
        """The next batch; an empty batch while an incremental poll waits. Through an
        outage, the read is retried from the last batch delivered."""
        batch = self._retrying(self._next, "reading", recover=self._recover)
        if batch is not None:
            self._position = batch.position
            self._rows += batch.data.height
        return batch

    def _retrying(
        self, operation: Callable[[], T], what: str, recover: Callable[[], None] | None = None
    ) -> T:
        assert self.ctx is not None and self.dialect is not None
        return with_retries(
            operation,
            self.dialect.driver.is_connection_error,
            self.ctx,
            self.config.retry,
            f"sql source {self._relation_name()} {what}",
            recover,
            probe=self.dialect.driver.probe(self.url) if self.url is not None else None,
        )

    def _recover(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None
        self.conn = self._connect()
        self._plan(self._position)

    def _next(self) -> SourceBatch | None:
        if self.conn is None:  # the last reconnect failed: the server is still away
            self._recover()
        assert self._batches is not None and self.dialect is not None
        try:
            return next(self._batches)
        except StopIteration:
            return None
        except PipelineError:
            raise
        except Exception as exc:
            if self.dialect.driver.is_connection_error(exc):
                raise
            raise PipelineError(
                redact(f"sql source failed reading {self._relation_name()}: {exc}")
            ) from exc

    def close(self) -> None:
        """Stop partition readers and disconnect."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._batches is not None:
            # A read stopped mid-table holds an open cursor in its generator; SQLite keeps
            # the file open until every statement is finalised, so close the cursor first.
            with contextlib.suppress(Exception):
                self._batches.close()  # type: ignore[attr-defined]
            self._batches = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # -- SQL ----------------------------------------------------------------------------------

    def _connect(self) -> Any:
        assert self.dialect is not None and self.url is not None
        try:
            return self.dialect.driver.connect(self.url)
        except Exception as exc:
            if self.dialect.driver.is_connection_error(exc):
                raise  # retried
            raise PipelineError(
                redact(f"sql source cannot connect to {self.url.raw}: {exc}")
            ) from exc

    def _relation_name(self) -> str:
        return repr(self.config.table) if self.config.table else "its query"

    def _relation(self) -> str:
        """The table, or the query as a subquery, to select from."""
        assert self.dialect is not None
        if self.config.query is not None:
            return f"({self.config.query})"
        assert self.config.table is not None
        return self.dialect.grammar.table(self.config.table, self.config.db_schema)

    def _select(self, with_cursor: bool = False) -> str:
        """The SELECT of the relation; ``with_cursor`` adds the cursor again under its own
        name, untouched by type restoration, so values are bound back exactly as the
        database returned them (SQLite compares timestamps as text)."""
        assert self.dialect is not None
        d, cols = self.dialect, self.config.columns
        names = ", ".join(f"tf_r.{d.grammar.quote(c)}" for c in cols) if cols else "tf_r.*"
        if with_cursor:
            assert self.config.cursor is not None
            names += f", tf_r.{d.grammar.quote(self.config.cursor)} AS {d.grammar.quote(CURSOR)}"
        return f"SELECT {names} FROM {self._relation()} tf_r"  # nosec B608 - identifiers quoted, values bound

    def _stream(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[pl.DataFrame]:
        assert self.dialect is not None
        for frame in self.dialect.driver.stream(self.conn, sql, params, self.config.batch_size):
            yield self.dialect.driver.restore_types(frame, self._declared)
        self.dialect.driver.end_read(self.conn)

    # -- full reads ---------------------------------------------------------------------------

    def _full(self, skip: int) -> Iterator[SourceBatch | None]:
        assert self.dialect is not None
        sql = self._select()
        if self.config.order_by:
            sql += " ORDER BY " + ", ".join(
                self.dialect.grammar.quote(c) for c in self.config.order_by
            )
        emitted = skip
        for frame in _skipping(self._stream(sql), skip):
            emitted += frame.height
            yield SourceBatch(frame, {"rows": emitted, "done": False})
        yield SourceBatch(pl.DataFrame(), {"rows": emitted, "done": True})

    def _partitioned(self, position: Any) -> Iterator[SourceBatch | None]:
        """Ranges of ``partition_column`` read in parallel, one connection each."""
        assert self.dialect is not None and self.config.partition_column is not None
        done = not isinstance(position, dict) or position.get("done")
        skips: dict[str, int] = {} if done else dict(position["rows"])
        col = self.dialect.grammar.quote(self.config.partition_column)
        lo, hi = self.dialect.driver.execute(
            self.conn,
            f"SELECT min({col}), max({col}) FROM {self._relation()} tf_r",  # nosec B608 - identifiers quoted, values bound
        )[0]
        self.dialect.driver.end_read(self.conn)
        if lo is None:
            yield SourceBatch(pl.DataFrame(), {"rows": {}, "done": True})
            return
        n = self.config.partitions
        step = (hi - lo) / n
        bounds = [lo + step * i for i in range(n)] + [None]
        results: queue.Queue[Any] = queue.Queue(maxsize=2 * n)
        for i in range(n):
            where = f"{col} >= {self.dialect.driver.placeholder(1)}"
            params: tuple[Any, ...] = (bounds[i],)
            if bounds[i + 1] is not None:
                where += f" AND {col} < {self.dialect.driver.placeholder(2)}"
                params += (bounds[i + 1],)
            sql = f"{self._select()} WHERE {where}"
            if self.config.order_by:
                sql += " ORDER BY " + ", ".join(
                    self.dialect.grammar.quote(c) for c in self.config.order_by
                )
            thread = threading.Thread(
                target=self._read_range,
                args=(str(i), sql, params, skips.get(str(i), 0), results),
                daemon=True,
                name=f"tideflow-sql-range-{i}",
            )
            self._threads.append(thread)
            thread.start()
        counts = {str(i): skips.get(str(i), 0) for i in range(n)}
        running = n
        while running:
            item = results.get()
            if isinstance(item, BaseException):
                raise item
            part, frame = item
            if frame is None:
                running -= 1
                continue
            counts[part] += frame.height
            yield SourceBatch(frame, {"rows": dict(counts), "done": False})
        yield SourceBatch(pl.DataFrame(), {"rows": dict(counts), "done": True})

    def _read_range(
        self, part: str, sql: str, params: tuple[Any, ...], skip: int, out: queue.Queue[Any]
    ) -> None:
        assert self.dialect is not None
        conn = None
        try:
            conn = self._connect()
            frames = self.dialect.driver.stream(conn, sql, params, self.config.batch_size)
            for frame in _skipping(frames, skip):
                if self._stop.is_set():
                    return
                out.put((part, self.dialect.driver.restore_types(frame, self._declared)))
            out.put((part, None))
        except Exception as exc:  # noqa: BLE001 - handed to the reading thread to raise
            out.put(PipelineError(redact(f"sql source range {part} failed: {exc}")))
        finally:
            if conn is not None:
                conn.close()

    # -- incremental reads --------------------------------------------------------------------

    def _incremental(self, last: Any) -> Iterator[SourceBatch | None]:
        assert self.dialect is not None and self.config.cursor is not None
        d = self.dialect
        cursor = "tf_r." + d.grammar.quote(self.config.cursor)
        size = self.config.batch_size
        select = self._select(with_cursor=True)
        while True:
            where = (
                f"{cursor} IS NOT NULL" if last is None else f"{cursor} > {d.driver.placeholder(1)}"
            )
            params = () if last is None else (last,)
            query = f"{select} WHERE {where} ORDER BY {cursor} LIMIT {size + 1}"
            page = pl.concat(list(self._stream(query, params)), how="vertical_relaxed")
            values = page.get_column(CURSOR)
            if page.height <= size:
                if page.height:
                    last = values[-1]
                    yield SourceBatch(page.drop(CURSOR), {"cursor": encode_value(last)})
                if self.bounded:
                    return
                yield SourceBatch(pl.DataFrame(), {"cursor": encode_value(last)})
                assert self.ctx is not None
                if self.ctx.wait(self.config.poll_interval or 0):
                    return
                continue
            # More rows follow: hold back the page's last cursor value, which may continue.
            # (Rows are in the database's order; equality, unlike `<`, ignores collation.)
            edge = values[size]
            cut = int((values == edge).arg_true()[0])
            if cut:
                last = values[cut - 1]
                yield SourceBatch(page.head(cut).drop(CURSOR), {"cursor": encode_value(last)})
                continue
            # A whole page shares one value: read all rows with it, then move past it.
            equal = f"{select} WHERE {cursor} = {d.driver.placeholder(1)}"
            frames = [f.drop(CURSOR) for f in self._stream(equal, (edge,))]
            for frame in frames[:-1]:
                yield SourceBatch(frame, {"cursor": encode_value(last)})
            last = edge
            yield SourceBatch(frames[-1], {"cursor": encode_value(last)})


def _skipping(frames: Iterator[pl.DataFrame], skip: int) -> Iterator[pl.DataFrame]:
    """The non-empty frames after the first ``skip`` rows (already delivered before a crash)."""
    for frame in frames:
        drop = min(skip, frame.height)
        skip -= drop
        if frame.height > drop:
            yield frame.slice(drop)
