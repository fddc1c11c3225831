"""`dpo-ref bench --memory`: peak memory per process of `dpo-ref train` under each memory option, side by side.

    dpo-ref bench --memory all [--json docs/results/memory.json]      the tiny default model and a 100M Llama
    dpo-ref bench --memory tiny --memory-rows full,lora               a subset

Each row is one real `dpo-ref train` run (`dpo_ref.train.loop.train`: its model, LoRA, checkpointing, dtype,
reference and update step) of `STEPS` preference updates, in a fresh subprocess so that one row's peak cannot
include another's; FSDP runs under `torchrun --nproc_per_node 2` and reports each process. The trainer is not
changed: inside the worker, `make_reference`, `preference_optimizer` and `update_step` are wrapped (the same
functions called, their results looked at) to measure each update:

    peak MB      CUDA: `torch.cuda.max_memory_allocated` over the update. CPU: the peak RSS over the update
                 (VmHWM, reset before it through /proc/self/clear_refs) minus the RSS after the imports, i.e.
                 everything the run holds: model, reference, optimizer state, data and the step's transients
    tensors      counted from the tensors: weights, the reference's own weights (none when it shares the
                 policy's), gradients (at the optimizer step), AdamW state; and the peak of the tensors the
                 update allocates (`dpo_ref.bench.tensor_bytes.LiveTensors`), split at that peak into
                 gradients and the rest (activations and temporaries)

The largest update is reported (the second: AdamW's moments exist from the first step on). The formula of
`dpo_ref.bench.memory_model` is printed beside each row ("formula MB") and compared to the tensors counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

from dpo_ref.bench.memory_model import LlamaShape, step_memory, table_7b
from dpo_ref.bench.sizes import PRESETS, BenchSize
from dpo_ref.errors import InputError

STEPS = 2  # the second update is the steady one: the AdamW moments exist while its activations do
LORA_R = 8
# the rows: name -> the `dpo-ref train` options that differ from a full float32 fine-tune
ROWS = {
    "full": {},
    "full+ckpt": {"gradient_checkpointing": True},
    "lora": {"lora_r": LORA_R},
    "lora+ckpt": {"lora_r": LORA_R, "gradient_checkpointing": True},
    "full-bf16": {"dtype": "bfloat16"},
    "full+ckpt-bf16": {"dtype": "bfloat16", "gradient_checkpointing": True},
    "lora-bf16": {"lora_r": LORA_R, "dtype": "bfloat16"},
    "fsdp-x2": {"fsdp": True},
    # for a GPU (benchmarks/gpu_check.sh): FSDP's code path on one process
    "fsdp-x1-bf16": {"fsdp": True, "dtype": "bfloat16"},
}
PROCESSES = {"fsdp-x2": 2, "fsdp-x1-bf16": 1}  # rows run under torchrun, and their processes
ALL_ROWS = tuple(r for r in ROWS if r != "fsdp-x1-bf16")  # what `--memory-rows all` runs
MODELS = {
    # the trainer's built-in model (`dpo-ref train` with no --model) on its built-in task
    "tiny": {"batch_size": 16},
    # a ~100M-parameter Llama built from a config, saved as a local --model; 2 pairs of 128-token sequences
    "100m": {
        "batch_size": 2,
        "size": BenchSize(
            hidden=768,
            layers=10,
            heads=12,
            kv_heads=12,
            intermediate=2048,
            vocab=16384,
            seq_len=128,
            prompt_len=32,
            batch=4,  # rows in the data file: two processes of 2 pairs (FSDP x2)
        ),
    },  # fmt: skip
    # a Qwen2.5-0.5B-shaped Qwen2 built from a config, for a GPU (benchmarks/gpu_check.sh): 4 pairs of 1024 tokens
    "0.5b": {
        "batch_size": 4,
        "qwen2": True,
        "size": PRESETS["0.5b"],  # the TRL comparison's GPU size
    },  # fmt: skip
}
RESULT = "MEMORY_RESULT "
MB = 2**20


def fsdp_available() -> bool:
    """Whether this build's `dpo-ref train` has --fsdp (a `TrainConfig` field)."""
    from dpo_ref.train.config import TrainConfig

    return "fsdp" in {f.name for f in dataclasses.fields(TrainConfig)}


def parse_names(text: str, known, option: str, everything=None) -> tuple[str, ...]:
    """'all' (`everything`, default every name) or a comma-separated list of `known` names, in `known`'s order;
    InputError otherwise."""
    everything = list(known) if everything is None else list(everything)
    names = everything if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise InputError(
            f"{option}: unknown name {', '.join(map(repr, unknown)) or repr(text)}; expected 'all' or a "
            f"comma-separated list of {', '.join(known)}"
        )
    return tuple(n for n in known if n in names)


