"""Real libraries' DPO batch log-prob paths as pipeline-level targets: `fn(model, tokenizer, examples)`.

Each adapter runs the library's own tokenisation, collation and forward on the model and tokenizer the oracle
gives, and returns what the library computes as the chosen and rejected log-probs; nothing of the library is
re-implemented or copied. Where the library keeps those values in locals of a larger method (TRL computes them
inline in `DPOTrainer._compute_loss`), `_locals_at` runs the method as it is and reads its locals at the first line
where they are bound, then stops it (the rest is the loss and its metrics). docs/pipelines.md gives, per library,
the functions exercised (file:line in the version read), the convention the oracle detects and the verdict.

`dpo-ref verify trl --level pipeline` (and `torchtune`; `openrlhf`, `openrlhf-packed` and `llamafactory`, whose
adapters live in `openrlhf_pipeline.py` and `llamafactory_pipeline.py`) runs these; any adapter is also a verify target:
`dpo-ref verify dpo_ref.oracle.adapters.pipelines:trl_pipeline --level pipeline`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import sys
import types
import warnings

import torch

from dpo_ref.atomic import scratch_dir
from dpo_ref.oracle.adapters import trl_trainer


class _Stop(Exception):
    """Raised from the trace function once the wanted locals are read: the rest of the method does not run."""


def _locals_at(code, names: tuple[str, ...], call) -> tuple:
    """Run `call()`; in the first frame running `code`, return `names` from its locals at the first line where all
    are bound, and stop that frame there. A `sys.settrace` hook: the method runs unmodified up to that line."""
    got: dict = {}

    def local(frame, event, arg):
        if event == "line" and all(n in frame.f_locals for n in names):
            got.update((n, frame.f_locals[n]) for n in names)
            raise _Stop
        return local

    def global_(frame, event, arg):
        return local if frame.f_code is code and not got else None

    previous = sys.gettrace()
    sys.settrace(global_)
    try:
        call()
    except _Stop:
        pass
    finally:
        sys.settrace(previous)
    if not got:
        raise RuntimeError(f"{code.co_qualname} returned without binding {', '.join(names)}")
    return tuple(got[n] for n in names)


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), trl_trainer._quiet_logs():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------------------------------------------
# TRL


def trl_pipeline(model, tokenizer, examples):
    """TRL's DPOTrainer on `model`: its dataset preparation (`_prepare_dataset`: EOS appended to the completion text,
    prompt and prompt+completion tokenised, the completion starting where the two diverge), its
    `DataCollatorForPreference` (chosen rows then rejected rows, right padding) and its policy forward in
    `_compute_loss` (labels masked outside the completion, the fused LM head's per-token log-probs, summed), read at
    `chosen_logps, rejected_logps = logps.chunk(2, dim=0)`.

    DPOConfig as TRL's defaults except: bf16=False (TRL defaults to bf16 autocast; the oracle's models are
    float64), use_cpu, no reporting, the whole list as one batch. TRL sets `pad_token = eos_token` itself when the
    tokenizer has none (DPOTrainer.__init__); it is given a copy, so the oracle's tokenizer is left as it was. The
    reference model (needed to build the trainer, never run here) is a copy of `model`. TRL patches `model.forward`
    with its fused LM head and sets `config.pad_token_id`; both are undone before returning.
    """
    trl_trainer.import_trl()
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    saved_pad = (model.config.pad_token_id, getattr(model.generation_config, "pad_token_id", None))
    had_forward = "forward" in vars(model)
    with _quiet():
        args = DPOConfig(output_dir=scratch_dir("dpo-ref-trl-pipeline-"), per_device_train_batch_size=len(examples),
                         report_to=[], use_cpu=True, bf16=False, disable_tqdm=True)  # fmt: skip
        trainer = DPOTrainer(
            model=model,
            ref_model=copy.deepcopy(model),
            args=args,
            train_dataset=Dataset.from_list(examples),
            processing_class=copy.deepcopy(tokenizer),
        )
    try:
        rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
        batch = trainer.data_collator(rows)
        with _quiet():
            return _locals_at(DPOTrainer._compute_loss.__code__, ("chosen_logps", "rejected_logps"),
                              lambda: trainer._compute_loss(model, batch, False))  # fmt: skip
    finally:
        if not had_forward:
            vars(model).pop("forward", None)
        model.config.pad_token_id, model.generation_config.pad_token_id = saved_pad


# ---------------------------------------------------------------------------------------------------
# Dispatch: `dpo-ref verify trl --level pipeline`

BUILTIN = {  # name -> (module, function)
    "trl": ("dpo_ref.oracle.adapters.pipelines", "trl_pipeline"),
    "torchtune": ("dpo_ref.oracle.adapters.pipelines", "torchtune_pipeline"),
    "openrlhf": ("dpo_ref.oracle.adapters.openrlhf_pipeline", "openrlhf_pipeline"),
    "openrlhf-packed": ("dpo_ref.oracle.adapters.openrlhf_pipeline", "openrlhf_packed_pipeline"),
    "llamafactory": ("dpo_ref.oracle.adapters.llamafactory_pipeline", "llamafactory_pipeline"),
}


def run(name: str, cfg, only=None):
    """The pipeline-level report for built-in adapter `name` (its entry in `BUILTIN`)."""
    from dpo_ref.errors import InputError
    from dpo_ref.oracle.levels import verify_pipeline
    from dpo_ref.oracle.pipeline import PipelineTarget

    if name not in BUILTIN:
        raise InputError(f"{name} has no pipeline-level adapter; pipeline adapters: {', '.join(BUILTIN)}")
    module, fn_name = BUILTIN[name]
    src = f"from {module} import {fn_name} as fn"
    return verify_pipeline(PipelineTarget(getattr(importlib.import_module(module), fn_name), name, src), cfg, only)


# ---------------------------------------------------------------------------------------------------
# torchtune


class _TorchtuneHFTokenizer:
    """torchtune's model-tokenizer contract (`encode`, `tokenize_messages`, `pad_id`) over torchtune's own
    `HuggingFaceBaseTokenizer` (0.6.1 has no model tokenizer for a tokenizer.json). `tokenize_messages` is
    torchtune's `tokenize_messages_no_special_tokens` (what its Llama 2, Mistral and Gemma tokenizers call) with BOS and
    EOS ids; the one piece of glue is that `encode` accepts and ignores `trim_leading_whitespace`, which that function
    passes and `HuggingFaceBaseTokenizer.encode` does not take (a SentencePiece quirk; byte-level BPE has none)."""

    def __init__(self, hf_tokenizer):
        from torchtune.modules.transforms.tokenizers import HuggingFaceBaseTokenizer

        folder = scratch_dir("dpo-ref-torchtune-tok-")
        hf_tokenizer.save_pretrained(folder)
        self.base = HuggingFaceBaseTokenizer(f"{folder}/tokenizer.json",
                                             tokenizer_config_json_path=f"{folder}/tokenizer_config.json")  # fmt: skip
        self.pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
        self.max_seq_len = None  # the recipe default: no truncation

    def encode(self, text, add_bos=True, add_eos=True, trim_leading_whitespace=False):
        return self.base.encode(text, add_bos=add_bos, add_eos=add_eos)

    def tokenize_messages(self, messages):
        from torchtune.modules.transforms.tokenizers import tokenize_messages_no_special_tokens

        return tokenize_messages_no_special_tokens(self, messages, bos_id=self.base.bos_id, eos_id=self.base.eos_id)


def torchtune_pipeline(model, tokenizer, examples):
    """torchtune 0.6.1's DPO path: each row as a user/assistant conversation through `ChosenRejectedToMessages`
    and `PreferenceDataset._prepare_sample` (prompt labels -100), `padded_collate_dpo` (chosen rows then rejected,
    right padding, no attention mask) and the recipe's `concatenated_forward` (lora_dpo_single_device.py:
    `model(input_ids)`, then `rlhf.get_batch_log_probs`), the model's logits as torchtune's model output."""
    from torchtune.data import ChosenRejectedToMessages, padded_collate_dpo
    from torchtune.datasets import PreferenceDataset

    from dpo_ref.oracle.adapters.torchtune_batch import recipe

    tok = _TorchtuneHFTokenizer(tokenizer)
    dataset = types.SimpleNamespace(_message_transform=ChosenRejectedToMessages(), _tokenizer=tok)
    rows = []
    for ex in examples:
        conv = {side: [{"role": "user", "content": ex["prompt"]}, {"role": "assistant", "content": ex[side]}]
                for side in ("chosen", "rejected")}  # fmt: skip
        rows.append(PreferenceDataset._prepare_sample(dataset, conv))
    batch = padded_collate_dpo(rows, padding_idx=tok.pad_id)
    me = types.SimpleNamespace(_device=torch.device("cpu"), activations_handling_ctx=contextlib.nullcontext())
    chosen, rejected, _, _ = recipe().concatenated_forward(me, lambda ids: model(input_ids=ids).logits, batch)
    return chosen, rejected
