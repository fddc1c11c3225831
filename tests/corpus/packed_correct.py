"""Correct packed-sequence log-prob functions, written in the styles padding-free trainers use.

Every function: `fn(logits (1, N, V), labels (1, N), cu_seqlens (S+1,) int32) -> (S,)`, the per-segment sum of
`log_softmax(logits[t - 1])[labels[t]]` over the positions t strictly inside a segment (its first label is never
scored: nothing inside the segment predicts it) where `labels[t] != -100`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def packed_loop_over_segments(logits, labels, cu_seqlens):
    """Loop over segments: slice each one out and shift inside it (the plain reading of the varlen API)."""
    out = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        seg_logits = logits[0, start : end - 1]
        seg_labels = labels[0, start + 1 : end]
        mask = seg_labels != IGNORE_INDEX
        safe = seg_labels.masked_fill(~mask, 0)
        logps = seg_logits.log_softmax(-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        out.append((logps * mask).sum())
    return torch.stack(out)


def packed_segment_ids_index_add(logits, labels, cu_seqlens):
    """Vectorised: segment ids by repeat_interleave, targets across a boundary masked, index_add_."""
    n_seg = cu_seqlens.numel() - 1
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seg_id = torch.repeat_interleave(torch.arange(n_seg, device=logits.device), lengths)
    target = labels[0, 1:]
    # the prediction at t (for t+1) stays inside the segment only when t and t+1 share a segment id
    same = seg_id[:-1] == seg_id[1:]
    mask = same & (target != IGNORE_INDEX)
    logps = torch.log_softmax(logits[0, :-1], dim=-1)
    token = logps.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)
    token = torch.where(mask, token, torch.zeros_like(token))
    return torch.zeros(n_seg, dtype=token.dtype, device=token.device).index_add_(0, seg_id[:-1], token)


def packed_global_shift_mask_starts(logits, labels, cu_seqlens):
    """Global shift after each segment's first label is set to -100, then scatter_add by segment."""
    labels = labels.clone()
    labels[0, cu_seqlens[:-1].long()] = IGNORE_INDEX  # no logit inside the segment predicts these
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    loss_mask = shift_labels != IGNORE_INDEX
    shift_labels = torch.where(loss_mask, shift_labels, 0)
    per_token = torch.gather(shift_logits.log_softmax(-1), 2, shift_labels.unsqueeze(2)).squeeze(2) * loss_mask
    positions = torch.arange(1, labels.shape[1], device=labels.device)  # the label position each term scores
    seg = torch.searchsorted(cu_seqlens[1:].long(), positions, right=True)
    out = torch.zeros(cu_seqlens.numel() - 1, dtype=per_token.dtype, device=per_token.device)
    return out.scatter_add(0, seg, per_token[0])


def packed_segment_reduce(logits, labels, cu_seqlens):
    """Per-label log-probs with the segment starts zeroed, summed with torch.segment_reduce over the segment lengths."""
    n = labels.shape[1]
    token = torch.zeros(n, dtype=logits.dtype, device=logits.device)
    target = labels[0, 1:]
    valid = target != IGNORE_INDEX
    lp = F.log_softmax(logits[0, :-1], dim=-1).gather(-1, target.clamp(min=0)[:, None])[:, 0]
    token = torch.cat([token[:1], torch.where(valid, lp, torch.zeros_like(lp))])  # token[t] = score of label t
    starts = cu_seqlens[:-1].long()
    keep = torch.ones(n, dtype=torch.bool, device=logits.device)
    keep[starts[starts < n]] = False
    token = token * keep
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.segment_reduce(token, "sum", lengths=lengths, unsafe=True)


def packed_position_ids_from_cu_seqlens(logits, labels, cu_seqlens):
    """Flash-attn-varlen style: position ids from cu_seqlens; a target at position id 0 starts a segment."""
    n = labels.shape[1]
    idx = torch.arange(n, device=labels.device)
    seg = torch.bucketize(idx, cu_seqlens[1:].long(), right=True)
    position_ids = idx - cu_seqlens.long()[seg]
    logprobs = logits[0, :-1].log_softmax(dim=-1)
    next_labels = labels[0, 1:]
    scored = (position_ids[1:] != 0) & (next_labels != IGNORE_INDEX)
    picked = logprobs[torch.arange(n - 1, device=labels.device), next_labels.clamp(min=0)]
    per_token = picked.masked_fill(~scored, 0.0)
    membership = F.one_hot(seg[1:], cu_seqlens.numel() - 1).to(per_token.dtype)  # (N-1, S)
    return per_token @ membership


def packed_cross_entropy_chunked(logits, labels, cu_seqlens):
    """nanoGPT-like: per-segment -cross_entropy(reduction='sum') on the shifted slice, in chunks of the vocabulary."""
    results = []
    for s in range(cu_seqlens.numel() - 1):
        a, b = int(cu_seqlens[s]), int(cu_seqlens[s + 1])
        if b - a < 2:
            results.append(logits.new_zeros(()))
            continue
        x = logits[0, a : b - 1]
        y = labels[0, a + 1 : b]
        chunks = [torch.logsumexp(c, dim=-1) for c in x.split(7, dim=-1)]
        lse = torch.logsumexp(torch.stack(chunks, dim=-1), dim=-1)
        picked = x.gather(-1, y.clamp(min=0)[:, None])[:, 0]
        results.append(((picked - lse) * (y != IGNORE_INDEX)).sum())
    return torch.stack(results)
