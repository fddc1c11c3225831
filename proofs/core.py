"""Steps, proofs and the checker: the API every derivation in `proofs/` is written in.

A proof (`Proof`) is an ordered list of steps (`Step`). A step has a textbook name and an explanation
(`Text`, English and Chinese) and one claim (`Claim`). The claim is both what the reader sees and what the
machine checks: its displayed formula is *rendered from the claim's sympy objects* (`Step.latex()` for the
Markdown lesson and the notebook, `Step.unicode()` for the terminal), never written by hand, so editing what
a step displays means editing what it checks. Write the claim's objects in the form a reader should see:

    sigma(x)            the logistic function, shown as σ(x) and unfolded to 1 / (1 + e^{-x}) to be checked
    sp.Derivative(f, x) shown as d/dx f, differentiated when checked
    sp.Subs(f, x, 0)    shown as f|_{x=0}, substituted when checked
    sp.Sum(t, (i,1,n))  shown as a sum; symbolic n where sympy can decide the claim
    Step(..., where={F: expr})
                        an abbreviation: F (a Symbol or an applied undefined Function) is shown in the claim
                        and the line "where F = expr" is shown under it; it is replaced by expr when checked

The display is `display_form` of the claim's objects: the same expression tree with the terms of each sum and
the factors of each product in the order a paper writes them (rho_w - rho_l, q log q, -(1 - ε) log σ), refused by
`shown` unless it re-evaluates to the checked expression; an Add built with evaluate=False is shown as written.
A step cites its result with `eq` (the paper's label, "Eq. 4", "Thm. 1", "App. A.1") in the proof's `source`
paper, or in `paper` (a key of proofs.papers.PAPERS) when it is another paper's.

Claims come in a few kinds, each with one exact decision procedure and a tautology guard (a claim that
holds without the check doing any work is rejected):

    Equal          lhs - rhs rewrites to exactly 0 (a named chain of sympy rewrites); `given` substitutes a
                   hypothesis (shown in parentheses), `cases` checks every listed substitution (shown as ∀)
                   guard: the two sides must differ before rewriting
    Positive       sympy's assumption system proves expr > 0 (optionally after an Equal to a `manifest` form)
    Nonnegative    the same for expr >= 0          guard: expr must not be (a constant times) one symbol,
    Negative       the same for expr < 0           i.e. restate a declared assumption, unless via a manifest
    Limit          sympy.limit(expr, x, point) equals the expected value          guard: expr depends on x
    Solutions      solveset(equation, x, domain) is exactly the expected set      guard: not already solved
    SystemSolution solve(equations, unknowns) has exactly the expected single solution   (same guard)
    GlobalMinimum  x0 is real and in the domain of x, f'' > 0 on that domain and f'(x0) = 0, so x0 is the
                   unique minimiser                                                guard: f depends on x
    PositiveDefinite  every leading principal minor is > 0 (Sylvester), optionally after an Equal to a
                   `manifest` matrix                  guard: not a diagonal of restated assumptions
    FreeOf         d(expr)/d(symbol) rewrites to 0 although expr is written with that symbol

Symbols carry their true domain: sympy assumptions for the sign (`positive=True`), and `bounded(symbol,
interval)` for a bounded range such as ε ∈ (0, 1/2). Every check decides signs and realness with each
bounded symbol replaced by a witness that ranges exactly over its interval (a + (b - a)/(1 + u), u > 0),
and the rendered step shows the range of each bounded symbol it uses. No claim is decided by a float
tolerance.

A failing step stops its proof and names itself (`StepFailed`). To add a derivation: write a module with a
`PROOF = Proof(...)`, register its slug in `proofs.MODULES`, and (if it derives code) list the code in
`justifies` and add a `compare()` to its module that evaluates the derived formula against that code (the
notebook's closing section calls it); `dpo-ref prove --only SLUG` runs it.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.pretty.pretty import PrettyPrinter
from sympy.printing.pretty.stringpict import prettyForm, stringPict


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


# ---- display objects and their unfolding ---------------------------------------------------------------


class sigma(sp.Function):  # noqa: N801 (named after the math)
    """The logistic function σ(x) = 1 / (1 + e^{-x}): shown as σ, unfolded by `unfold` before any check."""

    nargs = 1

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))


def _sigma_def(x: sp.Expr) -> sp.Expr:
    return 1 / (1 + sp.exp(-x))


def _map(value: object, fn: Callable) -> object:
    if isinstance(value, (sp.Basic, sp.MatrixBase)):
        return fn(value)
    if isinstance(value, dict):
        return {_map(k, fn): _map(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, fn) for v in value)
    return value


def unfold(expr: object, where: dict | None = None, evaluate: bool = True) -> object:
    """What a displayed expression means: abbreviations expanded, σ written out, d/dx and |_{x=a} evaluated.

    With evaluate=False only the abbreviations and σ are expanded (what the reader could do by substitution).
    """

    def one(e):
        if isinstance(e, sp.MatrixBase):
            return e.applyfunc(one)
        for _ in range(10):  # abbreviations may refer to each other
            if not where:
                break
            new = e.xreplace(where)
            if new == e:
                break
            e = new
        e = e.replace(sigma, _sigma_def)
        if not evaluate:
            return e
        return e.replace(lambda a: isinstance(a, (sp.Derivative, sp.Subs)), lambda a: a.doit())

    return _map(expr, one)


# ---- bounded symbols -----------------------------------------------------------------------------------

BOUNDED: dict[sp.Symbol, sp.Interval] = {}


def bounded(symbol: sp.Symbol, interval: sp.Interval) -> sp.Symbol:
    """Declare that `symbol` ranges over the open `interval` (its sign assumptions must agree)."""
    if not interval.left_open or not (interval.right_open or interval.sup is sp.oo) or interval.inf is -sp.oo:
        raise ValueError(f"bounded({symbol}): only intervals (a, b) and (a, oo) are supported, got {interval}")
    BOUNDED[symbol] = interval
    return symbol


def witness(expr: object) -> object:
    """Replace each bounded symbol by a + (b - a)/(1 + u) with u > 0: exactly its interval (a, b)."""
    subs = {}
    free = set().union(*(e.free_symbols for e in _flat(expr)))
    for s in free:
        if s in BOUNDED:
            iv = BOUNDED[s]
            u = sp.Dummy(f"u_{s.name}", positive=True)
            subs[s] = iv.inf + u if iv.sup is sp.oo else iv.inf + (iv.sup - iv.inf) / (1 + u)
    return _map(expr, lambda e: e.subs(subs)) if subs else expr


def _flat(value: object) -> list:
    out: list = []
    _map(value, lambda e: out.append(e) or e)
    return [e for e in out if isinstance(e, (sp.Basic, sp.MatrixBase))]


def _fact(expr: sp.Expr, attr: str) -> bool:
    """sympy's assumptions decide `attr` of expr (bounded symbols replaced by their witnesses)."""
    target = witness(expr)
    return getattr(target, attr) is True or getattr(sp.simplify(target), attr) is True


