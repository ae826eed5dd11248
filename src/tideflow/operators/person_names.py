"""Person names in free text, for the ``pii`` step's ``person_name`` detector.

No model and no download: a name is a capitalised first name followed by a capitalised
surname (optionally with a middle initial, ``Mary J. Blige``), both found in name lists
generated into the package from the US Census Bureau's 1990 name frequency files (public
domain; ``scripts/generate_name_lists.py``), or a courtesy title followed by a surname
(``Dr. Okafor``, ``Mrs Patel``).

Two rules keep ordinary text out:

- the second word may not be one that names places and organisations (``Virginia Beach``,
  ``Grant Park``, ``Chase Bank``): those words are surnames too, but after a first name they
  mostly end a place or a company;
- the first word may not be one of the words that are first names in the lists but are
  nearly always something else when capitalised (``In``, ``So``, ``Many``, ``Long``,
  ``Young``, ``Major``, ``Golden``...).

Found by runs: every run of capitalised words (``Yesterday Maria Gonzalez``) is split into
its adjacent pairs (and triples with an initial), so a capitalised word before a name does
not hide it. Everything is columnar: the runs of a batch are extracted once, their distinct
pairs checked against the lists with joins, and only the spans that pass are returned.
Measured by ``python -m benchmarks.pii_names`` (precision and recall on generated, labelled
sentences with names, near misses and none).
"""

from __future__ import annotations

import gzip
from functools import cache
from importlib import resources

import polars as pl

_WORD = r"[A-Z][A-Za-z'\u2019\-]*[a-z][A-Za-z'\u2019\-]*"
RUN = rf"(?:\d[\w\-/]* )?{_WORD}(?: (?:[A-Z]\. )?{_WORD})+"
"""A run of two or more capitalised words separated by single spaces (initials allowed),
with the number before it if there is one (``12 Warren Lane`` is an address)."""

TITLED = rf"\b(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof)\.? {_WORD}"
"""A courtesy title and a capitalised word."""

PLACE_AND_ORG_WORDS = frozenset(
    """
    AIRPORT ALLEY AVE AVENUE BAY BEACH BLVD BOULEVARD BUILDING CANYON CENTER CENTRE CHAPEL
    CITY CLINIC CLUB COLLEGE COMPANY CORNER CORP COUNTY COURT COVE CREEK CROSSING DRIVE
    ESTATES FALLS FARM FARMS GARDEN GARDENS HARBOR HARBOUR HEIGHTS HIGHWAY HILLS HOSPITAL
    HOTEL INC ISLAND JUNCTION LAKE LAKES LIBRARY LODGE LTD MALL MANOR MARKET MEADOWS
    MEMORIAL MOUNTAIN MUSEUM PARKWAY PASS PLACE PLAZA POINT PORT RANCH RIDGE RIVER ROAD
    SCHOOL SPRINGS SQUARE STADIUM STATION STORE STREET STUDIOS TERRACE THEATER THEATRE
    TOWER TOWERS TOWN TOWNSHIP TRAIL UNIVERSITY VALLEY VIEW VILLAGE
    MONDAY TUESDAY WEDNESDAY THURSDAY FRIDAY SATURDAY SUNDAY
    """.split()  # noqa: SIM905 - a word list reads better as text
)
"""Words that end place and organisation names (and weekdays); never the surname of a
detected name. Common surnames that are also such words (Hill, Hall, Woods, Park, Church,
Mills, Fields, Lane, House) are not here: they are names far more often than places."""

NOT_FIRST_NAMES = frozenset(
    """
    ALPHA AN ANGLE BRAIN CAN CARRY CHANCE CHINA CHRISTMAS DELTA DESIRE EAST EASTER ECHO ELSE
    ERA FORT GENESIS GOLDEN GRAND HA IN KING LADY LOAN LONG MA MAJOR MAN MANUAL MANY MARINE
    MARRY MISS MOUNT MY NEW NOBLE NORTH NU NUMBERS OMEGA PA PRINCE PRINCESS QUEEN ROYAL SAINT
    SAN SANTA SEASON SEE SO SON SOUTH SPRING STAR SUN SUNSHINE TEMPLE VI WEST YOUNG
    """.split()  # noqa: SIM905 - a word list reads better as text
)
"""First names in the lists that are almost always ordinary words when capitalised."""


@cache
def _names(resource: str) -> pl.Series:
    data = resources.files("tideflow.operators").joinpath("data", resource).read_bytes()
    return pl.Series("name", gzip.decompress(data).decode("ascii").split())


