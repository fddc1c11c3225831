"""`dpo-ref train`: preference fine-tuning of a Hugging Face causal LM, read top to bottom.

Any loss of the registry (`dpo_ref.variants`) or a weighted combination trains (`dpo_ref.train.objective`);
DPO, cDPO and IPO alone keep `preference_loss` below.

`train` runs six phases, each a function below:

    1. set_up         settings checked, device and processes (torchrun), the run directory checked
    2. load_data      model, tokenizer, preference rows -> token ids (every input validated; nothing written)
       claim_run_dir  the first write of the run: lock OUT, clear an overwritten run, write run.json
    3. warm_up        optional SFT warm-up on the chosen responses (reused from OUT/sft.safetensors on resume)
    4. make_reference a frozen copy of the policy after warm-up, or (--precompute-ref) its log-probs only
    5. preference_loop one concatenated chosen+rejected forward per micro-batch, loss from dpo_ref.losses,
                      AdamW, gradient accumulation and clipping, linear warmup; DDP under torchrun, or
                      FSDP2 with --fsdp (`dpo_ref.train.fsdp`); resumable from OUT/checkpoint.safetensors
                      (OUT/checkpoint.dcp with --fsdp)
    6. finish         final evaluation and OUT/model (save_pretrained)

The SFT warm-up, the preference loop and `dpo-ref bench` share one optimizer update (`update_step`).
Metrics at step s describe the global batch of update s, computed before that update; `loss` is the
preference loss alone (so it is ln 2 at step 0 whatever `rpo_alpha`), `loss/total` adds the chosen NLL.
Evaluation at step s measures the model before update s; the last line (step = steps) is the final
evaluation.
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
import torch.nn as nn

from dpo_ref.atomic import check_apart
from dpo_ref.errors import InputError
from dpo_ref.logps import sequence_logps, shift_labels, token_logps
from dpo_ref.losses import dpo_loss, ipo_loss
from dpo_ref.progress import phase
from dpo_ref.rpo import per_token_nll, rpo_objective
from dpo_ref.train import attention, fsdp, layouts, lora
from dpo_ref.train.config import LOSSES, RESUME_KEYS, SFT_KEYS, TrainConfig, check_config, check_device
from dpo_ref.train.data import IGNORE_INDEX, PreferenceCollator, TokenizedPair, pad_sequences, prepare_dataset
from dpo_ref.train.objective import is_classic, resolve
from dpo_ref.train.precision import autocast, grad_scaler
from dpo_ref.train.rundir import RUN_FILES, RunDir, check_writable_dir

COMMAND = "dpo-ref train"  # how progress lines name the command

__all__ = ["LOSSES", "TrainConfig", "check_config", "check_writable_dir", "train", "read_metrics"]

# families whose logits are exactly output_layer(last hidden state): the output layer may then be
# applied at the scored positions only (no soft-capping or logit scaling after it)
_PLAIN_HEAD_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi3", "olmo", "olmo2"}


def check_out_dir(cfg: TrainConfig) -> None:
    """Refuse an --out that cannot hold the run (read only): see `RunDir.check`."""
    RunDir(cfg.out).check(run_config(cfg, world=1), resume=cfg.resume, overwrite=cfg.overwrite, resume_keys=RESUME_KEYS)


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
        self.model = model = lora.inner_model(model)  # a LoRA policy: the HF model, its adapters injected
        model_type = getattr(model.config, "model_type", "")
        # under FSDP the output layer outside the model's forward would miss the root's all-gather
        self.scored_head_only = (
            model_type in _PLAIN_HEAD_MODEL_TYPES
            and isinstance(model.get_output_embeddings(), nn.Linear)
            and not fsdp.is_sharded(model)
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels=None, **layout):
        if layout:  # a prefix-sharing or packed batch (dpo_ref.train.layouts): where each token is scored
            batch = {"input_ids": input_ids, "attention_mask": attention_mask, **layout}
            return layouts.score(self.model, batch, self.scored_head_only)
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
    """The torch device of --device (checked by `check_device`); auto = this process's GPU, else the CPU."""
    check_device(name)
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
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


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def scorer_inputs(batch: dict) -> dict[str, torch.Tensor]:
    """A collated batch's tensors a `SequenceScorer` takes (all but `index`, which the layouts also need)."""
    keep = {k: v for k, v in batch.items() if k != "index"}
    return {**keep, "index": batch["index"]} if "score_slots" in batch else keep


def pair_logps(
    scorer: SequenceScorer,
    pairs: list[TokenizedPair],
    collate,
    device,
    batch_size: int,
    *,
    counts: bool = False,
    dtype: str | None = None,
):
    """(chosen (P,), rejected (P,)) sequence log-probs of every pair under `scorer`, indexed by `pair.index`;
    with `counts`, also (chosen (P,), rejected (P,)) scored-token counts."""
    chosen = torch.zeros(len(pairs), dtype=torch.float32, device=device)
    rejected = torch.zeros_like(chosen)
    n_chosen = torch.zeros(len(pairs), dtype=torch.long, device=device)
    n_rejected = torch.zeros_like(n_chosen)
    for start in range(0, len(pairs), batch_size):
        batch = to_device(collate(pairs[start : start + batch_size]), device)
        with autocast(device, dtype):
            logps, n = scorer(**scorer_inputs(batch))  # (2B,)
        B = batch["index"].shape[0]
        chosen[batch["index"]] = logps[:B].float()
        rejected[batch["index"]] = logps[B:].float()
        n_chosen[batch["index"]], n_rejected[batch["index"]] = n[:B], n[B:]
    return (chosen, rejected, n_chosen, n_rejected) if counts else (chosen, rejected)


