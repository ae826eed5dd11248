"""Fixtures of the fault suite."""

from tests.faults.private_postgres import private_postgres

__all__ = ["private_postgres"]
