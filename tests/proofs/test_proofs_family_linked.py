"""Proof-linked tests for the loss family: dpo_ref.family's code, in float64 with autograd, against the
expressions the family proofs (16-22) checked, lambdified and evaluated in mpmath from the exact float inputs.

As in tests/proofs/test_proofs_linked.py, each check takes the implementation under test (`impl(pc, pr, rc, rr,
**coefficients)` returning per-example losses, or a PreferenceLoss), so the meta-tests at the bottom hand it a
deliberately wrong one and see it fail.

Tolerances, from first principles (u = 2^-53 ≈ 1.1e-16). The inputs are log-probs in [-60, 0], so the code's
margin h (three roundings of numbers <= 120 in size) is off from the exact margin of the float inputs by at
most 3 · 120 · u ≈ 4e-14, and beta h by 2 · 4e-14 = 8e-14 (beta <= 2). A loss then moves by its slope in
beta h times that, plus a few roundings of its own terms:
- EXO: slope in z = beta h is q(1-q)(z - logit(1-eps)) <= 0.3 + |logit(1-eps)|/4 <= 1.5 (eps >= 0.01); terms
  <= |log eps| + 1 <= 6: error <= 1.5 · 8e-14 + 10 · 6 u ≈ 1.3e-13.
- robust DPO: divided by 1 - 2 eps >= 0.1 (eps <= 0.45): slope <= 10, terms <= 10 (|z| + 1) <= 4.8e3:
  error <= 10 · 8e-14 + 10 · 4.8e3 u ≈ 6e-12.
- hinge, APO, NCA, BCO: slope <= 2 (beta <= 2, sigma' <= 1/4 or log-sigmoid' <= 1), terms <= |z| + 1 <= 241:
  error <= 2 · 8e-14 + 10 · 241 u ≈ 4e-13.
- SPPO and IPO: squares of numbers <= 120 + 1/(2 beta) <= 170 (beta, tau >= 0.01): slope <= 340, error
  <= 340 · 4e-14 + 4 · 170^2 u ≈ 2.7e-11.
All are compared with |got - want| <= atol + rtol |want|, rtol = 1e-9 and atol = 1e-9 (SPPO, IPO) or 1e-10
(the others): at least 15 times the bound, and far below any wrong constant, sign or factor.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import sympy as sp
import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from dpo_ref import family
from dpo_ref.losses import PreferenceLoss
from proofs import bounded_losses, exo_cdpo, hinge, ipo_noise, robust_dpo, shift_invariance, sppo_hard
from proofs.common import beta, eps, h, sigma, tau
from tests.corpus import family_broken
from tests.proofs import test_proofs_linked as linked
from tests.proofs.test_proofs_linked import AGREEMENT_EXAMPLES, DPS, NO_SHRINK, _lambdify, assert_close, logp, mp_margin

F64 = torch.float64
rho_w, rho_l, f = shift_invariance.rho_w, shift_invariance.rho_l, shift_invariance.f

# The proofs' expressions, as mpmath functions.
EXO = _lambdify((h, beta, eps), exo_cdpo.EXO)
EXO_H_STAR = _lambdify((beta, eps), exo_cdpo.H_STAR)
IPO_POPULATION = _lambdify((h, tau, eps), ipo_noise.POPULATION)
IPO_NOISY_H_STAR = _lambdify((tau, eps), ipo_noise.H_STAR)
ROBUST = _lambdify((h, beta, eps), robust_dpo.ROBUST_EXPLICIT)
ROBUST_SLOPE = _lambdify((h, beta, eps), robust_dpo.SLOPE)
CLEAN_DPO = _lambdify((h, beta), -sp.log(sigma(beta * h)))  # ℓ(h), what the flip average must give back
HINGE = _lambdify((h, beta), hinge.HINGE)
HINGE_ACTIVE_SLOPE = hinge.PROOF.steps[7].claim.rhs  # -beta below the margin (step 8); 0 above it (steps 2, 4)
SPPO = _lambdify((rho_w, rho_l, beta), sppo_hard.SPPO.subs({sppo_hard.rho_w: rho_w, sppo_hard.rho_l: rho_l}))
SPPO_GRAD = [
    _lambdify((rho_w, rho_l, beta), sp.diff(sppo_hard.SPPO, v).subs({sppo_hard.rho_w: rho_w, sppo_hard.rho_l: rho_l}))
    for v in (sppo_hard.rho_w, sppo_hard.rho_l)
]
LOG_RATIO_LOSSES = {  # name -> (dpo_ref function, the proofs' expression in (rho_w, rho_l, beta), lower, upper bound)
    "nca_pair": (family.nca_pair_loss, shift_invariance.NCA, bounded_losses.NCA_INF, None),
    "apo_zero": (family.apo_zero_loss, shift_invariance.APO_ZERO, 0, 2),
    "apo_down": (family.apo_down_loss, shift_invariance.APO_DOWN, 0, 2),
    "bco_pair": (family.bco_pair_loss, shift_invariance.BCO.subs(shift_invariance.delta, 0), None, None),
}
LOG_RATIO_EXPR = {k: _lambdify((rho_w, rho_l, beta), v[1]) for k, v in LOG_RATIO_LOSSES.items()}
LOG_RATIO_SHIFTED = {
    k: _lambdify((rho_w, rho_l, beta, f), shift_invariance.shifted(v[1])) for k, v in LOG_RATIO_LOSSES.items()
}


def mpf(*xs):
    return [mpmath.mpf(x) for x in xs]


def at(fn, *args) -> float:
    with mpmath.workdps(DPS):
        return float(fn(*mpf(*args)))


def margin_of(row) -> mpmath.mpf:
    return mp_margin(*row)


def losses(impl, *args, **kwargs) -> torch.Tensor:
    out = impl(*args, **kwargs)
    return out.losses if isinstance(out, PreferenceLoss) else out


def leaves(rows):
    return [torch.tensor(c, dtype=F64, requires_grad=True) for c in zip(*rows)]


def at_margin(hv: float):
    """Leaves (pc, pr, rc, rr) with margin exactly hv: pc = hv, the rest 0."""
    return [torch.tensor([v], dtype=F64, requires_grad=True) for v in (hv, 0.0, 0.0, 0.0)]


# ---- linked checks ------------------------------------------------------------------------------------


def check_exo(impl, rows, beta_, eps_):
    """exo_pair_loss == KL(Bern(σ(βh)) || Bern(1-ε)) in [0, -log ε); slope 0 at cDPO's h*, a minimum  [exo-cdpo]"""
    got = losses(impl, *leaves(rows), beta=beta_, label_smoothing=eps_)
    for i, row in enumerate(rows):
        with mpmath.workdps(DPS):
            want = float(EXO(margin_of(row), *mpf(beta_, eps_)))
        assert_close(got[i].item(), want, f"EXO loss, row {i}", atol=1e-10)
        assert -1e-10 <= got[i].item() < -math.log(eps_) + 1e-10, f"EXO loss out of [0, -log eps), row {i}"
    h_star = at(EXO_H_STAR, beta_, eps_)
    hs = torch.tensor([h_star, h_star + 0.5, h_star - 0.5], dtype=F64, requires_grad=True)
    zero = torch.zeros(3, dtype=F64)
    losses(impl, hs, zero, zero, zero, beta=beta_, label_smoothing=eps_).sum().backward()
    assert abs(hs.grad[0].item()) <= 1e-12, f"EXO slope at h* = {h_star}: {hs.grad[0].item()}"
    assert hs.grad[1].item() > 0 > hs.grad[2].item(), "cDPO's h* is not a minimum of EXO"


