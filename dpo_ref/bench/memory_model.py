"""The memory of one `dpo-ref train` step, by arithmetic: THE formula, stated once, that docs/performance.md prints
for a 7B Llama and `dpo-ref bench --memory` checks against what it measures on small ones.

Per process, in bytes, for a Llama of P parameters (T of them trained) and L layers, hidden h, key/value width
kv = kv_heads x head_dim, MLP width i, vocabulary V, on a micro-batch of N tokens of which S are scored:

    weights          4 P                         float32 master weights, whatever --dtype (dpo_ref.train.precision)
    reference        4 P, or 0                   the frozen copy of a full fine-tune; 0 for LoRA (the same weights
                                                 with the adapters off), for --precompute-ref, or a reference-free loss
    gradients        4 T                         float32, one per trained parameter
    AdamW moments    8 T + 4 t                   exp_avg and exp_avg_sq (float32), and a float32 step counter per
                                                 trained tensor (t tensors)
    weight casts     2 W  (bfloat16 only)        autocast's bf16 copy of each linear layer's weight (W of the P
                                                 parameters), kept for the backward pass (`weight_cast_bytes`)
    activations      N (L a + 2 f h) + S b       a bytes per token per layer, saved for the backward pass (below),
                                                 the final norm's, and b per scored token: the output layer's input
                                                 and logits (`SequenceScorer` runs it at the scored positions only)

The saved tensors of one decoder layer per token (transformers' `LlamaDecoderLayer`; `f` the bytes of a float32
value, `c` of the compute dtype: 4 and 4 in float32, 4 and 2 under bfloat16 autocast, where the residual stream
and RMSNorm stay float32 and the linear layers' inputs are cast to bf16):

    2 RMSNorms       2 x 2 f h + 2 f h, or       each: its input (the float32 residual stream) and x / rms(x);
                     2 x 2 f h + 5 c h           its output, which the linear layers read (under autocast one bf16
                                                 cast per reader: q, k, v and gate, up)
    attention        c (h + 2 kv) + c h          q and k after the rotary embedding, v (SDPA's inputs), SDPA's
                                                 output (o_proj's input is a view of it)
    MLP              4 c i                       gate, silu(gate), up, and their product (down_proj's input)

plus, per token, the final norm's input and x / rms (2 f h), and per scored token the output layer's input and
logits (`head_activation_bytes`).

With --gradient-checkpointing a layer keeps only its input (4 h per token: the residual stream is float32) and
recomputes the rest in the backward pass, one layer at a time: L 4 h N + a N. With LoRA the frozen layers' inputs
are still kept (the gradient flows through them to the adapters below), so the activations barely change;
LoRA's saving is the gradients and moments (T = the adapters' parameters). FSDP over G processes shards the
weights, gradients and moments: each process holds 1/G of them (plus one layer's gathered weights at a time,
left out here) and its own micro-batch's activations in full.

What the formula leaves out (so what the measured peak has beyond it): the temporaries of the op running at the
peak (one gradient of an activation, a matmul's workspace), the attention mask and rotary tables, the
allocator's slack on CUDA and the RSS of everything else on CPU. `tests/bench/test_bench_memory.py` checks the
formula against the measured tensors of the tiny model with the tolerance that follows from this.
"""

from __future__ import annotations

from dataclasses import dataclass

F32 = 4
BF16 = 2
GIB = 2**30


