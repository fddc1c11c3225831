"""The loss at initialisation is ln 2, its slope -beta/2 and its curvature at most beta^2/4."""

from __future__ import annotations

import sympy as sp

from .common import beta, h, sigma, z
from .core import Equal, Nonnegative, Positive, Proof, Step, Text

LOSS_H = -sp.log(sigma(beta * h))  # per-pair DPO loss as a function of the margin
INIT_LOSS = sp.log(2)
INIT_SLOPE = -beta / 2
CURVATURE = beta**2 * sigma(beta * h) * sigma(-beta * h)  # the claimed d^2 L / dh^2
CURVATURE_MAX = beta**2 / 4

PROOF = Proof(
    name="init-ln2",
    title=Text("The loss at initialisation: ln 2", "初始化时的损失：ln 2"),
    intro=Text(
        "Training starts from $\\pi_\\theta = \\pi_{\\mathrm{ref}}$, where every log-ratio is zero and so is "
        "the margin $h$. The first logged loss is therefore a fixed number, $\\ln 2 \\approx 0.693$, for "
        "every $\\beta$: a quick check of a DPO implementation, since a first loss other than $\\ln 2$ means "
        "that the policy does not start at the reference or that the loss is computed wrongly.",
        "训练从 $\\pi_\\theta = \\pi_{\\mathrm{ref}}$ 开始，此时所有对数比值为零，间隔 $h$ 也为零。"
        "因此第一次记录的损失是一个固定的数 $\\ln 2 \\approx 0.693$，与 $\\beta$ 无关。"
        "这可以用来快速检查 DPO 实现：如果第一次的损失不是 $\\ln 2$，说明策略并非从参考策略出发，或者损失算错了。",
    ),
    justifies=("dpo_ref.losses.dpo_losses_from_margin", "dpo_ref.losses.dpo_loss"),
    source="dpo",
    steps=[
        Step(
            Text("The loss at zero margin", "间隔为零时的损失"),
            Text(
                "Substituting $h = 0$: $\\sigma(0) = \\tfrac12$.",
                "代入 $h = 0$：$\\sigma(0) = \\tfrac12$。",
            ),
            Equal(sp.Subs(LOSS_H, h, 0), INIT_LOSS, via=("expand_log", "simplify")),
            eq="Eq. 7",
        ),
        Step(
            Text("The slope at initialisation", "初始化时的斜率"),
            Text(
                "The derivative of the loss in $h$ at $h = 0$ is $-\\beta/2$ for every pair, whatever the data: "
                "at the first step every pair carries the same weight $\\beta/2$ in the gradient (how far each "
                "margin then moves also depends on the model's gradients of the log-probabilities).",
                "损失对 $h$ 的导数在 $h = 0$ 处对每一对都是 $-\\beta/2$，与数据无关：第一步时每一对在梯度中的权重相同，"
                "都是 $\\beta/2$（每个间隔实际移动多少，还取决于模型对数概率的梯度）。",
            ),
            Equal(sp.Subs(sp.Derivative(LOSS_H, h), h, 0), INIT_SLOPE, via=("simplify",)),
            eq="Eq. 7",
        ),
        Step(
            Text("The curvature", "曲率"),
            Text(
                "Differentiating twice:",
                "求二阶导数：",
            ),
            Equal(sp.Derivative(LOSS_H, (h, 2)), CURVATURE, via=("simplify",)),
            eq="Eq. 7",
        ),
        Step(
            Text("A hyperbolic form of σ(z)σ(−z)", "σ(z)σ(−z) 的双曲函数形式"),
            Text(
                "Multiplying out the two logistic functions:",
                "把两个逻辑斯谛函数乘开：",
            ),
            Equal(sigma(z) * sigma(-z), 1 / (4 * sp.cosh(z / 2) ** 2), via=("exp", "simplify")),
            eq="Eq. 7",
        ),
        Step(
            Text("The curvature is positive", "曲率为正"),
            Text(
                "In the hyperbolic form the curvature is manifestly positive: the loss is strictly convex in $h$.",
                "在双曲函数形式下曲率显然为正：损失关于 $h$ 严格凸。",
            ),
            Positive(CURVATURE, manifest=beta**2 / (4 * sp.cosh(beta * h / 2) ** 2), via=("exp", "simplify")),
            eq="Eq. 7",
        ),
        Step(
            Text("The curvature is at most β²/4", "曲率至多为 β²/4"),
            Text(
                "The gap to $\\beta^2/4$ is a square: $1 - 1/\\cosh^2 = \\tanh^2$.",
                "与 $\\beta^2/4$ 的差是一个平方：$1 - 1/\\cosh^2 = \\tanh^2$。",
            ),
            Nonnegative(
                CURVATURE_MAX - CURVATURE, manifest=beta**2 * sp.tanh(beta * h / 2) ** 2 / 4, via=("exp", "simplify")
            ),
            eq="Eq. 7",
        ),
        Step(
            Text("The maximum curvature is reached at zero margin", "最大曲率在间隔为零处取得"),
            Text(
                "At $h = 0$ the bound is attained, so the curvature lies in $(0, \\beta^2/4]$ and is largest "
                "at $h = 0$, the margin every pair has at initialisation.",
                "在 $h = 0$ 处取到上界，因此曲率位于 $(0, \\beta^2/4]$ 内，"
                "并在 $h = 0$（初始化时每一对的间隔）处最大。",
            ),
            Equal(sp.Subs(CURVATURE, h, 0), CURVATURE_MAX, via=("simplify",)),
            eq="Eq. 7",
        ),
    ],
    conclusion=Text(
        "At $\\pi_\\theta = \\pi_{\\mathrm{ref}}$: $\\mathcal{L} = \\ln 2$, $d\\mathcal{L}/dh = -\\beta/2$, and "
        "$d^2\\mathcal{L}/dh^2 \\in (0, \\beta^2/4]$ everywhere. The linked tests check all three on "
        "`dpo_loss` with torch autograd (first and second derivatives).",
        "在 $\\pi_\\theta = \\pi_{\\mathrm{ref}}$ 处：$\\mathcal{L} = \\ln 2$，$d\\mathcal{L}/dh = -\\beta/2$，"
        "且处处有 $d^2\\mathcal{L}/dh^2 \\in (0, \\beta^2/4]$。关联测试用 torch 自动微分（一阶和二阶导数）"
        "在 `dpo_loss` 上检验这三点。",
    ),
)


def compare() -> list:
    """dpo_loss with the policy equal to the reference: loss ln 2 and slope −β/2 (autograd)."""
    from dpo_ref.losses import dpo_loss

    from .numeric import Row, exact, tensors

    beta_ = 0.1
    pol_w, pol_l = tensors(-20.0, -35.5)
    out = dpo_loss(pol_w, pol_l, pol_w.detach().clone(), pol_l.detach().clone(), beta=beta_)
    out.losses.sum().backward()
    return [
        Row("loss at π = π_ref", exact(INIT_LOSS, {}), out.losses.item()),
        Row("∂L/∂log π(y_w) at π = π_ref", exact(INIT_SLOPE, {beta: beta_}), pol_w.grad.item()),
    ]
