"""`dpo-ref verify TARGET`: does this code compute DPO / IPO correctly?

Exit status: 0 every check passed, 1 a check failed, 2 a usage or import error (one line on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys

from dpo_ref.atomic import write_text_atomic
from dpo_ref.errors import InputError

LEVELS = ("loss", "logps", "library")
VARIANTS = ("dpo", "cdpo", "ipo", "ipo-mean")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check a DPO/IPO loss or log-prob function (or TRL, torchtune) against the reference",
        description="Run the conformance checks on TARGET and print which pass; each failure comes with the "
        "smallest input that shows it, as a Python snippet. Exit 0 if it conforms, 1 if not, 2 on a usage error.",
    )
    p.add_argument("target", metavar="TARGET", help="path/to/file.py:name, package.module:name, trl or torchtune")
    p.add_argument(
        "--level",
        choices=LEVELS,
        default=None,
        help="loss: fn(pc, pr, rc, rr, beta=) -> losses; logps: fn(logits, labels) -> (B,); "
        "library: an adapter's end-to-end run (default: loss, or every level an adapter supports)",
    )
    p.add_argument("--variant", choices=VARIANTS, default="dpo", help="the loss TARGET claims to compute")
    p.add_argument("--beta", type=float, default=None, help="fixed beta (tau for IPO); default: drawn from 1e-3 to 1e3")
    p.add_argument("--label-smoothing", type=float, default=None, help="cdpo's eps; default: drawn from (0, 0.49]")
    p.add_argument(
        "--average",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log-prob level: length-averaged log-probs (default: on for ipo-mean, off otherwise)",
    )
    p.add_argument("--max-examples", type=int, default=None, help="Hypothesis examples per check (default 100)")
    p.add_argument("--checks", default=None, help="comma-separated check names to run (default: all)")
    p.add_argument("--xfail-file", default=None, help="file listing check names expected to fail, one per line")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the report as JSON to PATH (- for stdout)")
    p.add_argument("-q", "--quiet", action="store_true", help="no reproductions in the text report")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from dpo_ref.oracle.api import DEFAULT_MAX_EXAMPLES, read_xfail_file, verify

    if args.max_examples is not None and args.max_examples < 1:
        raise InputError(f"--max-examples must be a positive integer, got {args.max_examples}")
    if args.level == "library" and args.target not in ("trl", "torchtune"):
        raise InputError("--level library applies to the built-in adapters (trl, torchtune) only")
    xfail = read_xfail_file(args.xfail_file) if args.xfail_file else ()
    checks = [c.strip() for c in args.checks.split(",") if c.strip()] if args.checks else None
    report = verify(
        args.target,
        level=args.level or ("loss" if args.target not in ("trl", "torchtune") else None),
        variant=args.variant,
        beta=args.beta,
        label_smoothing=args.label_smoothing,
        average=args.average,
        max_examples=args.max_examples or DEFAULT_MAX_EXAMPLES,
        checks=checks,
        xfail=xfail,
    )
    if args.json == "-":
        print(report.to_json())
    else:
        print(report.to_text(reproductions=not args.quiet))
        if args.json:
            write_atomic(args.json, report.to_json() + "\n")
    return 0 if report.passed else 1


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` without ever leaving it half-written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"--json: directory {folder!r} does not exist")
    write_text_atomic(path, text)


if __name__ == "__main__":  # pragma: no cover
    from dpo_ref.cli import main

    sys.exit(main(["verify", *sys.argv[1:]]))
