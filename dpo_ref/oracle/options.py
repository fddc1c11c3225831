"""The verify options, declared once: every interface is generated from `OPTIONS`.

One `VerifyOption` per setting of a verification. From the table come
  - the `dpo-ref verify` flags (`add_cli_arguments`) and how the parsed flags become `dpo_ref.verify`'s keywords
    (`from_cli`);
  - the pytest plugin's `--dpo-*` options (`add_pytest_options`) and how they are read back (`from_pytest`);
  - `dpo_ref.verify`'s keyword parameters (`api_signature`: its signature is generated) and their validation
    (`check_keywords`);
  - the argv of the `--isolate` child (`child_argv`), which must pass every option on.
Adding an option is one edit here (and, when it is a new setting of the checks, reading it in `make_config`).
Importing this module imports neither torch nor the numerical code: the pytest plugin reads it at start-up.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from dpo_ref.errors import InputError
from dpo_ref.variants import ALIASES, CLASSIC_VARIANTS, VARIANTS

CLI, PYTEST, API, ISOLATE = "cli", "pytest", "api", "isolate"
EVERYWHERE = frozenset({CLI, PYTEST, API, ISOLATE})
LEVELS = ("loss", "logps", "packed", "pipeline", "library")
REDUCTIONS = ("auto", "none", "mean", "sum")


def read_xfail_file(path: str) -> list[str]:
    """Check names, one per line (`#` starts a comment; a TOML-style `name = "reason"` line also works)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise InputError(f"xfail file {path!r} cannot be read: {err.strerror}") from None
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("["):
            continue
        name = line.split("=", 1)[0].strip().strip('"').strip("'")
        if name:
            names.append(name)
    return names


def parse_coefficients(items: list[str]) -> dict:
    """`--coef NAME=VALUE` pairs as a dict; `InputError` naming a malformed one."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise InputError(f"--coef {item!r}: expected NAME=VALUE with a number, e.g. --coef gamma=0.5")
    return out


def _check_names(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _xfail_file(path: str | None) -> list[str]:

    return read_xfail_file(path) if path else []


@dataclass(frozen=True)
class VerifyOption:
    """One verify setting. `kind`: "value" (one argument), "flag" (store_true), "bool" (--x / --no-x),
    "append" (repeatable). `to_api` turns the command-line value into the API keyword's value; `interfaces`
    says where it exists (an output option of the command line is not a keyword of `verify`)."""

    name: str  # the API keyword and the argparse dest
    help: str
    kind: str = "value"
    default: object = None
    type: Callable | None = None
    choices: tuple | None = None
    metavar: str | None = None
    flag: str | None = None  # the CLI flag (default --name-with-dashes)
    short: str | None = None  # a short CLI flag (-q)
    api_name: str | None = None  # the API keyword when it differs from `name` (the CLI takes a file, say)
    api_default: object = None
    to_api: Callable | None = None
    interfaces: frozenset = EVERYWHERE

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def pytest_flag(self) -> str:
        return "--dpo-" + self.cli_flag[2:]

    @property
    def keyword(self) -> str:
        return self.api_name or self.name

    def argparse_kwargs(self) -> dict:
        if self.kind == "flag":
            return {"action": "store_true", "default": False, "help": self.help}
        if self.kind == "bool":
            return {"action": argparse.BooleanOptionalAction, "default": None, "help": self.help}
        kw: dict = {"default": [] if self.kind == "append" else self.default, "help": self.help}
        if self.kind == "append":
            kw["action"] = "append"
        for key in ("type", "choices", "metavar"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        return kw

    def argv(self, value) -> list[str]:
        """The command-line form of `value` (what `--isolate` passes to its child)."""
        if self.kind == "flag":
            return [self.short or self.cli_flag] if value else []
        if self.kind == "bool":
            return [] if value is None else [self.cli_flag if value else "--no-" + self.cli_flag[2:]]
        if self.kind == "append":
            return [x for item in value for x in (self.cli_flag, str(item))]
        if value is None or value == self.default:
            return []
        return [self.cli_flag, repr(value) if isinstance(value, float) else str(value)]


_VARIANT_HELP = (
    f"the loss TARGET claims to compute: {', '.join(CLASSIC_VARIANTS)}, or at the loss level any other variant "
    "of the registry (docs/variants.md; length-normalised ones get chosen_lengths=, rejected_lengths=)"
)

OPTIONS: tuple[VerifyOption, ...] = (
    VerifyOption(
        "level",
        "loss: fn(pc, pr, rc, rr, beta=) -> losses; logps: fn(logits, labels) -> (B,); packed: "
        "fn(logits (1, N, V), labels (1, N), cu_seqlens (S+1,)) -> (S,); pipeline: fn(model, tokenizer, examples) "
        "-> (chosen_logps, rejected_logps); library: an adapter's "
        "end-to-end run (default: loss, or every level an adapter supports)",
        choices=LEVELS,
    ),
    VerifyOption("variant", _VARIANT_HELP, default="dpo", choices=VARIANTS + ALIASES, metavar="VARIANT"),
    VerifyOption(
        "coef",
        "a variant's fixed coefficient (tau, gamma, delta, ...); repeatable; default: drawn",
        kind="append",
        metavar="NAME=VALUE",
        api_name="coefficients",
        to_api=lambda v: parse_coefficients(v) or None,
    ),
    VerifyOption("beta", "fixed beta (tau for IPO); default: drawn from 1e-3 to 1e3", type=float),
    VerifyOption("label_smoothing", "cdpo's eps; default: drawn from (0, 0.49]", type=float),
    VerifyOption(
        "average",
        "log-prob level: length-averaged log-probs (default: on for ipo-mean, off otherwise)",
        kind="bool",
        interfaces=frozenset({CLI, API, ISOLATE}),
    ),
    VerifyOption(
        "reduction",
        "what a loss-level TARGET returns: auto accepts per-example losses or their batch mean; a batch sum "
        "fails unless declared with --reduction sum (default: auto)",
        default="auto",
        choices=REDUCTIONS,
        api_default="auto",
    ),
    VerifyOption(
        "strict",
        "also demand float64-exact results on float64 inputs and count the advisory (robustness) checks",
        kind="flag",
        api_default=False,
    ),
    VerifyOption(
        "fail_fast",
        "stop at the first failing check: a verdict sooner, one reproduction (the diagnosis still runs)",
        kind="flag",
        api_default=False,
        interfaces=frozenset({CLI, API, ISOLATE}),
    ),
    VerifyOption(
        "convention",
        "pipeline level: the tokenisation convention, separate|joint|diverge|diverge-pair[+bos][+eos|+space-eos] "
        "(default: detected and reported)",
        metavar="CONVENTION",
    ),
    VerifyOption(
        "max_examples",
        "Hypothesis examples per check (default 100; mpmath-checked variants: 25; pipeline: 20)",
        type=int,
    ),
    VerifyOption(
        "checks",
        "comma-separated check names to run (default: all)",
        to_api=_check_names,
        interfaces=frozenset({CLI, API, ISOLATE}),
    ),
    VerifyOption(
        "xfail_file",
        "file listing check names expected to fail, one per line",
        flag="--xfail-file",
        api_name="xfail",
        api_default=(),
        to_api=_xfail_file,
    ),
    VerifyOption(
        "quiet",
        "no reproductions in the text report",
        kind="flag",
        flag="--quiet",
        short="-q",
        interfaces=frozenset({CLI, ISOLATE}),
    ),  # fmt: skip
)
BY_NAME = {o.name: o for o in OPTIONS}


def _where(interface: str) -> tuple[VerifyOption, ...]:
    return tuple(o for o in OPTIONS if interface in o.interfaces)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """The `dpo-ref verify` flags."""
    for o in _where(CLI):
        flags = [o.short, o.cli_flag] if o.short else [o.cli_flag]
        parser.add_argument(*flags, dest=o.name, **o.argparse_kwargs())


def add_pytest_options(group) -> None:
    """The pytest plugin's `--dpo-*` options (the xfail file is `--dpo-xfail`)."""
    for o in _where(PYTEST):
        flag = "--dpo-xfail" if o.name == "xfail_file" else o.pytest_flag
        kw = o.argparse_kwargs()
        if o.kind == "bool":  # pytest's parser takes no BooleanOptionalAction
            kw = {"action": "store_true", "default": None, "help": o.help}
        group.addoption(flag, dest="dpo_" + o.name, **kw)


