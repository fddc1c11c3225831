"""Broken packed-sequence log-prob functions, each with ONE realistic bug (named in its docstring and the index).

Same signature as the correct ones: `fn(logits (1, N, V), labels (1, N), cu_seqlens (S+1,) int32) -> (S,)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _segment_of_positions(cu_seqlens, positions):
    """The segment each position belongs to."""
    return torch.searchsorted(cu_seqlens[1:].long(), positions, right=True)


def packed_global_shift_unmasked(logits, labels, cu_seqlens):
    """cross-boundary: a global shift over the packed row; a segment's first label scored from the previous one."""
    shift_logits = logits[0, :-1]
    shift_labels = labels[0, 1:]
    mask = shift_labels != IGNORE_INDEX
    lp = shift_logits.log_softmax(-1).gather(-1, shift_labels.clamp(min=0)[:, None])[:, 0] * mask
    seg = _segment_of_positions(cu_seqlens, torch.arange(1, labels.shape[1], device=labels.device))
    return torch.zeros(cu_seqlens.numel() - 1, dtype=lp.dtype, device=lp.device).index_add(0, seg, lp)


def packed_window_one_past_end(logits, labels, cu_seqlens):
    """cross-boundary: each segment's window runs one past its end, so it also scores the next segment's first label."""
    n = labels.shape[1]
    out = []
    for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        stop = min(b + 1, n)
        x, y = logits[0, a : stop - 1], labels[0, a + 1 : stop]
        m = y != IGNORE_INDEX
        out.append((x.log_softmax(-1).gather(-1, y.clamp(min=0)[:, None])[:, 0] * m).sum())
    return torch.stack(out)


def packed_no_shift(logits, labels, cu_seqlens):
    """no-shift: labels[t] scored with logits[t] (the shift forgotten), segment starts still skipped."""
    out = []
    for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        x, y = logits[0, a + 1 : b], labels[0, a + 1 : b]
        m = y != IGNORE_INDEX
        out.append((x.log_softmax(-1).gather(-1, y.clamp(min=0)[:, None])[:, 0] * m).sum())
    return torch.stack(out)


def packed_double_shift(logits, labels, cu_seqlens):
    """double-shift: labels shifted by the collator and again by the loss (logits[t] scores labels[t+2])."""
    out = []
    for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        x, y = logits[0, a : b - 2], labels[0, a + 2 : b]
        m = y != IGNORE_INDEX
        out.append((x.log_softmax(-1).gather(-1, y.clamp(min=0)[:, None])[:, 0] * m).sum())
    return torch.stack(out)


def packed_mean_not_sum(logits, labels, cu_seqlens):
    """mean-not-sum: the per-segment mean over scored labels instead of the sum."""
    out = []
    for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        x, y = logits[0, a : b - 1], labels[0, a + 1 : b]
        m = y != IGNORE_INDEX
        s = (x.log_softmax(-1).gather(-1, y.clamp(min=0)[:, None])[:, 0] * m).sum()
        out.append(s / m.sum().clamp(min=1))
    return torch.stack(out)


def packed_holes_clamped(logits, labels, cu_seqlens):
    """holes-scored: -100 labels clamped to token 0 and scored like any other label."""
    out = []
    for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        x, y = logits[0, a : b - 1], labels[0, a + 1 : b].clamp(min=0)
        out.append(x.log_softmax(-1).gather(-1, y[:, None])[:, 0].sum())
    return torch.stack(out)


def packed_boundaries_off_by_one(logits, labels, cu_seqlens):
    """segments-misread: boundaries from cu_seqlens[1:-2]: the last segment merges into the one before."""
    n = labels.shape[1]
    labels = labels.clone()
    labels[0, cu_seqlens[:-1].long()] = IGNORE_INDEX
    y = labels[0, 1:]
    m = y != IGNORE_INDEX
    lp = logits[0, :-1].log_softmax(-1).gather(-1, y.clamp(min=0)[:, None])[:, 0] * m
    seg = torch.searchsorted(cu_seqlens[1:-2].long(), torch.arange(1, n, device=labels.device), right=True)
    return torch.zeros(cu_seqlens.numel() - 1, dtype=lp.dtype, device=lp.device).index_add(0, seg, lp)


def packed_cu_seqlens_as_lengths(logits, labels, cu_seqlens):
    """segments-misread: cu_seqlens[1:] misread as segment lengths, so later segments are cut or lost."""
    n = labels.shape[1]
    out = []
    start = 0
    for length in cu_seqlens[1:].tolist():
        end = min(start + length, n)
        x, y = logits[0, start : max(end - 1, start)], labels[0, start + 1 : end]
        m = y != IGNORE_INDEX
        out.append((x.log_softmax(-1).gather(-1, y.clamp(min=0)[:, None])[:, 0] * m).sum())
        start = end
    return torch.stack(out)


def packed_segment_last_dropped(logits, labels, cu_seqlens):
    """segment-last-dropped: an inclusive-end slip, so each segment's last position is never scored."""
    out = []
    for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        x, y = logits[0, a : max(b - 2, a)], labels[0, a + 1 : max(b - 1, a + 1)]
        m = y != IGNORE_INDEX
        out.append((x.log_softmax(-1).gather(-1, y.clamp(min=0)[:, None])[:, 0] * m).sum())
    return torch.stack(out)


def packed_half_precision(logits, labels, cu_seqlens):
    """float16-scoring: log_softmax taken in half precision to save memory, then cast back."""
    logps = F.log_softmax(logits[0].half(), dim=-1).to(logits.dtype)
    out = []
    for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        y = labels[0, a + 1 : b]
        m = y != IGNORE_INDEX
        out.append((logps[a : b - 1].gather(-1, y.clamp(min=0)[:, None])[:, 0] * m).sum())
    return torch.stack(out)
