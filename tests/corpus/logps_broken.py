"""Broken sequence log-prob functions fn(logits (B, T, V), labels (B, T)) -> (B,): one realistic mistake each.

The index in `__init__.py` gives the convention each claims (sum for dpo, mean for ipo-mean) and the
diagnosis the oracle must name, or None. Where a function scores an unscored position it uses token 0 there
(it replaced -100 by 0), and "prompt" / "padding" refer to the -100 runs before / after the response of a
right-padded row.
"""

import torch
import torch.nn.functional as F


def _per_token(logits, labels):
    """log p(label) at each position of `logits`, labels already aligned with it, -100 read as token 0."""
    return torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)


# ------------------------------------------------------------------------- named alternatives


def no_shift(logits, labels):
    """no-shift: scores labels[t] with the logits at t (the logits at t predict t + 1)."""
    mask = labels != -100
    per_token = _per_token(logits, labels)
    return torch.where(mask, per_token, torch.zeros_like(per_token)).sum(-1)


def no_shift_tutorial(logits, labels):
    """no-shift: a tutorial's get_probs: gather(log_softmax(logits), labels) over the whole row, masked."""
    mask = (labels != -100).float()
    per_token_log_probs = torch.gather(F.log_softmax(logits, dim=-1), dim=-1, index=labels.clamp(min=0).unsqueeze(-1))
    return (per_token_log_probs.squeeze(-1) * mask).sum(dim=-1)


def mean_not_sum(logits, labels):
    """mean-not-sum: divides by the number of scored tokens where the sum is claimed (dpo)."""
    lb = labels[:, 1:]
    mask = lb != -100
    lp = torch.where(mask, _per_token(logits[:, :-1], lb), 0.0)
    return lp.sum(-1) / mask.sum(-1)


def mean_not_sum_cross_entropy(logits, labels):
    """mean-not-sum: minus a per-row mean cross-entropy (the reduction="mean" habit), claimed as the sum."""
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")  # (B, T-1)
    return -(nll.sum(-1) / (labels[:, 1:] != -100).sum(-1))


def sum_not_mean(logits, labels):
    """sum-not-mean: the summed log-probs where the length average (ipo-mean) is claimed."""
    lb = labels[:, 1:]
    lp = _per_token(logits[:, :-1], lb)
    return lp.masked_fill(lb == -100, 0.0).sum(-1)


def sum_not_mean_flag(logits, labels, average_log_prob=False):
    """sum-not-mean: an `average_log_prob` flag whose default False is kept when ipo-mean is wanted."""
    lb = labels[:, 1:].clone()
    mask = lb != -100
    lb[~mask] = 0
    lp = torch.gather(logits[:, :-1].log_softmax(-1), 2, lb.unsqueeze(2)).squeeze(2)
    if average_log_prob:
        return (lp * mask).sum(-1) / mask.sum(-1)
    return (lp * mask).sum(-1)


def prompt_counted(logits, labels):
    """prompt-counted: masks only the padding (every position up to the last scored one), so the prompt is
    scored too (as token 0): the mask was built like an attention mask."""
    lb = labels[:, 1:]
    T1 = lb.shape[1]
    scored = lb != -100
    last = torch.where(scored, torch.arange(T1), -1).max(-1).values  # (B,) last scored position
    mask = torch.arange(T1).unsqueeze(0) <= last.unsqueeze(1)
    return (_per_token(logits[:, :-1], lb) * mask).sum(-1)


def padding_counted(logits, labels):
    """padding-counted: masks only the prompt (every position from the first scored one on), so the right
    padding is scored (as token 0): the mask was built from the prompt length alone."""
    lb = labels[:, 1:]
    started = (lb != -100).cumsum(-1) > 0
    return torch.where(started, _per_token(logits[:, :-1], lb), 0.0).sum(-1)


def last_token_dropped(logits, labels):
    """last-token-dropped: slices logits[:, :-2] / labels[:, 1:-1], so the last position is never scored."""
    lb = labels[:, 1:-1]
    lp = _per_token(logits[:, :-2], lb)
    return torch.where(lb != -100, lp, 0.0).sum(-1)


def last_token_dropped_loop(logits, labels):
    """last-token-dropped: a loop over range(1, T - 1) (off by one at the end)."""
    B, T, _ = logits.shape
    out = []
    for b in range(B):
        total = logits.new_zeros(())
        for t in range(1, T - 1):
            if labels[b, t] != -100:
                total = total + logits[b, t - 1].log_softmax(-1)[labels[b, t]]
        out.append(total)
    return torch.stack(out)


def float16_scoring(logits, labels):
    """float16-scoring: log_softmax in float16 "to save memory" (rounding ~5e-4 of each log-prob)."""
    lb = labels[:, 1:]
    lp = _per_token(logits[:, :-1].half(), lb)
    return torch.where(lb != -100, lp, 0.0).to(logits.dtype).sum(-1)


def bfloat16_scoring(logits, labels):
    """float16-scoring: the logits cast to bfloat16 (the model's dtype) and scored there (~4e-3 rounding)."""
    lg = logits.to(torch.bfloat16)[:, :-1]
    lb = labels[:, 1:]
    per_token = -F.cross_entropy(lg.transpose(1, 2), lb, reduction="none")
    return per_token.to(logits.dtype).sum(-1)


# ------------------------------------------------------------------------- no named alternative (diagnosis None)


def shift_wrong_way(logits, labels):
    """None: shifted the wrong way: labels[t] scored with the logits at t + 1."""
    lb = labels[:, :-1]
    return torch.where(lb != -100, _per_token(logits[:, 1:], lb), 0.0).sum(-1)


def divides_by_full_length(logits, labels):
    """None: ipo-mean claimed, but divides by T - 1 (every position) instead of the number of scored tokens."""
    lb = labels[:, 1:]
    lp = torch.where(lb != -100, _per_token(logits[:, :-1], lb), 0.0)
    return lp.mean(-1)


def unmasked_zero_labels(logits, labels):
    """None: -100 replaced by 0 and never masked: the prompt and the padding score token 0."""
    lb = labels[:, 1:].clone()
    lb[lb == -100] = 0
    return torch.gather(logits[:, :-1].log_softmax(-1), 2, lb.unsqueeze(2)).squeeze(2).sum(-1)


def logits_modified_in_place(logits, labels):
    """None: normalises the caller's logits in place (logits -= logsumexp): values right, input destroyed."""
    logits -= logits.logsumexp(-1, keepdim=True)
    lb = labels[:, 1:]
    tok = torch.gather(logits[:, :-1], 2, lb.clamp(min=0).unsqueeze(2)).squeeze(2)
    return torch.where(lb != -100, tok, 0.0).sum(-1)


# ==================================================================================== the suite's own set
# Written with the oracle's checks in mind (not by the outside session): each broken one has the checks it must
# fail in the index (`fails`), together covering every check of the catalogue.


def _token_logps(logits, labels):
    mask = labels != -100
    lp = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, lp, torch.zeros_like(lp))


def unshifted(logits, labels):
    """Scores label t with the logits at t (no one-token shift)."""
    return _token_logps(logits, labels).sum(-1)


def shifted_wrong_way(logits, labels):
    """Scores label t with the logits at t + 1."""
    return _token_logps(logits[:, 1:], labels[:, :-1]).sum(-1)


def no_mask(logits, labels):
    """Scores the prompt and the padding too (treats -100 as token 0)."""
    lp = torch.gather(logits[:, :-1].log_softmax(-1), 2, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return lp.sum(-1)


def mean_over_scored(logits, labels):
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
