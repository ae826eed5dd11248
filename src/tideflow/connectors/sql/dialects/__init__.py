"""What differs between databases, one module per database, each combining the three
concerns of :mod:`.base`: a :class:`~.base.Grammar` (quoting, types, upsert syntax), a
:class:`~.base.Driver` (connections, transactions, streamed reads, catalogue, errors) and a
:class:`~.base.BulkLoader` (staging a batch for one ``INSERT ... SELECT``).

Each dialect uses the fastest path its database offers and stays columnar where the driver
allows it:

- PostgreSQL (:mod:`.postgres`): ADBC (libpq ``COPY`` in binary) for reads, streaming Arrow
  record batches; psycopg ``COPY`` of CSV into a temporary text staging table for writes.
- DuckDB (:mod:`.duckdb`): its own Arrow interface — reads stream record batches, writes
  register the Arrow table as a view.
- MySQL/MariaDB (:mod:`.mysql`): PyMySQL with an unbuffered cursor for reads and ``LOAD
  DATA LOCAL INFILE`` of a Polars-written CSV into an all-text staging table for writes, so
  that the server, in strict mode, does every type conversion and reports bad values as
  errors.
- SQLite (:mod:`.sqlite`): the standard library driver; ``executemany`` into a temporary
  staging table.

From the staging table, one ``INSERT ... SELECT`` moves rows into the target (merging on the
key for upserts), so the same bisection over the staging row numbers finds rejected rows on
every database.
"""

from __future__ import annotations

from collections.abc import Callable

from tideflow.connectors.sql.dialects import duckdb, mysql, postgres, sqlite
from tideflow.connectors.sql.dialects.base import Dialect
from tideflow.connectors.sql.urls import DatabaseUrl

DIALECTS: dict[str, Callable[[], Dialect]] = {
    "postgresql": postgres.reading,
    "duckdb": duckdb.dialect,
    "sqlite": sqlite.dialect,
    "mysql": mysql.dialect,
}
"""Dialect name (see :mod:`tideflow.connectors.sql.urls`) -> a new dialect of it."""


def dialect_for(url: DatabaseUrl) -> Dialect:
    """The dialect of a parsed URL."""
    return DIALECTS[url.dialect]()
