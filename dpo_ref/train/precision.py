"""`--dtype`: the mixed-precision policy of `dpo-ref train`.

    float32   no autocast: every op in float32
    bfloat16  autocast to bfloat16 (CPU and CUDA): matrix products in bf16, the weights, gradients, AdamW moments
              and clipping stay float32 ("master weights"); no loss scaling (bf16 has float32's exponent range)
    float16   autocast to float16, CUDA only, with a dynamic loss scale (`torch.amp.GradScaler`): float16's
              exponent range is too narrow for small gradients, which the scale lifts before backward and
              divides out before clipping; an update whose scaled gradient overflowed is skipped by the scaler

Whatever the dtype, the sequence log-probs are accumulated and summed in float32 (`dpo_ref.logps` gives float32
for half-precision logits) and the losses are computed on those float32 sums: autocast changes how the logits are
computed, not how they are turned into log-probs. The default (`None`) is bfloat16 on a GPU that supports it,
float32 otherwise: what dpo-ref did before --dtype existed.
"""

from __future__ import annotations

from dpo_ref.errors import InputError

DTYPES = ("float32", "bfloat16", "float16")  # torch is imported when a run starts, not for `dpo-ref --help`


def torch_dtype(name: str):
    """The torch dtype of a --dtype name."""
    import torch

    return getattr(torch, name)


def device_type(device_name: str) -> str:
    """'cpu' or 'cuda': where --device (auto, cpu, cuda, cuda:N; already checked) puts the run."""
    import torch

    if device_name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device_name).type


def check_dtype(dtype: str | None, device_name: str) -> str:
    """The --dtype the run uses on --device (the default filled in); InputError for one the device cannot run."""
    import torch

    kind = device_type(device_name)
    if dtype is None:
        return "bfloat16" if kind == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "float16" and kind == "cpu":
        raise InputError(
            "--dtype float16 on CPU: float16 autocast needs CUDA (and its loss scaler); use --dtype bfloat16 or float32"
        )
    if dtype == "bfloat16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("--dtype bfloat16: this GPU does not support bfloat16; use --dtype float16 or float32")
    return dtype


def autocast(device, dtype: str | None = None):
    """The autocast context of the policy for `dtype` on `device` (None: the default, see `check_dtype`)."""
    import torch

    dtype = dtype or ("bfloat16" if device.type == "cuda" else "float32")
    return torch.autocast(device_type=device.type, dtype=torch_dtype(dtype), enabled=dtype != "float32")


def grad_scaler(device, dtype: str | None):
    """The dynamic loss scale for float16 (None for float32 and bfloat16, which need none)."""
    if dtype != "float16":
        return None
    import torch

    return torch.amp.GradScaler(device.type)
