"""Every property in the catalogue bites: each is shown to reject a deliberately broken implementation.

The corpus index (`tests/corpus/__init__.py`) gives, for each broken implementation of the suite's set, the
checks it must fail (`fails`; `strict_fails` for the advisory checks, which fail only under strict);
`tests/oracle/test_oracle.py` runs them. These meta-tests keep that list complete: no property without a bug it
rejects, no bug that no property catches, no implementation in the corpus without its record.
"""

from __future__ import annotations

import ast
from pathlib import Path

from dpo_ref.oracle.catalogue import LOGPS_CHECKS, MARGIN_CHECKS
from tests.corpus import CASES, select

ROOT = Path(__file__).resolve().parents[2]


def _bitten(level: str, strict: bool) -> set[str]:
    return {check for c in select("suite", level, conforms=False) for check in (c.strict_fails if strict else c.fails)}


def test_every_loss_property_bites():
    missing = {c.name for c in MARGIN_CHECKS} - _bitten("loss", False) - _bitten("loss", True)
    assert not missing, f"loss checks no broken implementation is shown to fail: {missing}"


def test_every_logps_property_bites():
    missing = {c.name for c in LOGPS_CHECKS} - _bitten("logps", False) - _bitten("logps", True)
    assert not missing, f"log-prob checks no broken implementation is shown to fail: {missing}"


def test_advisory_checks_bite_only_under_strict():
    advisory = {c.name for c in (*MARGIN_CHECKS, *LOGPS_CHECKS) if c.advisory}
    assert advisory == _bitten("loss", True) | _bitten("logps", True)
    assert not advisory & (_bitten("loss", False) | _bitten("logps", False))


def test_every_broken_implementation_is_listed():
    """Every public function of every corpus module has a record in the index, and every record's function
    exists: the index is the whole corpus (broken and correct, every group)."""
    listed = {c.target for c in CASES}
    assert len(listed) == len(CASES), "two records for one target"
    paths = {t.rsplit(":", 1)[0] for t in listed}
    defined = set()
    for path in sorted(paths):
        tree = ast.parse((ROOT / path).read_text())
        defined |= {f"{path}:{n.name}" for n in tree.body if isinstance(n, ast.FunctionDef) and n.name[0] != "_"}
    assert defined == listed, defined ^ listed
    indexes = ("__init__.py", "pipeline_index.py")
    on_disk = {f"tests/corpus/{p.name}" for p in (ROOT / "tests" / "corpus").glob("*.py") if p.name not in indexes}
    assert on_disk == paths, on_disk ^ paths
