"""`dpo-ref train`: DPO / cDPO / IPO fine-tuning of a Hugging Face causal LM, read top to bottom.

    1. data       preference rows -> token ids (dpo_ref.data); the built-in reversal task by default
    2. models     policy (tiny Llama or --model DIR); optional SFT warm-up on the chosen responses
    3. reference  a frozen copy of the policy after warm-up, or (--precompute-ref) its log-probs only
    4. loop       one concatenated chosen+rejected forward per micro-batch, loss from dpo_ref.losses,
                  AdamW, gradient accumulation and clipping, linear warmup; DDP under torchrun
    5. outputs    OUT/metrics.jsonl, OUT/checkpoint.safetensors (resumable), OUT/model (save_pretrained)

Metrics at step s describe the global batch of update s, computed before that update; `loss` is the
preference loss alone (so it is ln 2 at step 0 whatever `rpo_alpha`), `loss/total` adds the chosen NLL.
Evaluation at step s measures the model before update s; the last line (step = steps) is the final
evaluation.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn

from dpo_ref.atomic import write_text_atomic
from dpo_ref.data import IGNORE_INDEX, PreferenceCollator, TokenizedPair, pad_sequences, prepare_dataset
from dpo_ref.errors import InputError
from dpo_ref.logps import sequence_logps, shift_labels, token_logps
from dpo_ref.losses import check_label_smoothing, check_positive_scalar, dpo_loss, ipo_loss

LOSSES = ("dpo", "cdpo", "ipo")
# families whose logits are exactly output_layer(last hidden state): the output layer may then be
# applied at the scored positions only (no soft-capping or logit scaling after it)
_PLAIN_HEAD_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi3", "olmo", "olmo2"}


@dataclass
class TrainConfig:
    """Every knob of a run; the defaults are the built-in task's recipe (see README, "Train")."""

    data: str | None = None  # JSONL of preference rows; None = the built-in reversal task
    eval_data: str | None = None  # held-out JSONL; the built-in task has its own
    model: str | None = None  # local HF causal-LM directory; None = tiny Llama built from a config
    out: str = "runs/dpo"
    loss: str = "dpo"  # dpo | cdpo | ipo
    beta: float = 0.1  # DPO/cDPO KL coefficient
    label_smoothing: float | None = None  # cDPO flip probability (default 0.1 for cdpo, must be 0 for dpo)
    tau: float = 0.1  # IPO regularisation; the per-pair target margin is 1/(2 tau)
    rpo_alpha: float = 2.0  # weight of the chosen-response NLL (RPO); 0 = plain DPO
    steps: int = 150  # optimizer updates of the preference phase
    batch_size: int = 32  # pairs per micro-batch per process
    grad_accum: int = 1  # micro-batches per update; global batch = batch_size * grad_accum * processes
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    max_length: int | None = 1024  # prompt + response tokens
    max_prompt_length: int | None = 512
    padding_side: str = "right"
    sft_steps: int = 600  # SFT warm-up updates on the chosen responses (0 = none)
    sft_lr: float = 3e-3
    precompute_ref: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # CPU intra-op threads; None = 1 for the built-in tiny model, else torch's
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    save_every: int = 50
    eval_generation: bool | None = None  # greedy-decode the eval prompts; default on for the built-in task
    max_new_tokens: int = 32
    resume: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this many updates, as if interrupted
    skip_bad_rows: bool = False
    skip_nonfinite: bool = False  # skip (and count) updates whose loss or gradient is not finite, instead of stopping
    trust_remote_code: bool = False
    progress: bool = True


# the settings a resumed run must share with the run that wrote the checkpoint
_RESUME_KEYS = (
    "data model loss beta label_smoothing tau rpo_alpha steps lr weight_decay warmup_steps max_grad_norm "
    "max_length max_prompt_length sft_steps sft_lr precompute_ref seed"
).split()