def check_ipo_noise(impl, rows, counts, tau_, eps_):
    """(1-ε) L(pair) + ε L(reversed pair) for ipo_norm_loss == the noisy population on h̄; slope 0 at
    h̄* = (1 - 2ε)/(2τ) and a minimum there  [ipo-noise]"""
    rows, counts = rows[: len(counts)], counts[: len(rows)]
    pc, pr, rc, rr = leaves(rows)
    n_w, n_l = (torch.tensor(c, dtype=F64) for c in zip(*counts))
    fwd = losses(impl, pc, pr, rc, rr, chosen_lengths=n_w, rejected_lengths=n_l, tau=tau_)
    rev = losses(impl, pr, pc, rr, rc, chosen_lengths=n_l, rejected_lengths=n_w, tau=tau_)
    pop = (1 - eps_) * fwd + eps_ * rev
    for i, (row, (cw, cl)) in enumerate(zip(rows, counts)):
        with mpmath.workdps(DPS):
            a_w, a_l, b_w, b_l = mpf(*row)
            h_bar = (a_w - b_w) / cw - (a_l - b_l) / cl
            want = float(IPO_POPULATION(h_bar, *mpf(tau_, eps_)))
        assert_close(pop[i].item(), want, f"noisy IPO population, row {i}", atol=1e-9)
    h_star = at(IPO_NOISY_H_STAR, tau_, eps_)
    cw, cl = counts[0]
    pcs = torch.tensor([cw * h_star, cw * (h_star + 0.5), cw * (h_star - 0.5)], dtype=F64, requires_grad=True)
    zero = torch.zeros(3, dtype=F64)
    nw, nl = torch.full((3,), cw, dtype=F64), torch.full((3,), cl, dtype=F64)
    fwd = losses(impl, pcs, zero, zero, zero, chosen_lengths=nw, rejected_lengths=nl, tau=tau_)
    rev = losses(impl, zero, pcs, zero, zero, chosen_lengths=nl, rejected_lengths=nw, tau=tau_)
    ((1 - eps_) * fwd + eps_ * rev).sum().backward()
    scale = 1 + 1 / tau_  # the size of the terms that cancel at h̄*
    assert abs(pcs.grad[0].item()) <= 1e-12 * scale, f"noisy IPO slope at h̄* = {h_star}: {pcs.grad[0].item()}"
    assert pcs.grad[1].item() > 0 > pcs.grad[2].item(), "h̄* is not a minimum of the noisy IPO population"


