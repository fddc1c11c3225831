"""Broken loss-family implementations, one realistic mistake each, written independently of `dpo_ref.family`.

One per family variant of the registry; the index (`__init__.py`) gives the variant each claims and the
diagnosis the oracle must name (another variant of the registry, or a known mistake: count-plus-one,
not-length-normalised, chosen-rejected-swapped, no-reference). Same convention as family_correct.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.corpus.family_correct import aot_unpaired_argsort, apo_down_sigmoid, apo_zero_sigmoid


def _h(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def hinge_is_dpo(pc, pr, rc, rr, beta=0.1):
    return F.softplus(-beta * _h(pc, pr, rc, rr))


def ipo_norm_counts_plus_one(pc, pr, rc, rr, tau=0.1, chosen_lengths=None, rejected_lengths=None):
    """TRL's count: the unshifted completion mask, one more than the scored tokens when the completion starts at 0."""
    hb = (pc - rc) / (chosen_lengths + 1) - (pr - rr) / (rejected_lengths + 1)
    return ((hb - 1 / (2 * tau)) ** 2).mean()


def exo_is_cdpo(pc, pr, rc, rr, beta=0.1, label_smoothing=1e-3):
    z = beta * _h(pc, pr, rc, rr)
    return (1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)


def nca_is_dpo(pc, pr, rc, rr, beta=0.1):
    return F.softplus(-beta * _h(pc, pr, rc, rr))


def robust_is_cdpo(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1):
    z = beta * _h(pc, pr, rc, rr)
    return (1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)


def bco_swapped(pc, pr, rc, rr, beta=0.1, delta=0.0):
    return F.softplus(-(beta * (pr - rr) - delta)) + F.softplus(beta * (pc - rc) - delta)


def sppo_no_reference(pc, pr, rc, rr, beta=0.1):
    return (pc - 0.5 / beta) ** 2 + (pr + 0.5 / beta) ** 2


def aot_is_unpaired(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    return aot_unpaired_argsort(pc, pr, rc, rr, beta, label_smoothing)


def aot_unpaired_is_paired(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    u, v = torch.sort(pc - pr).values, torch.sort(rc - rr).values
    z = beta * (u - v)
    return (1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)


def apo_zero_is_down(pc, pr, rc, rr, beta=0.1):
    return apo_down_sigmoid(pc, pr, rc, rr, beta)


def apo_down_is_zero(pc, pr, rc, rr, beta=0.1):
    return apo_zero_sigmoid(pc, pr, rc, rr, beta)


def discopop_is_dpo(pc, pr, rc, rr, beta=0.1, tau=0.05):
    return F.softplus(-beta * _h(pc, pr, rc, rr))


def sft_counts_plus_one(pc, pr, rc, rr, chosen_lengths=None, rejected_lengths=None):
    return -pc.sum() / (chosen_lengths + 1).sum()


def sigmoid_norm_on_sums(pc, pr, rc, rr, beta=0.1, chosen_lengths=None, rejected_lengths=None):
    return F.softplus(-beta * _h(pc, pr, rc, rr))


def simpo_on_sums(pc, pr, rc, rr, beta=2.0, gamma=0.5, chosen_lengths=None, rejected_lengths=None):
    return F.softplus(gamma - beta * (pc - pr))


def dpop_is_dpo(pc, pr, rc, rr, beta=0.1, dpop_lambda=50.0):
    """The penalty forgotten: plain DPO."""
    return F.softplus(-beta * _h(pc, pr, rc, rr))


def aot_sorted_per_chunk(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """AOT sorted per micro-batch of 4 pairs (a gradient-accumulation loop that sorts each chunk on its own): on a
    batch of at most 4 pairs it is AOT exactly; on a larger one the quantiles are paired within each chunk."""
    out = []
    for start in range(0, pc.shape[0], 4):
        sl = slice(start, start + 4)
        u = torch.sort(pc[sl] - pr[sl]).values
        v = torch.sort(rc[sl] - rr[sl]).values
        z = beta * (u - v)
        out.append((1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z))
    return torch.cat(out)


def nca_rewards_without_beta(pc, pr, rc, rr, beta=0.1):
    """Right losses; the returned rewards are the raw log-ratios (not scaled by beta)."""
    w, lo = pc - rc, pr - rr
    losses = F.softplus(-beta * w) + 0.5 * F.softplus(beta * w) + 0.5 * F.softplus(beta * lo)
    return losses, w.detach(), lo.detach()


def simpo_rewards_with_reference(pc, pr, rc, rr, beta=2.0, gamma=0.5, chosen_lengths=None, rejected_lengths=None):
    """Right loss; the returned rewards are DPO's beta (log pi - log pi_ref), not SimPO's beta log pi / n."""
    margin = beta * (pc / chosen_lengths - pr / rejected_lengths) - gamma
    return {
        "loss": F.softplus(-margin).mean(),
        "chosen_rewards": beta * (pc - rc),
        "rejected_rewards": beta * (pr - rr),
    }


def sft_expanded_counts_plus_one(pc, pr, rc, rr, chosen_lengths=None, rejected_lengths=None):
    """TRL's sft shape (the batch's token-mean NLL expanded to every row) with every count one too many."""
    nll = -pc.sum() / (chosen_lengths + 1).sum()
    return nll.expand(pc.size(0))
