"""HTTP pages that stay broken: `on_error: skip` dead-letters the page and pages on.

A real API on loopback (FakeApi) serves one page broken on every request: its JSON cut in
half (status 200) or an error status after every retry. Expectations come from the API's
dataset (`make_record`), never from a run.
"""

from __future__ import annotations

import threading
from pathlib import Path

import orjson
import pytest

from tideflow.connectors.http.source import HttpSource
from tideflow.connectors.memory import clear, collected
from tideflow.core.contracts import Context
from tideflow.errors import ConfigError, PipelineError
from tideflow.run.plan import engine_for
from tideflow.spec.loader import load_pipeline_text
from tideflow.state.store import StateStore
from tideflow.testing.fake_api import FakeApi

pytestmark = pytest.mark.timeout(120)

RECORDS = 230
SIZE = 50
RETRY = "retry: {backoff: 0.01, max_backoff: 0.02, max_attempts: 3}"

STYLES = {
    # path, pagination, the key of the second page (ids 51-100), records_path
    "page": ("/page", f"{{style: page, size_param: per_page, page_size: {SIZE}}}", "2"),
    "offset": ("/offset", f"{{style: offset, page_size: {SIZE}}}", str(SIZE)),
    "link_header": ("/link", f"{{style: link_header, size_param: limit, page_size: {SIZE}}}", "50"),
}
RECORDS_PATH = {"page": "data.items", "offset": "items", "link_header": None}


def spec_text(api: FakeApi, style: str, on_error: str = "skip", name: str = "broken") -> str:
    path, paging, _ = STYLES[style]
    records_path = RECORDS_PATH[style]
    return (
        f"name: {name}\n"
        "source:\n"
        "  type: http\n"
        f"  url: {api.url(path)}\n"
        + (f"  records_path: {records_path}\n" if records_path else "")
        + f"  pagination: {paging}\n"
        f"  {RETRY}\n"
        f"  on_error: {on_error}\n"
        f"sink: {{type: memory, collector: {name}}}\n"
    )


def run(text: str, folder: Path) -> tuple[list[int], object]:
    spec = load_pipeline_text(text, str(folder / "p.yaml"))
    collector = spec.all_sinks[0].collector  # type: ignore[attr-defined]
    clear(collector)
    result = engine_for(spec, folder).run()
    got = collected(collector)
    ids = sorted(got["id"].to_list()) if got.height else []
    clear(collector)
    return ids, result


@pytest.mark.parametrize(
    ("style", "mode"),
    # an error page carries no Link header: link_header paging with a 500 is the next test
    [(s, m) for s in sorted(STYLES) for m in ("truncated", 500) if (s, m) != ("link_header", 500)],
)
def test_skip_dead_letters_the_broken_page_and_reads_every_other_one(
    tmp_path: Path, style: str, mode: str | int
) -> None:
    path, _, key = STYLES[style]
    with FakeApi(records=RECORDS, broken={(path, key): mode}) as api:
        ids, result = run(spec_text(api, style), tmp_path)
        assert api.stats.broken_served >= 1
    lost = set(range(SIZE + 1, 2 * SIZE + 1))  # the second page's records
    assert ids == [i for i in range(1, RECORDS + 1) if i not in lost]  # each once
    assert result.counts["http"]["dead_lettered"] == 1  # type: ignore[attr-defined]
    assert result.counts["http"]["report"]["pages skipped"] == 1  # type: ignore[attr-defined]
    (letter,) = StateStore(tmp_path / ".tideflow" / "state.db").ledger.letters("broken")
    record = orjson.loads(letter.record)
    assert record["url"].startswith(api.url(path))
    assert record["status"] == (200 if mode == "truncated" else 500)
    assert record["body"] and len(record["body"]) <= 503
    assert letter.reason.startswith("page skipped (on_error: skip): ")
    why = "did not return JSON" if mode == "truncated" else "HTTP 500 from GET"
    assert why in letter.reason


@pytest.mark.parametrize("style", sorted(STYLES))
def test_fail_stops_at_the_broken_page_every_time_as_before(tmp_path: Path, style: str) -> None:
    path, _, key = STYLES[style]
    with FakeApi(records=RECORDS, broken={(path, key): "truncated"}) as api:
        text = spec_text(api, style, on_error="fail")
        for _ in range(2):  # the rerun resumes at the broken page, and fails there again
            with pytest.raises(PipelineError, match=r"did not return JSON.*`on_error: skip`"):
                run(text, tmp_path)
        ids = collected("broken")
    assert ids.height == 0  # a failed run commits nothing past its last checkpoint


def test_link_paging_cannot_skip_an_error_page_without_a_link_header(tmp_path: Path) -> None:
    with (
        FakeApi(records=RECORDS, broken={("/link", "50"): 500}) as api,
        pytest.raises(PipelineError, match="this response has none"),
    ):
        run(spec_text(api, "link_header"), tmp_path)


@pytest.mark.parametrize("style", ["cursor", "next_url"])
def test_skip_is_refused_at_validation_where_the_body_names_the_next_page(
    tmp_path: Path, style: str
) -> None:
    text = (
        "name: refused\nsource:\n  type: http\n  url: http://127.0.0.1:9/x\n"
        f"  pagination: {{style: {style}}}\n  on_error: skip\n"
        "sink: {type: memory, collector: refused}\n"
    )
    with pytest.raises(ConfigError, match=f"cannot go past a broken page with `{style}` paging"):
        load_pipeline_text(text, str(tmp_path / "p.yaml"))


def test_many_broken_pages_in_a_row_fail_the_run(tmp_path: Path) -> None:
    broken: dict[tuple[str, str], str | int] = {("/page", str(p)): 503 for p in range(2, 9)}
    with (
        FakeApi(records=RECORDS * 3, broken=broken) as api,
        pytest.raises(PipelineError, match="6 broken pages in a row"),
    ):
        run(spec_text(api, "page"), tmp_path)


def test_a_skipped_page_is_not_fetched_again_after_a_restart(tmp_path: Path) -> None:
    """The position handed on with the dead-lettered page names the next page, so a run
    that stops right after it resumes there."""
    with FakeApi(records=RECORDS, broken={("/page", "2"): "truncated"}) as api:
        spec = load_pipeline_text(spec_text(api, "page"), str(tmp_path / "p.yaml"))
        config = spec.all_sources[0]
        ctx = Context("p", "http", tmp_path, tmp_path, threading.Event())
        source = HttpSource(config)  # type: ignore[arg-type]
        source.open(ctx, None)
        first = source.read_batch()
        broken = source.read_batch()
        source.close()
        assert first is not None and first.data.height == SIZE
        assert broken is not None and broken.data.height == 0
        assert broken.dead is not None and broken.dead.height == 1
        assert broken.position["next"] == {"page": 3}
        served = api.stats.broken_served
        resumed = HttpSource(config)  # type: ignore[arg-type]
        resumed.open(ctx, broken.position)
        rest = []
        while (batch := resumed.read_batch()) is not None:
            rest += batch.data["id"].to_list() if batch.data.height else []
        resumed.close()
        assert api.stats.broken_served == served  # page 2 was not asked for again
    assert rest == list(range(2 * SIZE + 1, RECORDS + 1))
