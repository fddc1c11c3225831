"""Reward reparameterisation: r = beta log(pi*/pi_ref) + beta log Z (Rafailov et al. 2023, Eq. 5)."""

from __future__ import annotations

import sympy as sp

from .common import Z, beta
from .core import NAMES, Equal, Proof, Solutions, Step, Text

p_i, pistar_i = sp.Symbol("p_i", positive=True), sp.Symbol("pi_i^*", positive=True)
r_i = sp.Symbol("r_i", real=True)
REPARAM = beta * sp.log(pistar_i / p_i) + beta * sp.log(Z)  # the claimed reward

# n = 3 (compare() evaluates the optimal policy there): reference p and rewards r
p = sp.symbols("p_1:4", positive=True)
r = sp.symbols("r_1:4", real=True)
Z3 = sp.Add(*[pi * sp.exp(ri / beta) for pi, ri in zip(p, r)])
pistar = [pi * sp.exp(ri / beta) / Z3 for pi, ri in zip(p, r)]  # (n = 3: used by compare())

# Any n: IndexedBase sums over j = 1..n with symbolic n
n = sp.Symbol("n", integer=True, positive=True)
i, j = sp.symbols("i j", integer=True, positive=True)
P, Q = (sp.IndexedBase(name, positive=True) for name in ("p", "q"))  # reference, a policy pi_theta
R, RH = sp.IndexedBase("r", real=True), sp.IndexedBase("rhat", real=True)
PIS = sp.IndexedBase("pi^*", positive=True)
NAMES["rhat"] = (r"\hat r", "r̂")


def S(term: sp.Expr) -> sp.Sum:
    return sp.Sum(term, (j, 1, n))


Zn = S(P[j] * sp.exp(R[j] / beta))
IMPLICIT = {RH[i]: beta * sp.log(Q[i] / P[i]), RH[j]: beta * sp.log(Q[j] / P[j])}

