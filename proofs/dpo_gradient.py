"""The DPO gradient (Rafailov et al. 2023, Sec. 4, "What does the DPO update do?")."""

from __future__ import annotations

import sympy as sp

from .common import LOGPS, beta, h, margin, sigma, z
from .core import NAMES, Equal, Proof, Step, Text

a_w, a_l, b_w, b_l = LOGPS
theta = sp.Symbol("theta", real=True)
A_w, A_l = sp.Function("a_w")(theta), sp.Function("a_l")(theta)  # log pi_theta(y_w|x), log pi_theta(y_l|x)
H_theta = sp.Function("h")(theta)  # the margin as a function of the parameters

reward_w = beta * (a_w - b_w)  # implicit rewards r_hat = beta log(pi / pi_ref)
reward_l = beta * (a_l - b_l)
WEIGHT = sigma(reward_l - reward_w)  # how wrongly the implicit reward model orders the pair
# The claimed gradients of the per-pair DPO loss with respect to the policy log-probabilities; the linked
# tests compare torch autograd through dpo_ref.dpo_loss with these.
GRAD_CHOSEN = -beta * WEIGHT
GRAD_REJECTED = beta * WEIGHT

LOSS_H = -sp.log(sigma(beta * h))
rhat_w, rhat_l = sp.symbols("rhat_w rhat_l", real=True)  # abbreviations shown in the steps
NAMES.update({"rhat_w": (r"\hat r_w", "r̂_w"), "rhat_l": (r"\hat r_l", "r̂_l")})
REWARDS = {rhat_w: reward_w, rhat_l: reward_l, h: margin(a_w, a_l, b_w, b_l)}

