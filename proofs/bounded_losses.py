"""22. Bounds of the log-ratio losses: NCA's infimum and the chosen log-ratio it asks for; APO between 0 and 2."""

from __future__ import annotations

import sympy as sp

from .common import beta, sigma
from .core import GlobalMinimum, Limit, Positive, Proof, Step, Text

rho_w, rho_l = sp.symbols("rho_w rho_l", real=True)  # the two log-ratios
NCA_CHOSEN = -sp.log(sigma(beta * rho_w)) - sp.log(sigma(-beta * rho_w)) / 2
NCA_REJECTED = -sp.log(sigma(-beta * rho_l)) / 2
NCA = NCA_CHOSEN + NCA_REJECTED  # what nca_pair_loss computes
R_W_STAR = sp.log(2) / beta  # sigma(beta rho_w*) = 2/3
NCA_INF = sp.Rational(3, 2) * sp.log(3) - sp.log(2)  # the chosen term's minimum, log(3/2) + log(3)/2
APO_ZERO = 1 - sigma(beta * rho_w) + sigma(beta * rho_l)
APO_DOWN = sigma(beta * rho_w) + 1 - sigma(beta * (rho_w - rho_l))


def two_minus(loss: sp.Expr) -> sp.Expr:
    """2 - loss, kept as written (sympy would distribute the minus sign)."""
    return sp.Add(2, sp.Mul(-1, loss, evaluate=False), evaluate=False)


PROOF = Proof(
    name="bounded-losses",
    title=Text("Bounds of NCA and APO", "NCA 与 APO 的界"),
    intro=Text(
        "NCA (Chen et al. 2024) and APO (D'Oosterlinck et al. 2024) score the chosen and the rejected log-ratio "
        "$\\rho_w$, $\\rho_l$ separately. NCA asks for a finite chosen log-ratio and pushes the rejected one down; its "
        "values stay above a positive constant. APO's two variants are sums of two logistic terms and lie "
        "strictly between 0 and 2.",
        "NCA（Chen 等，2024）与 APO（D'Oosterlinck 等，2024）分别给被选与被拒回答的对数比值 $\\rho_w$、$\\rho_l$ 打分。"
        "NCA 要求被选回答的对数比值取一个有限值，并把被拒回答的压低；它的值始终大于一个正的常数。"
        "APO 的两个变体是两个逻辑斯谛项之和，取值严格介于 0 与 2 之间。",
    ),
    justifies=("dpo_ref.family.nca_pair_loss", "dpo_ref.family.apo_zero_loss", "dpo_ref.family.apo_down_loss"),
    source="apo",
    steps=[
        Step(
            Text("NCA's target for the chosen log-ratio", "NCA 对被选对数比值的目标"),
            Text(
                "The chosen part of NCA is strictly convex in $\\rho_w$ and minimised exactly at "
                "$\\rho_w^* = \\ln 2/\\beta$, where $\\sigma(\\beta \\rho_w^*) = 2/3$; its minimum is "
                "$\\frac32\\ln 3 - \\ln 2 \\approx 0.955$.",
                "NCA 的被选部分关于 $\\rho_w$ 严格凸，恰在 $\\rho_w^* = \\ln 2/\\beta$ 处取最小值，此时 "
                "$\\sigma(\\beta \\rho_w^*) = 2/3$；最小值为 $\\frac32\\ln 3 - \\ln 2 \\approx 0.955$。",
            ),
            GlobalMinimum(NCA_CHOSEN, rho_w, R_W_STAR, value=NCA_INF),
            eq="NCA loss",
            paper="nca",
        ),
        Step(
            Text("NCA's rejected part is positive", "NCA 的被拒部分为正"),
            Text(
                "The rejected part $-\\frac12\\log\\sigma(-\\beta \\rho_l)$ is positive, so NCA exceeds "
                "$\\frac32\\ln 3 - \\ln 2$ everywhere ...",
                "被拒部分 $-\\frac12\\log\\sigma(-\\beta \\rho_l)$ 为正，所以 NCA 处处大于 $\\frac32\\ln 3 - \\ln 2$……",
            ),
            Positive(NCA_REJECTED),
            eq="NCA loss",
            paper="nca",
        ),
        Step(
            Text("NCA's rejected part vanishes only in the limit", "NCA 的被拒部分只在极限中消失"),
            Text(
                "... and tends to 0 as $\\rho_l \\to -\\infty$: the infimum $\\frac32\\ln 3 - \\ln 2$ is approached "
                "but "
                "not reached, and the loss keeps pushing $\\pi(y_l)$ down.",
                "……并在 $\\rho_l \\to -\\infty$ 时趋于 0：下确界 $\\frac32\\ln 3 - \\ln 2$ 可以逼近但达不到，"
                "损失会一直把 $\\pi(y_l)$ 往下压。",
            ),
            Limit(NCA, rho_l, -sp.oo, NCA_CHOSEN),
            eq="NCA loss",
            paper="nca",
        ),
        Step(
            Text("APO-zero is positive", "APO-zero 为正"),
            Text(
                "$1 - \\sigma(\\beta \\rho_w) = \\sigma(-\\beta \\rho_w)$, so APO-zero is a sum of two logistic "
                "values, "
                "each positive.",
                "$1 - \\sigma(\\beta \\rho_w) = \\sigma(-\\beta \\rho_w)$，所以 APO-zero 是两个逻辑斯谛函数值之和，每"
                "个都为"
                "正"
                "。",
            ),
            Positive(APO_ZERO, manifest=sigma(-beta * rho_w) + sigma(beta * rho_l), via=("simplify",)),
            eq="Eq. 7",
        ),
        Step(
            Text("APO-zero is below 2", "APO-zero 小于 2"),
            Text(
                "$2 - \\mathcal{L}$ is again a sum of two logistic values: "
                "$0 < \\mathcal{L}_{\\mathrm{APO\\text{-}zero}} < 2$.",
                "$2 - \\mathcal{L}$ 同样是两个逻辑斯谛函数值之和："
                "$0 < \\mathcal{L}_{\\mathrm{APO\\text{-}zero}} < 2$。",
            ),
            Positive(two_minus(APO_ZERO), manifest=sigma(beta * rho_w) + sigma(-beta * rho_l), via=("simplify",)),
            eq="Eq. 7",
        ),
        Step(
            Text("APO-down is positive", "APO-down 为正"),
            Text(
                "With $1 - \\sigma(\\beta h) = \\sigma(-\\beta h)$, $h = \\rho_w - \\rho_l$, APO-down is a sum of two "
                "logistic values ...",
                "由 $1 - \\sigma(\\beta h) = \\sigma(-\\beta h)$（$h = \\rho_w - \\rho_l$），APO-down 是两个逻辑斯谛"
                "函数值"
                "之"
                "和……",
            ),
            Positive(APO_DOWN, manifest=sigma(beta * rho_w) + sigma(-beta * (rho_w - rho_l)), via=("simplify",)),
            eq="Eq. 8",
        ),
        Step(
            Text("APO-down is below 2", "APO-down 小于 2"),
            Text(
                "... and so is $2 - \\mathcal{L}$: $0 < \\mathcal{L}_{\\mathrm{APO\\text{-}down}} < 2$.",
                "……$2 - \\mathcal{L}$ 也是：$0 < \\mathcal{L}_{\\mathrm{APO\\text{-}down}} < 2$。",
            ),
            Positive(
                two_minus(APO_DOWN), manifest=sigma(-beta * rho_w) + sigma(beta * (rho_w - rho_l)), via=("simplify",)
            ),
            eq="Eq. 8",
        ),
    ],
    conclusion=Text(
        "`nca_pair_loss` is minimised in the chosen log-ratio at $\\rho_w^* = \\ln 2/\\beta$ and stays above its "
        "infimum $\\frac32\\ln 3 - \\ln 2$, approached as $\\rho_l \\to -\\infty$; `apo_zero_loss` and "
        "`apo_down_loss` lie strictly between 0 and 2.",
        "`nca_pair_loss` 关于被选对数比值在 $\\rho_w^* = \\ln 2/\\beta$ 处最小，且始终大于其下确界 "
        "$\\frac32\\ln 3 - \\ln 2$（在 $\\rho_l \\to -\\infty$ 时逼近）；`apo_zero_loss` 与 `apo_down_loss` 严格介于 0 "
        "与"
        " 2 之间。",
    ),
)


