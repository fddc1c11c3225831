"""`dpo-ref train` on the command line: options generated from `TrainConfig`, the handler, the summary.

One option per `TrainConfig` field: `--field-name`, its type from the annotation, its help from the
field's `help` metadata with the default shown, `choices` from the metadata, and its `parse` metadata, where
there is one, as argparse's type (`--loss`: the registry's names). A bool field that defaults
to False is a flag (`--resume`); one that defaults to True or None gets both forms (`--progress` /
`--no-progress`). An optional int accepts `none`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import types
import typing
from dataclasses import MISSING, fields

from dpo_ref.atomic import STDOUT
from dpo_ref.train.config import TrainConfig
from dpo_ref.train.objective import is_classic, resolve, step0_value


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


_optional_int.__name__ = "int"  # argparse names the type in its error message


def _base_type(annotation) -> tuple[type, bool]:
    """(the type, whether None is allowed) of a field annotation such as `int | None`."""
    hints = annotation if not isinstance(annotation, str) else eval(annotation, {}, {})  # noqa: S307 - our own
    args = typing.get_args(hints)
    if isinstance(hints, types.UnionType) or typing.get_origin(hints) is typing.Union:
        kinds = [a for a in args if a is not type(None)]
        return kinds[0], True
    return hints, False


def add_config_options(parser: argparse.ArgumentParser, config_class=TrainConfig) -> None:
    """One option per field of `config_class` (see the module docstring)."""
    for f in fields(config_class):
        option = "--" + f.name.replace("_", "-")
        kind, optional = _base_type(f.type)
        default = f.default if f.default is not MISSING else None
        help_text = f.metadata.get("help", "")
        if default is not None and kind is not bool:
            help_text += f" (default {default})"
        kwargs = dict(default=default, help=help_text, dest=f.name)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if kind is bool:
            action = "store_true" if default is False else argparse.BooleanOptionalAction
            parser.add_argument(option, action=action, **kwargs)
        elif kind is int and optional:
            parser.add_argument(option, type=_optional_int, **kwargs)
        else:
            parser.add_argument(option, type=f.metadata.get("parse", kind), **kwargs)


def config_from_args(args: argparse.Namespace, config_class=TrainConfig):
    return config_class(**{f.name: getattr(args, f.name) for f in fields(config_class)})


def _summary_lines(cfg: TrainConfig, summary: dict) -> list[str]:
    history = summary["history"]
    logged = [r for r in history if "loss" in r]
    evals = [r for r in history if "eval/accuracy" in r]
    lines = [
        f"dpo-ref train: {cfg.loss} on {summary['train_pairs']} pairs, {cfg.steps} steps"
        + (f" after {cfg.sft_steps} SFT warm-up steps" if cfg.sft_steps else "")
        + f", {summary['device']} x{summary['world_size']}, {summary['seconds']:.1f} s"
        + ("" if summary["layout"] == "two-sequence" else f", {summary['layout']} layout ({summary['attention']})")
    ]
    if summary["skipped_rows"]:
        lines.append(f"  skipped {summary['skipped_rows']} malformed rows")
    if summary["nonfinite_skipped"]:
        lines.append(f"  skipped {summary['nonfinite_skipped']} updates with a non-finite loss or gradient")
    if logged:
        a, b = logged[0], logged[-1]
        lines.append(
            f"  loss                     {a['loss']:.6f} (step {a['step']}) -> {b['loss']:.4f} (step {b['step']})"
        )
        if a["step"] == 0 and is_classic(cfg) and cfg.loss != "ipo":
            lines[-1] += f"   |loss - ln 2| at step 0: {abs(a['loss'] - math.log(2)):.1e}"
        elif a["step"] == 0 and not is_classic(cfg) and (expected := step0_value(resolve(cfg))) is not None:
            lines[-1] += f"   |loss - L(h = 0)| at step 0: {abs(a['loss'] - expected):.1e}"
        for name in (k for k in a if k.startswith("loss/") and k not in ("loss/nll_chosen", "loss/total")):
            lines.append(f"  {name:<24} {a[name]:.6f} -> {b[name]:.4f}")
        lines.append(f"  rewards/accuracies       {a['rewards/accuracies']:.3f} -> {b['rewards/accuracies']:.3f}")
        if "logratio/chosen" in a:  # a reference-free loss has no reference
            lines.append(
                f"  log-ratio chosen         {a['logratio/chosen']:+.3f} -> {b['logratio/chosen']:+.3f}   "
                f"rejected {a['logratio/rejected']:+.3f} -> {b['logratio/rejected']:+.3f}   (log pi/pi_ref)"
            )
    if evals:
        a, b = evals[0], evals[-1]
        lines.append(f"  eval/accuracy            {a['eval/accuracy']:.3f} -> {b['eval/accuracy']:.3f} (held out)")
        if "eval/generation_accuracy" in a:
            lines.append(
                f"  eval/generation_accuracy {a['eval/generation_accuracy']:.3f} -> "
                f"{b['eval/generation_accuracy']:.3f} (greedy, held out)"
            )
    elif not summary["eval_pairs"]:
        lines.append("  no held-out data (--eval-data): no eval/accuracy")
    lines.append(f"  outputs: {summary['metrics']}, {summary['checkpoint']}")
    if "model_dir" in summary:
        lines[-1] += f", {summary['model_dir']} (save_pretrained)"
    if summary["stopped"]:
        lines.append(f"  stopped after step {cfg.stop_after}: continue with --resume")
    return lines


def _handler(args) -> int:
    from dpo_ref.atomic import hold
    from dpo_ref.train.loop import check_paths, train

    cfg = config_from_args(args)
    if args.json:  # checked before the run, not after it
        from dpo_ref.docgen.results import check_results_path, machine

        check_results_path(args.json)
        check_paths(cfg, args.json)
        before = machine()  # the load average before the run: what else was running
    main = int(os.environ.get("RANK", "0")) == 0  # the other processes write nothing
    hold({"--json": args.json if main else None})  # --out is locked by the run itself (RunDir.claim)
    try:
        summary = train(cfg)
    except FloatingPointError as err:  # not a usage error (exit 2): the run itself failed
        print(f"dpo-ref train: {err}", file=sys.stderr)
        return 1
    if main:
        lines = _summary_lines(summary["config"], summary)
        print("\n".join(lines), file=sys.stderr if args.json == STDOUT else sys.stdout)  # stdout: the JSON alone
        if args.json:
            _write_results(args.json, cfg, summary, lines, before)
    return 0


def torch_version() -> str:
    import torch

    return torch.__version__


def _write_results(path: str, cfg: TrainConfig, summary: dict, lines: list[str], before: dict) -> None:
    """The run as a results file (`docs/results/train.json`): settings, timings, first and last metrics."""
    from dataclasses import asdict

    from dpo_ref.docgen.results import write_results

    history = summary["history"]
    logged = [r for r in history if "loss" in r]
    evals = [r for r in history if "eval/accuracy" in r]
    write_results(
        path,
        {
            "machine": {**before, "torch": torch_version()},
            "settings": asdict(cfg),
            "seconds": summary["seconds"],
            "train_pairs": summary["train_pairs"],
            "eval_pairs": summary["eval_pairs"],
            "first_logged": logged[0] if logged else None,
            "last_logged": logged[-1] if logged else None,
            "first_eval": evals[0] if evals else None,
            "last_eval": evals[-1] if evals else None,
            "printed": lines,
        },
    )


def register(subparsers) -> None:
    """Add `dpo-ref train` to the CLI."""
    p = subparsers.add_parser(
        "train",
        help="preference training with any loss of the registry (default: DPO, a tiny Llama on the built-in "
        "reversal task)",
        description="Preference training of a Hugging Face causal LM. With no arguments: a tiny Llama "
        "on the built-in string-reversal task, SFT warm-up then DPO, in under a minute on a CPU.",
    )
    add_config_options(p)
    p.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also write the run's settings, timings, first and last metrics and printed summary as JSON "
        "(- for standard output; the summary then goes to stderr)",
    )
    p.set_defaults(func=_handler)
