"""16. cDPO and EXO share one optimum: sigma(beta h*) = 1 - eps (Ji et al. 2024, Eq. 16; Mitchell 2023)."""

from __future__ import annotations

import sympy as sp

from .common import beta, eps, h, sigma
from .core import NAMES, Equal, GlobalMinimum, Limit, Positive, Proof, Step, Text, bounded

# The model's probability sigma(beta h), shown as q. Its own name: a bounded symbol must not be the label of
# another proof's IndexedBase q (implicit-reward-kl, ipo-psi), or that proof would inherit the bound.
q = bounded(sp.Symbol("q_exo", positive=True), sp.Interval.open(0, 1))
NAMES["q_exo"] = ("p_\\theta", "p_θ")  # the model's preference probability (q_i is a policy's)

# EXO-pair as `exo_pair_loss` evaluates it: KL(Bern(q) || Bern(1 - eps)) with q = sigma(beta h).
EXO_Q = q * (sp.log(q) - sp.log(1 - eps)) + (1 - q) * (sp.log(1 - q) - sp.log(eps))
EXO = EXO_Q.subs(q, sigma(beta * h))
H_STAR = sp.log((1 - eps) / eps) / beta  # cDPO's optimal margin (proof cdpo)
EXO_GRAD = beta * sigma(beta * h) * sigma(-beta * h) * (beta * h - sp.log((1 - eps) / eps))
CDPO = -(1 - eps) * sp.log(sigma(beta * h)) - eps * sp.log(sigma(-beta * h))  # proof cdpo, step 2
# -log eps - KL(q) written as a sum of manifestly positive terms: q logit(1 - eps) plus the entropy of q
BOUND_GAP = q * sp.log(1 / eps - 1) + q * sp.log(1 / q) + (1 - q) * sp.log(1 / (1 - q))

