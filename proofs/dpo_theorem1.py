"""DPO's Theorem 1: each reward equivalence class has exactly one reparameterised member (Rafailov et al.
2023, Sec. 5.1, Lemma 1 and Theorem 1; App. A.6, Proposition 1), and the identifiability it rests on."""

from __future__ import annotations

import sympy as sp

from .common import Z, beta, sigma
from .core import NAMES, Equal, Proof, Solutions, Step, Text

r_w, r_l, rp_w, rp_l = sp.symbols("r(y_w) r(y_l) r'(y_w) r'(y_l)", real=True)  # two reward functions on a pair
f = sp.Symbol("f", real=True)  # f(x): a function of the prompt only
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Symbol("i", integer=True, positive=True)
P, PI, PI2 = (sp.IndexedBase(name, positive=True) for name in ("p", "pi", "pi'"))
R = sp.IndexedBase("r", real=True)
PIR = sp.IndexedBase("pi_r", positive=True)  # the projection's policy pi_r = pi_ref e^{r/beta} / Z
NAMES.update({"pi_r": (r"\pi_r", "π_r"), "pi'": (r"\pi'", "π'")})


def S(term: sp.Expr) -> sp.Sum:
    return sp.Sum(term, (i, 1, n))


PROOF = Proof(
    name="dpo-theorem-1",
    title=Text(
        "Theorem 1: every reward class has exactly one reparameterised member",
        "定理 1：每个奖励等价类恰有一个重参数化形式的成员",
    ),
    intro=Text(
        "Call two rewards equivalent when they differ by a function $f(x)$ of the prompt alone (previous "
        "proof). Preferences determine a reward only up to this equivalence, and DPO's Theorem 1 says the "
        "reparameterisation loses nothing: every class contains a reward of the form "
        "$\\beta \\log \\frac{\\pi(y \\mid x)}{\\pi_{\\mathrm{ref}}(y \\mid x)}$ with $\\pi$ a policy, and "
        "Proposition 1 of its App. A.6 that it contains exactly one (steps 3-5). So "
        "searching over policies, as DPO does, is searching over reward classes, one for one. Sums over "
        "the $n$ responses to a prompt are checked for symbolic $n$.",
        "若两个奖励只相差一个仅依赖于提示的函数 $f(x)$，就称它们等价（上一个证明）。偏好只能把奖励确定到这个等价类，"
        "而 DPO 的定理 1 说明重参数化没有损失：每个等价类都包含一个形如 "
        "$\\beta \\log \\frac{\\pi(y \\mid x)}{\\pi_{\\mathrm{ref}}(y \\mid x)}$（$\\pi$ 为策略）的奖励，"
        "其附录 A.6 的命题 1 说明这样的奖励恰有一个（第 3-5 步）。"
        "所以像 DPO 那样在策略上搜索，就是在奖励等价类上一一对应地搜索。"
        "对同一提示下 $n$ 个回答的求和在符号 $n$ 下检验。",
    ),
    justifies=("dpo_ref.losses.dpo_loss", "dpo_ref.losses.preference_margin"),
    source="dpo",
    steps=[
        Step(
            Text("Identifiability: preferences fix reward differences", "可辨识性：偏好确定奖励之差"),
            Text(
                "If two rewards $r, r'$ give the same Bradley–Terry probability on a pair, then, $\\sigma$ being "
                "strictly increasing, $r'(y_w) - r(y_w) = r'(y_l) - r(y_l)$: on every pair they differ by the same "
                "amount, "
                "so $r' - r$ depends on the prompt alone. Preferences identify the reward class and no more.",
                "若两个奖励 $r, r'$ 在某一对上给出相同的布拉德利-特里概率，则由于 $\\sigma$ 严格递增，"
                "$r'(y_w) - r(y_w) = r'(y_l) - r(y_l)$：它们在每一对上相差同样的量，所以 $r' - r$ 只依赖于提示。"
                "偏好能确定奖励的等价类，仅此而已。",
            ),
            Solutions(sp.Eq(sigma(rp_w - rp_l), sigma(r_w - r_l)), rp_w, [rp_l + r_w - r_l]),
            eq="Thm. 1",
        ),
        Step(
            Text("Existence: the projection stays in the class", "存在性：投影仍在同一等价类中"),
            Text(
                "Given any reward $r$, take its optimal policy $\\pi_r = \\pi_{\\mathrm{ref}} e^{r/\\beta}/Z(x)$ "
                "(proof 1). Its reparameterised reward $\\beta \\log \\frac{\\pi_r}{\\pi_{\\mathrm{ref}}}$ differs "
                "from $r$ by $-\\beta \\log Z(x)$, the same for every response $i$: a function of the prompt "
                "alone, so it is equivalent to $r$.",
                "对任意奖励 $r$，取其最优策略 $\\pi_r = \\pi_{\\mathrm{ref}} e^{r/\\beta}/Z(x)$（证明 1）。"
                "它的重参数化奖励 $\\beta \\log \\frac{\\pi_r}{\\pi_{\\mathrm{ref}}}$ "
                "与 $r$ 相差 $-\\beta \\log Z(x)$，"
                "对每个回答 $i$ 都相同：只依赖于提示，所以与 $r$ 等价。",
            ),
            Equal(beta * sp.log(PIR[i] / P[i]) - R[i], -beta * sp.log(Z), via=("expand_log",)),
            where={PIR[i]: P[i] * sp.exp(R[i] / beta) / Z},
            eq="Thm. 1",
        ),
        Step(
            Text("Uniqueness: two members differ by a factor", "唯一性：两个成员相差一个因子"),
            Text(
                "Suppose $\\beta \\log \\frac{\\pi'}{\\pi_{\\mathrm{ref}}}$ and "
                "$\\beta \\log \\frac{\\pi}{\\pi_{\\mathrm{ref}}}$ are in the same class, i.e. differ by $f(x)$. "
                "Solving for $\\pi'_i$: the two policies differ by the factor $e^{f/\\beta}$, the same for every "
                "response.",
                "设 $\\beta \\log \\frac{\\pi'}{\\pi_{\\mathrm{ref}}}$ 与 "
                "$\\beta \\log \\frac{\\pi}{\\pi_{\\mathrm{ref}}}$ "
                "在同一等价类中，即相差 $f(x)$。解出 $\\pi'_i$：两个策略相差因子 $e^{f/\\beta}$，对每个回答都相同。",
            ),
            Solutions(
                sp.Eq(beta * sp.log(PI2[i] / P[i]), beta * sp.log(PI[i] / P[i]) + f),
                PI2[i],
                [PI[i] * sp.exp(f / beta)],
                sp.Interval.open(0, sp.oo),
            ),
            eq="Prop. 1",
        ),
        Step(
            Text("Normalisation (any n)", "归一化（任意 n）"),
            Text(
                "Both are policies. Summing $\\pi'_i = \\pi_i e^{f/\\beta}$ over the $n$ responses, with "
                "$\\sum_i \\pi_i = 1$:",
                "两者都是策略。对 $n$ 个回答求和 $\\pi'_i = \\pi_i e^{f/\\beta}$，并利用 $\\sum_i \\pi_i = 1$：",
            ),
            Equal(S(PI[i] * sp.exp(f / beta)), sp.exp(f / beta), via=("sums",), given={S(PI[i]): 1}),
            eq="Prop. 1",
        ),
        Step(
            Text("So the shift is zero and the member is unique", "所以平移为零，成员唯一"),
            Text(
                "$\\sum_i \\pi'_i = 1$ as well, so $e^{f/\\beta} = 1$, whose only real solution is $f = 0$: "
                "$\\pi' = \\pi$. Each class has exactly one reparameterised member.",
                "$\\sum_i \\pi'_i$ 也等于 1，所以 $e^{f/\\beta} = 1$，其唯一实数解是 $f = 0$：$\\pi' = \\pi$。"
                "每个等价类恰有一个重参数化形式的成员。",
            ),
            Solutions(sp.Eq(sp.exp(f / beta), 1), f, [0]),
            eq="Prop. 1",
        ),
    ],
    conclusion=Text(
        "The implicit rewards `dpo_loss` reports, $\\beta(\\log\\pi - \\log\\pi_{\\mathrm{ref}})$, are the one "
        "member of the policy's reward class; only their differences ($\\beta$ times the margin $h$) are "
        "determined by preferences, and that is all the loss uses.",
        "`dpo_loss` 报告的隐式奖励 $\\beta(\\log\\pi - \\log\\pi_{\\mathrm{ref}})$ 正是该策略奖励等价类中的那一个成员；"
        "偏好只确定它们的差（即 $\\beta$ 乘以间隔 $h$），而损失也只用到这一点。",
    ),
)


