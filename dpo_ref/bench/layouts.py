"""`dpo-ref bench --layout`: one DPO training step in each batch layout, side by side in one run (interleaved).

    dpo-ref bench --layout all [--steps 4] [--json docs/results/layouts.json] [--device cpu|cuda]
    dpo-ref bench --layout two-sequence,prefix-sharing      (two-sequence, the baseline, is always run)
    dpo-ref bench --layout packing,packing+segments         (a layout with another attention kernel: +segments, +flex)

The step is the trainer's own (`dpo_ref.train.layouts`, `SequenceScorer` with the output layer only at the
scored positions): policy forward + backward over the batch in the layout, a reference forward under no_grad,
the sigmoid DPO loss. Model: the bench's Llama of `--size` (default 256 hidden, 4 layers, vocab 8192), float32;
8 pairs per step. Shapes: prompt 64 / completion 192, prompt 256 / completion 128, and a variable mix (prompts
16-512, completions 8-256, drawn). The layouts take turns step by step (A B C D A B C D ...) after one warm-up
step each, so machine drift hits all alike; the median step time is reported with tokens/s (real, unpadded
tokens: each pair's prompt counted twice, as two sequences hold it) and the ratio to the two-sequence step,
beside the ratio of their forward FLOPs (`dpo_ref.bench.layout_work`: what the ratio would be if time followed
arithmetic, the ceiling an exact layout can reach on this model). A plain layout name runs the dense 4-D mask;
NAME+segments the segmented kernel, NAME+flex FlexAttention (`dpo_ref.train.attention`).
Peak memory: on CUDA `max_memory_allocated` per layout; on CPU the peak RSS of a fresh subprocess per layout
and shape (VmHWM after the step minus after the set-up). Every layout's first-step loss must equal the
two-sequence one (relative 1e-5: the same sums of float32 log-probs in another order, a few ulps of a loss
of order 1), or the bench stops with exit 1 naming the layout: a faster step that computes something else is
no speed-up.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace

import torch

from dpo_ref.bench.layout_work import forward_flops
from dpo_ref.bench.sizes import BenchSize, bench_model
from dpo_ref.errors import InputError
from dpo_ref.train import layouts
from dpo_ref.train.data import TokenizedPair

SHAPES = {"p64_c192": (64, 192), "p256_c128": (256, 128), "mixed": None}  # (prompt, completion); None: drawn
MIXED = {"prompt": (16, 512), "completion": (8, 256)}
PAIRS = 8
ROW_TOKENS = 1024  # longest pair of the mix: 512 + 256 + 256; the model's positions and the packed row length
AGREEMENT = 1e-5  # relative, first-step loss of each layout against two-sequence


class LayoutMismatch(Exception):
    """A layout's step computes another loss than the two-sequence step (the bench's verdict: exit 1)."""


KERNEL_SUFFIXES = {"+segments": "segments", "+flex": "flex"}  # a layout run with another attention kernel
# (`dpo_ref.train.attention`): the segmented kernel anywhere, FlexAttention's block mask on CUDA only


def split_kernel(name: str) -> tuple[str, str]:
    """ "packing+flex" -> ("packing", "flex"); "both+segments" -> ("both", "segments"); "packing" -> ("packing",
    "mask")."""
    for suffix, kernel in KERNEL_SUFFIXES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kernel
    return name, "mask"


def parse_layouts(text: str, device: str | None = None) -> tuple[str, ...]:
    """`--layout`: "all" or comma-separated names of `layouts.LAYOUTS`, each but two-sequence also as
    NAME+segments (the segmented kernel) and NAME+flex (FlexAttention); two-sequence is added first (the baseline
    every ratio is taken against). "all" is every layout with every kernel the device runs: +segments
    everywhere, +flex on CUDA; on the CPU a +flex layout is refused (no FlexAttention backward there); `device`
    None checks the names only."""
    shared = [n for n in layouts.LAYOUTS if n != "two-sequence"]
    known = [*layouts.LAYOUTS, *(n + suffix for suffix in KERNEL_SUFFIXES for n in shared)]
    if text.strip() == "all":
        cuda = bool(device and device.startswith("cuda"))
        kinds = [k for k in KERNEL_SUFFIXES if cuda or KERNEL_SUFFIXES[k] != "flex"]
        names = list(layouts.LAYOUTS) + [n + k for k in kinds for n in shared]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise InputError(
            f"--layout: unknown layout {', '.join(map(repr, unknown)) or repr(text)}; "
            f"expected 'all' or a comma-separated list of {', '.join(known)}"
        )
    if device is not None and not device.startswith("cuda") and any(split_kernel(n)[1] == "flex" for n in names):
        raise InputError("--layout: the +flex layouts run FlexAttention, which has no backward pass on the CPU in "
                         "this torch; use --device cuda or drop +flex")  # fmt: skip
    return tuple(dict.fromkeys(["two-sequence", *names]))


def use_kernel(models, name: str) -> None:
    """Set each model's attention to what layout `name` runs: its kernel's (`attention.use`), or its own."""
    from dpo_ref.train import attention

    kernel = split_kernel(name)[1]
    for model in models:
        own = model.__dict__.setdefault("_bench_attention", model.config._attn_implementation)
        if kernel == "mask":
            if model.config._attn_implementation != own:
                model.set_attn_implementation(own)
        else:
            attention.use(model, kernel)


def pairs_for(shape: str, vocab: int, seed: int = 0) -> list[TokenizedPair]:
    rng = random.Random(seed)
    out = []
    for i in range(PAIRS):
        fixed = SHAPES[shape]
        p, c = fixed or (rng.randint(*MIXED["prompt"]), rng.randint(*MIXED["completion"]))
        r = c if fixed else rng.randint(*MIXED["completion"])
        ids = [rng.randrange(4, vocab) for _ in range(p + c + r)]
        out.append(TokenizedPair(ids[:p], ids[p : p + c], ids[p + c :], i))
    return out


def step(policy, reference, batch, beta: float = 0.1) -> float:
    from dpo_ref.losses import dpo_loss
    from dpo_ref.train.loop import SequenceScorer, scorer_inputs

    inputs = scorer_inputs(batch)
    logps, _ = SequenceScorer(policy)(**inputs)  # (2B,) chosen then rejected
    with torch.no_grad():
        ref, _ = SequenceScorer(reference)(**inputs)
    B = batch["index"].shape[0]
    loss = dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta=beta).losses.mean()
    loss.backward()
    return float(loss.detach())


def collated(pairs, layout: str, device) -> dict[str, torch.Tensor]:
    from dpo_ref.train.data import PreferenceCollator

    layout = split_kernel(layout)[0]
    if layout == "two-sequence":  # the trainer's own two-sequence path (2-D mask, right padding)
        batch = PreferenceCollator(0)(pairs)
    else:
        batch = layouts.collate(pairs, layout, 0, max_length=ROW_TOKENS)
    return {k: v.to(device) for k, v in batch.items()}


def models(size, device):
    size = replace(size, seq_len=max(size.seq_len, ROW_TOKENS))
    return bench_model(size, 0).to(device), bench_model(size, 1).to(device).eval()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timing(size, device, steps: int, chosen: tuple[str, ...], shapes=tuple(SHAPES)) -> dict:
    """shape -> layout -> median step time, tokens/s, ratio to two-sequence, the batch's rows x length."""
    policy, reference = models(size, device)
    out = {}
    for shape in shapes:
        pairs = pairs_for(shape, size.vocab)
        tokens = sum(len(p.prompt_ids) * 2 + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
        batches = {lay: collated(pairs, lay, device) for lay in chosen}
        times: dict[str, list[float]] = {lay: [] for lay in chosen}
        first = {}
        for i in range(steps + 1):
            for lay in chosen:
                policy.zero_grad(set_to_none=True)
                use_kernel((policy, reference), lay)
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
            if not abs(loss - base) <= AGREEMENT * abs(base):
                raise LayoutMismatch(f"{shape}: {lay} gives loss {loss!r}, two-sequence {base!r}: not the same step")
        med = {lay: statistics.median(t) for lay, t in times.items()}
        flops = {lay: forward_flops(batches[lay], split_kernel(lay)[1], size) for lay in chosen}
        out[shape] = {
            lay: {
                "median_s": med[lay],
                "runs_s": times[lay],
                "tokens_per_s": tokens / med[lay],
                "speedup": med["two-sequence"] / med[lay],
                "forward_gflops": flops[lay] / 1e9,
                "flop_ratio": flops["two-sequence"] / flops[lay],  # the speed-up if time followed arithmetic
                "rows": int(batches[lay]["input_ids"].shape[0]),
                "row_length": int(batches[lay]["input_ids"].shape[1]),
                "first_step_loss": first[lay],
            }
            for lay in chosen
        }
        out[shape]["tokens"] = tokens
    return out


def _vmhwm() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    return float("nan")


def memory_worker(spec: dict) -> None:
    """One layout and shape in a fresh CPU process: its peak RSS over the step in MB, printed as JSON."""
    device = torch.device("cpu")
    size = BenchSize(**spec["size"])
    policy, reference = models(size, device)
    batch = collated(pairs_for(spec["shape"], size.vocab), spec["layout"], device)
    use_kernel((policy, reference), spec["layout"])
    before = _vmhwm()
    step(policy, reference, batch)
    peak = _vmhwm() - before
    print("LAYOUT_MEMORY " + json.dumps({"peak_mb": peak}), flush=True)


def memory(size, device_name: str, chosen: tuple[str, ...], shapes=tuple(SHAPES)) -> dict:
    """shape -> layout -> peak MB of one step. On the CPU a fresh process per layout (the peak RSS cannot be
    reset); on CUDA in this process, `max_memory_allocated` reset before each step (the allocator's peak of live
    tensors, which the models and nothing else carry from one layout to the next)."""
    out = {}
    if device_name.startswith("cuda"):
        device = torch.device(device_name)
        policy, reference = models(size, device)
        for shape in shapes:
            pairs = pairs_for(shape, size.vocab)
            out[shape] = {}
            for lay in chosen:
                batch = collated(pairs, lay, device)
                use_kernel((policy, reference), lay)
                policy.zero_grad(set_to_none=True)
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                step(policy, reference, batch)
                torch.cuda.synchronize(device)
                out[shape][lay] = torch.cuda.max_memory_allocated(device) / 2**20
                del batch
        return out
    for shape in shapes:
        out[shape] = {}
        for lay in chosen:
            spec = {"size": asdict(size), "device": device_name, "shape": shape, "layout": lay}
            code = "import sys, json; from dpo_ref.bench.layouts import memory_worker as w; w(json.loads(sys.argv[1]))"
            run = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
            line = next((x for x in run.stdout.splitlines() if x.startswith("LAYOUT_MEMORY ")), None)
            if run.returncode != 0 or line is None:
                raise RuntimeError(f"the memory worker for {shape} {lay} failed: {run.stderr.strip()[-2000:]}")
            out[shape][lay] = json.loads(line.split(" ", 1)[1])["peak_mb"]
    return out


def run_layouts(size, device_name: str, steps: int, chosen: tuple[str, ...], shapes=tuple(SHAPES)) -> dict:
    """The whole layout bench; the dict `--json` writes (`docs/results/layouts.json`)."""
    torch.manual_seed(0)
    result = timing(size, torch.device(device_name), steps, chosen, shapes)
    peaks = memory(size, device_name, chosen, shapes)
    for shape in shapes:
        for lay in chosen:
            r = result[shape][lay]
            r["peak_mb"] = peaks[shape][lay]
            r["memory_ratio"] = peaks[shape][lay] / peaks[shape]["two-sequence"]
    out = {"device": device_name, "steps": steps, "layouts": list(chosen), "size": asdict(size), "shapes": result}
    if "prefix-sharing" in chosen:  # the issue's `train` target
        import tempfile

        with tempfile.TemporaryDirectory(prefix="dpo-ref-bench-train-") as folder:
            out["train_long_prompts"] = train_long_prompts(TRAIN_STEPS, TRAIN_REPEATS, folder, device_name)
    return out


def format_layouts(result: dict) -> str:
    head = f"{'shape':10} {'layout':24} {'step s':>8} {'x two-seq':>9} {'x FLOPs':>8} {'tokens/s':>9} {'peak MB':>8}"
    lines = [head + "  rows x length"]
    for shape, rows in result["shapes"].items():
        for lay in result["layouts"]:
            r = rows[lay]
            lines.append(
                f"{shape:10} {lay:24} {r['median_s']:8.3f} {r['speedup']:9.2f} "
                f"{r.get('flop_ratio', float('nan')):8.2f} {r['tokens_per_s']:9.0f} "
                f"{r['peak_mb']:8.0f}  {r['rows']} x {r['row_length']}"
            )
    t = result.get("train_long_prompts")
    if t:
        lines.append(
            f"dpo-ref train, {t['shape']['prompt']}-token prompts, {t['shape']['completion']}-token completions, "
            f"batch {t['shape']['batch']}, {t['steps']} steps: two-sequence {t['median_s']['two-sequence']:.1f} s, "
            f"--prefix-sharing {t['median_s']['prefix-sharing']:.1f} s ({t['speedup']:.2f}x); step-0 losses equal, "
            f"final losses {t['final_loss_rel_diff']:.1e} apart (relative)"
        )
    return "\n".join(lines)


TRAIN_STEPS, TRAIN_REPEATS = 10, 3
LONG_PROMPT = {"prompt": 240, "completion": 48, "pairs": 64, "batch": 8}  # the issue's `train` target shape


def train_long_prompts(steps: int, repeats: int, folder: str, device: str = "cpu") -> dict:
    """`dpo-ref train` with and without --prefix-sharing on long prompts (240-token prompts, 48-token completions,
    batch 8; the bench's Llama shape, 256 hidden and 4 layers, with 512 positions and the built-in character
    tokenizer, saved as a local `--model` directory, so one character is one token), whole runs
    interleaved (A B A B ...), `steps` DPO steps each, no warm-up. The step-0 losses must be equal (both ln 2) and
    the final losses within 1e-3 relative (the same updates in another float32 summation order)."""
    import os

    from dpo_ref.train.loop import TrainConfig, train
    from dpo_ref.train.model import TinyLlamaSize, build_tiny_model
    from dpo_ref.train.tasks import ALPHABET
    from dpo_ref.train.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    shape = TinyLlamaSize(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, max_position_embeddings=512)
    model_dir = os.path.join(folder, "model")
    build_tiny_model(tokenizer, 0, shape).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rng = random.Random(0)

    def text(n: int) -> str:
        return "".join(rng.choice(ALPHABET) for _ in range(n))

    data = os.path.join(folder, "long_prompts.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for _ in range(LONG_PROMPT["pairs"]):
            row = {"prompt": text(LONG_PROMPT["prompt"] - 1) + ">", "chosen": text(LONG_PROMPT["completion"])}
            row["rejected"] = text(LONG_PROMPT["completion"])
            f.write(json.dumps(row) + "\n")
    times: dict[str, list[float]] = {"two-sequence": [], "prefix-sharing": []}
    losses: dict[str, tuple[float, float]] = {}
    for r in range(repeats):
        for lay in times:
            cfg = TrainConfig(
                data=data, model=model_dir, out=os.path.join(folder, f"{lay}-{r}"), sft_steps=0, steps=steps, lr=1e-4,
                batch_size=LONG_PROMPT["batch"], eval_every=10**6, save_every=10**6, log_every=1, progress=False,
                prefix_sharing=lay == "prefix-sharing", overwrite=True, device=device,
            )  # fmt: skip
            t = time.perf_counter()
            history = train(cfg)["history"]
            times[lay].append(time.perf_counter() - t)
            losses[lay] = (history[0]["loss"], history[-1]["loss"])
    (first_a, last_a), (first_b, last_b) = losses["two-sequence"], losses["prefix-sharing"]
    if first_a != first_b or not abs(last_a - last_b) <= 1e-3 * abs(last_a):
        raise LayoutMismatch(
            f"train: prefix sharing losses {losses['prefix-sharing']}, two-sequence {losses['two-sequence']}"
        )
    med = {lay: statistics.median(t) for lay, t in times.items()}
    return {
        "shape": LONG_PROMPT, "steps": steps, "repeats": repeats, "runs_s": times, "median_s": med,
        "speedup": med["two-sequence"] / med["prefix-sharing"], "losses": losses,
        "final_loss_rel_diff": abs(last_a - last_b) / abs(last_a),
    }  # fmt: skip