PROOF = Proof(
    name="exo-cdpo",
    title=Text("cDPO and EXO share one optimum", "cDPO 与 EXO 有同一个最优点"),
    intro=Text(
        "The first member of the loss family that TRL ships besides DPO and IPO: pairwise EXO (Ji et al. 2024, "
        "Eq. 16) minimises the KL divergence from the model's preference probability $p_\\theta = \\sigma(\\beta "
        "h)$ to "
        "the smoothed label $1 - \\varepsilon$. It looks nothing like cDPO's smoothed cross-entropy, yet both are "
        "minimised by the same margin, $\\sigma(\\beta h^*) = 1 - \\varepsilon$. The argument goes through "
        "$p_\\theta$, "
        "in which EXO is convex, and then back to $h$. The steps are checked for "
        "$0 < \\varepsilon < 1/2$, the range `exo_pair_loss` accepts.",
        "TRL 在 DPO 和 IPO 之外提供的损失族中的第一个：成对 EXO（Ji 等，2024，式 16）最小化从模型偏好概率 "
        "$p_\\theta = \\sigma(\\beta h)$ 到平滑标签 $1 - \\varepsilon$ 的 KL 散度。它看起来与 cDPO "
        "的平滑交叉熵毫不相同，"
        "但两者的最小值点是同一个间隔：$\\sigma(\\beta h^*) = 1 - \\varepsilon$。论证先在 $p_\\theta$ 上进行（EXO "
        "关于 $p_\\theta$ 是"
        "凸的），"
        "再回到 $h$。各步骤在 $0 < \\varepsilon < 1/2$ 上检验，这正是 `exo_pair_loss` 接受的范围。",
    ),
    justifies=("dpo_ref.family.exo_pair_loss", "dpo_ref.losses.dpo_losses_from_margin"),
    source="exo",
    steps=[
        Step(
            Text("EXO as a function of the model's probability", "以模型概率为自变量的 EXO"),
            Text(
                "With $p_\\theta = \\sigma(\\beta h)$ the loss `exo_pair_loss` computes is "
                "$\\mathrm{KL}(\\mathrm{Bern}(p_\\theta) \\,\\|\\, \\mathrm{Bern}(1 - \\varepsilon))$. On $0 < "
                "p_\\theta < 1$ it is "
                "strictly convex, its unique minimiser is $p_\\theta = 1 - \\varepsilon$ and its minimum is 0, so "
                "$\\mathcal{L}_{\\mathrm{EXO}} \\ge 0$ for every margin.",
                "令 $p_\\theta = \\sigma(\\beta h)$，`exo_pair_loss` 计算的损失就是 "
                "$\\mathrm{KL}(\\mathrm{Bern}(p_\\theta) \\,\\|\\, \\mathrm{Bern}(1 - \\varepsilon))$。它在 $0 < "
                "p_\\theta < 1$ 上严"
                "格凸，"
                "唯一的最小值点是 $p_\\theta = 1 - \\varepsilon$，最小值为 0，因此对任何间隔都有 "
                "$\\mathcal{L}_{\\mathrm{EXO}} \\ge 0$。",
            ),
            GlobalMinimum(EXO_Q, q, 1 - eps, value=0),
            eq="Eq. 16",
        ),
        Step(
            Text("The probability is strictly increasing in the margin", "概率随间隔严格递增"),
            Text(
                "$p_\\theta = \\sigma(\\beta h)$ has a positive derivative, so each value of $p_\\theta$ in $(0, "
                "1)$ is reached by at "
                "most one margin $h$.",
                "$p_\\theta = \\sigma(\\beta h)$ 的导数为正，所以 $(0, 1)$ 中的每个 $p_\\theta$ 值至多对应一个间隔 "
                "$h$。",
            ),
            Positive(
                sp.Derivative(sigma(beta * h), h), manifest=beta * sigma(beta * h) * sigma(-beta * h), via=("simplify",)
            ),
            eq="Eq. 16",
        ),
        Step(
            Text("cDPO's optimal margin gives that probability", "cDPO 的最优间隔给出这个概率"),
            Text(
                "cDPO's minimiser $h^* = \\beta^{-1}\\ln\\frac{1-\\varepsilon}{\\varepsilon}$ (the cDPO proof) gives "
                "$p_\\theta = 1 - \\varepsilon$. By the two previous steps it is the one margin that minimises EXO, "
                "and EXO "
                "is 0 "
                "there.",
                "cDPO 的最小值点 $h^* = \\beta^{-1}\\ln\\frac{1-\\varepsilon}{\\varepsilon}$（见 cDPO 的证明）给出 "
                "$p_\\theta = 1 - \\varepsilon$。由前两步，它就是使 EXO 最小的唯一间隔，且 EXO 在此处为 0。",
            ),
            Equal(sp.Subs(sigma(beta * h), h, H_STAR), 1 - eps, via=("simplify",)),
            eq="cDPO loss",
            paper="cdpo",
        ),
        Step(
            Text("EXO's gradient in the margin", "EXO 对间隔的梯度"),
            Text(
                "Differentiating the code's expression in $h$ directly: the positive derivative of step 2 times "
                "$\\beta h - \\ln\\frac{1-\\varepsilon}{\\varepsilon}$, which is negative below $h^*$ and positive "
                "above it. Gradient descent on EXO moves every margin towards $h^*$.",
                "直接对代码中的表达式关于 $h$ 求导：第 2 步中为正的导数乘以 "
                "$\\beta h - \\ln\\frac{1-\\varepsilon}{\\varepsilon}$，"
                "它在 $h^*$ 以下为负、以上为正。对 EXO 做梯度下降会把每个间隔推向 $h^*$。",
            ),
            Equal(sp.Derivative(EXO, h), EXO_GRAD, via=("expand_log", "simplify")),
            eq="Eq. 16",
        ),
        Step(
            Text("cDPO is stationary at the same margin", "cDPO 在同一间隔处驻定"),
            Text(
                "The cDPO gradient vanishes at the same $h^*$; the cDPO proof shows that cDPO is strictly convex, so "
                "this is its unique minimiser too.",
                "cDPO 的梯度在同一个 $h^*$ 处为零；cDPO 的证明表明 cDPO 严格凸，所以这也是它唯一的最小值点。",
            ),
            Equal(sp.Subs(sp.Derivative(CDPO, h), h, H_STAR), 0, via=("simplify",)),
            eq="cDPO gradient",
            paper="cdpo",
        ),
        Step(
            Text("EXO is bounded above", "EXO 有上界"),
            Text(
                "$-\\log\\varepsilon - \\mathrm{KL}$ equals $p_\\theta\\log(1/\\varepsilon - 1)$ plus the entropy of "
                "$\\mathrm{Bern}(p_\\theta)$, both positive for $0 < p_\\theta < 1$ and $\\varepsilon < 1/2$. So "
                "$0 \\le \\mathcal{L}_{\\mathrm{EXO}} < -\\log\\varepsilon$: unlike cDPO, EXO is a bounded loss.",
                "$-\\log\\varepsilon - \\mathrm{KL}$ 等于 $p_\\theta\\log(1/\\varepsilon - 1)$ 加上 "
                "$\\mathrm{Bern}(p_\\theta)$ 的熵，"
                "在 $0 < p_\\theta < 1$、$\\varepsilon < 1/2$ 时两者都为正。因此 "
                "$0 \\le \\mathcal{L}_{\\mathrm{EXO}} < -\\log\\varepsilon$：与 cDPO 不同，EXO 是有界的损失。",
            ),
            Positive(
                sp.Add(-sp.log(eps), sp.Mul(-1, EXO_Q, evaluate=False), evaluate=False),
                manifest=BOUND_GAP,
                via=("expand_log", "simplify"),
            ),
            eq="Eq. 16",
        ),
        Step(
            Text("The upper bound is approached as the margin falls", "间隔趋于负无穷时逼近上界"),
            Text(
                "As $h \\to -\\infty$ the loss tends to $-\\log\\varepsilon$, so no smaller constant bounds it.",
                "当 $h \\to -\\infty$ 时损失趋于 $-\\log\\varepsilon$，所以没有更小的常数能作为它的上界。",
            ),
            Limit(EXO, h, -sp.oo, -sp.log(eps)),
            eq="Eq. 16",
        ),
    ],
    conclusion=Text(
        "`exo_pair_loss` and cDPO (`dpo_losses_from_margin` with `label_smoothing` $= \\varepsilon$) have the same "
        "unique minimiser $h^* = \\beta^{-1}\\ln((1-\\varepsilon)/\\varepsilon)$, where $\\sigma(\\beta h^*) = "
        "1 - \\varepsilon$; EXO's values lie in $[0, -\\log\\varepsilon)$.",
        "`exo_pair_loss` 与 cDPO（`dpo_losses_from_margin`，`label_smoothing` $= \\varepsilon$）有同一个唯一的最小值点 "
        "$h^* = \\beta^{-1}\\ln((1-\\varepsilon)/\\varepsilon)$，此处 $\\sigma(\\beta h^*) = 1 - \\varepsilon$；"
        "EXO 的取值在 $[0, -\\log\\varepsilon)$ 内。",
    ),
)


