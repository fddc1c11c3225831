"""The oracle on code nobody here wrote: every correct implementation in the corpus conforms, every broken one
is rejected with the right diagnosis named.

The corpus's outside group (`tests/corpus/`, group "outside" in its index) was written by a separate session
in its own styles, labelled independently of the oracle (`tests/meta/test_corpus_selfcheck.py` proves each label
against closed forms), before the oracle's diagnoses were implemented.
"""

from __future__ import annotations

import os

import pytest

from dpo_ref.oracle import adapters, load_target, verify
from tests.corpus import select
from tests.oracle.test_oracle import run_reproduction

CASES = select("outside")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = 15  # per check (full tier): the broken ones are caught well within it; the correct ones face every check
QUICK_EXAMPLES = 5  # per check (quick tier): every correct case still faces every check

ADAPT = {
    "loss_mask": adapters.from_loss_mask,
    "input_ids_mask": adapters.from_input_ids_mask,
    "concatenated": adapters.from_concatenated,
    "hidden_states": adapters.from_hidden_states,
}


def _run(case, full: bool):
    """The full tier runs every check with EXAMPLES; the quick tier runs a correct case with QUICK_EXAMPLES and
    a broken one with fail-fast (it stops at its first failing check; the diagnosis still runs)."""
    options = dict(case.options)
    adapter = options.pop("adapter", None)
    fn = ADAPT[adapter](load_target(case.target)) if adapter else case.target
    if not full:
        options["fail_fast"] = True
    examples = EXAMPLES if full or not case.conforms else QUICK_EXAMPLES
    return verify(fn, level=case.level, variant=case.variant, max_examples=examples, **options)


def _id(case) -> str:
    return case.target.rsplit("/", 1)[-1]


def test_corpus_is_large_and_varied():
    correct = [c for c in CASES if c.conforms]
    broken = [c for c in CASES if not c.conforms]
    assert len(correct) >= 15 and len(broken) >= 30
    assert {c.level for c in correct} == {"loss", "logps"} == {c.level for c in broken}
    assert len({c.diagnosis for c in broken if c.diagnosis}) >= 15


@pytest.mark.parametrize("case", [c for c in CASES if c.conforms], ids=_id)
def test_correct_implementation_conforms(case, full):
    report = _run(case, full)
    assert report.passed, report.to_text()


@pytest.mark.usefixtures("unshrunk_in_quick_tier")
@pytest.mark.parametrize("case", [c for c in CASES if not c.conforms], ids=_id)
def test_broken_implementation_is_rejected_with_its_diagnosis(case, full):
    report = _run(case, full)
    assert not report.passed, f"{case.style}\n{report.to_text()}"
    if case.diagnosis:
        named = [d.split(":", 1)[0] for d in report.diagnosis]
        # the corpus files both half-precision scorings under "float16-scoring"; the oracle names the dtype
        accepted = {case.diagnosis} | ({"bfloat16-scoring"} if case.diagnosis == "float16-scoring" else set())
        assert accepted & set(named), f"{case.style}: expected diagnosis {case.diagnosis!r}, got {report.diagnosis}"
    for failure in report.failures:  # every reproduction emitted reproduces what it claims
        if failure.reproduction and "load_target(" in failure.reproduction:
            run_reproduction(failure)


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # reproductions load targets by their relative path
