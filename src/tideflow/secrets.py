"""Keep secrets out of logs, errors and displays.

Values interpolated from secret-looking variables (``*PASSWORD*``, ``*TOKEN*``, ...) are
registered here; :func:`redact` replaces them, and passwords inside URLs, wherever text is
shown to a person. A logging filter applies the same to every log record.
"""

from __future__ import annotations

import logging
import re
import threading

_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|AUTH", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)
_lock = threading.Lock()
_secrets: set[str] = set()
MASK = "***"


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


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message once, redacted, and drop the arguments."""
        record.msg = redact(record.getMessage())
        record.args = None
        return True