# what the SFT warm-up's result depends on: a saved warm-up is reused by --resume only if all match
_SFT_KEYS = (
    "model data sft_steps sft_lr seed max_grad_norm max_length max_prompt_length padding_side batch_size"
).split()


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Validate `cfg` (InputError naming the option) and fill the loss-dependent defaults."""
    if cfg.loss not in LOSSES:
        raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    check_positive_scalar(cfg.beta, "--beta")
    check_positive_scalar(cfg.tau, "--tau")
    check_positive_scalar(cfg.lr, "--lr")
    check_positive_scalar(cfg.max_grad_norm, "--max-grad-norm")
    if cfg.sft_steps:
        check_positive_scalar(cfg.sft_lr, "--sft-lr")
    if cfg.label_smoothing is None:
        cfg.label_smoothing = 0.1 if cfg.loss == "cdpo" else 0.0
    cfg.label_smoothing = check_label_smoothing(cfg.label_smoothing)
    if cfg.loss == "dpo" and cfg.label_smoothing > 0:
        raise InputError("--label-smoothing > 0 is conservative DPO: use --loss cdpo")
    if cfg.loss == "ipo" and cfg.label_smoothing > 0:
        raise InputError("--label-smoothing is a (c)DPO option; IPO has none: drop it or use --loss cdpo")
    if cfg.loss == "cdpo" and cfg.label_smoothing == 0:
        raise InputError("--loss cdpo needs --label-smoothing in (0, 0.5)")
    for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_every", "save_every", "max_new_tokens"):
        if int(getattr(cfg, name)) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(cfg, name)}")
    for name in ("sft_steps", "warmup_steps"):
        if int(getattr(cfg, name)) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if cfg.rpo_alpha < 0 or not math.isfinite(cfg.rpo_alpha):
        raise InputError(f"--rpo-alpha must be a finite number >= 0, got {cfg.rpo_alpha}")
    if cfg.padding_side not in ("left", "right"):
        raise InputError(f"--padding-side must be left or right, got {cfg.padding_side!r}")
    if cfg.stop_after is not None and cfg.stop_after < 1:
        raise InputError(f"--stop-after must be a positive integer, got {cfg.stop_after}")
    return cfg


def check_writable_dir(path: str, option: str = "--out") -> None:
    """InputError unless `path` is, or can be created as, a writable directory; creates nothing."""
    target = os.path.abspath(path)
    if os.path.exists(target) and not os.path.isdir(target):
        raise InputError(f"{option} {path!r} exists and is not a directory")
    existing = target
    while not os.path.exists(existing):  # the nearest existing ancestor is where the directory gets created
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"{option} {path!r} cannot be created: {existing!r} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path!r} is not writable ({existing!r} denies writing)")


def check_out_dir(cfg: TrainConfig) -> None:
    """Refuse an --out that cannot hold the run's files, and --resume with nothing to resume; writes nothing."""
    check_writable_dir(cfg.out, "--out")
    out = os.path.abspath(cfg.out)
    saved = [os.path.join(out, f) for f in ("checkpoint.safetensors", "sft.safetensors")]
    if cfg.resume and not any(os.path.exists(f) for f in saved):
        raise InputError(f"--resume: {cfg.out!r} has no checkpoint to resume from; run without --resume")


# ---------------------------------------------------------------------------------------------- scoring


class SequenceScorer(nn.Module):
    """Summed log-probs of the scored tokens of each row: logps (N,) and token counts (N,).

    For plain-head models the output layer runs only at the scored positions (labels != -100 after the
    one-token shift of `dpo_ref.logps.shift_labels`): the (N, T, V) logits are never materialised.
    Otherwise the full logits go through `dpo_ref.sequence_logps`. Position ids come from the attention
    mask, so left and right padding score the same.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        model_type = getattr(model.config, "model_type", "")
        self.scored_head_only = model_type in _PLAIN_HEAD_MODEL_TYPES and isinstance(
            model.get_output_embeddings(), nn.Linear
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (N, T)
        _, mask, target = shift_labels(labels, IGNORE_INDEX)  # (N, T-1)
        counts = mask.sum(-1)  # (N,)
        if not self.scored_head_only:
            logits = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits  # (N, T, V)
            return sequence_logps(logits, labels, validate=False), counts
        hidden = self.model.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (N, T, H)
        scored_hidden = hidden[:, :-1][mask]  # (S, H): S scored positions in all
        logits = self.model.get_output_embeddings()(scored_hidden)  # (S, V)
        per_token = token_logps(logits, target[mask])  # (S,)
        rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]  # (S,)
        logps = torch.zeros(mask.shape[0], dtype=per_token.dtype, device=per_token.device)
        return logps.index_add(0, rows, per_token), counts  # (N,), (N,)


# ---------------------------------------------------------------------------------------------- helpers


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"--device {name!r} is not a device (expected auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def disable_dropout(model: nn.Module) -> nn.Module:
    """Turn dropout off (modules and attention dropout rates), so the policy at step 0 equals the reference."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return model


