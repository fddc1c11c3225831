"""The papers the proofs follow, and the notation the lesson uses for their symbols.

`Proof.source` is a key of PAPERS; a step's `eq` is that paper's label for the result it checks ("Eq. 7",
"Thm. 1"), or the loss's name where no number could be verified ("cDPO loss"). The rendered lesson cites the
paper with each proof and each labelled step, and prints NOTATION as its one table of symbols.

What the numbers rest on (issue 24). No copy of the papers was at hand where the labels were written. Every
numbered label (Eq., Thm., Lemma, Prop., App., §) a step uses is in exactly one of two tables, and a test
fails for one in neither:

- VERIFIED_LABELS: checked against the paper's own text, or against two independent sources that agree on
  what the number denotes (SOURCES names them). All DPO and IPO labels are here; the check corrected
  these: DPO Eq. 18 → 19 (the substituted Plackett–Luce model), Eq. 18 / App. A.3 → Eq. 20 (the ranking
  loss and its gradient), Thm. 1 → Prop. 1 (uniqueness, App. A.6); IPO §4.1 → §4.2 (deterministic
  preferences), §5.2 → §5.4 (the three-action example), Eq. 17 → Prop. 3 (sampled → population loss); RPO's
  "§2" was dropped for the loss's name.
- UNVERIFIED_LABELS: a number with a single source (TRL's comments, or one note): APO Eq. 7 and 8, DiscoPOP
  Eq. 5, EXO Eq. 16, SPPO Eq. 4.7, SimPO Eq. 6. The lesson prints them with a dagger (`citation`) and says
  what it means (`citations_note`).
"""

from __future__ import annotations

import re

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


# ---- which labels are verified (issue 24) ------------------------------------------------------------------
# Where each source is. Stored pages are cited by address; stored repository files whose repository the search
# index does not name are cited by their index id and what they are.
SOURCES: dict[str, str] = {
    "dpo-ko-1": "a Korean section-by-section walkthrough of the DPO paper that reproduces its displayed equations "
    "with their tags (1)-(22) and its appendix titles A.1-A.6 (code-search index, file id 51854056365)",
    "dpo-ko-2": "a second, independently written Korean walkthrough of the DPO paper with the same tags (1)-(22), "
    "the appendix titles and the paper's reference list (code-search index, file id 51803371841)",
    "modulabs": "https://modulabs.notion.site/DPO-Direct-Preference-Optimization-cc17a9bd724246f1a876fadb1198c6fd "
    "(quotes Sections 3-4 of the DPO paper with 'Equation 1' to 'Equation 5')",
    "jgkym": "https://jgkym.github.io/notes/Understanding-Lemma-1-in-DPO and .../Understanding-Lemma-2-in-DPO "
    "(quote DPO's Definition 1, Lemma 1 and Lemma 2, p. 5, and Eq. 4, p. 4)",
    "course-ch2": "a course chapter ('How it started, and how it evolved') showing the DPO paper's 'Section 4, "
    "equation 7, page 4' (code-search index, file id 71568578526)",
    "ipo-text": "the IPO paper's own text, arXiv:2310.12036v2 (22 Nov 2023), as extracted from the PDF "
    "(code-search index, file id 42415779866); numbering as in v2",
    "trl": "TRL's source, `trl/trainer/dpo_trainer.py` (huggingface/trl), comments in `dpo_loss`",
    "simpo-note": "a 'SimPO Loss Implementation' note: 'Core Formula (Eq. 6 from the paper)' (code-search index, "
    "file id 62189832133)",
}