PROOF = Proof(
    name="reward-reparam",
    title=Text("Reward reparameterisation", "奖励重参数化"),
    intro=Text(
        "The closed form of the optimal policy can be inverted: the reward is a log-ratio of policies "
        "plus a term that depends on the prompt only. This is the step that lets DPO replace the reward "
        "model by the policy itself.",
        "最优策略的闭式形式可以反解：奖励等于两个策略的对数比值，再加上一个只依赖于提示 $x$ 的项。"
        "正是这一步让 DPO 能用策略本身代替奖励模型。",
    ),
    justifies=("dpo_ref.losses.dpo_loss", "dpo_ref.losses.preference_margin"),
    source="dpo",
    steps=[
        Step(
            Text("Solve the optimal policy for the reward", "由最优策略反解奖励"),
            Text(
                "Take logs of $\\pi^* = \\pi_{\\mathrm{ref}} e^{r/\\beta}/Z$ and solve for $r$; the real "
                "solution is unique.",
                "对 $\\pi^* = \\pi_{\\mathrm{ref}} e^{r/\\beta}/Z$ 取对数并解出 $r$；实数解唯一。",
            ),
            Solutions(sp.Eq(pistar_i, p_i * sp.exp(r_i / beta) / Z), r_i, [REPARAM]),
            eq="Eq. 5",
        ),
        Step(
            Text("Check by substitution", "代回验证"),
            Text(
                "Putting the reparameterised reward back into the closed form returns $\\pi^*$.",
                "把重参数化后的奖励代回闭式形式，得到的正是 $\\pi^*$。",
            ),
            Equal(p_i * sp.exp(REPARAM / beta) / Z, pistar_i, via=("expand_log", "powsimp", "simplify")),
            eq="Eq. 5",
        ),
        Step(
            Text(
                "The log-partition term is the same for every response (any n)", "对数配分项对所有回答都相同（任意 n）"
            ),
            Text(
                "With $\\pi^*$ built from a reward $r$, $r_i - \\beta\\log(\\pi^*_i/p_i) = \\beta\\log Z(x)$ "
                "for every response $i$: the reward is recovered up to a function of the prompt alone.",
                "用奖励 $r$ 构造 $\\pi^*$，则对每个回答 $i$ 都有 $r_i - \\beta\\log(\\pi^*_i/p_i) = "
                "\\beta\\log Z(x)$：奖励可以还原出来，但只能确定到相差一个只依赖于提示的函数。",
            ),
            Equal(R[i] - beta * sp.log(PIS[i] / P[i]), beta * sp.log(Z), via=("expand_log",)),
            where={PIS[i]: P[i] * sp.exp(R[i] / beta) / Z, Z: Zn},
            eq="Eq. 5",
        ),
        Step(
            Text("Implicit reward of a policy (any n)", "策略的隐式奖励（任意 n）"),
            Text(
                "For any policy $\\pi_\\theta$, with probabilities $q_j = \\pi_\\theta(y_j|x)$ summing to one, "
                "define the implicit reward $\\hat r_j = \\beta\\log(q_j/p_j)$. Its partition function is "
                "$\\sum_j q_j = 1$, so $\\log Z = 0$ ...",
                "对任意策略 $\\pi_\\theta$（概率 $q_j = \\pi_\\theta(y_j|x)$ 之和为一），定义隐式奖励 "
                "$\\hat r_j = \\beta\\log(q_j/p_j)$。它的配分函数是 $\\sum_j q_j = 1$，所以 $\\log Z = 0$……",
            ),
            Equal(S(P[j] * sp.exp(RH[j] / beta)), 1, via=("sums",), given={S(Q[j]): 1}),
            where={RH[j]: IMPLICIT[RH[j]]},
            eq="Thm. 1",
        ),
        Step(
            Text(
                "Every policy is optimal for its implicit reward (any n)",
                "每个策略都是其隐式奖励下的最优策略（任意 n）",
            ),
            Text(
                "... and the optimal policy for $\\hat r$ is $\\pi_\\theta$ itself. So "
                "$\\beta\\log(\\pi_\\theta/\\pi_{\\mathrm{ref}})$, the `chosen_rewards` and `rejected_rewards` "
                "that `dpo_loss` reports, is a reward under which the current policy is exactly optimal.",
                "……而 $\\hat r$ 对应的最优策略就是 $\\pi_\\theta$ 本身。因此 `dpo_loss` 返回的 "
                "`chosen_rewards` 与 `rejected_rewards`，即 $\\beta\\log(\\pi_\\theta/\\pi_{\\mathrm{ref}})$，"
                "是一个使当前策略恰为最优的奖励。",
            ),
            Equal(
                P[i] * sp.exp(RH[i] / beta) / S(P[j] * sp.exp(RH[j] / beta)), Q[i], via=("sums",), given={S(Q[j]): 1}
            ),
            where=IMPLICIT,
            eq="Thm. 1",
        ),
    ],
    conclusion=Text(
        "$r(x,y) = \\beta\\log\\frac{\\pi^*(y|x)}{\\pi_{\\mathrm{ref}}(y|x)} + \\beta\\log Z(x)$. "
        "The first term is what `dpo_loss` returns as the implicit reward; the second depends on $x$ only "
        "and cancels in every comparison of two responses to the same prompt (next proof).",
        "$r(x,y) = \\beta\\log\\frac{\\pi^*(y|x)}{\\pi_{\\mathrm{ref}}(y|x)} + \\beta\\log Z(x)$。"
        "第一项就是 `dpo_loss` 返回的隐式奖励；第二项只依赖于 "
        "$x$，在同一提示下两个回答的任何比较中都会抵消（见下一个证明）。",
    ),
)


def compare() -> list:
    """dpo_loss's implicit reward of the optimal policy is r_i - β log Z (the reparameterisation, Z moved over)."""
    from dpo_ref.losses import dpo_loss, preference_margin

    from .numeric import Row, exact, tensors

    values = {beta: 0.25, p[0]: 0.2, p[1]: 0.5, p[2]: 0.3, r[0]: -1.0, r[1]: 0.75, r[2]: 0.5}
    log_opt = [exact(sp.log(e), values) for e in pistar[:2]]
    logps = tensors(*log_opt, float(sp.log(0.2)), float(sp.log(0.5)))
    out = dpo_loss(*logps, beta=0.25)
    return [
        Row(
            "β · margin = r₁ − r₂ (β log Z cancels)",
            exact(r[0] - r[1], values),
            0.25 * preference_margin(*logps).item(),
        ),
        Row("chosen reward = r₁ − β log Z", exact(r[0] - beta * sp.log(Z3), values), out.chosen_rewards.item()),
        Row("rejected reward = r₂ − β log Z", exact(r[1] - beta * sp.log(Z3), values), out.rejected_rewards.item()),
    ]
