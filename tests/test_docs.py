"""The docs cite tests that exist: every `tests/FILE.py::test_name` in docs/RELIABILITY.md names a
test function in that file (a renamed test would otherwise leave the table pointing at nothing)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reliability_table_cites_existing_tests():
    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    cited = set(re.findall(r"tests/(\w+\.py)::(\w+)", text))
    assert len(cited) > 50
    missing = [f"{f}::{name}" for f, name in sorted(cited)
               if not re.search(rf"^def {name}\(", (ROOT / "tests" / f).read_text(), re.M)]
    assert not missing, f"docs/RELIABILITY.md cites tests that do not exist: {missing}"