def check_robust(impl, rows, beta_, eps_):
    """robust_loss == [(1-ε)ℓ(h) - εℓ(-h)]/(1-2ε); autograd slope == -βσ(-βh) - εβ/(1-2ε) < 0; the flip
    average == ℓ(h)  [robust-dpo]"""
    xs = leaves(rows)
    got = losses(impl, *xs, beta=beta_, label_smoothing=eps_)
    got.sum().backward()
    flipped = losses(impl, *[xs[k].detach() for k in (1, 0, 3, 2)], beta=beta_, label_smoothing=eps_)
    for i, row in enumerate(rows):
        with mpmath.workdps(DPS):
            m, b, e = margin_of(row), *mpf(beta_, eps_)
            want, slope, clean = float(ROBUST(m, b, e)), float(ROBUST_SLOPE(m, b, e)), float(CLEAN_DPO(m, b))
        assert_close(got[i].item(), want, f"robust loss, row {i}", atol=1e-10)
        assert_close(xs[0].grad[i].item(), slope, f"dL/dlog pi(y_w), row {i}", atol=1e-10)
        assert_close(xs[1].grad[i].item(), -slope, f"dL/dlog pi(y_l), row {i}", atol=1e-10)
        average = (1 - eps_) * got[i].item() + eps_ * flipped[i].item()
        assert_close(average, clean, f"flip average, row {i}", atol=1e-10)


def check_hinge(impl, rows, beta_):
    """hinge_loss == max(0, 1 - βh); slope -β below the margin, 0 past it and at the kink  [hinge]"""
    xs = leaves(rows)
    got = losses(impl, *xs, beta=beta_)
    got.sum().backward()
    slope_active = float(HINGE_ACTIVE_SLOPE.subs(beta, beta_))
    for i, row in enumerate(rows):
        with mpmath.workdps(DPS):
            m = margin_of(row)
            want, gap = float(HINGE(m, mpmath.mpf(beta_))), float(mpmath.mpf(beta_) * m - 1)
        assert_close(got[i].item(), want, f"hinge loss, row {i}", atol=1e-10)
        if abs(gap) > 1e-12:  # rounding (<= 8e-14 in beta h) cannot put the row on the other side of the kink
            slope = slope_active if gap < 0 else 0.0
            assert xs[0].grad[i].item() == slope, f"hinge slope at beta h - 1 = {gap}, row {i}"
    kink = at_margin(1 / 0.5)  # beta h = 1 exactly
    out = losses(impl, *kink, beta=0.5)
    out.sum().backward()
    assert out.item() == 0.0 and kink[0].grad.item() == 0.0, "hinge: loss or gradient at beta h = 1 not 0"


