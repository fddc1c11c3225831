"""OpenRLHF's DPO batch log-prob path as a pipeline-level target, padded and packed (`packing_samples`).

OpenRLHF's package imports deepspeed, ray, vllm and flash-attn, none of which installs next to a CPU-only torch, so
the modules on the path are executed from its published wheel (`adapters.wheel`, version VERSION, `pip download
--no-deps` once, cached); nothing of OpenRLHF is copied here. What the loader answers with inert stand-ins: every
other `openrlhf.*` module (the package `__init__`s, `openrlhf.models.loss`, `openrlhf.utils.distributed_sampler`,
`openrlhf.utils.deepspeed`), `deepspeed`, `peft` and `flash_attn`; none of them is called on this path.

The one dependency that *is* called is flash-attn's padding helpers, in the packed path only
(`openrlhf/models/ring_attn_utils.py:3`: `index_first_axis, pad_input, rearrange, unpad_input` from
`flash_attn.bert_padding`). flash-attn has no CPU build, so `_flash_attn_padding` gives OpenRLHF transformers'
own pure-PyTorch versions of `unpad_input` and `pad_input` (`transformers/modeling_flash_attention_utils.py`:
`_unpad_input`, `_pad_input`, written as FA2's equivalents, same signatures and results), `index_first_axis` as
what FA2's is (rows of the flattened tensor's first axis) and, for `rearrange`, the one pattern OpenRLHF uses
(`"b s ... -> (b s) ..."`, a flatten of the first two axes); any other pattern raises. The packed forward then
runs the oracle's model on one row of concatenated sequences with OpenRLHF's position ids and no attention mask,
where transformers' mask builder finds the sequences from the position ids (`masking_utils.
find_packed_sequence_indices`) and keeps attention inside each: the SDPA counterpart of the flash-attn varlen
kernel OpenRLHF trains with.

The calls, OpenRLHF 0.11.2 (file:line in the wheel):

    RewardDataset.process_data      datasets/reward_dataset.py:101 (is_dpo: the prompt's token count, no specials)
    preprocess_data                 datasets/reward_dataset.py:9   (no chat template: the prompt and texts as given)
    RewardDataset.__getitem__       datasets/reward_dataset.py:138 (prompt + completion, " " + EOS text appended,
                                                                    tokenised together without special tokens)
    RewardDataset.collate_fn        datasets/reward_dataset.py:179 (right padding for DPO)
    DPOTrainer.concatenated_forward trainer/dpo_trainer.py:306     (chosen rows then rejected rows)
    Actor.forward                   models/actor.py:221            (position ids from the mask, or unpad + pack)
    DPOTrainer._get_batch_logps     trainer/dpo_trainer.py:361     (prompt masked by its token count, summed)

Settings as `openrlhf.cli.train_dpo`'s defaults where they touch this path: `--data.max_len 512`, no
`--data.input_template`, no `--data.apply_chat_template`, temperature 1, no ring attention; `--data.prompt_key
prompt` (the default None would make every prompt empty). The tokenizer is prepared as `openrlhf.utils.utils.
get_tokenizer` does for DPO (`cli/train_dpo.py:53`: right padding, `pad_token = eos_token` when it has none), on
a copy.
"""

from __future__ import annotations

import copy
import functools
from types import SimpleNamespace

import torch

from dpo_ref.oracle.adapters.wheel import load_from_wheel, wheel

VERSION = "0.11.2"
MAX_LEN = 512  # openrlhf/cli/train_dpo.py: --data.max_len default
MODULES = (
    "openrlhf.datasets.utils",
    "openrlhf.utils.utils",
    "openrlhf.datasets.reward_dataset",
    "openrlhf.models.ring_attn_utils",
    "openrlhf.models.utils",
    "openrlhf.models.actor",
    "openrlhf.trainer.dpo_trainer",
)


def _rearrange(tensor: torch.Tensor, pattern: str) -> torch.Tensor:
    """einops.rearrange for the single pattern OpenRLHF passes (ring_attn_utils.py:133, 138)."""
    if pattern.replace(" ", "") != "bs...->(bs)...":
        raise NotImplementedError(f"the flash-attn stand-in only knows 'b s ... -> (b s) ...', got {pattern!r}")
    return tensor.flatten(0, 1)


