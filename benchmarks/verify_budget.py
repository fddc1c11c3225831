"""Benchmark: wall time of `dpo-ref verify` with default settings against the budgets of the oracle issue.

    python benchmarks/verify_budget.py [--repeats 3] [--json docs/results/verify_budget.json]

Budgets (2 cores): a loss-level verify on a correct target <= 10 s, a log-prob verify <= 5 s, a pipeline
verify <= 20 s, a packed verify <= 5 s. Each verify runs
in a fresh interpreter (imports included, as a user sees it); the median of the repeats is printed beside the
budget, with the load average, since a busy machine moves the numbers. Not a test: timings are not asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [  # key in the JSON, label, verify arguments, budget in seconds
    ("loss_dpo", "loss, correct (dpo)", ["tests/corpus/loss_correct.py:per_example"], 10.0),
    ("loss_cdpo", "loss, correct (cdpo)", ["tests/corpus/loss_correct.py:cdpo", "--variant", "cdpo"], 10.0),
    ("loss_broken", "loss, broken (no reference)", ["tests/corpus/loss_broken.py:reference_unused"], None),
    (
        "logps",
        "logps, correct",
        ["tests/corpus/logps_correct.py:shift_gather_where", "--level", "logps"],
        5.0,
    ),
    (
        "pipeline",
        "pipeline, correct (TRL-style)",
        ["tests/corpus/pipeline_correct.py:trl_concatenated_forward", "--level", "pipeline"],
        20.0,
    ),
    (
        "packed",
        "packed, correct",
        ["tests/corpus/packed_correct.py:packed_segment_ids_index_add", "--level", "packed"],
        5.0,
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh interpreters per case (default 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the timings and the machine as JSON")
    args = parser.parse_args()
    from dpo_ref.docgen.results import check_results_path, machine, write_results

    if args.json:
        check_results_path(args.json)
    before = machine()
    cases = {}
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'case':32} {'median s':>9} {'budget s':>9}  runs")
    for key, label, argv, budget in CASES:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dpo_ref", "verify", *argv, "-q"], cwd=ROOT, capture_output=True)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        budget_s = f"{budget:9.1f}" if budget else f"{'-':>9}"
        print(f"{label:32} {median:9.1f} {budget_s}  {', '.join(f'{t:.1f}' for t in times)}")
        cases[key] = {"label": label, "argv": argv, "budget_s": budget, "median_s": median, "runs_s": times}
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        after = machine()["load_average"]
        write_results(args.json, {"machine": before, "load_average_after": after, "repeats": args.repeats, **cases})


if __name__ == "__main__":
    main()
