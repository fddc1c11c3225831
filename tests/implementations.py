"""Implementations the core suite runs its properties on: ours, and deliberately broken ones.

An `Implementation` bundles a DPO loss, an IPO loss and a sequence log-prob function with dpo_ref's
signatures. The reference bundle is dpo_ref itself; each broken bundle swaps one function for a
buggy one, so `tests/test_properties_bite.py` can show that each property rejects at least one bug.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import dpo_ref
from dpo_ref.properties import LossFn, LossSpec


@dataclass(frozen=True)
class Implementation:
    name: str
    dpo_loss: Callable = dpo_ref.dpo_loss
    ipo_loss: Callable = dpo_ref.ipo_loss
    sequence_logps: Callable = dpo_ref.sequence_logps
    bug: str = field(default="", compare=False)

    def loss_fn(self, spec: LossSpec) -> LossFn:
        """Per-example loss with the spec's coefficients bound: fn(pc, pr, rc, rr) -> (B,)."""
        if spec.variant == "ipo":
            return lambda pc, pr, rc, rr: self.ipo_loss(pc, pr, rc, rr, tau=spec.tau)[0]
        return lambda pc, pr, rc, rr: self.dpo_loss(
            pc, pr, rc, rr, beta=spec.beta, label_smoothing=spec.label_smoothing
        )[0]


REFERENCE = Implementation("dpo_ref")


# --- broken DPO losses (same signature as dpo_ref.dpo_loss, returning (losses,)) ------------------