def compare() -> list:
    """dpo_loss's implicit rewards of π_r (n = 3) minus the rewards: the same -β log Z for every response."""
    from dpo_ref.losses import dpo_loss, preference_margin

    from .numeric import Row, exact, tensors

    beta_, ref, rew = 0.5, [0.25, 0.45, 0.3], [1.0, -2.0, 0.5]
    z = sum(p * sp.exp(sp.Float(r_, 50) / beta_) for p, r_ in zip(ref, rew))
    log_pi_r = [float(sp.log(sp.Float(p, 50) * sp.exp(sp.Float(r_, 50) / beta_) / z)) for p, r_ in zip(ref, rew)]
    shift = exact(-beta * sp.log(Z), {beta: beta_, Z: float(z)})
    rows = []
    for k in (1, 2):
        out = dpo_loss(*tensors(log_pi_r[0], log_pi_r[k], float(sp.log(ref[0])), float(sp.log(ref[k]))), beta=beta_)
        if k == 1:
            rows.append(Row("implicit reward − r, response 1", shift, out.chosen_rewards.item() - rew[0]))
        rows.append(Row(f"implicit reward − r, response {k + 1}", shift, out.rejected_rewards.item() - rew[k]))
    logps = tensors(log_pi_r[0], log_pi_r[1], float(sp.log(ref[0])), float(sp.log(ref[1])))
    rows.append(
        Row("β · margin = r₁ − r₂, the class's difference", rew[0] - rew[1], beta_ * preference_margin(*logps).item())
    )
    return rows
