"""A deterministic preference has no finite DPO minimiser (Azar et al. 2023, Sec. 4.2)."""

from __future__ import annotations

import sympy as sp

from .common import LOGPS, beta, h, margin, sigma
from .core import Equal, GlobalMinimum, Limit, Negative, Nonnegative, Positive, Proof, Solutions, Step, Text, bounded

a_w, a_l, b_w, b_l = LOGPS
a_w_np = sp.Symbol("a_w", nonpositive=True)  # log pi(y_w) <= 0
p_one = sp.Symbol("p^*", nonnegative=True)  # a preference probability, evaluated at 1 below
p_star = bounded(sp.Symbol("p^*", positive=True), sp.Interval.open(0, 1))  # a preference that is not certain


def population(p: sp.Expr) -> sp.Expr:
    """Expected Bradley-Terry negative log-likelihood when y_w is preferred with probability p."""
    return -p * sp.log(sigma(beta * h)) - (1 - p) * sp.log(sigma(-beta * h))


H_STAR = sp.log(p_star / (1 - p_star)) / beta  # the claimed optimum: beta h* = logit p*
LOSS_H = sp.log(1 + sp.exp(-beta * h))  # the claimed loss at p* = 1
SLOPE = -beta / (1 + sp.exp(beta * h))  # the claimed dL/dh, manifestly negative

