"""`--fsdp`: FSDP2 sharding of the policy (and of its reference) over the torchrun processes.

`shard` applies `torch.distributed.fsdp.fully_shard` to each decoder layer (the classes a transformers model
names in `_no_split_modules`), then to the root: each process then holds 1/N of every weight, of its gradient
and of both AdamW moments; a layer's weights are all-gathered just before its forward (and again before its
backward) and freed after, and the gradients are reduce-scattered (averaged over the processes, as DDP's
all-reduce averages them). The model's own `forward` must run for the root's hooks to fire, so under FSDP the
output layer runs at every position (`SequenceScorer` then takes the full-logits path). Every forward is a
collective, so every process evaluates and generates, the main one alone writing.

A separate reference (full fine-tuning) is the policy's class built on the meta device and sharded the same way,
then filled from the policy's shards (`fill`, again after the warm-up: each process copies its own shards), so
no process holds a whole copy; a LoRA reference is the policy with its adapters off, as without FSDP.

    OUT/checkpoint.dcp/             `torch.distributed.checkpoint` (DCP) directory: each process writes its shards
      .metadata, __R_0.distcp       DCP's own files: the model's and AdamW's sharded tensors, the torch RNG state
      run_state.json                step, LR schedule, Python's RNG state, the run's config, counters (JSON)
    OUT/model/                      consolidated (every shard gathered on the main process): save_pretrained

The checkpoint is written to OUT/.tmp-checkpoint.dcp/ and swapped into place by the main process once every
process has written (checkpoint.dcp -> checkpoint.dcp.old, then the new one in), so a crash mid-write keeps the
previous one: between the two renames, the next claim of OUT puts checkpoint.dcp.old back (`RunDir.claim`).
DCP's `.metadata` is a pickle: `--resume` unpickles it, so resume only checkpoints you wrote yourself. DCP
reshards on load: another number of processes may resume a run, at the same global batch (a resume key); the
suite tests resuming on the same number only.
"""

from __future__ import annotations

import json
import os
import random
import shutil

import torch
import torch.nn as nn

from dpo_ref.atomic import write_text_atomic
from dpo_ref.errors import InputError
from dpo_ref.train import lora
from dpo_ref.train.rundir import TMP_PREFIX, atomic_save_tensors, kill_hook, load_tensors, read_metadata

STATE_FILE = "run_state.json"  # the checkpoint's non-tensor state, as JSON (nothing of ours is pickled)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers: the modules of the classes it lists in `_no_split_modules` (transformers' own
    list of the blocks that must stay whole: LlamaDecoderLayer, GPT2Block, ...); InputError without any."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise InputError(
            f"--fsdp: {type(model).__name__} names no decoder layer class (transformers' _no_split_modules); "
            "run without --fsdp"
        )
    return layers


def shard(model: nn.Module, device: torch.device, frozen: bool = False) -> nn.Module:
    """`model` (a transformers model, or a peft model around one) sharded in place over every process: each
    decoder layer its own FSDP unit, then the root (the embeddings, final norm and output layer). `frozen` (the
    reference, which never runs a backward): the root too is resharded after its forward; by default FSDP2 keeps
    the root gathered from the forward to the backward, which for a reference would be for good."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    root = lora.inner_model(model)  # a LoRA policy: the HF model inside the peft wrapper is the root
    for layer in decoder_layers(root):
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh, reshard_after_forward=True) if frozen else fully_shard(root, mesh=mesh)
    return model


def empty_reference(policy: nn.Module) -> nn.Module:
    """A model of the (not yet sharded) policy's class and config on the meta device: no memory, no values. Shard
    it, then `fill` it, for a reference of which no process ever holds a whole weight."""
    with torch.device("meta"):
        return type(policy)(policy.config).eval().requires_grad_(False)


def fill(reference: nn.Module, policy: nn.Module, device: torch.device) -> nn.Module:
    """The sharded meta `reference` given storage on `device` and the sharded policy's values (`copy_shards`)."""
    reference.to_empty(device=device)
    copy_shards(reference, policy)
    return reference


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor (a DTensor), else `t` itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole of a DTensor (a collective: every process calls it), else `t` itself; e.g. the gradient norm
    `clip_grad_norm_` returns for sharded gradients."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def copy_shards(dst: nn.Module, src: nn.Module) -> None:
    """Every parameter and buffer of `src` into `dst`, sharded the same way: each process copies its own shards."""
    for a, b in zip(dst.parameters(), src.parameters(), strict=True):
        local(a).copy_(local(b))
    for a, b in zip(dst.buffers(), src.buffers(), strict=True):
        local(a).copy_(local(b))


def all_finite(model: nn.Module) -> bool:
    """Whether every weight of every process is finite (a collective: every process gets the same answer)."""
    import torch.distributed as dist

    bad = torch.zeros((), device=next(model.parameters()).device)
    for p in model.parameters():
        bad = torch.maximum(bad, (~torch.isfinite(local(p))).any().float())
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad)


