"""Equation -> code -> proof -> test: the table of docs/formulas.md, generated from the code.

A *formula* is a public function of `FORMULA_MODULES` (every other public function there is listed in
`NOT_FORMULAS` with the reason). Its docstring's first line says what it computes, and two sentences name
its derivation and the properties that check it:

    Proof: `dpo-loss`, `cdpo`. Properties: `properties.check_values`, `properties.check_optimum`.

(`Proof: none yet.` when no derivation in `proofs/` justifies it.) The table is built from three sources, so
that nothing is written twice:

- **derivation**: every proof whose `justifies` lists the function (`proofs.all_proofs()`), linked to its module
  and to its section of the lesson; a new proof shows up here by itself once registered in `proofs.MODULES`;
- **properties**: the docstring's names, each a function of `dpo_ref/checks/properties.py` (the classic losses'
  catalogue), `dpo_ref/checks/family_properties.py` (the loss family) or `tests/proofs/test_proofs_linked.py`
  (the checks against the sympy derivations);
- **tests**: the test files that run those properties on dpo_ref's own functions (`PROPERTY_TESTS`).

`python -m dpo_ref.docgen.formulas --output docs/formulas.md` writes the table; `problems()` lists what is out of
sync (a formula without docstring lines, a docstring that names a proof that does not justify the function or
misses one that does, an unknown property, a formula without tests), and `tests/reference/test_formulas.py` asserts that
there is none and that docs/formulas.md is the generated text.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import inspect
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: dpo_ref/docgen/ -> .
OUTPUT = ROOT / "docs" / "formulas.md"

FORMULA_MODULES = ("dpo_ref.losses", "dpo_ref.logps", "dpo_ref.rpo", "dpo_ref.plackett_luce", "dpo_ref.family")
NOT_FORMULAS = {
    "dpo_ref.losses.compute_dtype": "the output-dtype rule",
    "dpo_ref.losses.check_positive_scalar": "input validation",
    "dpo_ref.losses.check_label_smoothing": "input validation",
    "dpo_ref.losses.check_probability": "input validation",
    "dpo_ref.losses.check_finite_scalar": "input validation",
    "dpo_ref.losses.check_lengths": "input validation",
    "dpo_ref.losses.check_logps": "input validation",
    "dpo_ref.losses.real_number": "input validation",
    "dpo_ref.logps.check_cu_seqlens": "input validation",
    "dpo_ref.logps.check_scored_finite": "input validation",
    "dpo_ref.logps.accumulation_dtype": "the half-precision-to-float32 rule",
    "dpo_ref.logps.check_logits_labels": "input validation",
    "dpo_ref.logps.shift_labels": "index bookkeeping of the one-token shift that sequence_logps defines",
}
# property module -> (where its functions are defined, the test files that run them on dpo_ref's functions)
PROPERTY_SOURCES = {
    "properties": "dpo_ref/checks/properties.py",
    "family_properties": "dpo_ref/checks/family_properties.py",
    "packed_properties": "dpo_ref/checks/packed_properties.py",
    "test_proofs_linked": "tests/proofs/test_proofs_linked.py",
}
# where each property module's checks are run on dpo_ref's own functions (the catalogue is run by
# tests/checks/test_properties.py): a named property must be called there
PROPERTY_RUNNERS = {
    "properties": "dpo_ref/oracle/catalogue.py",
    "family_properties": "tests/reference/test_family.py",
    "packed_properties": "dpo_ref/oracle/packed.py",
    "test_proofs_linked": "tests/proofs/test_proofs_linked.py",
}
PROPERTY_TESTS = {
    "properties": ("tests/checks/test_properties.py", "tests/checks/test_properties_bite.py"),
    "family_properties": ("tests/reference/test_family.py", "tests/checks/test_family_bite.py"),
    "packed_properties": ("tests/oracle/test_levels_pipeline_packed.py",),
    "test_proofs_linked": ("tests/proofs/test_proofs_linked.py",),
}

_NAMES = r"((?:\s*`[^`]+`,?)+)"
PROOF_LINE = re.compile(r"Proofs?:(?:" + _NAMES + r"|\s*(none[^.]*))\.", re.DOTALL)
PROPERTY_LINE = re.compile(r"Propert(?:y|ies):" + _NAMES + r"\.", re.DOTALL)


def _proofs_package():
    """`proofs/` of this checkout when importable as `proofs`, else the installed `dpo_ref.proofs`."""
    try:
        import proofs

        if Path(proofs.__file__).resolve().parent == ROOT / "proofs":
            return proofs
    except ImportError:
        pass
    return importlib.import_module("dpo_ref.proofs")


@dataclass
class Formula:
    name: str  # dpo_ref.losses.dpo_loss
    summary: str  # the docstring's first displayed formula (an indented line with "="), else its first line
    path: str  # dpo_ref/losses.py
    proofs_named: tuple[str, ...] | None  # the docstring's proof slugs; () for "none yet"; None: no Proof line
    properties: tuple[str, ...] | None  # the docstring's property names; None: no Properties line
    proofs: tuple[str, ...] = ()  # slugs of the proofs whose `justifies` lists it (lesson order)
    tests: tuple[str, ...] = ()


def _display(doc: str) -> str:
    """The loss the docstring displays (an indented line `L... = ...`), else its first displayed formula (an
    indented line holding "="), else its first line."""
    shown = [" ".join(line.split()) for line in doc.splitlines()[1:] if line.startswith("    ") and "=" in line]
    losses = [line for line in shown if re.match(r"L\S* = |L\(", line)]
    return (losses or shown or doc.splitlines()[:1] or [""])[0]


def _names(group: str | None) -> tuple[str, ...]:
    return tuple(re.findall(r"`([^`]+)`", group or ""))


def public_functions() -> dict[str, object]:
    """Every public function defined in `FORMULA_MODULES`, by qualified name."""
    out = {}
    for module_name in FORMULA_MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == module_name:
                out[f"{module_name}.{name}"] = obj
    return out


def formulas() -> list[Formula]:
    """The formulas in module order, with the proofs that justify them and the tests of their properties."""
    justified: dict[str, list[str]] = {}
    for proof in _proofs_package().all_proofs():
        for name in proof.justifies:
            justified.setdefault(name, []).append(proof.name)
    rows = []
    for name, fn in public_functions().items():
        if name in NOT_FORMULAS:
            continue
        doc = inspect.getdoc(fn) or ""
        proof_match, property_match = PROOF_LINE.search(doc), PROPERTY_LINE.search(doc)
        properties = _names(property_match.group(1)) if property_match else None
        tests = sorted({t for p in properties or () for t in PROPERTY_TESTS.get(p.split(".")[0], ())})
        rows.append(
            Formula(
                name=name,
                summary=_display(doc),
                path=inspect.getsourcefile(fn).replace(str(ROOT) + "/", ""),
                proofs_named=_names(proof_match.group(1)) if proof_match else None,
                properties=properties,
                proofs=tuple(justified.get(name, ())),
                tests=tuple(tests),
            )
        )
    return rows


@functools.cache
def _source(path: str) -> str:
    return (ROOT / path).read_text(encoding="utf-8")


@functools.cache
def _functions(path: str) -> frozenset[str]:
    """The names of the top-level functions of a source file (read, not imported: tests/ is no package)."""
    return frozenset(node.name for node in ast.parse(_source(path)).body if isinstance(node, ast.FunctionDef))


def problems(rows: list[Formula] | None = None) -> list[str]:
    """What is out of sync between the formulas' docstrings, the proofs and the tests (empty when nothing)."""
    rows = formulas() if rows is None else rows
    out = []
    for f in rows:
        if f.proofs_named is None or f.properties is None:
            out.append(f"{f.name}: its docstring lacks the 'Proof: ...' or 'Properties: ...' sentence")
            continue
        if set(f.proofs_named) != set(f.proofs):
            out.append(
                f"{f.name}: its docstring names proofs {list(f.proofs_named)} but the proofs justifying it are "
                f"{list(f.proofs)} (each proof's `justifies`)"
            )
        for prop in f.properties:
            module, _, func = prop.partition(".")
            if module not in PROPERTY_SOURCES or func not in _functions(PROPERTY_SOURCES[module]):
                out.append(f"{f.name}: property {prop!r} is not a function of {sorted(PROPERTY_SOURCES)}")
            elif not re.search(rf"\b{func}\(", _source(PROPERTY_RUNNERS[module])):
                out.append(f"{f.name}: property {prop!r} is never run by {PROPERTY_RUNNERS[module]}")
        if not f.tests:
            out.append(f"{f.name}: no test runs its properties")
    return out


