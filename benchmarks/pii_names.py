"""Precision and recall of the ``pii`` step's ``person_name`` detector on labelled sentences.

    python -m benchmarks.pii_names                 # 3,000 sentences, seed 7
    python -m benchmarks.pii_names --sentences 10000 --seed 1

The sentences are generated here, independently of the detector's lists: customer-service
notes with "First Last" names (and "First M. Last") drawn from Faker's en_US provider,
near misses (capitalised common words, US places — many of them first names or surnames
too — companies, brands, holidays, street addresses) and sentences with no name at all.
Each sentence carries the exact names in it; a detected span counts as a true positive only
when it is exactly a labelled name. Targets (issue 21): recall >= 0.90 and precision >= 0.95
on "First Last" names.
"""

from __future__ import annotations

import argparse
import random
import re
from dataclasses import dataclass, field

import polars as pl

NAME_TEMPLATES = [
    "Customer {n} called about a late delivery.",
    "{n} asked for a refund on order {num}.",
    "Spoke with {n} at {hour} pm; will follow up tomorrow.",
    "Please forward the invoice to {n} before Friday.",
    "Escalated by {n} after the second complaint.",
    "{n}'s package arrived damaged and was returned.",
    "Left a voicemail for {n}, no answer yet.",
    "The account holder is {n}, verified by phone.",
    "Yesterday {n} reported the card as stolen.",
    "Per {n}, the address on file is outdated.",
    "Meeting notes: {n} and {m} agreed on the new plan.",
    "Refund approved by {n} (team lead).",
    "Hi team, {n} needs a callback regarding ticket {num}.",
    "Delivery was signed for by {n}.",
    "{n} mentioned that {m} handled the original order.",
    "Thanks {n}, we have updated your subscription.",
    "Order {num} placed by {n} was cancelled.",
    "Note from {n}: please do not call after 6 pm.",
    "Complaint forwarded to {n} in billing.",
    "Dear {n}, your replacement ships today.",
]
NEAR_MISS_TEMPLATES = [
    "Shipped from {place} to {place2} on Monday.",
    "Our {org} account was charged twice this month.",
    "Happy {holiday} from all of us at support!",
    "The warehouse in {place} is closed for inventory.",
    "Customer lives at {num} {street} {street_kind}, apartment {hour}.",
    "Returned the {brand} because the screen was cracked.",
    "Please Note: the {brand} warranty covers one year.",
    "Order Status: pending at the {place} depot.",
    "Transferred the call to {org} Customer Service.",
    "The {place} office reopens after {holiday}.",
    "Bought a {brand} at the {place} store last week.",
    "Invoice paid through {org} on {weekday}.",
    "Flight from {place} was delayed, package arrives {weekday}.",
    "Thank You for choosing {org} Premium Support.",
    "Pickup point moved to {place} {landmark}.",
]
NO_NAME_TEMPLATES = [
    "the customer asked about the refund policy for order {num}.",
    "package delayed due to weather, new estimate in {hour} days.",
    "password reset requested twice; account locked for safety.",
    "caller wanted to know the opening hours of the store.",
    "item {num} out of stock, backorder placed.",
    "no answer on the second attempt, will try again later.",
]
PLACES = [
    "Virginia Beach",
    "Austin",
    "Charlotte",
    "Jackson",
    "Madison",
    "Lincoln",
    "Florence",
    "Sydney",
    "Paris",
    "Victoria",
    "Orlando",
    "Phoenix",
    "Denver",
    "Tyler",
    "Dallas",
    "Houston",
    "Aurora",
    "Chelsea",
    "Savannah",
    "Salem",
    "Columbia",
    "Raleigh",
    "Cleveland",
    "Eugene",
    "Warren",
    "Irving",
    "Beverly Hills",
    "Santa Monica",
    "San Jose",
    "New York",
    "North Carolina",
    "West Virginia",
    "Long Beach",
    "Grant Park",
    "Jackson Heights",
    "Mount Vernon",
    "Fort Worth",
    "Palm Springs",
    "Kansas City",
    "Salt Lake City",
    "Charleston",
    "Springfield",
    "Chester",
    "Hamilton",
    "Franklin",
    "Marshall",
    "Clinton",
    "Carson City",
    "Elizabeth",
    "Troy",
    "Lafayette",
    "Tacoma",
    "Boise",
]
ORGS = [
    "Chase",
    "Wells Fargo",
    "Morgan Stanley",
    "Goldman Sachs",
    "Johnson Controls",
    "Charles Schwab",
    "Dell",
    "Ford",
    "Walmart",
    "Home Depot",
    "Best Buy",
    "Target",
    "General Motors",
    "American Express",
    "Bank of America",
    "Capital One",
    "Kroger",
    "Marriott",
    "Hilton",
    "Wendy",
    "Taylor Made",
    "Ben Franklin Crafts",
]
BRANDS = [
    "Apple Watch",
    "Google Pixel",
    "Galaxy Tab",
    "Kindle Paperwhite",
    "Surface Pro",
    "Echo Dot",
    "Instant Pot",
    "Magic Bullet",
    "Ray Ban",
    "Grand Cherokee",
    "Dyson Vacuum",
]
HOLIDAYS = [
    "Christmas Eve",
    "New Year",
    "Memorial Day",
    "Labor Day",
    "Black Friday",
    "Mothers Day",
    "Independence Day",
    "Easter Sunday",
]
STREETS = [
    "Main",
    "Oak",
    "Washington",
    "Lincoln",
    "Park",
    "Maple",
    "Elm",
    "Jefferson",
    "Madison",
    "Franklin",
    "Grant",
    "Lee",
    "Chestnut",
    "Walnut",
    "Warren",
]
STREET_KINDS = ["Street", "Avenue", "Road", "Boulevard", "Lane", "Drive", "Court"]
LANDMARKS = ["Mall", "Station", "Plaza", "Center", "Airport", "Square"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


@dataclass
class Sentence:
    """One generated sentence and the names in it."""

    text: str
    names: set[str] = field(default_factory=set)


def generate(count: int, seed: int) -> list[Sentence]:
    """Half with names, a third near misses, the rest without capitalised words at all."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)

    def name() -> str:
        first, last = fake.first_name(), fake.last_name()
        if rng.random() < 0.1:
            return f"{first} {rng.choice('ABCDEFGHJKLMNPRSTW')}. {last}"
        return f"{first} {last}"

    def fill(template: str) -> Sentence:
        values = {
            "num": str(rng.randint(1000, 99999)),
            "hour": str(rng.randint(1, 11)),
            "place": rng.choice(PLACES),
            "place2": rng.choice(PLACES),
            "org": rng.choice(ORGS),
            "brand": rng.choice(BRANDS),
            "holiday": rng.choice(HOLIDAYS),
            "street": rng.choice(STREETS),
            "street_kind": rng.choice(STREET_KINDS),
            "landmark": rng.choice(LANDMARKS),
            "weekday": rng.choice(WEEKDAYS),
        }
        names = set()
        if "{n}" in template:
            values["n"] = name()
            names.add(values["n"])
        if "{m}" in template:
            values["m"] = name()
            names.add(values["m"])
        return Sentence(template.format(**values), names)

    sentences = []
    for i in range(count):
        roll = i % 6
        if roll < 3:
            sentences.append(fill(rng.choice(NAME_TEMPLATES)))
        elif roll < 5:
            sentences.append(fill(rng.choice(NEAR_MISS_TEMPLATES)))
        else:
            sentences.append(fill(rng.choice(NO_NAME_TEMPLATES)))
    return sentences


def _contains_word(text: str, span: str) -> bool:
    if span not in text:
        return False
    return re.search(rf"(?<![\w'-]){re.escape(span)}(?![\w-])", text) is not None


def measure(sentences: list[Sentence]) -> dict[str, float]:
    """Span-level precision and recall of the detector (exact matches only)."""
    from tideflow.operators.person_names import person_name_spans

    found = person_name_spans(pl.Series([s.text for s in sentences])).to_list()
    true_positives = false_positives = false_negatives = 0
    for sentence in sentences:
        detected = {span for span in found if _contains_word(sentence.text, span)}
        # a span inside a longer detected span is the same finding (longest wins on replace)
        detected = {s for s in detected if not any(s != o and s in o for o in detected)}
        true_positives += len(detected & sentence.names)
        false_positives += len(detected - sentence.names)
        false_negatives += len(sentence.names - detected)
    precision = true_positives / max(true_positives + false_positives, 1)
    recall = true_positives / max(true_positives + false_negatives, 1)
    return {
        "sentences": len(sentences),
        "names": true_positives + false_negatives,
        "true_positives": true_positives,
        "false_positives": false_positives,
        "false_negatives": false_negatives,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
    }


def main() -> None:
    """Generate, detect, print the figures against the targets."""
    parser = argparse.ArgumentParser(description="person_name detector: precision and recall")
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--show", type=int, default=0, help="print this many misses of each kind")
    args = parser.parse_args()
    sentences = generate(args.sentences, args.seed)
    figures = measure(sentences)
    for key, value in figures.items():
        print(f"{key:>16}: {value}")
    ok = figures["precision"] >= 0.95 and figures["recall"] >= 0.90
    print(f"{'targets':>16}: precision >= 0.95, recall >= 0.90 -> {'met' if ok else 'NOT met'}")
    if args.show:
        from tideflow.operators.person_names import person_name_spans

        found = person_name_spans(pl.Series([s.text for s in sentences])).to_list()
        fps, fns = [], []
        for s in sentences:
            detected = {span for span in found if _contains_word(s.text, span)}
            fps += [(span, s.text) for span in detected - s.names]
            fns += [(name, s.text) for name in s.names - detected]
        print("false positives:", *fps[: args.show], sep="\n  ")
        print("false negatives:", *fns[: args.show], sep="\n  ")


if __name__ == "__main__":
    main()
