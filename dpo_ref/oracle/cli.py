"""`dpo-ref verify TARGET`: does this code compute DPO / IPO correctly?

Exit status: 0 every check passed, 1 a check failed, 2 a usage or import error (one line on stderr).
Verifying imports and runs TARGET's code in this process; `--isolate` runs it in a child process with
a time limit, so a target that hangs or kills the interpreter fails the verification (exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import uuid

from dpo_ref.atomic import check_output_file, write_text_atomic
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
    p.add_argument("target", metavar="TARGET", help="path/to/file.py:name, package.module:name, trl or torchtune")
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
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from dpo_ref.oracle.api import verify
    from dpo_ref.oracle.options import read_xfail_file

    if args.max_examples is not None and args.max_examples < 1:
        raise InputError(f"--max-examples must be a positive integer, got {args.max_examples}")
    if args.timeout is not None and not args.isolate:
        raise InputError("--timeout needs --isolate (only a child process can be stopped safely)")
    if args.timeout is not None and not (0 < args.timeout < float("inf")):
        raise InputError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    parse_coefficients(args.coef)  # a malformed --coef is a usage error before anything runs
    if args.isolate:
        return run_isolated(args)
    if args.level == "library" and args.target not in ("trl", "torchtune"):
        raise InputError("--level library applies to the built-in adapters (trl, torchtune) only")
    if args.xfail_file:
        read_xfail_file(args.xfail_file)  # an unreadable file is a usage error before anything runs
    if args.json not in (None, "-"):
        check_json_path(args.json)
    to_json = args.json == "-"
    stream = sys.stderr if to_json else sys.stdout  # progress never mixes with a JSON report on stdout

    def progress(result) -> None:
        if not progress.started:
            level = args.level or ("loss" if args.target not in ("trl", "torchtune") else "every level it supports")
            print(f"dpo-ref verify: {args.target}  (level={level}, variant={args.variant})", file=stream)
            progress.started = True
        print(result.line(24), file=stream, flush=True)

    progress.started = False
    with _target_output_to_stderr(to_json):
        keywords = options.from_cli(args)
        keywords["level"] = args.level or ("loss" if args.target not in ("trl", "torchtune") else None)
        report = verify(args.target, **keywords, progress=progress)
    if to_json:
        print(report.to_json())
    else:
        print("")
        print(report.to_text(reproductions=not args.quiet, check_lines=not progress.started))
        if args.json:
            write_atomic(args.json, report.to_json() + "\n")
    return 0 if report.passed else 1


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


def _child_argv(args: argparse.Namespace, json_path: str) -> list[str]:
    """The same verification as `dpo-ref verify` arguments, its JSON report going to `json_path`: every option
    of the table (`dpo_ref.oracle.options`) is passed on."""
    return ["verify", args.target, "--json", json_path, *options.child_argv(args)]


TOKEN_VAR = "DPO_REF_VERIFY_TOKEN"


def run_isolated(args: argparse.Namespace) -> int:
    """`verify` in a child interpreter with a time limit; a hang or a crash is a failed verification (1).

    The child's report is relayed as it is (exit 0, 1, or 2 for a usage error); the child's JSON report
    is the proof that it finished, so a target that ends the interpreter early (`os._exit`, a signal)
    cannot pass for a conforming one. The child runs in a process group of its own and its output goes
    to files, not pipes, so a process it leaves running cannot keep this one waiting; on timeout, on
    Ctrl-C and when the child ends, every process carrying this run's token in its environment (the child
    and all it started, even in a session of its own) is killed.
    """
    import signal
    import subprocess
    import tempfile

    import dpo_ref

    timeout = TIMEOUT if args.timeout is None else args.timeout
    if args.json not in (None, "-"):  # checked before the run, not after it
        check_json_path(args.json)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(dpo_ref.__file__)))
    token = uuid.uuid4().hex
    env = {
        **os.environ,
        "PYTHONPATH": package_root + os.pathsep + os.environ.get("PYTHONPATH", ""),
        TOKEN_VAR: token,
    }
    with tempfile.TemporaryDirectory(prefix="dpo-ref-verify-") as scratch:
        report_path = os.path.join(scratch, "report.json")
        out_path, err_path = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
        command = [sys.executable, "-m", "dpo_ref", *_child_argv(args, report_path)]
        with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
            child = subprocess.Popen(command, env=env, stdout=out_f, stderr=err_f, start_new_session=True)
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_run(child, token)
                print(
                    f"dpo-ref verify: FAILED: {args.target} did not finish within {timeout:g} s (a hang?); "
                    "the child process was killed (--timeout sets the limit)",
                    file=sys.stderr,
                )
                return 1
            except KeyboardInterrupt:
                _kill_run(child, token)
                raise
            finally:
                _kill_run(child, token)  # whatever the target left running
        with open(out_path, encoding="utf-8", errors="replace") as f:
            out = f.read()
        with open(err_path, encoding="utf-8", errors="replace") as f:
            err = f.read()
        finished = os.path.exists(report_path)
        if child.returncode == 2 and not finished:  # a usage or import error, already one line
            sys.stderr.write(err)
            return 2
        if child.returncode not in (0, 1) or not finished:
            code = child.returncode
            how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            last = f"; its last message: {err.strip().splitlines()[-1]}" if err.strip() else ""
            print(
                f"dpo-ref verify: FAILED: {args.target} ended the interpreter before the checks finished ({how}{last})",
                file=sys.stderr,
            )
            return 1
        with open(report_path, encoding="utf-8") as f:
            report_json = f.read()
    if args.json == "-":
        sys.stderr.write(err)
        print(report_json.rstrip("\n"))
    else:
        sys.stdout.write(out)
        sys.stderr.write(err)
        if args.json:
            write_atomic(args.json, report_json)
    return child.returncode


def _kill_run(child, token: str) -> None:
    """Kill the child's process group and every process whose environment carries `token` (Linux: /proc)."""
    import signal

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    marker = f"{TOKEN_VAR}={token}".encode()
    if os.path.isdir("/proc"):
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        os.kill(int(pid), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue
    with contextlib.suppress(Exception):
        child.wait(timeout=5)


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