# ---------------------------------------------------------------------------------------------- the worker


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM, ru_maxrss) to its current RSS (Linux: /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class UpdateProbe:
    """Wraps the trainer's functions in this process (`patched`) and measures each update (see the module doc)."""

    def __init__(self, device_type: str, base_rss_mb: float, track_tensors: bool = True):
        self.device_type = device_type
        self.base_rss_mb = base_rss_mb
        self.track_tensors = track_tensors
        self.optimizer = None
        self.reference = None
        self.policy = None
        self.updates: list[dict] = []
        self._grads: dict = {}
        self._live = None

    @contextlib.contextmanager
    def patched(self, loop):
        originals = {name: getattr(loop, name) for name in ("make_reference", "preference_optimizer", "update_step")}

        def make_reference(s, d):
            self.reference = originals["make_reference"](s, d)
            self.policy = d.policy
            return self.reference

        def preference_optimizer(cfg, policy, device):
            optimizer, scheduler = originals["preference_optimizer"](cfg, policy, device)
            self.optimizer = optimizer
            optimizer.register_step_pre_hook(self._before_step)
            return optimizer, scheduler

        def update_step(*args, **kwargs):
            return self._measure(originals["update_step"], *args, **kwargs)

        try:
            loop.make_reference, loop.preference_optimizer, loop.update_step = (
                make_reference, preference_optimizer, update_step
            )  # fmt: skip
            yield self
        finally:
            for name, fn in originals.items():
                setattr(loop, name, fn)

    def _before_step(self, optimizer, args, kwargs) -> None:
        from dpo_ref.bench.tensor_bytes import gradient_bytes

        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        ids = {self._live.allocation_id(g) for g in grads} if self._live is not None else set()
        self._grads = {"bytes": gradient_bytes(optimizer), "ids": ids - {None}}

    def _measure(self, update_step, *args, **kwargs):
        import torch

        from dpo_ref.bench.tensor_bytes import LiveTensors, optimizer_state_bytes

        gc.collect()
        cuda = self.device_type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()
        state_before = optimizer_state_bytes(self.optimizer) if self.optimizer is not None else 0
        self._live = LiveTensors() if self.track_tensors else None
        forward_end = []
        if self._live is not None:  # the live bytes when the forward passes end: the activations saved for backward
            args = list(args)
            loss_fn = args[1] if len(args) > 1 else kwargs["loss_fn"]

            def measured_loss_fn(batch):
                loss, stats = loss_fn(batch)
                forward_end.append(self._live.live)
                return loss, stats

            if len(args) > 1:
                args[1] = measured_loss_fn
            else:
                kwargs["loss_fn"] = measured_loss_fn
        started = time.perf_counter()
        with self._live if self._live is not None else contextlib.nullcontext():
            out = update_step(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        if cuda:
            peak_mb = torch.cuda.max_memory_allocated() / MB
        else:
            peak_mb = _status_mb("VmHWM") - self.base_rss_mb
        batches = args[0] if args else kwargs["micro_batches"]
        record = {
            "peak_mb": peak_mb,
            "seconds": seconds,
            "optimizer_bytes_before": state_before,
            "gradient_bytes": self._grads.get("bytes", 0),
            # tokens N and scored tokens S of the update (one micro-batch): the formula's inputs
            "tokens": sum(int(b["input_ids"].numel()) for b in batches),
            "scored_tokens": sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches),
        }
        if self._live is not None:
            grads_at_peak = sum(b for i, b in self._live.at_peak.items() if i in self._grads.get("ids", ()))
            record.update(
                forward_end_bytes=max(forward_end),
                step_tensors_peak_bytes=self._live.peak,
                gradients_at_peak_bytes=grads_at_peak,
                activations_at_peak_bytes=self._live.peak - grads_at_peak,
            )
        self.updates.append(record)
        self.last_live, self._live = self._live, None
        return out

    def result(self) -> dict:
        from dpo_ref.bench.tensor_bytes import optimizer_state_bytes, parameter_keys, unique_bytes

        policy = self.policy
        weights = unique_bytes(policy.parameters())
        reference = 0
        if self.reference is not None and self.reference.scorer is not None:
            reference = unique_bytes(self.reference.scorer.parameters(), exclude=parameter_keys(policy))
        trained = [p for p in policy.parameters() if p.requires_grad]
        largest = max(self.updates, key=lambda u: u["peak_mb"])
        out = {
            "updates": self.updates,
            "peak_mb": largest["peak_mb"],
            "weights_bytes": weights,
            "reference_bytes": reference,
            "gradient_bytes": max(u["gradient_bytes"] for u in self.updates),
            "optimizer_bytes": optimizer_state_bytes(self.optimizer),
            "params": sum(p.numel() for p in policy.parameters()),
            "trained_params": sum(p.numel() for p in trained),
            "trained_tensors": len(trained),
            "tokens": self.updates[-1]["tokens"],
            "scored_tokens": self.updates[-1]["scored_tokens"],
            # the updates after the first (which allocates AdamW's state and warms the kernels up)
            "update_s": statistics.median(u["seconds"] for u in self.updates[1:] or self.updates),
        }
        steady = self.updates[-1]  # its peak has the moments of the step before alive throughout
        if "step_tensors_peak_bytes" in steady:
            names = ("forward_end", "step_tensors_peak", "gradients_at_peak", "activations_at_peak")
            out.update({f"{k}_bytes": steady[f"{k}_bytes"] for k in names})
            out["tensors_peak_bytes"] = (
                weights + reference + steady["optimizer_bytes_before"] + out["step_tensors_peak_bytes"]
            )
        return out


def _import_everything() -> float:
    """Import what any row uses (torch, transformers, peft, the trainer) before the baseline RSS is read, so that
    no row's peak holds an import another row does not make; returns that RSS (MiB)."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import dpo_ref.train.loop  # noqa: F401
    import dpo_ref.train.lora  # noqa: F401

    gc.collect()
    return _status_mb("VmRSS")


def train_config(spec: dict):
    """The `TrainConfig` of a row: `STEPS` updates, no warm-up, no evaluation after step 0, no checkpoint."""
    from dpo_ref.train.config import TrainConfig

    return TrainConfig(
        model=spec.get("model_dir"), data=spec.get("data"), out=spec["out"], overwrite=True,
        steps=spec.get("steps", STEPS), sft_steps=0, warmup_steps=0, batch_size=spec["batch_size"],
        eval_every=10**8, save_every=10**8,
        eval_generation=False, progress=False, device=spec["device"], threads=spec["threads"], seed=0,
        **ROWS[spec["row"]],
    )  # fmt: skip


def measure(spec: dict) -> dict:
    """One row in this process: a `dpo-ref train` run of `train_config(spec)`, measured (see the module doc)."""
    base = _import_everything()
    from dpo_ref.train import loop
    from dpo_ref.train.precision import device_type

    cfg = train_config(spec)
    probe = UpdateProbe(device_type(spec["device"]), base, track_tensors=spec.get("track_tensors", True))
    with probe.patched(loop):
        summary = loop.train(cfg)
    result = probe.result()
    result.update(rank=int(os.environ.get("RANK", "0")), world=int(os.environ.get("WORLD_SIZE", "1")))
    result["loss_step0"] = summary["history"][0].get("loss") if summary["history"] else None
    result["base_rss_mb"] = base
    return result


def main(argv: list[str]) -> None:
    """Subprocess entry (also each torchrun rank): measure the row of the JSON spec, print the result line."""
    print(RESULT + json.dumps(measure(json.loads(argv[0]))), flush=True)


# ---------------------------------------------------------------------------------------------- orchestration


def qwen2_model(size: BenchSize, seed: int):
    """A float32 `Qwen2ForCausalLM` of `size` from a `Qwen2Config` (Qwen2.5-0.5B's: tied embeddings, q/k/v biases,
    rope theta 1e6), initialised from `seed`; no dropout."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        max_position_embeddings=max(size.seq_len, 128), tie_word_embeddings=True, rope_theta=1e6,
        attention_dropout=0.0, use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config)