def frozen_reference(policy: nn.Module) -> nn.Module:
    """The reference model: a copy of `policy` in eval mode (dropout off) with gradients disabled."""
    return copy.deepcopy(policy).eval().requires_grad_(False)


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    """The data order of one epoch: a permutation depending only on (seed, epoch), so resume sees the same."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


class BatchOrder:
    """Global batch of update `step`: positions step*G .. step*G+G-1 of the concatenated epoch orders."""

    def __init__(self, n: int, global_batch: int, seed: int):
        self.n, self.global_batch, self.seed, self._cache = n, global_batch, seed, {}

    def __call__(self, step: int) -> list[int]:
        out = []
        for position in range(step * self.global_batch, (step + 1) * self.global_batch):
            epoch, i = divmod(position, self.n)
            if epoch not in self._cache:
                self._cache = {epoch: epoch_order(self.n, epoch, self.seed)}
            out.append(self._cache[epoch][i])
        return out


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op (float32) on CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def pair_logps(scorer: SequenceScorer, pairs: list[TokenizedPair], collate, device, batch_size: int):
    """(chosen (P,), rejected (P,)) sequence log-probs of every pair under `scorer`, indexed by `pair.index`."""
    chosen = torch.zeros(len(pairs), dtype=torch.float32, device=device)
    rejected = torch.zeros_like(chosen)
    for start in range(0, len(pairs), batch_size):
        batch = to_device(collate(pairs[start : start + batch_size]), device)
        with autocast(device):
            logps, _ = scorer(batch["input_ids"], batch["attention_mask"], batch["labels"])  # (2B,)
        B = batch["index"].shape[0]
        chosen[batch["index"]] = logps[:B].float()
        rejected[batch["index"]] = logps[B:].float()
    return chosen, rejected


@torch.no_grad()
def greedy_generate(
    model: nn.Module, prompts: list[list[int]], *, max_new_tokens: int, pad_id: int, eos_id: int, device
) -> list[list[int]]:
    """Greedy completions (up to and including EOS) of a batch of prompts, left-padded, no KV cache."""
    input_ids = pad_sequences(prompts, pad_id, "left").to(device)  # (N, T)
    attention_mask = pad_sequences([[1] * len(p) for p in prompts], 0, "left").to(device)  # (N, T)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new_tokens = []
    for _ in range(max_new_tokens):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        with autocast(device):
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits[:, -1]  # (N, V)
        token = torch.where(done, torch.full_like(done, pad_id, dtype=torch.long), logits.argmax(-1))  # (N,)
        new_tokens.append(token)
        input_ids = torch.cat([input_ids, token[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, (~done)[:, None].long()], dim=1)
        done |= token == eos_id
        if bool(done.all()):
            break
    completions = torch.stack(new_tokens, dim=1).tolist()  # (N, new)
    out = []
    for row in completions:
        out.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return out


def generation_accuracy(model, pairs, *, max_new_tokens, pad_id, eos_id, device, batch_size=256) -> float:
    """Fraction of pairs whose greedy completion of the prompt is exactly the chosen response (with EOS)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        longest = max(len(p.chosen_ids) for p in chunk)
        completions = greedy_generate(
            model,
            [p.prompt_ids for p in chunk],
            max_new_tokens=min(max_new_tokens, longest + 1),
            pad_id=pad_id,
            eos_id=eos_id,
            device=device,
        )
        correct += sum(c == p.chosen_ids for c, p in zip(completions, chunk))
    model.train(was_training)
    return correct / len(pairs)


def preference_loss(cfg: TrainConfig, pc, pr, rc, rr):
    """The configured loss from dpo_ref.losses (no validation: the hot path)."""
    if cfg.loss == "ipo":
        return ipo_loss(pc, pr, rc, rr, tau=cfg.tau, validate=False)
    return dpo_loss(pc, pr, rc, rr, beta=cfg.beta, label_smoothing=cfg.label_smoothing, validate=False)


