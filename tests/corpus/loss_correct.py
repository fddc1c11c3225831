"""Correct loss-level DPO / cDPO / IPO implementations, each in a style the project's own code does not use.

Written as third-party code would be (not importing dpo_ref). Every function here computes the stated
formula exactly, up to legitimate numerics: float32 intermediates, another summation order for the margin,
an exact rewriting (softplus, logaddexp, BCE-with-logits, two-class cross-entropy, label-smoothed
cross-entropy), or a standard approximation (`F.softplus`'s default threshold=20, error <= exp(-20) ~ 2.1e-9
absolute where the loss is >= 20). The oracle must accept every one; the index is in `__init__.py`.

h = (pc - rc) - (pr - rr) is the preference margin; DPO = softplus(-beta h),
cDPO = (1 - eps) softplus(-beta h) + eps softplus(beta h), IPO = (h - 1 / (2 tau))^2.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------- DPO


def logsigmoid_standard(
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta=0.1
):
    """The DPO paper's form: -logsigmoid(beta * (pi_logratios - ref_logratios)), per example."""
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    return -F.logsigmoid(beta * (pi_logratios - ref_logratios))


def softplus_default(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """F.softplus with its default threshold=20 (returns x itself above 20: a ~2e-9 approximation)."""
    return F.softplus(-beta * ((pc - rc) - (pr - rr)))


def softplus_own_beta(pc, pr, rc, rr, beta):
    """softplus's own `beta` argument, (1/beta) log(1 + exp(beta x)), rescaled by beta (threshold 20 too)."""
    margin = (pc - rc) - (pr - rr)
    return beta * F.softplus(-margin, beta=beta)


def bce_with_logits(pc, pr, rc, rr, beta=0.1):
    """Binary cross-entropy on the logit beta*h with target 1 (the chosen one wins)."""
    logits = beta * ((pc - pr) - (rc - rr))
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")


def two_class_cross_entropy(pc, pr, rc, rr, beta=0.1):
    """Softmax over the two implicit rewards [chosen, rejected]; the chosen one (class 0) is the label."""
    rewards = torch.stack([beta * (pc - rc), beta * (pr - rr)], dim=-1)  # (B, 2)
    target = torch.zeros(rewards.shape[0], dtype=torch.long)
    return F.cross_entropy(rewards, target, reduction="none")


def logaddexp_form(pc, pr, rc, rr, beta=0.1):
    """log(1 + exp(-z)) written as logaddexp(0, -z)."""
    z = beta * ((pc - rc) - (pr - rr))
    return torch.logaddexp(torch.zeros_like(z), -z)


def einsum_margin(pc, pr, rc, rr, beta=0.1):
    """The margin as a contraction of the stacked log-probs with the sign vector (+1, -1, -1, +1)."""
    stacked = torch.stack([pc, pr, rc, rr], dim=-1)  # (B, 4)
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=stacked.dtype)
    margin = torch.einsum("bk,k->b", stacked, signs)
    return -F.logsigmoid(beta * margin)


def float32_internal(pc, pr, rc, rr, beta=0.1):
    """Casts everything to float32 first (as a bf16/fp32 trainer does), even for float64 inputs."""
    pc, pr, rc, rr = pc.float(), pr.float(), rc.float(), rr.float()
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


def batch_mean(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """Returns the batch mean, as most trainers do before backward()."""
    chosen = policy_chosen_logps - reference_chosen_logps
    rejected = policy_rejected_logps - reference_rejected_logps
    return -F.logsigmoid(beta * (chosen - rejected)).mean()


def declared_sum(pc, pr, rc, rr, beta=0.1):
    """Returns the batch sum; conforms only when the sum is declared (reduction="sum")."""
    return F.softplus(-beta * ((pc - rc) - (pr - rr)), threshold=50.0).sum()


def tuple_with_rewards(pc, pr, rc, rr, beta=0.1):
    """A plain tuple (mean loss, chosen_rewards, rejected_rewards), rewards detached."""
    chosen_rewards = beta * (pc - rc)
    rejected_rewards = beta * (pr - rr)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def dict_return(pc, pr, rc, rr, beta=0.1):
    """A dict of metrics with the per-example losses under "losses"."""
    chosen_rewards = (beta * (pc - rc)).detach()
    rejected_rewards = (beta * (pr - rr)).detach()
    losses = F.softplus(beta * ((pr - rr) - (pc - rc)))
    return {
        "losses": losses,
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "reward_margin": (chosen_rewards - rejected_rewards).mean(),
    }


def reordered_parameters(
    reference_chosen_logps, reference_rejected_logps, policy_chosen_logps, policy_rejected_logps, beta=0.1
):
    """Standard names, references first: right when called by name (which the oracle must do); called by
    position with (pc, pr, rc, rr) it would compute the loss at -h."""
    chosen_logratio = policy_chosen_logps - reference_chosen_logps
    rejected_logratio = policy_rejected_logps - reference_rejected_logps
    return -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))


class DPOLossOutput(NamedTuple):
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


_log_sigmoid = torch.nn.LogSigmoid()


def module_named_tuple(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                       reference_rejected_logps, beta=0.1, **unused):  # fmt: skip
    """Extra keywords swallowed, an nn.LogSigmoid module, a named tuple of per-example losses and rewards."""
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps)
    losses = _log_sigmoid(chosen_rewards - rejected_rewards).neg()
    return DPOLossOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())