def _to_api(values: dict, interface: str) -> dict:
    out = {}
    for o in _where(interface):
        if API not in o.interfaces:
            continue
        value = values[o.name]
        out[o.keyword] = o.to_api(value) if o.to_api is not None else value
    return out


def from_cli(args: argparse.Namespace) -> dict:
    """`dpo_ref.verify`'s keywords from the parsed `dpo-ref verify` flags (level and variant included)."""
    return _to_api({o.name: getattr(args, o.name) for o in _where(CLI)}, CLI)


def from_pytest(config) -> dict:
    """`dpo_ref.verify`'s keywords from the pytest plugin's options."""
    return _to_api({o.name: config.getoption("dpo_" + o.name) for o in _where(PYTEST)}, PYTEST)


def child_argv(args: argparse.Namespace) -> list[str]:
    """Every option of this `dpo-ref verify` run as arguments for the `--isolate` child."""
    return [x for o in _where(ISOLATE) for x in o.argv(getattr(args, o.name))]


def api_keywords() -> dict[str, object]:
    """`dpo_ref.verify`'s option keywords and their defaults (level and variant are positional too)."""
    return {o.keyword: o.api_default for o in _where(API)}


def check_keywords(kwargs: dict, function: str = "verify") -> None:
    """`TypeError`, as Python gives for an explicit signature, naming an unknown keyword and the known ones."""
    known = [k for k in api_keywords() if k not in ("level", "variant")]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r} (it takes {', '.join(known)})")


def api_signature(extra_before: tuple[str, ...], extra_after: dict[str, object]) -> inspect.Signature:
    """The generated signature of `dpo_ref.verify`: `fn, level=None, variant="dpo", *, <options>, name, progress`."""
    P = inspect.Parameter
    params = [P(n, P.POSITIONAL_OR_KEYWORD) for n in extra_before]
    params += [P("level", P.POSITIONAL_OR_KEYWORD, default=None), P("variant", P.POSITIONAL_OR_KEYWORD, default="dpo")]
    params += [P(k, P.KEYWORD_ONLY, default=d) for k, d in api_keywords().items() if k not in ("level", "variant")]
    params += [P(k, P.KEYWORD_ONLY, default=d) for k, d in extra_after.items()]
    return inspect.Signature(params)
