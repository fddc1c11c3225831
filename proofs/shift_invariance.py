"""21. Adding f(x) to both policy log-probs: the margin losses are invariant, the log-ratio losses are not."""

from __future__ import annotations

import sympy as sp

from .common import LOGPS, beta, margin, sigma
from .core import Equal, FreeOf, Positive, Proof, Step, Text

a_w, a_l, b_w, b_l = LOGPS
f = sp.Symbol("f", real=True)  # f(x): a function of the prompt only, added to log pi(y_w) and log pi(y_l)
rho_w, rho_l = sp.symbols("rho_w rho_l", real=True)  # the two log-ratios
delta = sp.Symbol("delta", real=True)  # BCO's reward shift
LN2 = sp.log(2) / beta  # a log-ratio with sigma(beta rho_w) = 2/3


def shifted(loss: sp.Expr) -> sp.Expr:
    """The loss after adding f to both policy log-probs, i.e. to both log-ratios."""
    return loss.subs({rho_w: rho_w + f, rho_l: rho_l + f}, simultaneous=True)


def rate(loss: sp.Expr, **at: sp.Expr) -> sp.Subs:
    """d/df of the shifted loss at f = 0 (and at the given log-ratios), shown unevaluated."""
    point = {f: 0, **{{"rho_w": rho_w, "rho_l": rho_l}[k]: v for k, v in at.items()}}
    return sp.Subs(sp.Derivative(shifted(loss), f), tuple(point), tuple(point.values()))


# The losses on the two log-ratios separately, as dpo_ref.family computes them.
NCA = -sp.log(sigma(beta * rho_w)) - sp.log(sigma(-beta * rho_w)) / 2 - sp.log(sigma(-beta * rho_l)) / 2
NCA_RATE = -beta * sigma(-beta * rho_w) + beta * sigma(beta * rho_w) / 2 + beta * sigma(beta * rho_l) / 2
APO_ZERO = 1 - sigma(beta * rho_w) + sigma(beta * rho_l)
APO_DOWN = sigma(beta * rho_w) + 1 - sigma(beta * (rho_w - rho_l))
BCO = -sp.log(sigma(beta * rho_w - delta)) - sp.log(sigma(-(beta * rho_l - delta)))