def check_sppo(impl, rows, beta_):
    """sppo_hard_loss == (rho_w - 1/(2β))² + (rho_l + 1/(2β))² with the derived gradients; 0 with zero gradient at
    rho_w = 1/(2β), rho_l = -1/(2β)  [sppo-hard]"""
    xs = leaves(rows)
    got = losses(impl, *xs, beta=beta_)
    got.sum().backward()
    assert xs[2].grad is not None, "SPPO loss does not depend on the reference log-probs"
    for i, (a_w, a_l, b_w, b_l) in enumerate(rows):
        with mpmath.workdps(DPS):
            rw, rl = mpmath.mpf(a_w) - mpmath.mpf(b_w), mpmath.mpf(a_l) - mpmath.mpf(b_l)
            b = mpmath.mpf(beta_)
            want, g_w, g_l = float(SPPO(rw, rl, b)), float(SPPO_GRAD[0](rw, rl, b)), float(SPPO_GRAD[1](rw, rl, b))
        assert_close(got[i].item(), want, f"SPPO loss, row {i}", atol=1e-9)
        assert_close(xs[0].grad[i].item(), g_w, f"dL/dlog pi(y_w), row {i}", atol=1e-9)
        assert_close(xs[1].grad[i].item(), g_l, f"dL/dlog pi(y_l), row {i}", atol=1e-9)
        assert_close(xs[2].grad[i].item(), -g_w, f"dL/dlog pi_ref(y_w), row {i}", atol=1e-9)
    star = [torch.tensor([v], dtype=F64, requires_grad=True) for v in (0.5 / beta_ - 1.0, -0.5 / beta_ - 2.0)]
    ref = [torch.tensor([v], dtype=F64) for v in (-1.0, -2.0)]
    out = losses(impl, star[0], star[1], *ref, beta=beta_)
    out.sum().backward()
    scale = 1 + 1 / beta_  # rounding of the targets 1/(2 beta) and of the log-probs around them
    assert abs(out.item()) <= 1e-24 * scale**2 + 1e-28, f"SPPO loss at its minimiser: {out.item()}"
    assert max(abs(x.grad.item()) for x in star) <= 1e-12 * scale, "SPPO gradient at its minimiser"


def check_log_ratio_losses(name, impl, rows, beta_, f_):
    """NCA, APO-zero, APO-down, BCO == their expressions, within their bounds, and their change when f is added
    to both policy log-probs == the derived change  [shift-invariance, bounded-losses]"""
    _, _, low, high = LOG_RATIO_LOSSES[name]
    xs = leaves(rows)
    got = losses(impl, *xs, beta=beta_)
    moved = losses(impl, xs[0] + f_, xs[1] + f_, xs[2], xs[3], beta=beta_)
    for i, (a_w, a_l, b_w, b_l) in enumerate(rows):
        with mpmath.workdps(DPS):
            rw, rl = mpmath.mpf(a_w) - mpmath.mpf(b_w), mpmath.mpf(a_l) - mpmath.mpf(b_l)
            b = mpmath.mpf(beta_)
            want = LOG_RATIO_EXPR[name](rw, rl, b)
            # the shifted inputs as the code sees them: a + f rounded once to float64
            rw_f = mpmath.mpf(float(a_w + f_)) - mpmath.mpf(b_w)
            rl_f = mpmath.mpf(float(a_l + f_)) - mpmath.mpf(b_l)
            change = float(LOG_RATIO_EXPR[name](rw_f, rl_f, b) - want)
            want = float(want)
        assert_close(got[i].item(), want, f"{name} loss, row {i}", atol=1e-10)
        assert_close(moved[i].item() - got[i].item(), change, f"{name} change under f = {f_}, row {i}", atol=1e-10)
        if low is not None:
            assert got[i].item() > float(low) - 1e-12, f"{name} below its bound {low}, row {i}"
        if high is not None:
            assert got[i].item() < float(high) + 1e-12, f"{name} above its bound {high}, row {i}"


# ---- strategies and the runner ------------------------------------------------------------------------

