"""The partition function cancels in Bradley-Terry and Plackett-Luce (Rafailov et al. 2023, Eq. 6; App. A.3,
Eqs. 18-19)."""

from __future__ import annotations

import itertools

import sympy as sp

from .common import Z, beta, bradley_terry, plackett_luce, sigma
from .core import NAMES, Equal, FreeOf, Proof, Step, Text

r_w, r_l = sp.symbols("r(y_w) r(y_l)", real=True)  # rewards; rho_w, rho_l are the family's log-ratios
# policy and reference probabilities of the chosen (w) and rejected (l) responses
pi_w, pi_l, ref_w, ref_l = sp.symbols("pi_w pi_l pi^ref_w pi^ref_l", positive=True)


def reparam(pol: sp.Expr, ref: sp.Expr) -> sp.Expr:
    """r = beta log(pi/pi_ref) + beta log Z (proof reward-reparam)."""
    return beta * sp.log(pol / ref) + beta * sp.log(Z)


BT_REPARAM = bradley_terry(reparam(pi_w, ref_w), reparam(pi_l, ref_l))
H = sp.log(pi_w) - sp.log(ref_w) - (sp.log(pi_l) - sp.log(ref_l))  # the margin, as preference_margin groups it

# Plackett-Luce over K = 3 responses, written with the implicit rewards r_hat_i = beta log(pi_i / pi_ref_i)
r3 = sp.symbols("r_1:4", real=True)
rhat3 = sp.symbols("rhat_1:4", real=True)
RANKINGS = list(itertools.permutations(range(3)))
PL_REPARAM = plackett_luce([rh + beta * sp.log(Z) for rh in rhat3], (0, 1, 2))
# a ranking (omega_1, omega_2, omega_3): the best response first; every one of the 3! is checked
omega = sp.symbols("omega_1:4", integer=True, positive=True)
RH = sp.IndexedBase("rhat", real=True)
NAMES["rhat"] = (r"\hat r", "r̂")
PL_RANKED_REPARAM = plackett_luce([RH[o] + beta * sp.log(Z) for o in omega], (0, 1, 2))
PL_RANKED_POLICY = plackett_luce([RH[o] for o in omega], (0, 1, 2))
ALL_RANKINGS = [dict(zip(omega, (a + 1 for a in rk))) for rk in RANKINGS]

