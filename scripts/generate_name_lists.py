"""Generate the name lists of the ``pii`` step's ``person_name`` detector.

Source: the US Census Bureau's 1990 name frequency files (public domain: 88,799 surnames,
4,275 female and 1,219 male first names), as shipped in the sdist of the PyPI package
``names`` 0.3.0. Run from the project root:

    python scripts/generate_name_lists.py

It downloads that sdist with pip (or reads ``--sdist PATH``) and writes
``src/tideflow/operators/data/{first,last}_names.txt.gz``: one upper-case name per line,
most frequent first, apostrophes and spaces removed (``O'BRIEN`` is stored as ``OBRIEN``,
which is how the lookup normalises a token too).
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

OUT = Path("src/tideflow/operators/data")
MEMBERS = {
    "first_names.txt.gz": ("names/dist.male.first", "names/dist.female.first"),
    "last_names.txt.gz": ("names/dist.all.last",),
}


def _ranked(lines: list[tuple[float, str]]) -> list[str]:
    seen: dict[str, float] = {}
    for freq, name in lines:
        seen[name] = max(seen.get(name, 0.0), freq)
    return sorted(seen, key=lambda n: (-seen[n], n))


def main() -> None:
    """Write the two lists from the ``names`` sdist."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="names-0.3.0.tar.gz (default: download)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        sdist = args.sdist
        if sdist is None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-d",
                    scratch,
                    "names==0.3.0",
                ],
                check=True,
            )
            sdist = next(Path(scratch).glob("names-0.3.0.tar.gz"))
        with tarfile.open(sdist) as tar:
            OUT.mkdir(parents=True, exist_ok=True)
            for target, members in MEMBERS.items():
                rows: list[tuple[float, str]] = []
                for member in members:
                    handle = tar.extractfile(f"names-0.3.0/{member}")
                    assert handle is not None, member
                    for line in handle.read().decode("ascii").splitlines():
                        name, freq, *_ = line.split()
                        rows.append((float(freq), name.replace("'", "")))
                names = _ranked(rows)
                data = ("\n".join(names) + "\n").encode("ascii")
                (OUT / target).write_bytes(gzip.compress(data, mtime=0))
                print(f"{OUT / target}: {len(names)} names")


if __name__ == "__main__":
    main()
