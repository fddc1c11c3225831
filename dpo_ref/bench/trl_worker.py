"""TRL's side of `dpo-ref bench`: `trl.DPOTrainer` driven through its public API, timed per step.

The same model, weights, rows, batch, dtype, optimizer (AdamW, constant learning rate, clipping at
1.0) and thread count as dpo-ref's side (`dpo_ref.bench.run.dpo_ref_worker`); no gradient checkpointing,
no logging, evaluation or saving. Step time is the interval between consecutive `on_step_end`
callbacks, so it includes TRL's data loader. In the precomputed setting the reference model is dropped
after `DPOTrainer` has computed its log-probs, as dpo-ref does.
"""

from __future__ import annotations

import dataclasses
import gc
import tempfile
import time

from dpo_ref.bench.run import (
    BenchSize,
    StepGate,
    _import_common,
    _sync,
    _worker_setup,
    bench_model,
    bench_rows,
    bench_tokenizer,
    memory_probe,
    param_checksum,
)


def trl_worker(spec: dict) -> dict:
    """TRL's side: `DPOTrainer.train` on the bench model and rows, timed per step (`StepClock`)."""
    _import_trl()  # before `_import_common`: "train MB" excludes TRL's imports too
    base_rss = _import_common()
    device, size = _worker_setup(spec)
    tokenizer = bench_tokenizer(size.vocab)
    dataset = _dataset(size, spec["seed"])
    policy = bench_model(size, spec["seed"])
    checksum = param_checksum(policy)
    reference = bench_model(size, spec["seed"] + 1).eval().requires_grad_(False)
    clock = _step_clock(StepGate(spec.get("gated", False)), device)
    with tempfile.TemporaryDirectory() as out:
        trainer = _recording_trainer_class()(
            model=policy,
            ref_model=reference,
            args=_dpo_config(spec, size, device, out),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[clock],
        )
        if spec["ref"] == "precomputed_ref":  # TRL keeps a ref_model it was given; free it as dpo-ref does
            _drop_reference(trainer)
            del reference
            gc.collect()
        _refuse_gradient_checkpointing(trainer.model)
        trainer.train()
    return {
        "step_s": clock.times[spec["warmup"] :],
        "first_loss": float(trainer.losses[0]),
        "tokens_per_sequence": trainer.tokens,
        "param_checksum": checksum,
        "base_rss_mb": base_rss,
        **memory_probe(device),
    }


def _import_trl() -> None:
    """TRL's side's own imports (torch, datasets, transformers, trl), with datasets' progress bars off."""
    import torch  # noqa: F401
    from datasets import disable_progress_bars
    from transformers import TrainerCallback  # noqa: F401
    from trl import DPOConfig, DPOTrainer  # noqa: F401

    disable_progress_bars()


def _dataset(size: BenchSize, seed: int):
    from datasets import Dataset

    return Dataset.from_list(bench_rows(size, seed))


def _step_clock(gate: StepGate, device):
    """A `StepClock` callback: `times`, one per optimizer step, in lock-step with the parent through `gate`."""
    import torch
    from transformers import TrainerCallback

    on_cuda = device.type == "cuda"

    class StepClock(TrainerCallback):
        """Times each optimizer step from the parent's GO (given at the end of the previous step, so the
        interval includes TRL's data loading) to `on_step_end`, after a device synchronisation."""

        def __init__(self):
            self.times, self.started = [], None

        def _go(self):
            gate.wait()
            self.started = time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            _sync(device)
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(device)
            gate.ready()
            self._go()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            self.times.append(time.perf_counter() - self.started)
            gate.done(self.times[-1])
            if len(self.times) < args.max_steps:
                self._go()

    return StepClock()


def _recording_trainer_class():
    """`RecordingDPOTrainer`: a `DPOTrainer` that records what the agreement guard compares."""
    from trl import DPOTrainer

    class RecordingDPOTrainer(DPOTrainer):
        """Records each step's loss tensor (no host sync) and the first batch's tokens per sequence."""

        def __init__(self, *args, **kwargs):
            self.losses, self.tokens = [], None
            super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.tokens is None:
                self.tokens = inputs["attention_mask"].sum(-1).tolist()
            self.losses.append((out[0] if return_outputs else out).detach())
            return out

    return RecordingDPOTrainer


def _dpo_config(spec: dict, size: BenchSize, device, output_dir: str):
    """The `DPOConfig` matching dpo-ref's side: AdamW at a constant rate, clipping at 1.0, nothing logged or saved."""
    from trl import DPOConfig

    on_cuda = device.type == "cuda"
    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    # no activation (gradient) checkpointing, which TRL turns on by default; transformers 5 renamed it
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return DPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=size.batch,
        max_steps=spec["warmup"] + spec["steps"],
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch_fused" if on_cuda else "adamw_torch",  # as dpo_ref.train.loop.adamw
        beta=spec["beta"],
        loss_type=["sigmoid"],
        max_length=None,
        precompute_ref_log_probs=spec["ref"] == "precomputed_ref",
        bf16=on_cuda,
        fp16=False,
        use_cpu=not on_cuda,
        report_to=[],
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=spec["seed"],
        **{checkpointing: False},
    )


def _drop_reference(trainer) -> None:
    """Precomputed setting: TRL has computed the reference log-probs; drop its reference model."""
    trainer.accelerator._models = [m for m in trainer.accelerator._models if m is not trainer.ref_model]
    trainer.ref_model = None


def _refuse_gradient_checkpointing(model) -> None:
    """The bench compares without activation checkpointing; stop if TRL turned it on anyway."""
    name = (
        "is_activation_checkpointing"
        if hasattr(type(model), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    if getattr(model, name, False):
        raise RuntimeError("TRL's model has gradient checkpointing on; the bench compares without it")
