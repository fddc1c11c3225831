"""`dpo-ref bench`: dpo-ref's trainer against TRL's `DPOTrainer`, side by side, plus log-prob and verify timings.

What is measured (see docs/performance.md):

    train step   one DPO update (collate, policy forward+backward on the concatenated chosen+rejected
                 batch, reference log-probs, sigmoid loss, gradient clipping, AdamW) on the same model,
                 weights, tokens, batch, dtype, optimizer and thread count on both sides, in two
                 reference settings: a frozen reference model in the loop, and precomputed reference
                 log-probs (the reference model freed before training on both sides).
    log-probs    `sequence_logps` vs naive log_softmax + gather (`dpo_ref.bench.logps.run`).
    verify       wall time of `dpo-ref verify ... --level loss` on a correct implementation.

Fairness: each side runs in its own fresh subprocess (so CPU peak RSS is per side); the two live
processes take turns step by step, A B A B ... (who goes first alternates between repeats), so machine
drift hits both alike; warm-up steps are excluded; the reference model has different weights from the
policy so that the first-step loss is not trivially ln 2, and the bench fails loudly unless both sides'
first-step losses agree (relative 1e-5 in float32), their initial weights are identical and each
sequence has the same number of tokens on both sides.

Step time runs from the parent's GO to the end of the optimizer step (after a device sync), so it
includes each side's collation / data loader. CPU memory: peak RSS (VmHWM) of the worker process, and
the same minus the RSS after the imports ("train MB": weights, optimizer, activations, reference).
CUDA: `torch.cuda.max_memory_allocated` over the timed steps, bf16 autocast on both sides.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

from dpo_ref.atomic import STDOUT
from dpo_ref.bench.shared import PEAK_TFLOPS, bench_rows, bench_tokenizer  # noqa: F401  (re-exported)
from dpo_ref.bench.shared import package_root as _package_root
from dpo_ref.bench.shared import worker_env as _worker_env
from dpo_ref.bench.sizes import MIN_VOCAB, PRESETS, BenchSize, bench_model  # noqa: F401  (bench.PRESETS etc.)
from dpo_ref.errors import InputError

LOSS_RTOL = 1e-5  # first-step loss agreement required between the two sides (float32)
# under bf16 autocast (CUDA) the two LM heads round differently (TRL accumulates its tiles in fp32, dpo-ref
# scores bf16 logits in fp32): a looser bound, not yet checked on a GPU
LOSS_RTOL_BF16 = 5e-2
REF_SETTINGS = ("ref_model", "precomputed_ref")
SIDES = ("dpo_ref", "trl")


class BenchError(RuntimeError):
    """A worker failed, or the two sides did not compute the same thing (the correctness guard)."""


# ---------------------------------------------------------------------------------------------- shared inputs


def param_count(size: BenchSize) -> int:
    """Parameters of `bench_model(size)` (untied embedding and head, RMSNorm weights)."""
    head_dim = size.hidden // size.heads
    attn = 2 * size.hidden * size.hidden + 2 * size.hidden * size.kv_heads * head_dim
    mlp = 3 * size.hidden * size.intermediate
    return 2 * size.vocab * size.hidden + size.layers * (attn + mlp + 2 * size.hidden) + size.hidden


def train_flops_per_step(size: BenchSize, ref_in_loop: bool) -> float:
    """Model FLOPs of one step: 6 N per trained token (+ 2 N per reference token) + attention scores."""
    tokens = 2 * size.batch * size.seq_len
    n = param_count(size)
    attention = 2 * 2 * size.layers * size.seq_len * size.hidden  # QK^T and AV per token, forward
    per_token_fwd = 2 * n + attention
    return tokens * (3 * per_token_fwd + (per_token_fwd if ref_in_loop else 0))


# ---------------------------------------------------------------------------------------------- worker helpers


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_probe(device) -> dict:
    """Peak memory of this process so far: VmHWM on CPU, max allocated on CUDA (MiB)."""
    import torch

    if device.type == "cuda":
        return {"peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"peak_mb": _rss_mb("VmHWM")}


def param_checksum(model) -> float:
    """Sum of |w| over all parameters (float64): equal on both sides iff they start from the same weights."""
    import torch

    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def _import_common() -> float:
    """Import what both sides use (torch, transformers' Llama, tokenizers); returns the RSS after it (MiB)."""
    import tokenizers  # noqa: F401
    import torch  # noqa: F401
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: F401

    return _rss_mb("VmRSS")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _worker_setup(spec: dict):
    import torch

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    return device, BenchSize(**spec["size"])


class StepGate:
    """Lock-step with the parent: a gated worker announces READY after its set-up, then runs each step only
    after reading GO on stdin and reports STEP <seconds> after it, so the two sides' steps alternate
    A B A B ... while each keeps its own process (and peak RSS). Ungated (in-process use): no-ops."""

    def __init__(self, gated: bool):
        self.gated = gated

    def ready(self) -> None:
        if self.gated:
            print("BENCH_READY", flush=True)

    def wait(self) -> None:
        if self.gated and sys.stdin.readline().strip() != "GO":
            raise SystemExit("bench worker: the parent went away")

    def done(self, seconds: float) -> None:
        if self.gated:
            print(f"BENCH_STEP {seconds!r}", flush=True)


def dpo_ref_worker(spec: dict) -> dict:
    """dpo-ref's side: the trainer's scorer, collator, loss and reference handling, timed per step."""
    import gc

    import torch

    from dpo_ref.train.data import PreferenceCollator, prepare_dataset
    from dpo_ref.train.loop import SequenceScorer, TrainConfig, check_config, pair_logps, to_device

    base_rss = _import_common()
    device, size = _worker_setup(spec)
    tokenizer = bench_tokenizer(size.vocab)
    pairs, _ = prepare_dataset(bench_rows(size, spec["seed"]), tokenizer, max_length=None, max_prompt_length=None)
    collate = PreferenceCollator(tokenizer.pad_token_id)
    policy = bench_model(size, spec["seed"]).to(device)
    checksum = param_checksum(policy)
    reference = bench_model(size, spec["seed"] + 1).to(device).eval().requires_grad_(False)
    cfg = check_config(TrainConfig(loss="dpo", beta=spec["beta"], rpo_alpha=0.0, lr=spec["lr"], batch_size=size.batch))
    policy.train()
    ref_logps = None
    ref_scorer = SequenceScorer(reference)
    if spec["ref"] == "precomputed_ref":
        ref_logps = pair_logps(ref_scorer, pairs, collate, device, size.batch)
        del ref_scorer, reference
        gc.collect()
    step_fn = preference_step_fn(cfg, policy, ref_logps, None if ref_logps is not None else ref_scorer, device)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gate = StepGate(spec.get("gated", False))
    gate.ready()
    times, losses, tokens = [], [], None
    for _ in range(spec["warmup"] + spec["steps"]):
        gate.wait()
        started = time.perf_counter()
        batch = to_device(collate(pairs), device)
        losses.append(step_fn(batch))
        _sync(device)
        times.append(time.perf_counter() - started)
        gate.done(times[-1])
        if tokens is None:
            tokens = batch["attention_mask"].sum(-1).tolist()
    return {
        "step_s": times[spec["warmup"] :],
        "first_loss": float(losses[0]),
        "tokens_per_sequence": tokens,
        "param_checksum": checksum,
        "base_rss_mb": base_rss,
        **memory_probe(device),
    }


def preference_step_fn(cfg, policy, ref_logps, ref_scorer, device):
    """One update of `dpo_ref.train.loop`'s preference loop (one micro-batch): the trainer's own `update_step`
    with `preference_micro_batch`, `adamw` and a constant schedule. Returns step(batch) -> the mean
    preference loss (a tensor, no host sync)."""
    from functools import partial

    import torch

    from dpo_ref.train.loop import SequenceScorer, adamw, preference_micro_batch, update_step

    scorer = SequenceScorer(policy)
    optimizer = adamw(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)  # constant, as on TRL's side
    loss_fn = partial(preference_micro_batch, cfg, scorer, ref_scorer=ref_scorer, ref_logps=ref_logps)

    def step(batch: dict) -> torch.Tensor:
        stats, _, _ = update_step(
            [batch], loss_fn, optimizer=optimizer, scheduler=scheduler, max_grad_norm=cfg.max_grad_norm, device=device
        )
        return stats["loss"] / batch["index"].shape[0]

    return step


WORKERS = {"dpo_ref": "dpo_ref.bench.run:dpo_ref_worker", "trl": "dpo_ref.bench.trl_worker:trl_worker"}


def run_worker(spec_json: str) -> None:
    """Subprocess entry: run the worker named in the spec, print its result as the last stdout line."""
    import importlib

    spec = json.loads(spec_json)
    module, name = WORKERS[spec["side"]].split(":")
    result = getattr(importlib.import_module(module), name)(spec)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- orchestration


class Worker:
    """One side's measurement in a fresh Python process (same interpreter, this dpo_ref first on the path)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.stderr = tempfile.TemporaryFile(mode="w+")
        code = "import sys; from dpo_ref.bench.run import run_worker; run_worker(sys.argv[1])"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps({**spec, "gated": True})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
            env=_worker_env(spec["threads"]),
        )

    def _read_until(self, prefix: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        self.proc.wait()
        self.stderr.seek(0)
        tail = "\n".join(self.stderr.read().strip().splitlines()[-15:])
        raise BenchError(
            f"bench worker {self.spec['side']}/{self.spec['ref']} failed (exit {self.proc.returncode}):\n{tail}"
        )

    def ready(self) -> None:
        self._read_until("BENCH_READY")

    def step(self) -> float:
        self.proc.stdin.write("GO\n")
        self.proc.stdin.flush()
        return float(self._read_until("BENCH_STEP "))

    def result(self) -> dict:
        result = json.loads(self._read_until("BENCH_RESULT "))
        self.proc.wait()
        self.stderr.close()
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_pair(specs: list[dict]) -> list[dict]:
    """Start one worker per spec, then run their steps alternately (spec 0, spec 1, spec 0, ...)."""
    workers = [Worker(spec) for spec in specs]
    try:
        for w in workers:
            w.ready()
        for _ in range(specs[0]["warmup"] + specs[0]["steps"]):
            for w in workers:
                w.step()
        return [w.result() for w in workers]
    finally:
        for w in workers:
            w.kill()


def check_agreement(setting: str, a: dict, b: dict, rtol: float = LOSS_RTOL) -> dict:
    """The correctness guard: same initial weights, same tokens per sequence, first-step losses within LOSS_RTOL."""
    if abs(a["param_checksum"] - b["param_checksum"]) > 1e-9 * abs(a["param_checksum"]):
        raise BenchError(
            f"{setting}: the two sides start from different weights ({a['param_checksum']} vs {b['param_checksum']})"
        )
    if a["tokens_per_sequence"] != b["tokens_per_sequence"]:
        raise BenchError(
            f"{setting}: the sides see different tokens per sequence: dpo-ref {a['tokens_per_sequence']} vs "
            f"TRL {b['tokens_per_sequence']}"
        )
    la, lb = a["first_loss"], b["first_loss"]
    rel = abs(la - lb) / max(abs(lb), 1e-12)
    if not rel <= rtol:
        raise BenchError(
            f"{setting}: first-step losses disagree: dpo-ref {la!r} vs TRL {lb!r} (relative {rel:.2e} > {rtol})"
        )
    return {"dpo_ref_first_loss": la, "trl_first_loss": lb, "first_loss_rel_diff": rel}


def bench_train_step(
    size: BenchSize,
    *,
    device: str,
    threads: int,
    steps: int,
    warmup: int,
    repeats: int,
    lr: float = 1e-4,
    beta: float = 0.1,
    seed: int = 0,
    settings=REF_SETTINGS,
    log=print,
) -> dict:
    """Both sides, both reference settings, interleaved A B A B over `repeats` fresh processes each."""
    out = {}
    for setting in settings:
        runs: dict[str, list[dict]] = {side: [] for side in SIDES}
        for r in range(repeats):
            order = SIDES if r % 2 == 0 else SIDES[::-1]  # A B, then B A: neither side always steps first
            specs = [
                {"side": side, "ref": setting, "size": asdict(size), "device": device, "threads": threads,
                 "steps": steps, "warmup": warmup, "lr": lr, "beta": beta, "seed": seed}
                for side in order
            ]  # fmt: skip
            for side, result in zip(order, run_pair(specs)):
                runs[side].append(result)
                log(
                    f"  {setting:15} {side:7} repeat {r + 1}/{repeats}: median step "
                    f"{statistics.median(result['step_s']) * 1e3:8.1f} ms, peak {result['peak_mb']:7.0f} MB"
                )
        rtol = LOSS_RTOL_BF16 if device.startswith("cuda") else LOSS_RTOL
        guard = check_agreement(setting, runs["dpo_ref"][0], runs["trl"][0], rtol)
        entry = {}
        for side in SIDES:
            times = [t for run in runs[side] for t in run["step_s"]]
            entry[f"{side}_s"] = statistics.median(times)
            entry[f"{side}_peak_mb"] = statistics.median(run["peak_mb"] for run in runs[side])
            if not device.startswith("cuda"):
                entry[f"{side}_train_mb"] = statistics.median(run["peak_mb"] - run["base_rss_mb"] for run in runs[side])
        entry["ratio"] = entry["dpo_ref_s"] / entry["trl_s"]
        entry["peak_ratio"] = entry["dpo_ref_peak_mb"] / entry["trl_peak_mb"]
        if "dpo_ref_train_mb" in entry:
            entry["train_mem_ratio"] = entry["dpo_ref_train_mb"] / entry["trl_train_mb"]
        tokens = 2 * size.batch * size.seq_len
        entry["dpo_ref_tokens_per_s"] = tokens / entry["dpo_ref_s"]
        entry["trl_tokens_per_s"] = tokens / entry["trl_s"]
        entry["flops_per_step"] = train_flops_per_step(size, setting == "ref_model")
        entry.update(guard)
        out[setting] = entry
    return out


def bench_verify(timeout: float = 600) -> dict:
    """Wall time of a loss-level `dpo-ref verify` on the correct reference target, or why it is unavailable."""
    import importlib.util

    root = _package_root()
    target = os.path.join(root, "tests", "corpus", "loss_correct.py")
    if importlib.util.find_spec("dpo_ref.oracle") is None:
        return {"verify_s": None, "verify_note": "verify: not available (dpo_ref.oracle is not installed)"}
    if not os.path.isfile(target):
        return {"verify_s": None, "verify_note": f"verify: not available ({target} does not exist)"}
    name = "per_example"  # the corpus's plain per-example DPO (the suite's set)
    if name not in _functions(target):
        return {"verify_s": None, "verify_note": f"verify: not available ({target} defines no {name})"}
    cmd = [sys.executable, "-m", "dpo_ref", "verify", f"{target}:{name}", "--level", "loss", "--variant", "dpo"]
    env = dict(
        os.environ, PYTHONPATH=root + (os.pathsep + os.environ["PYTHONPATH"] if "PYTHONPATH" in os.environ else "")
    )
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        return {"verify_s": None, "verify_note": f"verify: failed (exit {proc.returncode}): {' | '.join(tail)}"}
    return {"verify_s": seconds, "verify_note": f"verify: {' '.join(cmd[3:])}"}


def _functions(path: str) -> set[str]:
    """Names of the top-level functions in a Python file."""
    import ast

    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def environment(device: str, threads: int) -> dict:
    """Versions and machine, read without importing TRL in this process."""
    from importlib import metadata

    import torch

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        name = f"CPU: {name}, {os.cpu_count()} cores, {threads} torch threads"
    return {
        "device": name,
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "trl": version("trl"),
        "python": platform.python_version(),
    }


def run_bench(
    size: BenchSize,
    *,
    device: str = "cpu",
    threads: int | None = None,
    steps: int = 3,
    warmup: int = 1,
    repeats: int = 2,
    settings: tuple[str, ...] = REF_SETTINGS,
    logps: bool = True,
    verify: bool = True,
    log=print,
) -> dict:
    """The whole benchmark; the dict `--json` writes."""
    threads = threads or (os.cpu_count() or 1)
    result: dict = {
        "size": asdict(size),
        "params": param_count(size),
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        **environment(device, threads),
    }
    log(
        f"train step: dpo-ref vs TRL, {result['params'] / 1e6:.1f} M params, {size.batch} pairs x {size.seq_len} "
        f"tokens, {device}"
    )
    result["train_step"] = bench_train_step(
        size, device=device, threads=threads, steps=steps, warmup=warmup, repeats=repeats, settings=settings, log=log
    )
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]  # 1/5/15-min, at the end of the train steps
    if device.startswith("cuda"):
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in result["device"]), None)
        for entry in result["train_step"].values():
            for side in SIDES:
                entry[f"{side}_mfu"] = entry["flops_per_step"] / entry[f"{side}_s"] / (peak * 1e12) if peak else None
    if logps:
        import torch

        from dpo_ref.bench import logps as bench_logps

        torch.set_num_threads(threads)  # its timing runs in this process
        B, T, V = 2 * size.batch, size.seq_len, size.vocab
        log(f"log-probs: sequence_logps vs naive, logits ({B}, {T}, {V})")
        r = bench_logps.run(B, T, V, device, repeats=5)
        result["logps"] = {"time_ratio": r["time_ratio"], "extra_memory_ratio": r["extra_memory_ratio"], "detail": r}
    if verify:
        log("verify: dpo-ref verify --level loss on a correct implementation")
        v = bench_verify()
        result["verify_s"], result["verify_note"] = v["verify_s"], v["verify_note"]
    return result


SMALL_LOGITS_MB = 16.0  # below this, RSS granularity and call overheads swamp the log-prob ratios


def format_table(r: dict) -> str:
    """The human-readable report."""
    lines = [
        f"dpo-ref bench  |  {r['device']}  |  torch {r['torch']}, transformers {r['transformers']}, TRL {r['trl']}",
        f"model: Llama {r['size']['hidden']} hidden x {r['size']['layers']} layers, vocab {r['size']['vocab']} "
        f"({r['params'] / 1e6:.1f} M params); {r['size']['batch']} pairs x {r['size']['seq_len']} tokens per step; "
        f"median of {r['steps']} steps x {r['repeats']} processes per side after {r['warmup']} warm-up; "
        f"load average {r['load_average'][1]:.1f} (5 min)",
        "",
        f"{'train step':16}{'dpo-ref':>11}{'TRL':>11}{'ratio':>8}{'dpo-ref MB':>12}{'TRL MB':>9}{'ratio':>8}"
        f"{'train MB ratio':>16}{'first-step loss (rel diff)':>34}",
    ]
    for setting, e in r["train_step"].items():
        train_ratio = f"{e['train_mem_ratio']:.2f}" if "train_mem_ratio" in e else "-"
        lines.append(
            f"{setting:16}{e['dpo_ref_s'] * 1e3:>8.0f} ms{e['trl_s'] * 1e3:>8.0f} ms{e['ratio']:>8.2f}"
            f"{e['dpo_ref_peak_mb']:>12.0f}{e['trl_peak_mb']:>9.0f}{e['peak_ratio']:>8.2f}{train_ratio:>16}"
            f"{e['dpo_ref_first_loss']:>14.6f} vs {e['trl_first_loss']:.6f} ({e['first_loss_rel_diff']:.0e})"
        )
        extra = f"  tokens/s: dpo-ref {e['dpo_ref_tokens_per_s']:.0f}, TRL {e['trl_tokens_per_s']:.0f}"
        if e.get("dpo_ref_mfu") is not None:
            extra += f"; MFU: dpo-ref {e['dpo_ref_mfu']:.1%}, TRL {e['trl_mfu']:.1%}"
        lines.append(extra)
    if "dpo_ref_train_mb" in next(iter(r["train_step"].values()), {}):
        lines.append("MB = peak RSS of the worker process; train MB = peak RSS minus RSS after imports")
    if "logps" in r:
        lp = r["logps"]
        lines.append(
            f"log-probs: sequence_logps / naive time {lp['time_ratio']:.2f} (target <= 1.2); extra peak memory "
            f"{lp['extra_memory_ratio']:.3f} x logits (target <= 0.25)"
        )
        logits_mb = lp.get("detail", {}).get("logits_mb")
        if logits_mb is not None and logits_mb < SMALL_LOGITS_MB:
            lines.append(
                f"  (logits of {logits_mb:.2f} MiB are too small for these ratios to mean much: page-sized RSS steps "
                "and fixed per-call costs dominate; the default size measures them)"
            )
    if "verify_s" in r:
        lines.append(f"verify: {r['verify_s']:.1f} s" if r["verify_s"] is not None else r["verify_note"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI


def _handler(args) -> int:
    import torch

    from dpo_ref.train.config import check_device

    if args.memory is not None:  # its own models and rows (dpo_ref.bench.memory)
        return _memory_handler(args)
    if args.memory_rows is not None:
        raise InputError("--memory-rows needs --memory (the memory bench)")
    args.steps = 3 if args.steps is None else args.steps
    if args.layout is not None:  # checked first: the layout bench has its own shapes
        from dpo_ref.bench import layouts as bench_layouts

        bench_layouts.parse_layouts(args.layout)
        fixed = [f"--{f.replace('_', '-')}" for f in ("seq_len", "prompt_len", "batch") if getattr(args, f) is not None]
        if fixed:
            raise InputError(
                f"{', '.join(fixed)} cannot be combined with --layout: the layout bench runs its own shapes "
                f"({', '.join(bench_layouts.SHAPES)}, {bench_layouts.PAIRS} pairs)"
            )
    size = BenchSize(**asdict(PRESETS[args.size]))
    for field in ("hidden", "layers", "vocab", "seq_len", "prompt_len", "batch"):
        value = getattr(args, field)
        if value is not None:
            if value < 1:
                raise InputError(f"--{field.replace('_', '-')} must be a positive integer, got {value}")
            setattr(size, field, value)
    if not 2 <= size.prompt_len < size.seq_len - 1:
        raise InputError(f"--prompt-len must be in [2, seq_len - 1), got {size.prompt_len} with seq_len {size.seq_len}")
    if size.hidden % size.heads:
        raise InputError(f"--hidden {size.hidden} must be a multiple of the {size.heads} attention heads")
    if size.vocab < MIN_VOCAB:  # the rows are drawn from the words after the special tokens
        raise InputError(f"--vocab must be at least {MIN_VOCAB} (4 special tokens and words to draw), got {size.vocab}")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else check_device(device)
    for name in ("steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.warmup < 1:
        raise InputError(f"--warmup must be >= 1 (the first step is the loss-agreement check), got {args.warmup}")
    if args.json:  # checked now, not after the runs: never a FIFO, device or directory
        from dpo_ref.atomic import check_output_file

        check_output_file(args.json, "--json")
    if args.layout is not None:
        return _layout_handler(args, size, device)
    try:
        import trl  # noqa: F401
    except ImportError as err:
        raise InputError(f"the bench needs TRL: pip install 'dpo-ref[bench]' ({err})") from err
    from dpo_ref.atomic import hold

    hold({"--json": args.json})  # one bench at a time writes it (dpo_ref.atomic)
    log = print if not args.quiet else (lambda *a, **k: None)
    try:
        result = run_bench(
            size,
            device=device,
            threads=args.threads,
            steps=args.steps,
            warmup=args.warmup,
            repeats=args.repeats,
            logps=not args.no_logps,
            verify=not args.no_verify,
            log=log,
        )
    except BenchError as err:
        print(f"dpo-ref bench: FAILED: {err}", file=sys.stderr)
        return 1
    print(format_table(result), file=sys.stderr if args.json == STDOUT else sys.stdout)  # stdout: the JSON alone
    if args.json:
        from dpo_ref.docgen.results import machine, write_results

        write_results(args.json, {"machine": machine(), "command": _command(args), **result})
    return 0


def _layout_handler(args, size: BenchSize, device: str) -> int:
    """`--layout`: the trainer's step in each batch layout, side by side (`dpo_ref.bench.layouts`); no TRL."""
    import torch

    from dpo_ref.atomic import hold
    from dpo_ref.bench import layouts as bench_layouts

    chosen = bench_layouts.parse_layouts(args.layout, device)
    hold({"--json": args.json})
    torch.set_num_threads(args.threads)
    from dpo_ref.docgen.results import machine

    before = machine()  # the load average before the run: what else was running
    try:
        result = bench_layouts.run_layouts(size, device, args.steps, chosen)
    except bench_layouts.LayoutMismatch as err:
        print(f"dpo-ref bench: FAILED: {err}", file=sys.stderr)
        return 1
    print(bench_layouts.format_layouts(result), file=sys.stderr if args.json == STDOUT else sys.stdout)
    if args.json:
        from dpo_ref.docgen.results import write_results

        command = (
            f"dpo-ref bench --layout {args.layout} --size {args.size} --steps {args.steps} --threads {args.threads}"
        )
        write_results(args.json, {"machine": before, "command": command, **result})
    return 0


def _memory_handler(args) -> int:
    """`--memory`: peak memory per process of `dpo-ref train` under each memory option (`dpo_ref.bench.memory`)."""
    from dpo_ref.bench import memory as bench_memory

    models = bench_memory.parse_names(args.memory, bench_memory.MODELS, "--memory", everything=("tiny", "100m"))
    rows = bench_memory.parse_names(
        args.memory_rows or "all", bench_memory.ROWS, "--memory-rows", bench_memory.ALL_ROWS
    )
    steps = bench_memory.STEPS if args.steps is None else args.steps
    if steps < 2:
        raise InputError(f"--steps must be at least 2 with --memory (the second update is the steady one), got {steps}")
    if args.layout is not None:
        raise InputError("--memory and --layout are two benches: pass one of them")
    fixed = [f"--{f.replace('_', '-')}" for f in ("hidden", "layers", "vocab", "seq_len", "prompt_len", "batch")
             if getattr(args, f) is not None]  # fmt: skip
    if fixed or args.size != "default":
        raise InputError(
            f"{', '.join(fixed) or '--size'} cannot be combined with --memory: the memory bench runs its own models "
            f"({', '.join(bench_memory.MODELS)})"
        )
    if args.threads < 1:
        raise InputError(f"--threads must be a positive integer, got {args.threads}")
    import torch

    from dpo_ref.train.config import check_device

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else check_device(device)
    if args.json:
        from dpo_ref.atomic import check_output_file

        check_output_file(args.json, "--json")
    from dpo_ref.atomic import hold
    from dpo_ref.docgen.results import machine

    hold({"--json": args.json})
    before = machine()
    log = (lambda *a, **k: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    try:
        result = bench_memory.run_memory(models, rows, device, args.threads, steps, log=log)
    except RuntimeError as err:
        print(f"dpo-ref bench: FAILED: {err}", file=sys.stderr)
        return 1
    print("\n".join(result["printed"]), file=sys.stderr if args.json == STDOUT else sys.stdout)
    if args.json:
        from dpo_ref.docgen.results import write_results

        command = (
            f"dpo-ref bench --memory {args.memory} --memory-rows {args.memory_rows or 'all'} --threads {args.threads}"
        )
        write_results(args.json, {"machine": before, "command": command, **result})
    return 0


def _command(args) -> str:
    """The bench's settings as the command that reproduces them (quoted in docs/performance.md)."""
    parts = ["dpo-ref bench"]
    for name in ("size", "steps", "warmup", "repeats", "threads", "settings"):
        parts.append(f"--{name} {getattr(args, name)}")
    return " ".join(parts)


def register(subparsers) -> None:
    """Add `dpo-ref bench` to the CLI."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark the trainer against TRL's DPOTrainer (step time, peak memory), log-probs and verify",
        description="Side-by-side benchmark: dpo-ref's train step vs TRL's DPOTrainer on the same model, data, "
        "batch, dtype and optimizer (reference model in the loop, and precomputed reference log-probs), each "
        "measurement in its own process, interleaved. Needs the bench extra: pip install 'dpo-ref[bench]'.",
    )
    a = p.add_argument
    a("--size", default="default", choices=sorted(PRESETS), help="preset model/batch size (default: default)")
    a("--hidden", type=int, help="override the preset's hidden size")
    a("--layers", type=int, help="override the preset's number of layers")
    a("--vocab", type=int, help="override the preset's vocabulary size")
    a("--seq-len", type=int, help="override the tokens per sequence")
    a("--prompt-len", type=int, help="override the prompt tokens per sequence (BOS included)")
    a("--batch", type=int, help="override the preference pairs per step")
    a("--device", default="auto", help="auto, cpu or cuda (default auto)")
    a(
        "--threads",
        type=int,
        default=1,
        help="torch threads, the same on both sides (default 1: on a busy machine, "
        "multi-threaded steps stall at OpenMP barriers; use more on an idle machine)",
    )
    a(
        "--steps",
        type=int,
        default=None,
        help="timed steps per process (default 3; with --memory: updates per row, default 2)",
    )
    a("--warmup", type=int, default=1, help="untimed steps first (default 1; step 1 is the loss check)")
    a("--repeats", type=int, default=2, help="processes per side and setting, interleaved (default 2)")
    a("--settings", default="both", choices=("both",) + REF_SETTINGS, help="reference settings to run (default both)")
    a("--no-logps", action="store_true", help="skip the log-prob benchmark")
    a("--no-verify", action="store_true", help="skip the verify timing")
    a(
        "--layout",
        metavar="NAMES",
        default=None,
        help="instead of the TRL comparison, time dpo-ref's step in these batch layouts side by side: 'all' or a "
        "comma-separated list of two-sequence, prefix-sharing, packing, both (two-sequence, the baseline, is always "
        "run); shapes prompt 64 / completion 192, prompt 256 / completion 128 and a drawn mix; --repeats, "
        "--settings, --no-logps and --no-verify do not apply",
    )
    a(
        "--memory",
        metavar="MODELS",
        default=None,
        help="instead of the TRL comparison, measure the peak memory per process of dpo-ref train under each memory "
        "option (full, LoRA, gradient checkpointing, bf16, FSDP x2), each in a fresh process: 'all' or a "
        "comma-separated list of tiny (the built-in model), 100m (a 100M-parameter Llama built from a config); "
        "see --memory-rows",
    )
    a(
        "--memory-rows",
        metavar="ROWS",
        default=None,
        help="with --memory: 'all' (the default) or a comma-separated list of full, full+ckpt, lora, lora+ckpt, "
        "full-bf16, full+ckpt-bf16, lora-bf16, fsdp-x2",
    )
    a("--json", metavar="PATH", help="also write the results as JSON (- for standard output)")
    a("--quiet", action="store_true", help="print only the final table")
    p.set_defaults(func=_handler)
