"""The work a layout's step does, counted: the forward FLOPs of a collated batch under an attention kernel.

The layout bench prints, beside each measured speed-up, the ratio of the two-sequence step's FLOPs to the
layout's: the speed-up the layout would give if time were proportional to arithmetic. A step is the policy's
forward and backward plus the reference's forward, about 4 forwards for every term below, so the ratio of
forwards is the ratio of steps. Per forward, for a Llama of `BenchSize` (d = hidden, L = layers, V = vocab):

    body       2 x (positions the model runs, padding included) x L x (4 d^2 [q, k, v, o with kv heads] + 3 d i)
    attention  2 x (query-key products computed) x L x 2 d                                 [QK^T and AV]
    head       2 x (scored positions) x d x V                 [the output layer runs only where a token is scored]

"Computed" is what each kernel does, not what the mask lets through: SDPA with a mask computes every (q, k) of
its rows and masks them after (`mask`, and the two-sequence step when a row has padding); a causal call without
a mask skips the tiles above the diagonal, counted as n (n + 1) / 2 (the two-sequence step without padding,
`segments`' causal blocks); `segments`' other blocks (rejected queries over prompt + rejected keys, under an
explicit mask) compute n x keys; `flex` is counted at the visible products (its kernel skips whole tiles only,
so this is its best case).
"""

from __future__ import annotations

from dpo_ref.bench.sizes import BenchSize


def _per_token_layer_macs(size: BenchSize) -> int:
    head_dim = size.hidden // size.heads
    attention = 2 * size.hidden * size.hidden + 2 * size.hidden * size.kv_heads * head_dim  # q, o; k, v
    return attention + 3 * size.hidden * size.intermediate  # + gate, up, down


def attention_products(batch: dict, kernel: str) -> int:
    """(query, key) products one attention layer computes on `batch` (a collated two-sequence or layout batch)."""
    R, T = batch["input_ids"].shape
    if "segment_ids" not in batch:  # the two-sequence step: a 2-D padding mask
        padded = bool((batch["attention_mask"] == 0).any())
        return R * T * T if padded else R * T * (T + 1) // 2
    if kernel == "mask":
        return R * T * T
    if kernel == "flex":
        from dpo_ref.train.attention import dense_from_ids

        return int(dense_from_ids(batch["segment_ids"], batch["piece_ids"], batch["shared"]).sum())
    if kernel == "segments":
        from dpo_ref.train.segments import blocks

        total = 0
        for row in blocks(batch["segment_ids"], batch["piece_ids"], batch["shared"]):
            for block in row:
                n = block.q1 - block.q0
                causal = len(block.spans) == 1 and block.spans[0][0] == block.q0
                total += n * (n + 1) // 2 if causal else n * block.keys
        return total
    raise ValueError(f"kernel must be mask, segments or flex, got {kernel!r}")


def scored_positions(batch: dict) -> int:
    if "score_targets" in batch:
        return int(batch["score_targets"].numel())
    return int((batch["labels"][:, 1:] != -100).sum())


def forward_flops(batch: dict, kernel: str, size: BenchSize) -> float:
    """FLOPs of one forward of `bench_model(size)` over `batch` under `kernel` (the module doc's count)."""
    R, T = batch["input_ids"].shape
    body = R * T * size.layers * _per_token_layer_macs(size)
    attention = attention_products(batch, kernel) * size.layers * 2 * size.hidden
    head = scored_positions(batch) * size.hidden * size.vocab
    return 2.0 * (body + attention + head)
