"""The papers the proofs follow, and the notation the lesson uses for their symbols.

`Proof.source` is a key of PAPERS; a step's `eq` is that paper's label for the result it checks ("Eq. 7",
"Thm. 2"). The rendered lesson cites the paper with each proof and each labelled step, and prints NOTATION
as its one table of symbols.

The labels were written without a copy of the papers: IPO Eq. 17, EXO Eq. 16 and SPPO Eq. 4.7 agree with the
equations TRL's source cites (`trl/trainer/dpo_trainer.py`); the rest are unverified recollection (docs/proofs.md).
"""

from __future__ import annotations

from .core import Proof, Step, Text

PAPERS: dict[str, str] = {
    "dpo": "Rafailov et al. 2023, *Direct Preference Optimization: Your Language Model is Secretly a Reward "
    "Model* (arXiv:2305.18290)",
    "ipo": "Azar et al. 2023, *A General Theoretical Paradigm to Understand Learning from Human Preferences* "
    "(arXiv:2310.12036)",
    "cdpo": "Mitchell 2023, *A note on DPO with noisy preferences and relationship to IPO* (cDPO)",
    "exo": "Ji et al. 2024, *Towards Efficient Exact Optimization of Language Model Alignment* (arXiv:2402.00856)",
    "rdpo": "Chowdhury et al. 2024, *Provably Robust DPO: Aligning Language Models with Noisy Feedback* "
    "(arXiv:2403.00409)",
    "rpo": "Pang et al. 2024, *Iterative Reasoning Preference Optimization* (arXiv:2404.19733)",
    "slic": "Zhao et al. 2023, *SLiC-HF: Sequence Likelihood Calibration with Human Feedback* (arXiv:2305.10425)",
    "sppo": "Wu et al. 2024, *Self-Play Preference Optimization for Language Model Alignment* (arXiv:2405.00675)",
    "nca": "Chen et al. 2024, *Noise Contrastive Alignment of Language Models with Explicit Rewards* "
    "(arXiv:2402.05369)",
    "apo": "D'Oosterlinck et al. 2024, *Anchored Preference Optimization and Contrastive Revisions* (arXiv:2408.06266)",
    "discopop": "Lu et al. 2024, *Discovering Preference Optimization Algorithms with and for Large Language "
    "Models* (arXiv:2406.08414)",
    "simpo": "Meng et al. 2024, *SimPO: Simple Preference Optimization with a Reference-Free Reward* "
    "(arXiv:2405.14734)",
    "aot": "Melnyk et al. 2024, *Distributional Preference Alignment of LLMs via Optimal Transport* (arXiv:2406.05882)",
    "trl": "TRL 1.16, `trl/trainer/dpo_trainer.py` (`DPOTrainer._compute_loss`)",
}