def first_names() -> pl.Series:
    """Upper-case first names (1990 US Census, male and female)."""
    return _names("first_names.txt.gz")


def last_names() -> pl.Series:
    """Upper-case surnames (1990 US Census)."""
    return _names("last_names.txt.gz")


def _lookup_form(token: pl.Expr) -> pl.Expr:
    """How a token is looked up: possessive cut, apostrophes dropped, upper case."""
    without_possessive = token.str.replace(r"['\u2019]s$", "")
    return without_possessive.str.replace_all(r"['\u2019]", "").str.to_uppercase()


def _display_form(token: pl.Expr) -> pl.Expr:
    """The token as it stands in the text, without a possessive ``'s``."""
    return token.str.replace(r"['\u2019]s$", "")


def _is_surname(token: pl.Expr) -> pl.Expr:
    """A surname, or a double-barrelled one with a listed part (``Smith-Jones``)."""
    parts = _lookup_form(token).str.split("-")
    known = last_names().implode()
    return parts.list.eval(pl.element().is_in(known)).list.any() & ~_lookup_form(token).is_in(
        sorted(PLACE_AND_ORG_WORDS)
    )


def person_name_spans(text: pl.Series) -> pl.Series:
    """The distinct person names found in ``text``, as they appear there (longest first
    when several overlap is the caller's job)."""
    runs = text.str.extract_all(RUN).explode().drop_nulls().unique()
    titled = text.str.extract_all(TITLED).explode().drop_nulls().unique()
    found: list[pl.Series] = []
    if runs.len():
        found.append(_pairs_in_runs(runs))
    if titled.len():
        frame = pl.DataFrame({"span": titled}).with_columns(
            last=pl.col("span").str.split(" ").list.last()
        )
        found.append(
            frame.filter(_is_surname(pl.col("last")))
            .select(_display_form(pl.col("span")).alias("span"))
            .to_series()
        )
    if not found:
        return pl.Series("span", [], dtype=pl.String)
    return pl.concat(found).unique()


def _pairs_in_runs(runs: pl.Series) -> pl.Series:
    """The names among the runs' adjacent words: (first, surname), (first, initial,
    surname) and (first, middle, surname) with a listed middle name.

    A pair right after a number (an address) or followed by another capitalised word
    that is no surname (``Grant Park Airport``, ``Morgan Stanley Customer Service``) is
    part of a longer proper name, not a person's."""
    tokens = (
        pl.DataFrame({"run": runs})
        .with_row_index("rid")
        .select("rid", pl.col("run").str.split(" ").alias("token"))
        .explode("token")
        .with_columns(pos=pl.int_range(pl.len()).over("rid"))
    )

    def shifted(k: int) -> pl.DataFrame:
        return tokens.select(
            "rid", (pl.col("pos") - k).alias("pos"), pl.col("token").alias(f"t{k}")
        )

    grams = (
        tokens.join(shifted(1), on=["rid", "pos"])
        .join(shifted(2), on=["rid", "pos"], how="left")
        .join(shifted(3), on=["rid", "pos"], how="left")
        .join(shifted(-1), on=["rid", "pos"], how="left")
    )
    firsts = first_names().implode()
    first = _lookup_form(pl.col("token"))
    first_ok = first.is_in(firsts) & ~first.is_in(sorted(NOT_FIRST_NAMES))
    after_number = pl.col("t-1").str.contains(r"^\d").fill_null(False)
    initial = pl.col("t1").str.contains(r"^[A-Z]\.$")
    middle = _lookup_form(pl.col("t1")).is_in(firsts) & _is_surname(pl.col("t2"))
    # what follows the name: nothing, or a surname (then the longer name is the one)
    free = pl.col("t2").is_null() | _is_surname(pl.col("t2"))
    pair = grams.filter(
        first_ok & ~after_number & ~initial & _is_surname(pl.col("t1")) & free
    ).select(
        pl.concat_str(pl.col("token"), _display_form(pl.col("t1")), separator=" ").alias("span")
    )
    three = grams.filter(
        first_ok
        & ~after_number
        & (initial | middle)
        & _is_surname(pl.col("t2"))
        & (pl.col("t3").is_null() | _is_surname(pl.col("t3")))
    ).select(
        pl.concat_str(
            pl.col("token"), pl.col("t1"), _display_form(pl.col("t2")), separator=" "
        ).alias("span")
    )
    return pl.concat([pair, three]).to_series().unique()
