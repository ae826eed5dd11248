"""The ``http_enrich`` step: look records up in an API and merge the answer into them.

Lookups are made per *distinct* key in a batch (not per row), several at once on a thread
pool, and remembered in a TTL cache; the answers become a small frame that is joined to the
batch, so the merge itself is columnar. A key whose lookup fails after retries sends its
records to the dead-letter ledger with the status code and response body.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import polars as pl

from tideflow.connectors.http.client import (
    ClientLifecycle,
    HttpClient,
    describe_failure,
    dig,
    render,
)
from tideflow.connectors.http.settings import HttpEnrichConfig
from tideflow.core.contracts import JSON, MAIN_PORT, Context, Step, StepOutput
from tideflow.errors import PipelineError, TideflowError
from tideflow.registry import component

_NOT_FOUND = object()


class Failure(str):
    """The reason a lookup failed (kept apart from answers, which may be strings too)."""

    __slots__ = ()


class TtlCache:
    """A thread-safe LRU cache whose entries expire ``ttl`` seconds after they were stored."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[Any, ...]) -> Any:
        """The cached value, or ``_NOT_FOUND`` when absent or expired."""
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] < time.monotonic():
                self.misses += 1
                if item is not None:
                    del self._items[key]
                return _NOT_FOUND
            self._items.move_to_end(key)
            self.hits += 1
            return item[1]

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        """Store a value (evicting the least recently used past ``size``)."""
        if self.ttl <= 0 or self.size <= 0:
            return
        with self._lock:
            self._items[key] = (time.monotonic() + self.ttl, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@component("step", "http_enrich")
class HttpEnrich(Step[HttpEnrichConfig]):
    """Merge fields looked up in an HTTP API (per distinct key or per batch of keys)."""

    config_model = HttpEnrichConfig

    def __init__(self, config: HttpEnrichConfig) -> None:
        super().__init__(config)
        self._http = ClientLifecycle()
        self._ctx: Context | None = None
        self.cache = TtlCache(config.cache_ttl, config.cache_size)
        self._warned: set[str] = set()

    @property
    def client(self) -> HttpClient | None:
        """The HTTP client while open (it counts requests and retries)."""
        return self._http.client

    def report(self) -> dict[str, JSON] | None:
        """Requests sent and retried, for the run summary."""
        figures = self._http.figures()
        if figures:
            figures = {**figures, "cache hits": self.cache.hits}
        return figures or None

    def open(self, ctx: Context, state: JSON | None) -> None:
        """Create the client and the worker pool.

        Lookups are not interrupted by a stop request: a batch is enriched (or its failed
        records dead-lettered) before the checkpoint that covers it.
        """
        cfg = self.config
        self._ctx = ctx
        self._http.open(cfg, None, dict(cfg.headers), cfg.params, f"http-enrich-{ctx.name}")

    def close(self) -> None:
        """Stop the workers and close connections."""
        self._http.close()

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Look up each distinct key once (cache first), join the answers to the batch."""
        cfg = self.config
        missing = [k for k in cfg.keys if k not in batch.columns]
        if missing:
            raise PipelineError(
                f"http_enrich: key column(s) {', '.join(missing)} not in the batch; "
                f"columns: {', '.join(batch.columns)}"
            )
        if batch.height == 0:
            return StepOutput.of(batch)
        distinct = batch.select(cfg.keys).unique(maintain_order=True)
        keys = distinct.to_dicts()
        answers: dict[tuple[Any, ...], Any] = {}
        todo = []
        for key in keys:
            ident = tuple(key.values())
            cached = self.cache.get(ident)
            if cached is _NOT_FOUND:
                todo.append(key)
            else:
                answers[ident] = cached
        answers.update(self._lookup(todo))
        found: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for key in keys:
            answer = answers[tuple(key.values())]
            if isinstance(answer, Failure):
                failed.append({**key, "__reason": answer})
            elif answer is None and cfg.not_found == "dead_letter":
                failed.append(
                    {**key, "__reason": "not found: " + ", ".join(map(str, key.values()))}
                )
            else:
                found.append({**key, **self._fields(answer or {}, batch.columns)})
        out = batch
        dead = None
        if failed:
            bad = pl.from_dicts(failed, infer_schema_length=None).with_columns(
                [pl.col(k).cast(batch.schema[k]) for k in cfg.keys]
            )
            marked = batch.join(
                bad, on=cfg.keys, how="left", nulls_equal=True, maintain_order="left"
            )
            dead_rows = marked.filter(pl.col("__reason").is_not_null())
            dead = dead_rows.select(
                pl.struct(dead_rows.drop("__reason").columns).struct.json_encode().alias("record"),
                pl.col("__reason").alias("reason"),
            )
            out = marked.filter(pl.col("__reason").is_null()).drop("__reason")
        if found:
            lookup = pl.from_dicts(found, infer_schema_length=None).with_columns(
                [pl.col(k).cast(batch.schema[k]) for k in cfg.keys]
            )
            out = out.join(lookup, on=cfg.keys, how="left", nulls_equal=True, maintain_order="left")
        return StepOutput(outputs={MAIN_PORT: out}, dead=dead)

    def _fields(self, answer: Any, existing: list[str]) -> dict[str, Any]:
        cfg = self.config
        if not isinstance(answer, dict):
            answer = {"value": answer}
        names = cfg.fields if cfg.fields is not None else list(answer)
        merged = {}
        for name in names:
            column = cfg.prefix + name
            if name in cfg.keys and not cfg.prefix:
                continue
            if column in existing:
                if column not in self._warned and self._ctx is not None:
                    self._warned.add(column)
                    self._ctx.log.warning(
                        "http_enrich: response field %r is already a column; kept the "
                        "record's value (set `prefix` to keep both)",
                        column,
                    )
                continue
            merged[column] = answer.get(name)
        return merged

    def _lookup(self, keys: list[dict[str, Any]]) -> dict[tuple[Any, ...], Any]:
        """Answers for keys not in the cache: a dict/None per key, or a failure reason."""
        if not keys:
            return {}
        pool = self._http.pool
        assert pool is not None
        size = self.config.batch_size
        if size == 1:
            results = pool.map(self._one, keys)
            pairs = list(zip((tuple(k.values()) for k in keys), results, strict=True))
        else:
            groups = [keys[i : i + size] for i in range(0, len(keys), size)]
            pairs = [p for group in pool.map(self._many, groups) for p in group]
        for ident, answer in pairs:
            if not isinstance(answer, Failure):  # failures are asked again next time
                self.cache.put(ident, answer)
        return dict(pairs)

    def _one(self, key: dict[str, Any]) -> Any:
        """The answer for one key: an object, None (not found) or a :class:`Failure`."""
        cfg = self.config
        try:
            url = render(cfg.url, key)
            params = render(cfg.params, key)
            response = self._http.opened().send(cfg.method, url, params=params)
        except TideflowError as exc:
            return Failure(f"http_enrich: {exc}")
        if response.status_code == 404:
            return None
        if not response.ok:
            return Failure(f"http_enrich: {describe_failure(response, 300)}")
        try:
            return dig(response.json(), cfg.response_path)
        except ValueError as exc:
            return Failure(f"http_enrich: response from {response.url} is not JSON: {exc}")

    def _many(self, keys: list[dict[str, Any]]) -> list[tuple[tuple[Any, ...], Any]]:
        """Answers for a group of keys from one batched request."""
        cfg = self.config
        idents = [tuple(k.values()) for k in keys]
        try:
            response = self._http.opened().send(
                cfg.method if cfg.method != "GET" else "POST",
                render(cfg.url, {}),
                params=render(cfg.params, {}),
                json=keys,
            )
        except TideflowError as exc:
            failure = Failure(f"http_enrich: {exc}")
            return [(i, failure) for i in idents]
        if not response.ok:
            failure = Failure(f"http_enrich: {describe_failure(response, 300)}")
            return [(i, failure) for i in idents]
        try:
            items = dig(response.json(), cfg.response_path)
        except ValueError as exc:
            failure = Failure(f"http_enrich: response is not JSON: {exc}")
            return [(i, failure) for i in idents]
        if not isinstance(items, list):
            failure = Failure("http_enrich: batched lookup response is not a list of objects")
            return [(i, failure) for i in idents]
        by_key = {
            tuple(item.get(k) for k in cfg.keys): item for item in items if isinstance(item, dict)
        }
        return [(i, by_key.get(i)) for i in idents]
