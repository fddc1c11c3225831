"""Symbols and small definitions shared by the derivations.

The logistic function is written out as 1 / (1 + e^{-z}) rather than wrapped in an opaque sympy
Function, so every identity about it is decided by rewriting, not assumed.
"""

from __future__ import annotations

import sympy as sp

beta = sp.Symbol("beta", positive=True)  # KL coefficient, beta > 0
tau = sp.Symbol("tau", positive=True)  # IPO regularisation, tau > 0
eps = sp.Symbol("epsilon", positive=True)  # cDPO label-flip probability, 0 < eps < 1/2
h = sp.Symbol("h", real=True)  # preference margin
z = sp.Symbol("z", real=True)  # a generic logit
Z = sp.Symbol("Z", positive=True)  # partition function Z(x) > 0, used where its formula does not matter

# Log-probabilities (real numbers) of the chosen (w) and rejected (l) responses under the policy and the
# reference, in the order dpo_ref's functions take them.
logp_w, logp_l, logref_w, logref_l = sp.symbols("a_w a_l b_w b_l", real=True)
LOGPS = (logp_w, logp_l, logref_w, logref_l)


def sigma(x: sp.Expr) -> sp.Expr:
    """The logistic function sigma(x) = 1 / (1 + e^{-x})."""
    return 1 / (1 + sp.exp(-x))


def margin(a_w: sp.Expr, a_l: sp.Expr, b_w: sp.Expr, b_l: sp.Expr) -> sp.Expr:
    """h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)), grouped as in the code."""
    return (a_w - b_w) - (a_l - b_l)


def bradley_terry(r_w: sp.Expr, r_l: sp.Expr) -> sp.Expr:
    """p(y_w > y_l) = e^{r_w} / (e^{r_w} + e^{r_l})."""
    return sp.exp(r_w) / (sp.exp(r_w) + sp.exp(r_l))


def plackett_luce(rewards: list[sp.Expr], ranking: tuple[int, ...]) -> sp.Expr:
    """p(ranking) = prod_k e^{r_{tau(k)}} / sum_{j >= k} e^{r_{tau(j)}} (best first)."""
    p = sp.Integer(1)
    for k in range(len(ranking)):
        rest = ranking[k:]
        p *= sp.exp(rewards[ranking[k]]) / sp.Add(*[sp.exp(rewards[j]) for j in rest])
    return p
