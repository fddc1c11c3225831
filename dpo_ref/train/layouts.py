"""Batch layouts of preference pairs: two sequences per pair, a shared prompt, and packed rows without padding.

    two-sequence    row i: prompt | chosen          row B+i: prompt | rejected         (2B rows, padded)
    prefix-sharing  row i: prompt | chosen | rejected                                  (B rows, padded)
                    the rejected tokens see the prompt and themselves, not the chosen ones (a block mask),
                    and their position ids continue from the prompt's end:

                        keys ->   p p p c c r r r
                        p         x
                        p         x x
                        p         x x x
                        c         x x x x
                        c         x x x x x
                        r         x x x       x
                        r         x x x       x x
                        r         x x x       x x x        positions 0 1 2 3 4 3 4 5

    packing         the sequences of either layout laid end to end in rows of at most `max_length` tokens,
                    each sequence attending only to itself (a block-diagonal mask), positions from 0 in each:

                        | prompt0 chosen0 | prompt0 rejected0 | prompt1 chosen1 | ...  (no padding inside a row)

Every layout is scored the same way: the model runs once over the rows (a 4-D boolean mask and explicit position
ids), and each scored token is read at the position that predicts it (`preds`: for the first rejected token
under prefix sharing that is the prompt's last position, not the chosen token before it in the row). The
result is what `two-sequence` gives: (chosen (B,), rejected (B,)) summed log-probs and token counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpo_ref.logps import token_logps
from dpo_ref.train import attention, segments

LAYOUTS = ("two-sequence", "prefix-sharing", "packing", "both")  # both = prefix sharing, then packing


@dataclass
class Piece:
    """One attention block of a row: tokens that see each other (causally) and the blocks they may also see."""

    tokens: list[int]
    positions: list[int]
    sees: tuple[int, ...] = ()  # indices of earlier pieces of the same sequence whose tokens are all visible
    scores: tuple[int, int] | None = None  # (slot, first scored index in `tokens`) or None (a prompt)


def sequences(pairs, prefix_sharing: bool) -> list[list[Piece]]:
    """Each pair's token pieces: [prompt+chosen], [prompt+rejected], or [prompt, chosen, rejected] shared."""
    B = len(pairs)
    out = []
    for i, p in enumerate(pairs):
        n = len(p.prompt_ids)
        if not prefix_sharing:
            for slot, resp in ((i, p.chosen_ids), (B + i, p.rejected_ids)):
                out.append([Piece(p.prompt_ids + resp, list(range(n + len(resp))), scores=(slot, n))])
            continue
        out.append([
            Piece(p.prompt_ids, list(range(n))),
            Piece(p.chosen_ids, list(range(n, n + len(p.chosen_ids))), sees=(0,), scores=(i, 0)),
            Piece(p.rejected_ids, list(range(n, n + len(p.rejected_ids))), sees=(0,), scores=(B + i, 0)),
        ])  # fmt: skip
    return out


def _length(seq: list[Piece]) -> int:
    return sum(len(piece.tokens) for piece in seq)


def rows_of(seqs: list[list[Piece]], packing: bool, max_length: int | None) -> list[list[list[Piece]]]:
    """Sequences per row: one each, or packed first-fit in order into rows of at most `max_length` tokens (a
    shared-prompt sequence longer than that, prompt + chosen + rejected, gets a row of its own)."""
    if not packing:
        return [[s] for s in seqs]
    rows, lengths = [], []
    for s in seqs:
        n = _length(s)
        for r, used in enumerate(lengths):
            if max_length is None or used + n <= max_length:
                rows[r].append(s)
                lengths[r] += n
                break
        else:
            rows.append([s])
            lengths.append(n)
    return rows


