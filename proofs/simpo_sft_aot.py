"""24. SimPO, AOT and the SFT term: the gradients and fixed points their code relies on (Meng et al. 2024, Eq. 6;
Melnyk et al. 2024; TRL's sft loss)."""

from __future__ import annotations

import sympy as sp

from .common import beta, eps, sigma
from .core import NAMES, Equal, GlobalMinimum, Limit, Proof, Step, Text

# SimPO: reference-free, length-normalised; A_w, A_l = log pi(y_w), log pi(y_l), n_w, n_l scored-token counts
A_w, A_l = sp.symbols("A_w A_l", real=True)
n_w, n_l = sp.symbols("n_w n_l", positive=True)
gamma = sp.Symbol("gamma", nonnegative=True)
SIMPO_Z = beta * A_w / n_w - beta * A_l / n_l - gamma
SIMPO = -sp.log(sigma(SIMPO_Z))
# AOT: the loss of quantile i on the sorted difference delta = sort(u)_i - sort(v)_i
delta = sp.Symbol("delta", real=True)
AOT = -(1 - eps) * sp.log(sigma(beta * delta)) - eps * sp.log(sigma(-beta * delta))
# sft: B examples, chosen log-probs A_i and token counts N_i
B = sp.Symbol("B", integer=True, positive=True)
i, k = sp.symbols("i k", integer=True, positive=True)
A, N = sp.IndexedBase("A", real=True), sp.IndexedBase("N", positive=True)
nbar = sp.Symbol("nbar", positive=True)
NAMES.update({"nbar": ("\\bar n", "n̄")})
TOKEN_MEAN = -sp.Sum(A[i], (i, 1, B)) / sp.Sum(N[i], (i, 1, B))  # TRL: mean NLL over every chosen token

