"""23. DiscoPOP: the code's stable form is the paper's loss; positive, tending to 0, so no finite minimiser (Lu et al.
2024, Eq. 5)."""

from __future__ import annotations

import sympy as sp

from .common import beta, sigma
from .core import NAMES, Equal, Limit, Positive, Proof, Step, Text

u = sp.Symbol("u", real=True)  # u = beta h, the scaled margin
# the temperature of the modulation (the paper's and the code's `tau`), shown as kappa: tau is IPO's regularisation
tau = sp.Symbol("tau_discopop", positive=True)
NAMES["tau_discopop"] = ("\\kappa", "κ")
# the paper's Eq. 5, its two terms in the paper's order (an unevaluated sum is displayed as written)
DISCOPOP = sp.Add((1 - sigma(u / tau)) * (-sp.log(sigma(u))), sigma(u / tau) * sp.exp(-u), evaluate=False)
CODE = sigma(-u / tau) * (-sp.log(sigma(u))) + sp.exp(sp.log(sigma(u / tau)) - u)  # what discopop_loss computes
SLOPE_AT_0 = (1 - sp.log(2)) / (4 * tau) - sp.Rational(3, 4)

PROOF = Proof(
    name="discopop",
    title=Text("DiscoPOP: a blend of the logistic and the exponential loss", "DiscoPOP：逻辑损失与指数损失的混合"),
    intro=Text(
        "DiscoPOP (Lu et al. 2024), found by an LLM-driven search, blends the DPO loss $-\\log\\sigma(u)$ and "
        "the exponential loss $e^{-u}$ of $u = \\beta h$ with the weight $\\sigma(u/\\kappa)$ "
        "($\\kappa$: the paper's temperature $\\tau$, `tau` in the code). What makes "
        "`discopop_loss` right is that its overflow-safe form is the paper's formula; its minimiser has no "
        "closed form because there is none: the loss is positive and tends to 0 as $u \\to \\infty$, so, like DPO, "
        "it has no finite minimiser, and it is not convex (its slope at $u = 0$ is positive for small $\\kappa$).",
        "DiscoPOP（Lu 等，2024）由大模型驱动的搜索发现，它用权重 $\\sigma(u/\\kappa)$（$\\kappa$ 即论文中的温度 "
        "$\\tau$，代码中的 `tau`）把 DPO 损失 "
        "$-\\log\\sigma(u)$ 与指数损失 $e^{-u}$（$u = \\beta h$）混合起来。`discopop_loss` 正确的依据是："
        "它防溢出的写法就是论文的公式；它的最小值点没有闭式形式，因为根本不存在：损失为正且当 $u \\to \\infty$ "
        "时趋于 0，所以与 DPO 一样没有有限的最小值点，而且它不是凸的（$\\kappa$ 较小时它在 $u = 0$ "
        "处的斜率为正）。",
    ),
    justifies=("dpo_ref.family.discopop_loss",),
    source="discopop",
    steps=[
        Step(
            Text("The code's form is the paper's loss", "代码的写法就是论文的损失"),
            Text(
                "`discopop_loss` writes $1 - \\sigma(u/\\kappa)$ as $\\sigma(-u/\\kappa)$ and the second "
                "term as "
                "$e^{\\log\\sigma(u/\\kappa) - u}$, which stays finite where $\\sigma(u/\\kappa)$ "
                "underflows "
                "and "
                "$e^{-u}$ overflows. The two forms are the same function.",
                "`discopop_loss` 把 $1 - \\sigma(u/\\kappa)$ 写成 $\\sigma(-u/\\kappa)$，把第二项写成 "
                "$e^{\\log\\sigma(u/\\kappa) - u}$：在 $\\sigma(u/\\kappa)$ 下溢、$e^{-u}$ "
                "上溢处它仍有限。"
                "两种写法是同一个函数。",
            ),
            Equal(CODE, DISCOPOP, via=("exp", "simplify")),
            eq="Eq. 5",
        ),
        Step(
            Text("DiscoPOP is positive", "DiscoPOP 为正"),
            Text(
                "Both terms are positive: a positive weight times $-\\log\\sigma(u) = \\log(1 + e^{-u}) > 0$, "
                "and a positive weight times $e^{-u}$.",
                "两项都为正：正的权重乘以 $-\\log\\sigma(u) = \\log(1 + e^{-u}) > 0$，以及正的权重乘以 $e^{-u}$。",
            ),
            Positive(
                DISCOPOP,
                manifest=sigma(-u / tau) * sp.log(1 + sp.exp(-u)) + sigma(u / tau) * sp.exp(-u),
                via=("exp", "simplify"),
            ),
            eq="Eq. 5",
        ),
        Step(
            Text("It tends to 0: no finite minimiser", "它趋于 0：没有有限的最小值点"),
            Text(
                "As $u \\to \\infty$ the loss tends to 0, its infimum, which the positive loss never attains: "
                "like DPO on a pair seen once, the margin is pushed without bound.",
                "当 $u \\to \\infty$ 时损失趋于其下确界 0，而正的损失永远达不到它：与只出现一次的样本对上的 DPO "
                "一样，间隔被无限推高。",
            ),
            Limit(DISCOPOP, u, sp.oo, 0),
            eq="Eq. 5",
        ),
        Step(
            Text("Its slope at ρ = 0: not convex", "ρ = 0 处的斜率：不是凸的"),
            Text(
                "At $u = 0$ the slope is $(1 - \\log 2)/(4\\kappa) - 3/4$, positive for $\\kappa < (1 - \\log 2)/3 "
                "\\approx 0.10$ (the paper's default 0.05): near the start of training the loss rises before it "
                "falls, so it is not convex, and the gradient the code's autograd returns is this slope times "
                "$\\beta$.",
                "在 $u = 0$ 处斜率为 $(1 - \\log 2)/(4\\kappa) - 3/4$，当 $\\kappa < (1 - \\log 2)/3 \\approx 0.10$"
                "（论文的默认值 0.05）时为正：训练开始附近损失先升后降，因此它不是凸的；代码经自动微分得到的梯度"
                "就是"
                "这个斜率乘以 $\\beta$。",
            ),
            Equal(sp.Subs(sp.Derivative(DISCOPOP, u), u, 0), SLOPE_AT_0, via=("exp", "simplify")),
            eq="Eq. 5",
        ),
    ],
    conclusion=Text(
        "`discopop_loss` computes the paper's Eq. 5 in an overflow-safe form; it has no finite minimiser and is "
        "not convex, so only its values and gradients can be checked, not an optimum.",
        "`discopop_loss` 以防溢出的形式计算论文的公式 5；它没有有限的最小值点且不是凸的，所以只能检验其值与梯度，"
        "而不能检验最优点。",
    ),
)


def compare() -> list:
    """discopop_loss and its autograd gradient in the margin against the paper's formula."""
    from dpo_ref.family import discopop_loss

    from .numeric import Row, exact, tensors

    rows = []
    beta_, tau_ = 0.5, 0.05
    for h_ in (-3.0, 0.0, 0.25, 4.0):
        pc, pr, rc, rr = tensors(h_, 0.0, 0.0, 0.0)
        out = discopop_loss(pc, pr, rc, rr, beta=beta_, tau=tau_)
        out.losses.sum().backward()
        at = {u: beta_ * h_, tau: tau_}
        rows.append(Row(f"loss at h = {h_:g}", exact(DISCOPOP, at), out.losses.item()))
        slope = beta * sp.diff(DISCOPOP, u)
        rows.append(Row(f"∂L/∂log π(y_w) at h = {h_:g}", exact(slope, {**at, beta: beta_}), pc.grad.item()))
    return rows
