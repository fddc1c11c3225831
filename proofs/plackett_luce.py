"""The Plackett-Luce DPO loss and its gradient (Rafailov et al. 2023, App. A.3)."""

from __future__ import annotations

import sympy as sp

from .common import beta, h, margin, plackett_luce, sigma
from .core import NAMES, Equal, Negative, Positive, Proof, Step, Text

# K = 3 responses in ranked order (best first): implicit rewards u_k = beta (a_k - b_k)
u = sp.symbols("u_1:4", real=True)
a = sp.symbols("a_1:4", real=True)  # log pi(y_k | x)
b = sp.symbols("b_1:4", real=True)  # log pi_ref(y_k | x)
NAMES.update({f"u_{k}": (f"\\hat r_{k}", f"r̂_{k}") for k in (1, 2, 3)})
IMPLICIT = {u[k]: beta * (a[k] - b[k]) for k in range(3)}

PL_LOSS = -sp.log(plackett_luce(list(u), (0, 1, 2)))  # the negative log-likelihood of the ranking
# the claimed form, as dpo_ref.plackett_luce computes it: sum_k [log sum_{j>=k} e^{u_j} - u_k]
TAIL = [sp.log(sp.Add(*[sp.exp(u[j]) for j in range(k, 3)])) for k in range(3)]
PL_FORM = sp.Add(*[TAIL[k] - u[k] for k in range(3)], evaluate=False)
_den = [sp.Add(*[sp.exp(u[j]) for j in range(m, 3)]) for m in range(3)]
# the claimed gradient: dL/du_k = -1 + sum_{m <= k} e^{u_k} / sum_{j >= m} e^{u_j}
GRAD = [-1 + sp.Add(*[sp.exp(u[k]) / _den[m] for m in range(k + 1)]) for k in range(3)]
a_w, a_l, b_w, b_l = sp.symbols("a_w a_l b_w b_l", real=True)

