"""Every property in the oracle's catalogue holds for dpo_ref itself, float64-exact.

The properties are defined once, in `dpo_ref/oracle/catalogue.py` (statement, strategy, check, reproduction),
and read by every runner: `dpo-ref verify`, `dpo_ref.verify`, the pytest plugin, and this suite, which runs
each of them on dpo_ref's own functions under `strict=True` (float64 inputs must give float64-exact results)
with the active Hypothesis profile's number of examples. `test_properties_bite.py` shows each one rejecting a
deliberately broken implementation (the corpus, `tests/corpus/`).
"""

from __future__ import annotations

import functools
import math

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dpo_ref
from dpo_ref.checks import strategies as dst
from dpo_ref.checks.properties import EPS_FLOAT64, TOLERANCE_K, LossSpec, preference_margin, tolerance_scale
from dpo_ref.oracle import verify
from dpo_ref.oracle.catalogue import LOGPS_CHECKS, MARGIN_CHECKS
from dpo_ref.oracle.report import FAILED, SKIPPED
from dpo_ref.variants import REGISTRY

OWN = {"dpo": dpo_ref.dpo_loss, "cdpo": dpo_ref.dpo_loss, "ipo": dpo_ref.ipo_loss}
CLASSIC = ("dpo", "cdpo", "ipo")
LOSS_CASES = [(c.name, v) for c in MARGIN_CHECKS for v in ("dpo", "cdpo", "ipo") if c.applies(v)]
LOGPS_CASES = [(c.name, average) for c in LOGPS_CHECKS for average in (False, True)]


def _assert_holds(report, name: str) -> None:
    result = report[name]
    assert result.status != FAILED, f"{result.message}\n{result.reproduction}"
    assert result.status != SKIPPED or name in ("reduction",), result.message  # dpo_ref returns per-example losses


@pytest.mark.parametrize("name, variant", LOSS_CASES)
def test_loss_property_holds_for_dpo_ref(name, variant):
    report = verify(OWN[variant], variant=variant, checks=[name], strict=True, max_examples=settings().max_examples)
    _assert_holds(report, name)


@pytest.mark.parametrize("name, average", LOGPS_CASES)
def test_logps_property_holds_for_dpo_ref(name, average):
    fn = functools.partial(dpo_ref.sequence_logps, average=average)
    report = verify(
        fn, level="logps", average=average, checks=[name], strict=True, max_examples=settings().max_examples
    )
    _assert_holds(report, name)


# --- a property of training dynamics, not of one call: not in the oracle's catalogue ------------------------


def tabular_policy_run(loss_fn, steps: int, lr: float) -> tuple[list[float], float]:
    """Gradient descent on a 4-way softmax policy for one pair (y_w = 0, y_l = 1), uniform reference.

    `loss_fn(pc, pr, rc, rr) -> (B,)`. Returns the trajectory of pi(y_l) and the final margin h.
    """
    theta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    reference = torch.log_softmax(torch.zeros(4, dtype=torch.float64), -1)
    rejected_probs = []
    for _ in range(steps):
        logp = torch.log_softmax(theta, -1)
        loss = loss_fn(logp[0:1], logp[1:2], reference[0:1], reference[1:2]).mean()
        (grad,) = torch.autograd.grad(loss, theta)
        with torch.no_grad():
            theta -= lr * grad
        rejected_probs.append(math.exp(float(logp[1].detach())))
    logp = torch.log_softmax(theta.detach(), -1)
    return rejected_probs, float((logp[0] - reference[0]) - (logp[1] - reference[1]))


