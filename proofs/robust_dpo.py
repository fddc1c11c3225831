"""18. Robust DPO: unbiased under label flips, and without a finite minimiser (Chowdhury et al. 2024, rDPO)."""

from __future__ import annotations

import sympy as sp

from .common import beta, eps, h, sigma
from .core import NAMES, Equal, GlobalMinimum, Limit, Negative, Positive, Proof, Step, Text, bounded

ell = sp.Function("ell")  # the clean per-pair loss, shown as ℓ(h)
ELL = {ell(h): -sp.log(sigma(beta * h)), ell(-h): -sp.log(sigma(-beta * h))}


def robust(m_ell: sp.Expr, flipped_ell: sp.Expr) -> sp.Expr:
    """[(1 - eps) l(h) - eps l(-h)] / (1 - 2 eps) from the clean loss at the margin and at the reversed margin."""
    return ((1 - eps) * m_ell - eps * flipped_ell) / (1 - 2 * eps)


ROBUST = robust(ell(h), ell(-h))  # what robust_loss computes (with ℓ = -log σ(βh))
ROBUST_FLIPPED = robust(ell(-h), ell(h))  # the same loss on the reversed pair
ROBUST_EXPLICIT = ROBUST.xreplace(ELL)
DPO_MINUS = -sp.log(sigma(beta * h)) - eps * beta * h / (1 - 2 * eps)
SLOPE = -beta * sigma(-beta * h) - eps * beta / (1 - 2 * eps)  # manifestly negative
NUMERATOR = (1 - eps) * ell(h) - eps * ell(-h)

# A pair seen with y_w preferred a fraction p_hat of the time: p_hat = eps + (1 - 2 eps) q_hat, where q_hat in
# (0, 1) is the de-noised frequency (eps < p_hat < 1 - eps exactly when 0 < q_hat < 1).
q_hat = bounded(sp.Symbol("qhat", positive=True), sp.Interval.open(0, 1))
p_hat = sp.Symbol("phat", real=True)
NAMES.update({"qhat": ("\\tilde p", "p̃"), "phat": ("\\hat p", "p̂")})
AT_FREQUENCY = p_hat * ROBUST_EXPLICIT + (1 - p_hat) * ROBUST_EXPLICIT.subs(h, -h)

