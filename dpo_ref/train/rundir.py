"""The run directory (`--out`): every file a training run reads or writes, its lock, and the resume check.

    OUT/run.json                the run's settings (with the data's SHA-256), written when the run starts
    OUT/metrics.jsonl           one JSON object per logged or evaluated step
    OUT/sft.safetensors         the policy after the SFT warm-up (the reference), reused by --resume
    OUT/checkpoint.safetensors  everything needed to continue exactly (`write_checkpoint`)
    OUT/checkpoint.dcp/         the same, sharded, with --fsdp (`dpo_ref.train.fsdp`)
    OUT/model/                  the final model and tokenizer (save_pretrained)
    OUT/.lock                   held (flock) by the process writing the run; names it (pid, host)

Life of a run: `check` (read only: the directory can be written, no other process holds it, a run
already there is refused unless resumed or overwritten, a resume has the same settings) before anything
is loaded; `claim` (the first write: take the lock, check again, remove stray temporary files, clear an
overwritten run, write run.json) once every input has been read and validated; `release` at the end.
The lock is the rule every writing command follows (`dpo_ref.atomic`): an `flock` on OUT/.lock, which the
kernel drops when its process dies, so a killed run never blocks the next one. Every file is written
atomically (temporary file + rename) with the permissions the umask gives. A failed write (e.g. a full
disk) is an InputError naming the file; the previous version of the file stays intact.

Checkpoints: one safetensors file holding model, optimizer, RNG and step. Tensors (model weights, AdamW
moments, RNG states) go in the safetensors body; everything else (step, scheduler state, optimizer
hyper-parameters, Python's RNG state, the run's config) goes as JSON in the file's metadata. The file is
written to a temporary name (`.tmp-*.safetensors`) in the same directory and moved into place with
`os.replace`, so a crash never leaves a half-written checkpoint: the previous one stays in place, and the
orphaned temporary file is removed by the next run's `claim` (`remove_stray_temp_files`). Only safetensors
is read or written: loading a checkpoint never unpickles anything.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import random
import re
import shutil
import signal

import torch

from dpo_ref.atomic import (
    OutputLocks,
    atomic_path,
    give_umask_permissions,
    holder,
    in_use,
    lock_path,
    write_text_atomic,
)
from dpo_ref.errors import InputError

RUN_FILES = ("run.json", "metrics.jsonl", "sft.safetensors", "checkpoint.safetensors", "checkpoint.dcp", "model")
TMP_PREFIX = ".tmp-"
# test hook: SIGKILL this process after the temporary file of the checkpoint of this step is written, before
# the rename (tests/train/test_faults.py uses it to crash exactly mid-write); never set outside tests
KILL_IN_CHECKPOINT_ENV = "DPO_REF_TEST_KILL_IN_CHECKPOINT"
CUDA_RNG_PREFIX = "rng/cuda/"  # + the device index: one generator state per GPU


# ---------------------------------------------------------------------------------------------- files


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


def kill_hook(step: int):
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


def write_checkpoint(
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
            tensors[f"{CUDA_RNG_PREFIX}{i}"] = state
    metadata = {
        "step": step,
        "aliases": aliases,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "python_random": random.getstate(),
        "config": config,
        **(extra or {}),
    }
    atomic_save_tensors({k: v.cpu() for k, v in tensors.items()}, path, metadata, _before_replace=kill_hook(step))


def cuda_rng_states(tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The saved per-GPU generator states in device order: rng/cuda/0, rng/cuda/1, ..., rng/cuda/10 (the
    index compared as a number: as strings "10" sorts before "2")."""
    indices = sorted(int(k[len(CUDA_RNG_PREFIX) :]) for k in tensors if k.startswith(CUDA_RNG_PREFIX))
    return [tensors[f"{CUDA_RNG_PREFIX}{i}"] for i in indices]


def read_checkpoint(path: str, *, model, optimizer, scheduler) -> dict:
    """Restore what `write_checkpoint` wrote (in place); returns the metadata (step, config)."""
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
    cuda_states = cuda_rng_states(tensors)
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    version, internal, gauss = meta["python_random"]
    random.setstate((version, tuple(internal), gauss))
    return meta


# ---------------------------------------------------------------------------------------------- the directory


