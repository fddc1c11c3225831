"""Batch composition in TRL's DPOTrainer: gradient accumulation and padding must not change the update.

- Gradient accumulation: one optimizer step on a batch of 4 pairs (`per_device_train_batch_size=4`) and one
  on 4 micro-batches of 1 (`per_device_train_batch_size=1, gradient_accumulation_steps=4`), both through
  `Trainer.train` with plain SGD (lr 1, constant schedule, no clipping, no weight decay), move the
  parameters by the same amount: the DPO loss is a mean over pairs, so the accumulated gradient of four
  quarter-weighted micro-batches is the batch gradient.
- Padding: `compute_loss` on TRL's collated batch equals `compute_loss` on the same rows padded further to the
  right (`pad_to_multiple_of`, TRL's own option) and on the same rows padded on the left (not TRL's collator's
  choice, but what a custom collator or a left-padding tokenizer produces).

Tolerance: relative 1e-5 on losses, 1e-4 on updates (TRL's fused LM head computes log-probs in float32).
A violation is reported with its size.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch

from dpo_ref.oracle.adapters import tiny
from dpo_ref.oracle.adapters.trl import trl_loss
from dpo_ref.oracle.adapters.trl_trainer import build, scratch_dir
from dpo_ref.oracle.report import FAILED, PASSED, CheckResult

ROWS = tiny.ROWS4  # 4 pairs of different lengths
RTOL, UPDATE_RTOL = 1e-5, 1e-4


def _trainer(batch_size: int, accumulation: int, loss_type: str = "sigmoid"):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        args = DPOConfig(
            output_dir=scratch_dir("dpo-ref-trl-ga-"),
            loss_type=loss_type,
            beta=0.5,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            learning_rate=1.0,
            lr_scheduler_type="constant",
            optim="sgd",
            weight_decay=0.0,
            max_grad_norm=0.0,
            max_length=None,
            report_to=[],
            use_cpu=True,
            bf16=False,
            logging_steps=1,
            disable_tqdm=True,
            save_strategy="no",
            seed=0,
        )
        trainer = DPOTrainer(
            model=tiny.model(0),
            ref_model=tiny.model(1),
            args=args,
            train_dataset=Dataset.from_dict(ROWS),
            processing_class=tiny.tokenizer(),
        )
    return trainer


def _update(batch_size: int, accumulation: int, loss_type: str) -> torch.Tensor:
    """The parameter change of one optimizer step (flattened)."""
    trainer = _trainer(batch_size, accumulation, loss_type)
    before = torch.cat([p.detach().double().flatten().clone() for p in trainer.model.parameters()])
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        trainer.train()
    after = torch.cat([p.detach().double().flatten() for p in trainer.model.parameters()])
    return after - before


def check_accumulation(loss_type: str = "sigmoid") -> CheckResult:
    """Batch of 4 vs 4 accumulated micro-batches of 1. A loss that is a mean over the batch's *tokens* (TRL's
    sft: dpo_trainer.py:1495-1502) differs when lengths differ: the Trainer divides each micro-batch's loss by
    the accumulation steps (no `labels` in a DPO batch, so no `num_items_in_batch`: trainer.py:2114-2119)."""
    full = _update(4, 1, loss_type)
    micro = _update(1, 4, loss_type)
    diff = float((full - micro).norm() / full.norm().clamp_min(1e-300))
    ratio = float(micro.norm() / full.norm().clamp_min(1e-300))
    ok = diff <= UPDATE_RTOL
    return CheckResult(
        f"grad_accumulation:{loss_type}",
        PASSED if ok else FAILED,
        "one SGD step on 4 pairs equals one step accumulated over 4 micro-batches of 1 (Trainer.train)",
        "" if ok else f"relative difference of the updates {diff:.3g} (|micro| / |full| = {ratio:.4g})",
        None if ok else _repro(loss_type),
        2,
    )


def _repro(loss_type: str) -> str:
    return "\n".join(
        [
            "from dpo_ref.oracle.adapters.trl_batch import _update",
            f"full, micro = _update(4, 1, {loss_type!r}), _update(1, 4, {loss_type!r})",
            "print((full - micro).norm() / full.norm(), micro.norm() / full.norm())",
            "assert (full - micro).norm() <= 1e-4 * full.norm()",
        ]
    )


def left_padded(batch: dict, pad_token_id: int) -> dict:
    """The same rows with their padding moved to the left (input ids, attention and completion masks)."""
    out = {}
    lengths = batch["attention_mask"].sum(dim=1)  # (2B,)
    T = batch["input_ids"].shape[1]
    for key, fill in (("input_ids", pad_token_id), ("attention_mask", 0), ("completion_mask", 0)):
        x = torch.full_like(batch[key], fill)
        for i, n in enumerate(lengths.tolist()):
            x[i, T - n :] = batch[key][i, :n]
        out[key] = x
    return out


def check_padding() -> list[CheckResult]:
    """TRL's loss on its collated batch vs the same rows right-padded further and left-padded."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    trainer, examples = build("dpo", beta=0.5)
    base, batch, _ = trl_loss(trainer, examples)
    pad = trainer.processing_class.pad_token_id
    extra = DataCollatorForPreference(pad_token_id=pad, pad_to_multiple_of=16)(examples)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        right = float(trainer.compute_loss(trainer.model, extra))
        left = float(trainer.compute_loss(trainer.model, left_padded(batch, pad)))
    base = float(base.detach())
    results = []
    for name, value, what in (
        ("padding_right_extra", right, "extra right padding (pad_to_multiple_of=16, TRL's collator option)"),
        ("padding_left", left, "the same rows padded on the left (a custom collator; TRL's pads right)"),
    ):
        diff = abs(value - base)
        ok = diff <= RTOL * (1 + abs(base))
        results.append(
            CheckResult(
                name,
                PASSED if ok else FAILED,
                f"compute_loss unchanged by {what}",
                ""
                if ok
                else f"loss {value!r} vs {base!r} with TRL's own padding (|diff| {diff:.3g}, relative "
                f"{diff / abs(base):.3g})",
                None
                if ok
                else "from dpo_ref.oracle.adapters.trl import build, trl_loss\n"
                "from dpo_ref.oracle.adapters.trl_batch import left_padded\n"
                "trainer, examples = build('dpo', beta=0.5)\n"
                "loss, batch, _ = trl_loss(trainer, examples)\n"
                "pad = trainer.processing_class.pad_token_id\n"
                "left = trainer.compute_loss(trainer.model, left_padded(batch, pad))\n"
                "print(float(loss), float(left))\n"
                "assert abs(float(left) - float(loss)) <= 1e-5 * (1 + abs(float(loss)))",
                1,
            )
        )
    return results
