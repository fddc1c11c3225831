"""The checker is exact: no branch of a log or a root is forced, and a "result" that only restates the
hypotheses is refused (issue 24, item 1). Every entry of FALSE_IDENTITIES and RESTATEMENTS must be refused;
the wrong-edit corpus (test_proofs_linked.py, test_proofs_family_linked.py) is separate and still caught."""

from __future__ import annotations

import pytest
import sympy as sp

from proofs import core
from proofs.common import beta, eps, tau
from proofs.core import (
    Equal,
    GlobalMinimum,
    Negative,
    Nonnegative,
    Positive,
    PositiveDefinite,
    Proof,
    Solutions,
    Step,
    Text,
    bounded,
    run_proof,
)

a, b, h, x, y = sp.symbols("a b h x y", real=True)
w = sp.Symbol("w")  # no assumptions at all (complex)
c = sp.Symbol("c", nonnegative=True)
p = bounded(sp.Symbol("p_exact", positive=True), sp.Interval.open(0, 1))
n = sp.Symbol("n_exact", positive=True)

# True for positive symbols, false for real ones: each would pass with force=True (checked below).
FALSE_IDENTITIES = {
    "log(h^2) = 2 log h": Equal(sp.log(h**2), 2 * sp.log(h), via=("expand_log", "simplify")),
    "log(ab) = log a + log b": Equal(sp.log(a * b), sp.log(a) + sp.log(b), via=("expand_log", "simplify")),
    "sqrt(a) sqrt(b) = sqrt(ab)": Equal(sp.sqrt(a) * sp.sqrt(b), sp.sqrt(a * b), via=("powsimp", "simplify")),
    "log a + log b = log(ab) (logcombine)": Equal(sp.log(a) + sp.log(b), sp.log(a * b), via=("logcombine",)),
    "log(a/b) = log a - log b": Equal(sp.log(a / b), sp.log(a) - sp.log(b), via=("expand_log", "simplify")),
    "log(h^3) = 3 log h": Equal(sp.log(h**3), 3 * sp.log(h), via=("expand_log", "simplify")),
    "sqrt(h^2) = h": Equal(sp.sqrt(h**2), h, via=("powsimp", "simplify")),
    "(x^2)^(1/2) sqrt(y) = sqrt(x^2 y)": Equal(sp.sqrt(x**2) * sp.sqrt(y), sp.sqrt(x**2 * y), via=("powsimp",)),
    "(a^x)^y = a^(xy)": Equal((a**x) ** y, a ** (x * y), via=("powsimp", "simplify")),
    "log(exp(w)) = w": Equal(sp.log(sp.exp(w)), w, via=("expand_log", "simplify")),
    "log(a b^2) = log a + 2 log b": Equal(sp.log(a * b**2), sp.log(a) + 2 * sp.log(b), via=("expand_log",)),
    "a^(1/3) b^(1/3) = (ab)^(1/3)": Equal(sp.cbrt(a) * sp.cbrt(b), sp.cbrt(a * b), via=("powsimp", "simplify")),
    # the same false identities inside a solution set and a minimum value (_same and the value check)
    "solveset root log(a^2)/2 = log a": Solutions(sp.Eq(sp.exp(2 * x), a**2), x, [sp.log(a)]),
    "minimum value log(a^2) = 2 log a": GlobalMinimum((h - 1) ** 2 + sp.log(a**2), h, 1, value=2 * sp.log(a)),
}

# Claims that hold only because a hypothesis does, and say nothing more than it.
RESTATEMENTS = {
    "1 - 2 eps > 0 (eps < 1/2)": Positive(1 - 2 * eps),
    "1/2 - eps > 0 (eps < 1/2)": Positive(sp.Rational(1, 2) - eps),
    "(1 - 2 eps)/(2 tau) > 0": Positive((1 - 2 * eps) / (2 * tau)),
    "beta tau > 0": Positive(beta * tau),
    "eps - 1/2 < 0": Negative(eps - sp.Rational(1, 2)),
    "1 - p > 0 (p < 1)": Positive(1 - p),
    "p (1 - p) > 0": Positive(p * (1 - p)),
    "c >= 0": Nonnegative(3 * c),
    "-c - 1 < 0 (c >= 0)": Negative(-c - 1),
    "beta e^h > 0": Positive(beta * sp.exp(h)),
    "tau/(1 - 2 eps) > 0": Positive(tau / (1 - 2 * eps)),
    "log((1 - eps)/eps) > 0": Positive(sp.log((1 - eps) / eps)),
    "beta + tau > 0": Positive(beta + tau),
    "a number": Positive(sp.Integer(3)),
    "diag(1 - 2 eps, tau) > 0": PositiveDefinite(sp.diag(1 - 2 * eps, tau)),
    "n^2 (1 - 2 eps) > 0": Positive(n**2 * (1 - 2 * eps)),
}


def _run(claim):
    step = Step(Text("s", "步"), Text("", ""), claim)
    return run_proof(Proof("toy", Text("t", "t"), Text("i", "i"), (), [step])).steps[0]


def test_corpus_size():
    assert len(FALSE_IDENTITIES) + len(RESTATEMENTS) >= 20
    assert len(RESTATEMENTS) >= 10 and len(FALSE_IDENTITIES) >= 10


