"""The DPO loss is the negative log-likelihood of the Bradley-Terry model (Rafailov et al. 2023, Eq. 7)."""

from __future__ import annotations

import sympy as sp

from .common import LOGPS, Z, beta, bradley_terry, h, margin, sigma, z
from .core import Equal, Proof, Step, Text

a_w, a_l, b_w, b_l = LOGPS  # log pi(y_w), log pi(y_l), log pi_ref(y_w), log pi_ref(y_l)

# The reparameterised rewards in terms of log-probabilities, Z included: r = beta (log pi - log pi_ref) + beta log Z.
reward_w = beta * (a_w - b_w) + beta * sp.log(Z)
reward_l = beta * (a_l - b_l) + beta * sp.log(Z)
# Negative log-likelihood of one comparison under Bradley-Terry, straight from the model: the definition
# the linked tests compare dpo_ref.dpo_loss with (Z is free; the tests draw it at random).
NLL = -sp.log(bradley_terry(reward_w, reward_l))
# The claimed closed form in the margin: softplus(-beta h) = -log sigma(beta h).
H = margin(a_w, a_l, b_w, b_l)
LOSS = sp.log(1 + sp.exp(-beta * H))

r_w, r_l = sp.symbols("r(y_w) r(y_l)", real=True)  # the rewards, abbreviations shown in the steps
pw, pl, qw, ql = sp.symbols("pi_w pi_l pi^ref_w pi^ref_l", positive=True)
k, t = sp.symbols("k t", integer=True, positive=True)
N, T = sp.symbols("N T", integer=True, positive=True)  # number of comparisons, number of tokens
P = sp.IndexedBase("P", positive=True)  # P_k: the model's probability of the k-th observed comparison
TOK = sp.IndexedBase("pi", positive=True)  # pi_t = pi(y_t | x, y_<t): the probability of token t

