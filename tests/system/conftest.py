"""Fixtures of the system tests: a private PostgreSQL server for outage checks."""

from tests.faults.private_postgres import private_postgres

__all__ = ["private_postgres"]