@pytest.mark.parametrize("name", list(FALSE_IDENTITIES))
def test_false_identity_is_refused(name):
    res = _run(FALSE_IDENTITIES[name])
    assert not res.ok, f"{name} accepted: {res.detail}"


NOT_FORCEABLE = {"sqrt(h^2) = h", "(a^x)^y = a^(xy)"}  # false, but force=True did not accept these either


@pytest.mark.parametrize(
    "name", [k for k, v in FALSE_IDENTITIES.items() if isinstance(v, Equal) and k not in NOT_FORCEABLE]
)
def test_false_identity_would_pass_if_branches_were_forced(name):
    """The corpus is not vacuous: the force=True chain the checker used to run reaches 0 on each."""
    claim = FALSE_IDENTITIES[name]
    table = dict(core._FORCED)
    ok, _, _ = core._run_chain(sp.sympify(claim.lhs) - claim.rhs, [*claim.via, "expand_log", "simplify"], None, table)
    assert ok, name


@pytest.mark.parametrize("name", list(RESTATEMENTS))
def test_restatement_is_refused(name):
    res = _run(RESTATEMENTS[name])
    assert not res.ok and "tautology" in res.detail, f"{name}: {res.detail}"


def test_a_missing_hypothesis_is_named():
    res = _run(FALSE_IDENTITIES["log(h^2) = 2 log h"])
    assert "needs h > 0" in res.detail, res.detail
    res = _run(FALSE_IDENTITIES["log(ab) = log a + log b"])
    assert "needs a > 0" in res.detail, res.detail  # log(ab) = log a + log b holds for a > 0 and any real b


def test_declaring_the_hypothesis_makes_the_step_hold_and_it_is_shown_as_used():
    hp = sp.Symbol("h", positive=True)
    step = Step(Text("s", "步"), Text("", ""), Equal(sp.log(hp**2), 2 * sp.log(hp), via=("expand_log",)))
    res = run_proof(Proof("toy", Text("t", "t"), Text("i", "i"), (), [step])).steps[0]
    assert res.ok and "uses h > 0" in res.detail
    assert [str(u) for u in step.used] == ["h > 0"]


def test_results_that_use_a_hypothesis_are_not_restatements():
    z = sp.Symbol("z", real=True)
    for claim in (
        Positive(sp.log(1 + sp.exp(-beta * z))),  # true for every beta: a fact about the function
        Negative(-beta * (1 - sp.exp(-z) / (1 + sp.exp(-z))) - tau),  # depends on z within a cell... and holds
        Positive(1 / (1 + sp.exp(-z))),
    ):
        res = _run(claim)
        assert res.ok, res.detail


def test_a_restatement_marked_as_such_is_accepted_and_names_its_hypotheses():
    res = _run(Positive(1 - 2 * eps, restates=True))
    assert res.ok and "0 < ε < 1/2" in res.detail, res.detail
    assert not _run(Positive(1 / (1 + sp.exp(-h)), restates=True)).ok  # a result cannot hide as a restatement


def test_no_forced_branch_in_the_checker():
    import inspect

    src = inspect.getsource(core)
    rewrites = src.split("REWRITES: dict")[1].split("BRANCH =")[0]
    assert "force=True" not in rewrites
    for fn in (core._same, core._zero, core._run_chain, core.GlobalMinimum.check, core.Equal.check):
        assert "force=True" not in inspect.getsource(fn)
    assert src.count("force=True") == 3  # only in _FORCED, which diagnoses a failed step and never accepts one


# ---- hypotheses displayed (issue 24, item 2) -------------------------------------------------------------


def _text(name):
    import proofs
    from proofs import render

    return render.text_proof(run_proof(proofs.get(name)), 1, 1)


@pytest.mark.parametrize(
    "name,hypothesis,step",
    [
        ("implicit-reward-kl", "h > 0", 9),  # the β → ∞ limit of the loss is 0 only for a positive margin
        ("implicit-reward-kl", "dᵢ > 0", 5),  # β → 0: the odds of a worse response vanish only if it is worse
        ("ipo-psi", "β > 0", 4),  # Prop. 1's DPO half: the minimiser (r_y - r_y')/β
        ("robust-dpo", "0 < p̃ < 1", 8),  # the minimiser at frequency p̂ exists only for ε < p̂ < 1 - ε
        ("deterministic-preference", "a_w ≤ 0", 10),
        ("robust-dpo", "0 < ε < 1/2", 5),
    ],
)
def test_a_proof_renders_its_hypotheses_and_each_step_says_which_it_uses(name, hypothesis, step):
    import proofs

    text = _text(name)
    head = text.split("\n  ✓ 1.")[0]
    assert "Hypotheses: " in head and hypothesis in head, head  # listed before the steps
    block = text.split(f"\n  ✓ {step}. ")[1].split("\n  ✓ ")[0]
    assert f"uses {hypothesis}" in block or ("uses " in block and hypothesis in block), block
    assert any(str(hp) == hypothesis for hp, _ in proofs.get(name).hypotheses())


def test_every_proof_lists_its_hypotheses_in_the_markdown():
    import proofs
    from proofs import render

    md = render.markdown([run_proof(proofs.get("implicit-reward-kl"))])
    assert "*Hypotheses: " in md and "$`h > 0`$" in md and "uses $`h > 0`$" in md
    for proof in proofs.all_proofs():
        assert proof.hypotheses(), proof.name  # every derivation assumes something (β > 0 at least)