PROOF = Proof(
    name="plackett-luce",
    title=Text("The Plackett–Luce DPO loss and its gradient", "普拉克特-卢斯（Plackett–Luce）DPO 损失及其梯度"),
    intro=Text(
        "With $K$ ranked responses instead of a pair, the Plackett–Luce model gives the probability of the "
        "whole ranking; with the reparameterised rewards the partition function cancels (proof 3) and the "
        "negative log-likelihood is a loss in the implicit rewards $\\hat r_k = \\beta \\log\\frac{\\pi(y_k)}"
        "{\\pi_{\\mathrm{ref}}(y_k)}$ alone. Checked for $K = 3$, responses numbered best first.",
        "当有 $K$ 个排好序的回答而不只是一对时，普拉克特-卢斯模型给出整个排序的概率；用重参数化的奖励，"
        "配分函数约去（证明 3），负对数似然成为只依赖于隐式奖励 $\\hat r_k = \\beta \\log\\frac{\\pi(y_k)}"
        "{\\pi_{\\mathrm{ref}}(y_k)}$ 的损失。在 $K = 3$ 时检验，回答按从好到差编号。",
    ),
    justifies=("dpo_ref.plackett_luce.plackett_luce_losses",),
    steps=[
        Step(
            Text("The ranking loss as a sum of log-sum-exps", "排序损失写成 log-sum-exp 之和"),
            Text(
                "Each factor of Plackett–Luce is a softmax over the responses not yet placed, so the negative "
                "log-likelihood is a sum over positions of a log-sum-exp of the remaining rewards minus the "
                "reward placed there: what `plackett_luce_losses` computes with a reversed cumulative "
                "log-sum-exp.",
                "普拉克特-卢斯模型的每个因子都是对尚未排定的回答做 softmax，所以负对数似然是对各位置求和：剩余奖励的 "
                "log-sum-exp 减去该位置上的奖励。`plackett_luce_losses` 用反向累积 log-sum-exp 计算的正是它。",
            ),
            Equal(PL_LOSS, PL_FORM, via=("expand_log", "simplify")),
        ),
        Step(
            Text("Two responses: the DPO loss", "两个回答时就是 DPO 损失"),
            Text(
                "For $K = 2$ the ranking is one comparison and the loss is $-\\log\\sigma(\\beta h)$ with the "
                "margin $h$ of the pair.",
                "当 $K = 2$ 时排序就是一次比较，损失为 $-\\log\\sigma(\\beta h)$，$h$ 是这一对的间隔。",
            ),
            Equal(
                -sp.log(plackett_luce([u[0], u[1]], (0, 1))), -sp.log(sigma(beta * h)), via=("logcombine", "simplify")
            ),
            where={u[0]: beta * (a_w - b_w), u[1]: beta * (a_l - b_l), h: margin(a_w, a_l, b_w, b_l)},
        ),
        Step(
            Text("The gradient in the implicit rewards", "对隐式奖励的梯度"),
            Text(
                "Differentiating the sum: response $k$ gets $-1$ from its own position and the softmax weight "
                "$e^{\\hat r_k} / \\sum_{j \\ge m} e^{\\hat r_j}$ from every position $m \\le k$ where it was "
                "still a candidate.",
                "对求和式求导：回答 $k$ 从自己的位置得到 $-1$，并从每个它仍是候选的位置 $m \\le k$ 得到 softmax 权重 "
                "$e^{\\hat r_k} / \\sum_{j \\ge m} e^{\\hat r_j}$。",
            ),
            Equal(sp.Matrix([sp.Derivative(PL_LOSS, uk) for uk in u]), sp.Matrix(GRAD), via=("cancel",)),
        ),
        Step(
            Text("The gradient sums to zero", "梯度之和为零"),
            Text(
                "Adding the same constant to every implicit reward (such as $\\beta \\log Z(x)$) does not change "
                "the loss, so the components of the gradient sum to zero.",
                "给所有隐式奖励加上同一个常数（例如 $\\beta \\log Z(x)$）不改变损失，所以梯度各分量之和为零。",
            ),
            Equal(sp.Add(*GRAD), 0, via=("cancel",)),
        ),
        Step(
            Text("The best response is pushed up", "最好的回答被推高"),
            Text(
                "Gradient descent raises $\\hat r_1$ (so $\\log \\pi(y_1)$): its derivative is minus the "
                "probability that another response would be placed first.",
                "梯度下降会提高 $\\hat r_1$（从而提高 $\\log \\pi(y_1)$）："
                "它的导数等于另一个回答被排在首位的概率的相反数。",
            ),
            Negative(GRAD[0], manifest=-(sp.exp(u[1]) + sp.exp(u[2])) / _den[0], via=("cancel",)),
        ),
        Step(
            Text("The worst response is pushed down", "最差的回答被压低"),
            Text(
                "... and lowers $\\hat r_K$: its $-1$ cancels against the weight 1 of the last position, where it "
                "is the only candidate, leaving a sum of positive softmax weights.",
                "……并降低 $\\hat r_K$：它的 $-1$ 与最后一个位置（它是唯一的候选）的权重 1 相消，"
                "剩下若干个正的 softmax 权重之和。",
            ),
            Positive(GRAD[2]),
        ),
    ],
    conclusion=Text(
        "`plackett_luce_losses(policy_logps, reference_logps, beta)` computes "
        "$\\sum_k [\\log \\sum_{j \\ge k} e^{\\hat r_j} - \\hat r_k]$; for $K = 2$ it is the DPO loss, and its "
        "gradient raises the best response and lowers the worst.",
        "`plackett_luce_losses(policy_logps, reference_logps, beta)` 计算 "
        "$\\sum_k [\\log \\sum_{j \\ge k} e^{\\hat r_j} - \\hat r_k]$；$K = 2$ 时就是 DPO 损失，其梯度提高最好的回答、"
        "降低最差的回答。",
    ),
)


def compare() -> list:
    """plackett_luce_losses and its autograd gradient against the derived formulas (K = 3), and K = 2
    against dpo_loss."""
    import torch

    from dpo_ref.losses import dpo_loss
    from dpo_ref.plackett_luce import plackett_luce_losses

    from .numeric import Row, exact, tensors

    beta_, pol, ref = 0.5, [-3.0, -4.5, -2.0], [-3.5, -3.0, -2.5]
    values = {beta: beta_, **{k: v for k, v in zip(a + b, pol + ref)}}
    point = {uk: exact(e, values) for uk, e in IMPLICIT.items()}
    pol_t = torch.tensor([pol], dtype=torch.float64, requires_grad=True)  # (1, K)
    loss = plackett_luce_losses(pol_t, torch.tensor([ref], dtype=torch.float64), beta_)
    loss.sum().backward()
    rows = [Row("loss, K = 3", exact(PL_LOSS, point), loss.item())]
    rows += [
        Row(f"∂L/∂log π(y_{k + 1})", exact(beta * GRAD[k], {**point, beta: beta_}), pol_t.grad[0, k].item())
        for k in range(3)
    ]
    two = plackett_luce_losses(
        torch.tensor([pol[:2]], dtype=torch.float64), torch.tensor([ref[:2]], dtype=torch.float64), beta_
    )
    rows.append(
        Row(
            "K = 2 against dpo_loss",
            dpo_loss(*tensors(pol[0], pol[1], ref[0], ref[1]), beta=beta_).losses.item(),
            two.item(),
        )
    )
    return rows