@torch.no_grad()
def greedy_generate(
    model: nn.Module, prompts: list[list[int]], *, max_new_tokens: int, pad_id: int, eos_id: int, device, dtype=None
) -> list[list[int]]:
    """Greedy completions (up to and including EOS) of a batch of prompts: `model.generate`, left-padded,
    with its KV cache (4x faster than a loop re-running the whole sequence, on the built-in eval set)."""
    input_ids = pad_sequences(prompts, pad_id, "left").to(device)  # (N, T)
    attention_mask = pad_sequences([[1] * len(p) for p in prompts], 0, "left").to(device)  # (N, T)
    with autocast(device, dtype):
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )  # (N, T + new)
    out = []
    for row in output[:, input_ids.shape[1] :].tolist():
        out.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return out


def generation_accuracy(model, pairs, *, max_new_tokens, pad_id, eos_id, device, batch_size=256, dtype=None) -> float:
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
            dtype=dtype,
        )
        correct += sum(c == p.chosen_ids for c, p in zip(completions, chunk))
    model.train(was_training)
    return correct / len(pairs)


def preference_loss(cfg: TrainConfig, pc, pr, rc, rr):
    """The configured loss from dpo_ref.losses (no validation: the hot path)."""
    if cfg.loss == "ipo":
        return ipo_loss(pc, pr, rc, rr, tau=cfg.tau, validate=False)
    return dpo_loss(pc, pr, rc, rr, beta=cfg.beta, label_smoothing=cfg.label_smoothing, validate=False)


# the named statistics of a preference micro-batch: sums over its pairs (divided by the pair count when logged)
STATISTICS = (
    "loss",  # preference loss
    "loss/nll_chosen",  # per-token NLL of the chosen response (the RPO term)
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",  # chosen reward > rejected reward
    "logps/chosen",
    "logps/rejected",
    "logratio/chosen",  # log pi(y_w|x) - log pi_ref(y_w|x)
    "logratio/rejected",
)


# the metrics logged for an update, in the order of metrics.jsonl: the mean of each statistic, and two derived
METRICS = (
    "loss",
    "loss/nll_chosen",
    "loss/total",  # loss + rpo_alpha x loss/nll_chosen: the objective minimised
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",  # rewards/chosen - rewards/rejected
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "logratio/chosen",
    "logratio/rejected",
)


def step_metrics(stats: dict[str, torch.Tensor], pairs: int, rpo_alpha: float) -> dict[str, float]:
    """The `METRICS` of an update, in order, from its statistics summed over `pairs` pairs (a host sync): the
    `STATISTICS`, less the log-ratios of a reference-free loss, then each loss of a combination (`loss/NAME`)."""
    mean = {name: stats[name].item() / pairs for name in stats}
    mean["loss/total"] = mean["loss"] + rpo_alpha * mean["loss/nll_chosen"]
    mean["rewards/margins"] = mean["rewards/chosen"] - mean["rewards/rejected"]
    extra = [name for name in stats if name not in METRICS]
    return {name: mean[name] for name in (*METRICS, *extra) if name in mean}


