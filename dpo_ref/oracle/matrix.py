"""`dpo-ref matrix`: every installed library adapter over every variant it claims, as a compliance table.

    dpo-ref matrix [--out docs] [--max-examples 25] [--search-examples 8] [--readme README.md]

Libraries and what each claims:
  TRL (DPOTrainer)          its 15 loss types and a `loss_weights` combination, searched through its own
                            tokenisation and collation (`adapters.trl_search`); cDPO as it was configured
                            (`loss_type="sigmoid"` + `label_smoothing`, `adapters.trl`); gradient accumulation
                            and padding (`adapters.trl_batch`)
  torchtune                 DPOLoss as dpo and cdpo, RSOLoss as hinge (loss level, the full catalogue);
                            get_batch_log_probs (log-prob level); the collate -> model -> loss pipeline;
                            the DPO recipe's gradient accumulation and padding (`adapters.torchtune_batch`)
  Liger-Kernel              each chunked loss as the family variant it computes (`adapters.liger.CLAIMS`,
                            loss level), chunk_forward (log-prob level), the fused forward on a tiny model
                            with chunks of 1 pair and of the batch (library level); imported when installed,
                            else run from its wheel (`adapters.wheel`); reported as unavailable, with the
                            reason, when neither works

Writes `<out>/compliance.md` and `<out>/compliance.json` (library x version x variant x check, each failing
check's message and reproduction, torch/transformers versions, the date), each atomically, after every
run has finished; prints one line per check as it goes. With `--readme`, replaces the block between
`<!-- compliance-summary:start -->` and `<!-- compliance-summary:end -->` in that file with `summary()`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

from dpo_ref.atomic import check_apart, check_output_file, hold, special_file_kind, write_text_atomic
from dpo_ref.errors import InputError

START, END = "<!-- compliance-summary:start -->", "<!-- compliance-summary:end -->"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "matrix",
        help="run every installed library adapter over every variant it claims; write docs/compliance.{md,json}",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", default="docs", help="directory for compliance.md and compliance.json (default docs)")
    p.add_argument("--max-examples", type=int, default=25, help="Hypothesis examples per loss-level check")
    p.add_argument(
        "--search-examples", type=int, default=None, help="Hypothesis batches per TRL loss type (default: 8, as verify)"
    )
    p.add_argument("--readme", default=None, help="also rewrite the compliance summary block in this README")
    p.set_defaults(func=handler)


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _entry(library: str, version: str, variant: str, level: str, check) -> dict:
    entry = {
        "library": library,
        "version": version,
        "variant": variant,
        "level": level,
        "check": check.name,
        "status": check.status,
        "message": check.message,
        "reproduction": check.reproduction,
    }
    if check.precision is not None:  # a value check on float64 inputs: the grade it reached
        entry["precision"] = check.precision.grade
    return entry


def _trl(args, emit) -> None:
    from dpo_ref.family import TRL_LOSS_TYPES
    from dpo_ref.oracle import adapters
    from dpo_ref.oracle.adapters import trl_batch, trl_search
    from dpo_ref.oracle.api import make_config

    version = _version("trl")
    trainer = trl_search.build_search()
    for loss_type in TRL_LOSS_TYPES:
        emit("trl", version, loss_type, "library", trl_search.search(trainer, ((loss_type, 1.0),), args.search))
    combo = "+".join(t for t, _ in trl_search.COMBINATION)
    emit("trl", version, combo, "library", trl_search.search(trainer, trl_search.COMBINATION, args.search))
    report = adapters.run("trl", "library", make_config("cdpo", beta=0.1, label_smoothing=0.1))
    for check in report.checks:
        if check.failed and report.diagnosis:
            check.message += " " + "; ".join(report.diagnosis)
        emit("trl", version, "cdpo (sigmoid + label_smoothing)", "library", check)
    for loss_type in ("sigmoid", "ipo", "sft"):
        emit("trl", version, loss_type, "batch", trl_batch.check_accumulation(loss_type))
    for check in trl_batch.check_padding():
        emit("trl", version, "sigmoid", "batch", check)


def _torchtune(args, emit) -> None:
    import dpo_ref
    from dpo_ref.oracle.adapters import torchtune
    from dpo_ref.oracle.api import make_config
    from dpo_ref.variants import RECORDS

    version = _version("torchtune")
    by_loss = {
        loss: [v.name for v in RECORDS if v.adapters.get("torchtune") == loss] for loss in ("DPOLoss", "RSOLoss")
    }
    # the registry's torchtune names: DPOLoss computes dpo and cdpo, RSOLoss the hinge
    for variant in by_loss["DPOLoss"]:
        report = torchtune.run(make_config(variant, max_examples=args.max_examples), None)
        for check in report.checks:
            level, _, _ = check.name.rpartition(":")
            emit("torchtune", version, f"{variant} (DPOLoss)", level or "loss", check, report.diagnosis)
    (rso,) = by_loss["RSOLoss"]
    report = dpo_ref.verify(
        torchtune.rso_loss, variant=rso, max_examples=args.max_examples, name="torchtune.rlhf.loss.RSOLoss"
    )
    for check in report.checks:
        emit("torchtune", version, f"{rso} (RSOLoss)", "loss", check, report.diagnosis)
    from dpo_ref.oracle.adapters import torchtune_batch

    for loss, variant in (("DPOLoss", by_loss["DPOLoss"][0]), ("RSOLoss", rso)):
        emit("torchtune", version, f"{variant} ({loss})", "batch", torchtune_batch.check_accumulation(loss))
        for check in torchtune_batch.check_padding(loss):
            emit("torchtune", version, f"{variant} ({loss})", "batch", check)


def _liger(args, emit) -> None:
    import dpo_ref
    from dpo_ref.oracle.adapters import liger

    version = liger.load().version
    for claim in liger.CLAIMS:
        report = liger.verify_claim(claim, args.max_examples)
        for check in report.checks:
            emit("Liger-Kernel", version, f"{claim.variant} ({claim.name})", "loss", check, report.diagnosis)
    for variant, fn in (("dpo", liger.logps), ("ipo-mean", liger.logps_average)):
        report = dpo_ref.verify(fn, level="logps", variant=variant, max_examples=args.max_examples,
                                name="Liger chunk_forward")  # fmt: skip
        for check in report.checks:
            emit("Liger-Kernel", version, f"{variant} (chunk_forward)", "logps", check, report.diagnosis)
    for name, (_, _, key, _, _) in liger.FUSED.items():
        emit("Liger-Kernel", version, f"{key} (fused {name})", "library", liger.fused(name))


def _probe_installed(module: str):
    def probe() -> tuple[str | None, str]:
        version = _version(module)
        return version, "installed" if version else "not installed"

    return probe


def _probe_liger() -> tuple[str | None, str]:
    from dpo_ref.oracle.adapters import liger
    from dpo_ref.oracle.adapters.wheel import Unavailable

    try:
        lib = liger.load()
    except Unavailable as err:
        return None, f"not available: {err}"
    how = "installed" if lib.source == "installed" else f"{lib.source} (its package imports triton)"
    return lib.version, how


def _liger_notes() -> list[str]:
    from dpo_ref.oracle.adapters import liger

    notes = [f"{c.name}: verified as {c.variant}; {liger.SRC}{c.source}: {c.reading}" for c in liger.CLAIMS]
    return notes + list(liger.NOT_COVERED)


# name -> (runner, probe () -> (version or None, how it was had), notes () -> lines for the table)
LIBRARIES = {
    "trl": (_trl, _probe_installed("trl"), list),
    "torchtune": (_torchtune, _probe_installed("torchtune"), list),
    "Liger-Kernel": (_liger, _probe_liger, _liger_notes),
}


def run(args, out=print) -> dict:
    """Every installed library's checks; returns the matrix as a dict (what compliance.json holds)."""
    entries, libraries = [], []
    started = time.perf_counter()

    def emit(library, version, variant, level, check, diagnosis=()):
        entry = _entry(library, version, variant, level, check)
        if check.failed and diagnosis:
            entry["diagnosis"] = list(diagnosis)
        entries.append(entry)
        mark = {"passed": "PASS", "failed": "FAIL", "skipped": "skip", "advice": "advice"}.get(check.status, "?")
        out(f"[{time.perf_counter() - started:6.1f} s] {library} {version} {variant} {check.name}: {mark}")

    for name, (runner, probe, notes) in LIBRARIES.items():
        version, how = probe()
        libraries.append({"library": name, "version": version, "installed": version is not None, "source": how})
        if version is None:
            out(f"{name}: {how}, skipped")
            continue
        out(f"{name} {version}: {how}")
        libraries[-1]["notes"] = notes()
        runner(args, emit)
    return {
        "generated": datetime.date.today().isoformat(),
        "command": "dpo-ref matrix " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["matrix"] else []),
        "versions": {
            "python": platform.python_version(),
            "torch": _version("torch"),
            "transformers": _version("transformers"),
            "datasets": _version("datasets"),
            "hypothesis": _version("hypothesis"),
        },
        "settings": {"max_examples per loss-level check": args.max_examples, "batches per TRL search": args.search},
        "seconds": round(time.perf_counter() - started, 1),
        "libraries": libraries,
        "entries": entries,
    }


