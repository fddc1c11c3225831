"""Benchmark: the wall time of the README's test command, as a newcomer runs it, and its outcome counts.

    python benchmarks/suite_time.py [--json docs/results/suite.json] [-- PYTEST ARGS]

Runs `python -m pytest -n auto` (or the pytest arguments after `--`) in the repository, with the environment as
it is (set CI=1 yourself for the CI profile), and writes the wall time, the counts pytest reports and the machine
(cores, load average before and after: a busy machine moves the number). Run it on an idle machine. Not a test:
the time is not asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTCOME = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|deselected)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="also write the result and the machine as JSON")
    parser.add_argument("pytest_args", nargs="*", help="arguments for pytest after -- (default: -n auto)")
    args = parser.parse_args()
    from dpo_ref.docgen.results import check_results_path, machine, write_results

    if args.json:
        check_results_path(args.json)
    pytest_args = args.pytest_args or ["-n", "auto"]
    command = [sys.executable, "-m", "pytest", *pytest_args]
    before = machine()
    start = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    summary = (run.stdout.strip().splitlines() or [""])[-1]
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in OUTCOME.findall(summary)}
    print(summary)
    print(f"wall {wall:.1f} s on {os.cpu_count()} cores (load average before {before['load_average'][0]:.1f})")
    if args.json:
        write_results(
            args.json,
            {
                "machine": before,
                "load_average_after": machine()["load_average"],
                "command": ("CI=1 " if os.environ.get("CI") else "") + "pytest " + " ".join(pytest_args),
                "ci_profile": bool(os.environ.get("CI")),
                "wall_s": wall,
                "exit_status": run.returncode,
                "counts": counts,
                "summary": summary,
            },
        )
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