# ---------------------------------------------------------------------------------------------- cDPO


def cdpo_softplus(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """cDPO as a mixture of softplus terms: (1 - eps) softplus(-z) + eps softplus(z)."""
    z = beta * ((pc - rc) - (pr - rr))
    return (1.0 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)


def cdpo_bce_soft_targets(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """cDPO as BCE-with-logits against the soft target 1 - eps."""
    z = beta * ((pc - rc) - (pr - rr))
    target = torch.full_like(z, 1.0 - label_smoothing)
    return F.binary_cross_entropy_with_logits(z, target, reduction="none")


def cdpo_cross_entropy_label_smoothing(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """Two-class cross-entropy with torch's label_smoothing=2 eps (mass 2 eps spread over 2 classes = eps each)."""
    rewards = torch.stack([beta * (pc - rc), beta * (pr - rr)], dim=1)  # (B, 2)
    target = torch.zeros(len(pc), dtype=torch.long)
    return F.cross_entropy(rewards, target, reduction="none", label_smoothing=2 * label_smoothing)


def cdpo_float32_mean(pc, pr, rc, rr, **kwargs):
    """cDPO in float32, batch mean, hyper-parameters from **kwargs."""
    beta, eps = kwargs["beta"], kwargs.get("label_smoothing", 0.0)
    h = (pc.float() - rc.float()) - (pr.float() - rr.float())
    return (-(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)).mean()


# ---------------------------------------------------------------------------------------------- IPO


def ipo_squared_error(pc, pr, rc, rr, beta=0.1):
    """IPO, beta standing for tau: (h - 1/(2 tau))^2, per example (the IPO paper, eq. 17)."""
    h = (pc - rc) - (pr - rr)
    return (h - 1 / (2 * beta)) ** 2


def ipo_mse_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 tau=0.1):  # fmt: skip
    """IPO through F.mse_loss against the constant target 1/(2 tau), with a `tau` keyword."""
    h = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return F.mse_loss(h, torch.full_like(h, 0.5 / tau), reduction="none")


def ipo_scaled(pc, pr, rc, rr, beta=0.1):
    """IPO as (beta h - 1/2)^2 / beta^2, the same polynomial, batch mean."""
    z = beta * ((pc - rc) - (pr - rr))
    return ((z - 0.5) ** 2 / beta**2).mean()


def ipo_stack_pow(pc, pr, rc, rr, tau=0.1):
    """IPO with the log-ratios stacked and differenced by torch.diff, (target - h).pow(2)."""
    logratios = torch.stack([pr - rr, pc - rc], dim=-1)  # (B, 2): rejected, chosen
    h = torch.diff(logratios, dim=-1).squeeze(-1)
    return (1 / (2 * tau) - h).pow(2)


# ==================================================================================== the suite's own set
# Written with the oracle's checks in mind (not by the outside session): each broken one has the checks it must
# fail in the index (`fails`), together covering every check of the catalogue.


def per_example(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """DPO, per-example losses (B,), logsigmoid form."""
    logits = (policy_chosen_logps - policy_rejected_logps) - (reference_chosen_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * logits)


def scalar_mean(pc, pr, rc, rr, beta=0.1):
    """DPO reduced to the batch mean, as most trainers return it."""
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()


def scalar_sum(pc, pr, rc, rr, *, beta):
    """DPO summed over the batch."""
    return F.softplus(-beta * ((pc - rc) - (pr - rr))).sum()


class DPOOutput(NamedTuple):
    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def named_tuple_with_rewards(pc, pr, rc, rr, beta=0.1):
    """DPO returning a named tuple (losses, chosen_rewards, rejected_rewards), like many libraries."""
    chosen = beta * (pc - rc)
    rejected = beta * (pr - rr)
    return DPOOutput(-F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach())


def softplus_form(pc, pr, rc, rr, **kwargs):
    """DPO as softplus(-beta h) = log(1 + exp(-beta h)), taking beta from **kwargs."""
    beta = kwargs["beta"]
    return F.softplus(-beta * ((pc - rc) - (pr - rr)))


def float32_promoted(pc, pr, rc, rr, beta):
    """DPO computed in at least float32 (half-precision inputs are promoted), via explicit casts."""
    dtype = torch.promote_types(pc.dtype, torch.float32)
    h = (pc.to(dtype) - rc.to(dtype)) - (pr.to(dtype) - rr.to(dtype))
    return torch.nn.functional.logsigmoid(beta * h).neg()


def cdpo(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """Conservative DPO (labels flipped with probability label_smoothing), per example."""
    z = beta * ((pc - rc) - (pr - rr))
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def ipo(pc, pr, rc, rr, beta=0.1):
    """IPO, beta standing for tau: (h - 1/(2 tau))^2 per example."""
    h = (pc - rc) - (pr - rr)
    return (h - 1 / (2 * beta)) ** 2


def ipo_tau_mean(pc, pr, rc, rr, tau=0.1):
    """IPO with a `tau` keyword, reduced to the mean."""
    return torch.square((pc - pr) - (rc - rr) - 0.5 / tau).mean()
