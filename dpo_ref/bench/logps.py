"""Benchmark: `sequence_logps` against the naive `log_softmax(-1).gather(...)`, side by side.

Extra peak memory is what a call adds on top of the logits (and labels) already held:
- CPU: each variant runs in a fresh subprocess that allocates the logits, resets the peak RSS
  (`/proc/self/clear_refs`), runs the call and reads VmHWM; extra = VmHWM - RSS before the call.
  The subprocess pins glibc's mmap threshold (MALLOC_MMAP_THRESHOLD_=1 MiB) for both variants: with
  glibc's default dynamic threshold, freed ~30 MiB temporaries stay in the heap and RSS overstates
  what torch holds (seen here: 1.67x instead of 1.09x the logits for forward+backward).
- CUDA: `torch.cuda.max_memory_allocated` around the call.
Time is the median of interleaved runs (naive, ours, naive, ours, ...) in one process, so drift cancels.
Run it as `python benchmarks/logps_memory.py` (see `--help`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import torch

from dpo_ref.logps import IGNORE_INDEX, sequence_logps


def naive_sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The textbook version: a full (B, T-1, V) log_softmax copy, then gather."""
    shifted = labels[:, 1:]
    mask = shifted != ignore_index
    logps = logits[:, :-1].log_softmax(-1)  # (B, T-1, V): the second full-size tensor
    token = logps.gather(-1, torch.where(mask, shifted, 0).unsqueeze(-1)).squeeze(-1)
    return (token * mask).sum(-1)


VARIANTS = {"naive": naive_sequence_logps, "sequence_logps": sequence_logps}


def _inputs(B: int, T: int, V: int, device: str, backward: bool):
    gen = torch.Generator(device="cpu").manual_seed(0)
    logits = torch.randn(B, T, V, generator=gen).to(device)  # (B, T, V) float32
    labels = torch.randint(0, V, (B, T), generator=gen).to(device)
    labels[:, : T // 4] = IGNORE_INDEX  # a prompt
    return logits.requires_grad_(backward), labels


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(variant: str, B: int, T: int, V: int, backward: bool) -> None:
    """Run one variant once in this (fresh) process and print its extra peak memory in bytes."""
    torch.set_num_threads(1)
    logits, labels = _inputs(B, T, V, "cpu", backward)
    VARIANTS[variant](logits[:1, :8], labels[:1, :8])  # warm up code paths on a tiny slice
    before = _rss_bytes()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS
    out = VARIANTS[variant](logits, labels)
    if backward:
        out.sum().backward()
    print(json.dumps({"extra": _hwm_bytes() - before}))


def extra_peak_bytes(variant: str, B: int, T: int, V: int, device: str, backward: bool) -> int:
    if device.startswith("cuda"):
        logits, labels = _inputs(B, T, V, device, backward)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = VARIANTS[variant](logits, labels)
        if backward:
            out.sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    code = f"from dpo_ref.bench.logps import _child; _child({variant!r}, {B}, {T}, {V}, {backward})"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])["extra"]


def median_times(B: int, T: int, V: int, device: str, repeats: int) -> dict[str, float]:
    logits, labels = _inputs(B, T, V, device, False)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, fn in VARIANTS.items():  # interleaved: naive, ours, naive, ours, ...
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(logits, labels)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def run(B: int = 8, T: int = 512, V: int = 32000, device: str = "cpu", repeats: int = 5) -> dict:
    """Measure both variants; ratios are sequence_logps / naive and extra memory / logits size."""
    logits_bytes = B * T * V * 4
    result: dict = {"B": B, "T": T, "V": V, "device": device, "logits_mb": logits_bytes / 2**20}
    for mode, backward in (("forward", False), ("forward_backward", True)):
        naive = extra_peak_bytes("naive", B, T, V, device, backward)
        ours = extra_peak_bytes("sequence_logps", B, T, V, device, backward)
        result[mode] = {
            "naive_extra_mb": naive / 2**20,
            "sequence_logps_extra_mb": ours / 2**20,
            "naive_extra_over_logits": naive / logits_bytes,
            "sequence_logps_extra_over_logits": ours / logits_bytes,
        }
    times = median_times(B, T, V, device, repeats)
    result["naive_s"], result["sequence_logps_s"] = times["naive"], times["sequence_logps"]
    result["time_ratio"] = times["sequence_logps"] / times["naive"]
    result["extra_memory_ratio"] = result["forward"]["sequence_logps_extra_over_logits"]
    return result


def format_table(r: dict) -> str:
    lines = [
        f"sequence_logps vs naive log_softmax+gather  B={r['B']} T={r['T']} V={r['V']} float32 on {r['device']}",
        f"logits tensor: {r['logits_mb']:.0f} MiB",
        f"{'':18}{'naive extra':>14}{'ours extra':>14}{'ours/logits':>13}{'naive/logits':>14}",
    ]
    for mode in ("forward", "forward_backward"):
        m = r[mode]
        lines.append(
            f"{mode:18}{m['naive_extra_mb']:>10.0f} MiB{m['sequence_logps_extra_mb']:>10.0f} MiB"
            f"{m['sequence_logps_extra_over_logits']:>13.3f}{m['naive_extra_over_logits']:>14.3f}"
        )
    lines.append(
        f"median time (forward): naive {r['naive_s'] * 1e3:.1f} ms,"
        f" sequence_logps {r['sequence_logps_s'] * 1e3:.1f} ms, ratio {r['time_ratio']:.2f}"
    )
    lines.append(f"extra peak memory / logits (forward): {r['extra_memory_ratio']:.3f}  (target <= 0.25)")
    lines.append("forward_backward includes the (B, T, V) gradient itself (1.0x), which neither can avoid")
    return "\n".join(lines)
