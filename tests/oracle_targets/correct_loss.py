"""Correct DPO / cDPO / IPO losses in different third-party styles: the oracle must accept every one.

Each is written independently of dpo_ref (as a user's code would be), and each is also an example
target for the command line, e.g. `dpo-ref verify tests/oracle_targets/correct_loss.py:per_example`.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F


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


def tuple_with_rewards(pc, pr, rc, rr, beta=0.1):
    """DPO returning a named tuple (losses, chosen_rewards, rejected_rewards), like many libraries."""
    chosen = beta * (pc - rc)
    rejected = beta * (pr - rr)
    return DPOOutput(-F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach())


def softplus_form(pc, pr, rc, rr, **kwargs):
    """DPO as softplus(-beta h) = log(1 + exp(-beta h)), taking beta from **kwargs."""
    beta = kwargs["beta"]
    return F.softplus(-beta * ((pc - rc) - (pr - rr)))


def float32_internal(pc, pr, rc, rr, beta):
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
