"""Segmented attention: the shared-prompt and packed layouts' mask run as causal blocks, not as one (T, T) mask.

A 4-D mask costs every row T x T attention scores, however much of it is masked out: a packed row of 1024 tokens
holding four 256-token sequences pays 16x the scores of one sequence, not 4x. The mask of every layout of
`dpo_ref.train.layouts` is a union of causal blocks, so attention can instead run block by block, each block a
plain causal SDPA call over its own keys (the fast kernels, with no mask) -- what flash-attention's varlen
kernel does on a GPU, here in a loop. The blocks are read from the per-token ids (`dpo_ref.train.attention`,
the rule `allowed`), not from the dense mask:

    a piece's queries see the shared pieces before it in their sequence, whole, and the piece itself, causally;
    consecutive pieces that form one causal run (a prompt and the chosen piece after it) are one block.

    prefix sharing   | prompt  chosen |  rejected  |     block 1: queries prompt+chosen, keys the same, causal
                                                         block 2: queries rejected, keys prompt + rejected,
                                                                  causal aligned to the end ("lower right")
    packing          | seq 0 | seq 1 | seq 2 | pad |     one causal block per sequence; padding: zeros

A padding token's output is zero (it is never scored and nothing sees it). The dense mask gives a padding token
itself only, so its output is its own value: different, and unread either way.

The kernel is registered with transformers' `AttentionInterface` as `dpo_ref_segments`; the model passes the
blocks to every attention layer through its forward's keyword arguments (`segments=`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NAME = "dpo_ref_segments"


@dataclass(frozen=True)
class Block:
    """Queries [q0, q1) of one row see keys `spans` ((start, stop) ranges, in order): all of every span but the
    last, and the last, which ends at q1, causally (query q sees its keys up to q)."""

    q0: int
    q1: int
    spans: tuple[tuple[int, int], ...]

    @property
    def keys(self) -> int:
        return sum(b - a for a, b in self.spans)


def _runs(values: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, stop) of each run of equal values."""
    out, start = [], 0
    for t in range(1, len(values) + 1):
        if t == len(values) or values[t] != values[start]:
            out.append((values[start], start, t))
            start = t
    return out


def blocks(segment_ids: torch.Tensor, piece_ids: torch.Tensor, shared: torch.Tensor) -> list[list[Block]]:
    """Each row's causal blocks (module doc) from the layout's per-token ids (R, T); padding (segment -1) has none."""
    out = []
    for seg_row, piece_row, shared_row in zip(segment_ids.tolist(), piece_ids.tolist(), shared.tolist()):
        row: list[Block] = []
        seen: list[tuple[int, int]] = []  # the shared pieces of the current sequence so far, adjacent ones merged
        segment = None
        for _piece, a, b in _runs(piece_row):
            if seg_row[a] < 0:
                continue
            if seg_row[a] != segment:
                segment, seen = seg_row[a], []
            last = row[-1] if row else None
            if last is not None and last.q1 == a and list(last.spans) == seen:
                # the previous block's keys are all shared pieces this one sees whole: one causal run
                row[-1] = Block(last.q0, b, (*last.spans[:-1], (last.spans[-1][0], b)))
            else:
                row.append(Block(a, b, (*seen, (a, b))))
            if shared_row[a]:
                if seen and seen[-1][1] == a:
                    seen[-1] = (seen[-1][0], b)
                else:
                    seen.append((a, b))
        out.append(row)
    return out


def _attend(q, k, v, block: Block, scaling: float | None, dropout: float = 0.0) -> torch.Tensor:
    """One block of a group of rows laid out alike: q (G, H, T, D), k/v (G, H, T, D) -> (G, H, q1 - q0, D)."""
    qb = q[..., block.q0 : block.q1, :]
    if len(block.spans) == 1 and block.spans[0][0] == block.q0:  # queries == keys: top-left causal, no mask
        a, b = block.spans[0]
        kb, vb = k[..., a:b, :], v[..., a:b, :]
        return F.scaled_dot_product_attention(qb, kb, vb, dropout_p=dropout, is_causal=True, scale=scaling)
    kb = torch.cat([k[..., a:b, :] for a, b in block.spans], dim=-2)
    vb = torch.cat([v[..., a:b, :] for a, b in block.spans], dim=-2)
    n, m = block.q1 - block.q0, block.keys
    mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(m - n)  # causal aligned to the end
    return F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, dropout_p=dropout, scale=scaling)


UNSUPPORTED = ("softcap", "s_aux", "position_bias")  # attention features this kernel does not apply


def segments_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: query (R, H, T, D), key/value (R, Hkv, T, D) ->
    ((R, T, H, D), None). The blocks come in `kwargs["segments"]` (`blocks`), and `attention_mask` is then not
    read; a call without them (a two-sequence batch) is transformers' SDPA attention.
    Refuses what it would silently leave out: soft-capping, attention sinks, a position bias, and a sliding
    window narrower than a block's keys."""
    plan = kwargs.pop("segments", None)
    if plan is None:  # a call outside the layouts (a two-sequence batch, the SFT phase): the model's SDPA path
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    used = [name for name in UNSUPPORTED if kwargs.get(name) is not None]
    window = kwargs.get("sliding_window")
    if window is not None and any(block.keys > window for row in plan for block in row):
        used.append(f"sliding_window={window}")
    if used:
        raise ValueError(f"the {NAME} attention does not apply {', '.join(used)}; use --attention mask")
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads (transformers' order)
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    p = dropout if module.training else 0.0
    R, H, T, D = query.shape
    alike: dict[tuple[Block, ...], list[int]] = {}  # rows with the same blocks run as one batch (fixed shapes)
    for r, row in enumerate(plan):
        alike.setdefault(tuple(row), []).append(r)
    outs, order = [], []
    for row, members in alike.items():
        idx = torch.tensor(members, device=query.device)
        q, k, v = (query, key, value) if len(members) == R else (query[idx], key[idx], value[idx])
        parts, at = [], 0
        for block in row:
            if block.q0 > at:
                parts.append(query.new_zeros(len(members), H, block.q0 - at, D))
            parts.append(_attend(q, k, v, block, scaling, p))
            at = block.q1
        if at < T:  # padding: never scored, seen by nothing
            parts.append(query.new_zeros(len(members), H, T - at, D))
        outs.append(torch.cat(parts, dim=2))
        order.extend(members)
    out = outs[0] if len(outs) == 1 else torch.cat(outs)[torch.argsort(torch.tensor(order, device=query.device))]
    return out.transpose(1, 2).contiguous(), None  # (R, T, H, D)


def register() -> None:
    """Make `dpo_ref_segments` a transformers attention implementation (idempotent), its mask the 4-D one the
    layouts pass in (transformers hands a 4-D mask through unchanged)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, segments_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
