"""The KL-regularised RL objective and its optimal policy (Rafailov et al. 2023, Eq. 3-4, App. A.1)."""

from __future__ import annotations

import sympy as sp

from .common import Z, beta
from .core import Equal, GlobalMinimum, Negative, Proof, Solutions, Step, Text

# A response space of n = 3 with symbolic probabilities: reference p_i, policy q_i, rewards r_i.
p = sp.symbols("p_1:4", positive=True)
q = sp.symbols("q_1:4", positive=True)
r = sp.symbols("r_1:4", real=True)
Z3 = sp.Add(*[pi * sp.exp(ri / beta) for pi, ri in zip(p, r)])  # Z(x) written out for n = 3
pistar = [pi * sp.exp(ri / beta) / Z3 for pi, ri in zip(p, r)]
simplex_q = {q[2]: 1 - q[0] - q[1]}  # the policy's probabilities sum to one


def kl(a: list, b: list) -> sp.Expr:
    return sp.Add(*[ai * sp.log(ai / bi) for ai, bi in zip(a, b)])


objective = sp.Add(*[qi * ri for qi, ri in zip(q, r)]) - beta * kl(q, p)  # E_pi[r] - beta KL(pi || pi_ref)

# Any n: IndexedBase sums over i = 1..n with symbolic n, Z(x) written as such a sum.
n = sp.Symbol("n", integer=True, positive=True)
i = sp.Symbol("i", integer=True, positive=True)
P, Q, RHO = (sp.IndexedBase(name, positive=True) for name in ("p", "q", "q'"))  # q': a second distribution
R = sp.IndexedBase("r", real=True)


def S(term: sp.Expr) -> sp.Sum:
    return sp.Sum(term, (i, 1, n))


Zn = S(P[i] * sp.exp(R[i] / beta))


def objective_of(q_i: sp.Expr) -> sp.Expr:
    """E_pi[r] - beta KL(pi || pi_ref) for the policy whose i-th probability is q_i (any n)."""
    return S(q_i * R[i]) - beta * S(q_i * sp.log(q_i / P[i]))


objective_n = objective_of(Q[i])
simplex_n = {S(Q[i]): 1}
PIS = sp.IndexedBase("pi^*", positive=True)  # the optimal policy, shown as an abbreviation
OPT_N = {PIS[i]: P[i] * sp.exp(R[i] / beta) / Z, Z: Zn}  # pi*_i = p_i e^{r_i/beta} / Z, Z = sum_j ...
pis3 = sp.symbols("pi^*_1:4", positive=True)
OPT_3 = {**{s: e for s, e in zip(pis3, [pi * sp.exp(ri / beta) / Z for pi, ri in zip(p, r)])}, Z: Z3}
simplex_n_rho = {S(Q[i]): 1, S(RHO[i]): 1}
V = sp.IndexedBase("v", real=True)  # a direction in the space of policies
t = sp.Symbol("t", real=True)

# One generic term i: q_i, p_i, r_i with Z a positive symbol.
qi, pi_, ri = sp.Symbol("q_i", positive=True), sp.Symbol("p_i", positive=True), sp.Symbol("r_i", real=True)
rho_i = sp.Symbol("q'_i", positive=True)
x = sp.Symbol("x", positive=True)
lam = sp.Symbol("lambda", real=True)
C = sp.Symbol("C", positive=True)
gibbs_f = x - 1 - sp.log(x)

