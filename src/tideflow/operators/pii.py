"""The ``pii`` step: declarative detection and masking of personal data.

Two kinds of rules:

- **named columns** (``columns: {email: hash, ssn: drop}``): the whole value is personal
  data and gets the action;
- **detectors** (``detect: [email, phone, credit_card, ipv4, ipv6, iban, person_name]``
  plus user ``patterns``) scan free-text columns (``scan``, every text column by default)
  and the action replaces each span found inside the text. ``person_name`` works from name
  lists, not a model (:mod:`tideflow.operators.person_names`).

Actions: ``mask`` (keep the last ``keep_last`` characters, ``*`` for the rest), ``hash``
(salted SHA-256 in hex, so equal values still join), ``redact`` (``[EMAIL]`` in text, the
same marker for a whole value) and ``drop`` (remove the column, or cut the span out of the
text).

Vectorised: spans are found with Polars regular expressions over the whole column. Redacting
or dropping spans that need no check is a single ``str.replace_all``. Otherwise the distinct
spans of the batch are extracted, checked (Luhn for card numbers, a digit count for phone
numbers, ISO 7064 mod 97 for IBANs, the only check done in Python and only on matched
candidates; for names, list look-ups done as joins), turned into replacements as a column,
and substituted with one ``str.replace_many`` pass. The replacement is by substring: a name
found in one row is also replaced where it starts a longer word elsewhere in the batch
(``Tom Baker`` in ``Tom Bakery``), which errs on the side of hiding. Salted SHA-256 is
computed in Python once per distinct value: Polars has no cryptographic hash.

Every batch adds to :attr:`Pii.audit`: which rule (``column:detector`` or
``column:action``) changed how many values; the totals are logged when the step closes.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import polars as pl
from pydantic import Field, field_validator, model_validator

from tideflow.core.contracts import JSON, Context, Step, StepOutput
from tideflow.core.settings import Settings
from tideflow.errors import PipelineError, suggest
from tideflow.operators.person_names import RUN, person_name_spans
from tideflow.registry import component
from tideflow.secrets import register_secret

Action = Literal["mask", "hash", "redact", "drop"]

EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
PHONE = (
    r"(?:\+\d{1,3}[\s.\-]?(?:\(\d{1,4}\)[\s.\-]?)?\d{1,4}(?:[\s.\-]?\d{2,4}){1,4}"  # +44 20 ...
    r"|\(\d{3}\)\s?\d{3}[\s.\-]\d{4}"  # (555) 123-4567
    r"|\b\d{3}[\s.\-]\d{3}[\s.\-]\d{4}"  # 555-123-4567
    r"|\b0\d{2,4}[\s\-]\d{3,4}[\s\-]?\d{3,4})\b"  # 020 7946 0018
)
CREDIT_CARD = r"\b(?:\d[ \-]?){12,18}\d\b"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = rf"\b(?:{_OCTET}\.){{3}}{_OCTET}\b"
_HEX = r"[0-9A-Fa-f]{1,4}"
IPV6 = (
    rf"\b(?:(?:{_HEX}:){{7}}{_HEX}"  # full form
    rf"|(?:{_HEX}:){{1,6}}:(?:{_HEX}:){{0,5}}{_HEX})\b"  # compressed, with ::
)
IBAN = r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"


def luhn_valid(digits: pl.Series) -> pl.Series:
    """Luhn check of digit strings, vectorised with list expressions (no Python loop)."""
    frame = pl.DataFrame({"d": digits})
    doubled = pl.element().cast(pl.Int32) * (pl.int_range(pl.len()) % 2 + 1)
    return frame.select(
        pl.col("d")
        .str.reverse()
        .str.split("")
        .list.eval(doubled)
        .list.eval(pl.when(pl.element() > 9).then(pl.element() - 9).otherwise(pl.element()))
        .list.sum()
        .mod(10)
        .eq(0)
    ).to_series()


def _card_check(spans: pl.Series) -> pl.Series:
    digits = spans.str.replace_all(r"\D", "")
    length = digits.str.len_chars()
    return (length >= 13) & (length <= 19) & luhn_valid(digits)


def _phone_check(spans: pl.Series) -> pl.Series:
    count = spans.str.count_matches(r"\d")
    return (count >= 7) & (count <= 15)


def iban_valid(value: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters to numbers
    (A=10 ... Z=35), and the number modulo 97 must be 1."""
    compact = value.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _iban_check(spans: pl.Series) -> pl.Series:
    # only the distinct spans that matched the pattern reach this loop
    return pl.Series([iban_valid(s) for s in spans.to_list()], dtype=pl.Boolean)


