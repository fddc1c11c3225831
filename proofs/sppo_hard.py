"""20. Hard SPPO pushes the two log-ratios to +-1/(2 beta) (Wu et al. 2024, Eq. 4.7 with hard win probabilities)."""

from __future__ import annotations

import sympy as sp

from .common import beta
from .core import Equal, GlobalMinimum, PositiveDefinite, Proof, Step, SystemSolution, Text

# rho_w, rho_l: the log-ratios log pi(y) - log pi_ref(y) of the chosen and the rejected response
rho_w, rho_l = sp.symbols("rho_w rho_l", real=True)
f = sp.Symbol("f", real=True)  # f(x): added to both policy log-probs (a function of the prompt only)
SPPO = (rho_w - 1 / (2 * beta)) ** 2 + (rho_l + 1 / (2 * beta)) ** 2  # what sppo_hard_loss computes
SHIFTED = SPPO.subs({rho_w: rho_w + f, rho_l: rho_l + f}, simultaneous=True)
L = sp.Function("L")(rho_w, rho_l)
R_W_STAR, R_L_STAR = 1 / (2 * beta), -1 / (2 * beta)

PROOF = Proof(
    name="sppo-hard",
    title=Text("Hard SPPO: a target for each log-ratio", "硬 SPPO：每个对数比值各有目标"),
    intro=Text(
        "SPPO (Wu et al. 2024) regresses each response's log-ratio "
        "$\\rho(y) = \\log\\pi(y) - \\log\\pi_{\\mathrm{ref}}(y)$ "
        "onto $\\frac{1}{\\beta}(P(y \\succ \\pi) - \\frac12)$. TRL's `sppo_hard` sets the win probability to 1 "
        "for the chosen and 0 for the rejected response, giving the loss "
        "$(\\rho_w - \\frac{1}{2\\beta})^2 + (\\rho_l + \\frac{1}{2\\beta})^2$. Unlike the losses of the margin "
        "$h = \\rho_w - \\rho_l$, it has a target for each log-ratio separately.",
        "SPPO（Wu 等，2024）把每个回答的对数比值 $\\rho(y) = \\log\\pi(y) - \\log\\pi_{\\mathrm{ref}}(y)$ 回归到 "
        "$\\frac{1}{\\beta}(P(y \\succ \\pi) - \\frac12)$ 上。TRL 的 `sppo_hard` 把被选回答的胜率设为 1、被拒回答的设"
        "为 0，"
        "得到损失 $(\\rho_w - \\frac{1}{2\\beta})^2 + (\\rho_l + \\frac{1}{2\\beta})^2$。与以间隔 "
        "$h = \\rho_w - \\rho_l$ 为自变量"
        "的"
        "损失不同，"
        "它对每个对数比值分别设定目标。",
    ),
    justifies=("dpo_ref.family.sppo_hard_loss",),
    source="sppo",
    steps=[
        Step(
            Text("The stationary point", "驻点"),
            Text(
                "Setting both partial derivatives to zero has exactly one solution: "
                "$\\rho_w = \\frac{1}{2\\beta}$, $\\rho_l = -\\frac{1}{2\\beta}$.",
                "令两个偏导数为零，恰有一个解：$\\rho_w = \\frac{1}{2\\beta}$，$\\rho_l = -\\frac{1}{2\\beta}$。",
            ),
            SystemSolution(
                [sp.Derivative(L, rho_w), sp.Derivative(L, rho_l)], [rho_w, rho_l], {rho_w: R_W_STAR, rho_l: R_L_STAR}
            ),
            where={L: SPPO},
            eq="Eq. 4.7",
        ),
        Step(
            Text("The stationary point is the unique minimum", "驻点是唯一的最小值点"),
            Text(
                "The Hessian is constant and positive definite, so the loss is strictly convex in "
                "$(\\rho_w, \\rho_l)$ and the stationary point is its unique minimiser.",
                "黑塞矩阵是常数且正定，所以损失关于 $(\\rho_w, \\rho_l)$ 严格凸，驻点就是唯一的最小值点。",
            ),
            PositiveDefinite(
                sp.Matrix(2, 2, lambda j, k: sp.Derivative(L, (rho_w, rho_l)[j], (rho_w, rho_l)[k])),
                manifest=sp.Matrix([[2, 0], [0, 2]]),
            ),
            where={L: SPPO},
            eq="Eq. 4.7",
        ),
        Step(
            Text("The minimum is zero", "最小值为零"),
            Text(
                "At the minimiser the loss is 0: the implicit rewards $\\beta\\rho_w$, $\\beta\\rho_l$ are $+\\frac12$ "
                "and $-\\frac12$, "
                "and the margin is $h^* = 1/\\beta$.",
                "在最小值点处损失为 0：隐式奖励 $\\beta\\rho_w$、$\\beta\\rho_l$ 分别为 $+\\frac12$ 与 $-\\frac12$，"
                "间隔为 "
                ""
                "$h^* = 1/\\beta$。",
            ),
            Equal(sp.Subs(SPPO, (rho_w, rho_l), (R_W_STAR, R_L_STAR)), 0),
            eq="Eq. 4.7",
        ),
        Step(
            Text("Adding f(x) changes the loss", "加上 f(x) 会改变损失"),
            Text(
                "Adding $f$ to both policy log-probabilities adds it to both log-ratios; the loss then changes at "
                "rate $2(\\rho_w + \\rho_l)$, which is nonzero unless $\\rho_w = -\\rho_l$. So hard SPPO, unlike DPO, "
                "is not "
                "invariant under adding $f(x)$.",
                "给两个策略对数概率都加上 $f$，就是给两个对数比值都加上 $f$；此时损失的变化率为 $2(\\rho_w + \\rho_l)$"
                "，"
                "除非 $\\rho_w = -\\rho_l$ 否则不为零。因此与 DPO 不同，硬 SPPO 在加上 $f(x)$ 时不具有不变性。",
            ),
            Equal(sp.Subs(sp.Derivative(SHIFTED, f), f, 0), 2 * (rho_w + rho_l), via=("expand",)),
            eq="Eq. 4.7",
        ),
        Step(
            Text("The loss fixes the shift", "损失确定了平移量"),
            Text(
                "Over the shift $f$ the loss is minimised uniquely at $f = -(\\rho_w + \\rho_l)/2$, where the two "
                "log-ratios "
                "are symmetric about 0: the loss pins down the direction that preference data cannot identify.",
                "关于平移量 $f$，损失在 $f = -(\\rho_w + \\rho_l)/2$ 处取得唯一的最小值，此时两个对数比值关于 0 对称："
                "这个损失确定了偏好数据本身无法确定的方向。",
            ),
            GlobalMinimum(SHIFTED, f, -(rho_w + rho_l) / 2),
            eq="Eq. 4.7",
        ),
    ],
    conclusion=Text(
        "`sppo_hard_loss` computes $(\\rho_w - \\frac{1}{2\\beta})^2 + (\\rho_l + \\frac{1}{2\\beta})^2$, uniquely "
        "minimised at $\\rho_w = \\frac{1}{2\\beta}$, $\\rho_l = -\\frac{1}{2\\beta}$ with value 0; it is not "
        "invariant "
        "under adding $f(x)$ to both policy log-probabilities.",
        "`sppo_hard_loss` 计算 $(\\rho_w - \\frac{1}{2\\beta})^2 + (\\rho_l + \\frac{1}{2\\beta})^2$，"
        "唯一的最小值点为 $\\rho_w = \\frac{1}{2\\beta}$、$\\rho_l = -\\frac{1}{2\\beta}$，最小值为 0；"
        "给两个策略对数概率加上 $f(x)$ 时它不具有不变性。",
    ),
)