PROOF = Proof(
    name="simpo-sft-aot",
    title=Text("SimPO, AOT and the SFT term: gradients and fixed points", "SimPO、AOT 与 SFT 项：梯度与不动点"),
    intro=Text(
        "Three family members whose code is right for a reason other than a closed-form optimum. SimPO "
        "(Meng et al. 2024) is DPO on length-normalised log-probabilities without a reference, shifted by a "
        "target margin $\\gamma$: its code relies on its gradient, and like DPO it has no finite minimiser. AOT "
        "(Melnyk et al. 2024) applies cDPO's loss to the sorted differences of a batch, one loss per quantile: "
        "the sort has no closed form, but each quantile's loss has cDPO's gradient and optimum. The SFT term "
        "returns per-example shares of TRL's token-mean negative log-likelihood: their mean is that token mean "
        "for any batch size, so their gradients are its gradient.",
        "三个损失族成员，其代码正确的依据不是闭式最优点。SimPO（Meng 等，2024）是在长度归一化的对数概率上、不带参考"
        "策略、并以目标间隔 $\\gamma$ 平移的 DPO：其代码依赖它的梯度，而且与 DPO 一样没有有限的最小值点。AOT（Melnyk "
        "等，2024）把 cDPO 的损失用在一个批次排序后的差上，每个分位数一个损失：排序没有闭式形式，但每个分位数的损失"
        "具有 cDPO 的梯度与最优点。SFT 项返回 TRL 按词元平均的负对数似然的逐样本份额：对任意批大小，它们的均值就是这个"
        "词元平均，所以它们的梯度就是它的梯度。",
    ),
    justifies=(
        "dpo_ref.family.simpo_loss",
        "dpo_ref.family.aot_loss",
        "dpo_ref.family.aot_unpaired_loss",
        "dpo_ref.family.sft_loss",
    ),
    source="simpo",
    steps=[
        Step(
            Text("SimPO: the gradient in the chosen log-probability", "SimPO：对被选中回答对数概率的梯度"),
            Text(
                "The chosen response's log-probability is pushed up with weight $\\beta/n_w$ times the probability "
                "the model assigns to the wrong order: longer responses move less per token.",
                "被选中回答的对数概率被推高，权重为 $\\beta/n_w$ 乘以模型给错误顺序的概率：回答越长，每个词元移动得越"
                "少。",
            ),
            Equal(sp.Derivative(SIMPO, A_w), -beta / n_w * sigma(-SIMPO_Z), via=("exp", "simplify")),
            eq="Eq. 6",
        ),
        Step(
            Text("SimPO: the gradient in the rejected log-probability", "SimPO：对被拒绝回答对数概率的梯度"),
            Text(
                "... and the rejected one's is pushed down with weight $\\beta/n_l$; no reference enters either.",
                "……被拒绝回答的对数概率以权重 $\\beta/n_l$ 被压低；两者都不涉及参考策略。",
            ),
            Equal(sp.Derivative(SIMPO, A_l), beta / n_l * sigma(-SIMPO_Z), via=("exp", "simplify")),
            eq="Eq. 6",
        ),
        Step(
            Text("SimPO: no finite minimiser", "SimPO：没有有限的最小值点"),
            Text(
                "The loss tends to 0 as the chosen log-probability grows, whatever $\\gamma$: like DPO on a pair "
                "seen once, it has no finite minimiser; $\\gamma$ only shifts where the weight $\\sigma(-z)$ is half.",
                "无论 $\\gamma$ 取何值，当被选中回答的对数概率增大时损失都趋于 0：与只出现一次的样本对上的 DPO 一样，"
                "它没有"
                "有限的最小值点；$\\gamma$ 只是平移了权重 $\\sigma(-z)$ 等于一半的位置。",
            ),
            Limit(SIMPO, A_w, sp.oo, 0),
            eq="Eq. 6",
        ),
        Step(
            Text("AOT: a quantile's gradient is cDPO's", "AOT：每个分位数的梯度就是 cDPO 的梯度"),
            Text(
                "For the quantile difference $\\delta$ of the sorted policy and reference log-likelihood ratios "
                "(paired AOT), or of the sorted chosen and rejected log-ratios $\\rho_w$, $\\rho_l$ (unpaired AOT), "
                "the "
                "loss is cDPO's in $\\delta$; autograd through the sort routes this slope to the examples at "
                "that quantile.",
                "对策略与参考策略对数似然比排序后的分位数之差 $\\delta$（成对 AOT），或被选中与被拒绝回答对数比值 "
                "$\\rho_w$、$\\rho_l$ 排序后的分位数之差（非成对 AOT），损失就是 cDPO 关于 $\\delta$ 的损失；"
                "经过排序的自动微分把这个斜率传给处在该分位数的样本。",
            ),
            Equal(
                sp.Derivative(AOT, delta),
                -beta * ((1 - eps) * sigma(-beta * delta) - eps * sigma(beta * delta)),
                via=("exp", "simplify"),
            ),
            eq="AOT loss",
            paper="aot",
        ),
        Step(
            Text("AOT: each quantile's fixed point", "AOT：每个分位数的不动点"),
            Text(
                "With $0 < \\varepsilon < 1/2$ each quantile's loss has cDPO's unique minimiser "
                "$\\beta\\delta^* = \\log((1 - \\varepsilon)/\\varepsilon)$: at the optimum the policy's sorted ratios "
                "exceed the reference's by the same amount at every quantile (the distributional dominance AOT "
                "asks for). With $\\varepsilon = 0$ there is none, as for DPO.",
                "当 $0 < \\varepsilon < 1/2$ 时，每个分位数的损失都有 cDPO 的唯一最小值点 "
                "$\\beta\\delta^* = \\log((1 - \\varepsilon)/\\varepsilon)$：在最优点，策略排序后的比值在每个分位数上"
                "都比"
                "参考策略的大同样的量（AOT 所要求的分布占优）。$\\varepsilon = 0$ 时与 DPO 一样不存在。",
            ),
            GlobalMinimum(
                AOT,
                delta,
                sp.log((1 - eps) / eps) / beta,
                curvature=beta**2 * sigma(beta * delta) * sigma(-beta * delta),
            ),
            eq="AOT loss",
            paper="aot",
        ),
        Step(
            Text("SFT: the shares average to the token mean (any B)", "SFT：份额的均值就是词元平均（任意 B）"),
            Text(
                "`sft_loss` returns $-\\log\\pi(y_w^i)/\\bar n$ for example $i$, with $\\bar n$ the batch's mean "
                "token count. Their mean over the batch is TRL's mean NLL over every chosen token, for any batch "
                "size $B$; two functions that are equal have equal gradients, so training on the shares is "
                "training on TRL's loss.",
                "`sft_loss` 对样本 $i$ 返回 $-\\log\\pi(y_w^i)/\\bar n$，$\\bar n$ 是批次的平均词元数。它们在批次上的"
                "均值"
                "就是 TRL 对所有被选中词元的平均负对数似然，对任意批大小 $B$ 成立；相等的函数梯度相等，所以用这些份额"
                "训练"
                "就是用 TRL 的损失训练。",
            ),
            Equal(sp.Sum(-A[i] / nbar, (i, 1, B)) / B, TOKEN_MEAN, via=("sums",)),
            where={nbar: sp.Sum(N[i], (i, 1, B)) / B},
            eq="sft",
            paper="trl",
        ),
    ],
    conclusion=Text(
        "`simpo_loss` has the gradient above and no optimum to check; `aot_loss` and `aot_unpaired_loss` are cDPO "
        "per quantile, with cDPO's gradient and optimum; `sft_loss`'s shares have TRL's token-mean loss as their "
        "mean, so the same gradient.",
        "`simpo_loss` 的梯度如上，且没有最优点可检验；`aot_loss` 与 `aot_unpaired_loss` 在每个分位数上就是 cDPO，"
        "具有 cDPO 的梯度与最优点；"
        "`sft_loss` 的份额以 TRL 的词元平均损失为均值，因此梯度相同。",
    ),
)