def preference_micro_batch(cfg: TrainConfig, scorer, batch: dict, ref_scorer=None, ref_logps=None):
    """(loss, stats) of one micro-batch of B pairs, the body of the preference loop (no host sync).

    One concatenated forward of the policy over the (2B, T) chosen+rejected rows; the reference
    log-probs from a forward of `ref_scorer` under no_grad, or looked up by `batch["index"]` in the
    precomputed `ref_logps` = (chosen (P,), rejected (P,)). loss = mean preference loss + rpo_alpha x
    the mean per-token NLL of the chosen responses (RPO, against likelihood displacement). `stats` (9,)
    float64 holds sums over the pairs, in the order the loop logs them: loss, chosen NLL, chosen and
    rejected rewards, reward accuracy, chosen and rejected logps, chosen and rejected log-ratios.
    """
    B = batch["index"].shape[0]
    logps, counts = scorer(batch["input_ids"], batch["attention_mask"], batch["labels"])  # (2B,)
    policy_chosen_logps, policy_rejected_logps = logps[:B], logps[B:]  # (B,), (B,)
    if ref_logps is not None:
        reference_chosen_logps = ref_logps[0][batch["index"]]  # (B,)
        reference_rejected_logps = ref_logps[1][batch["index"]]
    else:
        with torch.no_grad():
            ref, _ = ref_scorer(batch["input_ids"], batch["attention_mask"], batch["labels"])  # (2B,)
        reference_chosen_logps, reference_rejected_logps = ref[:B], ref[B:]
    result = preference_loss(
        cfg, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    nll_chosen = -(policy_chosen_logps / counts[:B].clamp(min=1)).float()  # (B,)
    loss = result.losses.mean() + cfg.rpo_alpha * nll_chosen.mean()
    with torch.no_grad():
        stats = torch.stack(
            [
                result.losses.sum(),
                nll_chosen.sum(),
                result.chosen_rewards.sum(),
                result.rejected_rewards.sum(),
                (result.chosen_rewards > result.rejected_rewards).sum(),
                policy_chosen_logps.sum(),
                policy_rejected_logps.sum(),
                (policy_chosen_logps - reference_chosen_logps).sum(),
                (policy_rejected_logps - reference_rejected_logps).sum(),
            ]
        ).double()
    return loss, stats


def adamw(params, *, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW; on CUDA the fused kernel (one launch for all parameters), elsewhere torch's default (foreach)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if device.type == "cuda" else None)


def write_metrics(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _keep_metrics_before(path: str, step: int) -> None:
    """On resume: drop records the interrupted run wrote after its checkpoint (rewritten atomically); a
    last line cut short by a kill is dropped too."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # only a killed writer's last line can be partial
            if record["step"] < step:
                kept.append(record)
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def save_pretrained_atomic(model, tokenizer, directory: str) -> None:
    """`save_pretrained` into a temporary directory, then swap it in place of `directory`."""
    from transformers.utils import logging as hf_logging

    tmp, old = directory + ".tmp", directory + ".old"
    for d in (tmp, old):
        shutil.rmtree(d, ignore_errors=True)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a one-file model
    try:
        model.save_pretrained(tmp)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(tmp)
    if os.path.exists(directory):
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- training


def train(cfg: TrainConfig) -> dict:
    """Run the preference training described by `cfg`; returns a summary dict (also printed by the CLI)."""
    threads = torch.get_num_threads()
    wanted = cfg.threads if cfg.threads is not None else (1 if cfg.model is None else threads)
    # the tiny model's matrices are too small for intra-op threads to pay, and spinning threads on a
    # busy machine can slow it down many times over; restored afterwards
    torch.set_num_threads(max(1, wanted))
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig) -> dict:
    from tqdm.auto import tqdm

    from dpo_ref.checkpoint import (
        atomic_save_tensors,
        load_checkpoint,
        load_model_tensors,
        load_tensors,
        model_tensors,
        read_metadata,
        remove_stray_temp_files,
        save_checkpoint,
    )
    from dpo_ref.model import load_model_and_tokenizer
    from dpo_ref.tasks import reversal_rows

    cfg = check_config(cfg)
    check_out_dir(cfg)
    started = time.perf_counter()

    # -- distributed set-up (torchrun sets WORLD_SIZE / RANK / LOCAL_RANK) ---------------------------
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank)
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
    else:
        rank = 0
    main_process = rank == 0
    if device.type == "cuda":
        torch.cuda.set_device(device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # -- 1. data ------------------------------------------------------------------------------------
    policy, tokenizer = load_model_and_tokenizer(cfg.model, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code)
    builtin = cfg.data is None
    if builtin:
        train_rows, eval_rows = reversal_rows()
    else:
        train_rows, eval_rows = cfg.data, cfg.eval_data
    lengths = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
    train_pairs, skipped = prepare_dataset(train_rows, tokenizer, skip_bad_rows=cfg.skip_bad_rows, **lengths)
    eval_pairs, eval_skipped = (
        prepare_dataset(eval_rows, tokenizer, skip_bad_rows=cfg.skip_bad_rows, **lengths) if eval_rows else ([], 0)
    )
    eval_generation = builtin if cfg.eval_generation is None else cfg.eval_generation
    collate = PreferenceCollator(tokenizer.pad_token_id, cfg.padding_side)
    collate_chosen = PreferenceCollator(tokenizer.pad_token_id, cfg.padding_side, responses=("chosen",))
    global_batch = cfg.batch_size * cfg.grad_accum * world
    per_rank = cfg.batch_size * cfg.grad_accum
    run_config = {**asdict(cfg), "global_batch": global_batch}

    out = cfg.out
    os.makedirs(out, exist_ok=True)
    metrics_path = os.path.join(out, "metrics.jsonl")
    checkpoint_path = os.path.join(out, "checkpoint.safetensors")
    sft_path = os.path.join(out, "sft.safetensors")
    resuming = cfg.resume and os.path.exists(checkpoint_path)
    if main_process:
        remove_stray_temp_files(out)  # left by a writer killed mid-write; the files they replace are intact
    if main_process and not cfg.resume:  # a fresh run starts from nothing: no stale log or checkpoints
        for path in (metrics_path, checkpoint_path, sft_path):
            if os.path.exists(path):
                os.remove(path)
    if main_process and cfg.resume and not resuming:  # killed before its first checkpoint: the log restarts
        _keep_metrics_before(metrics_path, 0)
    if distributed:
        dist.barrier()
    disable_dropout(policy).to(device)
    policy.train()

    # -- 2. SFT warm-up on the chosen responses (redone if a run stopped during it) -------------------
    sft_summary = {}
    if cfg.sft_steps > 0:
        sft_key = {k: run_config[k] for k in _SFT_KEYS}
        sft_key["processes"] = world
        saved_key = read_metadata(sft_path).get("sft") if cfg.resume and os.path.exists(sft_path) else None
        if saved_key == sft_key:
            tensors, meta = load_tensors(sft_path)
            load_model_tensors(policy, {k: v.to(device) for k, v in tensors.items()}, meta["aliases"])
            sft_summary = {"steps": cfg.sft_steps, "reused": sft_path}
        else:
            sft_summary = supervised_warmup(cfg, policy, train_pairs, collate_chosen, device, world, rank)
            if not all(torch.isfinite(p).all() for p in policy.parameters()):  # never save a broken warm-up
                raise FloatingPointError("the SFT warm-up made the weights non-finite; try a lower --sft-lr")
            if main_process:
                tensors, aliases = model_tensors(policy)
                metadata = {"sft": sft_key, "aliases": aliases}
                atomic_save_tensors({k: v.cpu() for k, v in tensors.items()}, sft_path, metadata)

    # -- 3. reference: a frozen copy of the (warmed-up) policy, or its log-probs only -----------------
    reference = frozen_reference(policy)
    ref_scorer = SequenceScorer(reference)
    ref_logps = None
    if cfg.precompute_ref:
        with torch.no_grad():
            ref_logps = {
                "train": pair_logps(ref_scorer, train_pairs, collate, device, 2 * cfg.batch_size),
                "eval": pair_logps(ref_scorer, eval_pairs, collate, device, 2 * cfg.batch_size) if eval_pairs else None,
            }
        del reference, ref_scorer  # frees the reference's memory
        reference = ref_scorer = None

    # -- 4. optimizer, schedule, resume ---------------------------------------------------------------
    optimizer = adamw(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    )
    start_step = 0
    nonfinite_skipped = 0  # updates skipped with --skip-nonfinite (kept in the checkpoint)
    if resuming:
        saved = read_metadata(checkpoint_path).get("config", {})
        for key in _RESUME_KEYS + ["global_batch"]:
            if saved.get(key) != run_config[key]:
                raise InputError(
                    f"--resume: the checkpoint in {out!r} was written with {key}={saved.get(key)!r}, "
                    f"this run has {key}={run_config[key]!r}; use the same settings or another --out"
                )
        meta = load_checkpoint(checkpoint_path, model=policy, optimizer=optimizer, scheduler=scheduler)
        start_step, nonfinite_skipped = meta["step"], meta.get("nonfinite_skipped", 0)
        if main_process:
            _keep_metrics_before(metrics_path, start_step)

    scorer = SequenceScorer(policy)
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        scorer = DistributedDataParallel(scorer, device_ids=[device.index] if device.type == "cuda" else None)

    def evaluate(step: int) -> dict:
        """Held-out preference accuracy of the implicit reward, eval loss and generation accuracy."""
        if not eval_pairs:
            return {}
        policy.eval()
        with torch.no_grad():
            pc, pr = pair_logps(SequenceScorer(policy), eval_pairs, collate, device, 2 * cfg.batch_size)
            if ref_logps is not None:
                rc, rr = ref_logps["eval"]
            else:
                rc, rr = pair_logps(ref_scorer, eval_pairs, collate, device, 2 * cfg.batch_size)
            result = preference_loss(cfg, pc, pr, rc, rr)
            metrics = {
                "eval/loss": result.losses.mean().item(),
                "eval/accuracy": (result.chosen_rewards > result.rejected_rewards).float().mean().item(),
                "eval/logps/chosen": pc.mean().item(),
                "eval/logps/rejected": pr.mean().item(),
            }
        if eval_generation:
            metrics["eval/generation_accuracy"] = generation_accuracy(
                policy,
                eval_pairs,
                max_new_tokens=cfg.max_new_tokens,
                pad_id=tokenizer.pad_token_id,
                eos_id=tokenizer.eos_token_id,
                device=device,
            )
        policy.train()
        return metrics

    # -- 5. the preference loop ------------------------------------------------------------------------
    order = BatchOrder(len(train_pairs), global_batch, cfg.seed)
    end_step = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    progress = tqdm(
        total=cfg.steps, initial=start_step, desc=cfg.loss, disable=not (cfg.progress and main_process), leave=False
    )
    history: list[dict] = []
    last_saved = start_step if resuming else None
    # first step whose loss or gradient was not finite (-1: none), kept on the device so that checking it
    # costs no host sync; it is read where the loop syncs anyway (logging) and before every checkpoint
    first_nonfinite = torch.full((), -1, dtype=torch.long, device=device)

    def stop_if_nonfinite() -> None:
        if distributed:
            dist.all_reduce(first_nonfinite, op=dist.ReduceOp.MAX)
        bad = int(first_nonfinite)
        if bad >= 0:
            kept = f"{checkpoint_path} (step {last_saved}) is the last good checkpoint" if last_saved else "none saved"
            raise FloatingPointError(
                f"non-finite loss or gradient at step {bad}: stopped before saving it; {kept}. "
                "Lower --lr, or pass --skip-nonfinite to skip such updates"
            )

    for step in range(start_step, end_step):
        log_now = step % cfg.log_every == 0 or step == cfg.steps - 1
        eval_now = step % cfg.eval_every == 0
        record = {"step": step}
        if eval_now:
            if main_process:
                record.update(evaluate(step))
            if distributed:
                dist.barrier()

        indices = order(step)[rank * per_rank : (rank + 1) * per_rank]  # this process's share
        stats = torch.zeros(9, dtype=torch.float64, device=device)  # sums over the pairs, see names below
        for micro in range(cfg.grad_accum):
            chunk = [train_pairs[i] for i in indices[micro * cfg.batch_size : (micro + 1) * cfg.batch_size]]
            batch = to_device(collate(chunk), device)
            sync = not distributed or micro == cfg.grad_accum - 1
            with scorer.no_sync() if not sync else nullcontext(), autocast(device):
                train_ref = ref_logps["train"] if ref_logps is not None else None
                loss, micro_stats = preference_micro_batch(cfg, scorer, batch, ref_scorer, train_ref)
                (loss / cfg.grad_accum).backward()
            stats += micro_stats
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]  # the rate this update uses
        nonfinite = ~(torch.isfinite(stats[:2]).all() & torch.isfinite(grad_norm))  # () bool, on the device
        skipped_now = False
        if cfg.skip_nonfinite:
            if distributed:  # every process must skip the same updates
                nonfinite = nonfinite.float()
                dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX)
            skipped_now = bool(nonfinite)  # a host sync every step: the price of --skip-nonfinite
            nonfinite_skipped += skipped_now
        else:
            first_nonfinite = torch.where(nonfinite & (first_nonfinite < 0), step, first_nonfinite)
        if not skipped_now:  # a skipped update leaves weights and AdamW state as they were
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        if log_now and not cfg.skip_nonfinite:
            stop_if_nonfinite()
        if log_now and cfg.skip_nonfinite:
            record["nonfinite_skipped"] = nonfinite_skipped
        if log_now and not skipped_now:  # the only host synchronisation of a step
            if distributed:
                dist.all_reduce(stats)
            s = (stats / global_batch).tolist()
            record.update(
                {
                    "loss": s[0],
                    "loss/nll_chosen": s[1],
                    "loss/total": s[0] + cfg.rpo_alpha * s[1],
                    "rewards/chosen": s[2],
                    "rewards/rejected": s[3],
                    "rewards/margins": s[2] - s[3],
                    "rewards/accuracies": s[4],
                    "logps/chosen": s[5],
                    "logps/rejected": s[6],
                    "logratio/chosen": s[7],
                    "logratio/rejected": s[8],
                    "grad_norm": float(grad_norm),
                    "lr": lr,
                }
            )
            progress.set_postfix(loss=f"{s[0]:.4f}", acc=f"{s[4]:.2f}")
        if len(record) > 1 and main_process:
            write_metrics(metrics_path, record)
            history.append(record)
        progress.update(1)
        done = step + 1
        if done % cfg.save_every == 0 or done == end_step:
            stop_if_nonfinite()  # a bad state is never saved
            if main_process:
                save_checkpoint(checkpoint_path, model=policy, optimizer=optimizer, scheduler=scheduler, step=done,
                                config=run_config, extra={"nonfinite_skipped": nonfinite_skipped})  # fmt: skip
            last_saved = done
    progress.close()

    summary = {
        "out": out,
        "metrics": metrics_path,
        "checkpoint": checkpoint_path,
        "device": str(device),
        "world_size": world,
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "skipped_rows": skipped + eval_skipped,
        "nonfinite_skipped": nonfinite_skipped,
        "sft": sft_summary,
        "stopped": end_step < cfg.steps,
        "history": history,
    }
    if end_step == cfg.steps:
        final = {"step": cfg.steps, **evaluate(cfg.steps)} if main_process else {}
        if main_process:
            if len(final) > 1:
                write_metrics(metrics_path, final)
                history.append(final)
            save_pretrained_atomic(policy, tokenizer, os.path.join(out, "model"))
        summary["model_dir"] = os.path.join(out, "model")
    if distributed:
        dist.barrier()
    summary["seconds"] = time.perf_counter() - started
    summary["policy"] = policy
    return summary


def supervised_warmup(cfg: TrainConfig, policy, pairs, collate_chosen, device, world: int, rank: int) -> dict:
    """SFT on the chosen responses: per-token NLL, AdamW at `sft_lr`, `sft_steps` updates (data-parallel
    by averaging gradients with torch.distributed when under torchrun)."""
    scorer = SequenceScorer(policy)
    optimizer = adamw(policy.parameters(), lr=cfg.sft_lr, weight_decay=0.0, device=device)
    order = BatchOrder(len(pairs), cfg.batch_size * world, cfg.seed + 1)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        scorer = DistributedDataParallel(scorer, device_ids=[device.index] if device.type == "cuda" else None)
    from tqdm.auto import tqdm

    first = last = None
    for step in tqdm(range(cfg.sft_steps), desc="sft", disable=not (cfg.progress and rank == 0), leave=False):
        indices = order(step)[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
        batch = to_device(collate_chosen([pairs[i] for i in indices]), device)
        with autocast(device):
            logps, counts = scorer(batch["input_ids"], batch["attention_mask"], batch["labels"])  # (B,)
            nll = -(logps / counts.clamp(min=1)).float().mean()
        nll.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            first = nll.item()
    if cfg.sft_steps:
        last = nll.item()
    return {"steps": cfg.sft_steps, "nll_first": first, "nll_last": last}


# ---------------------------------------------------------------------------------------------- CLI


def _summary_lines(cfg: TrainConfig, summary: dict) -> list[str]:
    history = summary["history"]
    logged = [r for r in history if "loss" in r]
    evals = [r for r in history if "eval/accuracy" in r]
    lines = [
        f"dpo-ref train: {cfg.loss} on {summary['train_pairs']} pairs, {cfg.steps} steps"
        + (f" after {cfg.sft_steps} SFT warm-up steps" if cfg.sft_steps else "")
        + f", {summary['device']} x{summary['world_size']}, {summary['seconds']:.1f} s"
    ]
    if summary["skipped_rows"]:
        lines.append(f"  skipped {summary['skipped_rows']} malformed rows")
    if summary["nonfinite_skipped"]:
        lines.append(f"  skipped {summary['nonfinite_skipped']} updates with a non-finite loss or gradient")
    if logged:
        a, b = logged[0], logged[-1]
        lines.append(
            f"  loss                     {a['loss']:.6f} (step {a['step']}) -> {b['loss']:.4f} (step {b['step']})"
        )
        if a["step"] == 0 and cfg.loss != "ipo":
            lines[-1] += f"   |loss - ln 2| at step 0: {abs(a['loss'] - math.log(2)):.1e}"
        lines.append(f"  rewards/accuracies       {a['rewards/accuracies']:.3f} -> {b['rewards/accuracies']:.3f}")
        lines.append(
            f"  log-ratio chosen         {a['logratio/chosen']:+.3f} -> {b['logratio/chosen']:+.3f}   "
            f"rejected {a['logratio/rejected']:+.3f} -> {b['logratio/rejected']:+.3f}   (log pi/pi_ref)"
        )
    if evals:
        a, b = evals[0], evals[-1]
        lines.append(f"  eval/accuracy            {a['eval/accuracy']:.3f} -> {b['eval/accuracy']:.3f} (held out)")
        if "eval/generation_accuracy" in a:
            lines.append(
                f"  eval/generation_accuracy {a['eval/generation_accuracy']:.3f} -> "
                f"{b['eval/generation_accuracy']:.3f} (greedy, held out)"
            )
    elif not summary["eval_pairs"]:
        lines.append("  no held-out data (--eval-data): no eval/accuracy")
    lines.append(f"  outputs: {summary['metrics']}, {summary['checkpoint']}")
    if "model_dir" in summary:
        lines[-1] += f", {summary['model_dir']} (save_pretrained)"
    if summary["stopped"]:
        lines.append(f"  stopped after step {cfg.stop_after}: continue with --resume")
    return lines


def _handler(args) -> int:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    cfg = TrainConfig(**values)
    try:
        summary = train(cfg)
    except FloatingPointError as err:  # not a usage error (exit 2): the run itself failed
        print(f"dpo-ref train: {err}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print("\n".join(_summary_lines(cfg, summary)))
    return 0


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def register(subparsers) -> None:
    """Add `dpo-ref train` to the CLI."""
    d = TrainConfig()
    p = subparsers.add_parser(
        "train",
        help="DPO / cDPO / IPO training (default: a tiny Llama on the built-in reversal task)",
        description="Preference training of a Hugging Face causal LM. With no arguments: a tiny Llama "
        "on the built-in string-reversal task, SFT warm-up then DPO, in about 30 seconds on a CPU.",
    )
    a = p.add_argument
    a("--data", help="JSONL of preference rows {prompt, chosen, rejected} (default: the built-in task)")
    a("--eval-data", help="held-out JSONL for eval/accuracy (the built-in task has its own)")
    a("--model", help="local Hugging Face causal-LM directory (default: tiny Llama built from a config)")
    a("--out", default=d.out, help=f"output directory (default {d.out})")
    a("--loss", default=d.loss, choices=LOSSES)
    a("--beta", type=float, default=d.beta, help="DPO/cDPO beta")
    a("--label-smoothing", type=float, default=None, help="cDPO flip probability (default 0.1 with cdpo)")
    a("--tau", type=float, default=d.tau, help="IPO tau (target margin 1/(2 tau))")
    a("--rpo-alpha", type=float, default=d.rpo_alpha, help="weight of the chosen NLL term (0 = plain DPO)")
    a("--steps", type=int, default=d.steps, help="preference optimizer updates")
    a("--batch-size", type=int, default=d.batch_size, help="pairs per micro-batch per process")
    a("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per update")
    a("--lr", type=float, default=d.lr)
    a("--weight-decay", type=float, default=d.weight_decay)
    a("--warmup-steps", type=int, default=d.warmup_steps, help="linear LR warmup, then constant")
    a("--max-grad-norm", type=float, default=d.max_grad_norm)
    a("--max-length", type=_optional_int, default=d.max_length, help="prompt+response tokens; 'none' = no cut")
    a("--max-prompt-length", type=_optional_int, default=d.max_prompt_length, help="prompt tokens kept (its end)")
    a("--padding-side", default=d.padding_side, choices=("left", "right"))
    a("--sft-steps", type=int, default=d.sft_steps, help="SFT warm-up updates on the chosen responses")
    a("--sft-lr", type=float, default=d.sft_lr)
    a("--precompute-ref", action="store_true", help="compute reference log-probs once, then free the reference")
    a("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    a("--threads", type=int, default=None, help="CPU threads (default 1 for the built-in tiny model)")
    a("--seed", type=int, default=d.seed)
    a("--log-every", type=int, default=d.log_every)
    a("--eval-every", type=int, default=d.eval_every)
    a("--save-every", type=int, default=d.save_every)
    a("--eval-generation", action=argparse_bool(), default=None, help="greedy-decode accuracy on the eval set")
    a("--max-new-tokens", type=int, default=d.max_new_tokens)
    a("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors exactly")
    a("--stop-after", type=int, default=None, help="stop after this many updates (checkpointed), as if interrupted")
    a("--skip-bad-rows", action="store_true", help="skip malformed rows (and report their count)")
    a("--skip-nonfinite", action="store_true", help="skip (and count) updates with a non-finite loss or gradient "
      "instead of stopping; costs one host sync per step")  # fmt: skip
    a("--trust-remote-code", action="store_true", help="allow custom modelling code in --model")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_handler)


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction
