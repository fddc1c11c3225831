"""Symbols and small definitions shared by the derivations.

The logistic function is the display function `sigma` of proofs.core: shown as σ(z) and written out as
1 / (1 + e^{-z}) before any check, so every identity about it is decided by rewriting, not assumed.
"""

from __future__ import annotations

import sympy as sp

from .core import NAMES, bounded, sigma

beta = sp.Symbol("beta", positive=True)  # KL coefficient, beta > 0
tau = sp.Symbol("tau", positive=True)  # IPO regularisation, tau > 0
eps = bounded(sp.Symbol("epsilon", positive=True), sp.Interval.open(0, sp.Rational(1, 2)))  # label-flip prob.
h = sp.Symbol("h", real=True)  # preference margin
z = sp.Symbol("z", real=True)  # a generic argument of sigma
Z = sp.Symbol("Z", positive=True)  # partition function Z(x) > 0, used where its formula does not matter

# Log-probabilities (real numbers) of the chosen (w) and rejected (l) responses under the policy and the
# reference, in the order dpo_ref's functions take them.
logp_w, logp_l, logref_w, logref_l = sp.symbols("a_w a_l b_w b_l", real=True)
LOGPS = (logp_w, logp_l, logref_w, logref_l)

NAMES.update(
    {
        "p^*": ("p^*", "p*"),
        "epsilon": (r"\varepsilon", "ε"),  # the glyph the prose uses
        "pi^ref_w": (r"\pi^{\mathrm{ref}}_w", "πʳᵉᶠ_w"),
        "pi^ref_l": (r"\pi^{\mathrm{ref}}_l", "πʳᵉᶠ_l"),
        # the rewards of the chosen and the rejected response (rho_w, rho_l are the family's log-ratios)
        **{f"r{p}(y_{s})": (f"r{p}(y_{s})", f"r{p}(y_{s})") for p in ("", "'") for s in "wl"},
    }
)

__all__ = ["LOGPS", "Z", "beta", "bradley_terry", "eps", "h", "margin", "plackett_luce", "sigma", "tau", "z"]


def margin(a_w: sp.Expr, a_l: sp.Expr, b_w: sp.Expr, b_l: sp.Expr) -> sp.Expr:
    """h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)), grouped (and shown) as in the code."""
    diff = sp.Add(a_w, sp.Mul(-1, b_w), evaluate=False), sp.Add(a_l, sp.Mul(-1, b_l), evaluate=False)
    return sp.Add(diff[0], sp.Mul(-1, diff[1], evaluate=False), evaluate=False)


def bradley_terry(r_w: sp.Expr, r_l: sp.Expr) -> sp.Expr:
    """p(y_w > y_l) = e^{r_w} / (e^{r_w} + e^{r_l})."""
    return sp.exp(r_w) / (sp.exp(r_w) + sp.exp(r_l))


def plackett_luce(rewards: list[sp.Expr], ranking: tuple[int, ...]) -> sp.Expr:
    """p(ranking) = prod_k e^{r_{omega(k)}} / sum_{j >= k} e^{r_{omega(j)}} (best first)."""
    p = sp.Integer(1)
    for k in range(len(ranking) - 1):  # the last choice is forced: its factor e^{r}/e^{r} is 1
        rest = ranking[k:]
        p *= sp.exp(rewards[ranking[k]]) / sp.Add(*[sp.exp(rewards[j]) for j in rest])
    return p