def preference_micro_batch(cfg: TrainConfig, scorer, batch: dict, ref_scorer=None, ref_logps=None):
    """(loss, stats) of one micro-batch of B pairs, the body of the preference loop (no host sync).

    One concatenated forward of the policy over the (2B, T) chosen+rejected rows; the reference
    log-probs from a forward of `ref_scorer` under no_grad, or looked up by `batch["index"]` in the
    precomputed `ref_logps` = (chosen (P,), rejected (P,)). loss = mean preference loss + rpo_alpha x
    the mean per-token NLL of the chosen responses (RPO, against likelihood displacement). `stats`:
    {name in STATISTICS: () float64 sum over the pairs}.
    """
    if not is_classic(cfg):
        return objective_micro_batch(cfg, scorer, batch, ref_scorer, ref_logps)
    B = batch["index"].shape[0]
    logps, counts = scorer(**scorer_inputs(batch))  # (2B,)
    policy_chosen_logps, policy_rejected_logps = logps[:B], logps[B:]  # (B,), (B,)
    if ref_logps is not None:
        reference_chosen_logps = ref_logps[0][batch["index"]]  # (B,)
        reference_rejected_logps = ref_logps[1][batch["index"]]
    else:
        with torch.no_grad():
            ref, _ = ref_scorer(**scorer_inputs(batch))  # (2B,)
        reference_chosen_logps, reference_rejected_logps = ref[:B], ref[B:]
    result = preference_loss(
        cfg, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    # counts >= 1 (the data validation's guarantee): no count check, no host sync
    nll_chosen = per_token_nll(policy_chosen_logps.float(), counts[:B], validate=False)  # (B,)
    loss = rpo_objective(result.losses, policy_chosen_logps.float(), counts[:B], cfg.rpo_alpha, validate=False)
    with torch.no_grad():
        values = {
            "loss": result.losses,
            "loss/nll_chosen": nll_chosen,
            "rewards/chosen": result.chosen_rewards,
            "rewards/rejected": result.rejected_rewards,
            "rewards/accuracies": result.chosen_rewards > result.rejected_rewards,
            "logps/chosen": policy_chosen_logps,
            "logps/rejected": policy_rejected_logps,
            "logratio/chosen": policy_chosen_logps - reference_chosen_logps,
            "logratio/rejected": policy_rejected_logps - reference_rejected_logps,
        }
        stats = {name: values[name].sum().double() for name in STATISTICS}
    return loss, stats


def objective_micro_batch(cfg: TrainConfig, scorer, batch: dict, ref_scorer=None, ref_logps=None):
    """`preference_micro_batch` for any registry loss or combination (`dpo_ref.train.objective`).

    The losses get the scored-token counts (length-normalised ones use them), and the whole micro-batch at
    once (batch-coupled ones sort or average over it). With no reference (every loss reference-free) the
    reference log-probs passed are zeros the losses never read, and no log-ratio is logged. A combination
    also logs each loss (`loss/NAME`, unweighted); `loss` is the weighted sum.
    """
    objective = resolve(cfg)
    B = batch["index"].shape[0]
    logps, counts = scorer(**scorer_inputs(batch))  # (2B,), (2B,)
    pc, pr = logps[:B], logps[B:]  # (B,), (B,)
    if ref_logps is not None:
        rc, rr = ref_logps[0][batch["index"]], ref_logps[1][batch["index"]]
    elif ref_scorer is not None:
        with torch.no_grad():
            ref, _ = ref_scorer(**scorer_inputs(batch))  # (2B,)
        rc, rr = ref[:B], ref[B:]
    else:  # reference-free
        rc = rr = torch.zeros_like(pc).detach()
    losses, chosen_rewards, rejected_rewards, parts = objective(pc, pr, rc, rr, counts[:B], counts[B:])
    nll_chosen = per_token_nll(pc.float(), counts[:B], validate=False)  # (B,)
    loss = rpo_objective(losses.float(), pc.float(), counts[:B], cfg.rpo_alpha, validate=False)
    with torch.no_grad():
        values = {
            "loss": losses,
            "loss/nll_chosen": nll_chosen,
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": chosen_rewards > rejected_rewards,
            "logps/chosen": pc,
            "logps/rejected": pr,
        }
        if objective.needs_reference:
            values.update({"logratio/chosen": pc - rc, "logratio/rejected": pr - rr})
        if objective.combined:
            values.update({f"loss/{name}": part for name, part in parts.items()})
        stats = {name: value.sum().double() for name, value in values.items()}
    return loss, stats


def sft_micro_batch(scorer, batch: dict):
    """(loss, stats) of one SFT micro-batch: the mean over rows of the per-token NLL of the response."""
    logps, counts = scorer(**scorer_inputs(batch))  # (B,)
    nll = per_token_nll(logps.float(), counts, validate=False)  # (B,): counts >= 1, see preference_micro_batch
    return nll.mean(), {"nll": nll.detach().sum().double()}


def adamw(params, *, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW; on CUDA the fused kernel (one launch for all parameters), elsewhere torch's default (foreach)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if device.type == "cuda" else None)


def update_step(
    micro_batches: Sequence[dict],
    loss_fn: Callable[[dict], tuple[torch.Tensor, dict]],
    *,
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float,
    device: torch.device,
    scheduler=None,
    ddp=None,
    skip: Callable[[dict, torch.Tensor], bool] | None = None,
    dtype: str | None = None,
    scaler=None,
) -> tuple[dict, torch.Tensor, bool]:
    """One optimizer update, shared by the SFT warm-up, the preference loop and `dpo-ref bench`.

    Forward and backward of each micro-batch under autocast (the gradient of the mean of the micro-batch
    losses; under DDP the gradients are all-reduced on the last micro-batch only), clipping to
    `max_grad_norm`, `optimizer.step()` unless `skip(stats, grad_norm)` says so, the schedule, zero_grad.
    Returns (stats summed over the micro-batches, grad_norm, skipped); no host synchronisation unless
    `skip` makes one. `dtype`: the --dtype of the autocast (`dpo_ref.train.precision`); `scaler`: float16's loss
    scale (the gradients are unscaled before clipping; the scaler skips an update whose scaled gradient overflowed).
    """
    stats: dict[str, torch.Tensor] = {}
    n = len(micro_batches)
    for i, batch in enumerate(micro_batches):
        sync = ddp is None or i == n - 1
        with ddp.no_sync() if not sync else nullcontext(), autocast(device, dtype):
            loss, micro_stats = loss_fn(batch)
            loss = loss / n if n > 1 else loss
            (scaler.scale(loss) if scaler is not None else loss).backward()
        for name, value in micro_stats.items():
            stats[name] = stats[name] + value if name in stats else value
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = fsdp.full(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))  # FSDP: a DTensor, made whole
    skipped = bool(skip(stats, grad_norm)) if skip is not None else False
    if not skipped:  # a skipped update leaves weights and AdamW state as they were
        scaler.step(optimizer) if scaler is not None else optimizer.step()
    if scaler is not None:
        scaler.update()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return stats, grad_norm, skipped


def all_reduce_stats(stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The named statistics summed over the processes, in one all_reduce."""
    import torch.distributed as dist

    names = list(stats)
    stacked = torch.stack([stats[k] for k in names])
    dist.all_reduce(stacked)
    return dict(zip(names, stacked.unbind()))


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl file."""
    import json

    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def file_sha256(path: str | None) -> str | None:
    """SHA-256 of a file's bytes (None for None): a resumed run checks the data by content, not by its path."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_config(cfg: TrainConfig, world: int) -> dict:
    """The settings recorded in OUT/run.json and compared on resume (`RESUME_KEYS`)."""
    from dpo_ref.train.data import check_data_path

    for option, path in (("--data", cfg.data), ("--eval-data", cfg.eval_data)):
        if path is not None:
            check_data_path(path, option)
    return {
        **asdict(cfg),
        "model": os.path.realpath(cfg.model) if cfg.model is not None else None,
        "data_sha256": file_sha256(cfg.data),
        "eval_data_sha256": file_sha256(cfg.eval_data),
        "global_batch": cfg.batch_size * cfg.grad_accum * world,
        "processes": world,
    }


# ---------------------------------------------------------------------------------------------- the phases


@dataclass
class Session:
    """What every phase shares: the settings, device, processes and run directory."""

    cfg: TrainConfig
    device: torch.device
    world: int
    rank: int
    run_dir: RunDir
    run_config: dict
    show_progress: bool  # a bar (or a line) per phase: --progress, on the main process
    started: float = field(default_factory=time.perf_counter)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        """Whether the scorer runs under DDP: several processes, without --fsdp."""
        return self.distributed and not self.cfg.fsdp

    @property
    def evaluates(self) -> bool:
        """Whether this process runs the evaluations: the main one, or under FSDP every one (each forward is a
        collective); only the main one writes them."""
        return self.main or self.cfg.fsdp

    @property
    def per_rank(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum

    @property
    def global_batch(self) -> int:
        return self.per_rank * self.world

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def wrap(self, scorer: nn.Module):
        """The scorer under DDP when several processes train without --fsdp, else itself."""
        if not self.ddp:
            return scorer
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(scorer, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def micro_batches(self, pairs: list, indices: list[int], collate) -> list[dict]:
        """This process's share of a global batch (`indices`), as grad_accum collated micro-batches."""
        mine = indices[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        size = self.cfg.batch_size
        return [
            to_device(collate([pairs[i] for i in mine[m * size : (m + 1) * size]]), self.device)
            for m in range(self.cfg.grad_accum)
        ]


@dataclass
class Data:
    policy: nn.Module
    tokenizer: object
    train_pairs: list[TokenizedPair]
    eval_pairs: list[TokenizedPair]
    skipped: int
    collate: PreferenceCollator
    collate_chosen: PreferenceCollator
    eval_generation: bool
    attention: str = "mask"  # the layout's attention kernel (dpo_ref.train.attention)
    reference: nn.Module | None = None  # --fsdp, full fine-tuning: the reference, sharded as the policy is


def check_paths(cfg: TrainConfig, json_path: str | None = None) -> None:
    """The outputs (the run files --out writes, --json) apart from the inputs (--data, --eval-data, --model) and
    from each other, however spelled (`check_apart`); reads only."""
    check_apart(
        {"--data": cfg.data, "--eval-data": cfg.eval_data, "--model": cfg.model},
        {"--out": cfg.out, "--json": json_path},
        owned={"--out": (*RUN_FILES, ".lock")},
    )


def set_up(cfg: TrainConfig) -> Session:
    """Phase 1: every setting checked, the device and processes set up, the run directory checked (read only)."""
    cfg = check_config(cfg)
    check_paths(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank)
    run_dir = RunDir(cfg.out)
    config = run_config(cfg, world)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:  # the other processes never write the run directory
        run_dir.check(config, resume=cfg.resume, overwrite=cfg.overwrite, resume_keys=RESUME_KEYS)
    if world > 1 or cfg.fsdp:  # --fsdp (checked to run under torchrun) shards even over one process
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return Session(cfg, device, world, rank, run_dir, config, show_progress=cfg.progress and rank == 0)


def load_data(s: Session) -> Data:
    """Phase 2: the model and tokenizer, and the preference rows tokenised; every input read and validated."""
    from dpo_ref.train.model import enable_gradient_checkpointing, load_model_and_tokenizer, max_positions
    from dpo_ref.train.tasks import reversal_rows

    cfg = s.cfg
    policy, tokenizer = load_model_and_tokenizer(cfg.model, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code)
    builtin = cfg.data is None
    train_rows, eval_rows = reversal_rows() if builtin else (cfg.data, cfg.eval_data)
    options = dict(
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        skip_bad_rows=cfg.skip_bad_rows,
        max_positions=max_positions(policy),
        builtin_tokenizer=cfg.model is None,
    )
    train_pairs, skipped = prepare_dataset(train_rows, tokenizer, **options)
    eval_pairs, eval_skipped = prepare_dataset(eval_rows, tokenizer, **options) if eval_rows else ([], 0)
    check_vocabulary(policy, train_pairs + eval_pairs, tokenizer.pad_token_id, cfg.model)
    check_finite_weights(policy, cfg.model)
    if s.global_batch > len(train_pairs) and not cfg.repeat_rows:
        raise InputError(
            f"an update takes {s.global_batch} pairs (--batch-size {cfg.batch_size} x --grad-accum {cfg.grad_accum} x "
            f"{s.world} processes) but the training data has {len(train_pairs)}; lower --batch-size, or pass "
            "--repeat-rows to let rows repeat within an update"
        )
    disable_dropout(policy).to(s.device)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    kernel = attention.choose(cfg.attention, cfg.layout, s.device, policy)
    attention.use(policy, kernel)  # before the reference is copied from the policy: both run the same kernel
    if cfg.lora_r is not None:  # after disable_dropout: --lora-dropout is kept
        policy = lora.apply_lora(
            policy, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.lora_target_modules
        )
    reference = None
    if cfg.fsdp:
        if not lora.is_peft(policy) and needs_reference(cfg):  # sharded alike, never whole (see fsdp.fill)
            reference = fsdp.shard(fsdp.empty_reference(policy), s.device, frozen=True)
        policy = fsdp.shard(policy, s.device)
        if reference is not None:
            reference = fsdp.fill(reference, policy, s.device)
    policy.train()
    return Data(
        policy=policy,
        reference=reference,
        tokenizer=tokenizer,
        train_pairs=train_pairs,
        eval_pairs=eval_pairs,
        skipped=skipped + eval_skipped,
        collate=layouts.LayoutCollator(tokenizer.pad_token_id, cfg.layout, cfg.max_length)
        if cfg.layout != "two-sequence"
        else PreferenceCollator(tokenizer.pad_token_id, cfg.padding_side),
        collate_chosen=PreferenceCollator(tokenizer.pad_token_id, cfg.padding_side, responses=("chosen",)),
        eval_generation=builtin if cfg.eval_generation is None else cfg.eval_generation,
        attention=kernel,
    )


def check_vocabulary(model: nn.Module, pairs: list[TokenizedPair], pad_id: int, path: str | None) -> None:
    """InputError unless every token id of `pairs` (and the pad id) has a row in the model's input embedding;
    a tokenizer with tokens the model was not resized for would otherwise fail mid-run (an index error)."""
    rows = model.get_input_embeddings().num_embeddings
    highest = max([pad_id] + [max(p.prompt_ids + p.chosen_ids + p.rejected_ids) for p in pairs])
    if highest >= rows:
        raise InputError(
            f"--model {path!r}: its tokenizer gives token id {highest}, but the model's input embedding has only "
            f"{rows} rows; resize it (model.resize_token_embeddings(len(tokenizer)), then save_pretrained) or "
            "bring the tokenizer it was trained with"
        )


def check_finite_weights(model: nn.Module, path: str | None) -> None:
    """InputError naming the first parameter of `--model` holding a NaN or inf: training it could only fail, and
    the failure would look like a learning-rate problem."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise InputError(
                f"--model {path!r}: its weights are not finite ({name} holds NaN or inf); expected finite weights"
            )


def claim_run_dir(s: Session) -> None:
    """The first write of the run: lock OUT, clear an overwritten run, record the settings (see RunDir.claim)."""
    cfg = s.cfg
    if s.main:
        s.run_dir.claim(s.run_config, resume=cfg.resume, overwrite=cfg.overwrite, resume_keys=RESUME_KEYS)
        if cfg.resume and not s.run_dir.has_checkpoint():  # stopped before its first checkpoint: the log restarts
            s.run_dir.keep_metrics_before(0)
    s.barrier()


def warm_up(s: Session, d: Data) -> dict:
    """Phase 3: SFT on the chosen responses (`sft_steps` updates at `sft_lr`, the global batch of the
    preference phase); reused from OUT/sft.safetensors when a resumed run already did it."""
    cfg = s.cfg
    if not cfg.sft_steps:
        return {}
    sft_key = {k: s.run_config[k] for k in SFT_KEYS}
    load = partial(fsdp.load_sft, s.run_dir) if cfg.fsdp else partial(s.run_dir.load_sft, device=s.device)
    if cfg.resume and load(d.policy, sft_key):
        return {"steps": cfg.sft_steps, "reused": s.run_dir.sft}
    scorer = s.wrap(SequenceScorer(d.policy))
    optimizer = adamw(lora.trainable_parameters(d.policy), lr=cfg.sft_lr, weight_decay=0.0, device=s.device)
    scaler = grad_scaler(s.device, cfg.dtype)
    order = BatchOrder(len(d.train_pairs), s.global_batch, cfg.seed + 1)
    first = None
    bar = phase(COMMAND, "sft warm-up", cfg.sft_steps, enabled=s.show_progress)
    for step in range(cfg.sft_steps):
        stats, _, _ = update_step(
            s.micro_batches(d.train_pairs, order(step), d.collate_chosen),
            partial(sft_micro_batch, scorer),
            optimizer=optimizer,
            max_grad_norm=cfg.max_grad_norm,
            device=s.device,
            ddp=scorer if s.ddp else None,
            dtype=cfg.dtype,
            scaler=scaler,
        )
        if step == 0:
            first = stats["nll"].item() / s.per_rank
        bar.update(1)
    bar.close()
    last = stats["nll"].item() / s.per_rank
    finite = fsdp.all_finite(d.policy) if cfg.fsdp else all(torch.isfinite(p).all() for p in d.policy.parameters())
    if not finite:  # never save a broken warm-up
        raise FloatingPointError("the SFT warm-up made the weights non-finite; try a lower --sft-lr")
    if lora.is_peft(d.policy):  # the warmed-up model is the reference: its adapters folded into the base
        lora.fold_adapters(d.policy)
    if cfg.fsdp:
        fsdp.save_sft(s.run_dir, d.policy, sft_key, main=s.main)
    elif s.main:
        s.run_dir.save_sft(d.policy, sft_key)
    return {"steps": cfg.sft_steps, "nll_first": first, "nll_last": last}


@dataclass
class Reference:
    """The reference: a frozen model scored live (`scorer`), or its precomputed log-probs (`logps`)."""

    scorer: SequenceScorer | None = None
    logps: dict | None = None  # {"train": (chosen (P,), rejected (P,)), "eval": ... or None}


def needs_reference(cfg: TrainConfig) -> bool:
    """Whether the loss reads a reference (every loss but the reference-free ones: SimPO, SFT)."""
    return is_classic(cfg) or resolve(cfg).needs_reference


def make_reference(s: Session, d: Data) -> Reference:
    """Phase 4: a frozen copy of the (warmed-up) policy, or with --precompute-ref its log-probs only; none at all
    for a reference-free loss (SimPO, SFT: no second model in memory)."""
    if not needs_reference(s.cfg):
        return Reference()
    if lora.is_peft(d.policy):  # the same weights with the adapters off: no second copy
        scorer = lora.AdaptersOff(SequenceScorer(d.policy), d.policy)
    elif d.reference is not None:  # --fsdp: the sharded reference made at load, given the warmed-up weights
        fsdp.copy_shards(d.reference, d.policy)
        scorer = SequenceScorer(d.reference)
        d.reference = None  # held by the scorer alone: freed with it (--precompute-ref)
    else:
        scorer = SequenceScorer(frozen_reference(d.policy))
    if not s.cfg.precompute_ref:
        return Reference(scorer=scorer)
    size = 2 * s.cfg.batch_size
    logps = {
        "train": pair_logps(scorer, d.train_pairs, d.collate, s.device, size, dtype=s.cfg.dtype),
        "eval": pair_logps(scorer, d.eval_pairs, d.collate, s.device, size, dtype=s.cfg.dtype)
        if d.eval_pairs
        else None,
    }
    return Reference(logps=logps)  # the reference model is freed here


def evaluate(s: Session, d: Data, ref: Reference) -> dict:
    """Held-out preference accuracy of the implicit reward, eval loss and generation accuracy."""
    if not d.eval_pairs:
        return {}
    cfg, policy = s.cfg, d.policy
    if not is_classic(cfg):
        return evaluate_objective(s, d, ref)
    policy.eval()
    with torch.no_grad():
        size = 2 * cfg.batch_size
        pc, pr = pair_logps(SequenceScorer(policy), d.eval_pairs, d.collate, s.device, size, dtype=cfg.dtype)
        if ref.logps is not None:
            rc, rr = ref.logps["eval"]
        else:
            rc, rr = pair_logps(ref.scorer, d.eval_pairs, d.collate, s.device, size, dtype=cfg.dtype)
        result = preference_loss(cfg, pc, pr, rc, rr)
        metrics = {
            "eval/loss": result.losses.mean().item(),
            "eval/accuracy": (result.chosen_rewards > result.rejected_rewards).float().mean().item(),
            "eval/logps/chosen": pc.mean().item(),
            "eval/logps/rejected": pr.mean().item(),
        }
    if d.eval_generation:
        metrics["eval/generation_accuracy"] = generation_accuracy(
            policy,
            d.eval_pairs,
            max_new_tokens=cfg.max_new_tokens,
            pad_id=d.tokenizer.pad_token_id,
            eos_id=d.tokenizer.eos_token_id,
            device=s.device,
            dtype=cfg.dtype,
        )
    policy.train()
    return metrics


def evaluate_objective(s: Session, d: Data, ref: Reference) -> dict:
    """`evaluate` for any registry loss or combination: the loss over the whole held-out set at once."""
    cfg, policy = s.cfg, d.policy
    objective = resolve(cfg)
    size = 2 * cfg.batch_size
    policy.eval()
    with torch.no_grad():
        pc, pr, nc, nr = pair_logps(
            SequenceScorer(policy), d.eval_pairs, d.collate, s.device, size, counts=True, dtype=cfg.dtype
        )
        if ref.logps is not None:
            rc, rr = ref.logps["eval"]
        elif ref.scorer is not None:
            rc, rr = pair_logps(ref.scorer, d.eval_pairs, d.collate, s.device, size, dtype=cfg.dtype)
        else:  # reference-free
            rc = rr = torch.zeros_like(pc)
        losses, chosen_rewards, rejected_rewards, parts = objective(pc, pr, rc, rr, nc, nr)
        metrics = {
            "eval/loss": losses.mean().item(),
            "eval/accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
            "eval/logps/chosen": pc.mean().item(),
            "eval/logps/rejected": pr.mean().item(),
        }
        if objective.combined:
            metrics.update({f"eval/loss/{name}": part.mean().item() for name, part in parts.items()})
    if d.eval_generation:
        metrics["eval/generation_accuracy"] = generation_accuracy(
            policy,
            d.eval_pairs,
            max_new_tokens=cfg.max_new_tokens,
            pad_id=d.tokenizer.pad_token_id,
            eos_id=d.tokenizer.eos_token_id,
            device=s.device,
            dtype=cfg.dtype,
        )
    policy.train()
    return metrics


def preference_optimizer(cfg: TrainConfig, policy: nn.Module, device: torch.device):
    """(AdamW at --lr, its schedule): a linear warmup over --warmup-steps updates, then constant."""
    optimizer = adamw(lora.trainable_parameters(policy), lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    )
    return optimizer, scheduler


def resume_checkpoint(s: Session, policy: nn.Module, optimizer, scheduler, scaler=None) -> tuple[int, int]:
    """(first step, updates skipped so far by --skip-nonfinite): (0, 0) for a fresh run; with --resume and a
    checkpoint, its state loaded in place and the metrics records it does not cover dropped."""
    if not (s.cfg.resume and s.run_dir.has_checkpoint()):
        return 0, 0
    if s.cfg.fsdp:
        meta = fsdp.load_checkpoint(s.run_dir, model=policy, optimizer=optimizer, scheduler=scheduler)
    else:
        meta = s.run_dir.load_checkpoint(model=policy, optimizer=optimizer, scheduler=scheduler)
    if scaler is not None and "grad_scaler" in meta:  # float16's loss scale
        scaler.load_state_dict(meta["grad_scaler"])
    if s.main:
        s.run_dir.keep_metrics_before(meta["step"])
    return meta["step"], meta.get("nonfinite_skipped", 0)


def save_checkpoint(
    s: Session, policy: nn.Module, optimizer, scheduler, step: int, nonfinite_skipped: int, scaler=None
) -> None:
    """OUT/checkpoint.safetensors after `step` updates (written by the main process only); with --fsdp,
    OUT/checkpoint.dcp (every process writes its shards)."""
    extra = {"nonfinite_skipped": nonfinite_skipped}
    if scaler is not None:
        extra["grad_scaler"] = scaler.state_dict()
    if s.cfg.fsdp:
        fsdp.save_checkpoint(
            s.run_dir, model=policy, optimizer=optimizer, scheduler=scheduler, step=step, config=s.run_config,
            extra=extra, main=s.main,
        )  # fmt: skip
    elif s.main:
        s.run_dir.save_checkpoint(
            model=policy, optimizer=optimizer, scheduler=scheduler, step=step, config=s.run_config, extra=extra
        )


class NonfiniteGuard:
    """Watches every update for a non-finite loss or gradient.

    Without --skip-nonfinite the first such step is kept on the device (`first`, -1: none), so that watching
    costs no host sync; `stop_if_seen` reads it where the loop syncs anyway (logging) and before every
    checkpoint, and stops the run. With --skip-nonfinite, `skip` has `update_step` skip such an update
    (a host sync every step: the price of --skip-nonfinite).
    """

    def __init__(self, s: Session):
        self.s = s
        self.first = torch.full((), -1, dtype=torch.long, device=s.device)  # () long

    def skip(self, stats: dict, grad_norm: torch.Tensor, *, step: int) -> bool:
        """Whether `update_step` skips update `step` (its `skip` argument)."""
        finite = torch.isfinite(stats["loss"]) & torch.isfinite(stats["loss/nll_chosen"])
        if self.s.cfg.dtype != "float16":  # under float16 an overflowed gradient is the loss scaler's to skip
            finite = finite & torch.isfinite(grad_norm)
        nonfinite = ~finite  # () bool, on the device
        if not self.s.cfg.skip_nonfinite:
            self.first = torch.where(nonfinite & (self.first < 0), step, self.first)
            return False
        if self.s.distributed:  # every process must skip the same updates
            import torch.distributed as dist

            nonfinite = nonfinite.float()
            dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX)
        return bool(nonfinite)

    def stop_if_seen(self, last_saved: int | None) -> None:
        """FloatingPointError if an update so far was not finite; `last_saved`: the last checkpoint's step."""
        if self.s.distributed:
            import torch.distributed as dist

            dist.all_reduce(self.first, op=dist.ReduceOp.MAX)
        bad = int(self.first)
        if bad < 0:
            return
        checkpoint = self.s.run_dir.checkpoint
        kept = f"{checkpoint} (step {last_saved}) is the last good checkpoint" if last_saved else "none saved"
        if bad == 0:  # no update yet: the policy is the reference (margin 0), so the coefficient overflowed
            cause = "raise --tau" if self.s.cfg.loss == "ipo" else "lower --beta"
            advice = f"Before any update the learning rate plays no part: {cause}"
        else:
            advice = "Lower --lr, or pass --skip-nonfinite to skip such updates"
        raise FloatingPointError(
            f"non-finite loss or gradient at step {bad}: stopped before saving it; {kept}. {advice}"
        )


def logs_at(cfg: TrainConfig, step: int) -> bool:
    """Whether update `step` is logged: every --log-every-th, and the last."""
    return step % cfg.log_every == 0 or step == cfg.steps - 1


def saves_after(cfg: TrainConfig, done: int, end_step: int) -> bool:
    """Whether a checkpoint is written after `done` updates: every --save-every-th, and where the run stops."""
    return done % cfg.save_every == 0 or done == end_step


def logged_metrics(s: Session, stats: dict, grad_norm: torch.Tensor, lr: float, skipped: bool, nonfinite_skipped: int):
    """What a logged update adds to its metrics.jsonl record; the only host synchronisation of a step. A
    skipped update (its loss or gradient not finite) logs only the count of skipped updates."""
    record = {"nonfinite_skipped": nonfinite_skipped} if s.cfg.skip_nonfinite else {}
    if skipped:
        return record
    if s.distributed:
        stats = all_reduce_stats(stats)
    record.update(step_metrics(stats, s.global_batch, s.cfg.rpo_alpha))
    record.update({"grad_norm": float(grad_norm), "lr": lr})
    return record


def preference_loop(s: Session, d: Data, ref: Reference) -> dict:
    """Phase 5: the preference updates, resumed from OUT/checkpoint.safetensors when there is one.

    Returns {"history": records written, "end_step", "nonfinite_skipped"}. A non-finite loss or gradient
    stops the run (FloatingPointError) before any checkpoint holds it, unless --skip-nonfinite.
    """
    cfg = s.cfg
    optimizer, scheduler = preference_optimizer(cfg, d.policy, s.device)
    scaler = grad_scaler(s.device, cfg.dtype)
    start_step, nonfinite_skipped = resume_checkpoint(s, d.policy, optimizer, scheduler, scaler)
    end_step = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    last_saved = start_step or None  # the step of the last checkpoint written (or resumed from)
    scorer = s.wrap(SequenceScorer(d.policy))
    train_ref = ref.logps["train"] if ref.logps is not None else None
    loss_fn = partial(preference_micro_batch, cfg, scorer, ref_scorer=ref.scorer, ref_logps=train_ref)
    order = BatchOrder(len(d.train_pairs), s.global_batch, cfg.seed)
    guard = NonfiniteGuard(s)
    history: list[dict] = []
    bar = phase(COMMAND, cfg.loss, cfg.steps, initial=start_step, enabled=s.show_progress)
    for step in range(start_step, end_step):
        record: dict = {"step": step}
        if step % cfg.eval_every == 0:
            if s.evaluates:
                record.update(evaluate(s, d, ref))
            s.barrier()
        lr = optimizer.param_groups[0]["lr"]  # the rate this update uses
        stats, grad_norm, skipped = update_step(
            s.micro_batches(d.train_pairs, order(step), d.collate),
            loss_fn,
            optimizer=optimizer,
            scheduler=scheduler,
            max_grad_norm=cfg.max_grad_norm,
            device=s.device,
            ddp=scorer if s.ddp else None,
            skip=partial(guard.skip, step=step),
            dtype=cfg.dtype,
            scaler=scaler,
        )
        nonfinite_skipped += skipped
        if logs_at(cfg, step):
            if not cfg.skip_nonfinite:
                guard.stop_if_seen(last_saved)
            record.update(logged_metrics(s, stats, grad_norm, lr, skipped, nonfinite_skipped))
        if "loss" in record:
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['rewards/accuracies']:.2f}")
        if len(record) > 1 and s.main:
            s.run_dir.append_metrics(record)
            history.append(record)
        bar.update(1)
        if saves_after(cfg, step + 1, end_step):
            guard.stop_if_seen(last_saved)  # a bad state is never saved
            save_checkpoint(s, d.policy, optimizer, scheduler, step + 1, nonfinite_skipped, scaler)
            last_saved = step + 1
    bar.close()
    return {"history": history, "end_step": end_step, "nonfinite_skipped": nonfinite_skipped}


def model_export(s: Session, policy: nn.Module):
    """What OUT/model holds: the policy (`save_pretrained`), or for LoRA its adapters (with the base they apply
    to where that is not --model as it is) or, with --merge-lora, the merged weights (`dpo_ref.train.lora`)."""
    write_base = s.cfg.model is None or bool(s.cfg.sft_steps)
    if s.cfg.fsdp:  # the shards gathered on the main process (every process calls this)
        return fsdp.FullExport(policy, write_base=write_base)
    if not lora.is_peft(policy):
        return policy
    return lora.LoraExport(policy, merge=s.cfg.merge_lora, write_base=write_base)


def finish(s: Session, d: Data, ref: Reference, loop: dict, sft_summary: dict) -> dict:
    """Phase 6: the final evaluation and OUT/model, when the run reached its last step; the summary."""
    cfg, run_dir = s.cfg, s.run_dir
    history = loop["history"]
    summary = {
        "out": cfg.out,
        "metrics": run_dir.metrics,
        "checkpoint": run_dir.checkpoint_dcp if cfg.fsdp else run_dir.checkpoint,
        "device": str(s.device),
        "world_size": s.world,
        "layout": cfg.layout,
        "attention": d.attention,
        "train_pairs": len(d.train_pairs),
        "eval_pairs": len(d.eval_pairs),
        "skipped_rows": d.skipped,
        "nonfinite_skipped": loop["nonfinite_skipped"],
        "sft": sft_summary,
        "stopped": loop["end_step"] < cfg.steps,
        "history": history,
    }
    if loop["end_step"] == cfg.steps:
        final = {"step": cfg.steps, **evaluate(s, d, ref)} if s.evaluates else {}
        export = model_export(s, d.policy) if s.main or cfg.fsdp else None
        if s.main:
            if len(final) > 1:
                run_dir.append_metrics(final)
                history.append(final)
            run_dir.save_model(export, d.tokenizer)
        summary["model_dir"] = run_dir.model
    s.barrier()
    summary["seconds"] = time.perf_counter() - s.started
    summary["policy"] = d.policy
    summary["config"] = cfg
    return summary


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
    s = set_up(cfg)
    d = load_data(s)
    claim_run_dir(s)
    try:
        sft_summary = warm_up(s, d)
        ref = make_reference(s, d)
        loop = preference_loop(s, d, ref)
        return finish(s, d, ref, loop, sft_summary)
    finally:
        s.run_dir.release()
