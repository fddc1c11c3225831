"""tests/full_tier.txt (tests moved to the full tier by node id) names only tests that exist, and conftest.py
marks exactly those: a renamed test or parameter would otherwise drop back into the quick tier unnoticed, or a
typo move nothing."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from conftest import FULL_TIER_LIST, full_tier_only

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _functions(path: str) -> set[str]:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("nodeid", sorted(full_tier_only()))
def test_each_entry_names_a_test_function_in_its_file(nodeid):
    path, _, name = nodeid.partition("::")
    assert os.path.isfile(os.path.join(ROOT, path)), f"{FULL_TIER_LIST}: no file {path}"
    assert re.sub(r"\[.*\]$", "", name) in _functions(path), f"{FULL_TIER_LIST}: {path} has no test {name}"


def test_an_entry_naming_no_test_is_caught():
    with pytest.raises(AssertionError, match="has no test"):
        test_each_entry_names_a_test_function_in_its_file("tests/meta/test_full_tier_list.py::test_renamed[x]")


def test_every_entry_is_collected_and_marked_slow():
    """Collect the listed files and check each listed node id (parameters included) is among the items."""
    listed = full_tier_only()
    files = sorted({n.split("::")[0] for n in listed})
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *files],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    collected = {line.strip() for line in run.stdout.splitlines() if "::" in line}
    missing = sorted(listed - collected)
    assert not missing, f"{FULL_TIER_LIST} names tests that are not collected: {missing}"


def test_a_listed_test_is_skipped_in_the_quick_tier():
    from conftest import pytest_collection_modifyitems

    class Item:
        def __init__(self, nodeid):
            self.nodeid, self.keywords, self.markers = nodeid, {}, []

        def add_marker(self, mark):
            self.markers.append(mark)
            self.keywords[mark.name] = mark

    class Config:
        def getoption(self, name):
            return False  # the quick tier

    listed, other = Item(sorted(full_tier_only())[0]), Item("tests/x.py::test_not_listed")
    pytest_collection_modifyitems(Config(), [listed, other])
    assert "slow" in listed.keywords and "skip" in listed.keywords
    assert not other.keywords
