"""19. The hinge loss: exactly zero, with zero gradient, once beta h >= 1 (RSO, Liu et al. 2023; SLiC)."""

from __future__ import annotations

import sympy as sp

from .common import beta, h
from .core import NAMES, Equal, Limit, Positive, Proof, Step, Text, bounded

# the distance of beta h from the kink at 1, shown as s (named apart: a bounded symbol is global)
s = bounded(sp.Symbol("s_hinge", positive=True), sp.Interval.open(0, sp.oo))
NAMES["s_hinge"] = ("s", "s")
HINGE = sp.Max(0, 1 - beta * h)  # what hinge_loss computes: relu(1 - beta h)
SATISFIED = {h: (1 + s) / beta}  # beta h = 1 + s > 1
ACTIVE = {h: (1 - s) / beta}  # beta h = 1 - s < 1
KINK = 1 / beta

PROOF = Proof(
    name="hinge",
    title=Text("The hinge loss and its margin", "铰链损失及其间隔"),
    intro=Text(
        "The hinge loss $\\max(0, 1 - \\beta h)$ (RSO's hinge-norm, SLiC's calibration loss) asks only for the margin "
        "$\\beta h \\ge 1$ and stops there: $1/\\beta$ is a margin in the sense of support vector machines, not a "
        "KL coefficient. The two regions are checked separately, with $\\beta h = 1 + s$ above the kink and "
        "$\\beta h = 1 - s$ below it ($s > 0$), and the kink itself on its own.",
        "铰链损失 $\\max(0, 1 - \\beta h)$（RSO 的 hinge-norm、SLiC 的校准损失）只要求间隔满足 $\\beta h \\ge 1$，"
        "达到后就不再推动：$1/\\beta$ 是支持向量机意义上的间隔，而不是 KL 系数。两个区域分开检验："
        "拐点以上取 $\\beta h = 1 + s$，以下取 $\\beta h = 1 - s$（$s > 0$），拐点本身单独检验。",
    ),
    justifies=("dpo_ref.family.hinge_loss",),
    source="slic",
    steps=[
        Step(
            Text("Past the margin the loss is zero", "越过间隔后损失为零"),
            Text(
                "For $\\beta h > 1$ the loss is exactly 0 ...",
                "当 $\\beta h > 1$ 时损失恰好为 0……",
            ),
            Equal(HINGE, 0, via=("simplify",), given=SATISFIED),
            eq="calibration loss",
        ),
        Step(
            Text("... and so is its gradient", "……梯度也为零"),
            Text(
                "... and so is its derivative: examples that already meet the margin do not move the policy.",
                "……其导数也为零：已经满足间隔的样本不会再推动策略。",
            ),
            Equal(sp.Derivative(HINGE, h), 0, via=("simplify",), given=SATISFIED),
            eq="calibration loss",
        ),
        Step(
            Text("At the kink the loss is zero", "拐点处损失为零"),
            Text(
                "At $\\beta h = 1$ the loss is 0 as well.",
                "在 $\\beta h = 1$ 处损失同样为 0。",
            ),
            Equal(sp.Subs(HINGE, h, KINK), 0),
            eq="calibration loss",
        ),
        Step(
            Text("The slope from the right of the kink", "拐点右侧的斜率"),
            Text(
                "Approaching the kink from above the derivative is 0 ...",
                "从上方趋近拐点时导数为 0……",
            ),
            Limit(sp.Derivative(HINGE, h), h, KINK, 0, "+"),
            eq="calibration loss",
        ),
        Step(
            Text("The slope from the left of the kink", "拐点左侧的斜率"),
            Text(
                "... and from below it is $-\\beta$, so the loss has no derivative at $\\beta h = 1$. "
                "`hinge_loss` uses `torch.relu`, whose gradient at 0 is 0: it takes the right-hand value, so the "
                "code's gradient is zero exactly when $\\beta h \\ge 1$.",
                "……从下方趋近时为 $-\\beta$，所以损失在 $\\beta h = 1$ 处不可导。`hinge_loss` 使用 `torch.relu`，"
                "它在 0 处的梯度取 0，即右侧的值，所以代码给出的梯度恰好在 $\\beta h \\ge 1$ 时为零。",
            ),
            Limit(sp.Derivative(HINGE, h), h, KINK, -beta, "-"),
            eq="calibration loss",
        ),
        Step(
            Text("Below the margin the loss is linear", "间隔以下损失是线性的"),
            Text(
                "For $\\beta h < 1$ the loss is $1 - \\beta h$ ...",
                "当 $\\beta h < 1$ 时损失为 $1 - \\beta h$……",
            ),
            Equal(HINGE, 1 - beta * h, via=("simplify",), given=ACTIVE),
            eq="calibration loss",
        ),
        Step(
            Text("... and positive", "……且为正"),
            Text(
                "... which is $s > 0$ there.",
                "……此时它等于 $s > 0$。",
            ),
            Positive(1 - beta * h, manifest=s, via=("expand",), given=ACTIVE),
            eq="calibration loss",
        ),
        Step(
            Text("Below the margin the slope is constant", "间隔以下斜率为常数"),
            Text(
                "The derivative is $-\\beta$ however far below the margin the example is: unlike DPO's "
                "$-\\beta\\sigma(-\\beta h)$, it does not grow for badly ranked pairs, nor fade before the margin.",
                "无论样本低于间隔多少，导数都是 $-\\beta$：与 DPO 的 $-\\beta\\sigma(-\\beta h)$ 不同，"
                "它既不会对排序很差的样本对变大，也不会在到达间隔前逐渐消失。",
            ),
            Equal(sp.Derivative(HINGE, h), -beta, via=("simplify",), given=ACTIVE),
            eq="calibration loss",
        ),
    ],
    conclusion=Text(
        "`hinge_loss` computes $\\max(0, 1 - \\beta h)$: zero with zero gradient when $\\beta h \\ge 1$ (at "
        "$\\beta h = 1$ the gradient is the right-hand derivative 0, as `torch.relu` defines it), and "
        "$1 - \\beta h > 0$ with slope $-\\beta$ otherwise.",
        "`hinge_loss` 计算 $\\max(0, 1 - \\beta h)$：当 $\\beta h \\ge 1$ 时损失与梯度都为零（在 $\\beta h = 1$ 处，"
        "梯度取右导数 0，这是 `torch.relu` 的约定）；否则损失为 $1 - \\beta h > 0$，斜率为 $-\\beta$。",
    ),
)


def compare() -> list:
    """hinge_loss and its autograd gradient on both sides of the kink and at the kink itself."""
    from dpo_ref.family import hinge_loss

    from .numeric import Row, exact, tensors

    beta_ = 0.5  # the kink at h = 2, exactly representable
    zero = tensors(0.0)[0].detach()
    rows = []
    for hv in (-3.0, 1.0, 2.0, 2.5, 7.0):
        (hs,) = tensors(hv)
        out = hinge_loss(hs, zero, zero, zero, beta=beta_).losses
        out.sum().backward()
        rows.append(Row(f"loss at h = {hv:g}", exact(HINGE, {h: hv, beta: beta_}), out.item()))
        slope = exact(-beta, {beta: beta_}) if beta_ * hv < 1 else 0.0  # the derived slope on each side
        rows.append(Row(f"slope at h = {hv:g}", slope, hs.grad.item()))
    return rows
