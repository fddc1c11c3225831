"""ΨPO: DPO/RLHF is Ψ = logit (Azar et al. 2023, Prop. 1); IPO's population optimum (Thm. 2, with Prop. 3) and
the D1 bandit's gaps 1/(3τ) (Sec. 5.4)."""

from __future__ import annotations

import sympy as sp

from .common import Z, beta, h, sigma, tau
from .core import NAMES, Equal, GlobalMinimum, Proof, Step, Text, bounded

n = sp.Symbol("n", integer=True, positive=True)
i, j = sp.symbols("i j", integer=True, positive=True)
P, Q, MU = (sp.IndexedBase(name, positive=True) for name in ("p", "q", "mu"))
R = sp.IndexedBase("r", real=True)
r_y, r_yp, g_y, g_yp = sp.symbols("r_y r_y' g_y g_y'", real=True)
p_y, p_yp = sp.symbols("p_y p_y'", positive=True)
# p*(y > y'), shown as an abbreviation. Declared bounded here: it is the symbol deterministic-preference
# bounds to (0, 1), and the display must not depend on whether that module was imported first.
pstar = bounded(sp.Symbol("p^*", positive=True), sp.Interval.open(0, 1))
rbar = sp.Symbol("rbar", real=True)  # E_{y' ~ mu}[r(y')]
pi_y, pi_yp = sp.symbols("pi^*_y pi^*_y'", positive=True)
NAMES.update({"rbar": (r"\bar r", "r̄")})
# the bounded score p*(y > mu) of IPO is shown as the paper writes it (g_j below is a log-ratio, not this)
NAMES.update(
    {
        "g_y": (r"p^*(y \succ \mu)", "p*(y ≻ μ)"),
        "g_y'": (r"p^*(y' \succ \mu)", "p*(y' ≻ μ)"),
        **{f"g_{r}": (rf"p^*({r} \succ \mu)", f"p*({r} ≻ μ)") for r in "abc"},
    }
)
mu_a, mu_b, mu_c = sp.symbols("mu_a mu_b mu_c", positive=True)
g_a, g_b, g_c = sp.symbols("g_a g_b g_c", real=True)
# the D1 bandit: a > b > c always; p*(y > y) = 1/2. p*(y > mu) = sum_y' mu(y') p*(y > y') (g_a: its symbol for a)
HALF = sp.Rational(1, 2)
G_D1 = {g_a: mu_a * HALF + mu_b + mu_c, g_b: mu_b * HALF + mu_c, g_c: mu_c * HALF}


# Theorem 2: the population IPO loss over pairs (y_j, y_k) ~ mu x mu with regression targets c_jk.
jj, kk, mm = sp.symbols("j k m", integer=True, positive=True)
G = sp.IndexedBase("g", real=True)  # g_j = log(pi(y_j) / pi_ref(y_j)), the policy's log-ratios
DELTA = sp.IndexedBase("delta", real=True)  # g_j - a_j, the distance from the claimed optimum
NU = sp.IndexedBase("nu", nonnegative=True)  # comparison weights that may vanish (the support fails)
I_lab = sp.Symbol("I", real=True)  # the preference label of a sampled pair (1: y preferred, 0: y' preferred)


class c(sp.Function):  # noqa: N801 (named after the math)
    """The regression target c_jk = (p*(y_j > y_k) - 1/2)/tau: antisymmetric, c_kj = -c_jk and c_jj = 0, because
    p*(y_k > y_j) = 1 - p*(y_j > y_k). Evaluated as such once the indices are numbers."""

    nargs = 2

    @classmethod
    def eval(cls, a, b):
        if a.is_Integer and b.is_Integer:
            if a == b:
                return sp.Integer(0)
            if a > b:
                return -cls(b, a)
        return None

    def _latex(self, printer):
        return f"c_{{{printer._print(self.args[0])}{printer._print(self.args[1])}}}"


a_fn = sp.Function("a")  # a_j, the claimed optimal log-ratio of response j


def a_def(x: sp.Expr) -> sp.Expr:
    """a_j = sum_m mu_m c_jm / sum_m mu_m: the mean target of response j against mu."""
    return sp.Sum(MU[mm] * c(x, mm), (mm, 1, n)) / sp.Sum(MU[mm], (mm, 1, n))


