"""The checked-in compliance matrix (docs/compliance.{json,md}) is the command's output, and the README agrees.

`dpo-ref matrix --out docs --readme README.md` writes all three; these tests fail if any of them was edited
by hand or left behind after a rerun.
"""

from __future__ import annotations

import json
import os

import pytest

from dpo_ref.errors import InputError
from dpo_ref.oracle import matrix

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def checked_in() -> dict:
    return json.loads(_read("docs", "compliance.json"))


def test_readme_summary_agrees_with_the_matrix(checked_in):
    readme = _read("README.md")
    assert matrix.replace_summary(readme, matrix.summary(checked_in)) == readme


def test_markdown_is_generated_from_the_json(checked_in):
    assert _read("docs", "compliance.md") == matrix.markdown(checked_in)


def test_matrix_records_versions_and_every_trl_loss_type(checked_in):
    from dpo_ref.family import TRL_LOSS_TYPES

    assert checked_in["versions"]["torch"] and checked_in["versions"]["transformers"]
    trl = {e["variant"] for e in checked_in["entries"] if e["library"] == "trl" and e["check"].startswith("search:")}
    assert set(TRL_LOSS_TYPES) <= trl
    for e in checked_in["entries"]:
        if e["status"] == "failed":
            assert e["message"], e


def test_summary_lists_each_failure():
    check = {
        "library": "lib",
        "version": "1.0",
        "variant": "ipo",
        "level": "library",
        "message": "m",
        "reproduction": None,
    }
    m = {
        "generated": "2026-01-01",
        "command": "dpo-ref matrix",
        "versions": {"python": "3", "torch": "2", "transformers": "5", "datasets": "1", "hypothesis": "6"},
        "settings": {},
        "seconds": 1.0,
        "libraries": [{"library": "lib", "version": "1.0", "installed": True}],
        "entries": [{**check, "check": "a", "status": "failed"}, {**check, "check": "b", "status": "passed"},
                    {**check, "variant": "dpo", "check": "a", "status": "passed"}],
    }  # fmt: skip
    text = matrix.summary(m)
    assert "| lib | 1.0 | ipo | library | a |" in text and "1 of 2 " in text
    assert "### lib 1.0: ipo, a" in matrix.markdown(m)


def test_readme_without_markers_is_a_usage_error():
    with pytest.raises(InputError, match="compliance-summary"):
        matrix.replace_summary("# no markers\n", "x")


def test_bad_output_directory_exits_2(tmp_path, capsys):
    from dpo_ref.cli import main

    assert main(["matrix", "--out", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unavailable_library_is_recorded_with_its_reason(monkeypatch):
    """Liger without its package or its wheel (registry unreachable): a row saying why, no checks, no crash."""
    from types import SimpleNamespace

    from dpo_ref.oracle.adapters import liger
    from dpo_ref.oracle.adapters.wheel import Unavailable

    def unreachable(wheel_path=None):
        raise Unavailable("pip download liger-kernel==0.8.5 failed: no network")

    monkeypatch.setattr(liger, "load", unreachable)
    monkeypatch.setattr(matrix, "LIBRARIES", {"Liger-Kernel": matrix.LIBRARIES["Liger-Kernel"]})
    lines = []
    m = matrix.run(SimpleNamespace(max_examples=1, search=1), out=lines.append)
    assert m["libraries"] == [
        {
            "library": "Liger-Kernel",
            "version": None,
            "installed": False,
            "source": "not available: pip download liger-kernel==0.8.5 failed: no network",
        }
    ]
    assert m["entries"] == [] and "Liger-Kernel: not available" in lines[0]
    assert "not available: pip download" in matrix.markdown(m)