def check_writable_dir(path: str, option: str = "--out") -> None:
    """InputError unless `path` is, or can be created as, a writable directory; creates nothing."""
    if not path:
        raise InputError(f"{option} is empty; expected a directory")
    target = os.path.abspath(path)
    if os.path.islink(target) and not os.path.exists(target):
        raise InputError(
            f"{option} {path!r} is a symbolic link to {os.readlink(target)!r}, which does not exist; expected a "
            "directory (create its target, or choose another path)"
        )
    if os.path.exists(target) and not os.path.isdir(target):
        raise InputError(f"{option} {path!r} exists and is not a directory")
    existing = target
    while not os.path.exists(existing):  # the nearest existing ancestor is where the directory gets created
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"{option} {path!r} cannot be created: {existing!r} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path!r} is not writable ({existing!r} denies writing)")


def _os_error_code(message: str) -> int | None:
    """The errno in a Rust I/O error's text ("... No space left on device (os error 28)"), or None."""
    found = re.search(r"\(os error (\d+)\)", message)
    return int(found.group(1)) if found else None


def _format(value) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


class RunDir:
    """The files of one run under `path`; see the module docstring."""

    def __init__(self, path: str):
        self.path = path
        self.run_json = os.path.join(path, "run.json")
        self.metrics = os.path.join(path, "metrics.jsonl")
        self.sft = os.path.join(path, "sft.safetensors")
        self.checkpoint = os.path.join(path, "checkpoint.safetensors")
        self.checkpoint_dcp = os.path.join(path, "checkpoint.dcp")  # --fsdp
        self.model = os.path.join(path, "model")
        self.lock = lock_path(path, directory=True)
        self._locks = OutputLocks({"--out": path}, directories=("--out",))

    # -- reading -----------------------------------------------------------------------------------

    def existing_run_files(self) -> list[str]:
        return [name for name in RUN_FILES if os.path.lexists(os.path.join(self.path, name))]

    def lock_holder(self) -> str | None:
        """'pid N on HOST' of the live process holding OUT's lock, or None (no lock, or a stale one)."""
        return holder(self.path, directory=True)

    def saved_config(self) -> dict | None:
        """The settings the run in this directory started with (run.json), or None."""
        if not os.path.exists(self.run_json):
            return None
        try:
            with open(self.run_json, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError) as err:
            raise InputError(f"--resume: {self.run_json!r} cannot be read: {err}") from err
        if not isinstance(saved, dict):
            raise InputError(f"--resume: {self.run_json!r} is not a JSON object")
        return saved

    def metrics_records(self) -> list[dict]:
        """The records of metrics.jsonl ([] without one); InputError naming file:line for a line that is not a
        JSON object with an integer "step". A line that is not JSON is dropped: a writer killed mid-line leaves
        one."""
        if not os.path.exists(self.metrics):
            return []
        with open(self.metrics, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # only a killed writer's last line can be partial
            step = record.get("step") if isinstance(record, dict) else None
            if isinstance(step, bool) or not isinstance(step, int):
                got = f"a JSON {type(record).__name__}" if not isinstance(record, dict) else "an object without one"
                raise InputError(
                    f'--resume: {self.metrics}:{number}: expected a JSON object with an integer "step", got {got}'
                )
            records.append(record)
        return records

    def check(self, run_config: dict, *, resume: bool, overwrite: bool, resume_keys) -> None:
        """Everything about --out that can be refused, read only: InputError naming the problem."""
        check_writable_dir(self.path, "--out")
        who = None if self._locks.held else self.lock_holder()  # our own lock is not another run
        if who is not None:
            raise in_use("--out", self.path, who)
        found = self.existing_run_files()
        if resume:
            saved = self.saved_config()
            if saved is None:
                what = (
                    f"has no run to resume ({', '.join(found)} without run.json)" if found else "has no run to resume"
                )
                raise InputError(f"--resume: {self.path!r} {what}; run without --resume")
            mismatched = [k for k in resume_keys if saved.get(k) != run_config.get(k)]
            if mismatched:
                diffs = ", ".join(
                    f"{k}={_format(saved.get(k))} (this run: {_format(run_config.get(k))})" for k in mismatched
                )
                raise InputError(
                    f"--resume: the run in {self.path!r} was started with other settings: {diffs}; "
                    "use the same settings or another --out"
                )
            self.metrics_records()  # a damaged log is refused now, not after the lock is taken
        elif found and not overwrite:
            raise InputError(
                f"--out {self.path!r} already holds a run ({', '.join(found)}): continue it with --resume, "
                "replace it with --overwrite, or choose another --out"
            )

    # -- writing -----------------------------------------------------------------------------------

    def claim(self, run_config: dict, *, resume: bool, overwrite: bool, resume_keys) -> None:
        """Take the lock, check again under it, clean up, and (fresh run) clear the old run and write run.json."""
        os.makedirs(self.path, exist_ok=True)
        self._acquire()
        try:
            self.check(run_config, resume=resume, overwrite=overwrite, resume_keys=resume_keys)
            remove_stray_temp_files(self.path)  # left by a writer killed mid-write; the files they replace are intact
            for final in (self.checkpoint_dcp, self.model):  # a writer killed between its two renames (final ->
                if not os.path.exists(final) and os.path.isdir(final + ".old"):  # .old, tmp -> final): the
                    os.replace(final + ".old", final)  # previous one, whole, is put back
            dcp_tmp = os.path.join(self.path, TMP_PREFIX + os.path.basename(self.checkpoint_dcp))
            for stray in (self.model + ".tmp", self.model + ".old", dcp_tmp, self.checkpoint_dcp + ".old"):
                shutil.rmtree(stray, ignore_errors=True)
            if not resume:
                for name in RUN_FILES:
                    self._remove(os.path.join(self.path, name))
                self.write_text(self.run_json, json.dumps(run_config, indent=1, sort_keys=True) + "\n")
        except BaseException:
            self.release()
            raise

    def _acquire(self) -> None:
        self._locks.acquire()

    def release(self) -> None:
        """Drop the lock (and its file); a no-op when not held."""
        self._locks.release()

    @staticmethod
    def _remove(path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)

    @contextlib.contextmanager
    def writing(self, path: str):
        """Turn a failed write (full disk, quota, permissions) into one InputError naming the file.

        safetensors (the checkpoint, the warm-up, save_pretrained's weights) reports an I/O error as a
        `SafetensorError` whose text ends in "(os error N)", not as an OSError: both are caught."""
        from safetensors import SafetensorError

        try:
            yield
        except (OSError, SafetensorError) as err:
            code = err.errno if isinstance(err, OSError) else _os_error_code(str(err))
            if code in (errno.ENOSPC, errno.EDQUOT):
                reason = "the disk is full"
            else:
                reason = os.strerror(code) if code else getattr(err, "strerror", None) or str(err)
            raise InputError(f"cannot write {path!r}: {reason}; its previous version (if any) is intact") from err

    def write_text(self, path: str, text: str) -> None:
        with self.writing(path):
            write_text_atomic(path, text)

    def append_metrics(self, record: dict) -> None:
        with self.writing(self.metrics), open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def keep_metrics_before(self, step: int) -> None:
        """On resume: drop records the interrupted run wrote after its checkpoint (rewritten atomically); a
        last line cut short by a kill is dropped too."""
        if not os.path.exists(self.metrics):
            return
        kept = [r for r in self.metrics_records() if r["step"] < step]
        self.write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def save_checkpoint(self, **kwargs) -> None:
        with self.writing(self.checkpoint):
            write_checkpoint(self.checkpoint, **kwargs)

    def load_checkpoint(self, **kwargs) -> dict:
        return read_checkpoint(self.checkpoint, **kwargs)

    def has_checkpoint(self) -> bool:
        """Whether a checkpoint is there (one or the other: --fsdp is a resume key, so a run has one kind)."""
        return os.path.exists(self.checkpoint) or os.path.exists(self.checkpoint_dcp)

    def save_sft(self, model, sft_key: dict) -> None:
        tensors, aliases = model_tensors(model)
        with self.writing(self.sft):
            atomic_save_tensors(
                {k: v.cpu() for k, v in tensors.items()}, self.sft, {"sft": sft_key, "aliases": aliases}
            )

    def load_sft(self, model, sft_key: dict, device) -> bool:
        """Load the saved warm-up into `model` if it was made with `sft_key`; whether it was."""
        if not os.path.exists(self.sft) or read_metadata(self.sft).get("sft") != sft_key:
            return False
        tensors, meta = load_tensors(self.sft)
        load_model_tensors(model, {k: v.to(device) for k, v in tensors.items()}, meta["aliases"])
        return True

    def save_model(self, model, tokenizer) -> None:
        """`save_pretrained` into OUT/model.tmp, then swap it in place of OUT/model."""
        from transformers.utils import logging as hf_logging

        tmp, old = self.model + ".tmp", self.model + ".old"
        with self.writing(self.model):
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
            give_umask_permissions(tmp)  # safetensors writes model.safetensors 0600
            if os.path.exists(self.model):
                os.replace(self.model, old)
            os.replace(tmp, self.model)
            shutil.rmtree(old, ignore_errors=True)