def _module_of(slug: str, modules: dict[str, str]) -> str:
    """The module of proof `slug` in proofs/ (registered in `proofs.MODULES`; by convention the slug with "_")."""
    return modules.get(slug, slug.replace("-", "_"))


def sentence(proofs: tuple[str, ...], properties: tuple[str, ...]) -> str:
    """The docstring sentence naming a formula's proofs and properties."""
    named = ", ".join(f"`{slug}`" for slug in proofs) if proofs else "none yet"
    return f"Proof: {named}. Properties: " + ", ".join(f"`{p}`" for p in properties) + "."


def _wrapped(text: str, indent: str, width: int = 116) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(indent) + len(line) + 1 + len(word) > width:
            lines.append(indent + line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, indent + line]


def synced_source(source: str, function: str, proofs: tuple[str, ...]) -> str:
    """`source` with the 'Proof: ...' paragraph of `function`'s docstring naming `proofs` (its properties kept)."""
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == function)
    lines = source.split("\n")
    doc = node.body[0]
    for i in range(doc.lineno - 1, doc.end_lineno):
        if lines[i].lstrip().startswith("Proof:"):
            end = i
            while not lines[end].rstrip().endswith(".") or PROPERTY_LINE.search(" ".join(lines[i : end + 1])) is None:
                end += 1
            paragraph = " ".join(line.strip() for line in lines[i : end + 1])
            properties = _names(PROPERTY_LINE.search(paragraph).group(1))
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            lines[i : end + 1] = _wrapped(sentence(proofs, properties), indent)
            return "\n".join(lines)
    raise ValueError(f"{function}: its docstring has no 'Proof: ...' paragraph")


