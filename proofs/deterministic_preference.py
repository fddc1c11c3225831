"""7. A deterministic preference has no finite DPO minimiser (Azar et al. 2023, Sec. 4.2)."""

from __future__ import annotations

import sympy as sp

from proofs.common import LOGPS, beta, h, sigma
from proofs.core import Equal, Limit, Negative, Nonnegative, Positive, Proof, Solutions, Step, Text

a_w, a_l, b_w, b_l = LOGPS
a_w_np = sp.Symbol("a_w", nonpositive=True)  # log pi(y_w) <= 0
p_star = sp.Symbol("p^*", positive=True)
# Expected Bradley-Terry negative log-likelihood when y_w is preferred with probability p*.
POPULATION = -p_star * sp.log(sigma(beta * h)) - (1 - p_star) * sp.log(sigma(-beta * h))
LOSS_H = sp.log(1 + sp.exp(-beta * h))  # the claimed loss at p* = 1
SLOPE = -beta / (1 + sp.exp(beta * h))  # the claimed dL/dh, manifestly negative

PROOF = Proof(
    name="deterministic-preference",
    title=Text(
        "A deterministic preference has no finite minimiser",
        "确定性偏好没有有限的最小值点",
    ),
    intro=Text(
        "When one response always wins ($p^* = 1$, e.g. a single comparison seen once), the DPO loss keeps "
        "decreasing as the margin grows: it is positive for every finite margin, its gradient never "
        "vanishes, and it reaches its infimum 0 only in the limit $h \\to \\infty$, which drives "
        "$\\pi(y_l) \\to 0$ however large $\\beta$ is. The KL regulariser does not stop it. This is the "
        "overfitting that motivates IPO and cDPO.",
        "当某个回答总是胜出时（$p^* = 1$，例如只见过一次的单个比较），DPO 损失会随着间隔增大而一直下降："
        "对任何有限的间隔损失都为正，梯度从不为零，只在极限 $h \\to \\infty$ 时才达到下确界 0，"
        "这会使 $\\pi(y_l) \\to 0$，无论 $\\beta$ 多大。KL 正则项拦不住它。这正是提出 IPO 和 cDPO 的动机。",
    ),
    justifies=("dpo_ref.losses.dpo_losses_from_margin",),
    steps=[
        Step(
            Text("The population loss for a certain preference", "确定性偏好下的总体损失"),
            Text(
                "The expected negative log-likelihood mixes the two orders with weights $p^*$ and "
                "$1 - p^*$; at $p^* = 1$ only the DPO term remains.",
                "期望负对数似然以权重 $p^*$ 和 $1 - p^*$ 混合两种顺序；当 $p^* = 1$ 时只剩下 DPO 项。",
            ),
            r"-p^*\log\sigma(\beta h) - (1 - p^*)\log\sigma(-\beta h)\,\Big|_{p^*=1} = \log\big(1 + e^{-\beta h}\big)",
            Equal(POPULATION, LOSS_H, via=("expand_log", "simplify"), given={p_star: 1}),
        ),
        Step(
            Text("The loss is positive for every finite margin", "对任何有限间隔损失都为正"),
            Text(
                "$1 + e^{-\\beta h} > 1$, so its logarithm is positive.",
                "$1 + e^{-\\beta h} > 1$，所以它的对数为正。",
            ),
            r"\log\big(1 + e^{-\beta h}\big) > 0 \qquad \forall h \in \mathbb{R}",
            Positive(LOSS_H),
        ),
        Step(
            Text("The gradient never vanishes", "梯度从不为零"),
            Text(
                "The derivative is $-\\beta/(1 + e^{\\beta h})$, strictly negative for every real $h$.",
                "导数为 $-\\beta/(1 + e^{\\beta h})$，对每个实数 $h$ 都严格为负。",
            ),
            r"\frac{d}{dh}\log\big(1 + e^{-\beta h}\big) = -\frac{\beta}{1 + e^{\beta h}} < 0",
            Negative(sp.diff(LOSS_H, h), manifest=SLOPE, via=("simplify",)),
        ),
        Step(
            Text("No finite stationary point", "没有有限的驻点"),
            Text(
                "Accordingly the equation $d\\mathcal{L}/dh = 0$ has no real solution.",
                "相应地，方程 $d\\mathcal{L}/dh = 0$ 没有实数解。",
            ),
            r"\Big\{h \in \mathbb{R} : \frac{d\mathcal{L}}{dh} = 0\Big\} = \varnothing",
            Solutions(sp.diff(LOSS_H, h), h, []),
        ),
        Step(
            Text("The infimum is reached only at infinity", "下确界只在无穷远处达到"),
            Text(
                "The loss tends to 0 as $h \\to \\infty$, for every $\\beta > 0$ ...",
                "当 $h \\to \\infty$ 时损失趋于 0，对每个 $\\beta > 0$ 都如此……",
            ),
            r"\lim_{h\to\infty}\log\big(1 + e^{-\beta h}\big) = 0",
            Limit(LOSS_H, h, sp.oo, 0),
        ),
        Step(
            Text("... and grows without bound the other way", "……而在另一方向上无界增长"),
            Text(
                "So gradient descent always moves $h$ upward and never stops.",
                "因此梯度下降总是把 $h$ 往上推，永不停止。",
            ),
            r"\lim_{h\to-\infty}\log\big(1 + e^{-\beta h}\big) = \infty",
            Limit(LOSS_H, h, -sp.oo, sp.oo),
        ),
        Step(
            Text("Solve the margin for the rejected log-probability", "由间隔解出被拒回答的对数概率"),
            Text(
                "Write $a = \\log\\pi$ and $b = \\log\\pi_{\\mathrm{ref}}$. The margin determines "
                "$a_l = \\log\\pi(y_l)$ uniquely from the other three log-probabilities.",
                "记 $a = \\log\\pi$，$b = \\log\\pi_{\\mathrm{ref}}$。由间隔和另外三个对数概率可以唯一确定 "
                "$a_l = \\log\\pi(y_l)$。",
            ),
            r"h = (a_w - b_w) - (a_l - b_l) \iff a_l = a_w - h - b_w + b_l",
            Solutions(sp.Eq(h, (a_w - b_w) - (a_l - b_l)), a_l, [a_w - h - b_w + b_l]),
        ),
        Step(
            Text("The margin bounds the rejected log-probability", "间隔给出被拒回答对数概率的上界"),
            Text(
                "A log-probability is at most zero: with $a_w = \\log\\pi(y_w) \\le 0$ (declared nonpositive) "
                "the gap between $-h + b_l - b_w$ and $a_l$ is $-a_w \\ge 0$, so "
                "$\\log\\pi(y_l) \\le -h + b_l - b_w$.",
                "对数概率不超过零：由 $a_w = \\log\\pi(y_w) \\le 0$（声明为非正），$-h + b_l - b_w$ 与 $a_l$ "
                "之差为 $-a_w \\ge 0$，所以 $\\log\\pi(y_l) \\le -h + b_l - b_w$。",
            ),
            r"(-h + b_l - b_w) - (a_w - h - b_w + b_l) = -a_w \ge 0",
            Nonnegative((-h + b_l - b_w) - (a_w_np - h - b_w + b_l)),
        ),
        Step(
            Text("The rejected response is driven to zero probability", "被拒回答的概率被推向零"),
            Text(
                "The bound $\\pi(y_l) \\le e^{-h + b_l - b_w}$ tends to 0 as $h \\to \\infty$, and $\\beta$ "
                "does not appear in it.",
                "上界 $\\pi(y_l) \\le e^{-h + b_l - b_w}$ 在 $h \\to \\infty$ 时趋于 0，且其中不含 $\\beta$。",
            ),
            r"\lim_{h\to\infty} e^{-h + b_l - b_w} = 0",
            Limit(sp.exp(-h + b_l - b_w), h, sp.oo, 0),
        ),
    ],
    conclusion=Text(
        "With $p^* = 1$ the DPO loss has no finite minimiser: minimising it sends $\\pi(y_l) \\to 0$ "
        "whatever $\\beta$. IPO (a squared loss with a finite target) and cDPO (label smoothing) each restore "
        "a finite optimum, as the next proofs show.",
        "当 $p^* = 1$ 时 DPO 损失没有有限的最小值点：最小化它会使 $\\pi(y_l) \\to 0$，与 $\\beta$ 无关。"
        "IPO（有有限目标的平方损失）和 cDPO（标签平滑）都能恢复有限的最优点，见后面的证明。",
    ),
)