Check = Callable[[pl.Series], pl.Series]


@dataclass(frozen=True)
class Detector:
    """Finds one kind of personal data in text: candidates by ``pattern``, kept when
    ``check`` passes; or a ``find`` function that returns the spans itself."""

    pattern: str
    check: Check | None = None
    find: Callable[[pl.Series], pl.Series] | None = None

    @property
    def plain(self) -> bool:
        """Every match of ``pattern`` is a finding (a redaction can replace them all)."""
        return self.check is None and self.find is None

    def spans(self, text: pl.Series) -> pl.Series:
        """The distinct findings in a text column."""
        if self.find is not None:
            return self.find(text)
        spans = text.str.extract_all(self.pattern).explode().drop_nulls().unique()
        if self.check is not None and spans.len():
            spans = spans.filter(self.check(spans))
        return spans


DETECTORS: dict[str, Detector] = {
    "credit_card": Detector(CREDIT_CARD, _card_check),
    "iban": Detector(IBAN, _iban_check),
    "email": Detector(EMAIL),
    "ipv6": Detector(IPV6),
    "ipv4": Detector(IPV4),
    "phone": Detector(PHONE, _phone_check),
    "person_name": Detector(RUN, find=person_name_spans),
}
"""Built-in detectors in the order they run (the more specific ones first)."""

ALIASES = {"ip": ("ipv4", "ipv6")}


def _regex_ok(pattern: str) -> str | None:
    try:
        pl.Series([""]).str.contains(pattern)
    except pl.exceptions.PolarsError as exc:
        return str(exc).splitlines()[0]
    return None


class PiiConfig(Settings):
    """Settings of ``pii``."""

    columns: dict[str, Action] = Field(
        default_factory=dict,
        description="Columns that are personal data as a whole, with the action for each: "
        "`{email: hash, card: mask, ssn: drop}`.",
    )
    detect: list[str] | Literal["auto"] = Field(
        "auto",
        description="Detectors that scan free text: `email`, `phone`, `credit_card` "
        "(Luhn-checked), `ipv4`, `ipv6` (`ip` for both), `iban` (checksum-verified), "
        "`person_name` (capitalised first name + surname from US Census name lists, or a "
        "title + surname; no model), and the names under `patterns`. `auto` (the default): "
        "every built-in one; `[]`: none.",
    )
    scan: list[str] | Literal["auto"] = Field(
        "auto",
        description="Text columns the detectors scan; `auto`: every text column not named "
        "under `columns`.",
    )
    action: Action = Field(
        "redact", description="What happens to a detected span: mask, hash, redact or drop."
    )
    actions: dict[str, Action] = Field(
        default_factory=dict, description="Per-detector action overriding `action`."
    )
    patterns: dict[str, str] = Field(
        default_factory=dict,
        description="Your own detectors: name -> regular expression (Rust regex syntax).",
    )
    keep_last: int = Field(
        4,
        ge=0,
        description="`mask` keeps this many last characters; values this short or shorter "
        "are masked entirely.",
    )
    salt: str | None = Field(
        None, description="Salt for `hash` (use `${PII_SALT}`; it is kept out of logs)."
    )
    salt_env: str | None = Field(
        None, description="Name of an environment variable holding the salt, read at start."
    )
    redact_with: str = Field(
        "[{name}]", description="Replacement for `redact`; `{name}` is the detector or column."
    )

    @field_validator("redact_with")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(name="EMAIL")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"redact_with may only use the placeholder {{name}}; {value!r} fails: {exc!r}"
            ) from exc
        return value

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            if name in DETECTORS or name in ALIASES:
                raise ValueError(f"pattern name {name!r} is a built-in detector; rename it")
            error = _regex_ok(pattern)
            if error:
                raise ValueError(f"pattern {name!r} is not a valid regular expression: {error}")
        return patterns

    @model_validator(mode="after")
    def _consistent(self) -> PiiConfig:
        known = [*DETECTORS, *ALIASES, *self.patterns]
        detect = [] if self.detect == "auto" else self.detect
        for name in [*detect, *self.actions]:
            if name not in known:
                raise ValueError(f"unknown detector {name!r}: {suggest(name, known)}")
        uses_hash = (
            "hash" in self.columns.values()
            or "hash" in self.actions.values()
            or (self.action == "hash" and bool(self.detect or self.patterns))
        )
        if uses_hash and not (self.salt or self.salt_env):
            raise ValueError(
                "`hash` needs a salt: set `salt: ${PII_SALT}` or `salt_env: PII_SALT` (an "
                "unsalted hash of an email or phone number is easy to reverse)"
            )
        return self


