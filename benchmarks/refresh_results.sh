#!/usr/bin/env bash
# Re-measure every figure the docs quote, then rewrite the figures in README.md and docs/*.md.
#
#   benchmarks/refresh_results.sh [--quick] [--no-suite] [--no-full] [--no-bench]
#
# Run it from a checkout with the extras installed (pip install -e ".[test,compare,bench,plot]") on an IDLE
# machine: the times and ratios move with load, and each results file records the load average it ran under.
# Each command writes one file of docs/results/ (atomically; a failed command leaves the old file in place and
# stops the script), then `python -m dpo_ref.docgen.results refresh` rewrites the quoted figures and
# `python -m dpo_ref.docgen.results check` confirms them. About 45 minutes on 2 cores; --quick skips the benches
# (TRL comparison, memory) and the suite (about 5 minutes), --no-suite / --no-bench skip one of them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=docs/results
run_suite=1 run_full=1 run_bench=1
for arg in "$@"; do
    case "$arg" in
        --quick) run_suite=0 run_full=0 run_bench=0 ;;
        --no-full) run_full=0 ;;
        --no-suite) run_suite=0 ;;
        --no-bench) run_bench=0 ;;
        *) echo "refresh_results.sh: unknown option $arg (--quick, --no-suite, --no-full, --no-bench)" >&2; exit 2 ;;
    esac
done
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, whatever is installed
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
step() { echo "== $*" >&2; }

step "default training run -> $OUT/train.json"
# from a scratch directory, so the printed output paths are the default runs/dpo/...
(cd "$SCRATCH" && python -m dpo_ref train --no-progress --json "$ROOT/$OUT/train.json")

for name in overfit displacement bandit; do
    step "experiment $name -> $OUT/$name.json"
    python -m dpo_ref experiment "$name" --out "$SCRATCH/$name" --json "$OUT/$name.json"
done

step "log-prob memory -> $OUT/logps_memory.json"
python benchmarks/logps_memory.py --json "$OUT/logps_memory.json"

step "batch layouts -> $OUT/layouts.json"
python -m dpo_ref bench --layout all --steps 3 --threads 2 --json "$OUT/layouts.json"

step "verify budgets -> $OUT/verify_budget.json"
python benchmarks/verify_budget.py --repeats 3 --json "$OUT/verify_budget.json"

if [ "$run_bench" = 1 ]; then
    step "bench vs TRL -> $OUT/bench.json"
    python -m dpo_ref bench --steps 4 --repeats 3 --json "$OUT/bench.json"
    step "memory per option -> $OUT/memory.json"
    python -m dpo_ref bench --memory all --threads 2 --json "$OUT/memory.json"
fi

step "rewriting the quoted figures"
python -m dpo_ref.docgen.results refresh  # before the suite runs: tests/meta/test_doc_results.py checks them

if [ "$run_suite" = 1 ]; then
    step "the README's test command -> $OUT/suite.json"
    python benchmarks/suite_time.py --json "$OUT/suite.json" || echo "the suite failed: see $OUT/suite.json" >&2
fi
if [ "$run_full" = 1 ]; then
    step "the full tier (what CI runs) -> $OUT/suite_full.json"
    python benchmarks/suite_time.py --json "$OUT/suite_full.json" -- -n auto --full \
        || echo "the full tier failed: see $OUT/suite_full.json" >&2
fi
if [ "$run_suite" = 1 ] || [ "$run_full" = 1 ]; then
    python -m dpo_ref.docgen.results refresh
fi
python -m dpo_ref.docgen.results check