def compare() -> list:
    """sppo_hard_loss against the derived quadratic, its zero value and gradient at the minimiser, and the
    change when f is added to both policy log-probs."""
    from dpo_ref.family import sppo_hard_loss

    from .numeric import Row, exact, tensors

    beta_ = 0.5
    rows = []
    pc, pr, rc, rr = tensors(-3.0, -5.0, -4.0, -4.5)  # rho_w = 1, rho_l = -0.5
    point = {rho_w: 1.0, rho_l: -0.5, beta: beta_}
    rows.append(
        Row(
            "loss at rho_w = 1, rho_l = -0.5",
            exact(SPPO, point),
            sppo_hard_loss(pc, pr, rc, rr, beta=beta_).losses.item(),
        )
    )
    shifted = sppo_hard_loss(pc + 0.25, pr + 0.25, rc, rr, beta=beta_).losses.item()
    rows.append(Row("loss after adding f = 0.25 to both", exact(SHIFTED, {**point, f: 0.25}), shifted))
    w, l = exact(R_W_STAR, {beta: beta_}), exact(R_L_STAR, {beta: beta_})
    pc, pr, rc, rr = tensors(w - 2.0, l - 3.0, -2.0, -3.0)
    out = sppo_hard_loss(pc, pr, rc, rr, beta=beta_).losses
    out.sum().backward()
    rows.append(Row("loss at the minimiser", 0.0, out.item()))
    rows.append(Row("dL/dlog pi(y_w) at the minimiser", 0.0, pc.grad.item()))
    rows.append(Row("dL/dlog pi(y_l) at the minimiser", 0.0, pr.grad.item()))
    return rows