# (paper key, label) -> (what the number denotes in that paper, the SOURCES that agree on it)
VERIFIED_LABELS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("dpo", "Eq. 1"): ("the Bradley–Terry preference model", ("dpo-ko-1", "dpo-ko-2", "modulabs")),
    ("dpo", "Eq. 2"): ("the reward model's negative log-likelihood loss", ("dpo-ko-1", "dpo-ko-2", "modulabs")),
    ("dpo", "Eq. 3"): ("the KL-regularised RL fine-tuning objective", ("dpo-ko-1", "dpo-ko-2", "modulabs")),
    ("dpo", "Eq. 4"): ("the optimal policy π_r = π_ref e^{r/β}/Z(x)", ("dpo-ko-1", "dpo-ko-2", "modulabs", "jgkym")),
    ("dpo", "Eq. 5"): (
        "the reward in terms of its optimal policy, r = β log(π_r/π_ref) + β log Z",
        (
            "dpo-ko-1",
            "dpo-ko-2",
            "modulabs",
        ),
    ),
    ("dpo", "Eq. 6"): ("the preference probability in terms of π* alone (Z cancelled)", ("dpo-ko-1", "dpo-ko-2")),
    ("dpo", "Eq. 7"): ("the DPO loss", ("dpo-ko-1", "dpo-ko-2", "course-ch2")),
    ("dpo", "Eq. 18"): ("the Plackett–Luce model (App. A.3)", ("dpo-ko-1", "dpo-ko-2")),
    ("dpo", "Eq. 19"): (
        "Plackett–Luce with the reparameterised reward substituted (App. A.3)",
        (
            "dpo-ko-1",
            "dpo-ko-2",
        ),
    ),
    ("dpo", "Eq. 20"): ("the Plackett–Luce DPO (ranking) loss (App. A.3)", ("dpo-ko-1", "dpo-ko-2")),
    ("dpo", "§4"): (
        "Section 4, which states the DPO gradient ('What does the DPO update do?')",
        (
            "dpo-ko-1",
            "dpo-ko-2",
        ),
    ),
    ("dpo", "App. A.1"): (
        "'Deriving the optimum of the KL-constrained reward maximization objective'",
        (
            "dpo-ko-1",
            "dpo-ko-2",
        ),
    ),
    ("dpo", "App. A.4"): ("'Deriving the gradient of the DPO objective'", ("dpo-ko-1", "dpo-ko-2")),
    ("dpo", "Lemma 1"): (
        "equivalent rewards induce the same (Plackett–Luce, Bradley–Terry) preferences",
        (
            "dpo-ko-1",
            "dpo-ko-2",
            "jgkym",
        ),
    ),
    ("dpo", "Lemma 2"): ("equivalent rewards induce the same optimal policy", ("dpo-ko-1", "dpo-ko-2", "jgkym")),
    ("dpo", "Thm. 1"): (
        "every reward class consistent with Plackett–Luce has a member β log(π/π_ref)",
        (
            "dpo-ko-1",
            "dpo-ko-2",
        ),
    ),
    ("dpo", "Prop. 1"): ("that member is unique in its class (App. A.6)", ("dpo-ko-1", "dpo-ko-2")),
    ("ipo", "Prop. 1"): (
        "with Ψ = logit and Bradley–Terry, ΨPO, RLHF and DPO have the same optimal policy (§4.1)",
        ("ipo-text",),
    ),
    ("ipo", "§4.2"): (
        "'Weak Regularisation and Overfitting': deterministic preferences make π*(y') = 0",
        ("ipo-text",),
    ),
    ("ipo", "§5"): ("'IPO: ΨPO with identity mapping', the objective of Eq. 8 and its optimum", ("ipo-text",)),
    ("ipo", "Thm. 2"): ("uniqueness of the optimum of L(π) when Supp(μ) = Supp(π_ref) (§5.1)", ("ipo-text",)),
    ("ipo", "Prop. 3"): ("the sampled loss (Eq. 16) equals L(π) (Eq. 13) up to a constant (§5.2)", ("ipo-text",)),
    ("ipo", "Eq. 17"): ("the empirical IPO loss (h − 1/(2τ))² (§5.2)", ("ipo-text", "trl")),
    ("ipo", "§5.4"): ("'Sampled Preferences': the three-action datasets D1, D2, D3", ("ipo-text",)),
}

