"""`dpo-ref` command line: one subcommand per module, imported only when that subcommand runs.

Each subcommand module defines `register(subparsers)`, which adds its parser and sets
`func=handler`, where `handler(args) -> int` returns the exit status. Bad input raises `InputError`
(or argparse's usage error): the user sees one line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import sys
from pathlib import Path

from dpo_ref.errors import OUTPUT_ERRNOS, InputError, output_failure

# subcommand -> module defining register(subparsers); listed here, loaded lazily
SUBCOMMANDS = {
    "train": "dpo_ref.train.cli",
    "experiment": "dpo_ref.experiments.run",
    "verify": "dpo_ref.oracle.cli",
    "matrix": "dpo_ref.oracle.matrix",
    "prove": "dpo_ref.proofs.cli",  # `proofs/` of a source checkout, see _module()
    "bench": "dpo_ref.bench.run",
}


def _module(name: str) -> str:
    """The module of a subcommand. In a source checkout (proofs/ next to this package, importable as
    `proofs`) the checkout's own proofs are used, never another install's `dpo_ref.proofs`."""
    module = SUBCOMMANDS[name]
    if module.startswith("dpo_ref.proofs"):
        checkout = Path(__file__).resolve().parent.parent / "proofs" / "__init__.py"
        try:
            spec = importlib.util.find_spec("proofs")
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and Path(spec.origin).resolve() == checkout:
            return "proofs" + module[len("dpo_ref.proofs") :]
    return module


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def package_version() -> str:
    """The installed distribution's version (pyproject.toml), or "unknown" when run from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dpo-ref")
    except PackageNotFoundError:
        return "unknown"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it (or there is none to show:
    a flag, or a default of None that the help explains in words)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or default == []
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        shown = " ".join(str(d) for d in default) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`dpo-ref train: error: ...`) and exit status 2.

    `--help` still prints the full usage, with every option's default; subcommand parsers inherit this class.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dpo-ref", description="Reference DPO / cDPO / IPO: train, verify others' code, prove the math."
    )
    parser.add_argument("--version", action="version", version=f"dpo-ref {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        module = _module(name)
        if (only is None or only == name) and _available(module):
            importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # "--version" alone loads no subcommand ("" matches none)
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else ("" if argv[:1] == ["--version"] else None)
    parser = build_parser(only)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"dpo-ref {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in OUTPUT_ERRNOS:
            raise
        print(output_failure(err, f"dpo-ref {args.command}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(f"dpo-ref {args.command}: interrupted", file=sys.stderr)
        return 128 + getattr(err, "signum", signal.SIGINT)
    finally:
        from dpo_ref.atomic import release_held

        release_held()  # the output locks the command took (dpo_ref.atomic)


def console() -> None:
    """The `dpo-ref` console script and `python -m dpo_ref`: `main`, then the exit.

    After `verify` the exit status is the verdict, so the process leaves with `os._exit` once its own output
    is flushed and its own scratch folders removed: the target's exit handlers (`atexit`, `__del__`, threads
    still running) cannot change the status. Other commands exit normally.
    """
    argv = sys.argv[1:]
    code = main(argv)
    if argv[:1] != ["verify"]:
        sys.exit(code)
    from dpo_ref.atomic import remove_scratch_dirs

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # stdout closed or full: the status still carries the verdict
            pass
    remove_scratch_dirs()
    os._exit(code)


if __name__ == "__main__":
    console()
