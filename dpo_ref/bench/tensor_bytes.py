"""Bytes held by tensors, counted from the tensors themselves: the parameters, gradients and optimizer state of a
model, and (`LiveTensors`) the peak of the tensors a region of code allocates, on any device (CPU included, where
torch keeps no allocator statistics).

`LiveTensors` is a `TorchDispatchMode`: every tensor an operator returns inside it is recorded by its storage
(views share one), with a finalizer that subtracts its bytes when the storage is freed; `peak` is the largest
sum reached, and `at_peak` the allocations alive at that moment (so the caller can say which of them were
gradients). What it cannot see: tensors allocated outside the region (the weights, an optimizer state from an
earlier step: counted directly), and the allocator's own slack (the process RSS includes it).
"""

from __future__ import annotations

import itertools
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

PLAIN = (torch.Tensor, torch.nn.Parameter)


def storage_key(t: torch.Tensor) -> tuple[str, int]:
    st = t.untyped_storage()
    return str(st.device), st.data_ptr()


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2), else `t`: what this process holds."""
    return t.to_local() if hasattr(t, "to_local") else t


def unique_bytes(tensors, exclude: set | None = None) -> int:
    """Bytes of the distinct storages behind `tensors` (a storage shared by several counts once), leaving out the
    storages whose keys are in `exclude`."""
    seen = set(exclude or ())
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = local(t)
        key = storage_key(t)
        if key in seen or t.untyped_storage().nbytes() == 0:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def parameter_keys(module: torch.nn.Module) -> set:
    return {storage_key(local(p)) for p in module.parameters()}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Every tensor of the optimizer's state (AdamW: exp_avg, exp_avg_sq and the step counter of each parameter)."""
    return unique_bytes(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


def gradient_bytes(optimizer: torch.optim.Optimizer) -> int:
    return unique_bytes(p.grad for group in optimizer.param_groups for p in group["params"])


class LiveTensors(TorchDispatchMode):
    """Peak bytes of the tensors allocated inside the `with` block (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._ids = itertools.count()
        self._alive: dict[tuple[str, int], tuple[int, int]] = {}  # storage key -> (allocation id, bytes)
        self.at_peak: dict[int, int] = {}  # allocation id -> bytes, at the peak

    def _free(self, key, alloc_id: int, nbytes: int) -> None:
        if self._alive.get(key, (None,))[0] == alloc_id:
            del self._alive[key]
            self.live -= nbytes

    def allocation_id(self, t: torch.Tensor) -> int | None:
        """The id of the allocation behind `t` if it was made inside the block and is alive, else None."""
        entry = self._alive.get(storage_key(local(t)))  # a DTensor gradient (FSDP2): its local shard
        return entry[0] if entry else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # an output on an input's storage (a view, an in-place op) allocated nothing
        inputs = {storage_key(t) for t in tree_flatten((args, kwargs))[0] if type(t) in PLAIN}
        for t in tree_flatten(out)[0]:
            if type(t) not in PLAIN:
                continue  # a tensor subclass (DTensor) holds its bytes in a plain tensor counted where allocated
            st = t.untyped_storage()
            nbytes = st.nbytes()
            key = (str(st.device), st.data_ptr())
            if nbytes == 0 or key in self._alive or key in inputs:
                continue
            alloc_id = next(self._ids)
            self._alive[key] = (alloc_id, nbytes)
            self.live += nbytes
            weakref.finalize(st, self._free, key, alloc_id, nbytes)
            if self.live > self.peak:
                self.peak = self.live
                self.at_peak = dict(self._alive.values())
        return out
