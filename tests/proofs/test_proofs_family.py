"""The loss-family derivations (proofs 16-22): each step rejects a subtly false version of itself, naming the step.

For every step of every family proof, `FALSE` replaces one displayed field of its claim by a plausible wrong
value (a 1 - 2 eps for a 1 - eps, a missing beta, a flipped sign, a rate of 0 where the loss is not invariant,
a bound that is too tight). The edited proof must fail at exactly that step, with the StepFailed message that
`dpo-ref prove` prints. The earlier steps are the registered ones and are decided once per session.
"""

from __future__ import annotations

import dataclasses

import pytest
import sympy as sp

import proofs
from proofs import bounded_losses as bl
from proofs import core as proofs_core
from proofs import discopop, exo_cdpo, hinge, ipo_noise, robust_dpo, shift_invariance, simpo_sft_aot, sppo_hard
from proofs.common import LOGPS, beta, eps, h, margin, sigma, tau
from proofs.core import BOUNDED, StepFailed, check_proof

FAMILY = ["exo-cdpo", "ipo-noise", "robust-dpo", "hinge", "sppo-hard", "shift-invariance", "bounded-losses"]
FAMILY += ["discopop", "simpo-sft-aot"]

_REGISTERED = {id(s): s for name in FAMILY for s in proofs.get(name).steps}
_DECIDED: dict[int, str] = {}
_check_step = proofs_core.check_step


def _check_registered_once(step):
    """check_step, with each registered (unedited) step decided once per session; edited steps always."""
    if id(step) not in _REGISTERED:
        return _check_step(step)
    if id(step) not in _DECIDED:
        _DECIDED[id(step)] = _check_step(step)  # a registered step that fails is a failure of test_proof_holds
    return _DECIDED[id(step)]


@pytest.fixture(autouse=True)
def _registered_steps_once(monkeypatch):
    monkeypatch.setattr(proofs_core, "check_step", _check_registered_once)


a_w, a_l, b_w, b_l = LOGPS
ell = robust_dpo.ell
rho_w, rho_l, f = sppo_hard.rho_w, sppo_hard.rho_l, sppo_hard.f
sr_w, sr_l, sf = shift_invariance.rho_w, shift_invariance.rho_l, shift_invariance.f
s = hinge.s
q = exo_cdpo.q
LN2 = shift_invariance.LN2
u = discopop.u
k_ = simpo_sft_aot.i

