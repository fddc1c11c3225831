"""The Plackett-Luce DPO loss and its gradient for every number K of ranked responses (Rafailov et al. 2023,
App. A.3, Eqs. 18 and 20): by induction on K, with the symbolic statement also checked for K = 2..6."""

from __future__ import annotations

import sympy as sp

from .common import beta, h, margin, plackett_luce, sigma
from .core import NAMES, Equal, FreeOf, Negative, Positive, Proof, Step, Text

# Any K: responses 1..K in ranked order (best first), implicit rewards u_k = beta (a_k - b_k) as an IndexedBase.
K = sp.Symbol("K", integer=True, positive=True)
k, j, m, i = sp.symbols("k j m i", integer=True, positive=True)
U = sp.IndexedBase("u", real=True)
c = sp.Symbol("c", real=True)  # a constant added to every implicit reward
NAMES.update({"u": ("\\hat r", "r̂"), "P_rest": ("P_{2..K}", "P₂..K")})


def tail(lo: sp.Expr) -> sp.Sum:
    """sum_{j=lo}^{K} e^{u_j}: the softmax denominator over the responses not yet placed."""
    return sp.Sum(sp.exp(U[j]), (j, lo, K))


PL_K = sp.Product(sp.exp(U[k]) / tail(k), (k, 1, K))  # the Plackett-Luce probability of the ranking 1 > ... > K
FORM_K = sp.Sum(sp.log(tail(k)) - U[k], (k, 1, K))  # what plackett_luce_losses computes
REST = sp.Sum(sp.log(tail(k)) - U[k], (k, 2, K))  # the same loss of the ranking 2 > ... > K
P_rest = sp.Symbol("P_rest", positive=True)  # the Plackett-Luce probability of the ranking 2 > ... > K
GRAD_K = -1 + sp.Sum(sp.exp(U[i]) / tail(m), (m, 1, i))  # dL/du_i
SMALL_K = [{K: n} for n in range(2, 7)]
R_other = sp.Symbol("R", positive=True)  # sum_{j >= 2} e^{u_j} > 0 (K >= 2 responses)

# K = 3 written out (the proof-linked tests and compare() evaluate these): u_k = beta (a_k - b_k)
u = sp.symbols("u_1:4", real=True)
a = sp.symbols("a_1:4", real=True)  # log pi(y_k | x)
b = sp.symbols("b_1:4", real=True)  # log pi_ref(y_k | x)
NAMES.update({f"u_{n}": (f"\\hat r_{n}", f"r̂_{n}") for n in (1, 2, 3)})
IMPLICIT = {u[n]: beta * (a[n] - b[n]) for n in range(3)}
PL_LOSS = -sp.log(plackett_luce(list(u), (0, 1, 2)))  # the negative log-likelihood of the ranking
_den = [sp.Add(*[sp.exp(u[q]) for q in range(n, 3)]) for n in range(3)]
GRAD = [-1 + sp.Add(*[sp.exp(u[n]) / _den[q] for q in range(n + 1)]) for n in range(3)]
a_w, a_l, b_w, b_l = sp.symbols("a_w a_l b_w b_l", real=True)