ROWS = st.lists(st.tuples(logp, logp, logp, logp), min_size=1, max_size=4)
BETAS = st.floats(0.01, 2.0)
EPSS = st.floats(0.01, 0.45)
TAUS = st.floats(0.01, 2.0)
COUNTS = st.lists(st.tuples(st.integers(1, 64), st.integers(1, 64)), min_size=1, max_size=4)
SHIFTS = st.floats(-5.0, 5.0).filter(lambda v: abs(v) > 1e-3)

PROPERTIES = {
    "exo": (check_exo, dict(rows=ROWS, beta_=BETAS, eps_=EPSS)),
    "ipo_noise": (check_ipo_noise, dict(rows=ROWS, counts=COUNTS, tau_=TAUS, eps_=EPSS)),
    "robust": (check_robust, dict(rows=ROWS, beta_=BETAS, eps_=EPSS)),
    "hinge": (check_hinge, dict(rows=ROWS, beta_=BETAS)),
    "sppo": (check_sppo, dict(rows=ROWS, beta_=BETAS)),
    **{
        name: (
            lambda impl, _n=name, **kw: check_log_ratio_losses(_n, impl, **kw),
            dict(rows=ROWS, beta_=BETAS, f_=SHIFTS),
        )
        for name in LOG_RATIO_LOSSES
    },
}
IMPLS = {
    "exo": family.exo_pair_loss,
    "ipo_noise": family.ipo_norm_loss,
    "robust": family.robust_loss,
    "hinge": family.hinge_loss,
    "sppo": family.sppo_hard_loss,
    **{name: v[0] for name, v in LOG_RATIO_LOSSES.items()},
}


def run_property(name: str, impl, **overrides) -> None:
    linked.run_property(name, impl, PROPERTIES, **overrides)


@pytest.mark.parametrize("name", list(PROPERTIES))
def test_dpo_ref_family_matches_the_derivation(name):
    run_property(name, IMPLS[name], max_examples=AGREEMENT_EXAMPLES)


# ---- meta-tests: the linked checks reject deliberately wrong implementations ----------------------------


def _h(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def exo_targets_swapped(pc, pr, rc, rr, *, beta=0.1, label_smoothing=1e-3):
    """log(1 - eps) and log(eps) exchanged: the optimum moves to sigma(beta h) = eps."""
    z = beta * _h(pc, pr, rc, rr)
    e = label_smoothing
    return torch.sigmoid(z) * (F.logsigmoid(z) - math.log(e)) + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log1p(-e))


def ipo_norm_lengths_swapped(pc, pr, rc, rr, *, chosen_lengths, rejected_lengths, tau=0.1):
    """Divides the chosen log-ratio by the rejected count and vice versa."""
    h_bar = (pc - rc) / rejected_lengths - (pr - rr) / chosen_lengths
    return (h_bar - 1 / (2 * tau)) ** 2


def ipo_norm_per_example_counts_plus_one(pc, pr, rc, rr, *, chosen_lengths, rejected_lengths, tau=0.1):
    """family_broken's off-by-one count (TRL's unshifted mask), per example."""
    h_bar = (pc - rc) / (chosen_lengths + 1) - (pr - rr) / (rejected_lengths + 1)
    return (h_bar - 1 / (2 * tau)) ** 2


def robust_without_normaliser(pc, pr, rc, rr, *, beta=0.1, label_smoothing=0.1):
    """Forgets the division by 1 - 2 eps: no longer unbiased."""
    z = beta * _h(pc, pr, rc, rr)
    return -(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)


def hinge_kink_left(pc, pr, rc, rr, *, beta=0.1):
    """The right values, but the left slope -beta at the kink beta h = 1 (where(>= 0) instead of relu)."""
    u = 1 - beta * _h(pc, pr, rc, rr)
    return torch.where(u >= 0, u, torch.zeros_like(u))


def hinge_missing_beta(pc, pr, rc, rr, *, beta=0.1):
    return torch.relu(1 - _h(pc, pr, rc, rr))


def sppo_rejected_target_sign(pc, pr, rc, rr, *, beta=0.1):
    """Pushes the rejected log-ratio to +1/(2 beta) as well."""
    return (pc - rc - 0.5 / beta) ** 2 + (pr - rr - 0.5 / beta) ** 2