# (symbol as LaTeX, meaning): one meaning per symbol across the lesson
NOTATION: list[tuple[str, Text]] = [
    (
        "x,\\ y,\\ y_w,\\ y_l",
        Text("a prompt, a response, the chosen and the rejected response", "提示、回答、被选中的回答与被拒绝的回答"),
    ),
    (
        "\\pi,\\ \\pi_{\\mathrm{ref}},\\ \\pi^*",
        Text("the policy, the reference policy, the optimal policy", "策略、参考策略、最优策略"),
    ),
    (
        "q_i,\\ p_i,\\ q'_i",
        Text(
            "the policy's and the reference's probability of response $y_i$ (finite response space); $q'_i$ those of "
            "a second distribution $\\pi'$ (Gibbs' inequality)",
            "策略与参考策略给回答 $y_i$ 的概率（有限回答空间）；$q'_i$ 为第二个分布 $\\pi'$ 的概率（吉布斯不等式）",
        ),
    ),
    (
        "r(x, y),\\ r_i,\\ r(y_w),\\ r(y_l)",
        Text(
            "a reward (Bradley–Terry), that of response $y_i$, of the chosen and of the rejected response",
            "奖励（布拉德利-特里模型）、回答 $y_i$ 的奖励、被选中与被拒绝回答的奖励",
        ),
    ),
    ("\\hat r = \\beta \\log\\frac{\\pi}{\\pi_{\\mathrm{ref}}}", Text("the implicit reward", "隐式奖励")),
    (
        "a_w,\\ a_l,\\ b_w,\\ b_l",
        Text(
            "$\\log\\pi(y_w)$, $\\log\\pi(y_l)$, $\\log\\pi_{\\mathrm{ref}}(y_w)$, "
            "$\\log\\pi_{\\mathrm{ref}}(y_l)$, as the code takes them",
            "代码接收的 $\\log\\pi(y_w)$、$\\log\\pi(y_l)$、$\\log\\pi_{\\mathrm{ref}}(y_w)$、"
            "$\\log\\pi_{\\mathrm{ref}}(y_l)$",
        ),
    ),
    (
        "r_w,\\ r_l",
        Text(
            "the log-ratios $a_w - b_w$ and $a_l - b_l$ (family proofs)",
            "对数比值 $a_w - b_w$ 与 $a_l - b_l$（损失族的证明）",
        ),
    ),
    ("h = r_w - r_l", Text("the preference margin", "偏好间隔")),
    ("\\beta,\\ \\tau", Text("the KL coefficient of DPO, IPO's regularisation", "DPO 的 KL 系数、IPO 的正则化系数")),
    ("\\varepsilon", Text("the label-flip probability (cDPO, robust DPO, EXO)", "标签翻转概率（cDPO、稳健 DPO、EXO）")),
    (
        "p^*(y \\succ y'),\\ p^*(y \\succ \\mu)",
        Text(
            "the true preference probability; its mean over $y' \\sim \\mu$ (IPO's bounded score)",
            "真实的偏好概率；它对 $y' \\sim \\mu$ 的平均（IPO 的有界得分）",
        ),
    ),
    (
        "p_\\theta = \\sigma(\\beta h)",
        Text("the model's probability of the observed order (EXO)", "模型给所观察顺序的概率（EXO）"),
    ),
    (
        "\\hat p,\\ \\tilde p",
        Text(
            "how often a pair was seen with $y_w$ preferred; that frequency with the label flips removed (robust DPO)",
            "一对样本中 $y_w$ 被偏好的频率；去除标签翻转后的频率（稳健 DPO）",
        ),
    ),
    (
        "g_j,\\ c_{jk}",
        Text(
            "the log-ratio $\\log(\\pi(y_j)/\\pi_{\\mathrm{ref}}(y_j))$ and the regression target "
            "$(p^*(y_j \\succ y_k) - 1/2)/\\tau$ (IPO's Theorem 2)",
            "对数比值 $\\log(\\pi(y_j)/\\pi_{\\mathrm{ref}}(y_j))$ 与回归目标 $(p^*(y_j \\succ y_k) - "
            "1/2)/\\tau$（IPO 定理 2）",
        ),
    ),
    (
        "\\rho = \\beta h,\\ \\kappa",
        Text(
            "DiscoPOP's scaled margin and its temperature (the paper's and the code's $\\tau$)",
            "DiscoPOP 的缩放间隔与温度（论文与代码中的 $\\tau$）",
        ),
    ),
    ("\\mu", Text("the distribution the compared responses are drawn from (IPO)", "被比较回答的来源分布（IPO）")),
    (
        "\\sigma(z) = 1/(1 + e^{-z})",
        Text(
            "the logistic function; $\\operatorname{logit} = \\sigma^{-1}$ (the only meaning of logit here)",
            "逻辑函数；$\\operatorname{logit} = \\sigma^{-1}$（本文中 logit 只有这一个含义）",
        ),
    ),
    ("Z(x)", Text("the partition function $\\sum_y \\pi_{\\mathrm{ref}}(y|x) e^{r(x,y)/\\beta}$", "配分函数")),
    (
        "K,\\ n",
        Text(
            "the number of ranked responses (Plackett–Luce), of responses to a prompt",
            "排序的回答数（普拉克特-卢斯）、一个提示下的回答数",
        ),
    ),
]


def short(key: str) -> str:
    """A paper's short citation: 'Rafailov et al. 2023' (a repository for TRL)."""
    return PAPERS[key].split(",")[0] if key != "trl" else "TRL 1.16"


def citation(proof: Proof, step: Step) -> str | None:
    """Where the step's result is in the literature: 'Rafailov et al. 2023, Eq. 4' (None without a label)."""
    if not step.eq:
        return None
    return f"{short(step.paper or proof.source)}, {step.eq}" if (step.paper or proof.source) else step.eq