PROOF = Proof(
    name="dpo-loss",
    title=Text("The DPO loss", "DPO 损失函数"),
    intro=Text(
        "With the reward expressed through the policy, fitting the Bradley–Terry model to human "
        "comparisons by maximum likelihood is a loss on the policy alone: no reward model, no sampling.",
        "奖励用策略表示之后，用最大似然把布拉德利-特里模型拟合到人类的比较数据上，就成了只关于策略的损失函数："
        "不需要奖励模型，也不需要采样。",
    ),
    justifies=(
        "dpo_ref.losses.dpo_losses_from_margin",
        "dpo_ref.losses.preference_margin",
        "dpo_ref.losses.dpo_loss",
        "dpo_ref.logps.sequence_logps",
    ),
    source="dpo",
    steps=[
        Step(
            Text(
                "Independent comparisons: the log-likelihood is a sum (any N)", "独立的比较：对数似然是求和（任意 N）"
            ),
            Text(
                "Comparisons are independent, so the likelihood of $N$ comparisons is a product of the "
                "probabilities $P_k$ the model gives them, and its negative log is the sum of per-pair losses. "
                "`dpo_loss` returns the per-pair terms; the trainer averages them.",
                "各次比较相互独立，因此 $N$ 次比较的似然是模型给出的概率 $P_k$ 之积，其负对数是各对损失之和。"
                "`dpo_loss` 返回每一对的损失项，训练器对它们取平均。",
            ),
            Equal(
                -sp.log(sp.Product(P[k], (k, 1, N))), sp.Sum(-sp.log(P[k]), (k, 1, N)), via=("expand_log", "simplify")
            ),
            eq="Eq. 2",
        ),
        Step(
            Text("Negative log-likelihood of one comparison", "单次比较的负对数似然"),
            Text(
                "Insert the reparameterised rewards (with $Z$) into Bradley–Terry and take $-\\log$: the "
                "result is the softplus of $-\\beta h$, with $h$ written in log-probabilities "
                "$a = \\log\\pi$, $b = \\log\\pi_{\\mathrm{ref}}$.",
                "把（含 $Z$ 的）重参数化奖励代入布拉德利-特里模型并取 $-\\log$，结果是 $-\\beta h$ 的 softplus，"
                "其中 $h$ 用对数概率 $a = \\log\\pi$、$b = \\log\\pi_{\\mathrm{ref}}$ 表示。",
            ),
            Equal(
                -sp.log(bradley_terry(r_w, r_l)),
                sp.log(1 + sp.exp(-beta * h)),
                via=("expand_log", "expand", "simplify"),
            ),
            where={r_w: reward_w, r_l: reward_l, h: H},
            eq="Eq. 2",
        ),
        Step(
            Text("A stable form of the softplus", "softplus 的数值稳定形式"),
            Text(
                "The loss $\\log(1 + e^{-z}) = -\\log\\sigma(z)$ overflows if evaluated literally for very "
                "negative $z$; for $z < 0$ the equivalent form $-z + \\log(1 + e^{z})$ has an exponential that "
                "cannot overflow. `dpo_losses_from_margin` calls torch's `logsigmoid` instead of the literal "
                "formula; that it stays accurate is not proved here but tested: for $|\\beta h|$ up to 240 the "
                "linked tests compare it with the loss computed to 160 significant digits and require agreement "
                "to within $10^{-11} + 10^{-9}\\,\\mathcal{L}$.",
                "损失 $\\log(1 + e^{-z}) = -\\log\\sigma(z)$ 若按字面计算，在 $z$ 很负时会溢出；"
                "当 $z < 0$ 时，等价形式 $-z + \\log(1 + e^{z})$ 中的指数不会溢出。"
                "`dpo_losses_from_margin` 调用 torch 的 `logsigmoid` 而不是字面公式；它的数值精度这里不作证明，"
                "而是由测试检验：在 $|\\beta h|$ 不超过 240 的范围内，关联测试把它与按 160 位有效数字计算的损失相比较，"
                "要求两者之差不超过 $10^{-11} + 10^{-9}\\,\\mathcal{L}$。",
            ),
            Equal(sp.log(1 + sp.exp(-z)), -z + sp.log(1 + sp.exp(z)), via=("simplify",)),
            eq="Eq. 7",
        ),
        Step(
            Text("The margin is a difference of log-ratios", "间隔是两个对数比值之差"),
            Text(
                "$h$ compares how far the policy has moved away from the reference on $y_w$ and on $y_l$: "
                "the log of a ratio of ratios is the difference of the two log-ratios, the grouping "
                "`preference_margin` computes.",
                "$h$ 比较的是策略在 $y_w$ 和 $y_l$ 上分别偏离参考策略多少：比值之比的对数等于两个对数比值之差，"
                "`preference_margin` 正是按这种分组计算的。",
            ),
            Equal(
                sp.log((pw / qw) / (pl / ql)),
                margin(sp.log(pw), sp.log(pl), sp.log(qw), sp.log(ql)),
                via=("expand_log",),
            ),
            eq="Eq. 7",
        ),
        Step(
            Text("Sequence log-probability is a sum over tokens (any T)", "序列对数概率是各词元对数概率之和（任意 T）"),
            Text(
                "An autoregressive policy factorises $\\pi(y|x) = \\prod_t \\pi(y_t|x, y_{<t})$; write "
                "$\\pi_t$ for the probability of token $t$. So $\\log\\pi(y|x)$ is the sum of "
                "the $T$ token log-probabilities: what `sequence_logps` computes from the network's output scores.",
                "自回归策略可分解为 $\\pi(y|x) = \\prod_t \\pi(y_t|x, y_{<t})$，记第 $t$ 个词元的概率为 "
                "$\\pi_t$。因此 $\\log\\pi(y|x)$ 是 $T$ 个词元对数概率之和：这就是 "
                "`sequence_logps` 从网络输出的分数计算的量。",
            ),
            Equal(
                sp.log(sp.Product(TOK[t], (t, 1, T))), sp.Sum(sp.log(TOK[t]), (t, 1, T)), via=("expand_log", "simplify")
            ),
            eq="Eq. 7",
        ),
        Step(
            Text("The DPO loss", "DPO 损失"),
            Text(
                "Putting it together: the per-pair loss is $-\\log\\sigma(\\beta h)$, the negative log of the "
                "Bradley–Terry probability of the observed order.",
                "综合以上各步：每一对的损失是 $-\\log\\sigma(\\beta h)$，"
                "即布拉德利-特里模型赋予观测到的顺序的概率的负对数。",
            ),
            Equal(-sp.log(sigma(beta * h)), -sp.log(bradley_terry(r_w, r_l)), via=("expand_log", "expand", "simplify")),
            where={r_w: reward_w, r_l: reward_l, h: H},
            eq="Eq. 7",
        ),
    ],
    conclusion=Text(
        "Per pair, $\\mathcal{L} = -\\log\\sigma(\\beta h)$: `dpo_losses_from_margin(margin, beta)` of "
        "`preference_margin(...)`, which is what `dpo_loss` returns, one value per pair.",
        "对每一对样本，$\\mathcal{L} = -\\log\\sigma(\\beta h)$：即 `dpo_losses_from_margin(margin, beta)` "
        "作用于 `preference_margin(...)`，也就是 `dpo_loss` 逐对返回的值。",
    ),
)


def compare() -> list:
    """dpo_loss against the Bradley-Terry NLL of the reparameterised rewards, written from the model."""
    from dpo_ref.losses import dpo_loss

    from .numeric import Row, exact, tensors

    rows = []
    for logps, beta_ in (((-12.0, -15.5, -13.0, -14.0), 0.1), ((-3.25, -2.0, -3.0, -4.0), 1.0)):
        values = {**dict(zip(LOGPS, logps)), beta: beta_, Z: 7.0}
        out = dpo_loss(*tensors(*logps), beta=beta_)
        rows.append(Row(f"loss at log-probs {logps}, β = {beta_:g}", exact(NLL, values), out.losses.item()))
    return rows