def prepare_model(model: str, folder: str) -> tuple[str, str]:
    """(--model directory, --data file) of the bench model `model` built from a config, with the bench's word
    tokenizer and `size.batch` rows of exactly `size.seq_len` tokens each."""
    from dpo_ref.bench.shared import bench_rows, bench_tokenizer
    from dpo_ref.bench.sizes import bench_model

    size = MODELS[model]["size"]
    model_dir = os.path.join(folder, "model")
    (qwen2_model if MODELS[model].get("qwen2") else bench_model)(size, 0).save_pretrained(model_dir)
    bench_tokenizer(size.vocab).save_pretrained(model_dir)
    data = os.path.join(folder, "rows.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for row in bench_rows(size):
            f.write(json.dumps(row) + "\n")
    return model_dir, data


def shape_of(model: str) -> LlamaShape:
    """The `LlamaShape` of a bench model (the formula's input)."""
    if model == "tiny":
        from dpo_ref.train.model import TinyLlamaSize
        from dpo_ref.train.tokenizer import build_char_tokenizer

        s = TinyLlamaSize()
        return LlamaShape(s.hidden_size, s.num_hidden_layers, s.num_attention_heads, s.num_attention_heads,
                          s.intermediate_size, len(build_char_tokenizer()))  # fmt: skip
    z, qwen2 = MODELS[model]["size"], MODELS[model].get("qwen2", False)
    return LlamaShape(z.hidden, z.layers, z.heads, z.kv_heads, z.intermediate, z.vocab, tied=qwen2, qkv_bias=qwen2)


def _env(threads: int) -> dict:
    from dpo_ref.bench.shared import worker_env

    return worker_env(threads)


def run_row(spec: dict, timeout: float = 1800) -> list[dict]:
    """One row in a fresh process (an FSDP row: `PROCESSES[row]` processes under torchrun); one result per process."""
    code = "import sys; from dpo_ref.bench.memory import main; main(sys.argv[1:])"
    if spec["row"] in PROCESSES:
        nproc = PROCESSES[spec["row"]]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "dpo_ref.bench.memory", json.dumps(spec)]  # fmt: skip
    else:
        cmd = [sys.executable, "-c", code, json.dumps(spec)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(spec["threads"]), timeout=timeout)
    results = [json.loads(line[len(RESULT) :]) for line in run.stdout.splitlines() if line.startswith(RESULT)]
    if run.returncode != 0 or not results:
        tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"the memory worker for {spec['row']} failed (exit {run.returncode}):\n{tail}")
    return sorted(results, key=lambda r: r["rank"])