def _number_or_scaled_symbol(expr: sp.Basic) -> bool:
    """A number, or a constant times one symbol (the shape of an equation that is already solved)."""
    if expr.is_number:
        return True
    _, rest = sp.sympify(expr).as_coeff_Mul()
    return isinstance(rest, (sp.Symbol, sp.Indexed))


# ---- hypotheses ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hypothesis:
    """What a symbol is assumed to satisfy: its sign (sympy assumptions) or its range (`bounded`).

    `symbol` is a Symbol or an Indexed (p_i of a positive IndexedBase); `low`/`high` are the bounds (None
    where there is none), `strict` whether they are strict, `integer` for a positive (or nonnegative)
    integer such as a number of responses.
    """

    symbol: sp.Basic
    low: object = None
    high: object = None
    strict: bool = True
    integer: bool = False

    def parts(self) -> list:
        if self.integer:
            first = 1 if self.strict else 0
            return [self.symbol, Tok(f"\\in \\{{{first}, {first + 1}, \\dots\\}}", f" ∈ {{{first}, {first + 1}, …}}")]
        lt = Tok("<", " < ") if self.strict else Tok("\\le", " ≤ ")
        gt = Tok(">", " > ") if self.strict else Tok("\\ge", " ≥ ")
        if self.low is not None and self.high is not None:
            return [self.low, Tok("<", " < "), self.symbol, Tok("<", " < "), self.high]
        if self.low is not None:
            return [self.symbol, gt, self.low]
        return [self.symbol, lt, self.high]

    def tex(self) -> str:
        return join_tex(self.parts())

    def __str__(self) -> str:
        return join_unicode(self.parts())

    def cuts(self) -> list:
        """The points where the hypothesis switches between true and false on the real line."""
        return [b for b in (self.low, self.high) if b is not None]

    def holds_on(self, lo: object, hi: object) -> bool:
        """Whether the hypothesis holds on the open interval (lo, hi) between two consecutive cuts."""
        if self.low is not None and not (lo != -sp.oo and sp.sympify(lo) >= self.low):
            return False
        return self.high is None or (hi != sp.oo and sp.sympify(hi) <= self.high)


def hypothesis(symbol: sp.Basic) -> Hypothesis | None:
    """The hypothesis declared on `symbol` (its `bounded` range, else its sign), or None for a real symbol."""
    if symbol in BOUNDED:
        iv = BOUNDED[symbol]
        return Hypothesis(symbol, iv.inf, None if iv.sup is sp.oo else iv.sup)
    if symbol.is_integer and symbol.is_nonnegative:
        return Hypothesis(symbol, low=0, strict=bool(symbol.is_positive), integer=True)
    for attr, low, high, strict in (
        ("is_positive", 0, None, True),
        ("is_negative", None, 0, True),
        ("is_nonnegative", 0, None, False),
        ("is_nonpositive", None, 0, False),
    ):
        if getattr(symbol, attr):
            return Hypothesis(symbol, low, high, strict)
    return None


def _atoms(value: object) -> set:
    """The symbols (and the Indexed p_i) of an expression; bound variables of sums and Dummies excluded."""
    out: set = set()
    for e in _flat(value):
        indexed = e.atoms(sp.Indexed)
        labels = {i.base.label for i in indexed} | {i.base for i in indexed}
        out |= indexed | {a for a in e.free_symbols if not isinstance(a, sp.Dummy) and a not in labels}
    return out


def hypotheses_of(value: object) -> list[Hypothesis]:
    """The hypotheses of the symbols an expression is written with, in a stable order."""
    found = [hp for a in _atoms(value) if (hp := hypothesis(a)) is not None]
    return sorted(found, key=lambda hp: (hp.integer, str(hp)))


def _relaxed(symbol: sp.Basic) -> sp.Dummy:
    """A stand-in for `symbol` with its hypothesis dropped (real if it is real)."""
    return sp.Dummy(str(symbol), real=True) if symbol.is_real else sp.Dummy(str(symbol))


# The hypotheses a step's check relied on, collected while it runs (see Step.check).
_USES: list | None = None


def _note_use(*symbols: sp.Basic) -> None:
    if _USES is not None:
        _USES.extend(hp for s in symbols if (hp := hypothesis(s)) is not None)


def _sign_symbols(expr: sp.Basic) -> list:
    return sorted((a for a in _atoms(expr) if hypothesis(a) is not None and not hypothesis(a).integer), key=str)


def _fact_noting_uses(expr: sp.Basic, attr: str) -> bool:
    """`_fact`, and note each hypothesis without which sympy's assumptions no longer decide it."""
    if not _fact(expr, attr):
        return False
    if _USES is not None:
        for s in _sign_symbols(expr):
            if not _fact(expr.xreplace({s: _relaxed(s)}), attr):
                _note_use(s)
    return True


_SAMPLES = (sp.Rational(1, 3), sp.Integer(1), sp.Integer(4))
_FREE_SAMPLES = (sp.Integer(-2), sp.Rational(1, 2), sp.Integer(3))


def _listed(hyps: Sequence[Hypothesis]) -> str:
    return ", ".join(str(hp) for hp in hyps)


def _cell_values(hp: Hypothesis) -> list[tuple[sp.Expr, bool]]:
    """The open intervals into which the hypothesis's bounds cut the real line: a witness ranging over each
    (a Dummy u > 0) and whether the hypothesis holds there."""
    cuts = sorted(set(hp.cuts()), key=lambda c: float(c))
    ends = [-sp.oo, *cuts, sp.oo]
    out = []
    for lo, hi in zip(ends, ends[1:]):
        u = sp.Dummy("u", positive=True)
        if lo == -sp.oo:
            w = hi - u
        elif hi == sp.oo:
            w = lo + u
        else:
            w = lo + (hi - lo) / (1 + u)
        out.append((w, hp.holds_on(lo, hi)))
    return out


def _decide_cell(expr: sp.Expr, attr: str) -> bool | None:
    """The truth of `attr` on one cell: sympy's assumptions, else agreement of sample points (None: varies)."""
    verdict = getattr(expr, attr)
    if verdict is not None:
        return bool(verdict)
    free = sorted(expr.free_symbols, key=str)
    if len(free) > 6:
        return None
    grids = [_SAMPLES if f.is_positive else _FREE_SAMPLES for f in free]
    seen = set()
    for values in itertools.islice(itertools.product(*grids), 243):
        v = sp.N(expr.subs(dict(zip(free, values))), 30)
        seen.add(bool(v.is_number and v.is_real and getattr(v, attr)))
        if len(seen) > 1:
            return None
    return seen.pop()


