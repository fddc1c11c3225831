"""Training checkpoints: one safetensors file holding model, optimizer, RNG and step, written atomically.

Tensors (model weights, AdamW moments, RNG states) go in the safetensors body; everything else (step,
scheduler state, optimizer hyper-parameters, Python's RNG state, the run's config) goes as JSON in the
file's metadata. The file is written to a temporary name in the same directory and moved into place
with `os.replace`, so a crash never leaves a half-written checkpoint: the previous one stays in place,
and the orphaned temporary file (`.tmp-*.safetensors`) is removed by the next run (`remove_stray_temp_files`).

Only safetensors is read or written here: loading a checkpoint never unpickles anything.
"""

from __future__ import annotations

import glob
import json
import os
import random
import signal

import torch

from dpo_ref.atomic import atomic_path
from dpo_ref.errors import InputError

TMP_PREFIX = ".tmp-"
# test hook: SIGKILL this process after the temporary file of the checkpoint of this step is written, before
# the rename (tests/test_faults.py uses it to crash exactly mid-write); never set outside tests
KILL_IN_CHECKPOINT_ENV = "DPO_REF_TEST_KILL_IN_CHECKPOINT"


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor], path: str, metadata: dict | None = None, *, _before_replace=None
) -> None:
    """`save_file` to a temporary file next to `path`, then `os.replace` it into place."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path, suffix=".safetensors", prefix=TMP_PREFIX) as tmp:
        save_file(tensors, tmp, metadata={"json": json.dumps(metadata or {})})
        if _before_replace is not None:
            _before_replace(tmp)


def remove_stray_temp_files(directory: str) -> list[str]:
    """Delete the temporary files a killed writer left in `directory`; returns their paths."""
    stray = glob.glob(os.path.join(glob.escape(directory), TMP_PREFIX + "*.safetensors"))
    for path in stray:
        os.remove(path)
    return stray


def _kill_hook(step: int):
    if os.environ.get(KILL_IN_CHECKPOINT_ENV) != str(step):
        return None
    return lambda tmp: os.kill(os.getpid(), signal.SIGKILL)


def load_tensors(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a file written by `atomic_save_tensors`."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            metadata = json.loads((f.metadata() or {}).get("json", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise InputError(f"checkpoint {path!r} cannot be read: {err}") from err
    return tensors, metadata


def read_metadata(path: str) -> dict:
    """The JSON metadata of a file written by `atomic_save_tensors`, without reading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return json.loads((f.metadata() or {}).get("json", "{}"))
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise InputError(f"checkpoint {path!r} cannot be read: {err}") from err


def model_tensors(model: torch.nn.Module, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, aliases): the state dict with tied (storage-sharing) entries stored once."""
    tensors, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases[prefix + name] = seen[key]
            continue
        seen[key] = prefix + name
        tensors[prefix + name] = t.detach().contiguous()
    return tensors, aliases


def load_model_tensors(model: torch.nn.Module, tensors: dict, aliases: dict, prefix: str = "") -> None:
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    for alias, original in aliases.items():
        if alias.startswith(prefix):
            state[alias[len(prefix) :]] = tensors[original]
    model.load_state_dict(state)


def save_checkpoint(
    path: str, *, model, optimizer, scheduler, step: int, config: dict, extra: dict | None = None
) -> None:
    """Everything needed to continue exactly: weights, AdamW state, LR schedule, RNG states, step (and
    `extra`, JSON counters such as the number of skipped non-finite steps)."""
    tensors, aliases = model_tensors(model, "model/")
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for name, value in state.items():
            value = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim/{index}/{name}"] = value.detach().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    metadata = {
        "step": step,
        "aliases": aliases,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "python_random": random.getstate(),
        "config": config,
        **(extra or {}),
    }
    atomic_save_tensors({k: v.cpu() for k, v in tensors.items()}, path, metadata, _before_replace=_kill_hook(step))


def load_checkpoint(path: str, *, model, optimizer, scheduler) -> dict:
    """Restore what `save_checkpoint` wrote (in place); returns the metadata (step, config)."""
    tensors, meta = load_tensors(path)
    load_model_tensors(model, tensors, meta["aliases"], "model/")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    version, internal, gauss = meta["python_random"]
    random.setstate((version, tuple(internal), gauss))
    return meta
