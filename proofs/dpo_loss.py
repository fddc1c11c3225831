"""4. The DPO loss is the negative log-likelihood of the Bradley-Terry model (Rafailov et al. 2023, Eq. 7)."""

from __future__ import annotations

import sympy as sp

from proofs.common import LOGPS, Z, beta, bradley_terry, margin, sigma, z
from proofs.core import Equal, Proof, Step, Text

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

pw, pl, qw, ql = sp.symbols("pi_w pi_l pi^ref_w pi^ref_l", positive=True)
tok = sp.symbols("p_1:4", positive=True)  # token probabilities pi(y_t | x, y_<t)
n_pairs = sp.symbols("P_1:4", positive=True)  # preference probabilities of three independent comparisons

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
    steps=[
        Step(
            Text("Independent comparisons: the log-likelihood is a sum", "独立的比较：对数似然是求和"),
            Text(
                "Comparisons are independent, so the likelihood of a dataset is a product and its negative "
                "log is the sum of per-pair losses (shown for three pairs). `dpo_loss` returns the "
                "per-pair terms; the trainer averages them.",
                "各次比较相互独立，因此数据集的似然是乘积，其负对数是各对损失之和（这里以三对为例）。"
                "`dpo_loss` 返回每一对的损失项，训练器对它们取平均。",
            ),
            r"-\log \prod_{k=1}^{3} P_k = \sum_{k=1}^{3} -\log P_k",
            Equal(-sp.log(n_pairs[0] * n_pairs[1] * n_pairs[2]), sum(-sp.log(P) for P in n_pairs), via=("expand_log",)),
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
            r"-\log\frac{e^{\beta(a_w - b_w) + \beta\log Z}}{e^{\beta(a_w - b_w) + \beta\log Z} + e^{\beta(a_l - b_l)"
            r" + \beta\log Z}} = \log\!\left(1 + e^{-\beta[(a_w - b_w) - (a_l - b_l)]}\right)",
            Equal(NLL, LOSS, via=("expand_log", "expand", "simplify")),
        ),
        Step(
            Text("A stable form of the softplus", "softplus 的数值稳定形式"),
            Text(
                "The loss $\\log(1 + e^{-z}) = -\\log\\sigma(z)$ overflows if evaluated literally for very "
                "negative $z$. `dpo_losses_from_margin` calls `logsigmoid`, which for $z < 0$ uses the "
                "equivalent form $-z + \\log(1 + e^{z})$, where the exponential cannot overflow.",
                "损失 $\\log(1 + e^{-z}) = -\\log\\sigma(z)$ 若按字面计算，在 $z$ 很负时会溢出。"
                "`dpo_losses_from_margin` 调用 `logsigmoid`，它在 $z < 0$ 时使用等价形式 "
                "$-z + \\log(1 + e^{z})$，其中的指数不会溢出。",
            ),
            r"\log(1 + e^{-z}) = -z + \log(1 + e^{z})",
            Equal(sp.log(1 + sp.exp(-z)), -z + sp.log(1 + sp.exp(z)), via=("simplify",)),
        ),
        Step(
            Text("The margin is a log-ratio of log-ratios", "间隔是对数比值之差"),
            Text(
                "$h$ compares how much the policy has moved away from the reference on $y_w$ and on $y_l$. "
                "`preference_margin` computes it as a difference of two log-ratios, the grouping that loses "
                "the least precision.",
                "$h$ 比较的是策略在 $y_w$ 和 $y_l$ 上分别偏离参考策略多少。`preference_margin` "
                "把它算成两个对数比值之差，这种分组方式损失的精度最少。",
            ),
            r"\log\frac{\pi_w/\pi^{\mathrm{ref}}_w}{\pi_l/\pi^{\mathrm{ref}}_l}"
            r" = (\log\pi_w - \log\pi^{\mathrm{ref}}_w) - (\log\pi_l - \log\pi^{\mathrm{ref}}_l)",
            Equal(
                sp.log((pw / qw) / (pl / ql)),
                margin(sp.log(pw), sp.log(pl), sp.log(qw), sp.log(ql)),
                via=("expand_log",),
            ),
        ),
        Step(
            Text("Sequence log-probability is a sum over tokens", "序列对数概率是各词元对数概率之和"),
            Text(
                "An autoregressive policy factorises $\\pi(y|x) = \\prod_t \\pi(y_t|x, y_{<t})$, so "
                "$\\log\\pi(y|x)$ is the sum of the token log-probabilities (shown for three tokens): what "
                "`sequence_logps` computes from the logits.",
                "自回归策略可分解为 $\\pi(y|x) = \\prod_t \\pi(y_t|x, y_{<t})$，因此 $\\log\\pi(y|x)$ "
                "是各词元对数概率之和（这里以三个词元为例）：这就是 `sequence_logps` 从 logits 计算的量。",
            ),
            r"\log \prod_{t=1}^{3} \pi(y_t \mid x, y_{<t}) = \sum_{t=1}^{3} \log \pi(y_t \mid x, y_{<t})",
            Equal(sp.log(tok[0] * tok[1] * tok[2]), sum(sp.log(p) for p in tok), via=("expand_log",)),
        ),
        Step(
            Text("The DPO loss", "DPO 损失"),
            Text(
                "Putting it together, with $\\sigma(z) = 1/(1 + e^{-z})$ and the margin $h$:",
                "综合以上各步，记 $\\sigma(z) = 1/(1 + e^{-z})$，间隔为 $h$：",
            ),
            r"\mathcal{L}_{\mathrm{DPO}} = -\mathbb{E}_{(x, y_w, "
            r"y_l)}\Big[\log\sigma\Big(\beta\log\frac{\pi_\theta(y_w|x)}"
            r"{\pi_{\mathrm{ref}}(y_w|x)} - \beta\log\frac{\pi_\theta(y_l|x)}{\pi_{\mathrm{ref}}(y_l|x)}\Big)\Big]",
            Equal(-sp.log(sigma(beta * H)), NLL, via=("expand_log", "expand", "simplify")),
        ),
    ],
    conclusion=Text(
        "Per pair, $\\mathcal{L} = -\\log\\sigma(\\beta h)$: `dpo_losses_from_margin(margin, beta)` of "
        "`preference_margin(...)`, which is what `dpo_loss` returns, one value per pair.",
        "对每一对样本，$\\mathcal{L} = -\\log\\sigma(\\beta h)$：即 `dpo_losses_from_margin(margin, beta)` "
        "作用于 `preference_margin(...)`，也就是 `dpo_loss` 逐对返回的值。",
    ),
)
