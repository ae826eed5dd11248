"""A cheap sanity check of a Parquet file's page headers before Polars decodes it.

Polars (2.x) aborts the whole process, uncatchably, on some damaged page headers: a negative
value count makes it try to allocate 2^61 bytes. pyarrow rejects such a file with an error,
but decoding it with pyarrow first would cost more than the decode itself. This module only
walks the page headers (Thrift compact structs of a few dozen bytes each, found through the
footer's column chunk offsets) and checks the counts and sizes that Polars trusts, so a damaged
file becomes a dead letter instead of a crash.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

HEADER_READ = 1024
"""Bytes read first at a page's start; more (up to ``MAX_HEADER_READ``) when statistics of
long values make the header longer."""
MAX_HEADER_READ = 4 * 1024 * 1024
MAX_PAGE_BYTES = 2**31 - 1


class _Unreadable(Exception):
    """The header could not be parsed (damaged, or a writer this parser does not follow):
    pyarrow, which fails cleanly, decides instead."""


class _Thrift:
    """The little of the Thrift compact protocol a page header needs: read and skip."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Unreadable("page header runs past the bytes read")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise _Unreadable("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, kind: int) -> None:
        if kind in (1, 2):  # boolean true/false live in the field header
            return
        if kind == 3:
            self.pos += 1
        elif kind in (4, 5, 6):
            self.varint()
        elif kind == 7:
            self.pos += 8
        elif kind == 8:
            length = self.varint()  # (not `pos += varint()`: pos would be read first)
            self.pos += length
        elif kind in (9, 10):
            head = self.byte()
            size = head >> 4
            if size == 15:
                size = self.varint()
            for _ in range(size):
                self.skip_element(head & 0x0F)
        elif kind == 11:
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self.skip_element(types >> 4)
                    self.skip_element(types & 0x0F)
        elif kind == 12:
            self.struct(lambda field, kind: False)
        else:
            raise _Unreadable(f"unknown Thrift type {kind}")
        if self.pos > len(self.data):
            raise _Unreadable("page header runs past the bytes read")

    def skip_element(self, kind: int) -> None:
        if kind in (1, 2):  # in lists, booleans take a byte
            self.pos += 1
        else:
            self.skip(kind)

    def struct(self, visit: Any) -> None:
        """Read a struct; ``visit(field, kind)`` reads a field it wants and returns True."""
        last = 0
        while True:
            head = self.byte()
            kind = head & 0x0F
            if kind == 0:
                return
            delta = head >> 4
            field = last + delta if delta else self.zigzag()
            last = field
            if not visit(field, kind):
                self.skip(kind)


def _page_header(data: bytes) -> tuple[dict[str, int], int]:
    """The checked numbers of one page header, and the header's length in bytes."""
    reader = _Thrift(data)
    found: dict[str, int] = {}
    inner = {5: "data", 7: "dictionary", 8: "data_v2"}
    names = {
        "data": {1: "num_values"},
        "dictionary": {1: "num_values"},
        "data_v2": {1: "num_values", 2: "num_nulls", 3: "num_rows", 5: "def_bytes", 6: "rep_bytes"},
    }

    def top(field: int, kind: int) -> bool:
        if field in (2, 3) and kind == 5:
            found["uncompressed" if field == 2 else "compressed"] = reader.zigzag()
            return True
        if field in inner and kind == 12:
            wanted = names[inner[field]]

            def nested(sub: int, sub_kind: int) -> bool:
                if sub in wanted and sub_kind == 5:
                    found[wanted[sub]] = reader.zigzag()
                    return True
                return False

            reader.struct(nested)
            return True
        return False

    reader.struct(top)
    return found, reader.pos


def check_pages(handle: BinaryIO, size: int) -> None:
    """Raise ``ValueError`` naming the first page header whose counts or sizes cannot be
    right: negative, a page outside the file, more values than its column chunk holds.

    Only what the Parquet format makes certain is checked, so a valid file is never refused;
    for a header this parser cannot read, pyarrow decodes the whole file and decides.
    """
    try:
        meta = pq.ParquetFile(handle).metadata
    except (OSError, pa.ArrowException) as exc:  # no footer, or a damaged one
        raise ValueError(f"not a readable Parquet file: {exc}") from exc
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            offsets = [o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o]
            if not offsets:
                continue
            start = min(offsets)
            end = min(start + max(chunk.total_compressed_size, 0), size)
            offset = start
            while offset < end:
                try:
                    found, length = _read_header(handle, offset, size)
                except _Unreadable:
                    _pyarrow_verdict(handle)  # rare: let pyarrow decide, whatever it costs
                    return
                where = f"row group {g} column {c}, page at byte {offset}"
                compressed = found.get("compressed", -1)
                uncompressed = found.get("uncompressed", -1)
                if not (0 <= compressed <= MAX_PAGE_BYTES and 0 <= uncompressed <= MAX_PAGE_BYTES):
                    raise ValueError(f"{where}: impossible page size")
                if offset + length + compressed > size:
                    raise ValueError(f"{where}: the page runs past the end of the file")
                counts = {k: v for k, v in found.items() if k not in ("compressed", "uncompressed")}
                if any(v < 0 for v in counts.values()):
                    raise ValueError(f"{where}: negative count in the page header")
                if counts.get("num_values", 0) > chunk.num_values:
                    raise ValueError(f"{where}: more values than its column chunk holds")
                if counts.get("num_rows", 0) > group.num_rows:
                    raise ValueError(f"{where}: more rows than its row group holds")
                offset += length + compressed


def _pyarrow_verdict(handle: BinaryIO) -> None:
    """Decode every page with pyarrow (which fails cleanly); ValueError if it cannot."""
    handle.seek(0)
    try:
        pq.ParquetFile(handle).scan_contents()
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"damaged Parquet pages: {exc}") from exc


def _read_header(handle: BinaryIO, offset: int, size: int) -> tuple[dict[str, int], int]:
    """Parse the page header at ``offset``, reading more when statistics make it long."""
    window = HEADER_READ
    while True:
        handle.seek(offset)
        data = handle.read(min(window, size - offset))
        try:
            return _page_header(data)
        except _Unreadable:
            if len(data) < window or window >= MAX_HEADER_READ:
                raise
            window *= 4
