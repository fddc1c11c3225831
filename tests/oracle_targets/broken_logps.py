"""Broken sequence log-prob functions, one realistic mistake each: the oracle must reject every one."""

import torch


def _token_logps(logits, labels):
    mask = labels != -100
    lp = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, lp, torch.zeros_like(lp))


def no_shift(logits, labels):
    """Scores label t with the logits at t (no one-token shift)."""
    return _token_logps(logits, labels).sum(-1)


def shift_wrong_way(logits, labels):
    """Scores label t with the logits at t + 1."""
    return _token_logps(logits[:, 1:], labels[:, :-1]).sum(-1)


def no_mask(logits, labels):
    """Scores the prompt and the padding too (treats -100 as token 0)."""
    lp = torch.gather(logits[:, :-1].log_softmax(-1), 2, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return lp.sum(-1)


def mean_not_sum(logits, labels):
    """Averages over the scored tokens where the sum is expected."""
    mask = labels[:, 1:] != -100
    return _token_logps(logits[:, :-1], labels[:, 1:]).sum(-1) / mask.sum(-1).clamp(min=1)


def drops_last_position(logits, labels):
    """Off by one at the end: never scores a response token at the last position."""
    return _token_logps(logits[:, :-2], labels[:, 1:-1]).sum(-1)


def naive_softmax(logits, labels):
    """log(exp(z) / sum exp(z)): overflows to NaN for large logits in float32."""
    probs = logits.exp() / logits.exp().sum(-1, keepdim=True)
    lp = torch.gather(probs[:, :-1].log(), 2, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(labels[:, 1:] != -100, lp, torch.zeros_like(lp)).sum(-1)


def inplace_labels(logits, labels):
    """Replaces -100 by 0 in the caller's labels tensor."""
    mask = labels[:, 1:] != -100
    labels[labels == -100] = 0
    lp = torch.gather(logits[:, :-1].log_softmax(-1), 2, labels[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (lp * mask).sum(-1)


def detached_logits(logits, labels):
    """Computes the log-probs under no_grad: no gradient reaches the model."""
    with torch.no_grad():
        return _token_logps(logits[:, :-1], labels[:, 1:]).sum(-1)


def assumes_left_padding(logits, labels):
    """Scores the last n positions of each row, n its number of scored tokens: right only if left padded."""
    B, T, _ = logits.shape
    n = (labels[:, 1:] != -100).sum(-1)  # (B,)
    lp = torch.gather(logits[:, :-1].log_softmax(-1), 2, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    keep = torch.arange(T - 1).unsqueeze(0) >= (T - 1 - n).unsqueeze(1)  # (B, T - 1): the last n positions
    return (lp * keep).sum(-1)


def divided_by_all_tokens(logits, labels):
    """Averages over every position, scored or not (a token-level mean over T - 1)."""
    mask = labels[:, 1:] != -100
    lp = torch.gather(logits[:, :-1].log_softmax(-1), 2, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, lp, 0.0).sum(-1) / (labels.shape[1] - 1)


def softmax_over_positions(logits, labels):
    """Normalises over the sequence dimension instead of the vocabulary."""
    mask = labels[:, 1:] != -100
    lp = torch.gather(logits[:, :-1].log_softmax(1), 2, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, lp, 0.0).sum(-1)


# name -> (average, the checks that must fail); every check of the catalogue is in some entry (meta-tested)


def vocab_chunks_first_only(logits, labels, chunk=4096):
    """Memory-lean log-softmax over vocabulary chunks that normalises over the first chunk only."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    picked = logits.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return ((picked - logits[..., :chunk].logsumexp(-1)) * mask).sum(-1)


_calls = [0]


def wrong_now_and_then(logits, labels):
    """Right, except on one call in 40, where it is 0.01 off."""
    _calls[0] += 1
    logp = logits[:, :-1].log_softmax(-1)
    labels = labels[:, 1:]
    mask = labels != -100
    out = (logp.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1) * mask).sum(-1)
    return out + 0.01 if _calls[0] % 40 == 0 else out


EXPECTED = {
    "vocab_chunks_first_only": (False, ("logps_large_shapes",)),
    "wrong_now_and_then": (False, ("logps_repeatable",)),
    "no_shift": (False, ("logps_values",)),
    "shift_wrong_way": (False, ("logps_values",)),
    "no_mask": (False, ("logps_values", "logps_unscored_ignored")),
    "mean_not_sum": (False, ("logps_values",)),
    "drops_last_position": (False, ("logps_last_position",)),
    "naive_softmax": (False, ("logps_values_float32",)),
    "inplace_labels": (False, ("logps_inputs_unmodified",)),
    "detached_logits": (False, ("logps_gradients",)),
    "assumes_left_padding": (False, ("logps_padding",)),
    "divided_by_all_tokens": (False, ("logps_values",)),
    "softmax_over_positions": (False, ("logps_values", "logps_gradients")),
}
# advisory checks: fail only under strict (reading the unscored positions, -inf there gives NaN)
STRICT_EXPECTED = {
    "no_mask": (False, ("logps_neg_inf_unscored",)),
}