@dataclass(frozen=True)
class LlamaShape:
    """A Llama's shape (untied input and output embeddings, no biases)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool = False
    qkv_bias: bool = False  # Qwen2: q, k and v have biases

    @property
    def kv(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    @property
    def layer_linear(self) -> int:
        """Weights of one layer's linear layers: q, k, v, o, gate, up, down."""
        return 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv + 3 * self.hidden * self.intermediate

    @property
    def linear(self) -> int:
        """Weights of every linear layer (the ones autocast casts), the output layer included."""
        return self.layers * self.layer_linear + (0 if self.tied else self.vocab * self.hidden)

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        biases = (self.hidden + 2 * self.kv) if self.qkv_bias else 0
        return embeddings + self.layers * (self.layer_linear + biases + 2 * self.hidden) + self.hidden

    @property
    def tensors(self) -> int:
        """Parameter tensors: the embedding, 7 linear + 2 norm weights per layer, the final norm, the head."""
        return 1 + (9 + (3 if self.qkv_bias else 0)) * self.layers + 1 + (0 if self.tied else 1)

    def lora(self, r: int, targets: tuple[str, ...] = ("q_proj", "v_proj")) -> tuple[int, int]:
        """(parameters, tensors) of LoRA adapters of rank r on `targets` in every layer: A (r, in), B (out, r)."""
        h, kv, i = self.hidden, self.kv, self.intermediate
        shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
                  "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip
        per_layer = sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)
        return self.layers * per_layer, self.layers * 2 * len(targets)


LLAMA_7B = LlamaShape(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008, vocab=32000)


def layer_activation_bytes(shape: LlamaShape, dtype: str, lora: bool = False) -> int:
    """a: bytes saved for the backward pass per token by one decoder layer (see the module docstring).

    Under autocast each linear layer casts its input to bf16 itself (a cast of a non-leaf tensor is not cached), so
    the first norm's output is kept once per reader: q, k, v (3 c h), the second's by gate and up (2 c h); in
    float32 the readers share one tensor. `lora`: LoRA on q_proj and v_proj (peft's default for Llama and Qwen2),
    every other weight frozen: a frozen linear layer keeps no input (its input's gradient needs only its weight)
    and a frozen norm weight no x / rms, so the layer keeps its input and the middle residual, the first norm's
    output (read by the q and v adapters' A: 2 casts under autocast), the attention's tensors, the MLP's gate,
    silu and up, and the adapters' r-wide inputs of B (negligible, left out)."""
    h, kv, i = shape.hidden, shape.kv, shape.intermediate
    c = compute_bytes(dtype)
    autocast = c != F32
    attention = c * (h + 2 * kv) + c * h
    if lora:
        return 2 * F32 * h + (2 * c * h if autocast else F32 * h) + attention + 3 * c * i
    norms = 2 * 2 * F32 * h + (5 * c * h if autocast else 2 * F32 * h)
    return norms + attention + 4 * c * i


def compute_bytes(dtype: str) -> int:
    """Bytes of a value the linear layers compute: float32, or bf16/fp16 under autocast."""
    return BF16 if dtype in ("bfloat16", "float16") else F32


def head_activation_bytes(shape: LlamaShape, dtype: str, lora: bool = False) -> int:
    """Bytes saved per scored token by the output layer and the log-softmax: the layer's input (its bf16 cast under
    autocast; none when the layer is frozen, under LoRA) and the logits."""
    c = compute_bytes(dtype)
    return (0 if lora else c * shape.hidden) + c * shape.vocab


def weight_cast_bytes(shape: LlamaShape, dtype: str, *, lora: bool, checkpointing: bool) -> int:
    """Autocast's bf16 copies of the linear weights alive in the step. A trained weight's copy is cached until the
    autocast region ends (forward and backward), checkpointing or not: the whole model's. A frozen weight's copy
    is not cached but kept for the backward pass by its layer (the input's gradient needs it), so under LoRA with
    checkpointing only the recomputed layer's and the output layer's are alive at once."""
    if compute_bytes(dtype) == F32:
        return 0
    if lora and checkpointing:
        return BF16 * (shape.layer_linear + (0 if shape.tied else shape.vocab * shape.hidden))
    return BF16 * shape.linear


