"""The registry loads its components once, and no thread sees it half loaded: `tideflow
serve` validates pipelines on several request threads as soon as it starts (a request that
saw the registry mid-load failed with "a component kind has no registered types")."""

from __future__ import annotations

import threading
import time

import pytest

from tideflow import builtin
from tideflow.core.contracts import KINDS
from tideflow.registry import Registry


def test_threads_that_look_up_a_fresh_registry_all_see_every_component(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full = {kind: set(Registry().items(kind)) for kind in KINDS}
    register = builtin.register

    def slow_register(registry: Registry) -> None:
        # The first load imports every connector module: it takes a while, and other
        # threads run meanwhile (here the modules are imported already, so wait instead).
        time.sleep(0.2)
        register(registry)

    monkeypatch.setattr(builtin, "register", slow_register)
    registry = Registry()
    start = threading.Barrier(8)
    seen: list[dict[str, set[str]]] = []

    def look() -> None:
        start.wait()
        seen.append({kind: set(registry.items(kind)) for kind in KINDS})

    threads = [threading.Thread(target=look) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8
    assert all(view == full for view in seen)
