"""17. IPO with flipped labels: the optimum shrinks linearly, h* = (1 - 2 eps)/(2 tau) (Azar et al. 2023, Eq. 17)."""

from __future__ import annotations

import sympy as sp

from .common import eps, h, tau
from .core import Equal, GlobalMinimum, Positive, Proof, Step, Text


def ipo(m: sp.Expr) -> sp.Expr:
    """The per-pair IPO loss (h - 1/(2 tau))^2 at margin m (proof ipo), what ipo_losses_from_margin computes."""
    return (m - 1 / (2 * tau)) ** 2


# A label flipped with probability eps turns the pair around: margin -h. The population loss, in the form
# of the issue: (1 - eps)(h - 1/(2 tau))^2 + eps (h + 1/(2 tau))^2.
NOISY = (1 - eps) * ipo(h) + eps * ipo(-h)
POPULATION = (1 - eps) * (h - 1 / (2 * tau)) ** 2 + eps * (h + 1 / (2 * tau)) ** 2
H_STAR = (1 - 2 * eps) / (2 * tau)
MIN_VALUE = eps * (1 - eps) / tau**2

PROOF = Proof(
    name="ipo-noise",
    title=Text("IPO with flipped labels", "标签翻转下的 IPO"),
    intro=Text(
        "If each preference label is flipped with probability $\\varepsilon$, IPO sees the pair with margin $h$ "
        "with probability $1 - \\varepsilon$ and the reversed pair, margin $-h$, with probability $\\varepsilon$. "
        "The expected loss is still a parabola: its minimiser moves from $1/(2\\tau)$ to "
        "$(1 - 2\\varepsilon)/(2\\tau)$, linearly in $\\varepsilon$, where cDPO's moves in log-odds. The steps "
        "are checked for $0 < \\varepsilon < 1/2$ and $\\tau > 0$. The same algebra holds for the length-normalised "
        "margin $\\bar h$ of TRL's `ipo` (`ipo_norm_loss`), which is the same function of $\\bar h$.",
        "如果每个偏好标签以概率 $\\varepsilon$ 被翻转，IPO 以概率 $1 - \\varepsilon$ 看到间隔为 $h$ 的样本对，"
        "以概率 $\\varepsilon$ 看到反过来的样本对（间隔 $-h$）。期望损失仍是抛物线：它的最小值点从 $1/(2\\tau)$ 移到 "
        "$(1 - 2\\varepsilon)/(2\\tau)$，随 $\\varepsilon$ 线性变化，而 cDPO 的最优点在对数几率上变化。"
        "各步骤在 $0 < \\varepsilon < 1/2$、$\\tau > 0$ 上检验。TRL 的 `ipo`（`ipo_norm_loss`）"
        "是长度归一化间隔 $\\bar h$ 的同一个函数，所以同样的代数对 $\\bar h$ 也成立。",
    ),
    justifies=("dpo_ref.losses.ipo_losses_from_margin", "dpo_ref.family.ipo_norm_loss"),
    source="ipo",
    steps=[
        Step(
            Text("The population loss under label flips", "标签翻转下的总体损失"),
            Text(
                "Mixing the IPO loss of the pair and of the reversed pair with weights $1 - \\varepsilon$ and "
                "$\\varepsilon$ gives the noisy-label loss $(1-\\varepsilon)(h - \\frac{1}{2\\tau})^2 + "
                "\\varepsilon(h + \\frac{1}{2\\tau})^2$.",
                "以权重 $1 - \\varepsilon$ 和 $\\varepsilon$ 混合原样本对与反向样本对的 IPO 损失，得到噪声标签下的损失 "
                "$(1-\\varepsilon)(h - \\frac{1}{2\\tau})^2 + \\varepsilon(h + \\frac{1}{2\\tau})^2$。",
            ),
            Equal(NOISY, POPULATION, via=("expand",)),
            eq="Eq. 17",
        ),
        Step(
            Text("The noisy optimum", "噪声下的最优点"),
            Text(
                "The population loss is a parabola in $h$ (curvature 2), stationary at "
                "$h^* = (1 - 2\\varepsilon)/(2\\tau)$: the unique minimiser. Its minimum "
                "$\\varepsilon(1-\\varepsilon)/\\tau^2$ is positive: no margin fits both orders.",
                "总体损失是关于 $h$ 的抛物线（曲率为 2），在 $h^* = (1 - 2\\varepsilon)/(2\\tau)$ 处驻定，这就是唯一"
                "的最小值点。"
                "其最小值 $\\varepsilon(1-\\varepsilon)/\\tau^2$ 为正：没有哪个间隔能同时拟合两种顺序。",
            ),
            GlobalMinimum(POPULATION, h, H_STAR, value=MIN_VALUE),
            eq="Eq. 17",
        ),
        Step(
            Text("Linear in the preference probability", "与偏好概率成线性关系"),
            Text(
                "With $p = 1 - \\varepsilon$ the probability that the observed winner is preferred, "
                "$h^* = (p - \\frac12)/\\tau$: a straight line in $p$.",
                "记 $p = 1 - \\varepsilon$ 为观测到的胜者确实被偏好的概率，则 $h^* = (p - \\frac12)/\\tau$：关于 $p$ "
                "的一条直线。",
            ),
            Equal(H_STAR, ((1 - eps) - sp.Rational(1, 2)) / tau, via=("expand",)),
            eq="Eq. 17",
        ),
        Step(
            Text("The optimum keeps the preference's direction", "最优点保持偏好的方向"),
            Text(
                "For $\\varepsilon < 1/2$ the noisy optimum is positive: the model still prefers $y_w$.",
                "当 $\\varepsilon < 1/2$ 时，噪声下的最优点为正：模型仍然偏好 $y_w$。",
            ),
            Positive(H_STAR, restates=True),
            eq="Eq. 17",
        ),
        Step(
            Text("Noise shrinks the optimum", "噪声使最优点收缩"),
            Text(
                "The clean optimum $1/(2\\tau)$ exceeds the noisy one by $\\varepsilon/\\tau > 0$.",
                "无噪声的最优点 $1/(2\\tau)$ 比噪声下的大 $\\varepsilon/\\tau > 0$。",
            ),
            Positive(1 / (2 * tau) - H_STAR, manifest=eps / tau, via=("expand",)),
            eq="Eq. 17",
        ),
        Step(
            Text("Labels carrying no information", "不含信息的标签"),
            Text(
                "At the boundary $\\varepsilon = 1/2$ (outside the range the other steps assume) the formula gives "
                "$h^* = 0$: the policy stays at the reference.",
                "在边界 $\\varepsilon = 1/2$（不在其他步骤假设的范围内），公式给出 $h^* = 0$：策略停留在参考策略上。",
            ),
            Equal(sp.Subs(H_STAR, eps, sp.Rational(1, 2)), 0, via=("simplify",)),
            eq="Eq. 17",
        ),
    ],
    conclusion=Text(
        "Under label flips with probability $\\varepsilon$, the expected IPO loss (`ipo_losses_from_margin` on $h$ "
        "and on $-h$) has the unique minimiser $h^* = (1 - 2\\varepsilon)/(2\\tau)$; for TRL's length-normalised "
        "`ipo` the same holds for $\\bar h$.",
        "在以概率 $\\varepsilon$ 翻转标签时，期望 IPO 损失（`ipo_losses_from_margin` 作用于 $h$ 与 $-h$）"
        "有唯一的最小值点 $h^* = (1 - 2\\varepsilon)/(2\\tau)$；对 TRL 的长度归一化 `ipo`，同样的结论对 $\\bar h$ 成"
        "立。",
    ),
)


