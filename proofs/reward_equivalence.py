"""Rewards that differ by a function of the prompt are equivalent (Rafailov et al. 2023, Sec. 5, Lemma 1-2)."""

from __future__ import annotations

import sympy as sp

from .common import Z, beta, bradley_terry, plackett_luce
from .core import Equal, Proof, Step, Text

r_w, r_l = sp.symbols("r(y_w) r(y_l)", real=True)  # rewards of the chosen and rejected response
f = sp.Symbol("f", real=True)  # f(x): any function of the prompt only
p = sp.symbols("p_1:4", positive=True)
r = sp.symbols("r_1:4", real=True)


def optimal(rewards: list) -> list:
    Z = sp.Add(*[pi * sp.exp(ri / beta) for pi, ri in zip(p, rewards)])
    return [pi * sp.exp(ri / beta) / Z for pi, ri in zip(p, rewards)]


shifted = [ri + f for ri in r]
pistar = optimal(list(r))  # (n = 3: used by compare())

# Any n: IndexedBase sums over j = 1..n with symbolic n
n = sp.Symbol("n", integer=True, positive=True)
i, j, k = sp.symbols("i j k", integer=True, positive=True)
P, PIS = sp.IndexedBase("p", positive=True), sp.IndexedBase("pi^*", positive=True)
R = sp.IndexedBase("r", real=True)


def S(term: sp.Expr) -> sp.Sum:
    return sp.Sum(term, (j, 1, n))


Zn = S(P[j] * sp.exp(R[j] / beta))
Zn_shifted = S(P[j] * sp.exp((R[j] + f) / beta))

PROOF = Proof(
    name="reward-equivalence",
    title=Text("Equivalent rewards", "等价的奖励函数"),
    intro=Text(
        "Two rewards $r$ and $r'(x,y) = r(x,y) + f(x)$ that differ by a function of the prompt alone "
        "cannot be told apart from preferences, and they induce the same optimal policy. So preferences "
        "can determine a reward only up to this equivalence (the next proof shows that the "
        "reparameterisation keeps exactly one member of each class), and the implicit rewards DPO reports "
        "are meaningful only through their differences.",
        "两个奖励 $r$ 与 $r'(x,y) = r(x,y) + f(x)$ 只相差一个仅依赖于提示的函数，它们无法通过偏好数据区分，"
        "并且诱导出同一个最优策略。所以偏好最多只能把奖励确定到这一等价类（下一个证明说明重参数化在每个等价类中"
        "恰好保留一个成员），DPO 报告的隐式奖励也只有差值才有意义。",
    ),
    justifies=("dpo_ref.losses.dpo_loss", "dpo_ref.losses.preference_margin"),
    source="dpo",
    steps=[
        Step(
            Text("Bradley–Terry ignores a prompt-only shift", "布拉德利-特里模型不受仅依赖提示的平移影响"),
            Text(
                "Adding $f(x)$ to both rewards multiplies numerator and denominator by $e^{f(x)}$.",
                "两个奖励都加上 $f(x)$，相当于分子和分母同乘 $e^{f(x)}$。",
            ),
            Equal(bradley_terry(r_w + f, r_l + f), bradley_terry(r_w, r_l), via=("expand", "cancel")),
            eq="Lemma 1",
        ),
        Step(
            Text("So does Plackett–Luce (K = 3)", "普拉克特-卢斯模型也是如此（K = 3）"),
            Text(
                "The same factor cancels in every stage of the ranking.",
                "同一个因子在排序的每一阶段都约去。",
            ),
            Equal(plackett_luce(shifted, (0, 1, 2)), plackett_luce(list(r), (0, 1, 2)), via=("expand", "cancel")),
            eq="Lemma 1",
        ),
        Step(
            Text("The partition function absorbs the shift (any n)", "配分函数吸收了平移（任意 n）"),
            Text(
                "For every number $n$ of responses, $Z'(x) = e^{f(x)/\\beta} Z(x)$.",
                "对任意回答数 $n$，都有 $Z'(x) = e^{f(x)/\\beta} Z(x)$。",
            ),
            Equal(Zn_shifted, sp.exp(f / beta) * Zn, via=("sums",)),
            eq="Lemma 2",
        ),
        Step(
            Text("Equivalent rewards have the same optimal policy (any n)", "等价的奖励有相同的最优策略（任意 n）"),
            Text(
                "The factor $e^{f/\\beta}$ cancels between numerator and partition function, for each response.",
                "因子 $e^{f/\\beta}$ 在分子与配分函数之间约去，对每个回答都成立。",
            ),
            Equal(
                P[i] * sp.exp((R[i] + f) / beta) / Zn_shifted, P[i] * sp.exp(R[i] / beta) / Zn, via=("sums", "cancel")
            ),
            eq="Lemma 2",
        ),
        Step(
            Text("Implicit reward differences are reward differences (any n)", "隐式奖励之差等于奖励之差（任意 n）"),
            Text(
                "For the optimal policy, the difference of implicit rewards "
                "$\\beta\\log(\\pi^*/\\pi_{\\mathrm{ref}})$ between two responses is exactly the difference "
                "of the true rewards: the offset $\\beta\\log Z(x)$, the same for both responses, is a "
                "prompt-only shift of the kind that defines the equivalence class.",
                "对于最优策略，两个回答的隐式奖励 $\\beta\\log(\\pi^*/\\pi_{\\mathrm{ref}})$ 之差恰好等于真实奖励之差："
                "偏移 $\\beta\\log Z(x)$ 对两个回答相同，正是定义等价类的那种只依赖于提示的平移。",
            ),
            Equal(beta * sp.log(PIS[i] / P[i]) - beta * sp.log(PIS[k] / P[k]), R[i] - R[k], via=("expand_log",)),
            where={PIS[i]: P[i] * sp.exp(R[i] / beta) / Z, PIS[k]: P[k] * sp.exp(R[k] / beta) / Z, Z: Zn},
            eq="Thm. 1",
        ),
    ],
    conclusion=Text(
        "Compare `chosen_rewards - rejected_rewards` across pairs, never a single reward across prompts: "
        "each prompt's implicit rewards carry their own unknown offset $\\beta\\log Z(x)$.",
        "应当比较 `chosen_rewards - rejected_rewards`（同一对内的差），而不要跨提示比较单个奖励："
        "每个提示的隐式奖励都带有各自未知的偏移 $\\beta\\log Z(x)$。",
    ),
)


def compare() -> list:
    """The optimal policies of r and r + f(x) give dpo_loss the same value, for several f."""
    from dpo_ref.losses import dpo_loss

    from .common import sigma
    from .numeric import Row, exact, tensors

    base = {beta: 0.5, p[0]: 0.4, p[1]: 0.35, p[2]: 0.25, r[0]: 0.5, r[1]: -1.0, r[2]: 0.0}
    rows = []
    for fv in (-3.0, 0.0, 2.5):
        values = {**base, f: fv}
        log_opt = [exact(sp.log(e), values) for e in optimal(shifted)[:2]]
        out = dpo_loss(*tensors(*log_opt, float(sp.log(0.4)), float(sp.log(0.35))), beta=0.5)
        rows.append(
            Row(f"loss at π*(r + f), f = {fv:g}", exact(-sp.log(sigma(r[0] - r[1])), values), out.losses.item())
        )
    return rows