def formula(model: str, row: str, tokens: int, scored: int) -> dict[str, int]:
    """`memory_model.step_memory` for the row's options on this model and micro-batch."""
    options = ROWS[row]
    return step_memory(
        shape_of(model),
        tokens=tokens,
        scored=scored,
        dtype=options.get("dtype", "float32"),
        lora_r=options.get("lora_r"),
        checkpointing=options.get("gradient_checkpointing", False),
        shards=PROCESSES.get(row, 1),
    )


def peak_tflops(device: str) -> tuple[str, float | None]:
    """(the device's name, its dense bf16 peak in TFLOP/s from `dpo_ref.bench.shared.PEAK_TFLOPS`, None if unknown)."""
    if not device.startswith("cuda"):
        return "cpu", None
    import torch

    from dpo_ref.bench.shared import PEAK_TFLOPS

    name = torch.cuda.get_device_name(torch.device(device))
    return name, next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def run_memory(
    models: tuple[str, ...], rows: tuple[str, ...], device: str, threads: int, steps: int = STEPS, log=print
) -> dict:
    """The whole memory bench; the dict `--json` writes (docs/results/memory.json)."""
    name, peak = peak_tflops(device)
    out: dict = {"device": device, "device_name": name, "peak_tflops": peak, "threads": threads, "steps": steps,
                 "lora_r": LORA_R, "models": {}}  # fmt: skip
    fsdp = fsdp_available()
    with tempfile.TemporaryDirectory(prefix="dpo-ref-bench-memory-") as folder:
        for model in models:
            spec = {"batch_size": MODELS[model]["batch_size"], "device": device, "threads": threads, "steps": steps}
            # CUDA counts its own peak; the Python-level tensor count would slow the step it times there
            spec["track_tensors"] = not device.startswith("cuda")
            entry: dict = {"batch_size": spec["batch_size"], "rows": {}}
            if model != "tiny":
                spec["model_dir"], spec["data"] = prepare_model(model, os.path.join(folder, model))
                entry["size"] = asdict(MODELS[model]["size"])
            entry["shape"] = asdict(shape_of(model))
            for row in rows:
                if ROWS[row].get("fsdp") and not fsdp:
                    entry["rows"][row] = {"available": False, "note": "not available in this build: dpo-ref train "
                                          "has no --fsdp"}  # fmt: skip
                    log(f"{model} {row}: not available in this build (dpo-ref train has no --fsdp)")
                    continue
                log(f"{model} {row}: measuring")
                results = run_row({**spec, "row": row, "out": os.path.join(folder, f"run-{model}-{row}")})
                first = dict(results[0])
                first["available"] = True
                first["per_process_peak_mb"] = [r["peak_mb"] for r in results]
                first["peak_mb"] = max(first["per_process_peak_mb"])
                entry["rows"][row] = first
            out["models"][model] = entry
    return derive(out)