def _rows(matrix: dict) -> list[tuple[str, str, str, str, int, int, list[str]]]:
    """(library, version, variant, level, passed, failed, failing check names) per library x variant x level."""
    groups: dict = {}
    for e in matrix["entries"]:
        key = (e["library"], e["version"], e["variant"], e["level"])
        g = groups.setdefault(key, [0, 0, []])
        if e["status"] == "failed":
            g[1] += 1
            g[2].append(e["check"])
        elif e["status"] in ("passed", "advice"):
            g[0] += 1
    return [(*k, *v) for k, v in groups.items()]


def summary(matrix: dict) -> str:
    """The README's summary: one line per library x variant x level with a failure, then the counts."""
    rows = _rows(matrix)
    failing = [r for r in rows if r[5]]
    lines = [
        f"Generated by `dpo-ref matrix` on {matrix['generated']} (torch {matrix['versions']['torch']}, "
        f"transformers {matrix['versions']['transformers']}); full table and reproductions: "
        "[docs/compliance.md](docs/compliance.md).",
        "",
        "| library | version | variant | level | failing checks |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {', '.join(r[6])} |" for r in failing]
    conforming = sum(1 for r in rows if not r[5])
    lines += ["", f"{conforming} of {len(rows)} library x variant x level combinations pass every check."]
    return "\n".join(lines)


