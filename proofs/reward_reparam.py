"""2. Reward reparameterisation: r = beta log(pi*/pi_ref) + beta log Z (Rafailov et al. 2023, Eq. 5)."""

from __future__ import annotations

import sympy as sp

from .common import Z, beta
from .core import Equal, Proof, Solutions, Step, Text

p_i, pistar_i = sp.Symbol("p_i", positive=True), sp.Symbol("pi_i^*", positive=True)
r_i = sp.Symbol("r_i", real=True)
REPARAM = beta * sp.log(pistar_i / p_i) + beta * sp.log(Z)  # the claimed reward

# n = 3: reference p, a policy t (summing to one) and rewards r
p = sp.symbols("p_1:4", positive=True)
t = sp.symbols("t_1:4", positive=True)
r = sp.symbols("r_1:4", real=True)
simplex_t = {t[2]: 1 - t[0] - t[1]}
implicit = [beta * sp.log(ti / pi) for ti, pi in zip(t, p)]  # r_hat_i = beta log(pi_theta / pi_ref)
Z3 = sp.Add(*[pi * sp.exp(ri / beta) for pi, ri in zip(p, r)])
pistar = [pi * sp.exp(ri / beta) / Z3 for pi, ri in zip(p, r)]

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
    steps=[
        Step(
            Text("Solve the optimal policy for the reward", "由最优策略反解奖励"),
            Text(
                "Take logs of $\\pi^* = \\pi_{\\mathrm{ref}} e^{r/\\beta}/Z$ and solve for $r$; the real "
                "solution is unique.",
                "对 $\\pi^* = \\pi_{\\mathrm{ref}} e^{r/\\beta}/Z$ 取对数并解出 $r$；实数解唯一。",
            ),
            Solutions(sp.Eq(pistar_i, p_i * sp.exp(r_i / beta) / Z), r_i, [REPARAM]),
        ),
        Step(
            Text("Check by substitution", "代回验证"),
            Text(
                "Putting the reparameterised reward back into the closed form returns $\\pi^*$.",
                "把重参数化后的奖励代回闭式形式，得到的正是 $\\pi^*$。",
            ),
            Equal(p_i * sp.exp(REPARAM / beta) / Z, pistar_i, via=("expand_log", "powsimp", "simplify")),
        ),
        Step(
            Text("The log-partition term is the same for every response", "对数配分项对所有回答都相同"),
            Text(
                "With $\\pi^*$ built from a reward $r$ ($n = 3$, $Z$ written out), "
                "$r_i - \\beta\\log(\\pi^*_i/p_i)$ is the same for $y_1$ and $y_2$ (it is $\\beta\\log Z(x)$): "
                "the reward is recovered up to a function of the prompt alone.",
                "用奖励 $r$ 构造 $\\pi^*$（$n = 3$，$Z$ 完整展开），则 $r_i - \\beta\\log(\\pi^*_i/p_i)$ "
                "对 $y_1$ 和 $y_2$ 取值相同（都等于 $\\beta\\log Z(x)$）：奖励只能被还原到相差一个只依赖提示的函数。",
            ),
            Equal(
                r[0] - beta * sp.log(pistar[0] / p[0]),
                r[1] - beta * sp.log(pistar[1] / p[1]),
                via=("expand_log",),
            ),
        ),
        Step(
            Text("Implicit reward of a policy", "策略的隐式奖励"),
            Text(
                "For any policy $\\pi_\\theta$ define the implicit reward "
                "$\\hat r_\\theta = \\beta\\log(\\pi_\\theta/\\pi_{\\mathrm{ref}})$. Its partition function is "
                "$\\sum_y \\pi_\\theta(y|x) = 1$ ($n = 3$, $t_3 = 1 - t_1 - t_2$), so $\\log Z = 0$ ...",
                "对任意策略 $\\pi_\\theta$，定义隐式奖励 $\\hat r_\\theta = "
                "\\beta\\log(\\pi_\\theta/\\pi_{\\mathrm{ref}})$。"
                "它的配分函数是 $\\sum_y \\pi_\\theta(y|x) = 1$（$n "
                "= 3$，$t_3 = 1 - t_1 - t_2$），所以 $\\log Z = 0$……",
            ),
            Equal(sp.Add(*[pi * sp.exp(ri / beta) for pi, ri in zip(p, implicit)]), 1, given=simplex_t),
        ),
        Step(
            Text("Every policy is optimal for its implicit reward", "每个策略都是其隐式奖励下的最优策略"),
            Text(
                "... and the optimal policy for $\\hat r_\\theta$ is $\\pi_\\theta$ itself. So "
                "$\\beta\\log(\\pi_\\theta/\\pi_{\\mathrm{ref}})$, the `chosen_rewards` and `rejected_rewards` "
                "that `dpo_loss` reports, is a reward under which the current policy is exactly optimal.",
                "……而 $\\hat r_\\theta$ 对应的最优策略就是 $\\pi_\\theta$ 本身。因此 `dpo_loss` 返回的 "
                "`chosen_rewards` 与 `rejected_rewards`，即 $\\beta\\log(\\pi_\\theta/\\pi_{\\mathrm{ref}})$，"
                "是一个使当前策略恰为最优的奖励。",
            ),
            Equal(
                p[0] * sp.exp(implicit[0] / beta) / sp.Add(*[pi * sp.exp(ri / beta) for pi, ri in zip(p, implicit)]),
                t[0],
                given=simplex_t,
            ),
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
