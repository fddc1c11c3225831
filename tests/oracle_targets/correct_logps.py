"""Correct sequence log-prob functions fn(logits (B, T, V), labels (B, T)) -> (B,) in different styles."""

import torch
import torch.nn.functional as F


def gather_log_softmax(logits, labels):
    """Shift, log_softmax, gather, mask with where (the Hugging Face / original DPO convention)."""
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = labels != -100
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    token_logps = torch.gather(logits.log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum(-1)


def cross_entropy_based(logits, labels):
    """Minus the unreduced cross-entropy (which ignores -100 itself), summed per row."""
    B, T, V = logits.shape
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="none"
    )  # (B * (T - 1),)
    return -nll.view(B, T - 1).sum(-1)


def per_row_loop(logits, labels):
    """A loop over rows and positions, as a first implementation often is."""
    out = []
    for b in range(logits.shape[0]):
        total = logits.new_zeros(())
        for t in range(1, labels.shape[1]):
            if labels[b, t] != -100:
                total = total + torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]]
        out.append(total)
    return torch.stack(out)


def averaged(logits, labels):
    """Length-averaged log-probs (TRL's IPO convention): verify with --variant ipo-mean or --average."""
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = labels != -100
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_logps = torch.where(mask, token_logps, torch.zeros_like(token_logps))
    return token_logps.sum(-1) / mask.sum(-1)


def mask_by_multiplying(logits, labels):
    """The original DPO repository's style: (per_token * mask).sum(-1). Correct; only -inf logits at unscored
    positions (0 * -inf = NaN) break it, which the oracle reports as advice."""
    mask = labels[:, 1:] != -100
    lp = torch.gather(logits[:, :-1].log_softmax(-1), 2, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * mask).sum(-1)