def SS(term: sp.Expr) -> sp.Sum:
    return sp.Sum(sp.Sum(term, (kk, 1, n)), (jj, 1, n))


W = MU[jj] * MU[kk]
CROSS = SS(W * (DELTA[jj] - DELTA[kk]) * (a_fn(jj) - a_fn(kk) - c(jj, kk)))
A_WHERE = {a_fn(jj): a_def(jj), a_fn(kk): a_def(kk)}
SAMPLED = sp.Rational(1, 2) * ((h - I_lab / tau) ** 2 + (-h - (1 - I_lab) / tau) ** 2)  # ipo.py's loss, label I
TARGET = (pstar - sp.Rational(1, 2)) / tau
L3_NU = sp.Add(
    *[NU[x] * NU[y] * (G[x] - G[y] - c(x, y)) ** 2 for x in range(1, 4) for y in range(1, 4) if x != y],  # j = k: 0
    evaluate=False,
)


def S(term: sp.Expr, k: sp.Symbol = i) -> sp.Sum:
    return sp.Sum(term, (k, 1, n))


KL = S(Q[i] * sp.log(Q[i] / P[i]))

PROOF = Proof(
    name="ipo-psi",
    title=Text("ΨPO: where DPO and IPO come from", "ΨPO：DPO 与 IPO 从何而来"),
    intro=Text(
        "Azar et al. write both methods as one objective over preferences, ΨPO: maximise "
        "$\\mathbb{E}_{y \\sim \\pi,\\, y' \\sim \\mu}[\\Psi(p^*(y \\succ y'))] - \\tau\\, "
        "\\mathrm{KL}(\\pi \\,\\|\\, \\pi_{\\mathrm{ref}})$, with $\\mu$ the distribution the comparisons are "
        "drawn from. With $\\Psi = \\operatorname{logit}$ and Bradley–Terry preferences it is the RLHF "
        "objective that DPO optimises (Prop. 1); with $\\Psi$ the identity it is IPO, whose population "
        "optimum is unique (Thm. 2) and explains the gaps $1/(3\\tau)$ found in proof 13. Sums over the "
        "$n$ responses are checked for symbolic $n$.",
        "Azar 等人把两种方法写成同一个关于偏好的目标 ΨPO：最大化 "
        "$\\mathbb{E}_{y \\sim \\pi,\\, y' \\sim \\mu}[\\Psi(p^*(y \\succ y'))] - \\tau\\, "
        "\\mathrm{KL}(\\pi \\,\\|\\, \\pi_{\\mathrm{ref}})$，其中 $\\mu$ 是比较样本的来源分布。"
        "取 $\\Psi = \\operatorname{logit}$ 并采用布拉德利-特里偏好时，它就是 DPO 所优化的 RLHF 目标（命题 1）；"
        "取 $\\Psi$ 为恒等函数时就是 IPO，其总体目标的最优策略唯一（定理 2），并解释了证明 13 中的差值 $1/(3\\tau)$。"
        "对 $n$ 个回答的求和在符号 $n$ 下检验。",
    ),
    justifies=("dpo_ref.losses.ipo_loss", "dpo_ref.losses.ipo_losses_from_margin"),
    source="ipo",
    steps=[
        Step(
            Text("Ψ = logit undoes Bradley–Terry", "Ψ = logit 还原布拉德利-特里模型中的奖励差"),
            Text(
                "Under Bradley–Terry $p^*(y \\succ y') = \\sigma(r_y - r_{y'})$, and the logit of it is the "
                "reward difference.",
                "在布拉德利-特里模型下 $p^*(y \\succ y') = \\sigma(r_y - r_{y'})$，它的 logit 就是奖励之差。",
            ),
            Equal(sp.log(pstar / (1 - pstar)), r_y - r_yp, via=("exp", "simplify")),
            where={pstar: sigma(r_y - r_yp)},
            eq="Prop. 1",
        ),
        Step(
            Text("Averaging over the comparison partner (any n)", "对比较对象取平均（任意 n）"),
            Text(
                "Averaged over $y' \\sim \\mu$ (weights $\\mu_j$ summing to one), the logit preference of $y$ is "
                "its reward minus the constant $\\bar r = \\mathbb{E}_\\mu[r]$.",
                "对 $y' \\sim \\mu$ 取平均（权重 $\\mu_j$ 之和为一），$y$ 的 logit 偏好等于它的奖励减去常数 "
                "$\\bar r = \\mathbb{E}_\\mu[r]$。",
            ),
            Equal(S(MU[j] * (r_y - R[j]), j), r_y - rbar, via=("sums",), given={S(MU[j], j): 1}),
            where={rbar: S(MU[j] * R[j], j)},
            eq="Prop. 1",
        ),
        Step(
            Text("Prop. 1: Ψ = logit is the RLHF objective (any n)", "命题 1：Ψ = logit 即 RLHF 目标（任意 n）"),
            Text(
                "So the ΨPO objective of a policy $q$ is the KL-regularised reward objective of proof 1 with "
                "$\\beta = \\tau$, minus $\\bar r$, which does not depend on the policy: the two have the same "
                "maximiser, the one DPO fits.",
                "因此策略 $q$ 的 ΨPO 目标等于证明 1 中 $\\beta = \\tau$ 的 KL 正则化奖励目标减去 $\\bar r$，"
                "而 $\\bar r$ 与策略无关：两者的最大值点相同，正是 DPO 所拟合的那个。",
            ),
            Equal(
                S(Q[i] * (R[i] - rbar)) - tau * KL, S(Q[i] * R[i]) - tau * KL - rbar, via=("sums",), given={S(Q[i]): 1}
            ),
            eq="Prop. 1",
        ),
        Step(
            Text("Prop. 1, the DPO half: DPO's population optimum is π*", "命题 1 的 DPO 部分：DPO 的总体最优点是 π*"),
            Text(
                "DPO fits the same policy. Over the labels of a pair $(y, y')$ drawn with Bradley–Terry "
                "probability $p^* = \\sigma(r_y - r_{y'})$, DPO's expected loss is a binary cross-entropy in the "
                "margin $h$; it is strictly convex with its unique minimiser at $\\beta h = r_y - r_{y'}$, the "
                "margin of $\\pi^* \\propto \\pi_{\\mathrm{ref}} e^{r/\\beta}$ (proof 2). So on every compared pair "
                "the DPO optimum is the RLHF optimum of proof 1, the maximiser of ΨPO with $\\Psi = "
                "\\operatorname{logit}$.",
                "DPO 拟合的是同一个策略。对按布拉德利-特里概率 $p^* = \\sigma(r_y - r_{y'})$ 抽取标签的一对 $(y, y')$，"
                "DPO 的期望损失是关于间隔 $h$ 的二元交叉熵；它严格凸，唯一最小值点在 $\\beta h = r_y - r_{y'}$，"
                "正是 $\\pi^* \\propto \\pi_{\\mathrm{ref}} e^{r/\\beta}$ 的间隔（证明 2）。因此在每个被比较的样本对"
                "上，"
                "DPO 的最优点就是证明 1 的 RLHF 最优点，即 $\\Psi = \\operatorname{logit}$ 时 ΨPO 的最大值点。",
            ),
            GlobalMinimum(
                -pstar * sp.log(sigma(beta * h)) - (1 - pstar) * sp.log(sigma(-beta * h)),
                h,
                (r_y - r_yp) / beta,
                curvature=beta**2 * sigma(beta * h) * sigma(-beta * h),
            ),
            where={pstar: sigma(r_y - r_yp)},
            eq="Prop. 1",
        ),
        Step(
            Text("Ψ the identity: the ΨPO optimum and its gaps", "Ψ 取恒等函数：ΨPO 的最优点及其差值"),
            Text(
                "With $\\Psi(u) = u$ the objective is $\\mathbb{E}_{y \\sim \\pi}[p^*(y \\succ \\mu)] - "
                "\\tau\\,\\mathrm{KL}$ "
                "with the bounded score $p^*(y \\succ \\mu) = \\mathbb{E}_{y' \\sim \\mu}[p^*(y \\succ y')]$, so by "
                "proof 1 "
                "its unique maximiser is $\\pi^*(y) \\propto \\pi_{\\mathrm{ref}}(y) e^{p^*(y \\succ \\mu)/\\tau}$, "
                "and its "
                "log-ratio gaps are $(p^*(y \\succ \\mu) - p^*(y' \\succ \\mu))/\\tau$: since the score lies in "
                "$[0, 1]$, "
                "at most $1/\\tau$ in size, even for deterministic "
                "preferences.",
                "取 $\\Psi(u) = u$ 时目标为 $\\mathbb{E}_{y \\sim \\pi}[p^*(y \\succ \\mu)] - "
                "\\tau\\,\\mathrm{KL}$，其中有界得分 "
                "$p^*(y \\succ \\mu) = \\mathbb{E}_{y' \\sim \\mu}[p^*(y \\succ y')]$，由证明 1，"
                "其唯一最大值点为 $\\pi^*(y) \\propto \\pi_{\\mathrm{ref}}(y) e^{p^*(y \\succ "
                "\\mu)/\\tau}$，对数比值之差为 "
                "$(p^*(y \\succ \\mu) - p^*(y' \\succ \\mu))/\\tau$：由于该得分在 $[0, 1]$ 内，其绝对值至多为 "
                "$1/\\tau$，即使偏好是确定性的也是如此"
                "。",
            ),
            Equal(sp.log(pi_y / p_y) - sp.log(pi_yp / p_yp), (g_y - g_yp) / tau, via=("expand_log", "expand")),
            where={pi_y: p_y * sp.exp(g_y / tau) / Z, pi_yp: p_yp * sp.exp(g_yp / tau) / Z},
            eq="§5",
        ),
        Step(
            Text("Prop. 3, sampled → population: a pair's expected loss", "命题 3，从样本到总体：一对样本的期望损失"),
            Text(
                "IPO's sampled loss of a pair with label $I$ is the symmetrised regression of proof 13. Its "
                "expectation over $I \\sim \\mathrm{Bernoulli}(p^*)$ is a square with target "
                "$(p^* - 1/2)/\\tau$ plus a constant the policy cannot change; averaged over pairs drawn from "
                "$\\mu \\otimes \\mu$, the sampled loss converges (law of large numbers) to the population loss "
                "$L(g) = \\sum_{j,k} \\mu_j \\mu_k (g_j - g_k - c_{jk})^2$ + const, with "
                "$g_j = \\log(\\pi(y_j)/\\pi_{\\mathrm{ref}}(y_j))$ and $c_{jk} = (p^*(y_j \\succ y_k) - 1/2)/\\tau$, "
                "antisymmetric since $p^*(y_k \\succ y_j) = 1 - p^*(y_j \\succ y_k)$.",
                "IPO 对标签为 $I$ 的一对样本的损失就是证明 13 中对称化的回归。对 $I \\sim \\mathrm{Bernoulli}(p^*)$ "
                "取期望，得到以 $(p^* - 1/2)/\\tau$ 为目标的平方加上一个策略无法改变的常数；对从 $\\mu \\otimes \\mu$ "
                "抽取的样本对取平均，样本损失（由大数定律）收敛到总体损失 "
                "$L(g) = \\sum_{j,k} \\mu_j \\mu_k (g_j - g_k - c_{jk})^2$ 加常数，其中 "
                "$g_j = \\log(\\pi(y_j)/\\pi_{\\mathrm{ref}}(y_j))$，$c_{jk} = (p^*(y_j \\succ y_k) - 1/2)/\\tau$，"
                "由 $p^*(y_k \\succ y_j) = 1 - p^*(y_j \\succ y_k)$ 知它反对称。",
            ),
            Equal(
                pstar * SAMPLED.subs(I_lab, 1) + (1 - pstar) * SAMPLED.subs(I_lab, 0),
                (h - TARGET) ** 2 + pstar * (1 - pstar) / tau**2 + 1 / (4 * tau**2),
                via=("expand",),
            ),
            eq="Prop. 3",
        ),
        Step(
            Text(
                "Thm. 2: the population loss splits at a = mean target (any n)", "定理 2：总体损失在 a 处分解（任意 n）"
            ),
            Text(
                "Write each log-ratio as $g_j = a_j + \\delta_j$, with $a_j$ the $\\mu$-average of the targets "
                "$c_{jm}$ (under the formula). Expanding the square splits $L$ into the spread of $\\delta$, a cross "
                "term, and $L(a)$, for any $n$.",
                "把每个对数比值写成 $g_j = a_j + \\delta_j$，其中 $a_j$ 是目标 $c_{jm}$ 的 $\\mu$ 平均（见公式下方）。"
                "展开平方，$L$ 分成 $\\delta$ 的离散程度、一个交叉项与 $L(a)$，对任意 $n$ 成立。",
            ),
            Equal(
                SS(W * ((DELTA[jj] - DELTA[kk]) + (a_fn(jj) - a_fn(kk) - c(jj, kk))) ** 2),
                SS(W * (DELTA[jj] - DELTA[kk]) ** 2) + 2 * CROSS + SS(W * (a_fn(jj) - a_fn(kk) - c(jj, kk)) ** 2),
                via=("sums",),
            ),
            eq="Thm. 2",
        ),
        Step(
            Text("Thm. 2: the cross term vanishes (n = 2..4)", "定理 2：交叉项为零（n = 2..4）"),
            Text(
                "Because $c$ is antisymmetric and $a_j$ is the mean target, the cross term is 0 for every "
                "$\\delta$ and every weighting $\\mu$; written out and checked for $n = 2, 3, 4$ (for general $n$ "
                "it is the same antisymmetry argument: swapping $j$ and $k$ changes its sign). So "
                "$L(a + \\delta) = L(a) + \\sum_{j,k}\\mu_j\\mu_k(\\delta_j - \\delta_k)^2 \\ge L(a)$, with equality "
                "only if $\\delta_j = \\delta_k$ for every pair with $\\mu_j \\mu_k > 0$.",
                "由于 $c$ 反对称而 $a_j$ 是平均目标，对任意 $\\delta$ 与任意权重 $\\mu$，交叉项都为 0；对 $n = 2, 3, "
                "4$ "
                "完整展开检验（对一般 $n$ 是同样的反对称论证：交换 $j$ 与 $k$ 使其变号）。因此 "
                "$L(a + \\delta) = L(a) + \\sum_{j,k}\\mu_j\\mu_k(\\delta_j - \\delta_k)^2 \\ge L(a)$，"
                "仅当对每个 $\\mu_j \\mu_k > 0$ 的对都有 $\\delta_j = \\delta_k$ 时取等号。",
            ),
            Equal(CROSS, 0, via=("doit", "cancel"), cases=[{n: v} for v in (2, 3, 4)]),
            where=A_WHERE,
            eq="Thm. 2",
        ),
        Step(
            Text("Thm. 2 needs supp μ = supp π_ref", "定理 2 需要 supp μ = supp π_ref"),
            Text(
                "With every $\\mu_j > 0$ (the support hypothesis: every response the reference can produce is "
                "compared), equality forces $\\delta$ to be constant, so $g = a + $ const and normalisation fixes "
                "the constant: the minimiser $\\pi^* \\propto \\pi_{\\mathrm{ref}}\\, e^{a}$ is unique, and "
                "$a_j = (p^*(y_j \\succ \\mu) - 1/2)/\\tau$ is the ΨPO optimum of the step before. Without the "
                "hypothesis uniqueness fails: if a response is never compared ($\\nu_3 = 0$ below, $n = 3$), the "
                "loss does not depend on its log-ratio at all, so any $\\pi(y_3)$ is optimal.",
                "当每个 $\\mu_j > 0$（支撑集假设：参考策略能产生的每个回答都会被比较）时，取等迫使 $\\delta$ 为常数，"
                "于是 $g = a + $ 常数，归一化确定常数：最小值点 $\\pi^* \\propto \\pi_{\\mathrm{ref}}\\, e^{a}$ 唯一，"
                "且 $a_j = (p^*(y_j \\succ \\mu) - 1/2)/\\tau$ 正是上一步的 ΨPO 最优点。没有这个假设唯一性就不成立："
                "若某个回答从未被比较（下面 $\\nu_3 = 0$，$n = 3$），损失完全不依赖它的对数比值，任何 $\\pi(y_3)$ 都"
                "是最优的。",
            ),
            Equal(sp.Derivative(L3_NU, G[3]), 0, via=("expand",), given={NU[3]: 0}),
            eq="Thm. 2",
        ),
        Step(
            Text("Uniform comparisons: the gaps are 1/(3τ)", "均匀比较：差值为 1/(3τ)"),
            Text(
                "The D1 bandit: three responses with $a \\succ b \\succ c$ always, so $p^*(y \\succ y') = 1$ when "
                "$y$ ranks above $y'$, $0$ when below, and $1/2$ for $y' = y$; then $p^*(y \\succ \\mu) = "
                "\\sum_{y'} \\mu(y') "
                "p^*(y \\succ y')$ is as "
                "written under the formula. When every pair is compared equally often ($\\mu$ uniform), the "
                "optimal log-ratio gaps are $1/(3\\tau)$: exactly the minimiser of the empirical IPO loss on "
                "the pairs $(a, b), (b, c), (a, c)$ in proof 13. The empirical loss on the three pairs and the "
                "population objective have the same optimum.",
                "D1 老虎机：三个回答总有 $a \\succ b \\succ c$，即 $y$ 排在 $y'$ 之上时 $p^*(y \\succ y') = 1$，"
                "在其下时为 $0$，$y' = y$ 时为 $1/2$；于是 $p^*(y \\succ \\mu) = \\sum_{y'} \\mu(y') p^*(y \\succ "
                "y')$ 如公式下方所列"
                "。"
                "当每一对被比较的次数相同（$\\mu$ 均匀）时，最优的对数比值差为 $1/(3\\tau)$：恰是证明 13 中在 "
                "$(a, b), (b, c), (a, c)$ 上经验 IPO 损失的最小值点。这三对上的经验损失与总体目标有相同的最优点。",
            ),
            Equal(
                sp.Matrix([(g_a - g_b) / tau, (g_b - g_c) / tau]),
                sp.Matrix([1 / (3 * tau), 1 / (3 * tau)]),
                via=("expand",),
                given={mu_a: sp.Rational(1, 3), mu_b: sp.Rational(1, 3), mu_c: sp.Rational(1, 3)},
            ),
            where=G_D1,
            eq="§5.4",
        ),
    ],
    conclusion=Text(
        "DPO and IPO optimise the same kind of objective with different $\\Psi$. The unbounded logit lets "
        "DPO's optimum escape for deterministic preferences (proof 12); the identity keeps IPO's at gaps "
        "$(p^*(y \\succ \\mu) - p^*(y' \\succ \\mu))/\\tau$, which `ipo_loss` reaches on the D1 bandit.",
        "DPO 与 IPO 优化的是同一类目标，只是 $\\Psi$ 不同。无界的 logit 使 DPO 的最优点在确定性偏好下逃逸（证明 12）；"
        "恒等函数则把 IPO 的最优点保持在差值 $(p^*(y \\succ \\mu) - p^*(y' \\succ \\mu))/\\tau$，`ipo_loss` 在 D1 "
        "老虎机上正好达到它。",
    ),
)


def compare() -> list:
    """ipo_loss summed over the D1 pairs has zero gradient (autograd) at the population optimum's gaps."""
    import math

    import torch
    import torch.nn.functional as F

    from dpo_ref.losses import ipo_loss

    from .numeric import Row, exact

    tau_ = 0.2
    gap = exact(1 / (3 * tau), {tau: tau_})
    theta = torch.tensor([2 * gap, gap, 0.0], dtype=torch.float64, requires_grad=True)  # (3,) logits of a, b, c
    log_pi = F.log_softmax(theta, dim=0)
    log_ref = torch.full((3,), math.log(1 / 3), dtype=torch.float64)  # uniform reference
    w, l = torch.tensor([0, 1, 0]), torch.tensor([1, 2, 2])  # the pairs (a, b), (b, c), (a, c)
    ipo_loss(log_pi[w], log_pi[l], log_ref[w], log_ref[l], tau=tau_).losses.sum().backward()
    return [Row(f"∂(Σ IPO loss)/∂θ_{k} at gaps 1/(3τ)", 0.0, theta.grad[n_].item()) for n_, k in enumerate("abc")]
