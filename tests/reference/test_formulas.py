"""docs/formulas.md (equation -> code -> proof -> test) is complete and in sync with the code.

`dpo_ref.docgen.formulas` builds the table from the formulas' docstrings, the proofs' `justifies` and the property
checks; these tests fail when a formula lacks its docstring sentence, names the wrong proof or an unknown
property, has no test, or when docs/formulas.md was not regenerated.
"""

from __future__ import annotations

import dataclasses
import types

import pytest

from dpo_ref.docgen import formulas as F


@pytest.fixture(scope="module")
def rows():
    return F.formulas()


def test_every_formula_names_its_proof_and_properties_and_has_tests(rows):
    assert F.problems(rows) == []


def test_the_table_covers_every_formula_module_and_is_checked_in(rows):
    public = F.public_functions()
    assert set(F.NOT_FORMULAS) <= set(public), "NOT_FORMULAS names a function that no longer exists"
    assert {r.name for r in rows} == set(public) - set(F.NOT_FORMULAS)
    assert {n.rsplit(".", 1)[0] for n in public} == set(F.FORMULA_MODULES)
    assert {"dpo_ref.losses.dpo_loss", "dpo_ref.family.robust_loss", "dpo_ref.rpo.rpo_objective"} <= {
        r.name for r in rows
    }
    assert F.OUTPUT.read_text(encoding="utf-8") == F.markdown(rows), (
        "docs/formulas.md is out of date: python -m dpo_ref.docgen.formulas --output docs/formulas.md"
    )


def test_every_proof_that_justifies_code_is_in_the_table(rows):
    justified = {name for proof in F._proofs_package().all_proofs() for name in proof.justifies}
    listed = {r.name for r in rows if r.proofs}
    assert justified <= listed | set(F.NOT_FORMULAS), justified - listed


def test_out_of_sync_docstrings_are_caught(rows):
    dpo = next(r for r in rows if r.name == "dpo_ref.losses.dpo_loss")
    cases = {
        "names proofs": dataclasses.replace(dpo, proofs_named=dpo.proofs_named[:-1]),  # a justifying proof missing
        "is not a function": dataclasses.replace(dpo, properties=("properties.check_no_such_thing",)),
        "is never run by": dataclasses.replace(dpo, properties=("properties.loop_sequence_logps",)),
        "lacks the": dataclasses.replace(dpo, properties=None),
        "no test": dataclasses.replace(dpo, tests=()),
    }
    for message, row in cases.items():
        found = F.problems([row])
        assert len(found) == 1 and message in found[0], (message, found)


def test_a_new_proof_shows_up_and_its_function_must_name_it(rows, monkeypatch):
    """What happens when proofs/family_*.py land: the table lists the proof by itself, and the test above fails
    until the justified function's docstring names it."""
    package = F._proofs_package()
    new = types.SimpleNamespace(name="new-proof", justifies=("dpo_ref.family.hinge_loss",))
    monkeypatch.setattr(package, "all_proofs", lambda real=package.all_proofs: [*real(), new])
    hinge = next(r for r in F.formulas() if r.name == "dpo_ref.family.hinge_loss")
    assert hinge.proofs[-1] == "new-proof"
    assert "[new-proof](../proofs/new_proof.py) ([lesson](lesson.md#new-proof))" in F.markdown([hinge])
    assert any("new-proof" in p for p in F.problems([hinge]))


def test_docstring_sentences_are_in_the_form_the_sync_writes(rows):
    """`--sync-docstrings` rewrites nothing today (every sentence is canonical), and after new proofs land it
    rewrites only the proof names, keeping the properties and the line length."""
    import ast
    import inspect

    for f in rows:
        source = (F.ROOT / f.path).read_text(encoding="utf-8")
        assert F.synced_source(source, f.name.rsplit(".", 1)[1], f.proofs) == source, f.name
    source = (F.ROOT / "dpo_ref" / "family.py").read_text(encoding="utf-8")
    new = F.synced_source(source, "hinge_loss", ("hinge", "shift-invariance"))
    hinge = next(n for n in ast.parse(new).body if isinstance(n, ast.FunctionDef) and n.name == "hinge_loss")
    doc = inspect.cleandoc(ast.get_docstring(hinge))
    assert F._names(F.PROOF_LINE.search(doc).group(1)) == ("hinge", "shift-invariance")
    hinge_row = next(r for r in rows if r.name == "dpo_ref.family.hinge_loss")
    assert F._names(F.PROPERTY_LINE.search(doc).group(1)) == hinge_row.properties
    assert max(map(len, new.splitlines())) <= 120
    assert len(new.splitlines()) - len(source.splitlines()) in (0, 1)  # only that paragraph changed