def tied_names(model: nn.Module) -> dict[str, str]:
    """{alias: original}: the state-dict names of the HF model that share one parameter (tied embeddings)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in lora.inner_model(model).named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the HF model (inside a peft wrapper, if any), every shard gathered, on the CPU of the
    main process ({} on the others); tied names share one tensor, as in `state_dict()`, so save_pretrained writes
    it once (tests/train/test_fsdp.py checks it). A collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(lora.inner_model(model), options=options)


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """`state` (the whole state dict, on every process) into the sharded model: each process keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(lora.inner_model(model), state, options=StateDictOptions(full_state_dict=True))


# ---------------------------------------------------------------------------------------------- the warm-up


def save_sft(run_dir, model: nn.Module, sft_key: dict, *, main: bool) -> None:
    """OUT/sft.safetensors from the sharded model (gathered; written by the main process)."""
    state, aliases = full_state_dict(model), tied_names(model)
    if main:  # tied entries stored once, as `RunDir.save_sft` stores them (safetensors refuses shared tensors)
        tensors = {k: v for k, v in state.items() if k not in aliases}
        with run_dir.writing(run_dir.sft):
            atomic_save_tensors(tensors, run_dir.sft, {"sft": sft_key, "aliases": aliases})


def load_sft(run_dir, model: nn.Module, sft_key: dict) -> bool:
    """The saved warm-up into the sharded model if it was made with `sft_key` (every process reads the file)."""
    if not os.path.exists(run_dir.sft) or read_metadata(run_dir.sft).get("sft") != sft_key:
        return False
    tensors, meta = load_tensors(run_dir.sft)
    for alias, original in meta.get("aliases", {}).items():  # tied entries are stored once
        tensors[alias] = tensors[original]
    load_full_state_dict(model, tensors)
    return True


# ---------------------------------------------------------------------------------------------- the checkpoint


def _state(model: nn.Module, optimizer) -> dict:
    """What DCP saves and loads: the sharded model and AdamW state (by parameter name), the torch RNG state."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(lora.inner_model(model), optimizer)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return {"model": model_state, "optim": optim_state, "rng": rng}


def save_checkpoint(run_dir, *, model, optimizer, scheduler, step: int, config: dict, extra: dict, main: bool) -> None:
    """OUT/checkpoint.dcp after `step` updates: every process writes its shards into a temporary directory, then
    the main process adds run_state.json and swaps it into place (see the module docstring)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    final = run_dir.checkpoint_dcp
    tmp, old = os.path.join(run_dir.path, TMP_PREFIX + os.path.basename(final)), final + ".old"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    with run_dir.writing(final):
        dcp.save(_state(model, optimizer), checkpoint_id=tmp)
    dist.barrier()  # every shard written
    if main:
        meta = {
            "step": step,
            "scheduler": scheduler.state_dict(),
            "python_random": random.getstate(),
            "config": config,
            **extra,
        }
        with run_dir.writing(final):
            write_text_atomic(os.path.join(tmp, STATE_FILE), json.dumps(meta))
            kill = kill_hook(step)  # tests: crash between the write and the swap
            if kill is not None:
                kill(tmp)
            shutil.rmtree(old, ignore_errors=True)
            if os.path.exists(final):
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_checkpoint(run_dir, *, model, optimizer, scheduler) -> dict:
    """Restore what `save_checkpoint` wrote, in place (each process reads its shards); returns run_state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = run_dir.checkpoint_dcp
    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
            meta = json.load(f)
        state = _state(model, optimizer)
        dcp.load(state, checkpoint_id=path)
    # DCP reports a damaged shard as a CheckpointException, a BaseException
    except (OSError, ValueError, RuntimeError, CheckpointException) as err:
        # a CheckpointException holds each failed process's (exception, traceback): the first one's is the news
        cause = next(iter(err.failures.values()))[0] if isinstance(err, CheckpointException) else err
        first = next((line for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
        raise InputError(f"checkpoint {path!r} cannot be read: {first}") from err
    set_state_dict(lora.inner_model(model), optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    version, internal, gauss = meta["python_random"]
    random.setstate((version, tuple(internal), gauss))
    return meta


# ---------------------------------------------------------------------------------------------- OUT/model


class FullExport:
    """OUT/model of an FSDP run: the weights gathered on the main process when made (a collective), written by
    `save_pretrained(directory)` as without FSDP: the model, or for LoRA its adapters (and, where needed, the
    base they apply to, `lora.BASE_DIR`)."""

    def __init__(self, model: nn.Module, *, write_base: bool = False):
        self.model, self.write_base = model, write_base
        self.state = full_state_dict(model)

    def save_pretrained(self, directory: str) -> None:
        inner = lora.inner_model(self.model)
        if not lora.is_peft(self.model):
            inner.save_pretrained(directory, state_dict=self.state)
            return
        prefix = "base_model.model."  # the peft model's names of the HF model's entries
        with lora.peft_without_old_torchao(), lora.quiet_peft():
            self.model.save_pretrained(directory, state_dict={prefix + k: v for k, v in self.state.items()})
        if self.write_base:
            base = {k.replace(".base_layer.", "."): v for k, v in self.state.items() if ".lora_" not in k}
            inner.save_pretrained(os.path.join(directory, lora.BASE_DIR), state_dict=base)