def compare() -> list:
    """nca_pair_loss's value and zero slope in log pi(y_w) at rho_w* = ln 2/β, its value far below in rho_l,
    and the APO losses against the derived expressions."""
    from dpo_ref.family import apo_down_loss, apo_zero_loss, nca_pair_loss

    from .numeric import Row, exact, tensors

    beta_ = 0.5
    w = exact(R_W_STAR, {beta: beta_})
    pc, pr, rc, rr = tensors(w - 2.0, -3.0, -2.0, -3.0)  # rho_w = rho_w*, rho_l = 0
    out = nca_pair_loss(pc, pr, rc, rr, beta=beta_).losses
    out.sum().backward()
    point = {rho_w: w, rho_l: 0.0, beta: beta_}
    rows = [
        Row("NCA at rho_w*, rho_l = 0", exact(NCA, point), out.item()),
        Row("NCA slope in log pi(y_w) at rho_w*", 0.0, pc.grad.item()),
    ]
    (pr_low,) = tensors(-3.0 - 60.0)  # rho_l = -60: the rejected part is below 1e-12
    low = nca_pair_loss(pc.detach(), pr_low, rc, rr, beta=beta_).losses.item()
    rows.append(Row("NCA at rho_w*, rho_l = -60 (near the infimum)", exact(NCA, {**point, rho_l: -60.0}), low))
    for rv in ((1.0, -0.5), (-4.0, 6.0)):
        pcs, prs, rcs, rrs = tensors(rv[0], rv[1], 0.0, 0.0)
        at = {rho_w: rv[0], rho_l: rv[1], beta: beta_}
        rows.append(
            Row(f"APO-zero at {rv}", exact(APO_ZERO, at), apo_zero_loss(pcs, prs, rcs, rrs, beta=beta_).losses.item())
        )
        rows.append(
            Row(f"APO-down at {rv}", exact(APO_DOWN, at), apo_down_loss(pcs, prs, rcs, rrs, beta=beta_).losses.item())
        )
    return rows