def compare() -> list:
    """exo_pair_loss against the KL expression at a few margins, and both losses' zero slope at h*."""
    from dpo_ref.family import exo_pair_loss
    from dpo_ref.losses import dpo_losses_from_margin

    from .numeric import Row, exact, tensors

    beta_, eps_ = 0.5, 0.1
    zero = tensors(0.0)[0].detach()
    rows = []
    for hv in (-6.0, 0.0, 3.0):
        (hs,) = tensors(hv)  # margin h with the other three log-probs 0
        got = exo_pair_loss(hs, zero, zero, zero, beta=beta_, label_smoothing=eps_).losses.item()
        rows.append(Row(f"EXO loss at h = {hv:g}", exact(EXO, {h: hv, beta: beta_, eps: eps_}), got))
    h_star = exact(H_STAR, {beta: beta_, eps: eps_})
    (he,) = tensors(h_star)
    out = exo_pair_loss(he, zero, zero, zero, beta=beta_, label_smoothing=eps_).losses
    out.sum().backward()
    rows.append(Row("EXO loss at h* (the minimum 0)", 0.0, out.item()))
    rows.append(Row("EXO slope at h*", 0.0, he.grad.item()))
    (hc,) = tensors(h_star)
    dpo_losses_from_margin(hc, beta_, eps_).sum().backward()
    rows.append(Row("cDPO slope at the same h*", 0.0, hc.grad.item()))
    return rows
