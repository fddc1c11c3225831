"""The papers the proofs follow, and the notation the lesson uses for their symbols.

`Proof.source` is a key of PAPERS; a step's `eq` is that paper's label for the result it checks ("Eq. 7",
"Thm. 2"). The rendered lesson cites the paper with each proof and each labelled step, and prints NOTATION
as its one table of symbols.
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
        "q_i,\\ p_i",
        Text(
            "the policy's and the reference's probability of response $y_i$ (finite response space)",
            "策略与参考策略给回答 $y_i$ 的概率（有限回答空间）",
        ),
    ),
    ("r_i,\\ r(x, y)", Text("a reward (Bradley–Terry)", "奖励（布拉德利-特里模型）")),
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
    ("p^*(y \\succ y')", Text("the true preference probability", "真实的偏好概率")),
    ("\\mu", Text("the distribution the compared responses are drawn from (IPO)", "被比较回答的来源分布（IPO）")),
    (
        "\\sigma(z) = 1/(1 + e^{-z})",
        Text(
            "the logistic function; $\\operatorname{logit} = \\sigma^{-1}$",
            "逻辑函数；$\\operatorname{logit} = \\sigma^{-1}$",
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
