"""Benchmark: wall time of `dpo-ref verify` with default settings against the budgets of the oracle issue.

    python benchmarks/verify_budget.py [--repeats 3]

Budgets (2 cores): a loss-level verify on a correct target <= 10 s, a log-prob verify <= 5 s. Each verify runs
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
CASES = [
    ("loss, correct (dpo)", ["tests/oracle_targets/correct_loss.py:per_example"], 10.0),
    ("loss, correct (cdpo)", ["tests/oracle_targets/correct_loss.py:cdpo", "--variant", "cdpo"], 10.0),
    ("loss, broken (no reference)", ["tests/oracle_targets/broken_loss.py:no_reference"], None),
    ("logps, correct", ["tests/oracle_targets/correct_logps.py:gather_log_softmax", "--level", "logps"], 5.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'case':32} {'median s':>9} {'budget s':>9}  runs")
    for label, argv, budget in CASES:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dpo_ref", "verify", *argv, "-q"], cwd=ROOT, capture_output=True)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        budget_s = f"{budget:9.1f}" if budget else f"{'-':>9}"
        print(f"{label:32} {median:9.1f} {budget_s}  {', '.join(f'{t:.1f}' for t in times)}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
