"""The YAML editor shipped in the wheel (static/vendor/editor.js) is exactly what
scripts/editor/build.sh makes from editor.mjs and the versions package-lock.json pins, and
carries the licence of every package bundled into it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
VENDOR = ROOT / "src" / "tideflow" / "service" / "static" / "vendor"


@pytest.mark.slow
def test_the_editor_bundle_is_rebuilt_byte_for_byte_from_its_sources() -> None:
    if shutil.which("npm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must check the editor bundle: apt-get install npm")
        pytest.skip("npm is not installed")
    build = subprocess.run(
        ["bash", str(ROOT / "scripts" / "editor" / "build.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "match their sources" in build.stdout


def test_the_editor_bundle_names_the_licence_of_every_package_in_it() -> None:
    lock = (ROOT / "scripts" / "editor" / "package-lock.json").read_text(encoding="utf-8")
    notices = (VENDOR / "editor.LICENSES.txt").read_text(encoding="utf-8")
    for name in ("@codemirror/view", "@codemirror/lang-yaml", "@lezer/yaml", "style-mod"):
        assert f'"node_modules/{name}"' in lock
        assert f"\n{name} " in notices
    assert notices.count("(MIT)") == notices.count("\n" + "=" * 78 + "\n") // 2
    assert "Permission is hereby granted" in notices
    # Small enough for a wheel: one minified script, no source maps.
    assert (VENDOR / "editor.js").stat().st_size < 500_000
    assert sorted(p.name for p in VENDOR.iterdir()) == ["editor.LICENSES.txt", "editor.js"]
