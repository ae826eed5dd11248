"""The one rule for topic names, applied identically on the embedded log and on Kafka.

Kafka's rule: 1 to 249 characters from ``A-Z a-z 0-9 . _ -``, and not ``.`` or ``..``.
The embedded log would store any text, but a name that Kafka refuses (or a stray trailing
space) would make a pipeline that works on a laptop fail on Kafka, or silently read another
topic than the one its writer fills; so both backends refuse it before anything is created.
"""

from __future__ import annotations

import re
import unicodedata

MAX_TOPIC_LENGTH = 249
_LEGAL = re.compile(r"[A-Za-z0-9._-]")


def _describe(char: str) -> str:
    """A character as a person can recognise it, even when it is invisible."""
    name = unicodedata.name(char, "").lower() or f"U+{ord(char):04X}"
    return f"{char!r} ({name})"


def topic_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid topic name, or None if it is."""
    if not name:
        return "a topic name cannot be empty"
    if name in (".", ".."):
        return f"{name!r} cannot be a topic name"
    if len(name) > MAX_TOPIC_LENGTH:
        return f"topic name is {len(name)} characters long; at most {MAX_TOPIC_LENGTH} are allowed"
    for position, char in enumerate(name):
        if not _LEGAL.fullmatch(char):
            return (
                f"topic name {name!r} has the character {_describe(char)} at position "
                f"{position}; topic names use only letters, digits, '.', '_' and '-'"
            )
    return None


def check_topic_name(name: str) -> str:
    """Return ``name`` if it is a valid topic name; raise ``ValueError`` naming the bad
    character otherwise (pydantic validators turn it into a configuration error)."""
    problem = topic_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name