def derive(result: dict) -> dict:
    """The figures computed from the measurements (`result` completed in place, and returned): per row the formula
    (`memory_model.step_memory` at the row's tokens), tokens/s and MFU, the ratios to the full fine-tune; the
    printed table and the 7B arithmetic the docs quote. Pure: re-deriving a results file changes no measurement."""
    peak = result.get("peak_tflops")
    for model, entry in result["models"].items():
        measured = [r for r in entry["rows"].values() if r.get("available")]
        if measured:
            entry["tokens"], entry["scored_tokens"] = measured[0]["tokens"], measured[0]["scored_tokens"]
        for row, r in entry["rows"].items():
            if not r.get("available"):
                continue
            r["formula"] = formula(model, row, r["tokens"], r["scored_tokens"])
            # throughput of one process; MFU as 6 N tokens/s over the bf16 peak (N: the model's parameters)
            r["tokens_per_s"] = r["tokens"] / r["update_s"]
            r["mfu"] = 6 * shape_of(model).params * r["tokens_per_s"] / (peak * 1e12) if peak else None
        base = entry["rows"].get("full", {})
        for r in measured:
            if base.get("available"):
                r["peak_ratio"] = r["peak_mb"] / base["peak_mb"]
                if "tensors_peak_bytes" in r and "tensors_peak_bytes" in base:
                    r["tensors_ratio"] = r["tensors_peak_bytes"] / base["tensors_peak_bytes"]
    result["printed"] = format_memory(result).splitlines()
    result["arithmetic_7b"] = table_7b()
    return result


def _mb(value) -> str:
    return f"{value / MB:.1f}" if isinstance(value, (int, float)) else "-"


def format_memory(result: dict) -> str:
    """The side-by-side table: per model, one row per option, ratios to the full fine-tune."""
    peak_name = "CUDA peak MB" if result["device"].startswith("cuda") else "peak RSS MB"
    cols = ("weights", "ref", "grads", "AdamW", "step peak", "activ.", "tensors", "formula")
    lines = []
    for model, entry in result["models"].items():
        shape = entry["shape"]
        lines.append(
            f"{model}: Llama hidden {shape['hidden']} x {shape['layers']} layers, vocab {shape['vocab']}; "
            f"{entry['batch_size']} pairs per micro-batch, {entry.get('tokens', '-')} tokens "
            f"({entry.get('scored_tokens', '-')} scored); MB = 2^20 bytes per process"
        )
        mfu = any(r.get("mfu") is not None for r in entry["rows"].values())
        lines.append(
            f"  {'row':15}{peak_name:>13}{'x full':>8}" + "".join(f"{c:>10}" for c in cols) + f"{'x full':>8}"
            f"{'tokens/s':>10}" + (f"{'MFU':>7}" if mfu else "")
        )
        for row, r in entry["rows"].items():
            if not r.get("available"):
                lines.append(f"  {row:15}  {r['note']}")
                continue
            ratio = f"{r['peak_ratio']:.2f}" if "peak_ratio" in r else "-"
            tratio = f"{r['tensors_ratio']:.2f}" if "tensors_ratio" in r else "-"
            values = (r["weights_bytes"], r["reference_bytes"], r["gradient_bytes"], r["optimizer_bytes"],
                      r.get("step_tensors_peak_bytes"), r.get("activations_at_peak_bytes"),
                      r.get("tensors_peak_bytes"), r["formula"]["peak"])  # fmt: skip
            peaks = "/".join(f"{p:.0f}" for p in r["per_process_peak_mb"])
            lines.append(
                f"  {row:15}{peaks:>13}{ratio:>8}" + "".join(f"{_mb(v):>10}" for v in values) + f"{tratio:>8}"
                f"{r['tokens_per_s']:>10.0f}" + (f"{r['mfu']:>7.1%}" if mfu and r.get("mfu") is not None else "")
            )
    lines.append(
        "peak: the largest update's; tensors = weights + ref + AdamW + step peak (the tensors the update allocates: "
        "gradients, activations, temporaries); activ. = the step peak less the gradients alive at it; formula = "
        "dpo_ref.bench.memory_model.step_memory's peak, to compare with tensors"
    )
    if result.get("peak_tflops"):
        lines.append(
            f"MFU = 6 N tokens/s / {result['peak_tflops']:.0f} TFLOP/s ({result['device_name']}'s dense bf16 peak), "
            "N the model's parameters (for LoRA too: what the step would cost training every weight)"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # a torchrun rank (`run_row`)
    main(sys.argv[1:])