PROOF = Proof(
    name="plackett-luce",
    title=Text(
        "The Plackett–Luce DPO loss and its gradient, for every K",
        "普拉克特-卢斯（Plackett–Luce）DPO 损失及其梯度（任意 K）",
    ),
    intro=Text(
        "With $K$ ranked responses instead of a pair, the Plackett–Luce model gives the probability of the "
        "whole ranking: the best response is chosen by a softmax over all $K$, the next by a softmax over the "
        "rest, and so on. With the reparameterised rewards the partition function cancels (proof 3) and the "
        "negative log-likelihood is a loss in the implicit rewards $\\hat r_k = \\beta \\log\\frac{\\pi(y_k)}"
        "{\\pi_{\\mathrm{ref}}(y_k)}$ alone. Responses are numbered best first. Every result holds for every "
        "$K$: the loss by induction on $K$ (steps 1–2) and, as a check of the same symbolic statement, for "
        "$K = 2, \\dots, 6$ written out; the gradient for $K = 2, \\dots, 6$ and every component; its sum "
        "for symbolic $K$.",
        "当有 $K$ 个排好序的回答而不只是一对时，普拉克特-卢斯模型给出整个排序的概率：最好的回答由对全部 $K$ "
        "个回答的 softmax 选出，下一个由对其余回答的 softmax 选出，依此类推。用重参数化的奖励，配分函数约去"
        "（证明 3），负对数似然成为只依赖于隐式奖励 $\\hat r_k = \\beta \\log\\frac{\\pi(y_k)}"
        "{\\pi_{\\mathrm{ref}}(y_k)}$ 的损失。回答按从好到差编号。每个结论对任意 $K$ 成立：损失由对 $K$ "
        "的归纳法证明（第 1–2 步），并对 $K = 2, \\dots, 6$ 把同一符号命题完整展开检验；梯度对 "
        "$K = 2, \\dots, 6$ 的每个分量检验；梯度之和对符号 $K$ 检验。",
    ),
    justifies=("dpo_ref.plackett_luce.plackett_luce_losses",),
    source="dpo",
    steps=[
        Step(
            Text("Induction step: peel off the first choice (any K)", "归纳步骤：剥离第一次选择（任意 K）"),
            Text(
                "The ranking's probability is the softmax weight of the best response times the probability "
                "$P_{2..K}$ of ranking the other $K - 1$. If the loss of that shorter ranking is the sum of "
                "log-sum-exps minus rewards from position 2 on (the induction hypothesis, in parentheses), "
                "the loss of the whole ranking is the same sum from position 1. The base case $K = 1$ is "
                "$\\log e^{\\hat r_1} - \\hat r_1 = 0 = -\\log 1$.",
                "整个排序的概率等于最好回答的 softmax 权重乘以其余 $K - 1$ 个回答排序的概率 $P_{2..K}$。若这个较短排序"
                "的损失等于从第 2 个位置起的 log-sum-exp 减去奖励之和（归纳假设，见括号），则整个排序的损失就是从第 1"
                " 个"
                "位置起的同一个和。基础情形 $K = 1$ 为 $\\log e^{\\hat r_1} - \\hat r_1 = 0 = -\\log 1$。",
            ),
            Equal(
                -sp.log(sp.exp(U[1]) / tail(1) * P_rest),
                FORM_K,
                via=("expand_log", "first_term"),
                given={sp.log(P_rest): -REST},
            ),
            eq="Eq. 18",
        ),
        Step(
            Text("The ranking loss as a sum of log-sum-exps (K = 2..6)", "排序损失写成 log-sum-exp 之和（K = 2..6）"),
            Text(
                "The same statement with the product written out: the negative log-likelihood is a sum over "
                "positions of a log-sum-exp of the remaining rewards minus the reward placed there, what "
                "`plackett_luce_losses` computes with a reversed cumulative log-sum-exp. Checked for each "
                "$K$ from 2 to 6 by expanding the product and the sums.",
                "把乘积写开后的同一命题：负对数似然是对各位置求和：剩余奖励的 log-sum-exp 减去该位置上的奖励。"
                "`plackett_luce_losses` 用反向累积 log-sum-exp 计算的正是它。对 $K$ 从 2 到 6 逐一展开乘积与求和检验。",
            ),
            Equal(-sp.log(PL_K), FORM_K, via=("doit", "expand_log", "simplify"), cases=SMALL_K),
            eq="Eq. 20",
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
            eq="Eq. 7",
        ),
        Step(
            Text("The gradient in the implicit rewards (K = 2..6)", "对隐式奖励的梯度（K = 2..6）"),
            Text(
                "Differentiating the sum: response $i$ gets $-1$ from its own position and the softmax weight "
                "$e^{\\hat r_i} / \\sum_{j \\ge m} e^{\\hat r_j}$ from every position $m \\le i$ where it was "
                "still a candidate. Checked for every component $i$ of every $K$ from 2 to 5.",
                "对求和式求导：回答 $i$ 从自己的位置得到 $-1$，并从每个它仍是候选的位置 $m \\le i$ 得到 softmax 权重 "
                "$e^{\\hat r_i} / \\sum_{j \\ge m} e^{\\hat r_j}$。对 $K$ 从 2 到 5 的每个分量 $i$ 检验。",
            ),
            Equal(
                sp.Derivative(FORM_K, U[i]),
                GRAD_K,
                via=("doit", "cancel"),
                cases=[{K: n, i: q} for n in range(2, 6) for q in range(1, n + 1)],
            ),
            eq="Eq. 20",
        ),
        Step(
            Text("The gradient sums to zero (any K)", "梯度之和为零（任意 K）"),
            Text(
                "Adding the same constant $c$ to every implicit reward (such as $\\beta \\log Z(x)$) does not "
                "change the loss, for any $K$; by the chain rule the components of the gradient sum to zero.",
                "给所有隐式奖励加上同一个常数 $c$（例如 $\\beta \\log Z(x)$）不改变损失（任意 $K$）；"
                "由链式法则，梯度各分量之和为零。",
            ),
            FreeOf(FORM_K.xreplace({U[k]: U[k] + c, U[j]: U[j] + c}), c, via=("simplify",)),
            eq="Eq. 20",
        ),
        Step(
            Text("The best response is pushed up (any K)", "最好的回答被推高（任意 K）"),
            Text(
                "Gradient descent raises $\\hat r_1$ (so $\\log \\pi(y_1)$): by the gradient above its derivative "
                "is $-1 + e^{\\hat r_1}/\\sum_{j=1}^{K} e^{\\hat r_j}$, with $R = \\sum_{j=2}^{K} e^{\\hat r_j} > 0$ "
                "(there is at least one other response): minus the probability that another response would be "
                "placed first.",
                "梯度下降会提高 $\\hat r_1$（从而提高 $\\log \\pi(y_1)$）：由上面的梯度，它的导数为 "
                "$-1 + e^{\\hat r_1}/\\sum_{j=1}^{K} e^{\\hat r_j}$，其中 $R = \\sum_{j=2}^{K} e^{\\hat r_j} > 0$"
                "（至少还有一个回答）：等于另一个回答被排在首位的概率的相反数。",
            ),
            Negative(
                -1 + sp.exp(U[1]) / (sp.exp(U[1]) + R_other),
                manifest=-R_other / (sp.exp(U[1]) + R_other),
                via=("cancel",),
            ),
            eq="Eq. 20",
        ),
        Step(
            Text("The worst response is pushed down", "最差的回答被压低"),
            Text(
                "... and lowers $\\hat r_K$: its $-1$ cancels against the weight 1 of the last position, where it "
                "is the only candidate, leaving a sum of positive softmax weights (written out for $K = 3$; for "
                "any $K$ the same cancellation leaves $K - 1$ positive weights).",
                "……并降低 $\\hat r_K$：它的 $-1$ 与最后一个位置（它是唯一的候选）的权重 1 相消，"
                "剩下若干个正的 softmax 权重之和（这里对 $K = 3$ 写出；对任意 $K$，同样的相消留下 $K - 1$ 个正权重）。",
            ),
            Positive(GRAD[2]),
            eq="Eq. 20",
        ),
    ],
    conclusion=Text(
        "`plackett_luce_losses(policy_logps, reference_logps, beta)` computes "
        "$\\sum_{k=1}^{K} [\\log \\sum_{j \\ge k} e^{\\hat r_j} - \\hat r_k]$ for every $K$; for $K = 2$ it is "
        "the DPO loss, and its gradient raises the best response and lowers the worst.",
        "`plackett_luce_losses(policy_logps, reference_logps, beta)` 对任意 $K$ 计算 "
        "$\\sum_{k=1}^{K} [\\log \\sum_{j \\ge k} e^{\\hat r_j} - \\hat r_k]$；$K = 2$ 时就是 DPO 损失，"
        "其梯度提高最好的回答、降低最差的回答。",
    ),
)


