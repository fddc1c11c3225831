"""Proof-linked tests: the formulas the proofs derive, lambdified, against dpo_ref's losses and torch autograd.

Each linked check is a function of the implementation under test (`impl`, with dpo_loss's / ipo_loss's
signature), so the meta-tests at the bottom can hand it a deliberately wrong implementation and see it
fail. The reference values come from the sympy expressions the proofs checked, evaluated with mpmath at
160 significant digits (DPS) from the exact float64 inputs: an independent computation, not dpo_ref called twice.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import sympy as sp
import torch
import torch.nn.functional as F
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import dpo_ref
from dpo_ref.plackett_luce import plackett_luce_losses
from dpo_ref.rpo import rpo_objective
from proofs import cdpo, dpo_gradient, dpo_loss, init_ln2, ipo, plackett_luce, rpo_nll
from proofs.common import LOGPS, Z, beta, eps, h, tau
from proofs.core import unfold

F64 = torch.float64
DPS = 160  # 1 - sigma(x) cancels catastrophically: |beta h| <= 240 here, so sigma(-x) ~ 1e-104 needs > 120 digits


def _lambdify(args, expr):
    return sp.lambdify(args, unfold(expr), modules="mpmath")  # sigma written out, d/dx evaluated


# The derived expressions, as functions. NLL keeps Z: the tests draw it at random, so they also check that
# the code's loss does not depend on the partition function (proof bt-cancellation).
NLL = _lambdify((*LOGPS, beta, Z), dpo_loss.NLL)
GRAD_CHOSEN = _lambdify((*LOGPS, beta), dpo_gradient.GRAD_CHOSEN)
GRAD_REJECTED = _lambdify((*LOGPS, beta), dpo_gradient.GRAD_REJECTED)
GRAD_REF_CHOSEN = _lambdify((*LOGPS, beta), sp.diff(dpo_loss.LOSS, LOGPS[2]))
GRAD_REF_REJECTED = _lambdify((*LOGPS, beta), sp.diff(dpo_loss.LOSS, LOGPS[3]))
SMOOTHED_NLL = _lambdify((h, beta, eps), cdpo.SMOOTHED_NLL)
CDPO_H_STAR = _lambdify((beta, eps), cdpo.H_STAR)
IPO_REGRESSION = _lambdify((h, tau), ipo.SYMMETRISED - ipo.CONSTANT)
IPO_H_STAR = _lambdify((tau,), ipo.H_STAR)
IPO_GAP_STAR = _lambdify((tau,), ipo.GAP_STAR)
INIT_LOSS = float(init_ln2.INIT_LOSS)
INIT_SLOPE = _lambdify((beta,), init_ln2.INIT_SLOPE)
CURVATURE = _lambdify((h, beta), init_ln2.CURVATURE)
PL_LOSS = _lambdify(plackett_luce.u, plackett_luce.PL_LOSS)
PL_GRAD = [_lambdify((*plackett_luce.u, beta), beta * g) for g in plackett_luce.GRAD]  # d/d log pi = beta d/du
RPO_J = _lambdify((*LOGPS, beta, rpo_nll.alpha, rpo_nll.T), rpo_nll.OBJECTIVE.subs(rpo_nll.MARGIN))
RPO_GRAD = [
    _lambdify((*LOGPS, beta, rpo_nll.alpha, rpo_nll.T), g.subs(rpo_nll.MARGIN))
    for g in (rpo_nll.GRAD_CHOSEN, rpo_nll.GRAD_REJECTED)
]


def mp(fn, *args) -> float:
    """Evaluate a lambdified expression at exact float inputs with DPS digits, rounded once to float."""
    with mpmath.workdps(DPS):
        return float(fn(*[mpmath.mpf(a) for a in args]))


def mp_margin(a_w: float, a_l: float, b_w: float, b_l: float) -> mpmath.mpf:
    with mpmath.workdps(DPS):
        return (mpmath.mpf(a_w) - mpmath.mpf(b_w)) - (mpmath.mpf(a_l) - mpmath.mpf(b_l))


def assert_close(got: float, want: float, what: str, rtol: float = 1e-9, atol: float = 1e-11) -> None:
    assert math.isfinite(got), f"{what}: got {got}"
    assert abs(got - want) <= atol + rtol * abs(want), f"{what}: got {got!r}, derived formula gives {want!r}"


def leaves(rows):
    cols = list(zip(*rows))
    return [torch.tensor(c, dtype=F64, requires_grad=True) for c in cols]


# ---- linked checks: each takes the implementation under test ------------------------------------------


def check_dpo_value(impl, rows, beta_, log_z):
    """dpo_loss == -log BT(reparameterised rewards with an arbitrary Z)   [proofs dpo-loss, bt-cancellation]"""
    losses = impl(*leaves(rows), beta=beta_).losses
    for i, row in enumerate(rows):
        want = mp(NLL, *row, beta_, math.exp(log_z))
        assert_close(losses[i].item(), want, f"DPO loss, row {i}")


def check_dpo_gradient(impl, rows, beta_):
    """autograd of dpo_loss == the derived partial derivatives   [proof dpo-gradient]"""
    xs = leaves(rows)
    impl(*xs, beta=beta_).losses.sum().backward()
    derived = (GRAD_CHOSEN, GRAD_REJECTED, GRAD_REF_CHOSEN, GRAD_REF_REJECTED)
    for x, fn, name in zip(xs, derived, dpo_ref.losses.LOGPS_NAMES):
        for i, row in enumerate(rows):
            assert_close(x.grad[i].item(), mp(fn, *row, beta_), f"dL/d{name}, row {i}")


def check_init(impl, rows, beta_):
    """at pi = pi_ref: loss ln 2 and dL/dlog pi(y_w) = -beta/2   [proof init-ln2]"""
    ref_w, ref_l = (torch.tensor(c, dtype=F64) for c in list(zip(*rows))[:2])
    pol_w, pol_l = ref_w.clone().requires_grad_(), ref_l.clone().requires_grad_()
    losses = impl(pol_w, pol_l, ref_w, ref_l, beta=beta_).losses
    losses.sum().backward()
    for i in range(len(rows)):
        assert_close(losses[i].item(), INIT_LOSS, f"initial loss, row {i}", rtol=1e-13, atol=1e-14)
        assert_close(pol_w.grad[i].item(), mp(INIT_SLOPE, beta_), f"initial slope, row {i}", rtol=1e-13, atol=1e-14)


def check_curvature(impl, margins, beta_):
    """d2L/dh2 by double backward == beta^2 sigma(beta h) sigma(-beta h), within (0, beta^2/4]   [init-ln2]"""
    hs = torch.tensor(margins, dtype=F64, requires_grad=True)
    zero = torch.zeros_like(hs)
    loss = impl(hs, zero, zero, zero, beta=beta_).losses.sum()  # margin = h
    (grad,) = torch.autograd.grad(loss, hs, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), hs)
    for i, m in enumerate(margins):
        want = mp(CURVATURE, m, beta_)
        assert_close(second[i].item(), want, f"curvature at h={m}", rtol=1e-8, atol=1e-13)
        assert 0 < want <= beta_**2 / 4


def check_cdpo_value(impl, rows, beta_, eps_):
    """dpo_loss(label_smoothing=eps) == expected NLL under label flips   [proof cdpo]"""
    losses = impl(*leaves(rows), beta=beta_, label_smoothing=eps_).losses
    for i, row in enumerate(rows):
        with mpmath.workdps(DPS):
            want = float(SMOOTHED_NLL(mp_margin(*row), mpmath.mpf(beta_), mpmath.mpf(eps_)))
        assert_close(losses[i].item(), want, f"cDPO loss, row {i}")


def check_cdpo_optimum(impl, beta_, eps_):
    """the cDPO gradient vanishes at h* = ln((1 - eps)/eps) / beta and not half a unit away   [proof cdpo]"""
    h_star = mp(CDPO_H_STAR, beta_, eps_)
    hs = torch.tensor([h_star, h_star + 0.5, h_star - 0.5], dtype=F64, requires_grad=True)
    zero = torch.zeros_like(hs)
    impl(hs, zero, zero, zero, beta=beta_, label_smoothing=eps_).losses.sum().backward()
    assert abs(hs.grad[0].item()) <= 1e-12 * max(1.0, beta_), f"cDPO gradient at h* = {h_star}: {hs.grad[0].item()}"
    assert hs.grad[1].item() > 0 > hs.grad[2].item(), "h* is not a minimum of the cDPO loss"


def check_ipo_value(impl, rows, tau_):
    """ipo_loss == symmetrised regression loss minus 1/(4 tau^2)   [proof ipo]"""
    losses = impl(*leaves(rows), tau=tau_).losses
    for i, row in enumerate(rows):
        with mpmath.workdps(DPS):
            want = float(IPO_REGRESSION(mp_margin(*row), mpmath.mpf(tau_)))
        assert_close(losses[i].item(), want, f"IPO loss, row {i}", rtol=1e-9, atol=1e-9)


def check_ipo_optimum(impl, tau_):
    """per pair h* = 1/(2 tau); on a tabular softmax over (a,b),(b,c),(a,c) the gaps 1/(3 tau)   [proof ipo]"""
    h_star = mp(IPO_H_STAR, tau_)
    hs = torch.tensor([h_star], dtype=F64, requires_grad=True)
    zero = torch.zeros_like(hs)
    out = impl(hs, zero, zero, zero, tau=tau_).losses
    out.sum().backward()
    assert abs(out.item()) <= 1e-12 * (1 + h_star**2), f"IPO loss at h* = {out.item()}"
    assert abs(hs.grad.item()) <= 1e-12 * (1 + h_star), f"IPO gradient at h*: {hs.grad.item()}"
    gap = mp(IPO_GAP_STAR, tau_)
    theta = torch.tensor([2 * gap, gap, 0.0], dtype=F64, requires_grad=True)
    log_pi = F.log_softmax(theta, dim=0)  # (3,)
    log_ref = torch.full((3,), math.log(1 / 3), dtype=F64)
    w, l = torch.tensor([0, 1, 0]), torch.tensor([1, 2, 2])  # pairs (a,b), (b,c), (a,c)
    impl(log_pi[w], log_pi[l], log_ref[w], log_ref[l], tau=tau_).losses.sum().backward()
    scale = 1 + 1 / tau_
    assert theta.grad.abs().max().item() <= 1e-11 * scale, f"tabular IPO gradient at the gaps: {theta.grad.tolist()}"


def check_sequence_logps(impl, seq):
    """sequence_logps == log of the product of the scored tokens' probabilities   [proof dpo-loss, step 4.5]

    The product side of the factorisation, log prod_t pi(y_t | x, y_<t), computed in mpmath from the logits
    with the HF shift (logits at t score label t + 1; label -100 is not scored).
    """
    logits_rows, label_rows = seq
    logits = torch.tensor(logits_rows, dtype=F64)  # (B, T, V)
    labels = torch.tensor(label_rows)  # (B, T)
    got = impl(logits, labels)
    for b in range(len(label_rows)):
        with mpmath.workdps(DPS):
            prob = mpmath.mpf(1)
            for t in range(1, len(label_rows[b])):
                y = label_rows[b][t]
                if y == -100:
                    continue
                row = [mpmath.mpf(v) for v in logits_rows[b][t - 1]]
                prob *= mpmath.exp(row[y]) / mpmath.fsum(mpmath.exp(v) for v in row)
            want = float(mpmath.log(prob))
        assert_close(got[b].item(), want, f"sequence log-prob, row {b}", rtol=1e-11, atol=1e-11)


def check_plackett_luce(impl, rows, beta_):
    """plackett_luce_losses (K = 3) and its autograd gradient == the derived loss and gradient  [plackett-luce]"""
    pol = torch.tensor([r[:3] for r in rows], dtype=F64, requires_grad=True)  # (B, 3), best first
    ref = torch.tensor([r[3:] for r in rows], dtype=F64)  # (B, 3)
    losses = impl(pol, ref, beta_)
    losses.sum().backward()
    for i, row in enumerate(rows):
        with mpmath.workdps(DPS):
            u = [mpmath.mpf(beta_) * (mpmath.mpf(a) - mpmath.mpf(b)) for a, b in zip(row[:3], row[3:])]
            want = float(PL_LOSS(*u))
            grads = [float(g(*u, mpmath.mpf(beta_))) for g in PL_GRAD]
        assert_close(losses[i].item(), want, f"Plackett-Luce loss, row {i}")
        for k in range(3):
            assert_close(pol.grad[i, k].item(), grads[k], f"dL/dlog pi(y_{k + 1}), row {i}")


def check_rpo(impl, rows, beta_, alpha_, counts):
    """rpo_objective over dpo_loss: value and autograd == J and its derived gradients (batch mean)  [rpo-nll]"""
    rows = rows[: len(counts)]
    counts = counts[: len(rows)]
    xs = leaves(rows)
    obj = impl(dpo_ref.dpo_loss(*xs, beta=beta_).losses, xs[0], torch.tensor(counts, dtype=F64), alpha_)
    obj.backward()
    B = len(rows)
    want = sum(mp(RPO_J, *row, beta_, alpha_, c) for row, c in zip(rows, counts)) / B
    assert_close(obj.item(), want, "RPO objective")
    for i, (row, c) in enumerate(zip(rows, counts)):
        for x, fn, name in zip(xs[:2], RPO_GRAD, ("chosen", "rejected")):
            assert_close(x.grad[i].item(), mp(fn, *row, beta_, alpha_, c) / B, f"dJ/dlog pi {name}, row {i}")


@st.composite
def sequences(draw):
    B, T, V = draw(st.integers(1, 3)), draw(st.integers(2, 5)), draw(st.integers(2, 6))
    logit = st.floats(-20.0, 20.0, allow_nan=False)
    logits = [[[draw(logit) for _ in range(V)] for _ in range(T)] for _ in range(B)]
    labels = [[draw(st.sampled_from([-100, *range(V)])) for _ in range(T)] for _ in range(B)]
    return logits, labels


# ---- strategies and a runner that the meta-tests reuse with a broken implementation -----------------------

logp = st.floats(-60.0, 0.0, allow_nan=False, allow_infinity=False)
ROWS = st.lists(st.tuples(logp, logp, logp, logp), min_size=1, max_size=4)
BETAS = st.floats(0.01, 2.0)
EPSS = st.floats(0.01, 0.49)
TAUS = st.floats(0.01, 2.0)
MARGINS = st.lists(st.floats(-200.0, 200.0), min_size=1, max_size=4)
LOG_Z = st.floats(-20.0, 20.0)
ROWS6 = st.lists(st.tuples(*[logp] * 6), min_size=1, max_size=4)
ALPHAS = st.floats(0.0, 5.0)
COUNTS = st.lists(st.integers(1, 64).map(float), min_size=1, max_size=4)

PROPERTIES = {
    "dpo_value": (check_dpo_value, dict(rows=ROWS, beta_=BETAS, log_z=LOG_Z)),
    "dpo_gradient": (check_dpo_gradient, dict(rows=ROWS, beta_=BETAS)),
    "init": (check_init, dict(rows=ROWS, beta_=BETAS)),
    "curvature": (check_curvature, dict(margins=MARGINS, beta_=BETAS)),
    "cdpo_value": (check_cdpo_value, dict(rows=ROWS, beta_=BETAS, eps_=EPSS)),
    "cdpo_optimum": (check_cdpo_optimum, dict(beta_=BETAS, eps_=EPSS)),
    "ipo_value": (check_ipo_value, dict(rows=ROWS, tau_=TAUS)),
    "ipo_optimum": (check_ipo_optimum, dict(tau_=TAUS)),
    "sequence_logps": (check_sequence_logps, dict(seq=sequences())),
    "plackett_luce": (check_plackett_luce, dict(rows=ROWS6, beta_=BETAS)),
    "rpo": (check_rpo, dict(rows=ROWS, beta_=BETAS, alpha_=ALPHAS, counts=COUNTS)),
}
IMPLS = {
    "dpo_value": dpo_ref.dpo_loss,
    "dpo_gradient": dpo_ref.dpo_loss,
    "init": dpo_ref.dpo_loss,
    "curvature": dpo_ref.dpo_loss,
    "cdpo_value": dpo_ref.dpo_loss,
    "cdpo_optimum": dpo_ref.dpo_loss,
    "ipo_value": dpo_ref.ipo_loss,
    "ipo_optimum": dpo_ref.ipo_loss,
    "sequence_logps": dpo_ref.sequence_logps,
    "plackett_luce": plackett_luce_losses,
    "rpo": rpo_objective,
}


# Each example checks up to four rows in 160-digit mpmath, so the agreement tests draw half the profile's
# examples (ci 30 -> 15, dev 100 -> 50); the thorough profile keeps its 1000. The meta-tests below keep the
# full count: they stop at the first counterexample anyway.
_PROFILE_EXAMPLES = settings.default.max_examples
AGREEMENT_EXAMPLES = _PROFILE_EXAMPLES if _PROFILE_EXAMPLES >= 1000 else max(10, _PROFILE_EXAMPLES // 2)


def run_property(name: str, impl, table: dict | None = None, **overrides) -> None:
    """Run the linked check `name` of `table` (default: this module's PROPERTIES) on `impl`."""
    check, strategies = (PROPERTIES if table is None else table)[name]

    @settings(database=None, **overrides)
    @given(**strategies)
    def prop(**kwargs):
        check(impl, **kwargs)

    prop()


@pytest.mark.parametrize("name", list(PROPERTIES))
def test_dpo_ref_matches_the_derivation(name):
    run_property(name, IMPLS[name], max_examples=AGREEMENT_EXAMPLES)


# ---- meta-tests: the linked checks reject deliberately wrong implementations ------------------------------


def _margin(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def wrong_reference_sign(pc, pr, rc, rr, *, beta=0.1, label_smoothing=0.0):
    """Adds the reference log-probs instead of subtracting them."""
    m = (pc + rc) - (pr + rr)
    return dpo_ref.PreferenceLoss(-F.logsigmoid(beta * m), m, m)


def missing_beta(pc, pr, rc, rr, *, beta=0.1, label_smoothing=0.0):
    """Forgets beta inside the sigmoid."""
    m = _margin(pc, pr, rc, rr)
    return dpo_ref.PreferenceLoss(-F.logsigmoid(m), m, m)


def right_value_wrong_gradient(pc, pr, rc, rr, *, beta=0.1, label_smoothing=0.0):
    """The correct loss value with half the gradient: only autograd-based checks can see it."""
    losses = dpo_ref.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing).losses
    return dpo_ref.PreferenceLoss(losses.detach() + 0.5 * (losses - losses.detach()), losses, losses)


def cdpo_swapped(pc, pr, rc, rr, *, beta=0.1, label_smoothing=0.0):
    """Puts eps on the preferred term and 1 - eps on the flipped one."""
    z = beta * _margin(pc, pr, rc, rr)
    losses = -label_smoothing * F.logsigmoid(z) - (1 - label_smoothing) * F.logsigmoid(-z)
    return dpo_ref.PreferenceLoss(losses, z, z)


def ipo_target_one_over_tau(pc, pr, rc, rr, *, tau=0.1):
    """Uses the target 1/tau instead of 1/(2 tau)."""
    m = _margin(pc, pr, rc, rr)
    return dpo_ref.PreferenceLoss((m - 1 / tau) ** 2, m, m)


def sequence_logps_without_shift(logits, labels):
    """Scores label t with the logits at t (no one-token shift): the classic off-by-one."""
    mask = labels != -100
    picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def plackett_luce_wrong_end(policy_logps, reference_logps, beta=0.1):
    """Accumulates the log-sum-exp from the best response instead of from the worst."""
    u = beta * (policy_logps - reference_logps)
    return (torch.logcumsumexp(u, dim=-1) - u).sum(-1)


def plackett_luce_missing_beta(policy_logps, reference_logps, beta=0.1):
    return plackett_luce_losses(policy_logps, reference_logps, 1.0)


def rpo_per_sequence(preference_losses, policy_chosen_logps, chosen_token_counts, rpo_alpha):
    """Forgets to divide the NLL by the token count."""
    return preference_losses.mean() + rpo_alpha * (-policy_chosen_logps).mean()


def rpo_sum_not_mean(preference_losses, policy_chosen_logps, chosen_token_counts, rpo_alpha):
    """Sums the preference losses over the batch instead of averaging them."""
    return preference_losses.sum() + rpo_alpha * (-policy_chosen_logps / chosen_token_counts).mean()


NO_SHRINK = dict(phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False)
CAUGHT = [
    ("dpo_value", wrong_reference_sign),
    ("dpo_value", missing_beta),
    ("dpo_gradient", missing_beta),
    ("dpo_gradient", right_value_wrong_gradient),
    ("init", right_value_wrong_gradient),
    ("curvature", missing_beta),
    ("curvature", right_value_wrong_gradient),
    ("cdpo_value", cdpo_swapped),
    ("cdpo_optimum", cdpo_swapped),
    ("ipo_value", ipo_target_one_over_tau),
    ("ipo_optimum", ipo_target_one_over_tau),
    ("sequence_logps", sequence_logps_without_shift),
    ("plackett_luce", plackett_luce_wrong_end),
    ("plackett_luce", plackett_luce_missing_beta),
    ("rpo", rpo_per_sequence),
    ("rpo", rpo_sum_not_mean),
]


@pytest.mark.parametrize("name,broken", CAUGHT, ids=[f"{n}-{b.__name__}" for n, b in CAUGHT])
def test_linked_check_catches_a_wrong_implementation(name, broken):
    with pytest.raises(AssertionError):
        run_property(name, broken, **NO_SHRINK)


def test_value_checks_alone_miss_a_gradient_bug():
    """Why the gradient checks exist: the half-gradient implementation has the right values."""
    run_property("dpo_value", right_value_wrong_gradient, max_examples=AGREEMENT_EXAMPLES)
    run_property("cdpo_value", right_value_wrong_gradient, max_examples=AGREEMENT_EXAMPLES)


# ---- the new code modules reject bad input naming the argument ----------------------------------------------


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: plackett_luce_losses(torch.zeros(2, 1), torch.zeros(2, 1)), "policy_logps must have shape"),
        (lambda: plackett_luce_losses(torch.zeros(2, 3), torch.zeros(2, 4)), "reference_logps has shape"),
        (lambda: plackett_luce_losses(torch.zeros(2, 3), torch.zeros(2, 3), beta=0.0), "beta"),
        (lambda: plackett_luce_losses(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), "policy_logps"),
        (lambda: rpo_objective(torch.zeros(2), torch.zeros(2), torch.ones(2), -1.0), "rpo_alpha"),
        (lambda: rpo_objective(torch.zeros(2), torch.zeros(3), torch.ones(2), 1.0), "same shape"),
    ],
)
def test_new_code_rejects_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
