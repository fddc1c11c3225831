"""Broken loss-family implementations HELD OUT of the diagnoses' tuning (issue 21, item 3).

Written and labelled before dpo_ref/oracle/diagnosis.py was changed for the family, and never used to tune it:
the diagnoses were improved on family_broken.py only, and this set measures them on mistakes they were not fitted
to. Each is one realistic mistake, in its own style; the index (`__init__.py`, group "family-heldout") gives the
variant each claims and the diagnosis it should get. Same convention as family_correct.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_relu_no_beta(pc, pr, rc, rr, beta=0.1):
    """beta accepted, then forgotten."""
    logits = (pc - pr) - (rc - rr)
    return F.relu(1.0 - logits).mean()


def sigmoid_norm_reference_added(pc, pr, rc, rr, beta=0.1, chosen_lengths=None, rejected_lengths=None):
    """pi_logratios + ref_logratios, per token."""
    pi = pc / chosen_lengths - pr / rejected_lengths
    ref = rc / chosen_lengths - rr / rejected_lengths
    return -F.logsigmoid(beta * (pi + ref))


def ipo_norm_tau_squared(pc, pr, rc, rr, tau=0.1, chosen_lengths=None, rejected_lengths=None):
    """A helper squares the regulariser before passing it on."""
    t = tau * tau
    diff = (pc - rc) / chosen_lengths - (pr - rr) / rejected_lengths
    return torch.square(diff - 0.5 / t).mean()


def simpo_gamma_dropped(pc, pr, rc, rr, beta=2.0, gamma=0.5, chosen_lengths=None, rejected_lengths=None):
    """The target margin never subtracted."""
    z = beta * (pc / chosen_lengths) - beta * (pr / rejected_lengths)
    return F.softplus(-z)


def exo_is_dpo(pc, pr, rc, rr, beta=0.1, label_smoothing=1e-3):
    """EXO's KL replaced by the DPO log-loss it generalises."""
    z = beta * ((pc - rc) - (pr - rr))
    return F.binary_cross_entropy_with_logits(z, torch.ones_like(z), reduction="none")


def robust_eps_unused(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1):
    """label_smoothing read from a config that never reaches the loss: plain DPO."""
    return -F.logsigmoid(beta * (pc - rc - pr + rr)).mean()


def bco_delta_forgotten(pc, pr, rc, rr, beta=0.1, delta=0.0):
    """The running reward shift never applied (TRL 1.16's form)."""
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    return -F.logsigmoid(chosen) - F.logsigmoid(-rejected)


def sppo_swapped_arguments(pc, pr, rc, rr, beta=0.1):
    """The caller's (chosen, rejected) order read the other way round."""
    a, b = pr - rr, pc - rc
    return (a - 0.5 / beta) ** 2 + (b + 0.5 / beta) ** 2


def apo_zero_beta_twice(pc, pr, rc, rr, beta=0.1):
    """Rewards already scaled by beta, scaled again."""
    cw, cl = beta * (pc - rc), beta * (pr - rr)
    return 1 - torch.sigmoid(beta * cw) + torch.sigmoid(beta * cl)


def nca_policy_only(pc, pr, rc, rr, beta=0.1):
    """The reference log-probs passed and unused."""
    w, lo = beta * pc, beta * pr
    return -F.logsigmoid(w) - 0.5 * F.logsigmoid(-w) - 0.5 * F.logsigmoid(-lo)


def discopop_temperature_one(pc, pr, rc, rr, beta=0.1, tau=0.05):
    """The modulation temperature hard-coded to 1."""
    rho = beta * ((pc - rc) - (pr - rr))
    mix = torch.sigmoid(rho)
    return (1 - mix) * F.softplus(-rho) + mix * torch.exp(-rho)


def dpop_reference_sign(pc, pr, rc, rr, beta=0.1, dpop_lambda=50.0):
    """The reference log-ratio added; the penalty itself right."""
    logits = (pc - pr) + (rc - rr) - dpop_lambda * torch.clamp(rc - pc, min=0)
    return F.softplus(-beta * logits)


def sigmoid_norm_is_ipo(pc, pr, rc, rr, beta=0.1, chosen_lengths=None, rejected_lengths=None):
    """A loss_type switch falling through to TRL's ipo branch (beta standing for tau)."""
    hb = (pc - rc) / chosen_lengths - (pr - rr) / rejected_lengths
    return (hb - 1 / (2 * beta)) ** 2


def aot_unpaired_unsorted(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """The sort forgotten: per-pair DPO (cDPO with its eps)."""
    z = beta * ((pc - rc) - (pr - rr))
    return ((1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)).mean()


def ipo_norm_target_inverse_tau(pc, pr, rc, rr, tau=0.1, chosen_lengths=None, rejected_lengths=None):
    """Target margin 1/tau instead of 1/(2 tau)."""
    hb = (pc - rc) / chosen_lengths - (pr - rr) / rejected_lengths
    return (hb - 1 / tau) ** 2


def simpo_beta_outside(pc, pr, rc, rr, beta=2.0, gamma=0.5, chosen_lengths=None, rejected_lengths=None):
    """beta multiplies the loss, not the rewards."""
    z = pc / chosen_lengths - pr / rejected_lengths - gamma
    return -beta * F.logsigmoid(z)


def sft_mean_of_sequence_means(pc, pr, rc, rr, chosen_lengths=None, rejected_lengths=None):
    """Each sequence averaged over its own tokens, then the mean over sequences (not over the batch's tokens)."""
    return (-pc / chosen_lengths).mean()


def sppo_beta_as_temperature(pc, pr, rc, rr, beta=0.1):
    """Targets +-beta/2 instead of +-1/(2 beta): beta used as its reciprocal."""
    return (pc - rc - beta / 2) ** 2 + (pr - rr + beta / 2) ** 2