def compare() -> list:
    """plackett_luce_losses and its autograd gradient against the derived formulas (K = 3 in full, the loss and
    the last component of the gradient for K = 4, 5, 6), and K = 2 against dpo_loss."""
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
    for n in (4, 5, 6):  # the symbolic-K results written out at K = n, against the code on K responses
        pol_n = torch.tensor([[-1.0 - 0.75 * q for q in range(n)]], dtype=torch.float64, requires_grad=True)
        ref_n = torch.tensor([[-2.0 + 0.5 * (q % 3) for q in range(n)]], dtype=torch.float64)
        loss_n = plackett_luce_losses(pol_n, ref_n, beta_)
        loss_n.sum().backward()
        at = {U[q + 1]: beta_ * (pol_n[0, q].item() - ref_n[0, q].item()) for q in range(n)}
        rows.append(Row(f"loss, K = {n}", exact((-sp.log(PL_K)).subs(K, n).doit(), at), loss_n.item()))
        last = (beta * GRAD_K).subs({K: n, i: n}).doit()
        rows.append(Row(f"∂L/∂log π(y_{n}), K = {n}", exact(last, {**at, beta: beta_}), pol_n.grad[0, n - 1].item()))
    rows.append(
        Row(
            "K = 2 against dpo_loss",
            dpo_loss(*tensors(pol[0], pol[1], ref[0], ref[1]), beta=beta_).losses.item(),
            two.item(),
        )
    )
    return rows