PROOF = Proof(
    name="dpo-gradient",
    title=Text("The DPO gradient", "DPO 的梯度"),
    intro=Text(
        "Differentiating the loss shows what a DPO update does: it raises the log-probability of the "
        "chosen response, lowers that of the rejected one, and weighs each pair by how wrongly the "
        "implicit reward model currently orders it.",
        "对损失求导可以看出 DPO 的一次更新做了什么：提高被选回答的对数概率，降低被拒回答的对数概率，"
        "并按当前隐式奖励模型把每一对排错的程度给它加权。",
    ),
    justifies=("dpo_ref.losses.dpo_losses_from_margin", "dpo_ref.losses.dpo_loss"),
    source="dpo",
    steps=[
        Step(
            Text("Derivative of the log-sigmoid", "对数 sigmoid 的导数"),
            Text(
                "The logistic function satisfies $\\sigma'(z) = \\sigma(z)\\sigma(-z)$, hence:",
                "逻辑斯谛函数满足 $\\sigma'(z) = \\sigma(z)\\sigma(-z)$，因此：",
            ),
            Equal(sp.Derivative(sp.log(sigma(z)), z), 1 - sigma(z), via=("simplify",)),
            eq="App. A.4",
        ),
        Step(
            Text("Gradient with respect to the margin", "对间隔的梯度"),
            Text(
                "By the chain rule through $\\beta h$:",
                "对 $\\beta h$ 用链式法则：",
            ),
            Equal(sp.Derivative(LOSS_H, h), -beta * sigma(-beta * h), via=("simplify",)),
            eq="App. A.4",
        ),
        Step(
            Text("Gradient through the policy", "经由策略的梯度"),
            Text(
                "Let the policy log-probabilities $a_w(\\theta), a_l(\\theta)$ depend on the parameters "
                "$\\theta$ (the reference ones do not). Differentiating the DPO loss of proof 6:",
                "设策略的对数概率 $a_w(\\theta), a_l(\\theta)$ 依赖于参数 $\\theta$（参考策略的对数概率不依赖于 "
                "$\\theta$）。"
                "对证明 6 中的 DPO 损失求导：",
            ),
            Equal(
                sp.Derivative(LOSS_H.subs(h, H_theta), theta),
                -beta * sigma(rhat_l - rhat_w) * (sp.Derivative(A_w, theta) - sp.Derivative(A_l, theta)),
                via=("simplify",),
            ),
            where={H_theta: margin(A_w, A_l, b_w, b_l), rhat_w: beta * (A_w - b_w), rhat_l: beta * (A_l - b_l)},
            eq="§4",
        ),
        Step(
            Text("Gradient with respect to the chosen log-probability", "对被选回答对数概率的梯度"),
            Text(
                "The partial derivatives that autograd back-propagates into `policy_chosen_logps` ...",
                "自动微分传回 `policy_chosen_logps` 的偏导数……",
            ),
            Equal(sp.Derivative(LOSS_H, a_w), -beta * sigma(rhat_l - rhat_w), via=("simplify",)),
            where=REWARDS,
            eq="§4",
        ),
        Step(
            Text("Gradient with respect to the rejected log-probability", "对被拒回答对数概率的梯度"),
            Text(
                "... and into `policy_rejected_logps`: equal in size, opposite in sign.",
                "……以及传回 `policy_rejected_logps` 的偏导数：大小相等，符号相反。",
            ),
            Equal(sp.Derivative(LOSS_H, a_l), beta * sigma(rhat_l - rhat_w), via=("simplify",)),
            where=REWARDS,
            eq="§4",
        ),
        Step(
            Text("The weight exceeds ½ exactly when the pair is misordered", "当这一对被排错时权重大于 ½"),
            Text(
                "$\\sigma(z) - \\tfrac12 = \\tfrac12\\tanh(z/2)$ has the sign of $z$, so the weight "
                "$\\sigma(\\hat r(y_l) - \\hat r(y_w))$ is above ½ iff the implicit reward prefers $y_l$: "
                "misordered pairs get the larger weight.",
                "$\\sigma(z) - \\tfrac12 = \\tfrac12\\tanh(z/2)$ 与 $z$ 同号，所以当隐式奖励更偏好 $y_l$ 时，"
                "权重 $\\sigma(\\hat r(y_l) - \\hat r(y_w))$ 大于 ½：被排错的样本对得到更大的权重。",
            ),
            Equal(sigma(z) - sp.Rational(1, 2), sp.tanh(z / 2) / 2, via=("exp", "simplify")),
            eq="§4",
        ),
    ],
    conclusion=Text(
        "$\\nabla_\\theta\\mathcal{L} = -\\beta\\,\\sigma(\\hat r(y_l) - \\hat r(y_w))\\,"
        "(\\nabla_\\theta\\log\\pi_\\theta(y_w) - \\nabla_\\theta\\log\\pi_\\theta(y_l))$. The linked tests compare "
        "torch autograd through `dpo_loss` with these partial derivatives.",
        "$\\nabla_\\theta\\mathcal{L} = -\\beta\\,\\sigma(\\hat r(y_l) - \\hat r(y_w))\\,"
        "(\\nabla_\\theta\\log\\pi_\\theta(y_w) - \\nabla_\\theta\\log\\pi_\\theta(y_l))$。"
        "关联测试把经由 `dpo_loss` 的 torch 自动微分结果与这些偏导数逐一比较。",
    ),
)


def compare() -> list:
    """torch autograd through dpo_loss against the derived ∂L/∂log π(y_w) = −β σ(r̂_l − r̂_w) and its negative."""
    from dpo_ref.losses import dpo_loss

    from .numeric import Row, exact, tensors

    logps, beta_ = (-10.0, -9.0, -10.5, -8.0), 0.5
    values = {**dict(zip(LOGPS, logps)), beta: beta_}
    xs = tensors(*logps)
    dpo_loss(*xs, beta=beta_).losses.sum().backward()
    return [
        Row("∂L/∂log π(y_w)", exact(GRAD_CHOSEN, values), xs[0].grad.item()),
        Row("∂L/∂log π(y_l)", exact(GRAD_REJECTED, values), xs[1].grad.item()),
    ]
