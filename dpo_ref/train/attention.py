"""The attention kernel of the shared-prompt and packed layouts: a 4-D boolean mask, causal blocks, or FlexAttention.

`dpo_ref.train.layouts.collate` gives every row a dense (T, T) mask, which any attention implementation that
takes a 4-D mask runs (SDPA, eager): `mask`. It computes all T x T scores of a row and masks most away: a packed
row of four 256-token sequences pays for 1024^2 scores where the sequences need 4 x 256^2 / 2. `segments`
(`dpo_ref.train.segments`) runs the same pattern as causal blocks, one SDPA call per block over its own keys:
what flash-attention's varlen kernel does, as a loop, on any device and any model whose transformers class takes
a custom attention function. On CUDA the pattern can instead go to FlexAttention
(`torch.nn.attention.flex_attention`) as a `BlockMask`, whose kernel skips the (query block, key block) tiles
that are all masked out (the chosen tokens for a rejected query, the other sequences of a packed row): `flex`.
The blocks and the block mask are not read from the dense mask but built from three per-token ids by one rule
(`allowed`), so they are independent descriptions of the layout and tests hold them equal:

    key kv is visible from query q  <=>  q == kv                                       (every token sees itself)
                                      or  same sequence, kv <= q, and (same piece or kv in a shared piece)

where a sequence is one pair's tokens (or one of its two sequences) in the row, a piece its prompt, chosen or
rejected block (`layouts.Piece`), and a piece is shared when later pieces see it (the prompt under prefix
sharing). Padding is a sequence of its own per token (it sees only itself, as in the dense mask). What `flex`
does not save yet: the dense mask is still collated and moved to the device with the batch, and an uncompiled
`create_block_mask` evaluates the rule over every (q, kv) (a (R, 1, T, T) tensor) before it keeps the blocks.

`auto` is `segments` on the CPU, where the layout bench measured it faster than `mask` (docs/performance.md),
for models that take it, and `mask` elsewhere: neither `segments` nor `flex` has run on a GPU, so on CUDA they
run only when asked for (`--attention flex` is CUDA only: FlexAttention has no backward on the CPU in torch
2.13). The trainer names the kernel in its summary line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dpo_ref.errors import InputError

if TYPE_CHECKING:  # torch is imported where it runs: the CLI's option table reads KERNELS without it
    import torch

KERNELS = ("auto", "mask", "segments", "flex")


def allowed(segment_ids: torch.Tensor, piece_ids: torch.Tensor, shared: torch.Tensor, b, q, kv) -> torch.Tensor:
    """The visibility rule above for row `b`, query `q`, key `kv` (tensors broadcast): True where kv is seen."""
    same_sequence = (segment_ids[b, q] == segment_ids[b, kv]) & (segment_ids[b, q] >= 0)
    same_or_shared = (piece_ids[b, q] == piece_ids[b, kv]) | shared[b, kv]
    return (q == kv) | (same_sequence & (kv <= q) & same_or_shared)


def dense_from_ids(segment_ids: torch.Tensor, piece_ids: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """`allowed` evaluated on every (q, kv): (R, T, T) bool, what the block mask stands for."""
    import torch

    R, T = segment_ids.shape
    b = torch.arange(R).view(R, 1, 1)
    q = torch.arange(T).view(1, T, 1)
    kv = torch.arange(T).view(1, 1, T)
    return allowed(segment_ids, piece_ids, shared, b, q, kv)


def block_mask(batch: dict):
    """FlexAttention's `BlockMask` of a collated layout batch (on the batch's device), from its per-token ids."""
    from torch.nn.attention.flex_attention import create_block_mask

    segment_ids, piece_ids, shared = batch["segment_ids"], batch["piece_ids"], batch["shared"]
    R, T = segment_ids.shape

    def mask_mod(b, h, q, kv):
        return allowed(segment_ids, piece_ids, shared, b, q, kv)

    return create_block_mask(mask_mod, R, None, T, T, device=segment_ids.device)


def flex_supported(model) -> bool:
    """Whether torch has FlexAttention and `model`'s transformers class can run it."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return bool(getattr(model, "_supports_flex_attn", False))


def segments_supported(model) -> bool:
    """Whether `model`'s transformers class takes a custom attention function (`dpo_ref.train.segments`) and
    uses nothing that kernel leaves out (soft-capped attention logits)."""
    config = getattr(model, "config", None)
    return bool(getattr(model, "_supports_attention_backend", False)) and (
        getattr(config, "attn_logit_softcapping", None) is None
    )


def check_layout(requested: str, layout: str) -> None:
    """The refusals that need only the options (run with the other option checks, before anything loads)."""
    if requested not in KERNELS:
        raise InputError(f"--attention must be one of {', '.join(KERNELS)}, got {requested!r}")
    if layout == "two-sequence" and requested in ("flex", "segments"):
        raise InputError(f"--attention {requested} needs --prefix-sharing or --packing (the two-sequence layout "
                         "has no block mask)")  # fmt: skip


def choose(requested: str, layout: str, device: torch.device, model) -> str:
    """The kernel `--attention requested` runs for `layout` on `device`: `mask`, `segments` or `flex`
    (InputError if refused). The two-sequence layout uses the model's own attention with its 2-D padding mask:
    `mask`. `auto`: `segments` on the CPU where the model takes it (measured faster there, docs/performance.md),
    else `mask`; on CUDA `mask`, until the other kernels have run on a GPU (see the module doc)."""
    check_layout(requested, layout)
    if layout == "two-sequence" or requested == "mask":
        return "mask"
    if requested == "auto":
        return "segments" if device.type == "cpu" and segments_supported(model) else "mask"
    if requested == "segments":
        if not segments_supported(model):
            raise InputError(f"--attention segments: {type(model).__name__} does not take a custom attention "
                             "function in this transformers (or soft-caps its attention); "
                             "use --attention mask")  # fmt: skip
        return "segments"
    usable = device.type == "cuda" and flex_supported(model)
    if device.type != "cuda":
        raise InputError("--attention flex: FlexAttention has no backward pass on the CPU in this torch; use "
                         "--attention mask or segments (or auto) on the CPU")  # fmt: skip
    if not usable:
        raise InputError(f"--attention flex: {type(model).__name__} cannot run FlexAttention in this transformers "
                         "(or torch lacks it); use --attention mask")  # fmt: skip
    return "flex"


def use(model, kernel: str) -> None:
    """Switch `model`'s attention to what `kernel` needs: FlexAttention for `flex`, the segmented kernel
    (`dpo_ref.train.segments`) for `segments`; `mask` keeps the model's own."""
    if kernel == "flex":
        model.set_attn_implementation("flex_attention")
    elif kernel == "segments":
        from dpo_ref.train import segments

        segments.register()
        model.set_attn_implementation(segments.NAME)