# (paper key, label) -> (what the number is said to denote, why it is not verified)
UNVERIFIED_LABELS: dict[tuple[str, str], tuple[str, str]] = {
    ("apo", "Eq. 7"): ("the APO-zero loss", "only TRL's comment ('Eqn (7) of the APO paper')"),
    ("apo", "Eq. 8"): ("the APO-down loss", "only TRL's comment ('Eqn (8) of the APO paper')"),
    ("discopop", "Eq. 5"): ("the DiscoPOP (log-ratio modulated) loss", "only TRL's comment ('Eqn (5)')"),
    ("exo", "Eq. 16"): ("the pairwise EXO loss", "only TRL's comment ('eqn (16) of the EXO paper')"),
    ("sppo", "Eq. 4.7"): ("the SPPO update's squared loss", "only TRL's comment ('Equation (4.7) of Algorithm 1')"),
    ("simpo", "Eq. 6"): (
        "the SimPO objective",
        "two notes say so ('simpo-note'; an agent log, file id 69461724218), both seemingly from one SimPO "
        "reproduction task, so not independent; no copy of the paper's text found",
    ),
}

NUMBERED = re.compile(r"\b(Eq|Thm|Prop|App)\.|\bLemma\b|§")  # a label that carries a number
UNVERIFIED_MARK = "†"


def label_status(key: str | None, label: str) -> str:
    """'verified', 'unverified', 'name' (a label with no number: the loss's name) or 'unlisted'."""
    if not NUMBERED.search(label):
        return "name"
    if (key, label) in VERIFIED_LABELS:
        return "verified"
    return "unverified" if (key, label) in UNVERIFIED_LABELS else "unlisted"


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
        "\\rho_w,\\ \\rho_l",
        Text(
            "the log-ratios $a_w - b_w$ and $a_l - b_l$ (family proofs; $\\rho(y)$ that of a response $y$), "
            "not rewards",
            "对数比值 $a_w - b_w$ 与 $a_l - b_l$（损失族的证明；回答 $y$ 的对数比值记作 $\\rho(y)$），不是奖励",
        ),
    ),
    ("h = \\rho_w - \\rho_l", Text("the preference margin", "偏好间隔")),
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
        "u = \\beta h,\\ \\kappa",
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
    """Where the step's result is in the literature: 'Rafailov et al. 2023, Eq. 4' (None without a label); a
    number that is not verified carries UNVERIFIED_MARK ('Ji et al. 2024, Eq. 16†')."""
    if not step.eq:
        return None
    key = step.paper or proof.source
    mark = UNVERIFIED_MARK if label_status(key, step.eq) == "unverified" else ""
    return f"{short(key)}, {step.eq}{mark}" if key else step.eq + mark


def citations_note(lang: str = "en") -> str:
    """What the lesson's citations rest on, for its readers (one paragraph)."""
    unverified = ("、" if lang == "zh" else ", ").join(f"{short(k)} {label}" for k, label in UNVERIFIED_LABELS)
    if lang == "zh":
        return (
            "**引用的依据。** 每步后括号中的编号（式、定理、引理、命题、附录、节）已对照论文原文，或对照两个相互独立、"
            "说法一致的来源核实（来源列于 `proofs/papers.py` 的 `VERIFIED_LABELS` 与 docs/proofs.md）；"
            f"带 {UNVERIFIED_MARK} 的编号只有一个来源（多为 TRL 源码中的注释），尚未核实：{unverified}。"
            "不带编号的标签是损失的名称。"
        )
    return (
        "**What the citations rest on.** A number in a step's citation (Eq., Thm., Lemma, Prop., App., §) was "
        "checked against the paper's own text or against two independent sources that agree on it (listed in "
        f"`proofs/papers.py`, `VERIFIED_LABELS`, and docs/proofs.md). A number marked {UNVERIFIED_MARK} has a "
        f"single source (mostly a comment in TRL's code) and is not verified: {unverified}. A label without a "
        "number is the loss's name."
    )