def step_memory(
    shape: LlamaShape,
    *,
    tokens: int,
    scored: int,
    dtype: str = "float32",
    lora_r: int | None = None,
    checkpointing: bool = False,
    reference: bool = True,
    shards: int = 1,
) -> dict[str, int]:
    """Bytes per process of one training step, by category, and their `total` (the module docstring's formula).

    `tokens` N: the micro-batch's tokens (chosen and rejected rows, padding included); `scored` S: its scored
    (response) tokens; `reference`: a frozen reference copy is held (a full fine-tune without --precompute-ref);
    `shards` G: FSDP over G processes (1: no sharding)."""
    P = shape.params
    if lora_r is None:
        trained, trained_tensors = P, shape.tensors
    else:
        trained, trained_tensors = shape.lora(lora_r)
        P += trained
    out = {
        "weights": F32 * P // shards,
        "reference": F32 * shape.params // shards if reference and lora_r is None else 0,
        "gradients": F32 * trained // shards,
        "optimizer": (2 * F32 * trained + F32 * trained_tensors) // shards,
        "weight_casts": weight_cast_bytes(shape, dtype, lora=lora_r is not None, checkpointing=checkpointing),
    }
    a = layer_activation_bytes(shape, dtype, lora=lora_r is not None)
    layers = (shape.layers * F32 * shape.hidden + a) if checkpointing else shape.layers * a
    lora = lora_r is not None
    final_norm = (1 if lora else 2) * F32 * shape.hidden  # its input, and x / rms unless its weight is frozen
    out["activations"] = tokens * (layers + final_norm) + scored * head_activation_bytes(shape, dtype, lora)
    held = out["weights"] + out["reference"] + out["optimizer"]
    # the backward pass frees the activations as it makes the gradients: the step's peak is at least the larger of
    # the two (end of forward, end of backward) and at most their sum
    out["peak"] = held + out["weight_casts"] + max(out["activations"], out["gradients"])
    out["total"] = held + out["weight_casts"] + out["activations"] + out["gradients"]
    return out


# the options of the 7B table in docs/performance.md: (label, step_memory keywords)
OPTIONS = (
    ("full", {}),
    ("full, precomputed reference", {"reference": False}),
    ("full + checkpointing", {"checkpointing": True}),
    ("LoRA r=16", {"lora_r": 16}),
    ("LoRA r=16 + checkpointing", {"lora_r": 16, "checkpointing": True}),
    ("FSDP x 8, full", {"shards": 8}),
    ("FSDP x 8, full + checkpointing", {"shards": 8, "checkpointing": True}),
)
GPU_BYTES = 80 * 10**9  # "fits on one 80 GB GPU" (80 GB = 74.5 GiB; CUDA's context takes ~0.5 GiB more)


def table_7b(tokens: int = 4096, scored_fraction: float = 0.5) -> list[str]:
    """The 7B Llama table of docs/performance.md, one line per option and dtype (GiB), printed from `step_memory`:
    `tokens` per micro-batch (e.g. 2 pairs x 2 sequences x 1024), half of them scored. The peak lies between
    `peak` (activations and gradients never both whole) and `total` (both at once); "80 GB GPU" judges `total`."""
    scored = int(tokens * scored_fraction)
    cols = ("weights", "reference", "gradients", "optimizer", "weight_casts", "activations", "peak", "total")
    names = ("weights", "reference", "gradients", "AdamW", "casts", "activations", "peak from", "to")
    lines = [
        f"Llama 7B ({LLAMA_7B.params / 1e9:.2f} B parameters), {tokens} tokens per micro-batch ({scored} scored), "
        "GiB per process",
        f"{'option':31}{'dtype':>9}" + "".join(f"{c:>12}" for c in names) + f"{'80 GB GPU':>11}",
    ]
    for label, options in OPTIONS:
        for dtype in ("float32", "bfloat16"):
            m = step_memory(LLAMA_7B, tokens=tokens, scored=scored, dtype=dtype, **options)
            fits = "fits" if m["total"] <= GPU_BYTES else "no"
            lines.append(f"{label:31}{dtype:>9}" + "".join(f"{m[c] / GIB:>12.1f}" for c in cols) + f"{fits:>11}")
    return lines