PROOF = Proof(
    name="deterministic-preference",
    title=Text(
        "A deterministic preference has no finite minimiser",
        "确定性偏好没有有限的最小值点",
    ),
    intro=Text(
        "When one response always wins ($p^* = 1$, as in a dataset where each pair is compared once), the "
        "DPO loss keeps "
        "decreasing as the margin grows: it is positive for every finite margin, its gradient never "
        "vanishes, and it reaches its infimum 0 only in the limit $h \\to \\infty$, which drives "
        "$\\pi(y_l) \\to 0$ however large $\\beta$ is. The KL regulariser does not stop it. This is the "
        "overfitting that motivates IPO and cDPO.",
        "当某个回答总是胜出时（$p^* = 1$，例如每一对只比较过一次的数据集），DPO 损失会随着间隔增大而一直下降："
        "对任何有限的间隔，损失都为正，梯度从不为零，只在极限 $h \\to \\infty$ 时才达到下确界 0，"
        "这会使 $\\pi(y_l) \\to 0$，无论 $\\beta$ 多大。KL 正则项也阻止不了这一点。这正是提出 IPO 和 cDPO 的动机。",
    ),
    justifies=("dpo_ref.losses.dpo_losses_from_margin",),
    source="ipo",
    steps=[
        Step(
            Text("The optimum for an uncertain preference", "不确定偏好下的最优点"),
            Text(
                "If $y_w$ is preferred with probability $0 < p^* < 1$, the expected negative log-likelihood "
                "mixes the two orders with weights $p^*$ and $1 - p^*$. It is strictly convex in $h$ and its "
                "unique minimiser is $\\beta h^* = \\operatorname{logit} p^* = \\log\\frac{p^*}{1 - p^*}$: "
                "the model's preference probability $\\sigma(\\beta h^*)$ matches $p^*$.",
                "若 $y_w$ 以概率 $0 < p^* < 1$ 被偏好，期望负对数似然以权重 $p^*$ 与 $1 - p^*$ 混合两种顺序。"
                "它关于 $h$ 严格凸，唯一的最小值点满足 $\\beta h^* = \\operatorname{logit} p^* = "
                "\\log\\frac{p^*}{1 - p^*}$：模型给出的偏好概率 $\\sigma(\\beta h^*)$ 恰好等于 $p^*$。",
            ),
            GlobalMinimum(population(p_star), h, H_STAR),
            eq="§4.2",
        ),
        Step(
            Text("The optimum escapes as the preference becomes certain", "偏好趋于确定时最优点逃逸"),
            Text(
                "As $p^* \\to 1^-$ the optimal margin diverges (Azar et al.'s argument): the closer the data are "
                "to deterministic, the further DPO's optimum is from the reference, whatever $\\beta$.",
                "当 $p^* \\to 1^-$ 时最优间隔发散（Azar 等人的论证）：数据越接近确定性，DPO 的最优点离参考策略越远，"
                "与 $\\beta$ 无关。",
            ),
            Limit(H_STAR, p_star, 1, sp.oo, "-"),
            eq="§4.2",
        ),
        Step(
            Text("The population loss for a certain preference", "确定性偏好下的总体损失"),
            Text(
                "The expected negative log-likelihood mixes the two orders with weights $p^*$ and "
                "$1 - p^*$; at $p^* = 1$ only the DPO term remains.",
                "期望负对数似然以权重 $p^*$ 和 $1 - p^*$ 混合两种顺序；当 $p^* = 1$ 时只剩下 DPO 项。",
            ),
            Equal(sp.Subs(population(p_one), p_one, 1), LOSS_H, via=("expand_log", "simplify")),
            eq="§4.2",
        ),
        Step(
            Text("The loss is positive for every finite margin", "对任何有限的间隔，损失都为正"),
            Text(
                "$1 + e^{-\\beta h} > 1$, so its logarithm is positive.",
                "$1 + e^{-\\beta h} > 1$，所以它的对数为正。",
            ),
            Positive(LOSS_H),
            eq="§4.2",
        ),
        Step(
            Text("The gradient never vanishes", "梯度从不为零"),
            Text(
                "The derivative is $-\\beta/(1 + e^{\\beta h})$, strictly negative for every real $h$.",
                "导数为 $-\\beta/(1 + e^{\\beta h})$，对每个实数 $h$ 都严格为负。",
            ),
            Negative(sp.Derivative(LOSS_H, h), manifest=SLOPE, via=("simplify",)),
            eq="§4.2",
        ),
        Step(
            Text("No finite stationary point", "没有有限的驻点"),
            Text(
                "Accordingly the equation $d\\mathcal{L}/dh = 0$ has no real solution.",
                "相应地，方程 $d\\mathcal{L}/dh = 0$ 没有实数解。",
            ),
            Solutions(sp.Derivative(LOSS_H, h), h, []),
            eq="§4.2",
        ),
        Step(
            Text("The infimum is reached only at infinity", "下确界只在无穷远处达到"),
            Text(
                "The loss tends to 0 as $h \\to \\infty$, for every $\\beta > 0$ ...",
                "当 $h \\to \\infty$ 时损失趋于 0，对每个 $\\beta > 0$ 都如此……",
            ),
            Limit(LOSS_H, h, sp.oo, 0),
            eq="§4.2",
        ),
        Step(
            Text("... and grows without bound the other way", "……而在另一方向上无界增长"),
            Text(
                "With the previous steps: along $h$ the loss falls strictly from $+\\infty$ to $0$, so gradient "
                "descent moves $h$ upward at every step and never stops at a finite margin.",
                "结合前面几步：沿 $h$ 方向损失从 $+\\infty$ 严格下降到 $0$，所以梯度下降每一步都把 $h$ 往上推，"
                "永远不会停在有限的间隔上。",
            ),
            Limit(LOSS_H, h, -sp.oo, sp.oo),
            eq="§4.2",
        ),
        Step(
            Text("Solve the margin for the rejected log-probability", "由间隔解出被拒回答的对数概率"),
            Text(
                "Write $a = \\log\\pi$ and $b = \\log\\pi_{\\mathrm{ref}}$. The margin determines "
                "$a_l = \\log\\pi(y_l)$ uniquely from the other three log-probabilities.",
                "记 $a = \\log\\pi$，$b = \\log\\pi_{\\mathrm{ref}}$。由间隔和另外三个对数概率可以唯一确定 "
                "$a_l = \\log\\pi(y_l)$。",
            ),
            Solutions(sp.Eq(h, (a_w - b_w) - (a_l - b_l)), a_l, [a_w - h - b_w + b_l]),
            eq="§4.2",
        ),
        Step(
            Text("The margin bounds the rejected log-probability", "间隔给出被拒回答对数概率的上界"),
            Text(
                "A log-probability is at most zero: with $a_w = \\log\\pi(y_w) \\le 0$ (declared nonpositive to sympy) "
                "the gap between $-h + b_l - b_w$ and $a_l$ is $-a_w \\ge 0$, so "
                "$\\log\\pi(y_l) \\le -h + b_l - b_w$.",
                "对数概率不超过零：由 $a_w = \\log\\pi(y_w) \\le 0$（在 sympy 中声明为非正），$-h + b_l - b_w$ 与 "
                "$a_l$ "
                "之差为 $-a_w \\ge 0$，所以 $\\log\\pi(y_l) \\le -h + b_l - b_w$。",
            ),
            Nonnegative((-h + b_l - b_w) - a_l, manifest=-a_w_np, given={h: margin(a_w_np, a_l, b_w, b_l)}),
            eq="§4.2",
        ),
        Step(
            Text("The rejected response is driven to zero probability", "被拒回答的概率被推向零"),
            Text(
                "The bound $\\pi(y_l) \\le e^{-h + b_l - b_w}$ tends to 0 as $h \\to \\infty$, and $\\beta$ "
                "does not appear in it.",
                "上界 $\\pi(y_l) \\le e^{-h + b_l - b_w}$ 在 $h \\to \\infty$ 时趋于 0，且其中不含 $\\beta$。",
            ),
            Limit(sp.exp(-h + b_l - b_w), h, sp.oo, 0),
            eq="§4.2",
        ),
    ],
    conclusion=Text(
        "With $p^* = 1$ the DPO loss has no finite minimiser: minimising it sends $\\pi(y_l) \\to 0$ "
        "whatever $\\beta$. The three proofs that follow are the fixes: IPO (a squared loss with a finite "
        "target), the ΨPO objective that explains it, and cDPO (label smoothing); each has a finite optimum.",
        "当 $p^* = 1$ 时 DPO 损失没有有限的最小值点：最小化它会使 $\\pi(y_l) \\to 0$，与 $\\beta$ 无关。"
        "接下来的三个证明就是修正办法：IPO（目标有限的平方损失）、解释它的 ΨPO 目标，以及 cDPO（标签平滑）；"
        "它们都有有限的最优点。",
    ),
)


def compare() -> list:
    """The population loss built from dpo_losses_from_margin has zero slope at βh* = logit p* (autograd),
    and at p* = 1 it is the derived log(1 + e^{-βh})."""
    from dpo_ref.losses import dpo_losses_from_margin

    from .numeric import Row, exact, tensors

    beta_, p_ = 0.5, 0.8
    h_star = exact(H_STAR, {beta: beta_, p_star: p_})
    (hs,) = tensors(h_star)
    (p_ * dpo_losses_from_margin(hs, beta_) + (1 - p_) * dpo_losses_from_margin(-hs, beta_)).sum().backward()
    (h3,) = tensors(3.0)
    return [
        Row("slope of the population loss at h*", 0.0, hs.grad.item()),
        Row("loss at p* = 1, h = 3", exact(LOSS_H, {beta: beta_, h: 3.0}), dpo_losses_from_margin(h3, beta_).item()),
    ]
