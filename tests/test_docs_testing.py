"""docs/testing.md: every python example runs as written (its test functions are called, hypothesis included)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_the_three_examples():
    names = [name for block in BLOCKS for name in re.findall(r"^def (test_\w+)", block, flags=re.M)]
    assert names == ["test_my_feature", "test_my_mask", "test_engine_change"]


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: re.search(r"^def (test_\w+)", b, flags=re.M).group(1))
def test_example_runs(block):
    namespace: dict = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_") and callable(fn)]
    assert len(tests) == 1
    tests[0]()
