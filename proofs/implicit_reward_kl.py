"""The implicit reward and the KL to the reference; the limits β → 0 and β → ∞ (Rafailov et al. 2023,
Sec. 4-5)."""

from __future__ import annotations

import sympy as sp

from .common import Z, beta, h, sigma
from .core import NAMES, Equal, Limit, Proof, Step, Text

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
# Any n: rewards shifted so the best response is y_1 with r_1 = 0 (a shift changes nothing, proof 4), and
# r_i = -d_i for the others; d_i > 0 makes y_1 the unique best response (used as beta -> 0 only).
PIS = sp.IndexedBase("pi^*", positive=True)
p_i, p_1, d_i = sp.symbols("p_i p_1 d_i", positive=True)
pis_i, pis_1 = sp.symbols("pi^*_i pi^*_1", positive=True)
r_i, r_1 = sp.symbols("r_i r_1", real=True)
RATIO = p_i / p_1 * sp.exp(-d_i / beta)  # pi*_i / pi*_1, the odds of response i against the best
OPT_I = {pis_i: p_i * sp.exp(r_i / beta) / Z, pis_1: p_1 * sp.exp(r_1 / beta) / Z}
NAMES.update({"pi^*_i": ("\\pi^*_i", "π*ᵢ"), "pi^*_1": ("\\pi^*_1", "π*₁")})
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
        "greedy reward maximisation ($\\beta \\to 0$). Every step holds for any number $n$ of responses: "
        "sums are checked for symbolic $n$, and the limits of the optimal policy through the odds of a "
        "generic response $i$ against the best.",
        "`dpo_loss` 报告的奖励 $\\hat r = \\beta \\log\\frac"
        "{\\pi}{\\pi_{\\mathrm{ref}}}$ 与策略偏离参考策略的程度相联系："
        "它在策略下的均值是 $\\beta\\,\\mathrm{KL}(\\pi \\,\\|\\, \\pi_{\\mathrm{ref}})$，即策略相对于参考策略的 KL 散"
        "度的 "
        "$\\beta$ 倍。而 $\\beta$ 在停留于参考策略（$\\beta \\to \\infty$）与贪心地最大化奖励（$\\beta \\to 0$）"
        "这两个极端之间调节。每一步对任意回答数 $n$ 成立：求和在符号 $n$ 下检验，最优策略的极限"
        "通过任意一个回答 $i$ 相对最好回答的赔率来检验。",
    ),
    justifies=("dpo_ref.losses.dpo_loss",),
    source="dpo",
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
            eq="Eq. 3",
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
            eq="Eq. 3",
        ),
        Step(
            Text("The odds against the best response (any n)", "相对最好回答的赔率（任意 n）"),
            Text(
                "Let $y_1$ be the best response: every other response has $r_i = r_1 - d_i$ with $d_i > 0$ (a "
                "reward shift does not change the optimal policy, proof 4). In the odds "
                "$\\pi^*_i / \\pi^*_1$ of response $i$ against the best, the partition function cancels, for any $n$.",
                "设 $y_1$ 为最好的回答：其余每个回答 $r_i = r_1 - d_i$，$d_i > 0$（由证明 4，奖励平移不改变最优策略）。"
                "在回答 $i$ 相对最好回答的赔率 $\\pi^*_i / \\pi^*_1$ 中，配分函数约去（任意 $n$）。",
            ),
            Equal(pis_i / pis_1, RATIO, via=("cancel",), given={r_i: r_1 - d_i}),
            where=OPT_I,
            eq="Eq. 4",
        ),
        Step(
            Text("β → ∞: the odds tend to the reference's", "β → ∞：赔率趋于参考策略的赔率"),
            Text(
                "As the KL penalty grows, every $e^{r_i/\\beta} \\to 1$ and the odds tend to the reference's "
                "$p_i / p_1$ (for any reward, best or not) ...",
                "当 KL 惩罚变大时，每个 $e^{r_i/\\beta} \\to 1$，赔率趋于参考策略的 $p_i / p_1$（对任何奖励都成立）……",
            ),
            Limit(RATIO, beta, sp.oo, p_i / p_1),
            eq="Eq. 4",
        ),
        Step(
            Text("β → 0: the odds of every other response vanish", "β → 0：其余每个回答的赔率趋于零"),
            Text(
                "... and as it vanishes the odds of every response worse than the best go to 0 (this is where "
                "$d_i > 0$ is used: with a tie for the best, the mass would be shared).",
                "……而当惩罚消失时，每个比最好回答差的回答的赔率趋于 0（这里用到 $d_i > 0$：若有并列最好，概率会被分摊"
                "）。",
            ),
            Limit(RATIO, beta, 0, 0, "+"),
            eq="Eq. 4",
        ),
        Step(
            Text("The best response's probability from the odds (any n)", "由赔率得到最好回答的概率（任意 n）"),
            Text(
                "Since $\\pi^*$ sums to one (proof 1, step 1), $\\pi^*_1$ is one over the sum of the odds. A "
                "finite sum of limits is the limit of the sum, so by the two previous steps "
                "$\\pi^*_1 \\to 1/(1 + 0 + \\dots + 0) = 1$ as $\\beta \\to 0$ (and $\\pi^*_i = $ odds "
                "$\\times\\, \\pi^*_1 \\to 0$): greedy reward maximisation ...",
                "由于 $\\pi^*$ 之和为一（证明 1 第 1 步），$\\pi^*_1$ 等于赔率之和的倒数。有限个极限之和等于和的极限，"
                "所以由前两步，$\\beta \\to 0$ 时 $\\pi^*_1 \\to 1/(1 + 0 + \\dots + 0) = 1$"
                "（且 $\\pi^*_i = $ 赔率 $\\times\\, \\pi^*_1 \\to 0$）：即贪心的奖励最大化……",
            ),
            Equal(1 / S(PIS[i] / PIS[1]), PIS[1], via=("sums",), given={S(PIS[i]): 1}),
            eq="Eq. 4",
        ),
        Step(
            Text("β → ∞: the optimal policy tends to the reference (any n)", "β → ∞：最优策略趋于参考策略（任意 n）"),
            Text(
                "... and as $\\beta \\to \\infty$ the odds tend to $p_i/p_1$, so $\\pi^*_1$ tends to one over "
                "their sum, which is $p_1$ because the reference sums to one; then $\\pi^*_i \\to (p_i/p_1)\\,p_1 "
                "= p_i$ for every $i$: $\\pi^* \\to \\pi_{\\mathrm{ref}}$.",
                "……而 $\\beta \\to \\infty$ 时赔率趋于 $p_i/p_1$，于是 $\\pi^*_1$ 趋于它们之和的倒数，"
                "因参考策略之和为一，它等于 $p_1$；从而对每个 $i$ 有 $\\pi^*_i \\to (p_i/p_1)\\,p_1 = p_i$："
                "$\\pi^* \\to \\pi_{\\mathrm{ref}}$。",
            ),
            Equal(1 / S(P[i] / P[1]), P[1], via=("sums",), given={S(P[i]): 1}),
            eq="Eq. 4",
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
            eq="Eq. 7",
        ),
        Step(
            Text("β → ∞: a correctly ordered pair's loss vanishes", "β → ∞：排序正确的样本对损失趋于零"),
            Text(
                "For a positive margin the loss tends to 0 as $\\beta \\to \\infty$ ...",
                "对正的间隔，当 $\\beta \\to \\infty$ 时损失趋于 0……",
            ),
            Limit(LOSS.subs(h, h_pos), beta, sp.oo, 0),
            eq="Eq. 7",
        ),
        Step(
            Text("β → ∞: a wrongly ordered pair costs without bound", "β → ∞：排序错误的样本对损失无界"),
            Text(
                "... and for a negative margin it grows without bound: the loss becomes a hard 0/∞ test of the "
                "margin's sign, while the optimal policy (step 7 of this proof) stays at the reference.",
                "……对负的间隔则无界增长：损失变成对间隔符号的硬性 0/∞ 判定，而最优策略（本证明第 7 步）停留在参考策略"
                "。",
            ),
            Limit(LOSS.subs(h, -h_pos), beta, sp.oo, sp.oo),
            eq="Eq. 7",
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
