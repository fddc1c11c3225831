"""Every `dpo-ref` subcommand's `--help` starts with a one-line description and shows every option's default."""

from __future__ import annotations

import argparse
import re

import pytest

from dpo_ref.cli import DefaultsHelpFormatter, build_parser


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("dpo-ref",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


PARSERS = dict(_parsers(build_parser()))


def _entries(help_text: str) -> dict[str, str]:
    """option string -> its help entry (the option's lines in the 'options:' section, joined)."""
    entries, current = {}, None
    for line in help_text.split("options:", 1)[1].splitlines():
        if re.match(r"^  -", line):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def _shown(default) -> str | None:
    """How a default must appear in the help, or None when there is nothing to show (flags, None)."""
    if default is None or isinstance(default, bool) or default == [] or default is argparse.SUPPRESS:
        return None
    return " ".join(map(str, default)) if isinstance(default, list) else str(default)


def missing_defaults(parser: argparse.ArgumentParser) -> list[str]:
    entries = _entries(parser.format_help())
    bad = []
    for action in parser._actions:
        shown = _shown(action.default)
        if not action.option_strings or action.dest in ("help", "version") or shown is None:
            continue
        entry = entries.get(action.option_strings[0], "")
        if not action.help or shown not in entry.split("default", 1)[-1] or "default" not in entry:
            bad.append(f"{action.option_strings[0]} (default {shown}): {entry!r}")
    return bad


def test_every_subcommand_is_found():
    commands = {" ".join(path[1:]) for path in PARSERS}
    expected = {"train", "verify", "matrix", "prove", "bench", "experiment", "experiment overfit"}
    assert expected | {"experiment displacement", "experiment bandit"} <= commands


@pytest.mark.parametrize("path", [p for p in PARSERS if len(p) > 1], ids=lambda p: " ".join(p[1:]))
def test_subcommand_help_has_a_one_line_description_and_every_default(path):
    parser = PARSERS[path]
    description = parser.description or ""
    assert description.strip() and "\n" not in description, f"{' '.join(path)}: description {description!r}"
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", "version"):
            assert action.help and action.help.strip(), f"{' '.join(path)} {action.option_strings[0]} has no help"
    assert missing_defaults(parser) == []


def test_the_default_check_bites_on_a_plain_formatter():
    """argparse's own formatter does not show defaults: the check above must notice."""
    for formatter, bad in ((argparse.HelpFormatter, 1), (DefaultsHelpFormatter, 0)):
        parser = argparse.ArgumentParser(prog="x", formatter_class=formatter)
        parser.add_argument("--steps", type=int, default=150, help="updates")
        parser.add_argument("--flag", action="store_true", help="a flag has no default to show")
        assert len(missing_defaults(parser)) == bad