PROOF = Proof(
    name="bt-cancellation",
    title=Text(
        "The partition function cancels in Bradley–Terry and Plackett–Luce",
        "配分函数在布拉德利-特里模型与普拉克特-卢斯模型中约去",
    ),
    intro=Text(
        "Preference models compare responses to the same prompt: in a pair, the chosen response $y_w$ "
        "and the rejected one $y_l$. Substituting the reparameterised reward into them, the intractable "
        "$Z(x)$ (a sum over every possible response) appears in every term and cancels, leaving only "
        "policy log-ratios that we can compute.",
        "偏好模型比较的是同一提示下的不同回答：在一对中，是被选回答 $y_w$ 与被拒回答 $y_l$。"
        "把重参数化后的奖励代入这些模型，难以计算的 $Z(x)$（对所有可能回答求和）出现在每一项中并被约去，"
        "只剩下可以计算的策略对数比值。",
    ),
    justifies=("dpo_ref.losses.preference_margin", "dpo_ref.losses.dpo_losses_from_margin"),
    source="dpo",
    steps=[
        Step(
            Text(
                "Bradley–Terry is a logistic model of the reward difference", "布拉德利-特里模型是奖励差的逻辑斯谛模型"
            ),
            Text(
                "Dividing numerator and denominator by $e^{r(y_w)}$ shows that only $r(y_w) - r(y_l)$ matters.",
                "分子分母同除以 $e^{r(y_w)}$，可见只有 $r(y_w) - r(y_l)$ 起作用。",
            ),
            Equal(bradley_terry(r_w, r_l), sigma(r_w - r_l), via=("expand", "cancel")),
            eq="Eq. 1",
        ),
        Step(
            Text("Substitute the reparameterised reward", "代入重参数化的奖励"),
            Text(
                "With $r = \\beta\\log(\\pi/\\pi_{\\mathrm{ref}}) + \\beta\\log Z$ the preference probability "
                "becomes the logistic function of $\\beta h$, where $h$ is the preference margin.",
                "代入 $r = \\beta\\log(\\pi/\\pi_{\\mathrm{ref}}) + \\beta\\log Z$ 后，偏好概率变成 $\\beta h$ "
                "的逻辑斯谛函数，其中 $h$ 是偏好间隔（margin）。",
            ),
            Equal(BT_REPARAM, sigma(beta * H), via=("expand_log", "expand", "cancel")),
            eq="Eq. 6",
        ),
        Step(
            Text("The partition function cancels", "配分函数被约去"),
            Text(
                "Although the left-hand side above is written with $Z$, its derivative in $Z$ is zero: "
                "the preference probability does not depend on the partition function.",
                "虽然上式左边写着 $Z$，它对 $Z$ 的导数却为零：偏好概率与配分函数无关。",
            ),
            FreeOf(BT_REPARAM, Z, via=("expand", "powsimp", "cancel")),
            eq="Eq. 6",
        ),
        Step(
            Text("Plackett–Luce is a distribution over rankings (K = 3)", "普拉克特-卢斯模型是排序上的分布（K = 3）"),
            Text(
                "The Plackett–Luce model picks the best response, then the best of the rest, and so on. "
                "Its probabilities over the $3! = 6$ rankings sum to one.",
                "普拉克特-卢斯模型先选出最好的回答，再从剩下的回答中选出最好的，依此类推。"
                "它在 $3! = 6$ 种排序上的概率之和为 1。",
            ),
            Equal(sp.Add(*[plackett_luce(list(r3), rk) for rk in RANKINGS]), 1, via=("cancel",)),
            eq="Eq. 18",
        ),
        Step(
            Text("Substitute the reparameterised reward into Plackett–Luce", "把重参数化奖励代入普拉克特-卢斯模型"),
            Text(
                "Write $r_i = \\hat r_i + \\beta\\log Z$ with the implicit reward "
                "$\\hat r_i = \\beta\\log(\\pi_i/\\pi^{\\mathrm{ref}}_i)$. Every exponential gains the same "
                "factor $Z^\\beta$, which cancels within each fraction; checked for all $3! = 6$ rankings "
                "$(\\omega_1, \\omega_2, \\omega_3)$ (best first).",
                "记 $r_i = \\hat r_i + \\beta\\log Z$，其中隐式奖励 $\\hat "
                "r_i = \\beta\\log(\\pi_i/\\pi^{\\mathrm{ref}}_i)$。"
                "每个指数项都多出同一个因子 $Z^\\beta$，在每个分式内约去；"
                "对全部 $3! = 6$ 种排序 $(\\omega_1, \\omega_2, \\omega_3)$（最好的在前）逐一检验。",
            ),
            Equal(PL_RANKED_REPARAM, PL_RANKED_POLICY, via=("expand", "cancel"), cases=ALL_RANKINGS),
            eq="Eq. 19",
        ),
        Step(
            Text("Plackett–Luce does not depend on Z either", "普拉克特-卢斯概率同样与 Z 无关"),
            Text(
                "The derivative in $Z$ of the substituted ranking probability is zero.",
                "代入后的排序概率对 $Z$ 的导数为零。",
            ),
            FreeOf(PL_REPARAM, Z, via=("expand", "cancel")),
            eq="Eq. 19",
        ),
    ],
    conclusion=Text(
        "The preference probability is $\\sigma(\\beta h)$ with "
        "$h = (\\log\\pi(y_w) - \\log\\pi_{\\mathrm{ref}}(y_w)) - (\\log\\pi(y_l) - \\log\\pi_{\\mathrm{ref}}(y_l))$, "
        "exactly what `preference_margin` computes and `dpo_losses_from_margin` feeds to the logistic function.",
        "偏好概率为 $\\sigma(\\beta h)$，其中 "
        "$h = (\\log\\pi(y_w) - \\log\\pi_{\\mathrm{ref}}(y_w)) - (\\log\\pi(y_l) - \\log\\pi_{\\mathrm{ref}}(y_l))$，"
        "这正是 `preference_margin` 计算的量，也是 `dpo_losses_from_margin` 送入逻辑斯谛函数的量。",
    ),
)


def compare() -> list:
    """-log of Bradley-Terry on the reparameterised rewards, for three very different Z, against
    dpo_losses_from_margin(preference_margin(...)): the same number, whatever Z."""
    from dpo_ref.losses import dpo_losses_from_margin, preference_margin

    from .numeric import Row, exact, tensors

    probs = {pi_w: 0.2, pi_l: 0.05, ref_w: 0.1, ref_l: 0.3, beta: 0.5}
    logs = [float(sp.log(probs[s])) for s in (pi_w, pi_l, ref_w, ref_l)]
    code = dpo_losses_from_margin(preference_margin(*tensors(*logs)), 0.5).item()
    return [
        Row(f"−log BT(reparameterised rewards), Z = {zv:g}", exact(-sp.log(BT_REPARAM), {**probs, Z: zv}), code)
        for zv in (1e-3, 1.0, 50.0)
    ]
