"""The RPO term: DPO plus the chosen response's NLL, as an objective and its gradient (Pang et al. 2024)."""

from __future__ import annotations

import sympy as sp

from .common import LOGPS, beta, h, margin, sigma
from .core import Equal, Limit, Negative, Proof, Solutions, Step, Text

a_w, a_l, b_w, b_l = LOGPS
alpha = sp.Symbol("alpha", positive=True)  # rpo_alpha > 0 (0 is plain DPO)
T = sp.Symbol("T", positive=True)  # number of tokens of the chosen response
J = sp.Function("J")(a_w, a_l)
OBJECTIVE = -sp.log(sigma(beta * h)) - alpha * a_w / T  # one pair: DPO loss + alpha * per-token NLL of y_w
MARGIN = {h: margin(a_w, a_l, b_w, b_l)}
DPO_PULL = -beta * sigma(-beta * h)  # dL_DPO / d a_w (proof dpo-gradient)
GRAD_CHOSEN = DPO_PULL - alpha / T
GRAD_REJECTED = beta * sigma(-beta * h)

PROOF = Proof(
    name="rpo-nll",
    title=Text("The RPO term: DPO plus the chosen response's NLL", "RPO 项：DPO 加上被选回答的 NLL"),
    intro=Text(
        "The trainer's default objective adds $\\alpha$ times the per-token negative log-likelihood of the "
        "chosen response to the DPO loss (`rpo_alpha`). The DPO loss depends on the margin alone: once a pair "
        "is ordered with a large margin its gradient tends to zero, and nothing in the loss stops both "
        "log-probabilities from falling together while the margin grows. The NLL term keeps a pull of "
        "$\\alpha/T$ on the chosen response whatever the margin.",
        "训练器的默认目标在 DPO 损失上加上被选回答按词元平均的负对数似然的 $\\alpha$ 倍（`rpo_alpha`）。"
        "DPO 损失只依赖于间隔：一旦某对以较大的间隔排序正确，它的梯度就趋于零，而只要间隔还在增大，"
        "损失中没有任何东西阻止两个对数概率一起下降。NLL 项则无论间隔多大，都对被选回答保持 $\\alpha/T$ 的拉力。",
    ),
    justifies=("dpo_ref.rpo.rpo_objective",),
    source="rpo",
    steps=[
        Step(
            Text("Gradient on the chosen log-probability", "对被选回答对数概率的梯度"),
            Text(
                "With $a_w = \\log\\pi(y_w)$ summed over the $T$ tokens of $y_w$, the objective of one pair is "
                "$J = -\\log\\sigma(\\beta h) - \\alpha a_w / T$. Its derivative in $a_w$ is DPO's plus "
                "$-\\alpha/T$.",
                "记 $a_w = \\log\\pi(y_w)$（对 $y_w$ 的 $T$ 个词元求和），一对样本的目标为 "
                "$J = -\\log\\sigma(\\beta h) - \\alpha a_w / T$。它对 $a_w$ 的导数是 DPO 的导数再加 $-\\alpha/T$。",
            ),
            Equal(sp.Derivative(J, a_w), GRAD_CHOSEN, via=("simplify",)),
            where={J: OBJECTIVE, **MARGIN},
            eq="L_DPO+NLL",
        ),
        Step(
            Text("The rejected gradient is DPO's", "被拒回答的梯度与 DPO 相同"),
            Text(
                "The NLL term does not involve $y_l$.",
                "NLL 项不涉及 $y_l$。",
            ),
            Equal(sp.Derivative(J, a_l), GRAD_REJECTED, via=("simplify",)),
            where={J: OBJECTIVE, **MARGIN},
            eq="L_DPO+NLL",
        ),
        Step(
            Text("The chosen response is always pushed up", "被选回答总被推高"),
            Text(
                "The derivative is negative for every margin, so the gradient on $a_w$ always pushes "
                "$\\log\\pi(y_w)$ up.",
                "对任何间隔，导数都为负，所以 $a_w$ 上的梯度总是把 $\\log\\pi(y_w)$ 往上推。",
            ),
            Negative(GRAD_CHOSEN),
            eq="L_DPO+NLL",
        ),
        Step(
            Text("Without the NLL term the pull vanishes", "没有 NLL 项时拉力消失"),
            Text(
                "DPO's own pull on the chosen response dies out as the margin grows ...",
                "DPO 自身对被选回答的拉力随间隔增大而消失……",
            ),
            Limit(DPO_PULL, h, sp.oo, 0),
            eq="L_DPO+NLL",
        ),
        Step(
            Text("With it, a pull of α/T remains", "加上它，保留 α/T 的拉力"),
            Text(
                "... while with the NLL term it tends to $-\\alpha/T$: $\\alpha$ times the gradient of the "
                "per-token supervised fine-tuning loss $-a_w/T$ on the chosen response.",
                "……而加上 NLL 项后它趋于 $-\\alpha/T$：即被选回答上按词元平均的监督微调损失 $-a_w/T$ 的梯度的 "
                "$\\alpha$ 倍。",
            ),
            Limit(GRAD_CHOSEN, h, sp.oo, -alpha / T),
            eq="L_DPO+NLL",
        ),
        Step(
            Text("No stationary point in the chosen log-probability", "被选回答对数概率上没有驻点"),
            Text(
                "The derivative vanishes for no margin $h$, hence for no $a_w$ (with the others fixed, $h$ "
                "moves one for one with $a_w$): $J$ has no stationary point in $a_w$ and, by step 3, decreases "
                "as $a_w$ grows, so minimising it keeps raising the chosen response's log-probability, not "
                "only the margin.",
                "导数对任何间隔 $h$ 都不为零，因而对任何 $a_w$ 都不为零（其余固定时 $h$ 随 $a_w$ 一一变化）："
                "$J$ 在 $a_w$ 上没有驻点，并且由第 3 步，$J$ 随 $a_w$ 增大而减小；所以最小化 $J$ 会不断提高"
                "被选回答的对数概率，而不只是间隔。",
            ),
            Solutions(GRAD_CHOSEN, h, []),
            eq="L_DPO+NLL",
        ),
    ],
    conclusion=Text(
        "`rpo_objective(losses, policy_chosen_logps, counts, rpo_alpha)` is the batch mean of $J$, with "
        "$T$ the chosen response's token count; its gradient is DPO's plus $-\\alpha/T$ on the chosen "
        "log-probability.",
        "`rpo_objective(losses, policy_chosen_logps, counts, rpo_alpha)` 是 $J$ 的批均值，$T$ 为被选回答的词元数；"
        "其梯度是 DPO 的梯度在被选对数概率上再加 $-\\alpha/T$。",
    ),
)


def compare() -> list:
    """rpo_objective over dpo_loss: autograd against the derived gradients, and the value against J."""
    import torch

    from dpo_ref.losses import dpo_loss
    from dpo_ref.rpo import rpo_objective

    from .numeric import Row, exact, tensors

    logps, beta_, alpha_, t_ = (-14.0, -21.0, -16.0, -20.0), 0.5, 2.0, 7.0
    values = {**dict(zip(LOGPS, logps)), beta: beta_, alpha: alpha_, T: t_}
    xs = tensors(*logps)
    obj = rpo_objective(dpo_loss(*xs, beta=beta_).losses, xs[0], torch.tensor([t_], dtype=torch.float64), alpha_)
    obj.backward()
    return [
        Row("J", exact(OBJECTIVE.subs(MARGIN), values), obj.item()),
        Row("∂J/∂log π(y_w)", exact(GRAD_CHOSEN.subs(MARGIN), values), xs[0].grad.item()),
        Row("∂J/∂log π(y_l)", exact(GRAD_REJECTED.subs(MARGIN), values), xs[1].grad.item()),
    ]