# (proof, step, field of the claim, false value)
FALSE = [
    # exo-cdpo
    ("exo-cdpo", 1, "x0", 1 - 2 * eps),  # the optimum with 1 - 2 eps for 1 - eps
    ("exo-cdpo", 2, "manifest", beta * sigma(beta * h) ** 2),  # sigma(bh) sigma(-bh) read as sigma(bh)^2
    ("exo-cdpo", 3, "rhs", eps),  # the optimal probability taken as eps
    ("exo-cdpo", 4, "rhs", exo_cdpo.EXO_GRAD / beta),  # a beta dropped from the chain rule
    ("exo-cdpo", 5, "lhs", sp.Subs(sp.Derivative(exo_cdpo.CDPO, h), h, exo_cdpo.H_STAR / 2)),  # half the margin
    ("exo-cdpo", 6, "expr", -sp.log(1 - eps) - exo_cdpo.EXO_Q),  # the bound at the other end of (0, 1)
    ("exo-cdpo", 7, "expected", -sp.log(1 - eps)),  # the limit of the other direction
    # ipo-noise
    ("ipo-noise", 1, "rhs", (1 - eps) * (h - 1 / (2 * tau)) ** 2 + eps * (h + 1 / tau) ** 2),  # flipped target 1/tau
    ("ipo-noise", 2, "x0", (1 - eps) / (2 * tau)),  # (1 - eps) for (1 - 2 eps)
    ("ipo-noise", 3, "rhs", ((1 - eps) - sp.Rational(1, 2)) / (2 * tau)),  # a factor 2 too many
    ("ipo-noise", 4, "expr", (1 - 3 * eps) / (2 * tau)),  # positive only for eps < 1/3
    ("ipo-noise", 5, "manifest", eps / (2 * tau)),  # half the shrinkage
    ("ipo-noise", 6, "lhs", sp.Subs(ipo_noise.H_STAR, eps, sp.Rational(1, 3))),  # the wrong boundary
    # robust-dpo
    ("robust-dpo", 1, "lhs", eps * robust_dpo.ROBUST + (1 - eps) * robust_dpo.ROBUST_FLIPPED),  # weights swapped
    ("robust-dpo", 2, "rhs", -sp.log(sigma(beta * h)) - eps * beta * h),  # cDPO's coefficient, sign flipped
    ("robust-dpo", 3, "rhs", beta**2 * sigma(beta * h) * sigma(-beta * h) / (1 - 2 * eps)),  # the normaliser kept
    ("robust-dpo", 4, "manifest", -beta * sigma(-beta * h) - eps * beta),  # the slope's constant without 1 - 2 eps
    ("robust-dpo", 5, "expr", 1 - 3 * eps),  # positive only for eps < 1/3
    ("robust-dpo", 6, "expected", sp.Integer(0)),  # DPO's limit, not robust DPO's
    ("robust-dpo", 7, "rhs", ell(-h)),  # the flipped loss
    ("robust-dpo", 8, "x0", sp.log(robust_dpo.q_hat / (1 - robust_dpo.q_hat)) / (2 * beta)),  # logit p̃ / (2β)
    # hinge
    ("hinge", 1, "given", {h: (1 - s) / beta}),  # below the margin instead of above
    ("hinge", 2, "rhs", -beta),  # the active slope past the margin
    ("hinge", 3, "lhs", sp.Subs(hinge.HINGE, h, 1 / (2 * beta))),  # the kink at 1/(2 beta)
    ("hinge", 4, "expected", -beta),  # the left slope from the right
    ("hinge", 5, "expected", -beta / 2),  # the average of the one-sided slopes (a subgradient, not the limit)
    ("hinge", 6, "rhs", beta * h - 1),  # the sign of the hinge flipped
    ("hinge", 7, "manifest", 2 * s),  # a factor 2
    ("hinge", 8, "rhs", sp.Integer(-1)),  # beta dropped
    # sppo-hard
    ("sppo-hard", 1, "expected", {rho_w: 1 / beta, rho_l: -1 / beta}),  # the targets without the 1/2
    ("sppo-hard", 2, "manifest", sp.Matrix([[2, 0], [0, 1]])),  # a wrong curvature
    ("sppo-hard", 3, "lhs", sp.Subs(sppo_hard.SPPO, (rho_w, rho_l), (1 / beta, -1 / beta))),  # the loss at +-1/beta
    ("sppo-hard", 4, "rhs", 2 * (rho_w - rho_l)),  # as if the loss depended on the margin
    ("sppo-hard", 5, "x0", -(rho_w - rho_l) / 2),  # the margin for the sum
    # shift-invariance
    ("shift-invariance", 1, "expr", margin(a_w + sf, a_l, b_w, b_l)),  # f added to the chosen response only
    (
        "shift-invariance",
        2,
        "rhs",
        -beta * sigma(-beta * sr_w) + beta * sigma(beta * sr_w) / 2 - beta * sigma(beta * sr_l) / 2,
    ),  # the rejected term's sign flipped
    ("shift-invariance", 3, "rhs", sp.Integer(0)),  # NCA claimed invariant at that point
    ("shift-invariance", 4, "rhs", sp.Integer(0)),  # APO-zero claimed invariant at that point
    ("shift-invariance", 5, "manifest", beta * sigma(beta * sr_w) ** 2),  # sigma' read as sigma^2
    ("shift-invariance", 6, "rhs", sp.Integer(0)),  # BCO claimed invariant at that point
    # bounded-losses
    ("bounded-losses", 1, "x0", sp.log(3) / bl.beta),  # sigma(beta rho_w) = 3/4 instead of 2/3
    ("bounded-losses", 2, "expr", bl.NCA_REJECTED - sp.log(2) / 2),  # its value at rho_l = 0 as a lower bound
    ("bounded-losses", 3, "expected", bl.NCA_CHOSEN + sp.log(2) / 2),  # the value at rho_l = 0 as the limit
    ("bounded-losses", 4, "manifest", sigma(beta * bl.rho_w) + sigma(beta * bl.rho_l)),  # 1 - sigma(z) read as sigma(z)
    ("bounded-losses", 5, "expr", sp.Add(1, sp.Mul(-1, bl.APO_ZERO, evaluate=False), evaluate=False)),  # L < 1
    ("bounded-losses", 6, "expr", bl.APO_DOWN - 1),  # L > 1
    ("bounded-losses", 7, "expr", sp.Add(1, sp.Mul(-1, bl.APO_DOWN, evaluate=False), evaluate=False)),  # L < 1
    # discopop
    ("discopop", 1, "rhs", discopop.DISCOPOP.subs(discopop.tau, 2 * discopop.tau)),  # the weight's temperature doubled
    ("discopop", 2, "manifest", sigma(-u / tau) * sp.log(sigma(u)) + sigma(u / tau) * sp.exp(-u)),  # sign
    ("discopop", 3, "expected", sp.log(2)),  # DPO's value at u = 0 taken as the limit
    ("discopop", 4, "rhs", (1 - sp.log(2)) / (4 * tau) - sp.Rational(1, 4)),  # the exponential term's slope dropped
    # simpo-sft-aot
    ("simpo-sft-aot", 1, "rhs", -beta * sigma(-simpo_sft_aot.SIMPO_Z)),  # the 1/n_w of length normalisation dropped
    ("simpo-sft-aot", 2, "rhs", beta / simpo_sft_aot.n_w * sigma(-simpo_sft_aot.SIMPO_Z)),  # the chosen count
    ("simpo-sft-aot", 3, "expected", simpo_sft_aot.gamma),  # a finite floor at the target margin
    ("simpo-sft-aot", 4, "rhs", -beta * (1 - eps) * sigma(-beta * simpo_sft_aot.delta)),  # the eps term dropped
    ("simpo-sft-aot", 5, "x0", sp.log((1 - 2 * eps) / eps) / beta),  # 1 - 2 eps for 1 - eps
    (
        "simpo-sft-aot",
        6,
        "rhs",
        -sp.Sum(simpo_sft_aot.A[k_] / simpo_sft_aot.N[k_], (k_, 1, simpo_sft_aot.B)) / simpo_sft_aot.B,
    ),  # the mean of per-example token means
]


