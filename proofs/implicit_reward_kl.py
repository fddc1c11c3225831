"""The implicit reward and the KL to the reference; the limits β → 0 and β → ∞ (Rafailov et al. 2023,
Sec. 4-5)."""

from __future__ import annotations

import sympy as sp

from .common import Z, beta, h, sigma
from .core import Equal, Limit, Proof, Step, Text

n = sp.Symbol("n", integer=True, positive=True)
i = sp.Symbol("i", integer=True, positive=True)
P, Q = (sp.IndexedBase(name, positive=True) for name in ("p", "q"))  # reference and policy, summing to one
D = sp.Symbol("D", positive=True)  # a KL divergence, shown as an abbreviation
D_ref = sp.Symbol("D'", positive=True)


def S(term: sp.Expr) -> sp.Sum:
    return sp.Sum(term, (i, 1, n))


KL_Q = S(Q[i] * sp.log(Q[i] / P[i]))  # KL(pi || pi_ref)
KL_P = S(P[i] * sp.log(P[i] / Q[i]))  # KL(pi_ref || pi)
RHAT = beta * sp.log(Q[i] / P[i])  # the implicit reward of response i
# n = 3 optimal policy, rewards shifted so the best is r_1 = 0 (a shift changes nothing): r_2 = -d_2, r_3 = -d_3
p = sp.symbols("p_1:4", positive=True)
d2, d3 = sp.symbols("d_2 d_3", positive=True)
pistar1 = sp.Symbol("pi^*_1", positive=True)
p3 = 1 - p[0] - p[1]  # the reference sums to one
Z3 = p[0] + p[1] * sp.exp(-d2 / beta) + p3 * sp.exp(-d3 / beta)
OPT1 = {pistar1: p[0] / Z, Z: Z3}
h_pos = sp.Symbol("h", positive=True)
LOSS = -sp.log(sigma(beta * h))

