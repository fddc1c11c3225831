"""Steps, proofs and the checker.

A proof is an ordered list of steps. Each step states one claim in LaTeX (what the reader sees) and
carries the sympy objects that make the same claim checkable (what the machine runs). Claims come in a
few kinds, each with one exact decision procedure:

    Equal          lhs - rhs rewrites to exactly 0 (a named chain of sympy rewrites)
    Positive       sympy's assumption system proves expr > 0 (optionally after an Equal to a manifest form)
    Nonnegative    the same for expr >= 0
    Limit          sympy.limit(expr, x, point) equals the expected value
    Solutions      solveset(equation, x, domain) is exactly the expected set
    SystemSolution solve(equations, unknowns) has exactly the expected single solution
    GlobalMinimum  f'' > 0 on the (assumed) domain of x and f'(x0) = 0, so x0 is the unique minimiser
    PositiveDefinite  every leading principal minor is > 0 (Sylvester's criterion)
    FreeOf         d(expr)/d(symbol) rewrites to 0 although expr is written with that symbol

No claim is decided by a float tolerance, and an Equal whose two sides are already the same expression
before any rewriting is rejected as a tautology: both sides must be built independently (the left from
the definition, the right from the claimed result), so the check does real work.

A failing step stops its proof and names itself (`StepFailed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import sympy as sp


@dataclass(frozen=True)
class Text:
    """A piece of prose in English and Chinese."""

    en: str
    zh: str

    def __call__(self, lang: str = "en") -> str:
        return self.zh if lang == "zh" else self.en


class ClaimError(Exception):
    """The claim could not be verified; the message says what sympy was left with."""


class StepFailed(AssertionError):
    """A step of a proof did not hold. `proof` and `step` are the slug and the step's English name."""

    def __init__(self, proof: str, index: int, step: str, reason: str):
        super().__init__(f"proof '{proof}', step {index} '{step}' failed: {reason}")
        self.proof, self.index, self.step, self.reason = proof, index, step, reason