def _restates_hypotheses(expr: sp.Basic, attr: str = "is_positive") -> list[Hypothesis] | None:
    """The hypotheses that `attr` of expr merely restates, or None if it is a result.

    It restates them when its truth is fixed by which hypotheses hold: cut the real line of each symbol at
    its hypothesis's bounds (h > 0: at 0; 0 < ε < 1/2: at 0 and 1/2) and decide the claim on every cell with
    the hypotheses dropped (sympy's assumptions on a witness of the cell, else substitution of sample
    points). If every cell is decided and some cell makes it false, the claim holds because the hypotheses
    do and says nothing more: Positive(1 − 2ε) is ε < 1/2 again. So is a claim written with
    hypothesis-bearing symbols only that sympy's assumptions decide from their signs alone (β + τ > 0).
    A number is a restatement of nothing (returns []).
    """
    expr = sp.sympify(expr)
    if expr.is_number:
        return []
    symbols = _sign_symbols(expr)
    if not symbols:
        return None
    if set(symbols) == _atoms(expr) and getattr(witness(expr), attr):
        # written with hypothesis-bearing symbols only, and sign arithmetic on them decides it (β + τ > 0)
        return [hypothesis(s) for s in symbols]
    if len(symbols) > 5:
        return None
    hyps = [hypothesis(s) for s in symbols]
    any_false = False
    for cells in itertools.product(*[_cell_values(hp) for hp in hyps]):
        e = expr.xreplace({s: w for s, (w, _) in zip(symbols, cells)})
        verdict = _decide_cell(e, attr)
        if verdict is None:
            return None
        any_false = any_false or not verdict
    return hyps if any_false else None


# ---- rendering -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tok:
    """A piece of a displayed formula that is not a sympy object: its LaTeX and its Unicode forms."""

    tex: str
    uni: str


EQ, COMMA, IFF = Tok("=", " = "), Tok(",\\;", ", "), Tok("\\iff", "  ⟺  ")
# Symbol names that sympy's printers would spell awkwardly: name -> (LaTeX, Unicode)
NAMES: dict[str, tuple[str, str]] = {}


def _as_written(expr: sp.Add) -> bool:
    """An Add built with evaluate=False (e.g. the margin's grouping) is printed in the order it was written."""
    return sp.Add(*expr.args) != expr


# ---- display order -------------------------------------------------------------------------------------
# sympy prints a sum or a product in its own canonical order (-rho_l + rho_w, log(q/p)·q, e^{r/β} p). A display
# is printed from `display_form(expr)` instead: the same expression tree, rebuilt unevaluated with the terms
# in the order a paper writes them, and printed as written. Only the order of the arguments of commutative
# + and · changes (and a factor negative by its hypotheses is written as minus a positive one), so
# re-evaluating the display gives back exactly the checked expression, or one whose difference from it
# expands to 0 (`_same_display`, asserted on every print and tested for every step).


def _plain_factor(f: sp.Basic) -> bool:
    """A symbol, an indexed symbol or a power of one: written before the functions it multiplies (q log q)."""
    base = f.base if isinstance(f, sp.Pow) else f
    return isinstance(base, (sp.Symbol, sp.Indexed, sp.Number))


def _chosen_rank(term: sp.Basic) -> int:
    """Chosen before rejected: 0 for a term written with a _w symbol and no _l one, 2 the other way, else 1."""
    names = [str(a) for a in term.free_symbols]
    w, l = (any(re.search(tag + "(?![a-z])", n) for n in names) for tag in ("_w", "_l"))  # a_w, r(y_w), not _lam
    return 0 if w and not l else 2 if l and not w else 1


def _paper_terms(expr: sp.Add) -> list:
    """The terms of a sum in the paper's order: sympy's order, chosen before rejected, starting at its first
    positive term (rho_w - rho_l, not -rho_l + rho_w), and a constant first in a sum of functions (1 + e^{-z})."""
    terms = expr.as_ordered_terms()
    ranks = [_chosen_rank(t) for t in terms]
    if 0 in ranks and 2 in ranks:  # a chosen and a rejected term: chosen first, sympy's order otherwise
        terms = [t for _, t in sorted(zip(ranks, terms), key=lambda rt: rt[0] == 2)]
    k = next((j for j, t in enumerate(terms) if not t.could_extract_minus_sign()), 0)
    terms = terms[k:] + terms[:k]  # the leading negative terms go last: rho_w - rho_l, E[r] - beta KL
    numbers = [t for t in terms if t.is_number]
    if (
        len(numbers) == 1
        and numbers[0].is_positive
        and all(isinstance(t, (sp.exp, sp.log, sp.Function)) for t in terms if not t.is_number)
    ):
        terms = numbers + [t for t in terms if not t.is_number]
    return terms


def display_form(expr: object) -> object:
    """`expr` rebuilt unevaluated in the paper's order (see above); an unevaluated Add is kept as written."""
    if isinstance(expr, sp.MatrixBase):
        return sp.ImmutableMatrix(expr.rows, expr.cols, [display_form(e) for e in expr])
    if not isinstance(expr, sp.Basic) or not expr.args or isinstance(expr, (sp.Indexed, sp.Number, sp.Symbol)):
        return expr
    if isinstance(expr, sp.Add):
        terms = list(expr.args) if _as_written(expr) else _paper_terms(expr)
        return sp.Add(*[display_form(t) for t in terms], evaluate=False)
    if isinstance(expr, sp.Mul):
        coeff, rest = expr.as_coeff_Mul()
        factors = sorted(rest.as_ordered_factors(), key=lambda f: 0 if _plain_factor(f) else 1)  # q log q
        for k, f in enumerate(factors):  # a factor negative by its hypotheses as minus a positive one:
            if isinstance(f, sp.Add) and witness(f).is_negative:  # (ε - 1) log σ as -(1 - ε) log σ
                factors[k], coeff = -f, -coeff
        shown = [display_form(f) for f in factors]
        return (
            sp.Mul(*([coeff] if coeff != 1 else []), *shown, evaluate=False)
            if len(shown) + (coeff != 1) > 1
            else shown[0]
        )
    args = [display_form(a) for a in expr.args]
    if isinstance(expr, (sp.Pow, sp.Function, sp.core.relational.Relational)):
        try:
            return expr.func(*args, evaluate=False)
        except TypeError:
            pass
    return expr.func(*args)


def evaluated(expr: object) -> object:
    """A display re-evaluated: every node rebuilt with sympy's automatic evaluation (undoes display_form)."""
    if isinstance(expr, sp.MatrixBase):
        return sp.ImmutableMatrix(expr.rows, expr.cols, [evaluated(e) for e in expr])
    if not isinstance(expr, sp.Basic) or not expr.args or isinstance(expr, (sp.Indexed, sp.Number, sp.Symbol)):
        return expr
    return expr.func(*[evaluated(a) for a in expr.args])