PROOF = Proof(
    name="implicit-reward-kl",
    title=Text("The implicit reward, the KL, and the two limits of β", "隐式奖励、KL 与 β 的两个极限"),
    intro=Text(
        "The rewards `dpo_loss` reports, $\\hat r = \\beta \\log\\frac{\\pi}{\\pi_{\\mathrm{ref}}}$, are tied to "
        "how far the policy has moved: their mean under the policy is $\\beta\\,\\mathrm{KL}(\\pi \\,\\|\\, "
        "\\pi_{\\mathrm{ref}})$, $\\beta$ times the KL divergence of the policy from the reference. And $\\beta$ "
        "interpolates between staying at the reference ($\\beta \\to \\infty$) and "
        "greedy reward maximisation ($\\beta \\to 0$). Sums over the $n$ responses are checked for symbolic "
        "$n$; the limits of the optimal policy for $n = 3$.",
        "`dpo_loss` 报告的奖励 $\\hat r = \\beta \\log\\frac"
        "{\\pi}{\\pi_{\\mathrm{ref}}}$ 与策略偏离参考策略的程度相联系："
        "它在策略下的均值是 $\\beta\\,\\mathrm{KL}(\\pi \\,\\|\\, \\pi_{\\mathrm{ref}})$，即策略相对于参考策略的 KL 散"
        "度的 "
        "$\\beta$ 倍。而 $\\beta$ 在停留于参考策略（$\\beta \\to \\infty$）与贪心地最大化奖励（$\\beta \\to 0$）"
        "这两个极端之间调节。对 $n$ 个回答的求和在符号 $n$ 下检验；最优策略的极限在 "
        "$n = 3$ 时检验。",
    ),
    justifies=("dpo_ref.losses.dpo_loss",),
    steps=[
        Step(
            Text("Mean implicit reward under the policy (any n)", "策略下隐式奖励的均值（任意 n）"),
            Text(
                "Averaging $\\hat r$ over the policy's own responses gives $\\beta\\,\\mathrm{KL}(\\pi \\,\\|\\, "
                "\\pi_{\\mathrm{ref}})$, which is $\\ge 0$ (Gibbs, proof 1): the mean implicit reward on the policy's "
                "own samples is its drift from the reference, measured as $\\beta$ times a KL divergence.",
                "在策略自身的回答上对 $\\hat r$ 取平均得到 $\\beta\\,\\mathr"
                "m{KL}(\\pi \\,\\|\\, \\pi_{\\mathrm{ref}})$，"
                "它 $\\ge 0$（吉布斯不等式，证明 1）：策略在自身样本上的平均隐式奖励，正是它偏离参考策略的程度"
                "（以 KL 散度的 $\\beta$ 倍来衡量）。",
            ),
            Equal(S(Q[i] * RHAT), beta * D, via=("sums",)),
            where={D: KL_Q},
        ),
        Step(
            Text("Mean implicit reward under the reference (any n)", "参考策略下隐式奖励的均值（任意 n）"),
            Text(
                "Under the reference the mean is $-\\beta\\,\\mathrm{KL}(\\pi_{\\mathrm{ref}} \\,\\|\\, \\pi) \\le 0$. "
                "A rising mean reward on the policy's samples, or a falling one on the reference's, measures "
                "drift from the reference, not necessarily better-learned preferences.",
                "在参考策略下均值为 $-\\beta\\,\\mathrm{KL}(\\pi_{\\mathrm{ref}} \\,\\|\\, \\pi) \\le 0$。"
                "因此，策略样本上的平均奖励上升、或参考策略样本上的平均奖励下降，反映的是策略的偏离，而不一定是偏好学得"
                "更好。",
            ),
            Equal(S(P[i] * RHAT), -beta * D_ref, via=("expand_log", "sums")),
            where={D_ref: KL_P},
        ),
        Step(
            Text("β → ∞: the optimal policy tends to the reference", "β → ∞：最优策略趋于参考策略"),
            Text(
                "Shift the rewards so the best is $r_1 = 0$ (the shift does not change the optimal policy, proof 4); "
                "then $r_2 = -d_2$, $r_3 = -d_3$ with $d_2, d_3 > 0$, and the optimal policy "
                "$\\pi^* = \\pi_{\\mathrm{ref}} e^{r/\\beta} / Z$ tends to $\\pi_{\\mathrm{ref}}$ as the KL penalty "
                "grows. Checked here for the best response, $\\pi^*_1 \\to p_1$; for the others the computation "
                "is the same, since every $e^{r_i/\\beta} \\to 1$ and so $Z \\to 1$ ...",
                "平移奖励使最好的回答 $r_1 = 0$（由证明 4，平移不改变最优策略）；于是 $r_2 = -d_2$，$r_3 = -d_3$，"
                "$d_2, d_3 > 0$，当 KL 惩罚变大时最优策略 "
                "$\\pi^* = \\pi_{\\mathrm{ref}} e^{r/\\beta} / Z$ 趋于 $\\pi_{\\mathrm{ref}}$。这里检验的是最好的回答："
                "$\\pi^*_1 \\to p_1$；其他回答的计算相同，因为每个 $e^{r_i/\\beta} \\to 1$，从而 $Z \\to 1$……",
            ),
            Limit(pistar1, beta, sp.oo, p[0]),
            where=OPT1,
        ),
        Step(
            Text("β → 0: the optimal policy picks the best response", "β → 0：最优策略选出最好的回答"),
            Text(
                "... and puts all its mass on the best response as it vanishes: unregularised reward maximisation.",
                "……而当惩罚消失时把全部概率放在最好的回答上：即无正则的奖励最大化。",
            ),
            Limit(pistar1, beta, 0, 1, "+"),
            where=OPT1,
        ),
        Step(
            Text("β → 0: the loss forgets the data", "β → 0：损失不再依赖数据"),
            Text(
                "For any fixed margin the DPO loss tends to $\\ln 2$ as $\\beta \\to 0$: every pair looks like the "
                "start of training (proof 9), and the gradient $-\\beta\\sigma(-\\beta h)$ vanishes with it.",
                "对任意固定的间隔，当 $\\beta \\to 0$ 时 DPO 损失趋于 $\\ln 2$：每一对都像训练刚开始时一样（证明 9），"
                "梯度 $-\\beta\\sigma(-\\beta h)$ 也随之消失。",
            ),
            Limit(LOSS, beta, 0, sp.log(2), "+"),
        ),
        Step(
            Text("β → ∞: a correctly ordered pair's loss vanishes", "β → ∞：排序正确的样本对损失趋于零"),
            Text(
                "For a positive margin the loss tends to 0 as $\\beta \\to \\infty$ ...",
                "对正的间隔，当 $\\beta \\to \\infty$ 时损失趋于 0……",
            ),
            Limit(LOSS.subs(h, h_pos), beta, sp.oo, 0),
        ),
        Step(
            Text("β → ∞: a wrongly ordered pair costs without bound", "β → ∞：排序错误的样本对损失无界"),
            Text(
                "... and for a negative margin it grows without bound: the loss becomes a hard 0/∞ test of the "
                "margin's sign, while the optimal policy (step 3 of this proof) stays at the reference.",
                "……对负的间隔则无界增长：损失变成对间隔符号的硬性 0/∞ 判定，而最优策略（本证明第 3 步）停留在参考策略"
                "。",
            ),
            Limit(LOSS.subs(h, -h_pos), beta, sp.oo, sp.oo),
        ),
    ],
    conclusion=Text(
        "The implicit rewards `dpo_loss` returns average to $\\beta\\,\\mathrm{KL}(\\pi\\,\\|\\,\\pi_{\\mathrm{ref}})$ "
        "over the policy's samples; $\\beta$ sets how far the optimum may drift from the reference.",
        "`dpo_loss` 返回的隐式奖励在策略样本上的均值为 $\\beta\\,\\mathrm{KL}(\\pi\\,\\|\\,\\pi_{\\mathrm{ref}})$；"
        "$\\beta$ 决定最优策略能偏离参考策略多远。",
    ),
)


def compare() -> list:
    """dpo_loss's implicit rewards of three responses, averaged under π and under π_ref, against ±β KL."""
    from dpo_ref.losses import dpo_loss

    from .numeric import Row, exact, tensors

    beta_, pol, ref = 0.5, [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]
    log = [float(sp.log(v)) for v in pol + ref]
    rewards = []
    for k in range(3):  # each response as the "chosen" one against response 0
        out = dpo_loss(*tensors(log[k], log[0], log[3 + k], log[3]), beta=beta_)
        rewards.append(out.chosen_rewards.item())
    values = {beta: beta_}
    kl_q = sum(sp.Float(a, 50) * sp.log(sp.Float(a, 50) / sp.Float(b, 50)) for a, b in zip(pol, ref))
    kl_p = sum(sp.Float(b, 50) * sp.log(sp.Float(b, 50) / sp.Float(a, 50)) for a, b in zip(pol, ref))
    return [
        Row("Σ π(y) r̂(y) = β KL(π‖π_ref)", exact(beta * kl_q, values), sum(a * r for a, r in zip(pol, rewards))),
        Row("Σ π_ref(y) r̂(y) = −β KL(π_ref‖π)", exact(-beta * kl_p, values), sum(b * r for b, r in zip(ref, rewards))),
    ]
