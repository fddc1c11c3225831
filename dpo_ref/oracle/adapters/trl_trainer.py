"""The TRL `DPOTrainer` the TRL adapters share: importing TRL, and building the trainer on the tiny model.

`trl` (the fixed-configuration checks), `trl_search` (searched rows) and `trl_batch` (gradient
accumulation) all drive a trainer from `build`; this module imports none of them, so the adapters'
imports form a DAG: trl -> trl_search -> trl_trainer, trl_batch -> {trl, trl_trainer}.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch

from dpo_ref.atomic import scratch_dir
from dpo_ref.errors import InputError
from dpo_ref.oracle.adapters import tiny


def import_trl():
    """The `trl` module, or `InputError` with one line saying why it cannot be imported."""
    try:
        # DPOTrainer's imports pull in torchao, which logs a version warning about torch on import
        with warnings.catch_warnings(), _quiet_logs():
            warnings.simplefilter("ignore")
            import trl
            from trl import DPOConfig, DPOTrainer  # noqa: F401
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise InputError(
            f"trl cannot be imported ({type(err).__name__}: {first}); pip install 'dpo-ref[compare]'"
        ) from None
    return trl


def loss_type_for(variant: str) -> str:
    return "ipo" if variant in ("ipo", "ipo-mean") else "sigmoid"


def build(variant: str = "dpo", beta: float = 0.1, label_smoothing: float = 0.0, bf16: bool = False):
    """A DPOTrainer on the tiny model and rows (policy seed 0, reference seed 1), both in float64.

    `bf16=False` by default: DPOConfig's own default (bf16=True) runs the reference model under bf16
    autocast, which would hide formula differences under rounding (`trl.run` reports its size separately).

    Returns `(trainer, examples)`, the examples being TRL's own tokenized rows.
    """
    import_trl()
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    output_dir = scratch_dir("dpo-ref-trl-")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' deprecation notices about TrainingArguments fields
        args = DPOConfig(
            output_dir=output_dir,
            loss_type=loss_type_for(variant),
            beta=beta,
            label_smoothing=label_smoothing,
            per_device_train_batch_size=len(tiny.ROWS["prompt"]),
            max_length=None,
            report_to=[],
            use_cpu=True,
            bf16=bf16,
            logging_steps=1,
            disable_tqdm=True,
        )
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(quiet), _quiet_logs():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(
            model=tiny.model(0),
            ref_model=tiny.model(1),
            args=args,
            train_dataset=Dataset.from_dict(tiny.ROWS),
            processing_class=tiny.tokenizer(),
        )
    trainer.model.to(torch.float64).train()  # TRL logs under "train" metrics; the tiny model has no dropout
    trainer.ref_model.to(torch.float64)
    examples = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    return trainer, examples


@contextlib.contextmanager
def _quiet_logs():
    loggers = [logging.getLogger(n) for n in ("trl", "transformers", "datasets", "accelerate", "torchao")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
