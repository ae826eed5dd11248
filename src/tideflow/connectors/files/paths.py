"""File names and filesystems: what the file source, the file sink and the webhook share."""

from __future__ import annotations

import re
from typing import Any

from fsspec.implementations.local import LocalFileSystem


def safe_name(value: str) -> str:
    """A string usable inside a file name."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", value)


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is the local disk (where renames are atomic and fsync applies)."""
    return isinstance(fs, LocalFileSystem)
