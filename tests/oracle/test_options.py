"""The verify options are declared once (`dpo_ref.oracle.options.OPTIONS`) and every interface is generated from
that table: the `dpo-ref verify` flags, the pytest plugin's `--dpo-*` options, `dpo_ref.verify`'s keywords and
the `--isolate` child's argv. An option added to the table appears in all four; an interface that declares an
option the table does not hold is a drift these tests catch."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

import dpo_ref
from dpo_ref.oracle import cli as oracle_cli
from dpo_ref.oracle import options

# the command's own arguments, not settings of a verification
OWN_CLI = {"target", "json", "isolate", "timeout", "report_fd", "help"}
OWN_API = {"fn", "name", "progress"}


def _verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    oracle_cli.register(parser.add_subparsers(dest="command"))
    return parser


def _cli_dests(parser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["verify"]
    return {a.dest for a in sub._actions} - OWN_CLI


class _Group:
    def __init__(self):
        self.dests = {}

    def addoption(self, *flags, dest=None, **kw):
        self.dests[dest or flags[0].lstrip("-").replace("-", "_")] = flags


def _pytest_dests() -> set[str]:
    from dpo_ref.oracle import pytest_plugin

    group = _Group()

    class Parser:
        def getgroup(self, *a, **k):
            return group

    pytest_plugin.pytest_addoption(Parser())
    return set(group.dests) - {"dpo_target"}


def _where(interface: str) -> set[str]:
    return {o.name for o in options.OPTIONS if interface in o.interfaces}


def drifts() -> list[str]:
    """Each interface whose declared options differ from the table's, with the difference."""
    out = []
    declared = {
        "cli": (_cli_dests(_verify_parser()), _where(options.CLI)),
        "pytest": (_pytest_dests(), {"dpo_" + n for n in _where(options.PYTEST)}),
        "api": (
            set(inspect.signature(dpo_ref.verify).parameters) - OWN_API,
            {options.BY_NAME[n].keyword for n in _where(options.API) if n in options.BY_NAME},
        ),
    }
    for interface, (have, want) in declared.items():
        if have != want:
            out.append(f"{interface}: {sorted(have ^ want)}")
    return out


def test_every_interface_declares_exactly_the_table():
    assert drifts() == []


def test_an_option_added_to_the_table_reaches_all_four_interfaces(monkeypatch):
    fake = options.VerifyOption("seed_offset", "a new setting", type=int, api_default=None)
    monkeypatch.setattr(options, "OPTIONS", (*options.OPTIONS, fake))
    parser = _verify_parser()
    assert "seed_offset" in _cli_dests(parser)
    assert "dpo_seed_offset" in _pytest_dests()
    args = parser.parse_args(["verify", "t.py:f", "--seed-offset", "3"])
    assert oracle_cli.child_argv(args)[-2:] == ["--seed-offset", "3"]
    assert options.from_cli(args)["seed_offset"] == 3
    assert "seed_offset" in options.api_signature(("fn",), {}).parameters
    options.check_keywords({"seed_offset": 3})  # a known keyword now


def test_a_drift_is_caught(monkeypatch):
    """verify's signature was generated at import; an option then missing from the table is a drift."""
    monkeypatch.setattr(options, "OPTIONS", tuple(o for o in options.OPTIONS if o.name != "strict"))
    monkeypatch.setattr(options, "BY_NAME", {o.name: o for o in options.OPTIONS})
    assert any(d.startswith("api:") and "strict" in d for d in drifts()), drifts()


def test_unknown_keyword_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="unexpected keyword argument 'stict'"):
        dpo_ref.verify(lambda *a, **k: None, stict=True)


def test_isolate_argv_round_trips_every_option():
    """Every option's command-line form parses back to the same value in the child."""
    parser = _verify_parser()
    argv = ["verify", "t.py:f", "--variant", "cdpo", "--beta", "0.3", "--label-smoothing", "0.2", "--no-average",
            "--reduction", "sum", "--strict", "--fail-fast", "--max-examples", "7", "--checks", "values,gradients",
            "--xfail-file", "x.txt", "-q", "--coef", "gamma=0.5", "--level", "loss"]  # fmt: skip
    args = parser.parse_args(argv)
    child = parser.parse_args(oracle_cli.child_argv(args))
    for o in options.OPTIONS:
        if options.ISOLATE in o.interfaces:
            assert getattr(child, o.name) == getattr(args, o.name), o.name
    assert dataclasses.is_dataclass(options.OPTIONS[0])
