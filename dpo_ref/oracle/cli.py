"""`dpo-ref verify TARGET`: does this code compute DPO / IPO correctly?

Exit status: 0 every check passed, 1 a check failed, 2 a usage or import error (one line on stderr).
Verifying imports and runs TARGET's code in this process; `--isolate` runs it in a child process with
a time limit, so a target that hangs or kills the interpreter fails the verification (exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from dpo_ref.atomic import check_output_file, hold, write_text_atomic
from dpo_ref.errors import InputError
from dpo_ref.oracle import options
from dpo_ref.oracle.options import parse_coefficients

TIMEOUT = 600.0  # seconds, the default limit of --isolate


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check a DPO/IPO loss or log-prob function (or TRL, torchtune) against the reference",
        description="Run the conformance checks on TARGET and print which pass; each failure comes with the "
        "smallest input that shows it, as a Python snippet. Exit 0 if it conforms, 1 if not, 2 on a usage error.",
    )
    p.add_argument("target", metavar="TARGET", help="path/to/file.py:name, package.module:name, or a built-in "
                   "adapter: trl, torchtune, openrlhf, openrlhf-packed, llamafactory")  # fmt: skip
    options.add_cli_arguments(p)  # the verification settings: dpo_ref.oracle.options.OPTIONS
    p.add_argument("--json", metavar="PATH", default=None, help="also write the report as JSON to PATH (- for stdout)")
    p.add_argument(
        "--isolate",
        action="store_true",
        help="run the checks in a child process: a TARGET that hangs (see --timeout) or kills the interpreter "
        "is reported as a failed verification (exit 1) instead of hanging or crashing this process",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"with --isolate: fail the verification if it has not finished after SECONDS (default {TIMEOUT:g})",
    )
    p.add_argument("--report-fd", type=int, default=None, help=argparse.SUPPRESS)  # the --isolate child's channel
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    if args.report_fd is not None:
        return _isolated_child(args)
    _check_arguments(args)
    hold({"--json": args.json})  # this process writes the report (never the --isolate child)
    if args.isolate:
        return run_isolated(args)
    to_json = args.json == "-"
    stream = sys.stderr if to_json else sys.stdout  # progress never mixes with a JSON report on stdout
    try:
        with _target_output_to_stderr(to_json):
            report = _verify(args, stream)
    except TargetCrashed as err:
        print(f"dpo-ref verify: FAILED: {err}", file=sys.stderr)
        return 1
    if to_json:
        print(report.to_json())
    else:
        print("")
        print(report.to_text(reproductions=not args.quiet, check_lines=False))
        if args.json:
            write_atomic(args.json, report.to_json() + "\n")
    return 0 if report.passed else 1


def _check_arguments(args: argparse.Namespace) -> None:
    """Every usage error, before the target is imported or anything is written."""
    from dpo_ref.oracle.options import read_xfail_file

    if args.max_examples is not None and args.max_examples < 1:
        raise InputError(f"--max-examples must be a positive integer, got {args.max_examples}")
    if args.timeout is not None and not args.isolate:
        raise InputError("--timeout needs --isolate (only a child process can be stopped safely)")
    if args.timeout is not None and not (0 < args.timeout < float("inf")):
        raise InputError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    parse_coefficients(args.coef)  # a malformed --coef is a usage error before anything runs
    from dpo_ref.oracle.targets import PIPELINE_ONLY

    if args.level not in (None, "pipeline") and args.target in PIPELINE_ONLY:
        raise InputError(f"{args.target} is verified at --level pipeline only, got --level {args.level}")
    if args.level == "library" and args.target not in ("trl", "torchtune"):
        raise InputError("--level library applies to the built-in adapters (trl, torchtune) only")
    if args.xfail_file:
        read_xfail_file(args.xfail_file)  # an unreadable file is a usage error before anything runs
    if args.json not in (None, "-"):
        check_json_path(args.json)


def _verify(args: argparse.Namespace, stream):
    """Run the checks, streaming one line per check to `stream`; the report. A target that raises
    SystemExit (`sys.exit` inside the loss) does not end verify with its exit status: that is a failure."""
    from dpo_ref.oracle.api import verify
    from dpo_ref.oracle.targets import ADAPTERS, PIPELINE_ONLY

    level = args.level or ("pipeline" if args.target in PIPELINE_ONLY else None if args.target in ADAPTERS else "loss")
    print(f"dpo-ref verify: {args.target}  (level={level or 'every level it supports'}, variant={args.variant})",
          file=stream, flush=True)  # fmt: skip
    keywords = {**options.from_cli(args), "level": level}
    try:
        return verify(args.target, **keywords, progress=lambda result: print(result.line(24), file=stream, flush=True))
    except SystemExit as exit_:
        raise TargetCrashed(f"{args.target} raised SystemExit({exit_.code!r}) while being checked") from None


class TargetCrashed(Exception):
    """The target ended the verification abnormally (SystemExit in-process; no signed report under --isolate)."""


def _isolated_child(args: argparse.Namespace) -> int:
    """The child side of `--isolate`: the secret is read before the target is imported, the report goes back
    signed over `--report-fd`, and the process leaves with `os._exit` (the target's exit handlers never run)."""
    from dpo_ref.atomic import remove_scratch_dirs
    from dpo_ref.oracle import isolate

    secret = isolate.read_secret()
    try:
        _check_arguments(args)
        report = _verify(args, sys.stdout)
        message = (
            "report",
            {"report": report.to_dict(), "text": report.to_text(reproductions=not args.quiet, check_lines=False)},
        )
        code = 0
    except InputError as err:
        message, code = ("usage", f"dpo-ref verify: error: {err}"), 2
    except TargetCrashed as err:
        print(f"dpo-ref verify: FAILED: {err}", file=sys.stderr)
        message, code = None, 1
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    remove_scratch_dirs()
    if message is not None:
        isolate.send(args.report_fd, secret, *message)
    os._exit(code)


@contextlib.contextmanager
def _target_output_to_stderr(active: bool):
    """While the target runs, what it prints (Python or C level, fd 1) goes to stderr, so `--json -` stays JSON."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def child_argv(args: argparse.Namespace) -> list[str]:
    """The same verification as `dpo-ref verify` arguments: every option of the table is passed on."""
    return ["verify", args.target, *options.child_argv(args)]


def run_isolated(args: argparse.Namespace) -> int:
    """`verify` in a child interpreter with a time limit (`dpo_ref.oracle.isolate`): the verdict is decided
    here from the child's signed report; a hang, a crash or a missing or forged report is a failed
    verification (1), a usage error in the child is relayed (2)."""
    from dpo_ref.oracle import isolate

    timeout = TIMEOUT if args.timeout is None else args.timeout
    to_json = args.json == "-"
    outcome = isolate.run_child(
        child_argv(args), timeout, args.target, out_stream=sys.stderr if to_json else sys.stdout
    )
    if outcome.code == 2:
        print(outcome.error, file=sys.stderr)
        return 2
    if outcome.report is None:
        print(f"dpo-ref verify: FAILED: {outcome.error}", file=sys.stderr)
        return 1
    report_json = json.dumps(outcome.report, indent=2)
    if to_json:
        print(report_json)
    else:
        print("")
        print(outcome.text)
        if args.json:
            write_atomic(args.json, report_json + "\n")
    return outcome.code


def check_json_path(path: str) -> None:
    """`--json PATH` must name a regular file (or none yet) in an existing directory, never a directory, FIFO
    or device (checked before anything runs)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"--json: directory {folder!r} does not exist")
    check_output_file(path, "--json")


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` without ever leaving it half-written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"--json: directory {folder!r} does not exist")
    write_text_atomic(path, text)


if __name__ == "__main__":  # pragma: no cover
    from dpo_ref.cli import main

    sys.exit(main(["verify", *sys.argv[1:]]))
