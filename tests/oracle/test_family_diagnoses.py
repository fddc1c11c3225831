"""The family diagnoses' hit rate, on the tuning corpus and on the held-out one (issue 21, item 3).

Tuning: the broken family cases with a labelled diagnosis (tests/corpus/family_broken.py, groups "family" and
"family-extra"); held out: tests/corpus/family_heldout.py (group "family-heldout"), labelled before the diagnoses
were tuned and never used to tune them. A case is diagnosed right when the oracle rejects it and the FIRST
diagnosis it names is the labelled one. Measured (see the closing note of issue 21):

    before (diagnosis.py as of 947b599): tuning 16 of 17, held out 8 of 18
    after (family_alternatives: the closed-form catalogue's mistakes for every member, the claimed variant's own
           mistakes before other members, BCO's delta diagnosed at 1): tuning 17 of 17, held out 15 of 18

The held-out misses were visible when the "before" score was printed; the changes are the closed-form level's
mistakes carried over and were checked on the tuning set, but the held-out "after" figure is not blind.
"""

from __future__ import annotations

import pytest

import dpo_ref
from tests.corpus import load, select

TUNING = [c for g in ("family", "family-extra") for c in select(g, conforms=False) if c.diagnosis]
HELDOUT = select("family-heldout", conforms=False)
RATES = {"tuning": 17 / 17, "held-out": 15 / 18}  # the shares measured: a regression fails (the goal was 2/3)


def diagnosed(case) -> tuple[bool, list[str]]:
    report = dpo_ref.verify(load(case), variant=case.variant, max_examples=5, checks=["values"])
    first = report.diagnosis[0].split(":")[0] if report.diagnosis else None
    return (not report.passed and first == case.diagnosis), report.diagnosis


def score(cases) -> tuple[int, list[tuple[str, str, list[str]]]]:
    right, wrong = 0, []
    for case in cases:
        ok, names = diagnosed(case)
        right += ok
        if not ok:
            wrong.append((case.name, case.diagnosis, [n.split(":")[0] for n in names]))
    return right, wrong


@pytest.mark.parametrize("name, cases", [("tuning", TUNING), ("held-out", HELDOUT)])
def test_family_diagnoses_right_in_two_of_three(name, cases):
    assert len(HELDOUT) >= 15
    right, wrong = score(cases)
    assert right >= RATES[name] * len(cases), (name, f"{right}/{len(cases)}", wrong)


if __name__ == "__main__":  # PYTHONPATH=. python tests/oracle/test_family_diagnoses.py: the scores and the misses
    for name, cases in (("tuning", TUNING), ("held-out", HELDOUT)):
        right, wrong = score(cases)
        print(f"{name}: {right}/{len(cases)}")
        for w in wrong:
            print("   miss", *w)
