"""The general forms of issue 24 item 3 (Plackett–Luce for every K, the β limits and the Hessian for any n, IPO's
Theorem 2 and the DPO half of Proposition 1): each new step rejects a subtly false version of itself, naming
the step, as the family steps do in test_proofs_family.py. The earlier steps are decided once per session."""

from __future__ import annotations

import dataclasses

import pytest
import sympy as sp

import proofs
from proofs import core as proofs_core
from proofs import implicit_reward_kl as irk
from proofs import ipo_psi, optimal_policy
from proofs import plackett_luce as pl
from proofs.common import beta, h, sigma, tau
from proofs.core import Equal, FreeOf, Proof, Step, StepFailed, Text, check_proof, run_proof

_REGISTERED = {id(s): s for p in proofs.all_proofs() for s in p.steps}
_DECIDED: dict[int, str] = {}
_check_step = proofs_core.check_step


def _check_registered_once(step):
    if id(step) not in _REGISTERED:
        return _check_step(step)
    if id(step) not in _DECIDED:
        _DECIDED[id(step)] = _check_step(step)
    return _DECIDED[id(step)]


@pytest.fixture(autouse=True)
def _registered_steps_once(monkeypatch):
    monkeypatch.setattr(proofs_core, "check_step", _check_registered_once)


U, K, k, j, i = pl.U, pl.K, pl.k, pl.j, pl.i
FALSE = [
    # plackett-luce: every step
    ("plackett-luce", 1, "rhs", sp.Sum(sp.log(pl.tail(k)) - U[k], (k, 2, K))),  # the first position forgotten
    ("plackett-luce", 2, "rhs", sp.Sum(sp.log(pl.tail(k + 1)) - U[k], (k, 1, K))),  # the placed response left out
    ("plackett-luce", 3, "rhs", -sp.log(sigma(h))),  # beta dropped
    ("plackett-luce", 4, "rhs", -1 + sp.Sum(sp.exp(U[i]) / pl.tail(pl.m), (pl.m, 1, i - 1))),  # own position missed
    ("plackett-luce", 5, "expr", pl.FORM_K.xreplace({U[k]: U[k] + pl.c})),  # the shift on the placed reward only
    ("plackett-luce", 6, "manifest", pl.R_other / (sp.exp(U[1]) + pl.R_other)),  # the sign flipped
    ("plackett-luce", 7, "expr", pl.GRAD[0]),  # the best response's component claimed positive
    # implicit-reward-kl: the any-n limits
    ("implicit-reward-kl", 3, "rhs", irk.p_i / irk.p_1 * sp.exp(irk.d_i / beta)),  # the sign of the exponent
    ("implicit-reward-kl", 4, "expected", sp.Integer(1)),  # the odds tend to 1 (the reference ignored)
    ("implicit-reward-kl", 5, "expected", irk.p_i / irk.p_1),  # the other limit
    ("implicit-reward-kl", 6, "rhs", 1 / irk.PIS[1]),  # inverted
    ("implicit-reward-kl", 7, "rhs", 1 - irk.P[1]),  # the complement
    # optimal-policy: the Hessian's quadratic form for any n
    ("optimal-policy", 12, "rhs", -beta * optimal_policy.S(optimal_policy.V[i] ** 2 / optimal_policy.Q[i] ** 2)),
    # ipo-psi: Prop. 1's DPO half and Theorem 2
    ("ipo-psi", 4, "x0", (ipo_psi.r_y - ipo_psi.r_yp) / (2 * beta)),  # half the margin
    ("ipo-psi", 6, "rhs", (h - ipo_psi.pstar / tau) ** 2 + ipo_psi.pstar * (1 - ipo_psi.pstar) / tau**2),  # target p*/τ
    (
        "ipo-psi",
        7,
        "rhs",
        ipo_psi.SS(ipo_psi.W * (ipo_psi.DELTA[ipo_psi.jj] - ipo_psi.DELTA[ipo_psi.kk]) ** 2)
        + ipo_psi.SS(
            ipo_psi.W * (ipo_psi.a_fn(ipo_psi.jj) - ipo_psi.a_fn(ipo_psi.kk) - ipo_psi.c(ipo_psi.jj, ipo_psi.kk)) ** 2
        ),
    ),  # the cross term dropped before it is shown to vanish
    (
        "ipo-psi",
        8,
        "lhs",
        ipo_psi.SS(
            ipo_psi.W
            * (ipo_psi.DELTA[ipo_psi.jj] - ipo_psi.DELTA[ipo_psi.kk])
            * (ipo_psi.a_fn(ipo_psi.jj) + ipo_psi.a_fn(ipo_psi.kk) - ipo_psi.c(ipo_psi.jj, ipo_psi.kk))
        ),
    ),
    ("ipo-psi", 9, "given", {ipo_psi.NU[2]: 0}),  # another response uncompared: y_3's log-ratio still matters
]


def test_every_new_step_has_a_false_instance():
    have = {(name, index) for name, index, _, _ in FALSE}
    want = {("plackett-luce", n) for n in range(1, 8)}
    want |= {("implicit-reward-kl", n) for n in range(3, 8)} | {("optimal-policy", 12)}
    want |= {("ipo-psi", n) for n in (4, 6, 7, 8, 9)}
    assert have == want, sorted(want ^ have)


@pytest.mark.parametrize("name,index,attr,value", FALSE, ids=[f"{n}-{k_}-{a}" for n, k_, a, _ in FALSE])
def test_a_subtly_false_general_step_fails_and_is_named(name, index, attr, value):
    proof = proofs.get(name)
    step = proof.steps[index - 1]
    edited = dataclasses.replace(step, claim=dataclasses.replace(step.claim, **{attr: value}))
    assert edited.unicode() != step.unicode()
    broken = dataclasses.replace(proof, steps=[*proof.steps[: index - 1], edited, *proof.steps[index:]])
    with pytest.raises(StepFailed) as info:
        check_proof(broken)
    assert str(info.value).startswith(f"proof '{name}', step {index} '{step.name.en}' failed")


def _one(claim, where=None):
    step = Step(Text("s", "步"), Text("", ""), claim, where)
    return run_proof(Proof("toy", Text("t", "t"), Text("i", "i"), (), [step])).steps[0]


def test_first_term_splits_only_a_sum_known_to_be_nonempty():
    """The induction rewrite peels sum_{k=a}^{b} only where b >= a follows from the assumptions."""
    f = sp.Function("f")
    n = sp.Symbol("n_any", integer=True)  # may be below 1: the sum may be empty
    assert _one(Equal(sp.Sum(f(k), (k, 1, K)), f(1) + sp.Sum(f(k), (k, 2, K)), via=("first_term",))).ok
    assert not _one(Equal(sp.Sum(f(k), (k, 1, n)), f(1) + sp.Sum(f(k), (k, 2, n)), via=("first_term",))).ok


def test_plackett_luce_induction_needs_its_hypothesis():
    claim = proofs.get("plackett-luce").steps[0].claim
    assert not _one(Equal(claim.lhs, claim.rhs, claim.via)).ok  # without the induction hypothesis


def test_the_shift_free_check_fails_for_a_loss_that_is_not_shift_invariant():
    assert not _one(FreeOf(pl.FORM_K.xreplace({U[j]: U[j] + pl.c}), pl.c, via=("simplify",))).ok