PROOF = Proof(
    name="shift-invariance",
    title=Text("Adding f(x) to both log-probabilities", "给两个对数概率都加上 f(x)"),
    intro=Text(
        "Preference data cannot tell apart two policies whose log-probabilities for a prompt differ by the same "
        "$f(x)$ on both responses (the reward-equivalence proof). A loss of the margin $h$ alone is blind to that "
        "difference; a loss that scores the log-ratios $\\rho_w$ and $\\rho_l$ separately is not. This proof shows "
        "both: "
        "the margin does not depend on $f$, and for NCA, APO-zero, APO-down and BCO the rate of change in $f$ is "
        "computed and shown to be nonzero at a point (for hard SPPO see its own proof).",
        "偏好数据无法区分两个策略，如果它们对同一提示下两个回答的对数概率都相差同一个 $f(x)$（见奖励等价的证明）。"
        "只依赖间隔 $h$ 的损失看不到这种差别；而分别给对数比值 $\\rho_w$、$\\rho_l$ 打分的损失则能看到。本证明两者都"
        "说明"
        "："
        "间隔与 $f$ 无关；对 NCA、APO-zero、APO-down 与 BCO，计算了损失关于 $f$ 的变化率，并在某一点上证明它不为零"
        "（硬 SPPO 见其自身的证明）。",
    ),
    justifies=(
        "dpo_ref.losses.preference_margin",
        "dpo_ref.family.nca_pair_loss",
        "dpo_ref.family.apo_zero_loss",
        "dpo_ref.family.apo_down_loss",
        "dpo_ref.family.bco_pair_loss",
    ),
    source="trl",
    steps=[
        Step(
            Text("The margin does not see f(x)", "间隔看不到 f(x)"),
            Text(
                "Adding $f$ to both policy log-probabilities leaves the margin unchanged. So every loss that is a "
                "function of $h$ alone, here DPO, cDPO, IPO on $h$, hinge, EXO, robust DPO and DiscoPOP, is "
                "invariant. (TRL's length-normalised `ipo` and `sigmoid_norm` use $\\bar h$, which adds "
                "$f/n_w - f/n_l$: invariant only when $n_w = n_l$; not checked here.)",
                "给两个策略对数概率都加上 $f$，间隔不变。所以每个只依赖 $h$ 的损失都具有不变性，"
                "这里包括 DPO、cDPO、以 $h$ 为自变量的 IPO、hinge、EXO、稳健 DPO 与 DiscoPOP。"
                "（TRL 的长度归一化 `ipo` 与 `sigmoid_norm` 使用 $\\bar h$，它会增加 $f/n_w - f/n_l$："
                "只有 $n_w = n_l$ 时才不变；此处未检验。）",
            ),
            FreeOf(margin(a_w + f, a_l + f, b_w, b_l), f),
            eq="sigmoid",
        ),
        Step(
            Text("NCA's rate of change in f", "NCA 关于 f 的变化率"),
            Text(
                "NCA scores each log-ratio on its own. Adding $f$ changes it at rate "
                "$-\\beta\\sigma(-\\beta \\rho_w) + \\frac{\\beta}{2}(\\sigma(\\beta \\rho_w) + \\sigma(\\beta "
                "\\rho_l))$ ...",
                "NCA 分别给每个对数比值打分。加上 $f$ 时它的变化率为 "
                "$-\\beta\\sigma(-\\beta \\rho_w) + \\frac{\\beta}{2}(\\sigma(\\beta \\rho_w) + \\sigma(\\beta "
                "\\rho_l))$……",
            ),
            Equal(rate(NCA), NCA_RATE, via=("simplify",)),
            eq="NCA loss",
            paper="nca",
        ),
        Step(
            Text("NCA is not invariant", "NCA 不具有不变性"),
            Text(
                "... which is 0 at $\\rho_w = \\rho_l = 0$ but $\\beta/3$ at $\\rho_w = \\rho_l = \\ln 2/\\beta$: "
                "adding $f(x)$ "
                "changes NCA's loss.",
                "……它在 $\\rho_w = \\rho_l = 0$ 时为 0，但在 $\\rho_w = \\rho_l = \\ln 2/\\beta$ 时为 $\\beta/3$：加上 "
                "$f(x)$ 会改变 "
                ""
                "NCA 的损失。",
            ),
            Equal(rate(NCA, rho_w=LN2, rho_l=LN2), beta / 3, via=("simplify",)),
            eq="NCA loss",
            paper="nca",
        ),
        Step(
            Text("APO-zero is not invariant", "APO-zero 不具有不变性"),
            Text(
                "APO-zero's rate of change in $f$ at $\\rho_w = 0$, $\\rho_l = \\ln 2/\\beta$ is $-\\beta/36$.",
                "APO-zero 在 $\\rho_w = 0$、$\\rho_l = \\ln 2/\\beta$ 处关于 $f$ 的变化率为 $-\\beta/36$。",
            ),
            Equal(rate(APO_ZERO, rho_w=0, rho_l=LN2), -beta / 36, via=("simplify",)),
            eq="Eq. 7",
            paper="apo",
        ),
        Step(
            Text("APO-down always moves with f", "APO-down 总随 f 变化"),
            Text(
                "APO-down's second term depends on the margin only, so its rate of change is that of "
                "$\\sigma(\\beta \\rho_w)$: positive for every $\\rho_w$. Lowering both likelihoods by the same amount "
                "always lowers the loss.",
                "APO-down 的第二项只依赖间隔，所以它的变化率就是 $\\sigma(\\beta \\rho_w)$ 的变化率：对每个 $\\rho_w$ "
                "都为正"
                "。"
                "把两个似然降低同样的量总会降低损失。",
            ),
            Positive(rate(APO_DOWN), manifest=beta * sigma(beta * rho_w) * sigma(-beta * rho_w), via=("simplify",)),
            eq="Eq. 8",
            paper="apo",
        ),
        Step(
            Text("BCO is not invariant", "BCO 不具有不变性"),
            Text(
                "BCO's rate of change in $f$ at $\\rho_w = \\ln 2/\\beta$, $\\rho_l = 0$ with reward shift "
                "$\\delta = 0$ "
                "(TRL's choice) is $\\beta/6$.",
                "BCO 在 $\\rho_w = \\ln 2/\\beta$、$\\rho_l = 0$、奖励平移 $\\delta = 0$（TRL 的选择）处关于 $f$ 的变"
                "化率为 "
                ""
                "$\\beta/6$。",
            ),
            Equal(rate(BCO.subs(delta, 0), rho_w=LN2, rho_l=0), beta / 6, via=("simplify",)),
            eq="bco_pair",
        ),
    ],
    conclusion=Text(
        "`preference_margin` is unchanged by adding $f(x)$ to both policy log-probabilities, so every loss of the "
        "margin alone is invariant; `nca_pair_loss`, `apo_zero_loss`, `apo_down_loss` and `bco_pair_loss` are not.",
        "给两个策略对数概率都加上 $f(x)$ 时 `preference_margin` 不变，所以只依赖间隔的损失都具有不变性；"
        "`nca_pair_loss`、`apo_zero_loss`、`apo_down_loss` 与 `bco_pair_loss` 则不然。",
    ),
)


def compare() -> list:
    """Each log-ratio loss and its change when f is added to both policy log-probs, the code's against the
    derived expression's (the value too: BCO with chosen and rejected swapped differs by beta h, which no
    shift changes); and the margin and its change, which must be 0."""
    from dpo_ref.family import apo_down_loss, apo_zero_loss, bco_pair_loss, nca_pair_loss
    from dpo_ref.losses import preference_margin

    from .numeric import Row, exact, tensors

    beta_, f_ = 0.5, 0.75
    logps = (-3.0, -5.0, -4.0, -4.5)  # rho_w = 1, rho_l = -0.5
    base, moved = tensors(*logps), tensors(logps[0] + f_, logps[1] + f_, *logps[2:])
    point = {rho_w: 1.0, rho_l: -0.5, beta: beta_}
    rows = [
        Row("margin", exact(margin(a_w, a_l, b_w, b_l), dict(zip(LOGPS, logps))), preference_margin(*base).item()),
        Row("margin change", 0.0, (preference_margin(*moved) - preference_margin(*base)).item()),
    ]
    for name, fn, expr in (
        ("nca_pair", nca_pair_loss, NCA),
        ("apo_zero", apo_zero_loss, APO_ZERO),
        ("apo_down", apo_down_loss, APO_DOWN),
        ("bco_pair", bco_pair_loss, BCO.subs(delta, 0)),
    ):
        value = fn(*base, beta=beta_).losses
        rows.append(Row(f"{name} at rho_w = 1, rho_l = -0.5", exact(expr, point), value.item()))
        got = (fn(*moved, beta=beta_).losses - value).item()
        want = exact(shifted(expr), {**point, f: f_}) - exact(expr, point)
        rows.append(Row(f"{name} change when f = {f_:g}", want, got))
    return rows
