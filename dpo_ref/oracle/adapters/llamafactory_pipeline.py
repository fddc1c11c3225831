"""LLaMA-Factory's DPO batch log-prob path as a pipeline-level target.

LLaMA-Factory 0.9.5 pins `trl<=0.24` and `transformers<=5.6` (TRL 1.16 and transformers 5.25 are installed here),
so the modules on its path are executed from its published wheel (`adapters.wheel`, version VERSION, `pip
download --no-deps` once, cached); nothing of LLaMA-Factory is copied here. The loader answers with inert
stand-ins: every other `llamafactory.*` module (`extras.logging`, `extras.packages`, `extras.misc`, `hparams`,
`model`, `train.callbacks`; the logger's calls do nothing, and the `is_*_available` probes of `extras.packages`
answer False, so no image or audio library is imported), `trl` (`CustomDPOTrainer`'s base class; none of its
methods is on this path), `peft`, `torchaudio` and `av` (imported at the top of `data/mm_plugin.py`, used only for
audio and video inputs).

The calls, LLaMA-Factory 0.9.5 (file:line in the wheel):

    AlpacaDatasetConverter.__call__            data/converter.py:86   (a ranking row: the prompt as the user turn,
                                                                       chosen and rejected as two assistant turns)
    get_template_and_fix_tokenizer             data/template.py:628   (no template given and no chat template in the
                                                                       tokenizer: the `empty` template, :890; the
                                                                       pad token set to EOS when missing, :202-203)
    PairwiseDatasetProcessor.preprocess_dataset data/processor/pairwise.py:71 (`_encode_data_example`, :31:
                                                                       `Template.encode_oneturn`, template.py:60,
                                                                       each message encoded apart without special
                                                                       tokens, :113; labels IGNORE_INDEX on the
                                                                       prompt; cutoff_len 2048)
    PairwiseDataCollatorWithPadding.__call__   data/collator.py:545   (chosen rows then rejected rows, padded by
                                                                       transformers' DataCollatorForSeq2Seq to a
                                                                       multiple of 8, as train/dpo/workflow.py:48)
    CustomDPOTrainer.concatenated_forward      train/dpo/trainer.py:219 (`model(**batch)`, float32 logits,
                                                                       `get_batch_logps`, train/trainer_utils.py:592)

Settings are LLaMA-Factory's defaults (`hparams/data_args.py`, `finetuning_args.py`: pref_loss sigmoid, no ld_alpha)
with `--template` left unset; the tokenizer is a copy, right-padded as `model/loader.py:82` loads it.
"""

from __future__ import annotations

import copy
import functools
from types import SimpleNamespace

from dpo_ref.oracle.adapters.wheel import load_from_wheel, wheel

VERSION = "0.9.5"
CUTOFF_LEN = 2048  # hparams/data_args.py: cutoff_len default
MODULES = (
    "llamafactory.extras.constants",
    "llamafactory.data.data_utils",
    "llamafactory.data.tool_utils",
    "llamafactory.data.formatter",
    "llamafactory.data.mm_plugin",
    "llamafactory.data.template",
    "llamafactory.data.converter",
    "llamafactory.data.processor.processor_utils",
    "llamafactory.data.processor.pairwise",
    "llamafactory.data.collator",
    "llamafactory.train.trainer_utils",
    "llamafactory.train.dpo.trainer",
)


@functools.cache
def load() -> SimpleNamespace:
    """LLaMA-Factory's modules on the DPO path, executed from the wheel (`Unavailable` when it cannot be had)."""
    mods = load_from_wheel(
        wheel("llamafactory", VERSION), list(MODULES), {"llamafactory", "trl", "peft", "torchaudio", "av"}
    )
    return SimpleNamespace(
        get_template_and_fix_tokenizer=mods["llamafactory.data.template"].get_template_and_fix_tokenizer,
        AlpacaDatasetConverter=mods["llamafactory.data.converter"].AlpacaDatasetConverter,
        PairwiseDatasetProcessor=mods["llamafactory.data.processor.pairwise"].PairwiseDatasetProcessor,
        PairwiseDataCollatorWithPadding=mods["llamafactory.data.collator"].PairwiseDataCollatorWithPadding,
        CustomDPOTrainer=mods["llamafactory.train.dpo.trainer"].CustomDPOTrainer,
        IGNORE_INDEX=mods["llamafactory.extras.constants"].IGNORE_INDEX,
    )


def _data_args() -> SimpleNamespace:
    # hparams/data_args.py defaults for the fields this path reads
    return SimpleNamespace(template=None, train_on_prompt=False, tool_format=None, default_system=None,
                           enable_thinking=True, preserve_thinking=False, cutoff_len=CUTOFF_LEN,
                           mask_history=False)  # fmt: skip


def _dataset_attr() -> SimpleNamespace:
    # data/parser.py's DatasetAttr for an alpaca-format ranking file with columns prompt, chosen, rejected
    return SimpleNamespace(history=None, prompt="prompt", query=None, kto_tag=None, ranking=True, chosen="chosen",
                           rejected="rejected", response=None, system=None, tools=None, images=None, videos=None,
                           audios=None)  # fmt: skip


def llamafactory_pipeline(model, tokenizer, examples):
    """LLaMA-Factory 0.9.5's DPO log-probs (stage dpo, pref_loss sigmoid): the sums of `concatenated_forward`."""
    lib = load()
    tok = copy.deepcopy(tokenizer)
    tok.padding_side = "right"
    data_args = _data_args()
    template = lib.get_template_and_fix_tokenizer(tok, data_args)
    converter = lib.AlpacaDatasetConverter(dataset_attr=_dataset_attr(), data_args=data_args)
    converted = [converter(ex) for ex in examples]
    columns = {k: [c[k] for c in converted] for k in converted[0]}  # what datasets' batched map hands over
    processor = lib.PairwiseDatasetProcessor(template=template, tokenizer=tok, processor=None, data_args=data_args)
    encoded = processor.preprocess_dataset(columns)
    if len(encoded["chosen_input_ids"]) != len(examples):
        raise ValueError(f"LLaMA-Factory dropped {len(examples) - len(encoded['chosen_input_ids'])} rows")
    features = [{k: encoded[k][i] for k in encoded} for i in range(len(examples))]
    collator = lib.PairwiseDataCollatorWithPadding(template=template, model=model, pad_to_multiple_of=8,
                                                   label_pad_token_id=lib.IGNORE_INDEX, tokenizer=tok,
                                                   processor=None)  # fmt: skip
    batch = collator(features)
    trainer = lib.CustomDPOTrainer.__new__(lib.CustomDPOTrainer)  # the attributes concatenated_forward reads
    trainer.finetuning_args = SimpleNamespace(use_ref_model=True)  # stage dpo, pref_loss sigmoid
    trainer.loss_type, trainer.ld_alpha = "sigmoid", None
    out = lib.CustomDPOTrainer.concatenated_forward(trainer, model, batch)
    return out["chosen_logps"], out["rejected_logps"]
