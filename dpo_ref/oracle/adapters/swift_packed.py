"""ms-swift's padding-free DPO log-probs as a packed-level target: `fn(logits (1, N, V), labels (1, N),
cu_seqlens (S+1,)) -> (S,)`.

ms-swift 4.6.0 pins `trl<1.0` and `transformers<5.20` (TRL 1.16 and transformers 5.25 are installed here), so the
modules on the path are executed from its published wheel (`adapters.wheel`, version VERSION, `pip download
--no-deps` once, cached), with TRL 0.24.0's `trl/trainer/utils.py` (the newest TRL ms-swift accepts) for the
`selective_log_softmax` that `rlhf_mixin.py` imports; nothing of either is copied here. Every other `swift.*`,
`trl.*`, `peft`, `modelscope` and `deepspeed` import is an inert stand-in; `swift/trainers/mixin.py` imports
`get_packed_seq_params` through the stubbed `swift.utils` package, so the real one from
`swift/utils/transformers_utils.py` is put in its place.

The calls, ms-swift 4.6.0 (file:line in the wheel), with `template.padding_free` on:

    DPOTrainer.concatenated_forward     swift/rlhf_trainers/dpo_trainer.py:117 (the model's logits; labels rolled
                                        by -1 over the whole packed row, :143-145; `get_per_token_logps`; the
                                        sums per sequence, :152-167)
    RLHFTrainerMixin.get_per_token_logps swift/rlhf_trainers/rlhf_mixin.py:147 (selective log-softmax, unscored
                                        positions set to 0)
    RLHFTrainerMixin._packed_sequence_sum swift/rlhf_trainers/rlhf_mixin.py:137 (index_add_ by segment id)
    SwiftMixin.get_cu_seqlens           swift/trainers/mixin.py:1295 -> get_packed_seq_params,
                                        swift/utils/transformers_utils.py:354 (boundaries where position_ids == 0)

The oracle's `cu_seqlens` is stated in ms-swift's terms as the position ids it reads them from (0..len-1 per
segment); the model is one that returns the given logits. ms-swift splits the segments into chosen (the first
half) and rejected; the two halves are concatenated back, which keeps every segment's value.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from dpo_ref.oracle.adapters.wheel import load_from_wheel, wheel

VERSION = "4.6.0"
TRL_VERSION = "0.24.0"  # ms-swift 4.6.0's requirement trl>=0.15,<1.0: the newest
MODULES = (
    "swift.utils.transformers_utils",
    "swift.trainers.mixin",
    "swift.rlhf_trainers.rlhf_mixin",
    "swift.rlhf_trainers.dpo_trainer",
)


@functools.cache
def load() -> SimpleNamespace:
    """ms-swift's modules on the padding-free DPO path (`Unavailable` when a wheel cannot be had)."""
    trl_utils = load_from_wheel(wheel("trl", TRL_VERSION), ["trl.trainer.utils"], {"trl", "peft", "deepspeed"})
    mods = load_from_wheel(wheel("ms-swift", VERSION), list(MODULES), {"swift", "trl", "peft", "modelscope",
                                                                       "deepspeed"})  # fmt: skip
    mods["swift.rlhf_trainers.rlhf_mixin"].selective_log_softmax = trl_utils["trl.trainer.utils"].selective_log_softmax
    mods["swift.trainers.mixin"].get_packed_seq_params = mods["swift.utils.transformers_utils"].get_packed_seq_params
    return SimpleNamespace(
        DPOTrainer=mods["swift.rlhf_trainers.dpo_trainer"].DPOTrainer,
        RLHFTrainerMixin=mods["swift.rlhf_trainers.rlhf_mixin"].RLHFTrainerMixin,
        SwiftMixin=mods["swift.trainers.mixin"].SwiftMixin,
    )


def _trainer(lib) -> SimpleNamespace:
    """The attributes concatenated_forward reads (DPOTrainer.__init__ needs a model, a template and a dataset):
    padding-free, no sequence parallelism, no logits_to_keep, no LD-DPO (`ld_alpha`), not an encoder-decoder."""
    me = SimpleNamespace(
        template=SimpleNamespace(padding_free=True, sequence_parallel_size=1),
        args=SimpleNamespace(ld_alpha=None),
        aux_loss_enabled=False,
        is_encoder_decoder=False,
        label_pad_token_id=-100,
        get_use_logits_to_keep=lambda default: False,
    )
    me.get_per_token_logps = functools.partial(lib.RLHFTrainerMixin.get_per_token_logps, me)
    me._packed_sequence_sum = lib.RLHFTrainerMixin._packed_sequence_sum
    me.get_cu_seqlens = functools.partial(lib.SwiftMixin.get_cu_seqlens, me)
    return me


def swift_packed_logps(logits: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """ms-swift 4.6.0's padding-free DPO log-probs of each packed segment, (S,)."""
    lib = load()
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]  # (1, N)
    batch = {"input_ids": labels.clamp(min=0), "labels": labels, "position_ids": position_ids}
    out = lib.DPOTrainer.concatenated_forward(_trainer(lib), lambda **kw: SimpleNamespace(logits=logits), batch)
    return torch.cat([out["chosen_logps"], out["rejected_logps"]])