def rejected_likelihood_collapses_under_dpo(dpo_fn, ipo_fn) -> None:
    """Deterministic preference: DPO drives pi(y_l) towards 0 for every beta; IPO's h settles at 1/(2 tau)."""
    for beta in (0.1, 0.5, 1.0, 5.0):
        probs, _ = tabular_policy_run(lambda *x, b=beta: dpo_fn(*x, beta=b)[0], steps=1000, lr=10.0 / beta)
        assert all(b <= a + 1e-12 for a, b in zip(probs, probs[1:])), f"pi(y_l) rose at beta={beta}"
        assert probs[-1] < 1e-3, f"DPO with beta={beta}: pi(y_l) = {probs[-1]:.3g} did not fall towards 0"
    for tau in (0.1, 0.5, 1.0):
        probs, h = tabular_policy_run(lambda *x, t=tau: ipo_fn(*x, tau=t)[0], steps=500, lr=0.1)
        assert abs(h - 1 / (2 * tau)) < 1e-6, f"IPO with tau={tau}: margin {h} did not settle at {1 / (2 * tau)}"
        assert probs[-1] > 1e-3, f"IPO with tau={tau}: pi(y_l) = {probs[-1]:.3g} collapsed"


def test_rejected_likelihood_collapses_under_dpo_for_dpo_ref():
    rejected_likelihood_collapses_under_dpo(dpo_ref.dpo_loss, dpo_ref.ipo_loss)


def test_rejected_likelihood_collapse_property_bites():
    def swapped(pc, pr, rc, rr, *, beta):  # chosen and rejected exchanged: pi(y_w) collapses instead
        return dpo_ref.dpo_loss(pr, pc, rr, rc, beta=beta)

    def ipo_target_one_over_tau(pc, pr, rc, rr, *, tau):
        return ((((pc - rc) - (pr - rr)) - 1 / tau) ** 2,)

    with pytest.raises(AssertionError):
        rejected_likelihood_collapses_under_dpo(swapped, dpo_ref.ipo_loss)
    with pytest.raises(AssertionError):
        rejected_likelihood_collapses_under_dpo(dpo_ref.dpo_loss, ipo_target_one_over_tau)


@settings(max_examples=40)
@given(batch=dst.preference_batches(), beta=dst.betas(), eps=dst.label_smoothings(), variant=st.sampled_from(CLASSIC))
def test_closed_forms_equal_the_registry_mpmath_references(batch, beta, eps, variant):
    """The closed forms the margin checks compare against (`LossSpec.losses`) equal the registry's mpmath
    references, which are written from the papers separately: the expected values are not dpo_ref.losses' own.

    Tolerance: both sides are exact up to float64 rounding of the inputs' combination into h (|dL/dh| 4 u S)
    and of the loss itself (u |L|); 16 u times that scale, as the verdict's bound, is generous."""
    spec = LossSpec(variant, beta=beta, label_smoothing=eps, tau=beta)
    x = batch.tensors()
    got = spec.losses(preference_margin(*x))
    rows = [tuple(mpmath.mpf(v) for v in row) + (mpmath.mpf(1), mpmath.mpf(1)) for row in zip(*(t.tolist() for t in x))]
    want = torch.tensor([float(v) for v in REGISTRY[variant].reference(rows, spec.coefficients)], dtype=torch.float64)
    tol = TOLERANCE_K * EPS_FLOAT64 * tolerance_scale(spec, x)
    assert bool(((got - want).abs() <= tol).all()), (variant, got, want)


def test_closed_forms_reject_a_wrong_reference():
    """The comparison above can fail: a closed form with the coefficient dropped misses the mpmath reference."""
    spec = LossSpec("dpo", beta=0.5)
    x = tuple(torch.tensor([v], dtype=torch.float64) for v in (-1.0, -3.0, -2.0, -2.5))
    wrong = LossSpec("dpo", beta=1.0).losses(preference_margin(*x))
    rows = [tuple(mpmath.mpf(float(t)) for t in x) + (mpmath.mpf(1), mpmath.mpf(1))]
    want = float(REGISTRY["dpo"].reference(rows, spec.coefficients)[0])
    assert abs(float(wrong) - want) > TOLERANCE_K * EPS_FLOAT64 * float(tolerance_scale(spec, x))