def _same_tree(a: object, b: object) -> bool:
    if isinstance(a, sp.MatrixBase) or isinstance(b, sp.MatrixBase):
        return sp.ImmutableMatrix(a) == sp.ImmutableMatrix(b)
    return a == b


def _same_display(shown: object, expr: object) -> bool:
    """The display re-evaluates to exactly `expr`, or (a sign moved out of a factor: -(1 - ε) for (ε - 1)) their
    difference expands to exactly 0."""
    a, b = evaluated(shown), evaluated(expr)
    if _same_tree(a, b):
        return True
    if isinstance(a, sp.MatrixBase) or isinstance(b, sp.MatrixBase):
        return all(sp.expand(x - y) == 0 for x, y in zip(sp.ImmutableMatrix(a), sp.ImmutableMatrix(b)))
    return isinstance(a, sp.Expr) and isinstance(b, sp.Expr) and sp.expand(a - b) == 0


def shown(expr: object) -> object:
    """What is printed for `expr`: its display form, refused unless it re-evaluates to `expr` (_same_display)."""
    out = display_form(expr)
    if not _same_display(out, expr):
        raise ClaimError(f"display of {_short(expr)} does not re-evaluate to it: {_short(evaluated(out))}")
    return out


class _Tex(LatexPrinter):
    def __init__(self, settings=None):
        super().__init__({"order": "none", **(settings or {})})  # display_form has put the terms in order

    def _print_Symbol(self, expr, style="plain"):
        return NAMES[expr.name][0] if expr.name in NAMES else super()._print_Symbol(expr, style)


def tex(expr: object) -> str:
    return _Tex().doprint(shown(expr))


class _Uni(PrettyPrinter):
    def __init__(self, settings=None):
        super().__init__({"order": "none", **(settings or {})})

    def _print_Symbol(self, e, bold_name=False):
        if e.name in NAMES:
            return prettyForm(NAMES[e.name][1])
        return super()._print_Symbol(e, bold_name)

    def _print_Max(self, e):  # sympy's pretty printer has no form for Max; print it as the function max(...)
        return self._print_Function(e, func_name="max")


def _uni_form(part: object) -> prettyForm:
    if isinstance(part, Tok):
        return prettyForm(part.uni)
    return _Uni({"use_unicode": True, "wrap_line": False})._print(shown(part))


def join_tex(parts: Sequence[object]) -> str:
    return " ".join(p.tex if isinstance(p, Tok) else tex(p) for p in parts)


def join_unicode(parts: Sequence[object]) -> str:
    """The parts side by side as Unicode 2-D math (sympy's pretty printer), lines right-stripped."""
    pic = prettyForm(*stringPict.next(*[_uni_form(p) for p in parts]))
    return "\n".join(line.rstrip() for line in pic.render(wrap_line=False).split("\n"))


def _rel(word: str) -> Tok:
    return {"> 0": Tok("> 0", " > 0"), "≥ 0": Tok("\\ge 0", " ≥ 0"), "< 0": Tok("< 0", " < 0")}[word]


def _given_parts(given: dict | None) -> list:
    if not given:
        return []
    out: list = [Tok("\\qquad\\Big(", "    (")]
    for k, (key, value) in enumerate(given.items()):
        out += ([COMMA] if k else []) + [key, EQ, value]
    return out + [Tok("\\Big)", ")")]


# ---- rewrites ------------------------------------------------------------------------------------------


# Named rewrites. An Equal applies its chain in order to lhs - rhs and succeeds as soon as the result is
# exactly 0. None of them forces a branch: expand_log, logcombine and powsimp (the BRANCH rewrites) split
# log(ab), log(h^2), sqrt(a) sqrt(b) only where the symbols' assumptions make it valid (a, b, h > 0), so a
# step that needs such a hypothesis fails, naming it, unless its symbols declare it (see `_zero`).
def _first_term(expr: sp.Expr) -> sp.Expr:
    """Split the first term off each top-level sum: sum_{k=a}^{b} f(k) = f(a) + sum_{k=a+1}^{b} f(k).

    Only where b - a >= 0 follows from the symbols' assumptions (the sum is not empty), and only for sums
    that are terms (or factors of terms) of the expanded expression, not sums nested inside a function:
    the induction step of a proof over the number of terms.
    """

    def nonempty(a: sp.Basic) -> bool:
        return isinstance(a, sp.Sum) and len(a.limits) == 1 and (a.limits[0][2] - a.limits[0][1]).is_nonnegative is True

    def peel(a: sp.Sum) -> sp.Expr:
        k, lo, hi = a.limits[0]
        return a.function.subs(k, lo) + sp.Sum(a.function, (k, lo + 1, hi))

    terms = sp.Add.make_args(sp.expand(expr))
    return sp.Add(*[sp.Mul(*[peel(f) if nonempty(f) else f for f in sp.Mul.make_args(t)]) for t in terms])


REWRITES: dict[str, Callable[[sp.Expr], sp.Expr]] = {
    "expand": sp.expand,
    "cancel": lambda e: sp.cancel(sp.together(e)),
    "expand_log": lambda e: sp.expand(sp.expand_log(e)),
    "logcombine": sp.logcombine,
    "powsimp": sp.powsimp,
    "exp": lambda e: e.rewrite(sp.exp),
    "doit": lambda e: e.doit(),
    "sums": lambda e: sp.factor_terms(sp.expand(e)),  # split sums over + and pull constant factors out
    "first_term": _first_term,  # sum_{k=a}^{b} f = f(a) + sum_{k=a+1}^{b} f where b >= a (an induction step)
    "simplify": sp.simplify,
}
BRANCH = ("expand_log", "logcombine", "powsimp")
# The same rewrites choosing every branch (sympy's force flag): never used to accept a step, only to say which
# hypothesis a failing step is missing.
_FORCED: dict[str, Callable[[sp.Expr], sp.Expr]] = {
    "expand_log": lambda e: sp.expand(sp.expand_log(e, force=True)),
    "logcombine": lambda e: sp.logcombine(e, force=True),
    "powsimp": lambda e: sp.powsimp(e, force=True),
}


def _branch_symbols(expr: sp.Basic) -> list:
    """The symbols under a log or a non-integer power: the ones a branch choice is about."""
    out: set = set()
    for e in _flat(expr):
        for a in e.atoms(sp.log):
            out |= _atoms(a.args[0])
        for a in e.atoms(sp.Pow):
            if not a.exp.is_integer:
                out |= _atoms(a.base)
    return sorted((s for s in out if not s.is_integer), key=str)


def _same_object(a: object, b: object) -> bool:
    if isinstance(a, sp.MatrixBase) or isinstance(b, sp.MatrixBase):
        return sp.Matrix(a) == sp.Matrix(b)
    return sp.sympify(a) == sp.sympify(b)


