"""The loss family's coverage holes of issue 21, item 3, closed: each with the corpus case that fell through.

- Batch-coupled losses (AOT, unpaired AOT, SFT) are also called on fixed batches of 5, 17 and 96 pairs (the
  `large_batch` check): a loss sorted per chunk of 4 pairs is exact on every drawn batch (<= 4 pairs).
"""

from __future__ import annotations

import time

import pytest

import dpo_ref
from dpo_ref.oracle.family_checks import COUPLED_SIZES, FAMILY_BATCH
from dpo_ref.oracle.levels import check_names
from dpo_ref.variants import RECORDS
from tests.corpus import find, load, select

FEW = 2


def test_every_batch_coupled_record_is_checked_on_large_batches():
    coupled = [v for v in RECORDS if v.batch_coupled]
    assert {v.name for v in coupled} == {"aot", "aot_unpaired", "sft"}
    for v in coupled:
        assert "large_batch" in v.properties and v.slope is not None, v.name
        assert "large_batch" in check_names("loss", v.name)
    assert min(COUPLED_SIZES) > FAMILY_BATCH and max(COUPLED_SIZES) >= 96


def test_aot_sorted_per_chunk_only_a_large_batch_rejects():
    case = find("family_broken", "aot_sorted_per_chunk")
    assert case.fails == ("large_batch",)
    fn = load(case)
    others = [n for n in check_names("loss", "aot") if n not in ("call", "large_batch")]
    old = dpo_ref.verify(fn, variant="aot", max_examples=10, checks=others)
    assert old.passed, old.to_text()  # the checks before issue 21 accept it
    new = dpo_ref.verify(fn, variant="aot", max_examples=FEW)
    assert not new.passed
    assert [c.name for c in new.checks if c.failed] == ["large_batch"]
    assert new["large_batch"].message.startswith("batch of 5 pairs:"), new["large_batch"].message


@pytest.mark.parametrize("variant", ["aot", "aot_unpaired", "sft"])
def test_large_batch_passes_the_correct_ones_within_its_budget(variant):
    from dpo_ref.family import LOSS_FAMILY

    correct = {c.variant: load(c) for c in select("family", conforms=True)}[variant]
    for fn in (correct, LOSS_FAMILY[variant].fn):
        start = time.perf_counter()
        report = dpo_ref.verify(fn, variant=variant, checks=["large_batch"])
        assert report.passed, report.to_text()
        assert time.perf_counter() - start < 2.0  # ~0.05 s measured; the exact G would cost ~12 s
