"""Keep secrets out of logs, errors and displays.

Values interpolated from secret-looking variables (``*PASSWORD*``, ``*TOKEN*``, ...) are
registered here; :func:`redact` replaces them, and passwords inside URLs, wherever text is
shown to a person. A logging filter applies the same to every log record.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

import polars as pl

_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|AUTH", re.IGNORECASE)
# The scheme's length is bounded: unbounded, every position of a long run of letters would
# rescan the rest of it (quadratic time on a large response or record).
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.\-]{0,31}://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I
)
_lock = threading.Lock()
_secrets: set[str] = set()
MASK = "***"


_SECRET_FIELD = re.compile(
    r"pass(word|wd)?$|secret|token|api[_-]?key|private[_-]?key|access[_-]?key|credential",
    re.IGNORECASE,
)


def is_secret_field(name: str) -> bool:
    """True for config keys whose values are secrets even when written literally
    (``password``, ``client_secret``, ``api_key``); stricter than :func:`looks_secret` so
    that ordinary values such as column names under ``key_column`` are never masked."""
    return bool(_SECRET_FIELD.search(name))


def looks_secret(name: str) -> bool:
    """True for names such as ``DB_PASSWORD``, ``api_token`` or ``client_secret``."""
    return bool(_SECRET_NAME.search(name))


def register_secret(value: str) -> None:
    """Remember a secret value so :func:`redact` hides it."""
    if len(value) >= 4:  # shorter values would mask ordinary words in messages
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Hide registered secrets and URL passwords in ``text``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def redact_frame(frame: pl.DataFrame, columns: Iterable[str]) -> pl.DataFrame:
    """:func:`redact` applied to string columns of a frame, vectorised."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    exprs = []
    for name in columns:
        expr = pl.col(name).str.replace_all(_URL_PASSWORD.pattern, f"${{scheme}}${{user}}:{MASK}@")
        for secret in secrets:
            expr = expr.str.replace_all(secret, MASK, literal=True)
        exprs.append(expr)
    return frame.with_columns(exprs) if exprs else frame


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message once, redacted, and drop the arguments."""
        record.msg = redact(record.getMessage())
        record.args = None
        return True