def _is_zero(expr: sp.Basic) -> bool:
    if isinstance(expr, sp.MatrixBase):
        return all(e == 0 for e in expr)
    return expr == 0


def _apply(name: str, diff: sp.Basic, table: dict | None = None) -> sp.Basic:
    rewrite = (table or REWRITES).get(name, REWRITES[name])
    return diff.applyfunc(rewrite) if isinstance(diff, sp.MatrixBase) else rewrite(diff)


def _run_chain(diff: sp.Basic, via: Sequence[str], given: dict | None, table: dict | None = None):
    used: list[str] = []
    if given:
        diff = diff.subs(given)
    for name in via:
        new = _apply(name, diff, table)
        if table is None and name in BRANCH and new != diff:
            for s in _branch_symbols(diff):  # a hypothesis the rewrite used: without it, it rewrites differently
                if hypothesis(s) is None:
                    continue
                d = _relaxed(s)
                if _apply(name, diff.xreplace({s: d})).xreplace({d: s}) != new:
                    _note_use(s)
        diff = new.subs(given) if given else new
        used.append(name)
        if _is_zero(diff):
            return True, diff, used
    return _is_zero(diff), diff, used


def _missing_hypotheses(diff: sp.Basic, via: Sequence[str], given: dict | None) -> list[str]:
    """Why an exact chain that reaches 0 with forced branches does not: the hypotheses it would need."""
    if not any(name in BRANCH or name == "simplify" for name in via):
        return []
    table = dict(_FORCED)
    table.setdefault("simplify", sp.simplify)
    if not _run_chain(diff, [*via, "expand_log", "simplify"], given, table)[0]:
        return []
    candidates = [s for s in _branch_symbols(diff) if not s.is_positive]
    for group in [[s] for s in candidates] + [candidates]:
        subs = {s: sp.Dummy(str(s), positive=True) for s in group}
        if group and _run_chain(diff.xreplace(subs), via, given, table={})[0]:
            return [str(Hypothesis(s, low=0)) for s in group]
    return [f"a branch choice for the log or root of {', '.join(map(str, candidates)) or 'a constant'}"]


def _zero(diff: sp.Basic, via: Sequence[str], given: dict | None = None) -> tuple[bool, sp.Basic, list[str]]:
    """Apply the rewrites in order (entrywise for a matrix) until the expression is exactly 0.

    The hypotheses in `given` are substituted before and after every rewrite: a rewrite can expose a
    hypothesis's left-hand side (e.g. simplify collects sum_i q_i, which `given` sets to 1). If the chain
    stops short of 0 and the expression has bounded symbols, it is run again with each replaced by its
    witness (exactly its range, so a + b with 0 < a < 1 knows 1 - a > 0), which uses that range.
    """
    ok, rest, used = _run_chain(diff, via, given)
    if ok:
        return ok, rest, used
    bounded_here = [s for s in _atoms(diff) if s in BOUNDED]
    if bounded_here:
        ok2, rest2, used2 = _run_chain(witness(diff), via, witness(given) if given else None)
        if ok2:
            _note_use(*bounded_here)
            return ok2, rest2, used2
    return ok, rest, used


def _needs(diff: sp.Basic, via: Sequence[str], given: dict | None = None) -> str:
    """'; needs h > 0' if the chain would reach 0 under a sign hypothesis the symbols do not declare."""
    try:
        missing = _missing_hypotheses(diff, via, given)
    except Exception:  # the diagnosis is best effort; the step has already failed
        return ""
    if not missing:
        return ""
    return f"; it holds only with a branch choice: needs {', '.join(missing)} (declare it on the symbol)"


def _same(a: sp.Expr, b: sp.Expr) -> bool:
    """a and b are the same number: equal, or a - b rewrites to exactly 0 (no branch forced)."""
    return a == b or _zero(sp.sympify(a) - sp.sympify(b), ("expand_log", "simplify"))[0]


# ---- claims --------------------------------------------------------------------------------------------


class Claim:
    """What a step asserts.

    `check()` returns a short account of how it was verified or raises ClaimError; it is called on the
    unfolded claim (`Step.check`). `parts()` is the displayed formula, built from the same objects.
    """

    kind = "claim"

    def check(self) -> str:
        raise NotImplementedError

    def parts(self) -> list:
        raise NotImplementedError

    def method(self, lang: str = "en", latex: bool = False) -> str:
        """A static, human-readable description of the decision procedure (for the rendered lesson)."""
        raise NotImplementedError


@dataclass
class Equal(Claim):
    """lhs = rhs, decided by rewriting lhs - rhs to exactly 0.

    `given` is a substitution that encodes a hypothesis of the step (e.g. a probability vector summing to
    one: q_3 = 1 - q_1 - q_2, or sum_i q_i = 1 for symbolic n); it is applied to lhs - rhs before and
    after each rewrite, and shown with the step. `cases` (a list of substitutions) checks the identity for
    each of them, e.g. every ranking of three responses; shown as "for all".
    """

    lhs: object
    rhs: object
    via: Sequence[str] = ("expand", "simplify")
    given: dict | None = None
    cases: Sequence[dict] | None = None
    kind = "equal"

    def check(self) -> str:
        lhs, rhs = sp.sympify(self.lhs), sp.sympify(self.rhs)
        if lhs == rhs:
            raise ClaimError("tautology: both sides are the same expression before any rewriting")
        diff = lhs - rhs
        if _is_zero(diff):
            raise ClaimError("tautology: lhs - rhs is 0 by sympy's automatic evaluation alone")
        used: list[str] = []
        for case in self.cases or [{}]:
            one = diff.subs(case) if case else diff
            if _is_zero(one):
                raise ClaimError(f"tautology: lhs - rhs is 0 in case {case} before any rewriting")
            ok, rest, used = _zero(one, self.via, self.given)
            if not ok:
                where = f" in case {case}" if case else ""
                raise ClaimError(
                    f"lhs - rhs did not rewrite to 0{where} (via {' -> '.join(used)}); left with {_short(rest)}"
                    + _needs(one, self.via, self.given)
                )
        n = f" in all {len(self.cases)} cases" if self.cases else ""
        return f"lhs - rhs = 0 via {' -> '.join(used)}{n}"

    def parts(self) -> list:
        out = [self.lhs, EQ, self.rhs] + _given_parts(self.given)
        if self.cases:
            keys = list(self.cases[0])
            tup = sp.Tuple(*keys) if len(keys) > 1 else keys[0]
            vals = [sp.Tuple(*[c[k] for k in keys]) if len(keys) > 1 else c[keys[0]] for c in self.cases]
            out += [Tok("\\qquad\\forall\\,", "    ∀ "), tup, Tok("\\in", " ∈ "), sp.FiniteSet(*vals)]
        return out

    def method(self, lang: str = "en", latex: bool = False) -> str:
        chain = " → ".join(self.via)
        cases = f", {len(self.cases)} cases" if self.cases else ""
        items = (self.given or {}).items()
        if latex:  # GitHub inline math
            subs = ", ".join(f"$`{tex(k)} = {tex(v)}`$" for k, v in items)
        else:
            subs = ", ".join(f"{k} = {v}" for k, v in items)
        if lang == "zh":
            return f"左边减右边化简为 0（{chain}{cases}）" + (f"，条件 {subs}" if subs else "")
        return f"lhs − rhs rewrites to 0 ({chain}{cases})" + (f", given {subs}" if subs else "")


