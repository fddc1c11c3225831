"""IPO: a squared loss with a finite target (Azar et al. 2023, Sec. 5.2, Eq. 17; the D1 example of Sec. 5.4)."""

from __future__ import annotations

import sympy as sp

from .common import h, tau
from .core import Equal, GlobalMinimum, PositiveDefinite, Proof, Step, SystemSolution, Text

# Each observed pair y_w > y_l is a regression example in both orders: the ordered pair (y_w, y_l) with
# preference indicator 1 and margin h, and (y_l, y_w) with indicator 0 and margin -h; the target is I / tau.
SYMMETRISED = sp.Rational(1, 2) * ((h - 1 / tau) ** 2 + (-h - 0 / tau) ** 2)
IPO_LOSS = (h - 1 / (2 * tau)) ** 2  # the claimed per-pair loss ...
CONSTANT = 1 / (4 * tau**2)  # ... up to this constant
H_STAR = 1 / (2 * tau)
GAP_STAR = 1 / (3 * tau)

# A tabular softmax policy over three responses {a, b, c} and a uniform reference.
th_a, th_b, th_c = sp.symbols("theta_a theta_b theta_c", real=True)
d1, d2 = sp.symbols("d_1 d_2", real=True)  # the gaps of the softmax parameters theta_a - theta_b and theta_b - theta_c
_norm = sp.exp(th_a) + sp.exp(th_b) + sp.exp(th_c)
PAIRS = (("a", "b"), ("b", "c"), ("a", "c"))
LSQ_GAPS = (d1 - H_STAR) ** 2 + (d2 - H_STAR) ** 2 + (d1 + d2 - H_STAR) ** 2  # the claimed form

# abbreviations shown in the steps: the policy's probabilities, and the objective as a function of the gaps
pi_k = dict(zip("abc", sp.symbols("pi_a pi_b pi_c", positive=True)))
SOFTMAX = {pi_k[k]: sp.exp(t) / _norm for k, t in zip("abc", (th_a, th_b, th_c))}
SHIFT = {th_a: th_c + d1 + d2, th_b: th_c + d2}
L_GAPS = sp.Function("L")(d1, d2)
LSQ_SHOWN = sp.Add(
    *[(sp.log(pi_k[w] / sp.Rational(1, 3)) - sp.log(pi_k[l] / sp.Rational(1, 3)) - H_STAR) ** 2 for w, l in PAIRS]
)