PROOF = Proof(
    name="robust-dpo",
    title=Text("Robust DPO: unbiased, and no finite minimiser", "稳健 DPO：无偏，但没有有限的最小值点"),
    intro=Text(
        "Robust DPO (Chowdhury et al. 2024) answers label noise differently from cDPO: it builds a loss "
        "$\\hat{\\mathcal{L}}$ whose expectation over the flips is the clean DPO loss "
        "$\\ell(h) = -\\log\\sigma(\\beta h)$. "
        "Unbiasedness comes at a price this proof makes explicit: $\\hat{\\mathcal{L}}$ is DPO minus a linear term, "
        "falls for every margin and is unbounded below, so, unlike cDPO and EXO, it has no finite minimiser. The steps "
        "are checked for $0 < \\varepsilon < 1/2$; $\\varepsilon = 0$ is DPO.",
        "稳健 DPO（Chowdhury 等，2024）以不同于 cDPO 的方式应对标签噪声：它构造一个损失 $\\hat{\\mathcal{L}}$，"
        "使其在翻转上的期望正好是干净的 DPO 损失 $\\ell(h) = -\\log\\sigma(\\beta h)$。本证明把无偏性的代价写清楚："
        "$\\hat{\\mathcal{L}}$ 等于 DPO 减去一个线性项，对每个间隔都在下降且无下界，因此与 cDPO 和 EXO 不同，它没有有"
        "限的最小值点。"
        "各步骤在 $0 < \\varepsilon < 1/2$ 上检验；$\\varepsilon = 0$ 就是 DPO。",
    ),
    justifies=("dpo_ref.family.robust_loss",),
    source="rdpo",
    steps=[
        Step(
            Text("Unbiased under label flips", "在标签翻转下无偏"),
            Text(
                "A label flipped with probability $\\varepsilon$ shows the reversed pair (margin $-h$). Averaging "
                "$\\hat{\\mathcal{L}}$ over the flip gives back the clean loss $\\ell(h)$ exactly.",
                "标签以概率 $\\varepsilon$ 被翻转时，看到的是反向样本对（间隔 $-h$）。对翻转取平均，"
                "$\\hat{\\mathcal{L}}$ "
                "恰好还原为干净的损失 $\\ell(h)$。",
            ),
            Equal((1 - eps) * ROBUST + eps * ROBUST_FLIPPED, ell(h), via=("expand", "simplify")),
            where=ELL,
            eq="rDPO loss",
        ),
        Step(
            Text("Robust DPO is DPO minus a linear term", "稳健 DPO 等于 DPO 减去一个线性项"),
            Text(
                "Using $\\ell(-h) = \\ell(h) + \\beta h$, the loss is the DPO loss minus "
                "$\\frac{\\varepsilon}{1 - 2\\varepsilon}\\beta h$. cDPO adds $\\varepsilon\\beta h$ (the cDPO proof), "
                "which holds the margin back; robust DPO subtracts a multiple of $\\beta h$, which pushes it further.",
                "利用 $\\ell(-h) = \\ell(h) + \\beta h$，该损失等于 DPO 损失减去 "
                "$\\frac{\\varepsilon}{1 - 2\\varepsilon}\\beta h$。"
                "cDPO 加上 $\\varepsilon\\beta h$（见 cDPO 的证明），把间隔往回拉；稳健 DPO 减去 $\\beta h$ 的倍数，"
                "把间隔推得更远。",
            ),
            Equal(ROBUST, DPO_MINUS, via=("expand_log", "simplify")),
            where=ELL,
            eq="rDPO loss",
        ),
        Step(
            Text("The same curvature as DPO", "与 DPO 相同的曲率"),
            Text(
                "A linear term does not change the second derivative: $\\beta^2\\sigma(\\beta h)\\sigma(-\\beta h)$, "
                "as for DPO. The loss is strictly convex, yet convexity gives no minimiser without a stationary point.",
                "线性项不改变二阶导数：与 DPO 一样为 $\\beta^2\\sigma(\\beta h)\\sigma(-\\beta h)$。该损失严格凸，"
                "但没有驻点时凸性并不能给出最小值点。",
            ),
            Equal(
                sp.Derivative(ROBUST_EXPLICIT, h, 2), beta**2 * sigma(beta * h) * sigma(-beta * h), via=("simplify",)
            ),
            eq="rDPO loss",
        ),
        Step(
            Text("The slope is negative everywhere", "斜率处处为负"),
            Text(
                "The derivative is $-\\beta\\sigma(-\\beta h) - \\frac{\\varepsilon\\beta}{1 - 2\\varepsilon}$, "
                "negative "
                "for every real $h$: the loss has no stationary point, hence no finite minimiser.",
                "导数为 $-\\beta\\sigma(-\\beta h) - \\frac{\\varepsilon\\beta}{1 - 2\\varepsilon}$，对每个实数 $h$ "
                "都为负："
                "该损失没有驻点，因此没有有限的最小值点。",
            ),
            Negative(sp.Derivative(ROBUST_EXPLICIT, h), manifest=SLOPE, via=("simplify",)),
            eq="rDPO loss",
        ),
        Step(
            Text("The normaliser is positive", "归一化因子为正"),
            Text(
                "For $\\varepsilon < 1/2$ the denominator $1 - 2\\varepsilon$ is positive, so the loss has the sign "
                "and the limits of its numerator $(1 - \\varepsilon)\\ell(h) - \\varepsilon\\ell(-h)$.",
                "当 $\\varepsilon < 1/2$ 时分母 $1 - 2\\varepsilon$ 为正，所以损失的符号和极限与其分子 "
                "$(1 - \\varepsilon)\\ell(h) - \\varepsilon\\ell(-h)$ 相同。",
            ),
            Positive(1 - 2 * eps, restates=True),
            eq="rDPO loss",
        ),
        Step(
            Text("Unbounded below", "无下界"),
            Text(
                "As $h \\to \\infty$ the numerator tends to $-\\infty$: the loss takes negative values and falls "
                "without bound, so gradient descent never stops pushing the margin up.",
                "当 $h \\to \\infty$ 时分子趋于 $-\\infty$：损失取负值且无界下降，所以梯度下降会一直把间隔往上推。",
            ),
            Limit(NUMERATOR, h, sp.oo, -sp.oo),
            where=ELL,
            eq="rDPO loss",
        ),
        Step(
            Text("Without noise it is DPO", "无噪声时就是 DPO"),
            Text(
                "At $\\varepsilon = 0$ (outside the range the other steps assume, and accepted by `robust_loss`) the "
                "loss is the DPO loss.",
                "在 $\\varepsilon = 0$（不在其他步骤假设的范围内，`robust_loss` 接受这个值）时，该损失就是 DPO 损失。",
            ),
            Equal(sp.Subs(ROBUST, eps, 0), ell(h), via=("simplify",)),
            where=ELL,
            eq="rDPO loss",
        ),
        Step(
            Text("At preference frequency p̂: the minimiser", "偏好频率为 p̂ 时的最小值点"),
            Text(
                "The missing minimiser is that of a pair seen once. If the pair is seen with $y_w$ preferred a "
                "fraction $\\hat p$ of the time, the loss averaged over its labels is strictly convex (DPO's "
                "curvature) with the unique minimiser $\\beta h^* = \\operatorname{logit}\\tilde p$, where "
                "$\\tilde p = (\\hat p - \\varepsilon)/(1 - 2\\varepsilon)$ is the frequency with the flips "
                "removed; it "
                "exists exactly when $\\varepsilon < \\hat p < 1 - \\varepsilon$, i.e. $0 < \\tilde p < 1$. So "
                "$h^* = \\operatorname{logit}((\\hat p - \\varepsilon)/(1 - 2\\varepsilon))/\\beta$: the flips are "
                "undone "
                "before the logit. A pair seen once ($\\hat p = 1$) has $\\tilde p > 1$: no minimiser (step 6).",
                "缺失的最小值点属于只出现一次的样本对。若这一对中 $y_w$ 被偏好的频率为 $\\hat p$，对其标签取平均的损"
                "失严格凸"
                "（与 DPO 曲率相同），唯一最小值点为 $\\beta h^* = \\operatorname{logit}\\tilde p$，其中 "
                "$\\tilde p = (\\hat p - \\varepsilon)/(1 - 2\\varepsilon)$ 是去除翻转后的频率；它恰在 "
                "$\\varepsilon < \\hat p < 1 - \\varepsilon$，即 $0 < \\tilde p < 1$ 时存在。因此 "
                "$h^* = \\operatorname{logit}((\\hat p - \\varepsilon)/(1 - 2\\varepsilon))/\\beta$：先消去翻转再取 l"
                "ogit。"
                "只出现一次的样本对（$\\hat p = 1$）有 $\\tilde p > 1$：没有最小值点（第 6 步）。",
            ),
            GlobalMinimum(
                AT_FREQUENCY,
                h,
                sp.log(q_hat / (1 - q_hat)) / beta,
                curvature=beta**2 * sigma(beta * h) * sigma(-beta * h),
            ),
            where={p_hat: eps + (1 - 2 * eps) * q_hat},
            eq="rDPO loss",
        ),
    ],
    conclusion=Text(
        "`robust_loss` computes $\\hat{\\mathcal{L}}(h) = [(1-\\varepsilon)\\ell(h) - \\varepsilon\\ell(-h)]/(1 - "
        "2\\varepsilon)$: its average over label flips is the clean DPO loss, and it decreases in $h$ without bound "
        "(no finite minimiser), unlike cDPO, which has the same noise model and a finite optimum.",
        "`robust_loss` 计算 $\\hat{\\mathcal{L}}(h) = [(1-\\varepsilon)\\ell(h) - \\varepsilon\\ell(-h)]/(1 - "
        "2\\varepsilon)$：它在标签翻转上的平均是干净的 DPO 损失，且关于 $h$ 无界递减（没有有限的最小值点）；"
        "而同样噪声模型下的 cDPO 有有限的最优点。",
    ),
)


def compare() -> list:
    """robust_loss against the derived expression, its flip average against -log σ(βh), and its slope."""
    from dpo_ref.family import robust_loss

    from .numeric import Row, exact, tensors

    beta_, eps_ = 0.5, 0.2
    zero = tensors(0.0)[0].detach()
    rows = []
    for hv in (-4.0, 1.0, 10.0):
        (hs,) = tensors(hv)
        out = robust_loss(hs, zero, zero, zero, beta=beta_, label_smoothing=eps_).losses
        out.sum().backward()
        point = {h: hv, beta: beta_, eps: eps_}
        rows.append(Row(f"loss at h = {hv:g}", exact(ROBUST_EXPLICIT, point), out.item()))
        rows.append(Row(f"slope at h = {hv:g}", exact(SLOPE, point), hs.grad.item()))
        flip = robust_loss(-hs.detach(), zero, zero, zero, beta=beta_, label_smoothing=eps_).losses
        avg = ((1 - eps_) * out + eps_ * flip).item()
        rows.append(Row(f"flip average at h = {hv:g}", exact(-sp.log(sigma(beta * h)), point), avg))
    return rows