def _margin(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def _no_reference(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    return (-F.logsigmoid(beta * (pc - pr)),)


def _chosen_rejected_swapped(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    return (-F.logsigmoid(beta * _margin(pr, pc, rr, rc)),)


def _beta_ignored(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    return (-F.logsigmoid(_margin(pc, pr, rc, rr)),)


def _beta_outside(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    return (-beta * F.logsigmoid(_margin(pc, pr, rc, rr)),)


def _log_of_sigmoid(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    h = _margin(pc, pr, rc, rr)
    eps = label_smoothing
    return (-(1 - eps) * torch.log(torch.sigmoid(beta * h)) - eps * torch.log(torch.sigmoid(-beta * h)),)


def _only_chosen_reward(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    return (-F.logsigmoid(beta * (pc - rc)),)


def _batch_centred_margin(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    h = _margin(pc, pr, rc, rr)
    return (-F.logsigmoid(beta * (h - h.mean())),)


def _batch_sorted(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    return (torch.sort(-F.logsigmoid(beta * _margin(pc, pr, rc, rr))).values,)


def _half_precision(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    h = _margin(*(t.to(torch.bfloat16) for t in (pc, pr, rc, rr)))
    return ((-F.logsigmoid(beta * h)).to(pc.dtype),)


def _in_place(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    with torch.no_grad():
        pc.sub_(rc)
        pr.sub_(rr)
    return (-F.logsigmoid(beta * (pc - pr) + 0 * (rc + rr)),)


def _absolute_margin(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    return (-F.logsigmoid(beta * _margin(pc, pr, rc, rr).abs()),)


def _detached_policy(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    h = _margin(pc.detach(), pr.detach(), rc, rr)
    return (-F.logsigmoid(beta * h) + 0 * (pc + pr),)


class _WrongBackward(torch.autograd.Function):
    """Right value -log sigma(x), wrong derivative: sigma(x) - 1 replaced by -sigma(x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return -F.logsigmoid(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return -g * torch.sigmoid(x)


def _wrong_backward(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    return (_WrongBackward.apply(beta * _margin(pc, pr, rc, rr)),)


def _cdpo_smoothing_swapped(pc, pr, rc, rr, *, beta, label_smoothing=0.0):
    x = beta * _margin(pc, pr, rc, rr)
    eps = label_smoothing
    return (-eps * F.logsigmoid(x) - (1 - eps) * F.logsigmoid(-x),)


# --- broken IPO losses (same signature as dpo_ref.ipo_loss) ----------------------------------------


def _ipo_target_one_over_tau(pc, pr, rc, rr, *, tau):
    return ((_margin(pc, pr, rc, rr) - 1 / tau) ** 2,)


def _ipo_tau_as_beta(pc, pr, rc, rr, *, tau):
    return ((tau * _margin(pc, pr, rc, rr) - 1 / (2 * tau)) ** 2,)


# --- broken sequence log-probs (same signature as dpo_ref.sequence_logps) ---------------------------


def _masked(token_logps, labels, ignore_index):
    return torch.where(labels != ignore_index, token_logps, torch.zeros_like(token_logps))


def _logps_no_shift(logits, labels, *, ignore_index=-100, average=False):
    target = labels.clamp(min=0).unsqueeze(-1)
    token = logits.log_softmax(-1).gather(-1, target).squeeze(-1)
    return _masked(token, labels, ignore_index).sum(-1)


def _logps_mask_ignored(logits, labels, *, ignore_index=-100, average=False):
    target = labels[:, 1:].clamp(min=0).unsqueeze(-1)
    return logits[:, :-1].log_softmax(-1).gather(-1, target).squeeze(-1).sum(-1)


def _logps_divided_by_all_tokens(logits, labels, *, ignore_index=-100, average=False):
    target = labels[:, 1:].clamp(min=0).unsqueeze(-1)
    token = logits[:, :-1].log_softmax(-1).gather(-1, target).squeeze(-1)
    total = _masked(token, labels[:, 1:], ignore_index).sum(-1)
    return total / labels.shape[1] if average else total


def _logps_softmax_wrong_dim(logits, labels, *, ignore_index=-100, average=False):
    target = labels[:, 1:].clamp(min=0).unsqueeze(-1)
    token = logits[:, :-1].log_softmax(1).gather(-1, target).squeeze(-1)
    return _masked(token, labels[:, 1:], ignore_index).sum(-1)


def _logps_assumes_left_padding(logits, labels, *, ignore_index=-100, average=False):
    """Scores the last n positions, n = the row's number of scored labels: right only if the response ends at T-1."""
    target = labels[:, 1:].clamp(min=0).unsqueeze(-1)
    token = logits[:, :-1].log_softmax(-1).gather(-1, target).squeeze(-1)  # (B, T-1)
    scored = (labels[:, 1:] != ignore_index).sum(-1, keepdim=True)  # (B, 1)
    pos = torch.arange(token.shape[1]).unsqueeze(0)  # (1, T-1)
    return torch.where(pos >= token.shape[1] - scored, token, torch.zeros_like(token)).sum(-1)


def _logps_detached(logits, labels, *, ignore_index=-100, average=False):
    return dpo_ref.sequence_logps(logits.detach(), labels, ignore_index=ignore_index, average=average)


BROKEN = {
    impl.name: impl
    for impl in [
        Implementation("no_reference", dpo_loss=_no_reference, bug="ignores the reference log-probs"),
        Implementation("chosen_rejected_swapped", dpo_loss=_chosen_rejected_swapped, bug="h computed as -h"),
        Implementation("beta_ignored", dpo_loss=_beta_ignored, bug="beta never used"),
        Implementation("beta_outside", dpo_loss=_beta_outside, bug="-beta log sigma(h) instead of -log sigma(beta h)"),
        Implementation("log_of_sigmoid", dpo_loss=_log_of_sigmoid, bug="log(sigmoid(x)) underflows to -inf"),
        Implementation("only_chosen_reward", dpo_loss=_only_chosen_reward, bug="rejected reward dropped"),
        Implementation("batch_centred_margin", dpo_loss=_batch_centred_margin, bug="margin centred on batch mean"),
        Implementation("batch_sorted", dpo_loss=_batch_sorted, bug="per-example losses returned sorted"),
        Implementation("half_precision", dpo_loss=_half_precision, bug="margin computed in bfloat16"),
        Implementation("in_place", dpo_loss=_in_place, bug="writes into its inputs"),
        Implementation("absolute_margin", dpo_loss=_absolute_margin, bug="uses |h|"),
        Implementation("detached_policy", dpo_loss=_detached_policy, bug="no gradient to the policy"),
        Implementation("wrong_backward", dpo_loss=_wrong_backward, bug="custom backward with the wrong derivative"),
        Implementation("cdpo_smoothing_swapped", dpo_loss=_cdpo_smoothing_swapped, bug="eps and 1-eps swapped"),
        Implementation("ipo_target_one_over_tau", ipo_loss=_ipo_target_one_over_tau, bug="target 1/tau not 1/(2tau)"),
        Implementation("ipo_tau_as_beta", ipo_loss=_ipo_tau_as_beta, bug="margin scaled by tau"),
        Implementation("logps_no_shift", sequence_logps=_logps_no_shift, bug="logits at t score label t"),
        Implementation("logps_mask_ignored", sequence_logps=_logps_mask_ignored, bug="-100 scored as token 0"),
        Implementation(
            "logps_divided_by_all_tokens", sequence_logps=_logps_divided_by_all_tokens, bug="mean over all T"
        ),
        Implementation("logps_softmax_wrong_dim", sequence_logps=_logps_softmax_wrong_dim, bug="softmax over T"),
        Implementation(
            "logps_assumes_left_padding", sequence_logps=_logps_assumes_left_padding, bug="right padding breaks it"
        ),
        Implementation("logps_detached", sequence_logps=_logps_detached, bug="no gradient to the logits"),
    ]
}