PROOF = Proof(
    name="optimal-policy",
    title=Text(
        "The optimal policy of KL-regularised reward maximisation",
        "KL 正则化奖励最大化的最优策略",
    ),
    intro=Text(
        "RLHF maximises the expected reward while a KL penalty keeps the policy near the reference: "
        "$\\max_\\pi \\mathbb{E}_{y\\sim\\pi}[r(x,y)] - \\beta\\,\\mathrm{KL}(\\pi\\,\\Vert\\,\\pi_{\\mathrm{ref}})$. "
        "We show that the maximiser has a closed form, $\\pi^*(y|x) "
        "= \\pi_{\\mathrm{ref}}(y|x)\\,e^{r(x,y)/\\beta}/Z(x)$, "
        "in two ways: by rewriting the objective as $\\beta\\log Z$ minus $\\beta$ times the KL divergence "
        "from $\\pi$ to $\\pi^*$ (Gibbs' inequality), and by Lagrange multipliers. The response space is "
        "finite, with $n$ responses $y_1, \\dots, y_n$ to the prompt $x$; we write $p_i = "
        "\\pi_{\\mathrm{ref}}(y_i|x)$ for the reference, $q_i = \\pi(y_i|x)$ for the policy and $r_i = "
        "r(x, y_i)$; $p_i$ keeps this meaning in every later proof. Sums over $i = 1..n$ are checked with "
        "symbolic $n$, and one step is also written out in full at $n = 3$.",
        "RLHF 在最大化期望奖励的同时，用 KL 惩罚把策略约束在参考策略附近："
        "$\\max_\\pi \\mathbb{E}_{y\\sim\\pi}[r(x,y)] - \\beta\\,\\mathrm{KL}(\\pi\\,\\Vert\\,\\pi_{\\mathrm{ref}})$。"
        "我们用两种方法证明其最大值点有闭式形式 "
        "$\\pi^*(y|x) = \\pi_{\\mathrm{ref}}(y|x)\\,e^{r(x,y)/\\beta}/Z(x)$："
        "一是把目标函数改写成 $\\beta\\log Z$ 减去 $\\beta$ 乘以 $\\pi$ 相对于 $\\pi^*$ 的 KL 散度（吉布斯不等式），"
        "二是拉格朗日乘子法。回答空间有限：提示 $x$ 下共有 $n$ 个回答 $y_1, \\dots, y_n$；记参考策略的概率为 "
        "$p_i = \\pi_{\\mathrm{ref}}(y_i|x)$，策略的概率为 $q_i = \\pi(y_i|x)$，奖励为 $r_i = r(x, y_i)$，"
        "$p_i$ 在后面所有证明中都是这个含义。对 $i = 1..n$ 的求和在 $n$ 为符号变量时检验，"
        "另有一步在 $n = 3$ 时完整展开检验。",
    ),
    justifies=("dpo_ref.losses.dpo_loss",),
    source="dpo",
    steps=[
        Step(
            Text("The optimal policy is a probability distribution (any n)", "最优策略是一个概率分布（任意 n）"),
            Text(
                "The partition function $Z(x) = \\sum_y \\pi_{\\mathrm{ref}}(y|x)e^{r(x,y)/\\beta}$ is exactly the "
                "normaliser that makes $\\pi^*$ sum to one.",
                "配分函数 $Z(x) = \\sum_y \\pi_{\\mathrm{ref}}(y|x)e^{r(x,y)/\\beta}$ "
                "恰好是使 $\\pi^*$ 之和为 1 的归一化常数。",
            ),
            Equal(S(PIS[i]), 1, via=("powsimp", "cancel")),
            where=OPT_N,
            eq="Eq. 4",
        ),
        Step(
            Text("Logarithm of the optimal policy", "最优策略的对数"),
            Text(
                "Taking logs turns the product into a sum; this is the form the later steps use.",
                "取对数把乘积变成求和；后面的步骤用的都是这个形式。",
            ),
            Equal(sp.log(pi_ * sp.exp(ri / beta) / Z), sp.log(pi_) + ri / beta - sp.log(Z), via=("expand_log",)),
            eq="Eq. 4",
        ),
        Step(
            Text(
                "The objective is β log Z − β KL(π‖π*) (any n)",
                "目标函数等于 β log Z − β KL(π‖π*)（任意 n）",
            ),
            Text(
                "Insert $\\log\\pi^*_i = \\log p_i + r_i/\\beta - \\log Z$ into "
                "$\\beta\\,\\mathrm{KL}(\\pi\\Vert\\pi^*)$ and add it to the objective: the reward terms cancel and "
                "the sum is $\\beta\\log Z \\sum_i q_i$, which is $\\beta\\log Z$ because $\\pi$ is a distribution.",
                "把 $\\log\\pi^*_i = \\log p_i + r_i/\\beta - \\log Z$ 代入 $\\beta\\,\\mathrm{KL}(\\pi\\Vert\\pi^*)$，"
                "再与目标函数相加：奖励项相互抵消，和为 $\\beta\\log Z \\sum_i q_i$；因为 $\\pi$ 是概率分布，"
                "它等于 $\\beta\\log Z$。",
            ),
            Equal(
                objective_n,
                -beta * S(Q[i] * sp.log(Q[i] / PIS[i])) + beta * sp.log(Z),
                ("sums",),
                simplex_n,
            ),
            where=OPT_N,
            eq="App. A.1",
        ),
        Step(
            Text("The same identity written out for n = 3", "同一恒等式在 n = 3 时的完整展开"),
            Text(
                "As a concrete instance, with every term written out and $q_3 = 1 - q_1 - q_2$: the objective "
                "equals $\\beta\\log Z$ minus $\\beta$ times the KL divergence from $\\pi$ to $\\pi^*$.",
                "作为具体例子，把每一项都写出来并代入 $q_3 = 1 - q_1 - q_2$：目标函数等于 $\\beta\\log Z$ "
                "减去 $\\beta$ 乘以 $\\pi$ 相对于 $\\pi^*$ 的 KL 散度。",
            ),
            Equal(objective, -beta * kl(q, pis3) + beta * sp.log(Z), via=("expand_log",), given=simplex_q),
            where=OPT_3,
            eq="App. A.1",
        ),
        Step(
            Text("Gibbs' lemma: log x ≤ x − 1", "吉布斯引理：log x ≤ x − 1"),
            Text(
                "$\\phi(x) = x - 1 - \\log x$ has $\\phi''(x) = 1/x^2 > 0$ and $\\phi'(1) = 0$, so $x = 1$ is its "
                "unique "
                "minimiser on $x > 0$ and $\\phi \\ge \\phi(1) = 0$, with equality only at $x = 1$.",
                "$\\phi(x) = x - 1 - \\log x$ 满足 $\\phi''(x) = 1/x^2 > 0$ 且 $\\phi'(1) = 0$，因此在 $x > 0$ 上 "
                "$x = 1$ "
                "是唯一的最小值点，$\\phi \\ge \\phi(1) = 0$，当且仅当 $x = 1$ 时取等号。",
            ),
            GlobalMinimum(gibbs_f, x, 1, value=0),
            eq="App. A.1",
        ),
        Step(
            Text("KL divergence as a sum of Gibbs terms (any n)", "KL 散度写成吉布斯项之和（任意 n）"),
            Text(
                "Term by term $q_i\\log(q_i/q'_i) = q_i \\phi(q'_i/q_i) + q_i - q'_i$; summed over $i$ "
                "the last two give $1 - 1 = 0$ for two distributions $\\pi = (q_i)$ and $\\pi' = (q'_i)$.",
                "逐项有 $q_i\\log(q_i/q'_i) = q_i \\phi(q'_i/q_i) + q_i - q'_i$。对两个分布 $\\pi = (q_i)$ 与 "
                "$\\pi' = (q'_i)$ 按 $i$ 求和，最后两项之和为 $1 - 1 = 0$。",
            ),
            Equal(
                S(Q[i] * sp.log(Q[i] / RHO[i])),
                S(Q[i] * gibbs_f.subs(x, RHO[i] / Q[i])),
                ("expand_log", "simplify", "sums"),
                simplex_n_rho,
            ),
            eq="App. A.1",
        ),
        Step(
            Text(
                "Gibbs' inequality: KL ≥ 0, with equality only at π = π′",
                "吉布斯不等式：KL ≥ 0，当且仅当 π = π′ 时取等",
            ),
            Text(
                "Each term $q_i \\phi(q'_i/q_i) = q'_i - q_i - q_i\\log(q'_i/q_i)$ is strictly "
                "convex in $q'_i$ with its minimum 0 at $q'_i = q_i$. A sum of nonnegative terms is "
                "nonnegative, and it is zero only if every term is: $\\mathrm{KL}(\\pi\\Vert\\pi') \\ge 0$, "
                "with equality iff $\\pi = \\pi'$.",
                "每一项 $q_i \\phi(q'_i/q_i) = q'_i - q_i - q_i\\log(q'_i/q_i)$ 关于 $q'_i$ "
                "严格凸，在 $q'_i = q_i$ 处取得最小值 0。非负项之和非负，且仅当每一项都为零时和为零："
                "$\\mathrm{KL}(\\pi\\Vert\\pi') \\ge 0$，当且仅当 $\\pi = \\pi'$ 时取等号。",
            ),
            GlobalMinimum(qi * gibbs_f.subs(x, rho_i / qi), rho_i, qi, value=0),
            eq="App. A.1",
        ),
        Step(
            Text("The optimal policy attains the upper bound (any n)", "最优策略达到上界（任意 n）"),
            Text(
                "By the last two steps the objective is at most $\\beta\\log Z$, with equality only when "
                "$\\mathrm{KL}(\\pi\\Vert\\pi^*) = 0$, i.e. $\\pi = \\pi^*$. Evaluating the objective at "
                "$\\pi^*$ indeed gives $\\beta\\log Z$.",
                "由前两步，目标函数至多为 $\\beta\\log Z$，且仅当 $\\mathrm{KL}(\\pi\\Vert\\pi^*) = 0$，"
                "即 $\\pi = \\pi^*$ 时取等号。把 $\\pi^*$ 代入目标函数，确实得到 $\\beta\\log Z$。",
            ),
            Equal(objective_of(PIS[i]), beta * sp.log(Z), via=("sums",)),
            where=OPT_N,
            eq="Eq. 4",
        ),
        Step(
            Text("Lagrangian stationarity", "拉格朗日函数的驻点条件"),
            Text(
                "Second route: add a multiplier $\\lambda$ for $\\sum_i q_i = 1$. Term $i$ of the Lagrangian "
                "is $q_i r_i - \\beta q_i\\log(q_i/p_i) + \\lambda q_i$; setting its derivative in $q_i$ to "
                "zero has exactly one solution.",
                "第二种方法：为约束 $\\sum_i q_i = 1$ 引入乘子 $\\lambda$。拉格朗日函数的第 $i$ 项为 "
                "$q_i r_i - \\beta q_i\\log(q_i/p_i) + \\lambda q_i$；令它对 $q_i$ 的导数为零，恰有一个解。",
            ),
            Solutions(
                sp.Derivative(qi * ri - beta * qi * sp.log(qi / pi_) + lam * qi, qi),
                qi,
                [pi_ * sp.exp(ri / beta) * sp.exp(lam / beta - 1)],
            ),
            eq="Eq. 4",
        ),
        Step(
            Text("The multiplier is fixed by normalisation", "乘子由归一化条件确定"),
            Text(
                "Write $C = e^{\\lambda/\\beta - 1}$, the same for every $i$. The constraint "
                "$C\\sum_i p_i e^{r_i/\\beta} = 1$ has the single "
                "solution $C = 1/Z$, so the stationary point is $\\pi^*$.",
                "记 $C = e^{\\lambda/\\beta - 1}$，它对所有 $i$ 都相同。约束 $C\\sum_i p_i e^{r_i/\\beta} = 1$ "
                "只有一个解 $C = 1/Z$，因此驻点正是 $\\pi^*$。",
            ),
            Solutions(sp.Eq(C * Z, 1), C, [1 / Z]),
            where={Z: Zn},
            eq="Eq. 4",
        ),
        Step(
            Text("Second-order condition: each term is strictly concave (any n)", "二阶条件：每一项严格凹（任意 n）"),
            Text(
                "The objective is a sum of terms $q_i r_i - \\beta q_i\\log(q_i/p_i)$, each depending on one "
                "$q_i$ only, so its Hessian is diagonal with these second derivatives on the diagonal. Each is "
                "negative:",
                "目标函数是各项 $q_i r_i - \\beta q_i\\log(q_i/p_i)$ 之和，每一项只依赖一个 $q_i$，"
                "所以黑塞矩阵是对角的，对角元就是这些二阶导数。每一个都为负：",
            ),
            Negative(
                sp.Derivative(qi * ri - beta * qi * sp.log(qi / pi_), (qi, 2)), manifest=-beta / qi, via=("simplify",)
            ),
            eq="Eq. 4",
        ),
        Step(
            Text("Second-order condition: the Hessian (any n)", "二阶条件：黑塞矩阵（任意 n）"),
            Text(
                "For any $n$ and any direction $v = (v_1, \\dots, v_n)$, the second derivative of the objective "
                "along $q + t v$ at $t = 0$ is the Hessian's quadratic form $v^\\top H v$. It is "
                "$-\\beta \\sum_i v_i^2 / q_i$: the Hessian is $-\\beta\\,\\mathrm{diag}(1/q_i)$, and by the previous "
                "step each term is $\\le 0$ and zero only if $v_i = 0$, so $v^\\top H v < 0$ for every $v \\ne 0$. "
                "The objective is strictly concave and the stationary point on the simplex is the unique maximiser.",
                "对任意 $n$ 和任意方向 $v = (v_1, \\dots, v_n)$，目标函数沿 $q + t v$ 在 $t = 0$ 处的二阶导数就是黑塞"
                "矩阵的"
                "二次型 $v^\\top H v$。它等于 $-\\beta \\sum_i v_i^2 / q_i$：黑塞矩阵为 $-\\beta\\,\\mathrm{diag}(1/q"
                "_i)$，"
                "由上一步每一项 $\\le 0$ 且仅当 $v_i = 0$ 时为零，所以对每个 $v \\ne 0$ 有 $v^\\top H v < 0$。"
                "目标函数严格凹，单纯形上的驻点就是唯一的最大值点。",
            ),
            Equal(
                sp.Subs(sp.Derivative(objective_of(Q[i] + t * V[i]), (t, 2)), t, 0),
                -beta * S(V[i] ** 2 / Q[i]),
                via=("sums", "simplify"),
            ),
            eq="Eq. 4",
        ),
    ],
    conclusion=Text(
        "Both routes give the same answer: $\\pi^*(y|x) = \\pi_{\\mathrm{ref}}(y|x)\\exp(r(x,y)/\\beta)/Z(x)$ "
        "is the unique maximiser, and $\\beta$ is the KL coefficient that `dpo_loss` takes as `beta`.",
        "两种方法得到同一个答案：$\\pi^*(y|x) = \\pi_{\\mathrm{ref}}(y|x)\\exp(r(x,y)/\\beta)/Z(x)$ 是唯一的最大值点，"
        "而 $\\beta$ 就是 `dpo_loss` 的参数 `beta` 所表示的 KL 系数。",
    ),
)


def compare() -> list:
    """π* (for n = 3) fed to dpo_loss as the policy: the implicit reward gap is r_1 - r_2, Z cancelled."""
    from dpo_ref.losses import dpo_loss

    from .common import sigma
    from .numeric import Row, exact, tensors

    values = {beta: 0.5, p[0]: 0.5, p[1]: 0.3, p[2]: 0.2, r[0]: 1.0, r[1]: -0.5, r[2]: 2.0}
    log_opt = [exact(sp.log(e), values) for e in pistar[:2]]
    out = dpo_loss(*tensors(*log_opt, float(sp.log(0.5)), float(sp.log(0.3))), beta=0.5)
    return [
        Row(
            "chosen − rejected reward at π* = r₁ − r₂",
            exact(r[0] - r[1], values),
            (out.chosen_rewards - out.rejected_rewards).item(),
        ),
        Row("loss at π* = −log σ(r₁ − r₂)", exact(-sp.log(sigma(r[0] - r[1])), values), out.losses.item()),
    ]
