"""`dpo-ref prove` / `python -m proofs`: run the derivations; print them as text, Markdown or a notebook.

The notebook (`--format notebook`) re-checks each step when run; see proofs/notebook.py.

Exit status: 0 if every step of every selected proof holds, 1 if a step fails (named on stderr),
2 for bad usage (unknown proof name, unwritable output path).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _input_error(message: str) -> Exception:
    # imported here: dpo_ref's package imports torch, which `python -m proofs` does not otherwise need
    from dpo_ref.errors import InputError

    return InputError(message)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        metavar="NAME",
        action="append",
        help="run only this proof (repeatable, or comma-separated); see --list for the names",
    )
    parser.add_argument(
        "--format", choices=("text", "markdown", "notebook"), default="text", help="output format (default: text)"
    )
    parser.add_argument("--lang", choices=("en", "zh"), default="en", help="language of names and prose (default: en)")
    parser.add_argument(
        "--output", metavar="FILE", help="write to FILE (atomically) instead of standard output (- is standard output)"
    )
    parser.add_argument(
        "--figures",
        metavar="DIR",
        help="also draw the lesson's plots into DIR as PNG files, atomically (docs/lesson; needs the plot extra)",
    )
    parser.add_argument("--list", action="store_true", help="list the proofs and the code each justifies, then exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="text format: show how each step was checked")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prove",
        help="run the executable derivations of DPO, IPO and cDPO",
        description="Run the sympy derivations of DPO, IPO and cDPO; every step is checked. "
        "Exit 0 if all steps hold, 1 if one fails (it is named), 2 on bad usage.",
    )
    add_arguments(parser)
    parser.set_defaults(func=handler)


def _selected(only: list[str] | None) -> list[str]:
    from . import MODULES

    if not only:
        return list(MODULES)
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODULES]
    if unknown or not names:
        bad = ", ".join(map(repr, unknown)) or "''"
        raise _input_error(f"--only: unknown proof {bad}; choose from {', '.join(MODULES)}")
    return list(dict.fromkeys(names))  # keep order, drop repeats


def _check_output(path: str) -> str:
    """InputError unless --output can be written as a regular file: never a directory, FIFO or device."""
    from dpo_ref.atomic import check_output_file  # no torch import

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise _input_error(f"--output: directory {folder!r} does not exist")
    check_output_file(path, "--output")
    return folder


def _check_figures(folder: str) -> None:
    """InputError unless the lesson's plots can be drawn into `folder`: matplotlib installed, and `folder` an
    existing directory or a new one in an existing directory. Creates nothing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise _input_error("--figures: the plots need matplotlib; install the plot extra (pip install -e '.[plot]')")
    target = os.path.abspath(folder)
    if os.path.exists(target) and not os.path.isdir(target):
        raise _input_error(f"--figures: {folder!r} is not a directory")
    if not os.path.isdir(os.path.dirname(target)):
        raise _input_error(f"--figures: directory {os.path.dirname(target)!r} does not exist")


def _write_figures(folder: str) -> list[str]:
    from .lesson import write_figures

    os.makedirs(folder, exist_ok=True)
    return write_figures(folder)


def _write_atomic(path: str, text: str) -> None:
    from dpo_ref.atomic import write_text_atomic  # no torch import

    _check_output(path)
    write_text_atomic(path, text)


def _emit(text: str) -> None:
    try:
        try:
            sys.stdout.write(text)
        except UnicodeEncodeError:  # a terminal that cannot show ✓ or Chinese: degrade, do not crash
            enc = sys.stdout.encoding or "ascii"
            sys.stdout.write(text.encode(enc, "backslashreplace").decode(enc))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`| head`): drop the rest quietly, keep the exit status
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def handler(args: argparse.Namespace) -> int:
    from . import get
    from . import render as R
    from .core import run_proof

    names = _selected(args.only)
    if args.output == "-":  # "-" is standard output, as for every command
        args.output = None
    if args.output:
        _check_output(args.output)  # fail before minutes of sympy, not after
        from dpo_ref.atomic import hold  # no torch import

        hold({"--output": args.output})  # one prove at a time writes it (dpo_ref.atomic)
    if args.figures:
        _check_figures(args.figures)
    lang = args.lang
    if args.list:
        lines = [f"{n}: {get(n).title(lang)}\n    {', '.join(get(n).justifies)}" for n in names]
        text = "\n".join(lines) + "\n"
        if args.output:
            _write_atomic(args.output, text)
        else:
            _emit(text)
        return 0

    text_mode = args.format == "text"
    stream = text_mode and not args.output  # print each proof as soon as it is checked
    chunks: list[str] = []

    def put(chunk: str) -> None:
        if stream:
            _emit(chunk)
        else:
            chunks.append(chunk)

    if text_mode:
        put(R.text_header(lang))
    results = []
    start = time.perf_counter()
    shown = names
    if not stream:  # nothing is printed until every proof is checked: show progress on stderr meanwhile
        from dpo_ref.progress import progress  # no torch import

        shown = progress(names, "dpo-ref prove")
    for position, name in enumerate(shown, 1):
        result = run_proof(get(name))
        results.append(result)
        if text_mode:
            put("\n" + R.text_proof(result, position, len(names), lang, args.verbose))
    if text_mode:
        put("\n" + R.text_summary(results, time.perf_counter() - start, lang))
    if text_mode:
        text = "".join(chunks)
    elif args.format == "notebook":
        from .notebook import notebook

        text = notebook(results, lang)
    else:
        text = R.markdown(results, lang)
    if args.output:
        _write_atomic(args.output, text)
    elif not stream:
        _emit(text)

    failures = R.failure_lines(results, "en")
    for line in failures:
        print(f"dpo-ref prove: {line}", file=sys.stderr)
    if args.figures and not failures:
        written = _write_figures(args.figures)
        print(f"dpo-ref prove: wrote {', '.join(written)}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m proofs`; the same options as `dpo-ref prove`."""
    parser = argparse.ArgumentParser(prog="python -m proofs", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    from dpo_ref.errors import OUTPUT_ERRNOS, InputError, output_failure

    try:
        return handler(args)
    except InputError as err:
        print(f"python -m proofs: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # standard output full (> /dev/full) or closed: one line, exit 1
        if err.errno not in OUTPUT_ERRNOS:
            raise
        print(output_failure(err, "python -m proofs"), file=sys.stderr)
        return 1
    finally:
        from dpo_ref.atomic import release_held

        release_held()