def _short(expr: object, limit: int = 160) -> str:
    text = str(expr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Named rewrites. An Equal applies its chain in order to lhs - rhs and succeeds as soon as the result is
# exactly 0. `force=True` in the log rewrites is sound here because every symbol under a log is declared
# positive where the claim is made (sympy would do the same without force; force only saves it the search).
REWRITES: dict[str, Callable[[sp.Expr], sp.Expr]] = {
    "expand": sp.expand,
    "cancel": lambda e: sp.cancel(sp.together(e)),
    "expand_log": lambda e: sp.expand(sp.expand_log(e, force=True)),
    "logcombine": lambda e: sp.logcombine(e, force=True),
    "powsimp": lambda e: sp.powsimp(e, force=True),
    "exp": lambda e: e.rewrite(sp.exp),
    "doit": lambda e: e.doit(),
    "sums": lambda e: sp.factor_terms(sp.expand(e)),  # split sums over + and pull constant factors out
    "simplify": sp.simplify,
}


class Claim:
    """What a step asserts. `check()` returns a short account of how it was verified or raises ClaimError."""

    kind = "claim"

    def check(self) -> str:
        raise NotImplementedError

    def method(self, lang: str = "en", latex: bool = False) -> str:
        """A static, human-readable description of the decision procedure (for the rendered lesson)."""
        raise NotImplementedError


def _is_zero(expr: sp.Basic) -> bool:
    if isinstance(expr, sp.MatrixBase):
        return all(e == 0 for e in expr)
    return expr == 0


def _zero(diff: sp.Basic, via: Sequence[str], given: dict | None = None) -> tuple[bool, sp.Basic, list[str]]:
    """Apply the rewrites in order (entrywise for a matrix) until the expression is exactly 0.

    The hypotheses in `given` are substituted before and after every rewrite: a rewrite can expose a
    hypothesis's left-hand side (e.g. simplify collects sum_i q_i, which `given` sets to 1).
    """
    used: list[str] = []
    if given:
        diff = diff.subs(given)
    for name in via:
        rewrite = REWRITES[name]
        diff = diff.applyfunc(rewrite) if isinstance(diff, sp.MatrixBase) else rewrite(diff)
        if given:
            diff = diff.subs(given)
        used.append(name)
        if _is_zero(diff):
            return True, diff, used
    return _is_zero(diff), diff, used


@dataclass
class Equal(Claim):
    """lhs = rhs, decided by rewriting lhs - rhs to exactly 0.

    `given` is a substitution that encodes a hypothesis of the step (e.g. a probability vector summing to
    one: q_3 = 1 - q_1 - q_2, or sum_i q_i = 1 for symbolic n); it is applied to lhs - rhs before and
    after each rewrite, and shown with the step.
    """

    lhs: object
    rhs: object
    via: Sequence[str] = ("expand", "simplify")
    given: dict | None = None
    kind = "equal"

    def check(self) -> str:
        lhs, rhs = sp.sympify(self.lhs), sp.sympify(self.rhs)
        if lhs == rhs:
            raise ClaimError("tautology: both sides are the same expression before any rewriting")
        diff = lhs - rhs
        if _is_zero(diff):
            raise ClaimError("tautology: lhs - rhs is 0 by sympy's automatic evaluation alone")
        ok, rest, used = _zero(diff, self.via, self.given)
        if not ok:
            raise ClaimError(f"lhs - rhs did not rewrite to 0 (via {' -> '.join(used)}); left with {_short(rest)}")
        return "lhs - rhs = 0 via " + " -> ".join(used)

    def method(self, lang: str = "en", latex: bool = False) -> str:
        chain = " → ".join(self.via)
        items = (self.given or {}).items()
        if latex:  # GitHub inline math
            subs = ", ".join(f"$`{sp.latex(k)} = {sp.latex(v)}`$" for k, v in items)
        else:
            subs = ", ".join(f"{k} = {v}" for k, v in items)
        if lang == "zh":
            return f"左边减右边化简为 0（{chain}）" + (f"，条件 {subs}" if subs else "")
        return f"lhs − rhs rewrites to 0 ({chain})" + (f", given {subs}" if subs else "")


@dataclass
class Positive(Claim):
    """expr > 0 proved by sympy's assumptions, optionally after proving expr = `manifest` (an Equal)."""

    expr: object
    manifest: object | None = None
    via: Sequence[str] = ("expand", "simplify")
    kind = "positive"
    _attr = "is_positive"
    _word = "> 0"

    def check(self) -> str:
        target = sp.sympify(self.expr)
        note = ""
        if self.manifest is not None:
            note = Equal(self.expr, self.manifest, self.via).check() + "; then "
            target = sp.sympify(self.manifest)
        if getattr(target, self._attr) is True:
            return note + f"sympy's assumptions give {self._word}"
        if getattr(sp.simplify(target), self._attr) is True:
            return note + f"sympy's assumptions give {self._word} after simplify"
        raise ClaimError(f"sympy's assumptions cannot show {_short(target)} {self._word}")

    def method(self, lang: str = "en", latex: bool = False) -> str:
        if lang == "zh":
            first = "先化为显然的形式（已验证相等），再" if self.manifest is not None else ""
            return first + f"由 sympy 的假设系统证明 {self._word}"
        first = "rewritten into a manifest form (checked equal), then " if self.manifest is not None else ""
        return first + f"sympy's assumption system proves {self._word}"


@dataclass
class Nonnegative(Positive):
    """expr >= 0, like Positive."""

    kind = "nonnegative"
    _attr = "is_nonnegative"
    _word = "≥ 0"


@dataclass
class Negative(Positive):
    """expr < 0, like Positive."""

    kind = "negative"
    _attr = "is_negative"
    _word = "< 0"


@dataclass
class Limit(Claim):
    """lim_{x -> point} expr = expected (one-sided with `direction` '+' or '-' for finite points)."""

    expr: object
    var: sp.Symbol
    point: object
    expected: object
    direction: str = "+"
    kind = "limit"

    def check(self) -> str:
        got = sp.limit(self.expr, self.var, self.point, self.direction)
        expected = sp.sympify(self.expected)
        if got == expected or (got.is_finite and expected.is_finite and sp.simplify(got - expected) == 0):
            return f"sympy.limit gives {got}"
        raise ClaimError(f"sympy.limit gives {_short(got)}, expected {_short(expected)}")

    def method(self, lang: str = "en", latex: bool = False) -> str:
        return "由 sympy.limit 计算" if lang == "zh" else "computed by sympy.limit"


def _same(a: sp.Expr, b: sp.Expr) -> bool:
    return a == b or sp.simplify(sp.expand_log(a - b, force=True)) == 0


@dataclass
class Solutions(Claim):
    """The set of solutions of `equation` for `var` in `domain` is exactly `expected` (empty if [])."""

    equation: object
    var: sp.Symbol
    expected: Sequence[object]
    domain: sp.Set = sp.S.Reals
    kind = "solutions"

    def check(self) -> str:
        got = sp.solveset(self.equation, self.var, self.domain)
        if not isinstance(got, sp.FiniteSet) and got != sp.S.EmptySet:
            raise ClaimError(f"solveset did not return a finite set: {_short(got)}")
        got_list = list(got)
        expected = [sp.sympify(e) for e in self.expected]
        if len(got_list) != len(expected) or not all(any(_same(g, e) for g in got_list) for e in expected):
            raise ClaimError(f"solveset gives {_short(got)}, expected {_short(expected)}")
        return f"solveset gives {_short(got)}"

    def method(self, lang: str = "en", latex: bool = False) -> str:
        if lang == "zh":
            return "sympy.solveset 在所述定义域上恰好返回这个解集"
        return "sympy.solveset over the stated domain returns exactly this set"


@dataclass
class SystemSolution(Claim):
    """solve(equations, unknowns) has exactly one solution and it is `expected` (a dict)."""

    equations: Sequence[object]
    unknowns: Sequence[sp.Symbol]
    expected: dict
    kind = "system"

    def check(self) -> str:
        sols = sp.solve(list(self.equations), list(self.unknowns), dict=True)
        if len(sols) != 1:
            raise ClaimError(f"solve gives {len(sols)} solutions: {_short(sols)}")
        (sol,) = sols
        for k, v in self.expected.items():
            if k not in sol or not _same(sol[k], sp.sympify(v)):
                raise ClaimError(f"solve gives {_short(sol)}, expected {_short(self.expected)}")
        return f"sympy.solve gives the unique solution {_short(sol)}"

    def method(self, lang: str = "en", latex: bool = False) -> str:
        return "sympy.solve 恰好返回这一个解" if lang == "zh" else "sympy.solve returns exactly one solution, this one"


@dataclass
class GlobalMinimum(Claim):
    """x0 is the unique global minimiser of f over the domain of x (a real interval given by x's assumptions).

    Checked as: f''(x) > 0 for every x in the domain (sympy's assumptions, optionally via a manifest form
    `curvature` proved equal to f''), and f'(x0) = 0. A strictly convex differentiable function on an
    interval has at most one stationary point, and it is the global minimiser. `value` (optional) is
    checked to equal f(x0).
    """

    f: object
    var: sp.Symbol
    x0: object
    value: object | None = None
    curvature: object | None = None
    kind = "minimum"

    def check(self) -> str:
        if not self.var.is_real:
            raise ClaimError(f"{self.var} must be declared real for the convexity argument")
        f = sp.sympify(self.f)
        second = sp.diff(f, self.var, 2)
        Positive(second, self.curvature, ("expand", "simplify")).check()
        slope = sp.simplify(sp.diff(f, self.var).subs(self.var, self.x0))
        if slope != 0:
            raise ClaimError(f"f'(x0) = {_short(slope)}, not 0")
        note = ""
        if self.value is not None:
            # a point evaluation: substituting x0 is the whole check, so no tautology guard here
            at = sp.simplify(sp.expand_log(f.subs(self.var, self.x0) - sp.sympify(self.value), force=True))
            if at != 0:
                raise ClaimError(f"f(x0) - value = {_short(at)}, not 0")
            note = ", f(x0) = value"
        return "f'' > 0 on the domain (sympy's assumptions) and f'(x0) = 0" + note

    def method(self, lang: str = "en", latex: bool = False) -> str:
        if lang == "zh":
            value = "，且 f(x₀) 等于所述最小值" if self.value is not None else ""
            return "在整个定义域上 f″ > 0（sympy 的假设系统）且 f′(x₀) = 0：严格凸，最小值点唯一" + value
        value = "; f(x₀) equals the stated minimum" if self.value is not None else ""
        return (
            "f″ > 0 on the whole domain (sympy's assumptions) and f′(x₀) = 0: strictly convex, unique minimiser" + value
        )


@dataclass
class PositiveDefinite(Claim):
    """The symmetric matrix is positive definite: all leading principal minors > 0 (Sylvester)."""

    matrix: sp.Matrix
    kind = "positive-definite"

    def check(self) -> str:
        m = sp.Matrix(self.matrix)
        if m != m.T:
            raise ClaimError("matrix is not symmetric")
        minors = [sp.simplify(m[:k, :k].det()) for k in range(1, m.rows + 1)]
        if not all(d.is_positive for d in minors):
            raise ClaimError(f"leading principal minors {minors} are not all > 0")
        return f"leading principal minors {minors}"

    def method(self, lang: str = "en", latex: bool = False) -> str:
        if lang == "zh":
            return "各阶顺序主子式均 > 0（西尔维斯特判据）"
        return "all leading principal minors > 0 (Sylvester's criterion)"


@dataclass
class FreeOf(Claim):
    """expr, although written with `symbol`, does not depend on it: d expr / d symbol rewrites to 0."""

    expr: object
    symbol: sp.Symbol
    via: Sequence[str] = ("expand", "simplify")
    kind = "free-of"

    def check(self) -> str:
        expr = sp.sympify(self.expr)
        if not expr.has(self.symbol):
            raise ClaimError(f"tautology: the expression is not written with {self.symbol} at all")
        ok, rest, used = _zero(sp.diff(expr, self.symbol), self.via)
        if not ok:
            raise ClaimError(f"d/d{self.symbol} did not rewrite to 0; left with {_short(rest)}")
        return f"d/d{self.symbol} = 0 via " + " -> ".join(used)

    def method(self, lang: str = "en", latex: bool = False) -> str:
        chain = " → ".join(self.via)
        if lang == "zh":
            return f"对 {self.symbol} 的导数化简为 0（{chain}）"
        return f"its derivative in {self.symbol} rewrites to 0 ({chain})"


@dataclass
class Step:
    """One line of a derivation: a textbook name, an explanation, the LaTeX statement and its claim."""

    name: Text
    explain: Text
    statement: str
    claim: Claim


@dataclass
class Proof:
    """An ordered derivation. `justifies` names the dpo_ref objects whose formulas it derives."""

    name: str
    title: Text
    intro: Text
    justifies: tuple[str, ...]
    steps: list[Step]
    conclusion: Text | None = None


@dataclass
class StepResult:
    step: Step
    index: int  # 1-based
    ok: bool
    detail: str
    seconds: float


@dataclass
class ProofResult:
    proof: Proof
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return len(self.steps) == len(self.proof.steps) and all(s.ok for s in self.steps)

    @property
    def failed(self) -> StepResult | None:
        return next((s for s in self.steps if not s.ok), None)

    def raise_for_failure(self) -> None:
        bad = self.failed
        if bad is not None:
            raise StepFailed(self.proof.name, bad.index, bad.step.name.en, bad.detail)


def run_proof(proof: Proof) -> ProofResult:
    """Check the steps in order; the first failing step stops the proof (it is the last result)."""
    result = ProofResult(proof)
    start = time.perf_counter()
    for index, step in enumerate(proof.steps, 1):
        t0 = time.perf_counter()
        try:
            detail, ok = step.claim.check(), True
        except ClaimError as err:
            detail, ok = str(err), False
        except Exception as err:  # a sympy error inside a check is a failed step, not a crash
            detail, ok = f"{type(err).__name__}: {err}", False
        result.steps.append(StepResult(step, index, ok, detail, time.perf_counter() - t0))
        if not ok:
            break
    result.seconds = time.perf_counter() - start
    return result


def check_proof(proof: Proof) -> ProofResult:
    """Run the proof and raise `StepFailed` naming the first step that does not hold."""
    result = run_proof(proof)
    result.raise_for_failure()
    return result
