"""Correct loss-family implementations, written independently of `dpo_ref.family`.

One per family variant of the registry, in a style other than dpo_ref's (softplus, BCE-with-logits, two-class
log-softmax, argsort-gather, batch means, TRL's `beta` standing for tau, ...); the index (`__init__.py`) says
which variant each implements. Each follows the oracle's loss-level convention: fn(pc, pr, rc, rr,
<coefficients>[, chosen_lengths=, rejected_lengths=]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _h(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def hinge_clamp_mean(pc, pr, rc, rr, beta=0.1):
    return torch.clamp(1 - beta * _h(pc, pr, rc, rr), min=0).mean()


def ipo_norm_trl_style(pc, pr, rc, rr, beta=0.1, chosen_lengths=None, rejected_lengths=None):
    """beta stands for tau (TRL's convention)."""
    chosen = (pc - rc) / chosen_lengths
    rejected = (pr - rr) / rejected_lengths
    return ((chosen - rejected - 1 / (2 * beta)) ** 2).mean()


def exo_two_class_kl(pc, pr, rc, rr, beta=0.1, label_smoothing=1e-3):
    logits = torch.stack([beta * (pc - rc), beta * (pr - rr)], dim=-1)  # (B, 2)
    log_q = torch.log_softmax(logits, dim=-1)
    log_p = torch.tensor([math.log1p(-label_smoothing), math.log(label_smoothing)], dtype=logits.dtype)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def nca_softplus(pc, pr, rc, rr, beta=0.1):
    w, lo = beta * (pc - rc), beta * (pr - rr)
    return F.softplus(-w) + 0.5 * F.softplus(w) + 0.5 * F.softplus(lo)


def robust_bce(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1):
    z = beta * _h(pc, pr, rc, rr)
    ones, zeros = torch.ones_like(z), torch.zeros_like(z)
    clean = F.binary_cross_entropy_with_logits(z, ones, reduction="none")
    flipped = F.binary_cross_entropy_with_logits(z, zeros, reduction="none")
    return ((1 - label_smoothing) * clean - label_smoothing * flipped) / (1 - 2 * label_smoothing)


def bco_softplus(pc, pr, rc, rr, beta=0.1, delta=0.0):
    return F.softplus(-(beta * (pc - rc) - delta)) + F.softplus(beta * (pr - rr) - delta)


def sppo_expanded(pc, pr, rc, rr, beta=0.1):
    a, b = pc - rc, pr - rr
    return a * a - a / beta + b * b + b / beta + 0.5 / beta**2


def aot_argsort(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    u = (pc - pr).gather(0, torch.argsort(pc - pr))
    v = (rc - rr).gather(0, torch.argsort(rc - rr))
    z = beta * (u - v)
    return ((1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)).mean()


def aot_unpaired_argsort(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    w, lo = pc - rc, pr - rr
    z = beta * (w.gather(0, torch.argsort(w)) - lo.gather(0, torch.argsort(lo)))
    return (1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)


def apo_zero_sigmoid(pc, pr, rc, rr, beta=0.1):
    return torch.sigmoid(-beta * (pc - rc)) + torch.sigmoid(beta * (pr - rr))


def apo_down_sigmoid(pc, pr, rc, rr, beta=0.1):
    return torch.sigmoid(beta * (pc - rc)) + torch.sigmoid(-beta * _h(pc, pr, rc, rr))


def discopop_stable(pc, pr, rc, rr, beta=0.1, tau=0.05):
    rho = beta * _h(pc, pr, rc, rr)
    mix = torch.sigmoid(rho / tau)
    return (1 - mix) * F.softplus(-rho) + torch.exp(-rho - F.softplus(-rho / tau))


def sft_token_mean(pc, pr, rc, rr, chosen_lengths=None, rejected_lengths=None):
    return -pc.sum() / chosen_lengths.sum()


def sigmoid_norm_mean(pc, pr, rc, rr, beta=0.1, chosen_lengths=None, rejected_lengths=None):
    return F.softplus(-beta * ((pc - rc) / chosen_lengths - (pr - rr) / rejected_lengths)).mean()


def simpo_rewards(pc, pr, rc, rr, beta=2.0, gamma=0.5, chosen_lengths=None, rejected_lengths=None):
    chosen_rewards = beta * pc / chosen_lengths
    rejected_rewards = beta * pr / rejected_lengths
    return F.softplus(gamma - (chosen_rewards - rejected_rewards))


def dpop_where_softplus(pc, pr, rc, rr, beta=0.1, dpop_lambda=50.0):
    """DPO-Positive written as Smaug's authors state it: softplus of minus the penalised logits."""
    chosen_logratio, rejected_logratio = pc - rc, pr - rr
    penalty = torch.where(rc > pc, rc - pc, torch.zeros_like(pc))
    return F.softplus(-beta * (chosen_logratio - rejected_logratio - dpop_lambda * penalty))


# ---- beyond one per variant (group "family-extra"): implicit rewards returned beside the loss


def hinge_with_rewards(pc, pr, rc, rr, beta=0.1):
    """The original DPO repo's return shape: (losses, chosen_rewards, rejected_rewards), rewards detached."""
    chosen_rewards = beta * (pc - rc).detach()
    rejected_rewards = beta * (pr - rr).detach()
    losses = torch.relu(1 - beta * _h(pc, pr, rc, rr))
    return losses, chosen_rewards, rejected_rewards


def simpo_with_rewards(pc, pr, rc, rr, beta=2.0, gamma=0.5, chosen_lengths=None, rejected_lengths=None):
    """A dict, as CPO-style trainers log it: SimPO's rewards are beta * the average log-prob (no reference)."""
    chosen_rewards = beta * pc / chosen_lengths
    rejected_rewards = beta * pr / rejected_lengths
    loss = F.softplus(gamma - (chosen_rewards - rejected_rewards)).mean()
    return {"loss": loss, "chosen_rewards": chosen_rewards.detach(), "rejected_rewards": rejected_rewards.detach()}


def sft_token_mean_expanded(pc, pr, rc, rr, chosen_lengths=None, rejected_lengths=None):
    """TRL's sft shape: one token-mean NLL for the batch, copied to every row with .expand (a (B,) view of stride
    0; only its mean is meant to be used)."""
    nll = -pc.sum() / chosen_lengths.sum()
    return nll.expand(pc.size(0))
