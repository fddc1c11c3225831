"""Benchmark: one DPO training step in each batch layout, side by side in one run (interleaved).

    python benchmarks/layouts.py [--steps 4] [--json docs/results/layouts.json] [--device cpu|cuda]

The step is the trainer's own (`dpo_ref.train.layouts`, `SequenceScorer` with the output layer only at the
scored positions): policy forward + backward over the batch in the layout, a reference forward under no_grad,
the sigmoid DPO loss. Model: the bench's default Llama (256 hidden, 4 layers, vocab 8192), float32 on CPU;
8 pairs per step. Shapes: prompt 64 / completion 192, prompt 256 / completion 128, and a variable mix (prompts
16-512, completions 8-256, drawn). The layouts take turns step by step (A B C D A B C D ...) after one warm-up
step each, so machine drift hits all alike; the median step time is reported with tokens/s (real, unpadded
tokens) and the ratio to the two-sequence step. Peak memory: on CUDA `max_memory_allocated` per layout; on CPU
the peak RSS of a fresh subprocess per layout (VmHWM after the steps minus after the set-up). Every layout's
first-step loss must equal the two-sequence one (relative 1e-5), or the benchmark stops.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time

import torch

from dpo_ref.train import layouts
from dpo_ref.train.data import TokenizedPair

SHAPES = {"p64_c192": (64, 192), "p256_c128": (256, 128), "mixed": None}
PAIRS = 8


def pairs_for(shape: str, vocab: int, seed: int = 0) -> list[TokenizedPair]:
    rng = random.Random(seed)
    out = []
    for i in range(PAIRS):
        p, c = SHAPES[shape] or (rng.randint(16, 512), rng.randint(8, 256))
        r = c if SHAPES[shape] else rng.randint(8, 256)
        ids = [rng.randrange(4, vocab) for _ in range(p + c + r)]
        out.append(TokenizedPair(ids[:p], ids[p : p + c], ids[p + c :], i))
    return out


def step(policy, reference, batch, beta: float = 0.1):
    from dpo_ref.losses import dpo_loss
    from dpo_ref.train.loop import SequenceScorer, scorer_inputs

    inputs = scorer_inputs(batch)
    logps, _ = SequenceScorer(policy)(**inputs)
    with torch.no_grad():
        ref, _ = SequenceScorer(reference)(**inputs)
    B = batch["index"].shape[0]
    loss = dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta=beta).losses.mean()
    loss.backward()
    return float(loss)


def collated(pairs, layout: str, device):
    from dpo_ref.train.data import PreferenceCollator

    if layout == "two-sequence":  # the trainer's own two-sequence path (2-D mask, right padding)
        batch = PreferenceCollator(0)(pairs)
    else:
        batch = layouts.collate(pairs, layout, 0, max_length=1024)
    return {k: v.to(device) for k, v in batch.items()}


def models(device):
    from dpo_ref.bench.run import BenchSize, bench_model

    size = BenchSize(seq_len=1024)
    return bench_model(size, 0).to(device), bench_model(size, 1).to(device).eval(), size.vocab


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timing(device, steps: int) -> dict:
    policy, reference, vocab = models(device)
    out = {}
    for shape in SHAPES:
        pairs = pairs_for(shape, vocab)
        tokens = sum(len(p.prompt_ids) * 2 + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
        batches = {lay: collated(pairs, lay, device) for lay in layouts.LAYOUTS}
        times = {lay: [] for lay in layouts.LAYOUTS}
        first = {}
        for i in range(steps + 1):
            for lay in layouts.LAYOUTS:
                policy.zero_grad(set_to_none=True)
                _sync(device)
                t = time.perf_counter()
                loss = step(policy, reference, batches[lay])
                _sync(device)
                if i == 0:
                    first[lay] = loss  # the warm-up step: excluded from the times, checked for agreement
                else:
                    times[lay].append(time.perf_counter() - t)
        base = first["two-sequence"]
        for lay, loss in first.items():
            if abs(loss - base) > 1e-5 * abs(base):
                raise SystemExit(f"{shape}: {lay} gives loss {loss!r}, two-sequence {base!r}: not the same step")
        med = {lay: statistics.median(t) for lay, t in times.items()}
        out[shape] = {
            lay: {
                "median_s": med[lay],
                "runs_s": times[lay],
                "tokens_per_s": tokens / med[lay],
                "speedup": med["two-sequence"] / med[lay],
                "rows": int(batches[lay]["input_ids"].shape[0]),
                "row_length": int(batches[lay]["input_ids"].shape[1]),
                "first_step_loss": first[lay],
            }
            for lay in layouts.LAYOUTS
        }
        out[shape]["tokens"] = tokens
    return out


def _vmhwm() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    return float("nan")


def memory_worker(shape: str, layout: str, device_name: str) -> None:
    device = torch.device(device_name)
    policy, reference, vocab = models(device)
    batch = collated(pairs_for(shape, vocab), layout, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = _vmhwm()
    step(policy, reference, batch)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _vmhwm() - before
    print(json.dumps({"peak_mb": peak}))


def memory(device_name: str) -> dict:
    out = {}
    for shape in SHAPES:
        out[shape] = {}
        for lay in layouts.LAYOUTS:
            run = subprocess.run(
                [sys.executable, __file__, "--memory-worker", shape, lay, "--device", device_name],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            out[shape][lay] = json.loads(run.stdout.strip().splitlines()[-1])["peak_mb"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per layout and shape (default 4)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--memory-worker", nargs=2, metavar=("SHAPE", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        return memory_worker(*args.memory_worker, args.device)
    torch.manual_seed(0)
    from dpo_ref.docgen.results import machine, write_results

    before = machine()
    device = torch.device(args.device)
    result = timing(device, args.steps)
    peaks = memory(args.device)
    print(f"{'shape':10} {'layout':15} {'step s':>8} {'x two-seq':>9} {'tokens/s':>9} {'peak MB':>8}  rows x length")
    for shape, rows in result.items():
        for lay in layouts.LAYOUTS:
            r = rows[lay]
            r["peak_mb"] = peaks[shape][lay]
            r["memory_ratio"] = peaks[shape][lay] / peaks[shape]["two-sequence"]
            print(f"{shape:10} {lay:15} {r['median_s']:8.3f} {r['speedup']:9.2f} {r['tokens_per_s']:9.0f} "
                  f"{r['peak_mb']:8.0f}  {r['rows']} x {r['row_length']}")  # fmt: skip
    if args.json:
        write_results(args.json, {"machine": before, "device": args.device, "steps": args.steps, "shapes": result})


if __name__ == "__main__":
    main()