def collate(pairs, layout: str, pad_token_id: int, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The batch of `pairs` in `layout`: input_ids (R, T), attention_mask (R, 1, T, T) bool, position_ids (R, T),
    the same mask as per-token ids (segment_ids, piece_ids, shared (R, T): `dpo_ref.train.attention`), and
    where each scored token is read: rows, preds (the predicting position), targets, slots (S,); index (B,)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    seqs = sequences(pairs, prefix_sharing=layout in ("prefix-sharing", "both"))
    rows = rows_of(seqs, packing=layout in ("packing", "both"), max_length=max_length)
    T = max(sum(_length(s) for s in row) for row in rows)
    R = len(rows)
    input_ids = torch.full((R, T), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(R, T, dtype=torch.long)
    mask = torch.zeros(R, T, T, dtype=torch.bool)
    segment_ids = torch.full((R, T), -1, dtype=torch.long)  # the block mask's description (dpo_ref.train.attention)
    piece_ids = torch.full((R, T), -1, dtype=torch.long)
    shared = torch.zeros(R, T, dtype=torch.bool)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    score_rows, preds, targets, slots = [], [], [], []
    for r, row in enumerate(rows):
        at = pieces = 0
        for s, seq in enumerate(row):
            starts = []
            seen = {j for piece in seq for j in piece.sees}
            for k, piece in enumerate(seq):
                a, n = at, len(piece.tokens)
                starts.append(a)
                segment_ids[r, a : a + n] = s
                piece_ids[r, a : a + n] = pieces + k
                shared[r, a : a + n] = k in seen
                input_ids[r, a : a + n] = torch.tensor(piece.tokens)
                position_ids[r, a : a + n] = torch.tensor(piece.positions)
                mask[r, a : a + n, a : a + n] = causal[:n, :n]
                for j in piece.sees:
                    mask[r, a : a + n, starts[j] : starts[j] + len(seq[j].tokens)] = True
                if piece.scores is not None:
                    slot, first = piece.scores
                    # the token at t is predicted at t - 1; a piece's first token by the last one it sees
                    before = starts[piece.sees[-1]] + len(seq[piece.sees[-1]].tokens) - 1 if piece.sees else None
                    for t in range(first, n):
                        pred = a + t - 1 if t > 0 else before
                        score_rows.append(r)
                        preds.append(pred)
                        targets.append(piece.tokens[t])
                        slots.append(slot)
                at += n
            pieces += len(seq)
        mask[r, at:, at:] = torch.eye(T - at, dtype=torch.bool)  # padding sees itself only (no empty softmax row)
    return {
        "input_ids": input_ids,
        "attention_mask": mask.unsqueeze(1),  # (R, 1, T, T)
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "piece_ids": piece_ids,
        "shared": shared,
        "score_rows": torch.tensor(score_rows, dtype=torch.long),
        "score_preds": torch.tensor(preds, dtype=torch.long),
        "score_targets": torch.tensor(targets, dtype=torch.long),
        "score_slots": torch.tensor(slots, dtype=torch.long),
        "index": torch.tensor([p.index for p in pairs], dtype=torch.long),
    }


def score(model, batch: dict, scored_head_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logps (2B,), counts (2B,)): one forward over the layout's rows, each scored token read where it is
    predicted (chosen of pair i in slot i, rejected in slot B + i). `scored_head_only`: the output layer runs
    only at the predicting positions (a plain `nn.Linear` head), so the (R, T, V) logits never exist."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    kernel = getattr(model.config, "_attn_implementation", None)
    if kernel == "flex_attention":  # --attention flex
        inputs["attention_mask"] = attention.block_mask(batch)
    elif kernel == segments.NAME:  # --attention segments: the blocks go to every attention layer
        inputs["segments"] = segments.blocks(batch["segment_ids"], batch["piece_ids"], batch["shared"])
    where = (batch["score_rows"], batch["score_preds"])
    if scored_head_only:
        hidden = model.base_model(**inputs, use_cache=False).last_hidden_state  # (R, T, H)
        picked = model.get_output_embeddings()(hidden[where])  # (S, V)
    else:
        picked = model(**inputs, use_cache=False).logits[where]  # (S, V)
    per_token = token_logps(picked, batch["score_targets"])  # (S,)
    slots = batch["score_slots"]
    n = 2 * batch["index"].shape[0]
    logps = torch.zeros(n, dtype=per_token.dtype, device=per_token.device).index_add(0, slots, per_token)
    counts = torch.zeros(n, dtype=torch.long, device=slots.device).index_add(0, slots, torch.ones_like(slots))
    return logps, counts


@dataclass
class LayoutCollator:
    """`collate` as a collator: pairs -> one batch in `layout` (packed rows of at most `max_length` tokens)."""

    pad_token_id: int
    layout: str
    max_length: int | None = None

    def __call__(self, pairs) -> dict[str, torch.Tensor]:
        return collate(list(pairs), self.layout, self.pad_token_id, self.max_length)


def pipeline(layout: str, kernel: str = "mask"):
    """The trainer's batch log-prob path in `layout` as a pipeline-level target for `dpo-ref verify`:
    fn(model, tokenizer, examples) -> (chosen_logps, rejected_logps), tokenised as `dpo-ref train` does, the
    attention run by `kernel` (`mask`, or `segments`: the model's attention is switched for the call and back)."""
    from dpo_ref.train.data import untruncated_pair

    def fn(model, tokenizer, examples):
        pairs = [untruncated_pair(dict(ex), tokenizer, i) for i, ex in enumerate(examples)]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        own = model.config._attn_implementation
        attention.use(model, kernel)
        try:
            logps, _ = score(model, collate(pairs, layout, pad))
        finally:
            if model.config._attn_implementation != own:
                model.set_attn_implementation(own)
        return logps[: len(pairs)], logps[len(pairs) :]

    fn.__name__ = fn.__qualname__ = layout.replace("-", "_") + ("" if kernel == "mask" else f"_{kernel}")
    return fn


two_sequence = pipeline("two-sequence")
prefix_sharing = pipeline("prefix-sharing")
packing = pipeline("packing")
prefix_sharing_packed = pipeline("both")
prefix_sharing_segments = pipeline("prefix-sharing", "segments")
packing_segments = pipeline("packing", "segments")
prefix_sharing_packed_segments = pipeline("both", "segments")