@dataclass
class Positive(Claim):
    """expr > 0 proved by sympy's assumptions, optionally after proving expr = `manifest` (an Equal)."""

    expr: object
    manifest: object | None = None
    via: Sequence[str] = ("expand", "simplify")
    given: dict | None = None
    restates: bool = False  # a consequence of the hypotheses shown as such (not a result), see _restates_hypotheses
    kind = "positive"
    _attr = "is_positive"
    _word = "> 0"

    def check(self, guard: bool = True) -> str:
        target = sp.sympify(self.expr)
        note = ""
        if self.manifest is not None:
            note = Equal(self.expr, self.manifest, self.via, self.given).check() + "; then "
            target = sp.sympify(self.manifest)
        elif self.restates:
            restated = _restates_hypotheses(target, self._attr)
            if not restated or not _fact(target, self._attr):
                raise ClaimError(f"{target} {self._word} is not a restatement of the hypotheses (state it as a result)")
            _note_use(*(hp.symbol for hp in restated))
            return f"restates the hypotheses {_listed(restated)} (sign fixed on every region they cut out)"
        elif guard and (restated := _restates_hypotheses(target, self._attr)) is not None:
            what = f"restates the hypotheses {_listed(restated)}" if restated else "is a number"
            raise ClaimError(
                f"tautology: {target} {self._word} {what}: decided by them alone on every region they cut out "
                "(nothing to prove)"
            )
        if _fact_noting_uses(target, self._attr):
            return note + f"sympy's assumptions give {self._word}"
        raise ClaimError(f"sympy's assumptions cannot show {_short(target)} {self._word}")

    def parts(self) -> list:
        out = [self.expr] + ([EQ, self.manifest] if self.manifest is not None else [])
        return out + [_rel(self._word)] + _given_parts(self.given)

    def method(self, lang: str = "en", latex: bool = False) -> str:
        if self.restates:
            if lang == "zh":
                return "不是结论：它只是重述其符号的假设（在假设划出的每个区域上符号都已确定）"
            return "not a result: it restates its symbols' hypotheses (its sign is fixed on every region they cut out)"
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
        expr = sp.sympify(self.expr)
        if not expr.has(self.var):
            raise ClaimError(f"tautology: the expression does not depend on {self.var}")
        got = sp.limit(expr, self.var, self.point, self.direction)
        expected = sp.sympify(self.expected)
        if got == expected or (got.is_finite and expected.is_finite and sp.simplify(got - expected) == 0):
            if _USES is not None:  # a sign the limit depends on: with it dropped, sympy gives something else
                for s in _sign_symbols(expr):
                    if s == self.var:
                        continue
                    d = _relaxed(s)
                    try:
                        other = sp.limit(expr.xreplace({s: d}), self.var, self.point, self.direction).xreplace({d: s})
                    except Exception:
                        other = None
                    if other != got:
                        _note_use(s)
            return f"sympy.limit gives {got}"
        raise ClaimError(f"sympy.limit gives {_short(got)}, expected {_short(expected)}")

    def parts(self) -> list:
        return [sp.Limit(self.expr, self.var, self.point, self.direction), EQ, self.expected]

    def method(self, lang: str = "en", latex: bool = False) -> str:
        return "由 sympy.limit 计算" if lang == "zh" else "computed by sympy.limit"


def _solved_form(equation: sp.Basic, unknowns: Sequence[sp.Symbol]) -> bool:
    """`u = v` with u an unknown and v free of the unknowns, or `u - c` with c a number or one symbol."""
    if isinstance(equation, sp.Equality):
        sides = (equation.lhs, equation.rhs)
        return any(a in unknowns and not b.has(*unknowns) for a, b in (sides, sides[::-1]))
    expr = sp.expand(equation)
    for u in unknowns:
        c = expr.coeff(u)
        rest = expr - c * u
        if c in (1, -1) and not rest.has(*unknowns) and _number_or_scaled_symbol(rest):
            return True
    return False


def _as_eq(equation: object) -> sp.Basic:
    return equation if isinstance(equation, sp.Equality) else sp.Eq(equation, 0, evaluate=False)


@dataclass
class Solutions(Claim):
    """The set of solutions of `equation` for `var` in `domain` is exactly `expected` (empty if [])."""

    equation: object
    var: sp.Symbol
    expected: Sequence[object]
    domain: sp.Set = sp.S.Reals
    kind = "solutions"

    def check(self) -> str:
        equation = sp.sympify(self.equation)
        if not equation.has(self.var):
            raise ClaimError(f"tautology: the equation does not contain {self.var}")
        if _solved_form(equation, [self.var]):
            raise ClaimError(f"tautology: the equation is already solved for {self.var}")
        got = sp.solveset(equation, self.var, self.domain)
        if not isinstance(got, sp.FiniteSet) and got != sp.S.EmptySet:
            raise ClaimError(f"solveset did not return a finite set: {_short(got)}")
        got_list = list(got)
        expected = [sp.sympify(e) for e in self.expected]
        if len(got_list) != len(expected) or not all(any(_same(g, e) for g in got_list) for e in expected):
            raise ClaimError(f"solveset gives {_short(got)}, expected {_short(expected)}")
        return f"solveset gives {_short(got)}"

    def parts(self) -> list:
        result = sp.FiniteSet(*self.expected) if self.expected else sp.S.EmptySet
        return [Tok("\\big\\{", "{"), self.var, Tok("\\in", " ∈ "), self.domain, Tok(":", " : "),
                _as_eq(self.equation), Tok("\\big\\}", "}"), EQ, result]  # fmt: skip

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
        eqs = [sp.sympify(e) for e in self.equations]
        if all(_solved_form(e, self.unknowns) for e in eqs):
            raise ClaimError("tautology: every equation is already solved for an unknown")
        sols = sp.solve(eqs, list(self.unknowns), dict=True)
        if len(sols) != 1:
            raise ClaimError(f"solve gives {len(sols)} solutions: {_short(sols)}")
        (sol,) = sols
        for k, v in self.expected.items():
            if k not in sol or not _same(sol[k], sp.sympify(v)):
                raise ClaimError(f"solve gives {_short(sol)}, expected {_short(self.expected)}")
        return f"sympy.solve gives the unique solution {_short(sol)}"

    def parts(self) -> list:
        out: list = []
        for k, e in enumerate(self.equations):
            out += ([COMMA] if k else []) + [_as_eq(e)]
        out.append(IFF)
        for k, (u, v) in enumerate(self.expected.items()):
            out += ([COMMA] if k else []) + [u, EQ, v]
        return out

    def method(self, lang: str = "en", latex: bool = False) -> str:
        return "sympy.solve 恰好返回这一个解" if lang == "zh" else "sympy.solve returns exactly one solution, this one"