def compare() -> list:
    """simpo_loss, aot_loss and sft_loss (values and autograd gradients) against the formulas above."""
    import torch

    from dpo_ref.family import aot_loss, aot_unpaired_loss, sft_loss, simpo_loss

    from .numeric import Row, exact, tensors

    rows = []
    beta_, gamma_ = 2.0, 0.5
    pc, pr, rc, rr = tensors(-12.0, -15.0, -11.0, -14.0)
    lw, ll = torch.tensor([4.0], dtype=torch.float64), torch.tensor([6.0], dtype=torch.float64)
    out = simpo_loss(pc, pr, rc, rr, chosen_lengths=lw, rejected_lengths=ll, beta=beta_, gamma=gamma_)
    out.losses.sum().backward()
    at = {A_w: -12.0, A_l: -15.0, n_w: 4.0, n_l: 6.0, beta: beta_, gamma: gamma_}
    rows.append(Row("SimPO loss", exact(SIMPO, at), out.losses.item()))
    rows.append(Row("SimPO ∂L/∂log π(y_w)", exact(sp.diff(SIMPO, A_w), at), pc.grad.item()))
    rows.append(Row("SimPO ∂L/∂log π(y_l)", exact(sp.diff(SIMPO, A_l), at), pr.grad.item()))
    # AOT on a batch of 3: the quantile losses against the formula at the sorted differences
    beta_, eps_ = 0.5, 0.1
    pol_w = torch.tensor([-3.0, -5.0, -1.0], dtype=torch.float64, requires_grad=True)
    pol_l, ref_w, ref_l = (
        torch.tensor(v, dtype=torch.float64) for v in ([-4.0, -4.0, -4.0], [-2.0, -6.0, -3.0], [-3.0, -3.0, -3.0])
    )
    out = aot_loss(pol_w, pol_l, ref_w, ref_l, beta=beta_, label_smoothing=eps_)
    out.losses.sum().backward()
    u_ = sorted((pol_w - pol_l).tolist())
    v_ = sorted((ref_w - ref_l).tolist())
    for q, (uq, vq) in enumerate(zip(u_, v_)):
        rows.append(
            Row(
                f"AOT loss, quantile {q + 1}",
                exact(AOT, {delta: uq - vq, beta: beta_, eps: eps_}),
                out.losses[q].item(),
            )
        )
    order = sorted(range(3), key=lambda e: (pol_w - pol_l)[e].item())  # example at each quantile of u
    slope = sp.diff(AOT, delta)
    for q, e in enumerate(order):
        rows.append(
            Row(
                f"AOT ∂L/∂log π(y_w), quantile {q + 1}",
                exact(slope, {delta: u_[q] - v_[q], beta: beta_, eps: eps_}),
                pol_w.grad[e].item(),
            )
        )
    # unpaired AOT on the same batch: delta = sort(rho_w) - sort(rho_l)
    out = aot_unpaired_loss(pol_w.detach(), pol_l, ref_w, ref_l, beta=beta_, label_smoothing=eps_)
    d_ = [a - b for a, b in zip(sorted((pol_w - ref_w).tolist()), sorted((pol_l - ref_l).tolist()))]
    for q, dq in enumerate(d_):
        rows.append(
            Row(
                f"AOT unpaired loss, quantile {q + 1}",
                exact(AOT, {delta: dq, beta: beta_, eps: eps_}),
                out.losses[q].item(),
            )
        )
    # sft: the mean of the shares and one share's gradient
    a_vals, n_vals = [-10.0, -4.0, -7.5], [5.0, 2.0, 3.0]
    pc = torch.tensor(a_vals, dtype=torch.float64, requires_grad=True)
    out = sft_loss(pc, pc.detach(), pc.detach(), pc.detach(), chosen_lengths=torch.tensor(n_vals, dtype=torch.float64))
    out.losses.mean().backward()
    at = {B: 3, **{A[q + 1]: a_vals[q] for q in range(3)}, **{N[q + 1]: n_vals[q] for q in range(3)}}
    rows.append(Row("sft mean = token-mean NLL", exact(TOKEN_MEAN.subs(B, 3).doit(), at), out.losses.mean().item()))
    rows.append(
        Row("sft ∂(mean)/∂log π(y_w^1)", exact(sp.diff(TOKEN_MEAN.subs(B, 3).doit(), A[1]), at), pc.grad[0].item())
    )
    return rows
