"""Properties of a packed (padding-free) log-prob function: `fn(logits (1, N, V), labels (1, N), cu_seqlens (S+1,))
-> (S,)`.

Several sequences are concatenated into one row without padding; segment s is positions
`cu_seqlens[s]:cu_seqlens[s+1]` (flash-attention's varlen convention); labels are aligned with the input ids and
the logits at t predict position t+1. A correct function gives each segment exactly what scoring it alone gives:
the shift happens inside the segment, so a segment's first label is never scored. The expected values come from
`properties.loop_sequence_logps` run on each segment alone (a plain loop, float64, `math` log-sum-exp), never from
`dpo_ref.logps`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dpo_ref.checks.properties import (
    IGNORE_INDEX,
    TOLERANCE_K,
    Precision,
    PropertyViolation,
    _close,
    logps_tolerance,
    logps_tolerance_scale,
    loop_sequence_logps,
    measure,
    verdict_eps,
)

PackedFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _segments(out: object, size: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise PropertyViolation(f"expected a tensor of per-segment log-probs, got {type(out).__name__}")
    if out.shape != (size,):
        raise PropertyViolation(
            f"expected per-segment log-probs of shape ({size},) for {size} segments, got {tuple(out.shape)}"
        )
    return out


def check_packed_values(fn: PackedFn, batch, average: bool = False, dtype: torch.dtype = torch.float64) -> Precision:
    """Each segment's value equals scoring that segment alone (loop reference, shift inside the segment)."""
    logits, labels, cu_seqlens = batch.packed(dtype)
    out = _segments(fn(logits, labels, cu_seqlens), len(batch.rows))
    rows = [(lab, lg.to(dtype).double()) for lab, lg in batch.rows]
    expected = loop_sequence_logps(rows, average)
    _close(out, expected, logps_tolerance(rows, dtype), "segment log-prob")
    return measure(out, expected, logps_tolerance_scale(rows))


def segment_weights(size: int) -> torch.Tensor:
    """Distinct weights 1..S: a gradient that lands in another segment's positions shows as a wrong weight."""
    return torch.arange(1, size + 1, dtype=torch.float64)


def check_packed_gradients(fn: PackedFn, batch, average: bool = False) -> None:
    """d (sum_s w_s logps[s]) / d logits[0, t-1] = w_s (onehot(labels[t]) - softmax(logits[0, t-1])) for each
    scored t inside segment s (its first position excluded), 0 elsewhere; divided by the count with `average`."""
    logits, labels, cu_seqlens = batch.packed()
    logits.requires_grad_(True)
    out = _segments(fn(logits, labels, cu_seqlens), len(batch.rows))
    weights = segment_weights(len(batch.rows)).to(out.dtype)
    grad = None  # an output without a graph has gradient 0: right only when nothing is scored
    if out.requires_grad:
        (grad,) = torch.autograd.grad((out * weights).sum(), logits, allow_unused=True)
    grad = torch.zeros_like(logits) if grad is None else grad
    expected = torch.zeros_like(logits, dtype=torch.float64)  # (1, N, V)
    probs = torch.softmax(logits.detach().double(), dim=-1)[0]  # (N, V)
    start = 0
    for s, (row_labels, _) in enumerate(batch.rows):
        scored = [t for t in range(1, row_labels.shape[0]) if int(row_labels[t]) != IGNORE_INDEX]
        w = float(weights[s]) / (max(1, len(scored)) if average else 1)
        for t in scored:
            expected[0, start + t - 1] -= w * probs[start + t - 1]
            expected[0, start + t - 1, int(row_labels[t])] += w
        start += row_labels.shape[0]
    # one-hot minus softmax rounds at u (max|x| + 1) per entry, times the largest weight
    scale = float(weights.max()) * (float(logits.detach().double().abs().max()) + 1.0)
    tol = TOLERANCE_K * verdict_eps(logits.dtype) * scale
    diff = (grad.double() - expected).abs().amax(dim=-1)[0]  # (N,)
    if bool((~(diff <= tol)).any()):
        t = int((~(diff <= tol)).nonzero()[0, 0])
        if not out.requires_grad:
            raise PropertyViolation("packed log-probs do not depend differentiably on the logits", tol=tol)
        s = int(torch.searchsorted(cu_seqlens[1:].long(), torch.tensor(t), right=True))
        raise PropertyViolation(
            f"the gradient at packed position {t} (segment {s}) differs from w_s (one-hot minus softmax) by "
            f"{float(diff[t]):.3g} (tolerance {tol:.3g})",
            tol=tol,
        )


def check_packed_inputs_unmodified(fn: PackedFn, batch) -> None:
    """The function does not write into `logits`, `labels` or `cu_seqlens`."""
    inputs = batch.packed()
    copies = tuple(t.clone() for t in inputs)
    fn(*inputs)
    for t, c, name in zip(inputs, copies, ("logits", "labels", "cu_seqlens")):
        if not torch.equal(t, c):
            raise PropertyViolation(f"the packed log-prob function modified its input {name} in place")
