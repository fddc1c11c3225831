"""Precision grades for the family checks, as for DPO/cDPO/IPO.

A correct implementation that computes in float32 whatever its inputs passes, graded float32-level, and fails
under strict (float64 inputs then demand float64-exact results); dpo_ref's own float64 functions are graded
float64-exact (tests/oracle/test_family.py); an implementation with a constant off by 1e-3 (relative) fails
with and without strict.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dpo_ref
from dpo_ref.family import LOSS_FAMILY
from dpo_ref.variants import FAMILY_VARIANTS

EXAMPLES = 4  # per run: the values check alone, batches of up to 4 pairs


def _float32_inside(key: str):
    """The family's own formula evaluated in float32 (inputs cast down, the result cast back up)."""
    fn = LOSS_FAMILY[key].fn

    def loss(pc, pr, rc, rr, **kw):
        return fn(pc.float(), pr.float(), rc.float(), rr.float(), **kw).losses.double()

    return loss


def _values(fn, variant: str, strict: bool):
    return dpo_ref.verify(fn, variant=variant, max_examples=EXAMPLES, checks=["values"], strict=strict)


@pytest.mark.parametrize("variant", sorted(FAMILY_VARIANTS))
def test_float32_arithmetic_is_graded_float32_level_and_fails_strict(variant):
    key = FAMILY_VARIANTS[variant]
    report = _values(_float32_inside(key), variant, strict=False)
    assert report.passed, report.to_text()
    assert report.precision["grade"] == "float32-level", report.precision
    assert 1e-12 < report.precision["worst_relative_error"] < 1e-5
    assert not _values(_float32_inside(key), variant, strict=True).passed


def _h(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


# one constant off by 1e-3 relative each
def hinge_margin_off(pc, pr, rc, rr, beta=0.1):
    return torch.relu(1.001 - beta * _h(pc, pr, rc, rr))


def nca_weight_off(pc, pr, rc, rr, beta=0.1):
    w, lo = beta * (pc - rc), beta * (pr - rr)
    return F.softplus(-w) + 0.5005 * F.softplus(w) + 0.5 * F.softplus(lo)


def sppo_target_off(pc, pr, rc, rr, beta=0.1):
    return (pc - rc - 0.5005 / beta) ** 2 + (pr - rr + 0.5 / beta) ** 2


def ipo_norm_target_off(pc, pr, rc, rr, tau=0.1, chosen_lengths=None, rejected_lengths=None):
    hb = (pc - rc) / chosen_lengths - (pr - rr) / rejected_lengths
    return (hb - 1.001 / (2 * tau)) ** 2


def robust_denominator_off(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1):
    z = beta * _h(pc, pr, rc, rr)
    e = label_smoothing
    return ((1 - e) * F.softplus(-z) - e * F.softplus(z)) / (1.001 - 2 * e)


SUBTLY_WRONG = {
    "hinge": hinge_margin_off,
    "nca_pair": nca_weight_off,
    "sppo_hard": sppo_target_off,
    "ipo-norm": ipo_norm_target_off,
    "robust": robust_denominator_off,
}


@pytest.mark.usefixtures("unshrunk_in_quick_tier")
@pytest.mark.parametrize("variant", sorted(SUBTLY_WRONG))
def test_a_wrong_constant_fails_with_and_without_strict(variant):
    for strict in (False, True):
        report = dpo_ref.verify(SUBTLY_WRONG[variant], variant=variant, max_examples=10, checks=["values"],
                                strict=strict)  # fmt: skip
        assert not report.passed, report.to_text()
        assert report.precision is None  # no value check passed: no grade