def compare() -> list:
    """The noisy population loss built from ipo_losses_from_margin (sequence margin) and from ipo_norm_loss
    (per-token margin, the pair and its reverse) against the derived parabola, and its zero slope at h*."""
    import torch

    from dpo_ref.family import ipo_norm_loss
    from dpo_ref.losses import ipo_losses_from_margin

    from .numeric import Row, exact, tensors

    tau_, eps_ = 0.25, 0.2
    rows = []
    for hv in (-1.0, 0.5, 3.0):
        (hs,) = tensors(hv)
        got = ((1 - eps_) * ipo_losses_from_margin(hs, tau_) + eps_ * ipo_losses_from_margin(-hs, tau_)).item()
        rows.append(Row(f"population loss at h = {hv:g}", exact(POPULATION, {h: hv, tau: tau_, eps: eps_}), got))
    h_star = exact(H_STAR, {tau: tau_, eps: eps_})
    (hs,) = tensors(h_star)
    pop = (1 - eps_) * ipo_losses_from_margin(hs, tau_) + eps_ * ipo_losses_from_margin(-hs, tau_)
    pop.sum().backward()
    rows.append(Row("population minimum at h*", exact(MIN_VALUE, {tau: tau_, eps: eps_}), pop.item()))
    rows.append(Row("population slope at h*", 0.0, hs.grad.item()))
    # ipo_norm_loss: chosen 4 tokens, rejected 2; the chosen log-ratio 4 h_bar* gives h_bar = h* exactly
    n_w, n_l = torch.tensor([4.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    (pc,) = tensors(4 * h_star)
    zero = torch.zeros(1, dtype=torch.float64)
    fwd = ipo_norm_loss(pc, zero, zero, zero, chosen_lengths=n_w, rejected_lengths=n_l, tau=tau_).losses
    rev = ipo_norm_loss(zero, pc, zero, zero, chosen_lengths=n_l, rejected_lengths=n_w, tau=tau_).losses
    ((1 - eps_) * fwd + eps_ * rev).sum().backward()
    rows.append(Row("ipo_norm_loss population slope at h_bar*", 0.0, pc.grad.item()))
    return rows