def _index_first_axis(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """flash-attn's `index_first_axis` on an already flattened (total, ...) tensor: rows `indices` of axis 0.
    (transformers' `_index_first_axis` takes the unflattened (batch, seq, ...) tensor, so it is not used here.)"""
    return tensor[indices]


def _flash_attn_padding() -> dict:
    from transformers.modeling_flash_attention_utils import _pad_input, _unpad_input

    return {"index_first_axis": _index_first_axis, "pad_input": _pad_input, "unpad_input": _unpad_input,
            "rearrange": _rearrange}  # fmt: skip


@functools.cache
def load() -> SimpleNamespace:
    """OpenRLHF's modules on the DPO path, executed from the wheel (`Unavailable` when it cannot be had)."""
    mods = load_from_wheel(wheel("openrlhf", VERSION), list(MODULES), {"openrlhf", "deepspeed", "peft", "flash_attn"})
    ring = mods["openrlhf.models.ring_attn_utils"]
    vars(ring).update(_flash_attn_padding())  # the names ring_attn_utils.py:3 imported (stubs until now)
    return SimpleNamespace(
        RewardDataset=mods["openrlhf.datasets.reward_dataset"].RewardDataset,
        Actor=mods["openrlhf.models.actor"].Actor,
        DPOTrainer=mods["openrlhf.trainer.dpo_trainer"].DPOTrainer,
    )


def _tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)  # get_tokenizer(..., "right") as cli/train_dpo.py:53 calls it
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _dataset(lib, tok, examples: list[dict]):
    """A RewardDataset(is_dpo=True) over `examples`, its rows prepared by its own `process_data` (what its __init__
    maps over the dataset; __init__ itself needs a `datasets.Dataset` and worker processes)."""
    ds = lib.RewardDataset.__new__(lib.RewardDataset)
    data_args = SimpleNamespace(prompt_key="prompt", chosen_key="chosen", rejected_key="rejected")
    ds.is_dpo, ds.tokenizer, ds.max_length, ds.input_template = True, tok, MAX_LEN, None
    ds.strategy = SimpleNamespace(args=SimpleNamespace(data=data_args))
    ds.prompt_key, ds.chosen_key, ds.rejected_key, ds.apply_chat_template = "prompt", "chosen", "rejected", False
    rows = [ds.process_data(ex) for ex in examples]
    ds.prompts, ds.chosens = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    ds.rejects, ds.extras = [r["reject"] for r in rows], [r["extra"] for r in rows]
    return ds


def _pipeline(model, tokenizer, examples: list[dict], packing: bool):
    lib = load()
    tok = _tokenizer(tokenizer)
    ds = _dataset(lib, tok, examples)
    chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens = ds.collate_fn([ds[i] for i in range(len(ds))])
    actor = lib.Actor.__new__(lib.Actor)  # Actor.__init__ loads a checkpoint; forward needs these three
    torch.nn.Module.__init__(actor)
    actor.model, actor.packing_samples, actor.temperature = model, packing, 1.0
    trainer = lib.DPOTrainer.__new__(lib.DPOTrainer)  # the attributes concatenated_forward reads
    trainer.tokenizer, trainer.strategy = tok, SimpleNamespace(ring_attn_group=None)
    # Actor.__init__ sets use_cache = False (actor.py:210); with a cache, transformers would not look for packed
    # sequences in the position ids and the packed row would attend across sequences. Undone after the call.
    saved = model.config.use_cache
    model.config.use_cache = False
    try:
        chosen, rejected, _, _ = trainer.concatenated_forward(actor, chosen_ids, c_mask, reject_ids, r_mask,
                                                              prompt_id_lens)  # fmt: skip
    finally:
        model.config.use_cache = saved
    return chosen, rejected


def openrlhf_pipeline(model, tokenizer, examples):
    """OpenRLHF 0.11.2's DPO log-probs, padded batch (`--ds.packing_samples` off, the default)."""
    return _pipeline(model, tokenizer, examples, packing=False)


def openrlhf_packed_pipeline(model, tokenizer, examples):
    """OpenRLHF 0.11.2's DPO log-probs with `--ds.packing_samples`: Actor.forward unpads the batch into one packed
    row (`unpad_and_slice_tensor`, ring_attn_utils.py:103), scores it, and pads the log-probs back
    (`gather_and_pad_tensor`, :151)."""
    return _pipeline(model, tokenizer, examples, packing=True)
