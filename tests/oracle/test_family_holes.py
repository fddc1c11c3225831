"""The loss family's coverage holes of issue 21, item 3, closed: each with the corpus case that fell through.

- Batch-coupled losses (AOT, unpaired AOT, SFT) are also called on fixed batches of 5, 17 and 96 pairs (the
  `large_batch` check): a loss sorted per chunk of 4 pairs is exact on every drawn batch (<= 4 pairs).
- Family rewards are checked like DPO's (`rewards`, `rewards_detached`) against the registry's `rewards`.
- TRL's `sft` shape (the batch's token-mean NLL `.expand`-ed to (B,)) is recognised by the `call` probe
  (reduction "mean-expanded"), named in the report and checked as the batch mean.
"""

from __future__ import annotations

import time

import pytest

import dpo_ref
from dpo_ref.oracle.family_checks import COUPLED_SIZES, FAMILY_BATCH, coupled_batch
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


# ---------------------------------------------------------------------------------------------------
# Family rewards checked like DPO's: where the registry says the variant has implicit rewards


def test_rewards_checked_where_the_registry_defines_them():
    for v in RECORDS:
        assert ("rewards" in v.properties) == ("rewards_detached" in v.properties) == bool(v.rewards), v.name
    assert [v.name for v in RECORDS if not v.rewards] == ["sft"]  # reference-free NLL: no implicit reward


@pytest.mark.parametrize("case", select("family-extra"), ids=lambda c: c.name)
def test_family_extra_cases(case):
    report = dpo_ref.verify(load(case), variant=case.variant, max_examples=3)
    assert report.passed == case.conforms, report.to_text()
    failed = {c.name for c in report.checks if c.failed}
    assert failed == set(case.fails), (failed, case.fails)
    if "rewards" in case.fails or (case.conforms and "rewards" in case.style):
        assert "rewards" in report.detected
    if case.diagnosis is not None:
        assert any(d.startswith(case.diagnosis + ":") for d in report.diagnosis), report.diagnosis


def test_rewards_without_beta_named():
    report = dpo_ref.verify(load(find("family_broken", "nca_rewards_without_beta")), variant="nca_pair",
                            max_examples=3, checks=["rewards"])  # fmt: skip
    assert "the rewards are without the coefficient (beta taken as 1)" in report["rewards"].message
    report = dpo_ref.verify(load(find("family_broken", "simpo_rewards_with_reference")), variant="simpo",
                            max_examples=3, checks=["rewards"])  # fmt: skip
    assert "the rewards are beta (log pi - log pi_ref)" in report["rewards"].message


# ---------------------------------------------------------------------------------------------------
# TRL's sft shape: the batch's token-mean NLL expanded to every row, recognised and named


def test_trl_sft_shape_recognised_and_named():
    from dpo_ref.checks import family_properties as FP
    from dpo_ref.oracle.targets import MEAN_EXPANDED, LossTarget
    from tests.corpus.family_correct import sft_token_mean_expanded as fn

    report = dpo_ref.verify(fn, variant="sft", max_examples=FEW)
    assert report.passed, report.to_text()
    assert "as TRL's sft loss returns it (batch_loss.expand(batch_size))" in report.detected["reduction"]
    assert "expanded to every row" in report.to_text()
    target = LossTarget.from_callable(fn, "sft", "fn", "")
    assert target.detect_reduction({}) == MEAN_EXPANDED
    # read as per-example losses (before the shape was recognised) its rows are rejected one by one
    batch, lengths = coupled_batch(5)
    with pytest.raises(AssertionError, match="loss value: at index"):
        FP.check_values(lambda *a: fn(*a[:4], chosen_lengths=a[4], rejected_lengths=a[5]), FP.FamilySpec("sft"),
                        batch, lengths)  # fmt: skip


def test_trl_sft_shape_only_for_batch_coupled_losses():
    """A per-example variant's rows are its losses: one value copied to every row is not accepted there."""
    import torch.nn.functional as F

    def dpo_mean_expanded(pc, pr, rc, rr, beta=0.1):
        return F.softplus(-beta * ((pc - rc) - (pr - rr))).mean().expand(pc.size(0))

    report = dpo_ref.verify(dpo_mean_expanded, variant="hinge", max_examples=FEW, checks=["values"])
    assert report.detected["reduction"] == "per-example losses (B,)"
    assert not report.passed
