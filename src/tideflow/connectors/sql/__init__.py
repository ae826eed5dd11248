"""SQL databases: the ``sql`` source and sink (PostgreSQL, MySQL/MariaDB, SQLite, DuckDB)."""
