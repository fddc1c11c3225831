"""The registry (`dpo_ref.variants`): every record is complete and consistent with the code it names.

Each rule is a function returning the problems of one record, so the suite shows both that every real record
passes and that a record broken in that way is caught (a test that cannot fail proves nothing).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from dpo_ref import variants as V
from dpo_ref.docgen import variants as docgen
from dpo_ref.oracle.catalogue import MARGIN_CHECKS
from dpo_ref.oracle.family_checks import GENERAL_CHECKS

ROOT = Path(__file__).resolve().parents[2]
PROOF_SLUGS = set(re.findall(r'^\s+"([a-z0-9-]+)": "[a-z0-9_]+",$', (ROOT / "proofs/__init__.py").read_text(), re.M))
TABLES = {V.CLOSED_FORM: {c.name for c in MARGIN_CHECKS}, V.MPMATH: {c.name for c in GENERAL_CHECKS}}


def problems(v: V.Variant) -> list[str]:
    out = []
    params = inspect.signature(v.fn).parameters
    shared = sum(r.function == v.function for r in V.RECORDS if r is not v) > 0
    for p in v.params:
        if p.name not in params:
            out.append(f"{v.name}: {v.function} takes no {p.name}")
        elif params[p.name].default != p.default and not shared:  # dpo_loss serves dpo and cdpo: DPO's defaults
            out.append(f"{v.name}: {p.name} default {p.default} but the function's is {params[p.name].default}")
    if v.needs_lengths and "chosen_lengths" not in params:
        out.append(f"{v.name}: needs lengths but {v.function} takes none")
    out += [f"{v.name}: unknown proof {s}" for s in v.proofs if s not in PROOF_SLUGS]
    if not v.proofs and not v.no_proof:
        out.append(f"{v.name}: no proof and no reason why")
    if not v.proofs and "not derived yet" in v.no_proof:
        out.append(f"{v.name}: 'not derived yet' is not a reason; derive it or say why it has no proof")
    out += [f"{v.name}: no check {n} in its table" for n in v.properties if n not in TABLES[v.oracle]]
    if not {"values", "gradients"} <= set(v.properties):
        out.append(f"{v.name}: values and gradients must be checked")
    if v.name not in V.REGISTRY or V.REGISTRY[v.name] is not v:
        out.append(f"{v.name}: not in REGISTRY under its name")
    return out


@pytest.mark.parametrize("name", V.VARIANTS)
def test_every_record_is_complete(name):
    assert problems(V.REGISTRY[name]) == []


BROKEN = {
    "coefficient the function does not take": dict(params=(V.BETA, V.Param("gamma_typo", 0.5))),
    "default differs from the function's": dict(params=(V.Param("beta", 0.1), V.Param("gamma", 9.0))),
    "unknown proof": dict(proofs=("no-such-proof",)),
    "no proof and no reason": dict(proofs=(), no_proof=""),
    "a placeholder for a reason": dict(proofs=(), no_proof="not derived yet (issue 24)"),
    "a check its table lacks": dict(properties=V.GENERAL_PROPERTIES + ("monotone",)),
    "values not checked": dict(properties=("shift",)),
}


@pytest.mark.parametrize("what", BROKEN)
def test_a_broken_record_is_caught(what):
    broken = dataclasses.replace(V.REGISTRY["simpo"], **BROKEN[what])
    assert problems(broken), what


def test_names_and_aliases_are_unique_and_resolve():
    names = list(V.VARIANTS) + [a for v in V.RECORDS for a in v.aliases]
    assert len(names) == len(set(names))
    for v in V.RECORDS:
        assert all(V.get(a) is v for a in (v.name, *v.aliases))
    with pytest.raises(ValueError, match="variant must be one of"):
        V.get("no-such-loss")


def test_the_family_is_keyed_once_per_loss_function():
    assert len({v.function for v in V.LOSS_FAMILY.values()}) == len(V.LOSS_FAMILY) - 1  # dpo and cdpo: dpo_loss
    assert V.ORACLE_NAME["sigmoid"] == "dpo" and V.ORACLE_NAME["ipo_sum"] == "ipo"


def test_importing_the_registry_imports_neither_torch_nor_mpmath():
    import subprocess
    import sys

    code = "import sys, dpo_ref.variants; print('torch' in sys.modules, 'mpmath' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_docs_variants_page_is_generated_from_the_registry():
    checked_in = (ROOT / "docs/variants.md").read_text(encoding="utf-8")
    assert checked_in == docgen.render(), (
        "docs/variants.md is out of date: python -m dpo_ref.docgen.variants --output docs/variants.md"
    )
    for v in V.RECORDS:
        assert f"| `{v.name}` |" in checked_in