def test_every_family_step_has_a_false_instance():
    have = {(name, index) for name, index, _, _ in FALSE}
    want = {(name, k) for name in FAMILY for k in range(1, len(proofs.get(name).steps) + 1)}
    assert have == want, sorted(want ^ have)


@pytest.mark.parametrize("name,index,attr,value", FALSE, ids=[f"{n}-{k}-{a}" for n, k, a, _ in FALSE])
def test_a_subtly_false_step_fails_and_is_named(name, index, attr, value):
    proof = proofs.get(name)
    step = proof.steps[index - 1]
    edited = dataclasses.replace(step, claim=dataclasses.replace(step.claim, **{attr: value}))
    assert edited.unicode() != step.unicode()  # the reader would see the change ...
    broken = dataclasses.replace(proof, steps=[*proof.steps[: index - 1], edited, *proof.steps[index:]])
    with pytest.raises(StepFailed) as info:  # ... and the proof stops at that step, naming it
        check_proof(broken)
    assert str(info.value).startswith(f"proof '{name}', step {index} '{step.name.en}' failed")


def test_family_proofs_come_after_cdpo_in_the_lesson():
    order = list(proofs.MODULES)
    assert order[order.index("cdpo") + 1 :] == FAMILY


def test_a_bounded_symbol_belongs_to_one_proof_or_is_the_shared_epsilon():
    """A bounded symbol is global (its range applies wherever it occurs): one that shares its name and
    assumptions with another proof's symbol, or with an IndexedBase's label, silently bounds that proof too."""
    every = proofs.all_proofs()  # importing them all registers every bounded symbol
    users: dict = {sym: set() for sym in BOUNDED}
    for proof in every:
        for step in proof.steps:
            fields = [getattr(step.claim, fl.name) for fl in dataclasses.fields(step.claim)]
            for expr in proofs_core._flat([fields, step.where or {}]):
                found = expr.free_symbols | {i.base.label for i in expr.atoms(sp.Indexed)}
                for sym in found & set(BOUNDED):
                    users[sym].add(proof.name)
    # Shared on purpose, the same quantity with the same range wherever it occurs: the label-flip
    # probability, and the preference probability p* (deterministic-preference, ipo-psi; each declares it).
    shared = {eps, next(sym for sym in BOUNDED if sym.name == "p^*")}
    for sym, names in users.items():
        if sym not in shared:
            assert len(names) <= 1, f"bounded symbol {sym} is used by {sorted(names)}"
