"""Verify torchtune's DPO pieces through its public API.

torchtune's DPO recipe is built from two public functions, each checked at its own level with the full
Hypothesis suite, plus their composition on a tiny model:

    loss     torchtune.rlhf.loss.DPOLoss(beta, label_smoothing)(pc, pr, rc, rr) -> (losses, chosen_r, rejected_r)
    logps    torchtune.rlhf.get_batch_log_probs(logits, labels, return_average_logprobs=...) -> (B,)
    library  padded_collate_dpo -> tiny Llama -> get_batch_log_probs -> DPOLoss, vs dpo_ref on the same logits

torchtune 0.6.1 has no IPO loss: `--variant ipo` checks its log-probs only (and says so).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch

from dpo_ref.errors import InputError
from dpo_ref.logps import sequence_logps
from dpo_ref.losses import dpo_loss
from dpo_ref.oracle.adapters import tiny
from dpo_ref.oracle.report import FAILED, PASSED, CheckResult, Report
from dpo_ref.oracle.targets import LogpsTarget, LossTarget


def import_torchtune():
    """The `torchtune` module, or `InputError` with one line saying why it cannot be imported."""
    try:
        # torchao prints a notice about its C++ extensions on import: keep the CLI's output to the report
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stderr(io.StringIO()),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            import torchtune
            from torchtune.rlhf import get_batch_log_probs  # noqa: F401
            from torchtune.rlhf.loss import DPOLoss  # noqa: F401
    except Exception as err:
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        raise InputError(
            f"torchtune cannot be imported ({type(err).__name__}: {lines[0] if lines else ''}); "
            "pip install 'dpo-ref[compare]' (torchtune 0.6.1 needs torchao < 0.16 with torch 2.13)"
        ) from None
    return torchtune


def _dpo_loss(pc, pr, rc, rr, beta, label_smoothing=0.0):
    from torchtune.rlhf.loss import DPOLoss

    return DPOLoss(beta=beta, label_smoothing=label_smoothing)(pc, pr, rc, rr)


def rso_loss(pc, pr, rc, rr, beta=0.1):
    """torchtune's `RSOLoss` (the hinge loss) in the oracle's loss-level convention: its `gamma` is the hinge's
    beta, L = max(0, 1 - gamma h); returns (losses, chosen_rewards, rejected_rewards)."""
    from torchtune.rlhf.loss import RSOLoss

    return RSOLoss(gamma=beta)(pc, pr, rc, rr)


def loss_target(variant: str) -> LossTarget:
    return LossTarget(
        _dpo_loss,
        "torchtune.rlhf.loss.DPOLoss",
        "from torchtune.rlhf.loss import DPOLoss",
        variant=variant,
        call_src_template="DPOLoss({kwargs})({args})",
    )


def logps_target(average: bool) -> LogpsTarget:
    from torchtune.rlhf import get_batch_log_probs

    return LogpsTarget(
        lambda logits, labels: get_batch_log_probs(logits, labels, return_average_logprobs=average),
        "torchtune.rlhf.get_batch_log_probs",
        "from torchtune.rlhf import get_batch_log_probs",
        call_src_template="get_batch_log_probs({args}, return_average_logprobs=" + repr(average) + ")",
    )


def run(cfg, level: str | None, only=None) -> Report:
    from dpo_ref.oracle.levels import verify_logps, verify_loss

    tt = import_torchtune()
    from torchtune.rlhf import loss as tt_loss

    ipo = cfg.variant in ("ipo", "ipo-mean")
    levels = [level] if level else ["loss", "logps", "library"]
    notes = []
    if ipo:
        missing = (
            f"torchtune {tt.__version__} has no IPO loss (torchtune.rlhf.loss exports "
            f"{', '.join(n for n in tt_loss.__all__)})"
        )
        if level in ("loss", "library"):
            raise InputError(missing + "; verify its log-probs with --level logps")
        levels = ["logps"]
        notes.append(missing + ": only its log-probs were checked.")
    report = Report(f"torchtune {tt.__version__}", "+".join(levels), cfg.variant, notes=notes)
    for lvl in levels:
        prefix = f"{lvl}:" if len(levels) > 1 else ""
        sub_only = None if only is None else _only_for(lvl, prefix, only)
        if sub_only is not None and not sub_only:
            continue  # --checks names nothing at this level
        if lvl == "loss":
            sub = verify_loss(loss_target(cfg.variant), cfg, sub_only)
        elif lvl == "logps":
            sub = verify_logps(logps_target(cfg.average), cfg, sub_only)
        else:
            sub = library(cfg)
        for c in sub.checks:
            c.name = prefix + c.name
        report.checks += sub.checks
        report.notes += sub.notes
        report.advice += sub.advice
        report.diagnosis += sub.diagnosis
        report.settings.update({f"{prefix}{k}": v for k, v in sub.settings.items()})
        report.detected.update({f"{prefix}{k}": v for k, v in sub.detected.items()})
    return report


def _only_for(level: str, prefix: str, only) -> list[str]:
    """The names in `only` that belong to `level` ("loss:values" or, for a single level, "values")."""
    from dpo_ref.oracle.levels import check_names

    known = set(check_names(level)) if level != "library" else {"pipeline"}
    names = [n[len(prefix) :] if prefix and n.startswith(prefix) else n for n in only]
    return [n for n in names if n in known]


def library(cfg) -> Report:
    """padded_collate_dpo -> tiny Llama -> get_batch_log_probs -> DPOLoss, against dpo_ref on the same logits."""
    from torchtune.data import padded_collate_dpo
    from torchtune.rlhf import get_batch_log_probs
    from torchtune.rlhf.loss import DPOLoss

    beta = cfg.beta if cfg.beta is not None else 0.1
    eps = (cfg.label_smoothing if cfg.label_smoothing is not None else 0.1) if cfg.variant == "cdpo" else 0.0
    report = Report("torchtune pipeline", "library", cfg.variant)
    report.settings = {"beta": beta, "model": "tiny LlamaForCausalLM, float64", "tolerance": "relative 1e-10"}
    tok = tiny.tokenizer()
    rows = []
    for prompt, chosen, rejected in zip(tiny.ROWS["prompt"], tiny.ROWS["chosen"], tiny.ROWS["rejected"]):
        p, c = tiny.own_token_ids(tok, prompt, chosen)
        _, r = tiny.own_token_ids(tok, prompt, rejected)
        rows.append(
            {
                "chosen_input_ids": p + c,
                "chosen_labels": [-100] * len(p) + c,
                "rejected_input_ids": p + r,
                "rejected_labels": [-100] * len(p) + r,
            }
        )
    input_ids, labels = padded_collate_dpo(rows, padding_idx=tok.pad_token_id)  # (2B, T) each
    attention_mask = (torch.arange(input_ids.shape[1]) < torch.tensor([len(r) for r in _ids(rows)])[:, None]).long()
    policy, reference = tiny.model(0), tiny.model(1)
    policy.train()

    def both(fn_logps, fn_loss):
        logits = policy(input_ids=input_ids, attention_mask=attention_mask).logits  # (2B, T, V)
        with torch.no_grad():
            ref_logits = reference(input_ids=input_ids, attention_mask=attention_mask).logits
        pc, pr = fn_logps(logits, labels).chunk(2)
        rc, rr = fn_logps(ref_logits, labels).chunk(2)
        loss = fn_loss(pc, pr, rc, rr).mean()
        policy.zero_grad()
        loss.backward()
        return float(loss.detach()), [p.grad.detach().clone() for p in policy.parameters()]

    tt_value, tt_grads = both(get_batch_log_probs, lambda *x: DPOLoss(beta=beta, label_smoothing=eps)(*x)[0])
    ref_value, ref_grads = both(
        sequence_logps, lambda *x: dpo_loss(*x, beta=beta, label_smoothing=eps if cfg.variant == "cdpo" else 0.0)[0]
    )
    num = sum(float((a - b).pow(2).sum()) for a, b in zip(tt_grads, ref_grads)) ** 0.5
    den = sum(float(b.pow(2).sum()) for b in ref_grads) ** 0.5
    ok = abs(tt_value - ref_value) <= 1e-10 * (1 + abs(ref_value)) and num <= 1e-10 * (den + 1e-12)
    report.checks.append(
        CheckResult(
            "pipeline",
            PASSED if ok else FAILED,
            "collate -> model -> get_batch_log_probs -> DPOLoss: loss and parameter gradients equal dpo_ref's",
            "" if ok else f"loss {tt_value!r} vs dpo_ref {ref_value!r}; relative gradient difference {num / den:.3g}",
            None,
            1,
        )
    )
    return report


def _ids(rows):
    return [r["chosen_input_ids"] for r in rows] + [r["rejected_input_ids"] for r in rows]