@component("step", "pii")
class Pii(Step[PiiConfig]):
    """Detect and mask personal data: named columns and spans inside free text."""

    config_model = PiiConfig

    def __init__(self, config: PiiConfig) -> None:
        super().__init__(config)
        self.audit: Counter[str] = Counter()
        self._ctx: Context | None = None
        self._salt: bytes | None = None
        names: list[str] = []
        for name in DETECTORS if config.detect == "auto" else config.detect:
            names.extend(ALIASES.get(name, (name,)))
        names.extend(p for p in config.patterns if p not in names)
        # user patterns run first (the most specific), then the built-ins in their order
        self._detectors: list[tuple[str, Detector]] = [
            (name, Detector(config.patterns[name])) for name in config.patterns if name in names
        ] + [(name, DETECTORS[name]) for name in DETECTORS if name in names]

    def open(self, ctx: Context, state: JSON | None) -> None:
        """Resolve the salt (from the settings or the environment) and register it as secret."""
        self._ctx = ctx
        cfg = self.config
        salt = cfg.salt
        if salt is None and cfg.salt_env:
            salt = os.environ.get(cfg.salt_env)
            if not salt:
                raise PipelineError(
                    f"pii: the environment variable {cfg.salt_env} (salt_env) is not set"
                )
        if salt:
            register_secret(salt)
            self._salt = salt.encode()

    def report(self) -> dict[str, JSON] | None:
        """The audit trail for the run summary: values changed per rule."""
        return {"pii rules fired": dict(sorted(self.audit.items()))}

    def close(self) -> None:
        """Log the audit trail: which rules changed how many values."""
        if self._ctx is not None and self.audit:
            summary = ", ".join(f"{rule}={n}" for rule, n in sorted(self.audit.items()))
            self._ctx.log.info("pii rules fired: %s", summary)

    # -- the batch ---------------------------------------------------------------------

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Apply the named-column rules, then scan the text columns."""
        cfg = self.config
        missing = [c for c in cfg.columns if c not in batch.columns]
        if missing:
            hints = "; ".join(f"{c!r}: {suggest(c, batch.columns)}" for c in missing)
            raise PipelineError(f"pii: column(s) under `columns` not in the batch: {hints}")
        out = batch
        dropped = [c for c, action in cfg.columns.items() if action == "drop"]
        for column in dropped:
            self.audit[f"{column}:drop"] += batch.height
        out = out.drop(dropped)
        replaced = [
            self._whole(out.get_column(c), c, a) for c, a in cfg.columns.items() if a != "drop"
        ]
        if replaced:
            out = out.with_columns(replaced)
        scanned = []
        for column in self._scan_columns(out):
            series = out.get_column(column)
            for name, detector in self._detectors:
                series = self._spans(series, name, detector)
            scanned.append(series)
        if scanned:
            out = out.with_columns(scanned)
        return StepOutput.of(out)

    def _scan_columns(self, frame: pl.DataFrame) -> list[str]:
        cfg = self.config
        if not self._detectors:
            return []
        if cfg.scan == "auto":
            return [
                c
                for c, dtype in frame.schema.items()
                if dtype == pl.String and c not in cfg.columns
            ]
        missing = [c for c in cfg.scan if c not in frame.columns]
        if missing:
            hints = "; ".join(f"{c!r}: {suggest(c, frame.columns)}" for c in missing)
            raise PipelineError(f"pii: column(s) under `scan` not in the batch: {hints}")
        wrong = [c for c in cfg.scan if frame.schema[c] != pl.String]
        if wrong:
            raise PipelineError(
                f"pii: `scan` needs text columns; {', '.join(wrong)} hold other types (name "
                "them under `columns` to mask the whole value)"
            )
        return list(cfg.scan)

    def _whole(self, series: pl.Series, column: str, action: Action) -> pl.Series:
        """A named column with every value replaced (nulls stay null)."""
        text = series.cast(pl.String)
        if action == "mask":
            new = self._masked(text)
        elif action == "hash":
            new = self._hashed(text)
        else:
            marker = self.config.redact_with.format(name=column.upper())
            new = pl.select(
                pl.when(text.is_not_null()).then(pl.lit(marker)).otherwise(None)
            ).to_series()
        self.audit[f"{column}:{action}"] += text.len() - text.null_count()
        return new.alias(column)

    def _spans(self, series: pl.Series, name: str, detector: Detector) -> pl.Series:
        """``series`` with every span found by one detector replaced by its action."""
        action = self.config.actions.get(name, self.config.action)
        if detector.plain and action in ("redact", "drop"):
            marker = "" if action == "drop" else self.config.redact_with.format(name=name.upper())
            new = series.str.replace_all(detector.pattern, marker.replace("$", "$$"))
        else:
            spans = detector.spans(series)
            if not spans.len():
                return series
            spans = spans.gather(spans.str.len_bytes().arg_sort(descending=True))  # longest wins
            if action == "mask":
                replacement = self._masked(spans)
            elif action == "hash":
                replacement = self._hashed(spans)
            elif action == "redact":
                marker = self.config.redact_with.format(name=name.upper())
                replacement = pl.Series([marker] * spans.len(), dtype=pl.String)
            else:
                replacement = pl.Series([""] * spans.len(), dtype=pl.String)
            new = series.str.replace_many(spans.implode(), replacement.implode(), leftmost=True)
        changed = int((new != series).sum())
        if changed:
            self.audit[f"{series.name}:{name}"] += changed
        return new

    def _masked(self, text: pl.Series) -> pl.Series:
        """Keep the last ``keep_last`` characters, ``*`` for the others (vectorised)."""
        keep = self.config.keep_last
        frame = pl.DataFrame({"v": text})
        length = pl.col("v").str.len_chars()
        tail = pl.when(length > keep).then(pl.col("v").str.slice(-keep)).otherwise(pl.lit(""))
        if keep == 0:
            tail = pl.lit("")
        return frame.select(tail.str.pad_start(length, "*")).to_series().alias(text.name)

    def _hashed(self, text: pl.Series) -> pl.Series:
        """Salted SHA-256 (hex) of each value, computed once per distinct value."""
        assert self._salt is not None, "open() resolves the salt before process()"
        salt = self._salt
        distinct = text.drop_nulls().unique()
        digests = [hashlib.sha256(salt + v.encode()).hexdigest() for v in distinct.to_list()]
        if not digests:
            return text
        return text.replace_strict(distinct, pl.Series(digests), return_dtype=pl.String)


def scan_frame(
    frame: pl.DataFrame,
    detect: list[str] | Literal["auto"] = "auto",
    patterns: dict[str, str] | None = None,
    keep_last: int = 4,
) -> pl.DataFrame:
    """Which text columns of ``frame`` hold personal data: one row per (column, detector)
    that fired, with how many values matched and one example, masked.

    The same detectors and checks as the step, read-only; what ``tideflow pii scan`` prints.
    """
    config = PiiConfig(detect=detect, patterns=patterns or {}, keep_last=keep_last, action="redact")
    step = Pii(config)
    rows: list[dict[str, object]] = []
    for column in step._scan_columns(frame):  # every text column
        series = frame.get_column(column)
        for name, detector in step._detectors:
            valid = detector.spans(series)
            if not valid.len():
                continue
            hits = series.str.contains_any(valid.to_list())
            rows.append(
                {
                    "column": column,
                    "detector": name,
                    "values": int(hits.sum()),
                    "of": series.len() - series.null_count(),
                    "example": step._masked(valid.sort().head(1))[0],
                }
            )
            # later detectors must not count what this one found (a card is no phone)
            marker = pl.Series([f"[{name.upper()}]"] * valid.len(), dtype=pl.String)
            series = series.str.replace_many(valid.implode(), marker.implode(), leftmost=True)
    schema = {
        "column": pl.String,
        "detector": pl.String,
        "values": pl.Int64,
        "of": pl.Int64,
        "example": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)
