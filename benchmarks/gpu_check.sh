#!/usr/bin/env bash
# Everything GPU-specific in one call (about 8 minutes on an H100/H200-class GPU; each part has its own
# time limit, 540 s in all, under the device's 10-minute limit per command):
#
#   1. the CUDA tests            pytest -m gpu (bf16 step 0 = ln 2, live vs precomputed reference, bench path)
#   2. a bf16 training smoke run  dpo-ref train --device cuda on the built-in task; step 0 must be ln 2
#   3. dpo-ref bench on CUDA      a Qwen2.5-0.5B-shaped Llama, 1024 tokens, 8 pairs, against TRL's DPOTrainer:
#                                 step time, tokens/s, peak memory, their ratios and model FLOPs utilisation
#   4. dpo-ref bench --layout     the trainer's step in each batch layout (two-sequence, prefix sharing, packing,
#                                 both) side by side on CUDA: step time, tokens/s, peak memory and ratios
#   5. dpo-ref bench --memory     a Qwen2.5-0.5B-shaped Qwen2 built from a config (hidden 896, 24 layers, 14 heads,
#                                 2 kv heads, MLP 4864, vocab 151936, tied embeddings), 4 pairs x 1024 tokens, as
#                                 real `dpo-ref train` runs: bf16 + LoRA r=8, bf16 + FSDP (torchrun, one process),
#                                 full bf16; tokens/s, MFU = 6 N tokens/s / the GPU's dense bf16 peak (989 TFLOP/s
#                                 for an H100 or H200 SXM, dpo_ref.bench.shared.PEAK_TFLOPS) and CUDA peak memory. It
#                                 fails (exit 1) when a row could not run, FSDP included while --fsdp is missing
#
# Usage: benchmarks/gpu_check.sh [OUTDIR]   (default gpu_check_out; results in OUTDIR/*.json and *.log)
# Needs the test and bench extras: pip install -e ".[test,bench]". Exit status: 0 all passed, 3 no GPU
# (nothing run), otherwise the status of the first part that failed. Put the printed numbers, with the GPU
# named, in docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_out}"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device is visible to torch; nothing was run" >&2
    exit 3
fi
mkdir -p "$OUT"
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}')" | tee "$OUT/device.log"

echo "== 1/5 CUDA tests" | tee -a "$OUT/device.log"
timeout 90 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$OUT/tests.log" | tail -5

echo "== 2/5 bf16 training smoke run (built-in task, 100 SFT + 40 DPO steps)" | tee -a "$OUT/device.log"
timeout 90 "$PY" -m dpo_ref train --device cuda --sft-steps 100 --steps 40 --eval-every 20 --out "$OUT/smoke" \
    --overwrite --no-progress 2>&1 | tee "$OUT/smoke.log"
"$PY" - "$OUT/smoke/metrics.jsonl" <<'PY'
import json, math, sys
records = [json.loads(line) for line in open(sys.argv[1])]
first = records[0]["loss"]
print(f"gpu_check: bf16 step-0 loss {first:.8f}, |loss - ln 2| = {abs(first - math.log(2)):.1e}")
sys.exit(0 if abs(first - math.log(2)) < 1e-6 else 1)
PY

echo "== 3/5 dpo-ref bench --size 0.5b on CUDA against TRL" | tee -a "$OUT/device.log"
timeout 150 "$PY" -m dpo_ref bench --size 0.5b --device cuda --threads 4 --steps 5 --warmup 2 --repeats 1 \
    --no-verify --json "$OUT/bench_0.5b.json" 2>&1 | tee "$OUT/bench.log"

echo "== 4/5 dpo-ref bench --layout all on CUDA (batch layouts side by side)" | tee -a "$OUT/device.log"
timeout 110 "$PY" -m dpo_ref bench --layout all --device cuda --threads 4 --steps 5 --json "$OUT/layouts.json" \
    2>&1 | tee "$OUT/layouts.log"
echo "== 5/5 dpo-ref bench --memory 0.5b on CUDA (bf16 + LoRA, bf16 + FSDP on one process, full bf16)" | tee -a "$OUT/device.log"
timeout 130 "$PY" -m dpo_ref bench --memory 0.5b --memory-rows lora-bf16,fsdp-x1-bf16,full-bf16 --device cuda \
    --threads 4 --steps 6 --json "$OUT/memory_0.5b.json" 2>&1 | tee "$OUT/memory.log"
"$PY" - "$OUT/memory_0.5b.json" <<'PY'
import json, sys

result = json.load(open(sys.argv[1]))
print(f"gpu_check: {result['device_name']}, MFU against {result['peak_tflops']} TFLOP/s (dense bf16)")
missing = []
for row, r in result["models"]["0.5b"]["rows"].items():
    if not r.get("available"):
        missing.append(row)
        print(f"gpu_check: {row}: {r['note']}")
        continue
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "unknown (GPU not in PEAK_TFLOPS)"
    print(f"gpu_check: {row}: {r['tokens_per_s']:.0f} tokens/s, MFU {mfu}, CUDA peak {r['peak_mb'] / 1024:.2f} GiB")
sys.exit(f"gpu_check: part 5 FAILED: {', '.join(missing)} did not run" if missing else 0)
PY
echo "gpu_check: all passed; results in $OUT/"