def _var_domain(var: sp.Symbol) -> sp.Interval:
    if var in BOUNDED:
        return BOUNDED[var]
    if var.is_positive:
        return sp.Interval.open(0, sp.oo)
    return sp.S.Reals


@dataclass
class GlobalMinimum(Claim):
    """x0 is the unique global minimiser of f over the domain of x (a real interval given by x's assumptions).

    Checked as: x0 is real and inside the domain (sympy's assumptions, with bounded parameters replaced by
    their witnesses), f''(x) > 0 for every x in the domain (optionally via a manifest form `curvature`
    proved equal to f''), and f'(x0) = 0. A strictly convex differentiable function on an interval has at
    most one stationary point, and it is the global minimiser. `value` (optional) is checked to equal f(x0).
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
        f, x0 = sp.sympify(self.f), sp.sympify(self.x0)
        if not f.has(self.var):
            raise ClaimError(f"tautology: f does not depend on {self.var}")
        dom = _var_domain(self.var)
        if not _fact_noting_uses(x0, "is_real"):
            raise ClaimError(f"the minimiser {_short(x0)} is not shown to be real")
        for side, end, gap in (("lower", dom.inf, x0 - dom.inf), ("upper", dom.sup, dom.sup - x0)):
            if end.is_infinite:
                continue
            _note_use(self.var)
            if not _fact_noting_uses(gap, "is_positive"):
                raise ClaimError(f"the minimiser {_short(x0)} is not shown to be inside {dom} ({side} end)")
        second = sp.diff(f, self.var, 2)
        if self.curvature is not None:
            ok, rest, _ = _zero(second - sp.sympify(self.curvature), ("expand", "simplify"))
            if not ok:
                raise ClaimError(f"f'' - curvature did not rewrite to 0; left with {_short(rest)}")
        if not _fact_noting_uses(sp.sympify(self.curvature if self.curvature is not None else second), "is_positive"):
            raise ClaimError(f"sympy's assumptions cannot show f'' = {_short(second)} > 0 on {dom}")
        slope = sp.simplify(sp.diff(f, self.var).subs(self.var, x0))
        if slope != 0:
            raise ClaimError(f"f'(x0) = {_short(slope)}, not 0")
        note = ""
        if self.value is not None:
            # a point evaluation: substituting x0 is the whole check, so no tautology guard here
            gap = f.subs(self.var, x0) - sp.sympify(self.value)
            ok, at, _ = _zero(gap, ("expand_log", "simplify"))
            if not ok:
                raise ClaimError(f"f(x0) - value = {_short(at)}, not 0" + _needs(gap, ("expand_log", "simplify")))
            note = ", f(x0) = value"
        return "x0 real and in the domain, f'' > 0 on the domain (sympy's assumptions) and f'(x0) = 0" + note

    def parts(self) -> list:
        dom = _var_domain(self.var)
        head = Tok(
            f"\\operatorname*{{arg\\,min}}_{{{tex(self.var)} \\in {tex(dom)}}}",
            f"argmin over {_uni(self.var)} ∈ {_uni(dom)} of ",
        )
        out = [head, self.f, EQ, sp.FiniteSet(self.x0)]
        if self.value is not None:
            low = Tok(
                f",\\qquad \\min_{{{tex(self.var)} \\in {tex(dom)}}}",
                f",    min over {_uni(self.var)} ∈ {_uni(dom)} of ",
            )
            out += [low, self.f, EQ, self.value]
        return out

    def method(self, lang: str = "en", latex: bool = False) -> str:
        if lang == "zh":
            value = "，且 f(x₀) 等于所述最小值" if self.value is not None else ""
            return (
                "x₀ 为实数且在定义域内，在整个定义域上 f″ > 0（sympy 的假设系统）且 f′(x₀) = 0：严格凸，最小值点唯一"
                + value
            )
        value = "; f(x₀) equals the stated minimum" if self.value is not None else ""
        return (
            "x₀ is real and in the domain, f″ > 0 on the whole domain (sympy's assumptions) and f′(x₀) = 0: "
            "strictly convex, unique minimiser" + value
        )


def _uni(expr: object) -> str:
    return join_unicode([expr])


@dataclass
class PositiveDefinite(Claim):
    """The symmetric matrix is positive definite: all leading principal minors > 0 (Sylvester).

    With `manifest`, the matrix (e.g. a matrix of unevaluated second derivatives) is first proved equal to
    the manifest matrix, whose minors are then checked.
    """

    matrix: object
    manifest: object | None = None
    via: Sequence[str] = ("expand", "simplify")
    kind = "positive-definite"

    def check(self, guard: bool = True) -> str:
        note = ""
        m = sp.Matrix(self.matrix)
        if self.manifest is not None:
            note = Equal(m, sp.Matrix(self.manifest), self.via).check() + "; then "
            m = sp.Matrix(self.manifest)
        if m != m.T:
            raise ClaimError("matrix is not symmetric")
        diagonal = m.is_diagonal() and all(_restates_hypotheses(d) is not None for d in m.diagonal())
        if guard and self.manifest is None and diagonal:
            raise ClaimError("tautology: a diagonal of numbers or declared-positive symbols (nothing to prove)")
        minors = [sp.simplify(m[:k, :k].det()) for k in range(1, m.rows + 1)]
        if not all(_fact_noting_uses(d, "is_positive") for d in minors):
            raise ClaimError(f"leading principal minors {minors} are not all > 0")
        return note + f"leading principal minors {minors}"

    def parts(self) -> list:
        out = [sp.Matrix(self.matrix)] + ([EQ, sp.Matrix(self.manifest)] if self.manifest is not None else [])
        return out + [Tok("\\succ 0", " ≻ 0")]

    def method(self, lang: str = "en", latex: bool = False) -> str:
        first = self.manifest is not None
        if lang == "zh":
            return ("先验证两矩阵相等，再" if first else "") + "各阶顺序主子式均 > 0（西尔维斯特判据）"
        return ("checked equal entrywise, then " if first else "") + "all leading principal minors > 0 (Sylvester)"


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

    def parts(self) -> list:
        return [sp.Derivative(self.expr, self.symbol), EQ, sp.Integer(0)]

    def method(self, lang: str = "en", latex: bool = False) -> str:
        chain = " → ".join(self.via)
        if lang == "zh":
            return f"对 {self.symbol} 的导数化简为 0（{chain}）"
        return f"its derivative in {self.symbol} rewrites to 0 ({chain})"


# ---- steps and proofs ----------------------------------------------------------------------------------


def _claim_fields(claim: Claim) -> dict:
    return {f.name: getattr(claim, f.name) for f in fields(claim)}  # type: ignore[arg-type]


@dataclass
class Step:
    """One line of a derivation: a textbook name, an explanation and its claim (displayed as rendered).

    `where` maps abbreviations shown in the claim to what they stand for; it is shown under the formula
    and substituted before the check.
    """

    name: Text
    explain: Text
    claim: Claim
    where: dict | None = None
    eq: str | None = None  # the paper's label for this result ("Eq. 7", "Thm. 2", "App. A.1"), shown with the step
    paper: str | None = None  # the paper it cites (a key of proofs.papers.PAPERS) when not the proof's `source`
    # the hypotheses its last check relied on (set by check(); shown as "uses h > 0")
    used: ClassVar[tuple] = ()  # not a field: a result of checking, not part of what the step says

    def unfolded(self) -> Claim:
        """The claim with abbreviations, σ, d/dx and |_{x=a} replaced by what they mean: what is checked."""
        return replace(self.claim, **{k: unfold(v, self.where) for k, v in _claim_fields(self.claim).items()})

    def check(self) -> str:
        """Check the claim; record in `used` the hypotheses the check relied on."""
        global _USES
        outer, _USES = _USES, []
        try:
            self._checked = True
            detail = self._check()
            used = {hp.symbol: hp for hp in _USES}
            self.used = tuple(sorted(used.values(), key=str))
            if self.used:
                detail += "; uses " + _listed(self.used)
            return detail
        finally:
            _USES = outer

    def hypotheses_used(self) -> tuple:
        """The hypotheses its check relies on (checking it first if it has not been checked)."""
        if not getattr(self, "_checked", False):
            try:
                self.check()
            except Exception:
                return ()
        return self.used

    def _check(self) -> str:
        claim = self.unfolded()
        if isinstance(claim, Equal) and not claim.cases:
            # A displayed derivative or point evaluation may make the two sides equal by evaluation alone
            # (e.g. -log σ(βh) at h = 0 is log 2): that computation is the check. It must not be the
            # abbreviations that make them equal, though.
            lhs, rhs = (unfold(v, self.where, evaluate=False) for v in (self.claim.lhs, self.claim.rhs))
            if sp.sympify(lhs) == sp.sympify(rhs):
                raise ClaimError("tautology: both sides are the same expression once the abbreviations are expanded")
            diff = sp.sympify(claim.lhs) - sp.sympify(claim.rhs)
            if _is_zero(diff.subs(claim.given) if claim.given else diff):
                return "lhs - rhs = 0 by evaluating the displayed derivative or substitution"
        side = "expr" if isinstance(claim, Positive) else "matrix" if isinstance(claim, PositiveDefinite) else None
        if side and claim.manifest is not None:
            # the same for a displayed derivative proved equal to a manifest form by evaluation alone
            shown = unfold(getattr(self.claim, side), self.where, evaluate=False)
            if _same_object(shown, unfold(self.claim.manifest, self.where, evaluate=False)):
                raise ClaimError("tautology: the expression is its manifest form once the abbreviations are expanded")
            if _same_object(getattr(claim, side), claim.manifest):
                note = "equal to the manifest form by evaluating the displayed derivative; "
                return note + replace(claim, **{side: claim.manifest, "manifest": None}).check(guard=False)
        return claim.check()

    def _bounded_parts(self) -> list:
        used = set().union(*(e.free_symbols for e in _flat(_claim_fields(self.claim)) + _flat(self.where or {})))
        out: list = []
        for s in sorted((s for s in used if s in BOUNDED), key=lambda s: s.name):
            iv = BOUNDED[s]
            hi = [Tok("<", " < "), iv.sup] if iv.sup is not sp.oo else []
            out += [Tok("\\qquad", "    "), iv.inf, Tok("<", " < "), s] + hi
        return out

    def display_parts(self) -> list[list]:
        """The displayed lines: the claim (with the range of each bounded symbol), then one per abbreviation."""
        lines = [self.claim.parts() + self._bounded_parts()]
        for n, (k, v) in enumerate((self.where or {}).items()):
            lines.append(
                [
                    Tok("\\text{where}\\quad", "where ") if n == 0 else Tok("\\phantom{\\text{where}}\\quad", "      "),
                    k,
                    EQ,
                    v,
                ]
            )
        return lines

    def latex(self) -> str:
        lines = [join_tex(line) for line in self.display_parts()]
        if len(lines) == 1:
            return lines[0]
        return "\\begin{gathered}\n" + " \\\\\n".join(lines) + "\n\\end{gathered}"

    def unicode(self) -> str:
        return "\n".join(join_unicode(line) for line in self.display_parts())

    @property
    def statement(self) -> str:
        """The displayed LaTeX (rendered from the claim; there is no hand-written statement)."""
        return self.latex()


@dataclass
class Proof:
    """An ordered derivation. `justifies` names the dpo_ref objects whose formulas it derives."""

    name: str
    title: Text
    intro: Text
    justifies: tuple[str, ...]
    steps: list[Step]
    conclusion: Text | None = None
    source: str | None = None  # the paper it follows: a key of proofs.papers.PAPERS, cited with each `eq`

    def hypotheses(self) -> list[tuple[Hypothesis, list[int]]]:
        """Its symbols' hypotheses (signs, ranges, integer counts), each with the 1-based steps that mention
        it ([] when every step does not matter: listed only where it is not all of them)."""
        where: dict = {}
        for index, step in enumerate(self.steps, 1):
            for hp in hypotheses_of(list(_claim_fields(step.claim).values()) + list((step.where or {}).items())):
                where.setdefault(hp, []).append(index)
        out = [(hp, [] if len(ix) == len(self.steps) else ix) for hp, ix in where.items()]
        return sorted(out, key=lambda item: (item[0].integer, str(item[0])))


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


def check_step(step: Step) -> str:
    """Check one step; returns how it was verified or raises ClaimError (any sympy error becomes one)."""
    try:
        return step.check()
    except ClaimError:
        raise
    except Exception as err:  # a sympy error inside a check is a failed step, not a crash
        raise ClaimError(f"{type(err).__name__}: {err}") from err


def run_proof(proof: Proof) -> ProofResult:
    """Check the steps in order; the first failing step stops the proof (it is the last result)."""
    result = ProofResult(proof)
    start = time.perf_counter()
    for index, step in enumerate(proof.steps, 1):
        t0 = time.perf_counter()
        try:
            detail, ok = check_step(step), True
        except ClaimError as err:
            detail, ok = str(err), False
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
