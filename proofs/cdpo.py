"""Conservative DPO: label smoothing gives a finite optimum.

Mitchell (2023), "A note on DPO with noisy preferences".
"""

from __future__ import annotations

import sympy as sp

from .common import beta, eps, h, sigma, z
from .core import Equal, GlobalMinimum, Limit, Proof, Step, Text

# Labels flipped with probability eps: the expected negative log-likelihood (a cross-entropy with target
# 1 - eps), straight from the model. The linked tests compare dpo_loss(label_smoothing=eps) with this.
SMOOTHED_NLL = -(1 - eps) * sp.log(sigma(beta * h)) - eps * sp.log(1 - sigma(beta * h))
CDPO = -(1 - eps) * sp.log(sigma(beta * h)) - eps * sp.log(sigma(-beta * h))  # the form the code evaluates
DPO_PLUS = -sp.log(sigma(beta * h)) + eps * beta * h
GRAD = beta * (sigma(beta * h) - (1 - eps))
H_STAR = sp.log((1 - eps) / eps) / beta

PROOF = Proof(
    name="cdpo",
    title=Text("Conservative DPO (label smoothing)", "保守 DPO（标签平滑）"),
    intro=Text(
        "If each preference label is flipped with probability $\\varepsilon$, the expected "
        "negative log-likelihood is a cross-entropy with a smoothed target $1 - \\varepsilon$. Its optimum "
        "is finite: the model is never asked to be more certain than the labels are. "
        "The steps are checked for $0 < \\varepsilon < 1/2$, the range `dpo_loss` accepts besides $\\varepsilon = 0$ "
        "(plain DPO, proof 12).",
        "如果每个偏好标签以概率 $\\varepsilon$ 被翻转，期望负对数似然就是目标被平滑为 $1 - \\varepsilon$ 的交叉熵。"
        "它的最优点是有限的：模型永远不会被要求比标签本身更确定。"
        "各步骤在 $0 < \\varepsilon < 1/2$ 上检验，"
        "这是 `dpo_loss` 除 $\\varepsilon = 0$（普通 DPO，证明 12）之外接受的范围。",
    ),
    justifies=("dpo_ref.losses.dpo_losses_from_margin", "dpo_ref.losses.dpo_loss"),
    source="cdpo",
    steps=[
        Step(
            Text("The complement of the logistic function", "逻辑斯谛函数的补"),
            Text(
                "The probability of the flipped label is $1 - \\sigma(z) = \\sigma(-z)$.",
                "被翻转的标签的概率为 $1 - \\sigma(z) = \\sigma(-z)$。",
            ),
            Equal(1 - sigma(z), sigma(-z), via=("simplify",)),
            eq="cDPO loss",
        ),
        Step(
            Text("Conservative DPO is a smoothed cross-entropy", "保守 DPO 是平滑后的交叉熵"),
            Text(
                "The expected negative log-likelihood under label noise equals the loss that "
                "`dpo_losses_from_margin` computes with `label_smoothing` $= \\varepsilon$.",
                "标签噪声下的期望负对数似然，等于 `dpo_losses_from_margin` 在 `label_smoothing` $= \\varepsilon$ "
                "时计算的损失。",
            ),
            Equal(SMOOTHED_NLL, CDPO, via=("simplify",)),
            eq="cDPO loss",
        ),
        Step(
            Text("cDPO is DPO plus a linear term", "cDPO 等于 DPO 加一个线性项"),
            Text(
                "Using $\\log\\sigma(z) - \\log\\sigma(-z) = z$, the smoothing adds $\\varepsilon\\beta h$ to the "
                "DPO loss: a constant push (gradient $\\varepsilon\\beta$) back against growing the margin.",
                "利用 $\\log\\sigma(z) - \\log\\sigma(-z) = z$，平滑项在 DPO 损失上加了 $\\varepsilon\\beta h$："
                "即一个恒定的（梯度为 $\\varepsilon\\beta$）、抵抗间隔增大的推力。",
            ),
            Equal(CDPO, DPO_PLUS, via=("expand_log", "simplify")),
            eq="cDPO loss",
        ),
        Step(
            Text("The cDPO gradient", "cDPO 的梯度"),
            Text(
                "Differentiating in $h$:",
                "对 $h$ 求导：",
            ),
            Equal(sp.Derivative(CDPO, h), GRAD, via=("simplify",)),
            eq="cDPO gradient",
        ),
        Step(
            Text("The optimal margin", "最优间隔"),
            Text(
                "The loss is strictly convex (curvature $\\beta^2\\sigma(\\beta h)\\sigma(-\\beta h) > 0$) and its "
                "gradient vanishes at $h^* = \\beta^{-1}\\ln\\frac{1-\\varepsilon}{\\varepsilon}$, so that is the "
                "unique minimiser.",
                "损失严格凸（曲率 $\\beta^2\\sigma(\\beta h)\\sigma(-\\beta h) > 0$），且梯度在 "
                "$h^* = \\beta^{-1}\\ln\\frac{1-\\varepsilon}{\\varepsilon}$ 处为零，因此它是唯一的最小值点。",
            ),
            GlobalMinimum(CDPO, h, H_STAR),
            eq="cDPO loss",
        ),
        Step(
            Text("At the optimum the model matches the label noise", "最优点处模型与标签噪声一致"),
            Text(
                "The preference probability the model assigns at $h^*$ is exactly $1 - \\varepsilon$.",
                "模型在 $h^*$ 处给出的偏好概率恰好是 $1 - \\varepsilon$。",
            ),
            Equal(sigma(beta * H_STAR), 1 - eps, via=("simplify",)),
            eq="cDPO loss",
        ),
        Step(
            Text("Without smoothing the optimum escapes to infinity", "不加平滑时最优点逃向无穷"),
            Text(
                "As $\\varepsilon \\to 0^+$ the optimal margin diverges: plain DPO with a deterministic "
                "preference (proof 12).",
                "当 $\\varepsilon \\to 0^+$ 时最优间隔发散：这就回到了确定性偏好下的普通 DPO（证明 12）。",
            ),
            Limit(H_STAR, eps, 0, sp.oo, "+"),
            eq="cDPO loss",
        ),
        Step(
            Text("Maximal smoothing removes the preference", "最大平滑消除了偏好"),
            Text(
                "At the boundary $\\varepsilon = 1/2$ (outside the range the other steps assume) the formula "
                "for $h^*$ gives 0: the labels carry no information, which is why `dpo_loss` requires "
                "$\\varepsilon < 1/2$.",
                "在边界 $\\varepsilon = 1/2$（不在其他步骤假设的范围内）处，$h^*$ 的公式给出 0："
                "标签不含任何信息，这就是 `dpo_loss` 要求 $\\varepsilon < 1/2$ 的原因。",
            ),
            Equal(sp.Subs(H_STAR, eps, sp.Rational(1, 2)), 0, via=("simplify",)),
            eq="cDPO loss",
        ),
    ],
    conclusion=Text(
        "$\\mathcal{L}_{\\mathrm{cDPO}} = -(1-\\varepsilon)\\log\\sigma(\\beta "
        "h) - \\varepsilon\\log\\sigma(-\\beta h)$, "
        "what `dpo_losses_from_margin(margin, beta, label_smoothing)` computes, has the finite minimiser "
        "$h^* = \\beta^{-1}\\ln((1-\\varepsilon)/\\varepsilon)$.",
        "$\\mathcal{L}_{\\mathrm{cDPO}} = -(1-\\varepsilon)\\log\\sigma(\\beta "
        "h) - \\varepsilon\\log\\sigma(-\\beta h)$，"
        "即 `dpo_losses_from_margin(margin, beta, label_smoothing)` 计算的量，具有有限的最小值点 "
        "$h^* = \\beta^{-1}\\ln((1-\\varepsilon)/\\varepsilon)$。",
    ),
)