PROOF = Proof(
    name="ipo",
    title=Text("IPO: identity preference optimisation", "IPO：恒等偏好优化"),
    intro=Text(
        "IPO replaces the log-likelihood by a squared regression of the margin $h$ onto the preference "
        "indicator scaled by $1/\\tau$, where $\\tau > 0$ is IPO's regularisation coefficient (the role "
        "$\\beta$ plays in DPO). The target is finite, so unlike DPO (previous proof) a deterministic "
        "preference has a finite optimum, and $\\tau$ controls how far the policy moves from the reference.",
        "IPO 把对数似然换成平方回归：把间隔 $h$ 回归到按 $1/\\tau$ 缩放的偏好指示变量上，其中 $\\tau > 0$ 是 IPO "
        "的正则化系数（相当于 DPO 中的 $\\beta$）。目标是有限的，所以与 DPO 不同（见上一个证明），"
        "确定性偏好也有有限的最优点，并且由 $\\tau$ 控制策略偏离参考策略的程度。",
    ),
    justifies=("dpo_ref.losses.ipo_losses_from_margin", "dpo_ref.losses.ipo_loss", "dpo_ref.losses.ipo_target_margin"),
    source="ipo",
    steps=[
        Step(
            Text("The empirical loss of one observed pair", "单个观测样本对的经验损失"),
            Text(
                "The pair enters in both orders: $(y_w, y_l)$ with indicator 1 and margin $h$, "
                "$(y_l, y_w)$ with indicator 0 and margin $-h$. Averaging the two squared errors and "
                "completing the square gives the IPO loss plus a constant.",
                "这一对以两种顺序出现：$(y_w, y_l)$ 的指示变量为 1、间隔为 $h$；$(y_l, y_w)$ 的指示变量为 0、"
                "间隔为 $-h$。对两个平方误差取平均并配方，得到 IPO 损失加一个常数。",
            ),
            Equal(SYMMETRISED, IPO_LOSS + CONSTANT, via=("expand",)),
            eq="Eq. 17",
        ),
        Step(
            Text("The per-pair minimiser", "单个样本对的最小值点"),
            Text(
                "The IPO loss is a parabola in $h$ with its minimum 0 at $h^* = 1/(2\\tau)$: finite for every "
                "$\\tau > 0$, and smaller for stronger regularisation (larger $\\tau$).",
                "IPO 损失是关于 $h$ 的抛物线，在 $h^* = 1/(2\\tau)$ 处取得最小值 0：对每个 $\\tau > 0$ 都有限，"
                "正则化越强（$\\tau$ 越大）它越小。",
            ),
            GlobalMinimum(IPO_LOSS, h, H_STAR, value=0),
            eq="Eq. 17",
        ),
        Step(
            Text("Softmax normaliser cancels in a log-ratio", "softmax 的归一化项在对数比值中约去"),
            Text(
                "For a tabular softmax policy $\\pi(k) \\propto e^{\\theta_k}$ over three responses $a, b, c$ "
                "and a uniform reference, the margin of the pair $(a, b)$ is the gap $\\theta_a - \\theta_b$ of the "
                "softmax parameters.",
                "对于三个回答 $a, b, c$ 上的表格型 softmax 策略 $\\pi(k) \\propto e^{\\theta_k}$ 和均匀的参考策略，"
                "$(a, b)$ 这一对的间隔就是 softmax 参数之差 $\\theta_a - \\theta_b$。",
            ),
            Equal(
                sp.log(pi_k["a"] / sp.Rational(1, 3)) - sp.log(pi_k["b"] / sp.Rational(1, 3)),
                th_a - th_b,
                via=("expand_log",),
            ),
            where=SOFTMAX,
            eq="§5.4",
        ),
        Step(
            Text("Least squares over three pairs depends only on the gaps", "三对样本上的最小二乘只依赖于参数之差"),
            Text(
                "Train on the pairs $(a, b)$, $(b, c)$, $(a, c)$, each seen once with its first response "
                "preferred. Writing "
                "$\\theta_a = \\theta_c + d_1 + d_2$, $\\theta_b = \\theta_c + d_2$, the summed IPO loss "
                "is a quadratic in the gaps alone; $\\theta_c$ drops out (softmax is shift invariant).",
                "在 $(a, b)$、$(b, c)$、$(a, c)$ 三对上训练，每对各出现一次，且前一个回答被偏好。令 "
                "$\\theta_a = \\theta_c + d_1 + d_2$，$\\theta_b = \\theta_c + d_2$，则 IPO 损失之和是只关于"
                " 参数之差 $d_1, d_2$ 的二次函数，$\\theta_c$ 被消去（softmax 具有平移不变性）。",
            ),
            Equal(LSQ_SHOWN, LSQ_GAPS, via=("expand_log", "expand")),
            where={**SOFTMAX, **SHIFT},
            eq="§5.4",
        ),
        Step(
            Text("The normal equations", "正规方程"),
            Text(
                "Setting the gradient of this quadratic to zero has "
                "exactly one solution: both gaps equal $1/(3\\tau)$.",
                "令这个二次函数的梯度为零，恰有一个解：两个差都等于 $1/(3\\tau)$。",
            ),
            SystemSolution(
                [sp.Derivative(L_GAPS, d1), sp.Derivative(L_GAPS, d2)], [d1, d2], {d1: GAP_STAR, d2: GAP_STAR}
            ),
            where={L_GAPS: LSQ_GAPS},
            eq="§5.4",
        ),
        Step(
            Text("The stationary point is the minimum", "驻点就是最小值点"),
            Text(
                "The Hessian in $(d_1, d_2)$ is constant and positive definite, so the objective is strictly "
                "convex and the stationary point is its unique minimiser. The pairwise targets conflict: "
                "$(a, c)$ ends at $2/(3\\tau)$, not $1/(2\\tau)$, and least squares balances them.",
                "关于 $(d_1, d_2)$ 的黑塞矩阵是常数且正定，所以目标函数严格凸，驻点是唯一的最小值点。"
                "各对的目标相互冲突：$(a, c)$ 最终的间隔是 $2/(3\\tau)$ 而不是 $1/(2\\tau)$，最小二乘在它们之间折中。",
            ),
            PositiveDefinite(
                sp.Matrix(2, 2, lambda j, k: sp.Derivative(L_GAPS, (d1, d2)[j], (d1, d2)[k])),
                manifest=sp.Matrix([[4, 2], [2, 4]]),
            ),
            where={L_GAPS: LSQ_GAPS},
            eq="§5.4",
        ),
    ],
    conclusion=Text(
        "Per pair, $\\mathcal{L}_{\\mathrm{IPO}} = (h - "
        "1/(2\\tau))^2$, which is `ipo_losses_from_margin(margin, tau)`; "
        "its minimiser $h^* = 1/(2\\tau)$ is finite even for a deterministic preference.",
        "对每一对，$\\mathcal{L}_{\\mathrm{IPO}} = (h - 1/(2\\tau))^2$，即 `ipo_losses_from_margin(margin, tau)`；"
        "即使偏好是确定性的，其最小值点 $h^* = 1/(2\\tau)$ 也是有限的。",
    ),
)


def compare() -> list:
    """ipo_losses_from_margin against the symmetrised regression loss (minus its constant), and its
    minimum 0 at h* = 1/(2τ)."""
    from dpo_ref.losses import ipo_losses_from_margin

    from .numeric import Row, exact, tensors

    tau_ = 0.25
    rows = []
    for hv in (-1.0, 0.5, 4.0):
        (hs,) = tensors(hv)
        want = exact(SYMMETRISED - CONSTANT, {h: hv, tau: tau_})
        rows.append(Row(f"loss at h = {hv:g}", want, ipo_losses_from_margin(hs, tau_).item()))
    (hs,) = tensors(exact(H_STAR, {tau: tau_}))
    rows.append(Row("loss at h* = 1/(2τ)", 0.0, ipo_losses_from_margin(hs, tau_).item()))
    return rows
