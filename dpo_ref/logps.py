"""Sequence log-probabilities from causal-LM logits, with the one-token shift and masking.

Convention (Hugging Face / original DPO code): `labels` is aligned with the input ids, so the logits
at position t score the label at position t+1. Positions whose label is `ignore_index` (prompt and
padding) are not scored, and the first label is never scored (nothing predicts it).

Memory: a naive `logits.log_softmax(-1).gather(...)` allocates a second (B, T, V) tensor. Here the
log-softmax is computed in chunks of positions and only the label's entry is kept, so the extra
memory is bounded by a fraction of the logits (about 1/16, see `_CHUNKS`), and the backward pass
writes the softmax gradient chunk by chunk into the one gradient tensor autograd needs anyway.

Output dtype: float32 for bfloat16/float16 logits (accumulated in float32), otherwise the logits'
dtype.
"""

from __future__ import annotations

import torch

from dpo_ref.errors import InputError, InputTypeError

_CHUNKS = 16  # number of position chunks: the extra memory is about 1/_CHUNKS of the logits
_MIN_CHUNK_ELEMENTS = 1 << 20  # small inputs are done in one chunk: the absolute saving is nil


LABEL_DTYPES = (torch.int64, torch.int32)
IGNORE_INDEX = -100  # the label of a position that is not scored (prompt, padding); PyTorch's and HF's convention


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype log-probs and losses are accumulated in: float32 for half precision (bf16, fp16), else `dtype`."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _chunk_len(batch: int, positions: int, vocab: int) -> int:
    """Positions per chunk of ONE row: a (c, V) chunk holds at most 1/_CHUNKS of the (B, T, V) logits
    (or _MIN_CHUNK_ELEMENTS, whichever is larger)."""
    budget = max(_MIN_CHUNK_ELEMENTS, batch * positions * vocab // _CHUNKS)
    return max(1, min(positions, budget // max(1, vocab)))


def _row_groups(batch: int, positions: int, vocab: int):
    """Row indices to chunk over: each row alone (contiguous slices), or all rows at once when the input is
    small (below _MIN_CHUNK_ELEMENTS the per-row loop costs more than it saves)."""
    return [slice(None)] if batch * positions * vocab <= _MIN_CHUNK_ELEMENTS else range(batch)


class _ShiftedTokenLogps(torch.autograd.Function):
    """log softmax(logits[:, t])[target[:, t]] for t < S, without a (B, T, V) copy.

    S = target.shape[1]: T-1 for `sequence_logps` (the last position scores nothing), T for
    `token_logps` (every position already selected as scored).

    Forward, chunk by chunk of positions within one row (a contiguous slice, so the fused kernel
    copies nothing): a fused `log_softmax` (one chunk-sized temporary) and a gather. Backward:
    d/dz log softmax(z)[y] = onehot(y) - softmax(z), the softmax recomputed per chunk (fused) and
    written straight into the one gradient tensor. Chunks hold at most as many elements as
    `_chunk_len` positions of all rows, so the extra memory stays about 1/_CHUNKS of the logits.

    Takes the full logits (not the [:, :-1] view) so that backward allocates the one (B, T, V)
    gradient itself; returning a gradient for a slice would make autograd allocate a second one.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # logits: (B, T, V); target: (B, S) valid token ids for positions 0..S-1, S <= T
        B, T, V = logits.shape
        S = target.shape[1]
        out_dtype = accumulation_dtype(logits.dtype)
        out = torch.empty(B, S, dtype=out_dtype, device=logits.device)  # (B, S)
        step = _chunk_len(B, S, V)  # positions of one row per chunk: a contiguous (c, V) slice
        for b in _row_groups(B, S, V):
            for s in range(0, S, step):
                e = min(s + step, S)
                chunk_logps = logits[b, s:e].log_softmax(-1, dtype=out_dtype)  # (c, V): the chunk temporary
                out[b, s:e] = chunk_logps.gather(-1, target[b, s:e].unsqueeze(-1)).squeeze(-1)
                del chunk_logps  # freed before the next chunk is allocated: one temporary at a time
        ctx.save_for_backward(logits, target)
        ctx.step = step
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, target = ctx.saved_tensors
        S = target.shape[1]
        grad_out = grad_out.to(accumulation_dtype(logits.dtype))  # (B, S)
        grad = torch.empty_like(logits)  # (B, T, V), the one full-size tensor autograd needs
        grad[:, S:].zero_()  # positions past S (the last one for sequence_logps) score nothing
        for b in _row_groups(logits.shape[0], S, logits.shape[2]):
            for s in range(0, S, ctx.step):
                e = min(s + ctx.step, S)
                probs = logits[b, s:e].softmax(-1, dtype=grad_out.dtype)  # (c, V)
                torch.mul(probs, -grad_out[b, s:e].unsqueeze(-1), out=grad[b, s:e])  # d/dz of -logsumexp(z)
                del probs
        grad[:, :S].scatter_add_(-1, target.unsqueeze(-1), grad_out.unsqueeze(-1).to(grad.dtype))  # d/dz of z[y]
        return grad, None


def check_logits_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Validate the shapes, dtypes and devices of `logits` (B, T, V) and `labels` (B, T)."""
    if not isinstance(logits, torch.Tensor):
        raise InputTypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise InputTypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if logits.dim() != 3:
        raise InputError(f"logits must have shape (B, T, V), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise InputTypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if labels.dim() != 2:
        raise InputError(f"labels must have shape (B, T), got {tuple(labels.shape)}")
    if labels.dtype not in LABEL_DTYPES:  # gather takes int64 or int32 indices only
        raise InputTypeError(
            f"labels must be a torch.int64 or torch.int32 tensor of token ids, got dtype {labels.dtype}"
        )
    if tuple(logits.shape[:2]) != tuple(labels.shape):
        raise InputError(
            f"logits has shape {tuple(logits.shape)} but labels has shape {tuple(labels.shape)}; "
            "logits must be (B, T, V) for labels (B, T)"
        )
    if logits.device != labels.device:
        raise InputError(f"labels is on {labels.device} but logits is on {logits.device}; they must match")
    if logits.shape[0] == 0:
        raise InputError("logits is an empty batch; at least one sequence is needed")
    if logits.shape[2] == 0:
        raise InputError("logits has an empty vocabulary dimension (V = 0)")


def check_scored_finite(token_logps: torch.Tensor, mask: torch.Tensor) -> None:
    """InputError naming the first scored position whose log-prob is NaN: its logits row holds a NaN (or +inf,
    which makes the softmax NaN too). Checked on the (B, T-1) log-probs, not on the (B, T, V) logits: no
    logits-sized temporary; -inf logits (a masked-out token) are fine unless the label is that token."""
    bad = mask & token_logps.isnan()
    if bool(bad.any()):
        b, t = (int(i) for i in bad.nonzero()[0])
        raise InputError(
            f"logits[{b}, {t}] (which scores labels[{b}, {t + 1}]) holds NaN or +inf; expected finite logits "
            "(-inf is allowed for masked-out tokens)"
        )


def shift_labels(
    labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one-token shift: (shifted_labels, mask, target), each `(B, T-1)`.

    Position t (of the logits) scores `shifted_labels[:, t] = labels[:, t+1]`; `mask` marks the scored
    positions (label != ignore_index) and `target` is the label there (0 elsewhere, a safe index).
    """
    shifted_labels = labels[:, 1:]  # (B, T-1)
    mask = shifted_labels != ignore_index  # (B, T-1)
    target = torch.where(mask, shifted_labels, torch.zeros_like(shifted_labels))
    return shifted_labels, mask, target


def token_logps(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position: logits `(N, V)`, target `(N,)` valid ids -> `(N,)`.

    The memory-bounded kernel of `sequence_logps`, for callers that already selected the scored
    positions (e.g. applying the output layer only where labels are scored). No validation.

    Proof: none yet. Properties: `properties.check_logps_values`, `properties.check_logps_gradients`.
    """
    return _ShiftedTokenLogps.apply(logits.unsqueeze(0), target.unsqueeze(0)).squeeze(0)  # S = T: no shift


def _check_label_range(shifted_labels: torch.Tensor, mask: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Every scored label is a token id in [0, vocab) (named by its position in the unshifted labels)."""
    if not bool(mask.any()):
        return
    bad = mask & ((shifted_labels < 0) | (shifted_labels >= vocab))
    if bool(bad.any()):
        b, t = (int(i) for i in bad.nonzero()[0])
        raise InputError(
            f"labels[{b}, {t + 1}] = {int(shifted_labels[b, t])} is not a token id in [0, {vocab}) "
            f"nor ignore_index={ignore_index}"
        )


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    average: bool = False,
    validate: bool = True,
) -> torch.Tensor:
    """Sum (or mean) over scored positions of log pi(label_{t+1} | tokens_{<=t}), shape `(B,)`.

        logps[b] = sum_{t : labels[b, t+1] != ignore_index} log softmax(logits[b, t])[labels[b, t+1]]

    Args:
        logits: `(B, T, V)` causal-LM logits, aligned with the input ids.
        labels: `(B, T)` token ids aligned with the input ids; `ignore_index` marks positions not scored.
        average: divide each row by its number of scored tokens (length-normalised log-probs).
        validate: check shapes, label range and empty rows (costs one host synchronisation).

    A row with nothing to score gives 0 when summing (the empty sum) and raises `ValueError` naming
    the row when averaging (a mean over zero tokens is undefined). Labels outside [0, V) other than
    `ignore_index` raise `ValueError`.

    Proof: `dpo-loss`. Properties: `properties.check_logps_values`, `properties.check_logps_padding`,
    `properties.check_logps_gradients`, `test_proofs_linked.check_sequence_logps`.
    """
    if validate:
        check_logits_labels(logits, labels)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise InputTypeError(f"ignore_index must be an int (the label of unscored positions, e.g. -100), got "
                                 f"{type(ignore_index).__name__}")  # fmt: skip
    shifted_labels, mask, target = shift_labels(labels, ignore_index)  # (B, T-1) each
    if validate:
        _check_label_range(shifted_labels, mask, logits.shape[-1], ignore_index)
    token_logps = _ShiftedTokenLogps.apply(logits, target)  # (B, T-1): position t scores label t+1
    if validate:
        check_scored_finite(token_logps, mask)
    token_logps = torch.where(mask, token_logps, torch.zeros_like(token_logps))
    total = token_logps.sum(-1)  # (B,)
    if not average:
        return total
    counts = mask.sum(-1)  # (B,)
    if validate and bool((counts == 0).any()):
        row = int((counts == 0).nonzero()[0, 0])
        raise InputError(
            f"labels row {row} has no scored token (every label after the first is ignore_index={ignore_index}); "
            "an average over zero tokens is undefined"
        )
    return total / counts.to(total.dtype)


def check_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> None:
    """`cu_seqlens` (S+1,): integer segment boundaries from 0 to `total`, non-decreasing (flash-attention's varlen)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise InputTypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise InputError(f"cu_seqlens must have shape (S+1,) with S >= 1 segments, got {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool or cu_seqlens.is_complex():
        raise InputTypeError(f"cu_seqlens must be an integer tensor of offsets, got dtype {cu_seqlens.dtype}")
    ends = cu_seqlens.tolist()
    if ends[0] != 0 or ends[-1] != total or any(b < a for a, b in zip(ends, ends[1:])):
        raise InputError(
            f"cu_seqlens must rise from 0 to the packed length {total} (segment s is positions "
            f"cu_seqlens[s]:cu_seqlens[s+1]), got {ends}"
        )


def packed_sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    average: bool = False,
    validate: bool = True,
) -> torch.Tensor:
    """`sequence_logps` of each segment of a packed row, shape `(S,)` (padding-free training).

        logps[s] = sum_{a_s < t < a_{s+1} : labels[0, t] != ignore_index} log softmax(logits[0, t-1])[labels[0, t]]

    with a_s = cu_seqlens[s]. The one-token shift happens inside each segment: a segment's first label is
    never scored (the previous segment's last logits do not predict it), so packing S sequences gives
    exactly the S values `sequence_logps` gives each of them alone.

    Args:
        logits: `(1, N, V)` logits of the packed row, aligned with its input ids.
        labels: `(1, N)` token ids aligned with the input ids; `ignore_index` where not scored.
        cu_seqlens: `(S+1,)` segment boundaries, 0 = cu_seqlens[0] <= ... <= cu_seqlens[S] = N.
        average: divide each segment by its number of scored tokens.

    Proof: none yet. Properties: `packed_properties.check_packed_values`,
    `packed_properties.check_packed_gradients`.
    """
    if validate:
        check_logits_labels(logits, labels)
        if logits.shape[0] != 1:
            raise InputError(f"logits must be one packed row (1, N, V), got {tuple(logits.shape)}")
        check_cu_seqlens(cu_seqlens, labels.shape[1])
    cu = cu_seqlens.to(device=labels.device, dtype=torch.long)
    positions = torch.arange(labels.shape[1], device=labels.device)  # (N,)
    segment = torch.searchsorted(cu[1:], positions, right=True)  # (N,): the segment of each position
    starts = torch.zeros_like(labels, dtype=torch.bool)  # (1, N)
    starts[0, cu[:-1][cu[:-1] < labels.shape[1]]] = True  # (an empty last segment starts at N: nothing to mark)
    labels = torch.where(starts, torch.full_like(labels, ignore_index), labels)  # a segment's first label: unscored
    shifted_labels, mask, target = shift_labels(labels, ignore_index)  # (1, N-1): position t scores label t+1
    if validate:
        _check_label_range(shifted_labels, mask, logits.shape[-1], ignore_index)
    token_logps = _ShiftedTokenLogps.apply(logits, target)  # (1, N-1)
    token_logps = torch.where(mask, token_logps, torch.zeros_like(token_logps))[0]  # (N-1,)
    S = cu.shape[0] - 1
    total = torch.zeros(S, dtype=token_logps.dtype, device=token_logps.device).index_add(0, segment[1:], token_logps)
    if not average:
        return total  # (S,)
    counts = torch.zeros(S, dtype=torch.long, device=labels.device).index_add(0, segment[1:], mask[0].long())
    if validate and bool((counts == 0).any()):
        s = int((counts == 0).nonzero()[0, 0])
        raise InputError(f"segment {s} of cu_seqlens has no scored token; an average over zero tokens is undefined")
    return total / counts.to(total.dtype)