def compare() -> list:
    """dpo_losses_from_margin(label_smoothing=ε) against the label-flip NLL, and its zero slope at h*."""
    from dpo_ref.losses import dpo_loss, dpo_losses_from_margin

    from .numeric import Row, exact, tensors

    beta_, eps_ = 0.5, 0.1
    logps = (-10.0, -12.5, -11.0, -11.5)  # margin (-10 + 11) - (-12.5 + 11.5) = 2
    out = dpo_loss(*tensors(*logps), beta=beta_, label_smoothing=eps_)
    rows = [
        Row(
            "dpo_loss(label_smoothing=ε), margin 2",
            exact(SMOOTHED_NLL, {h: 2.0, beta: beta_, eps: eps_}),
            out.losses.item(),
        )
    ]
    for hv in (-2.0, 1.0, 8.0):
        (hs,) = tensors(hv)
        want = exact(SMOOTHED_NLL, {h: hv, beta: beta_, eps: eps_})
        rows.append(Row(f"loss at h = {hv:g}", want, dpo_losses_from_margin(hs, beta_, eps_).item()))
    (hs,) = tensors(exact(H_STAR, {beta: beta_, eps: eps_}))
    dpo_losses_from_margin(hs, beta_, eps_).sum().backward()
    rows.append(Row("slope at h* = log((1 − ε)/ε)/β", 0.0, hs.grad.item()))
    return rows