def apo_zero_on_the_margin(pc, pr, rc, rr, *, beta=0.1):
    """1 - sigma(beta h) + ...: the chosen term on the margin instead of on rho_w."""
    return 1 - torch.sigmoid(beta * _h(pc, pr, rc, rr)) + torch.sigmoid(beta * (pr - rr))


def nca_rejected_sign(pc, pr, rc, rr, *, beta=0.1):
    rho_w_, rho_l_ = pc - rc, pr - rr
    return -F.logsigmoid(beta * rho_w_) - 0.5 * F.logsigmoid(-beta * rho_w_) - 0.5 * F.logsigmoid(beta * rho_l_)


CAUGHT = [
    ("exo", family_broken.exo_is_cdpo),  # same optimum, other values: the value check sees it
    ("exo", exo_targets_swapped),
    ("ipo_noise", ipo_norm_lengths_swapped),
    ("ipo_noise", ipo_norm_per_example_counts_plus_one),
    ("robust", family_broken.robust_is_cdpo),  # the label-smoothing confusion of the issue
    ("robust", robust_without_normaliser),
    ("hinge", family_broken.hinge_is_dpo),
    ("hinge", hinge_kink_left),
    ("hinge", hinge_missing_beta),
    ("sppo", family_broken.sppo_no_reference),
    ("sppo", sppo_rejected_target_sign),
    ("nca_pair", family_broken.nca_is_dpo),
    ("nca_pair", nca_rejected_sign),
    ("apo_zero", family_broken.apo_zero_is_down),
    ("apo_zero", apo_zero_on_the_margin),
    ("apo_down", family_broken.apo_down_is_zero),
    ("bco_pair", family_broken.bco_swapped),
]


@pytest.mark.parametrize("name,broken", CAUGHT, ids=[f"{n}-{b.__name__}" for n, b in CAUGHT])
def test_family_linked_check_catches_a_wrong_implementation(name, broken):
    with pytest.raises(AssertionError):
        run_property(name, broken, **NO_SHRINK)


def test_the_optimum_check_alone_misses_exo_as_cdpo():
    """Why EXO's check compares values too: cDPO has EXO's optimum, so a slope test at h* cannot tell them apart."""
    beta_, eps_ = 0.5, 0.1
    h_star = at(EXO_H_STAR, beta_, eps_)
    hs = torch.tensor([h_star], dtype=F64, requires_grad=True)
    zero = torch.zeros(1, dtype=F64)
    family_broken.exo_is_cdpo(hs, zero, zero, zero, beta=beta_, label_smoothing=eps_).sum().backward()
    assert abs(hs.grad.item()) <= 1e-12


def as_preference_loss(fn):
    """A broken per-example function dressed as dpo_ref.family's (for the notebook comparisons)."""

    def wrapped(pc, pr, rc, rr, **kwargs):
        kwargs.pop("validate", None)
        out = fn(pc, pr, rc, rr, **kwargs)
        return PreferenceLoss(out, out.detach(), out.detach())

    wrapped.__name__ = fn.__name__
    return wrapped


BROKEN_FAMILY = {  # used by tests/proofs/test_proofs_notebook.py: each family proof's comparison must catch these
    "dpo_ref.family.exo_pair_loss": as_preference_loss(exo_targets_swapped),
    "dpo_ref.family.ipo_norm_loss": as_preference_loss(ipo_norm_lengths_swapped),
    "dpo_ref.family.robust_loss": as_preference_loss(family_broken.robust_is_cdpo),
    "dpo_ref.family.hinge_loss": as_preference_loss(hinge_kink_left),
    "dpo_ref.family.sppo_hard_loss": as_preference_loss(sppo_rejected_target_sign),
    "dpo_ref.family.nca_pair_loss": as_preference_loss(nca_rejected_sign),
    "dpo_ref.family.apo_zero_loss": as_preference_loss(apo_zero_on_the_margin),
    "dpo_ref.family.apo_down_loss": as_preference_loss(family_broken.apo_down_is_zero),
    "dpo_ref.family.bco_pair_loss": as_preference_loss(family_broken.bco_swapped),
}
