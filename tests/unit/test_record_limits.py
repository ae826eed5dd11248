"""max_record_bytes in the file readers and the webhook: a record longer than the limit is
dead-lettered with its origin and size, its neighbours load, and a resume from any position
reads exactly the rest. (The 2 GiB case with measured memory is tests/faults/test_f10.)
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from tideflow.connectors.files.settings import NDJSON_BLOCK, FileSourceConfig
from tideflow.connectors.files.source import FileSource
from tideflow.connectors.http.webhook import WebhookConfig, WebhookSource
from tideflow.core.contracts import Context

LIMIT = 4096


def ctx_in(folder: Path) -> Context:
    return Context("p", "files", folder, folder / ".state", threading.Event())


def read_all(
    ctx: Context, position: Any = None, **settings: Any
) -> tuple[list[int], list[str], list[str], list[Any]]:
    """ids read, dead-letter reasons and records, and the position after each batch."""
    source = FileSource(FileSourceConfig(**settings))
    source.open(ctx, position)
    ids: list[int] = []
    reasons: list[str] = []
    records: list[str] = []
    positions: list[Any] = []
    try:
        while (batch := source.read_batch()) is not None:
            if batch.data.height:
                ids += batch.data["id"].to_list()
            if batch.dead is not None:
                reasons += batch.dead["reason"].to_list()
                records += batch.dead["record"].to_list()
            positions.append(batch.position)
    finally:
        source.close()
    return ids, reasons, records, positions


def long_reason(origin: str, size: int) -> str:
    return f"{origin}: {size:,} bytes, longer than max_record_bytes ({LIMIT:,}); skipped unread"


def test_ndjson_lines_longer_than_the_limit_are_dead_lettered(tmp_path: Path) -> None:
    path = tmp_path / "in.ndjson"
    lines: list[bytes] = []
    expected_ids: list[int] = []
    long_lines: dict[int, int] = {}  # line number -> size
    for i in range(1, 41):
        if i in (1, 7, 8, 20):  # first, two in a row, one in the middle
            line = orjson.dumps({"id": i, "blob": "x" * (LIMIT + i)})
        elif i == 30:  # longer than a whole read block: skipped while it is read
            line = orjson.dumps({"id": i, "blob": "y" * (NDJSON_BLOCK + 10)})
        else:
            line = orjson.dumps({"id": i})
            expected_ids.append(i)
        lines.append(line)
        if len(line) > LIMIT:
            long_lines[i] = len(line)
    last = orjson.dumps({"id": 41, "blob": "z" * (LIMIT * 3)})  # no newline after it
    long_lines[41] = len(last)
    path.write_bytes(b"\n".join(lines) + b"\n" + last)
    ctx = ctx_in(tmp_path)
    ids, reasons, records, positions = read_all(
        ctx, path=str(path), max_record_bytes=LIMIT, batch_size=6
    )
    assert ids == expected_ids
    assert reasons == [long_reason(f"{path}: line {n}", size) for n, size in long_lines.items()]
    assert [orjson.loads(r)["bytes"] for r in records] == list(long_lines.values())
    assert all(len(r) < 600 for r in records)  # the record itself is never in the ledger
    for position in positions:
        # a crash after any batch: the next run reads exactly the rest, dead letters included
        done = 41 if position.get("file") is None else position["row"]
        rest_ids, rest_reasons, _, _ = read_all(
            ctx, position, path=str(path), max_record_bytes=LIMIT, batch_size=6
        )
        assert rest_ids == [i for i in expected_ids if i > done], position
        assert len(rest_reasons) == len([n for n in long_lines if n > done]), position


def test_csv_rows_up_to_the_limit_load_and_longer_ones_are_dead_lettered(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    block = 8192  # csv.block_size: rows longer than a block need the slow path
    rows = ["id,v"]
    for i in range(1, 61):
        if i == 10:
            rows.append(f"{i}," + "m" * (block * 2))  # longer than a block, under the limit
        elif i == 25:
            rows.append(f"{i}," + "L" * (block * 8))  # over the limit
        elif i == 26:
            rows.append(f"{i},a,b")  # malformed: still reported as such
        else:
            rows.append(f"{i},v{i}")
    path.write_text("\n".join(rows) + "\n")
    limit = block * 4
    settings = {"path": str(path), "max_record_bytes": limit, "batch_size": 7}
    settings["csv"] = {"block_size": block}
    ctx = ctx_in(tmp_path)
    ids, reasons, _, positions = read_all(ctx, **settings)
    assert ids == [i for i in range(1, 61) if i not in (25, 26)]
    assert reasons == [
        f"{path}: row 26: {len(rows[25]):,} bytes, longer than max_record_bytes "
        f"({limit:,}); skipped unread",
        f"{path}: row 27: expected 2 fields, found 3",
    ]
    for position in positions:
        rest, _, _, _ = read_all(ctx, position, **settings)
        done = 60 if position.get("file") is None else position["row"]
        assert rest == [i for i in ids if i > done], position


def test_a_long_csv_row_in_the_first_block_is_found_while_typing_columns(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,v\n1,a\n2," + "x" * 20_000 + "\n3,c\n")
    ids, reasons, _, _ = read_all(
        ctx_in(tmp_path), path=str(path), max_record_bytes=LIMIT, csv={"block_size": 4096}
    )
    assert ids == [1, 3]
    assert reasons == [
        f"{path}: row 3: 20,002 bytes, longer than max_record_bytes (4,096); skipped unread"
    ]


def test_a_json_document_longer_than_the_limit_is_one_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(orjson.dumps([{"id": i, "pad": "p" * 100} for i in range(100)]))
    small = tmp_path / "small.json"
    small.write_bytes(orjson.dumps([{"id": 1000}]))
    ids, reasons, _, _ = read_all(
        ctx_in(tmp_path), path=str(tmp_path / "*.json"), max_record_bytes=LIMIT
    )
    assert ids == [1000]
    assert len(reasons) == 1
    assert reasons[0].startswith(f"{path}: cannot decode json from row 1: ")
    assert f"{path.stat().st_size:,} bytes, longer than max_record_bytes ({LIMIT:,})" in reasons[0]


def post(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/x-ndjson"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, orjson.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


@pytest.mark.timeout(60)
def test_a_webhook_post_with_a_long_record_takes_the_others(tmp_path: Path) -> None:
    source = WebhookSource(WebhookConfig.model_validate({"port": 0, "max_record_bytes": LIMIT}))
    source.open(Context("p", "hook", tmp_path, tmp_path, threading.Event()), None)
    long = orjson.dumps({"id": 2, "blob": "b" * (LIMIT * 2)})
    body = b'{"id": 1}\n' + long + b'\n{"id": 3}\n'
    pool = ThreadPoolExecutor(1)
    try:
        answer = pool.submit(post, source.url, body)
        batch = source.read_batch()
        while batch is not None and batch.size == 0:
            batch = source.read_batch()
        assert batch is not None
        assert batch.data["id"].to_list() == [1, 3]
        assert batch.dead is not None
        assert batch.dead["reason"].to_list() == [long_reason("webhook post 1 line 2", len(long))]
        assert not answer.done()  # dead letters too wait for the checkpoint
        source.checkpointed(batch.position)
        assert answer.result(timeout=10)[0] == 200
    finally:
        source.close()
        pool.shutdown()