def sync_docstrings(rows: list[Formula] | None = None) -> list[str]:
    """Rewrite the 'Proof: ...' sentence of every formula whose docstring disagrees with the proofs' `justifies`
    (after new proofs land); returns the functions changed."""
    rows = formulas() if rows is None else rows
    changed = []
    for f in rows:
        if f.proofs_named is not None and set(f.proofs_named) != set(f.proofs):
            path = ROOT / f.path
            path.write_text(synced_source(path.read_text(encoding="utf-8"), f.name.rsplit(".", 1)[1], f.proofs))
            changed.append(f.name)
    return changed


def _link(text: str, target: str) -> str:
    return f"[{text}](../{target})"


def markdown(rows: list[Formula] | None = None) -> str:
    rows = formulas() if rows is None else rows
    modules = _proofs_package().MODULES
    lines = [
        "# Equation → code → proof → test",
        "",
        "[← README](../README.md) · generated by `python -m dpo_ref.docgen.formulas --output docs/formulas.md` from",
        "the formulas' docstrings, the proofs' `justifies` lists and the property checks;",
        "`tests/reference/test_formulas.py` fails when it is out of date. Every formula's docstring names its proof",
        "and its properties.",
        "",
        "| formula | function | derivation (proof · lesson) | properties | tests |",
        "|---|---|---|---|---|",
    ]
    for f in rows:
        module, _, func = f.name.rpartition(".")
        derivation = " · ".join(
            f"{_link(slug, f'proofs/{_module_of(slug, modules)}.py')} ([lesson](lesson.md#{slug}))" for slug in f.proofs
        )
        props = ", ".join(
            _link(f"`{p.split('.', 1)[1]}`", PROPERTY_SOURCES[p.split(".")[0]])
            for p in f.properties or ()
            if p.split(".")[0] in PROPERTY_SOURCES
        )
        tests = ", ".join(_link(t.split("/")[-1], t) for t in f.tests)
        summary = "`" + f.summary.replace("`", "").replace("|", "\\|") + "`"
        function = _link(f"`{module.split('.')[-1]}.{func}`", f.path)
        lines.append(f"| {summary} | {function} | {derivation or 'none yet'} | {props} | {tests} |")
    lines += [
        "",
        "Not formulas (public helpers of the same modules): "
        + "; ".join(f"`{name.split('.', 1)[1]}` ({why})" for name, why in NOT_FORMULAS.items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_ref.docgen.formulas", description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="write the table here (default: print it)")
    parser.add_argument(
        "--sync-docstrings",
        action="store_true",
        help="first rewrite each formula's 'Proof: ...' sentence to name the proofs that justify it",
    )
    args = parser.parse_args(argv)
    if args.sync_docstrings:
        changed = sync_docstrings()
        for name in changed:
            print(f"formulas: updated the docstring of {name}", file=sys.stderr)
        if changed:  # the modules in memory hold the old docstrings: check and write from a fresh interpreter
            rest = ["--output", args.output] if args.output else []
            return subprocess.run([sys.executable, "-m", "dpo_ref.docgen.formulas", *rest], cwd=ROOT).returncode
    found = problems()
    for line in found:
        print(f"formulas: {line}", file=sys.stderr)
    text = markdown()
    if args.output:
        from dpo_ref.atomic import OutputLocks, write_text_atomic

        with OutputLocks({"--output": args.output}):
            write_text_atomic(args.output, text)
    else:
        print(text, end="")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