def markdown(matrix: dict) -> str:
    v = matrix["versions"]
    lines = [
        "# Compliance matrix",
        "",
        f"Generated by `{matrix['command'].strip()}` on {matrix['generated']} in {matrix['seconds']} s. "
        "Do not edit by hand: rerun the command.",
        "",
        f"Python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, datasets {v['datasets']}, "
        f"hypothesis {v['hypothesis']}. Settings: "
        + ", ".join(f"{k} {x}" for k, x in matrix["settings"].items())
        + ".",
        "",
        "| library | version | run from |",
        "|---|---|---|",
    ]
    lines += [f"| {lib['library']} | {lib['version'] or '-'} | {_how(lib)} |" for lib in matrix["libraries"]]
    grades = _grades(matrix)
    lines += [
        "",
        "Precision: the worst grade the value checks reached on float64 inputs (float64-exact, float32-level, "
        "worse than float32); '-' where no value check ran or passed.",
        "",
        "| library | version | variant | level | passed | failed | precision | failing checks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {grades.get(r[:4], '-')} | "
              f"{', '.join(r[6])} |" for r in _rows(matrix)]  # fmt: skip
    for lib in matrix["libraries"]:
        if lib.get("notes"):
            lines += ["", f"## {lib['library']} {lib['version']}: what each entry is verified as", ""]
            lines += [f"- {n}" for n in lib["notes"]]
    lines += ["", "## Findings", ""]
    for e in matrix["entries"]:
        if e["status"] != "failed":
            continue
        lines += [f"### {e['library']} {e['version']}: {e['variant']}, {e['check']}", "", e["message"], ""]
        for d in e.get("diagnosis", []):
            lines.append(f"- diagnosis: {d}")
        if e.get("diagnosis"):
            lines.append("")
        if e["reproduction"]:
            lines += ["```python", e["reproduction"].rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _how(lib: dict) -> str:
    if "source" in lib:
        return lib["source"]
    return "installed" if lib["installed"] else "not installed"  # a matrix written before "source" was recorded


_GRADES = ("float64-exact", "float32-level", "worse than float32")


def _grades(matrix: dict) -> dict:
    """(library, version, variant, level) -> the worst precision grade among its entries."""
    worst: dict = {}
    for e in matrix["entries"]:
        if "precision" in e:
            key = (e["library"], e["version"], e["variant"], e["level"])
            worst[key] = max(worst.get(key, e["precision"]), e["precision"], key=_GRADES.index)
    return worst


def replace_summary(readme: str, text: str, path: str = "README.md") -> str:
    """`readme` with the block between the summary markers replaced by `text`."""
    head, start, rest = readme.partition(START)
    if not start or END not in rest:  # also an END only before START: the markers in the wrong order
        raise InputError(f"{path} has no {START} ... {END} block to update (both markers, in this order)")
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{text}\n{END}{tail}"


def handler(args: argparse.Namespace) -> int:
    if args.max_examples < 1 or (args.search_examples is not None and args.search_examples < 1):
        raise InputError("--max-examples and --search-examples must be positive integers")
    if not os.path.isdir(args.out):
        if os.path.exists(args.out):
            raise InputError(f"--out {args.out!r} is {special_file_kind(args.out) or 'a file'}; expected a directory")
        raise InputError(f"--out: directory {args.out!r} does not exist")
    for name in ("compliance.json", "compliance.md"):  # what it writes, checked before the run
        check_output_file(os.path.join(args.out, name), "--out")
    check_apart({}, {"--out": args.out, "--readme": args.readme}, owned={"--out": ("compliance.json", "compliance.md")})
    readme = None
    if args.readme is not None:
        check_output_file(args.readme, "--readme")  # read first, then replaced: never a FIFO (reading one blocks)
    # locked before the README is read: it is read, then rewritten with the new summary (dpo_ref.atomic)
    hold({"--out": args.out, "--readme": args.readme}, directories=("--out",))
    if args.readme is not None:
        try:
            with open(args.readme, encoding="utf-8") as f:
                readme = f.read()
        except OSError as err:
            raise InputError(f"--readme {args.readme!r} cannot be read: {err.strerror}") from None
        except UnicodeDecodeError as err:
            raise InputError(
                f"--readme {args.readme!r} is not UTF-8 (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                "expected a UTF-8 Markdown file"
            ) from None
        replace_summary(readme, "", args.readme)  # the markers must be there before anything runs
    from dpo_ref.oracle.adapters.trl_search import SEARCH_EXAMPLES

    args.search = SEARCH_EXAMPLES if args.search_examples is None else args.search_examples
    matrix = run(args, out=lambda line: print(line, flush=True))
    write_text_atomic(os.path.join(args.out, "compliance.json"), json.dumps(matrix, indent=2) + "\n")
    write_text_atomic(os.path.join(args.out, "compliance.md"), markdown(matrix))
    if readme is not None:
        write_text_atomic(args.readme, replace_summary(readme, summary(matrix), args.readme))
    print(f"wrote {os.path.join(args.out, 'compliance.md')} and compliance.json")
    return 0
