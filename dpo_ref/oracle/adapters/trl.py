"""Drive TRL's `DPOTrainer` through its public API on a tiny local model and compare with dpo_ref.

TRL computes the loss inline in `DPOTrainer.compute_loss` (there is no standalone loss function to
call in TRL 1.x), so the check is end to end: the same model, the same tokens (TRL's own collated
batch), and dpo_ref recomputing sequence log-probs (`sequence_logps` on the model's logits) and the
loss (`dpo_loss` / `ipo_loss`). Per-example values come from running `compute_loss` on one example at
a time and reading the metrics TRL logs (`trainer.log` -> `trainer.state.log_history`).

Variant -> TRL configuration: dpo -> loss_type="sigmoid"; cdpo -> loss_type="sigmoid" with
label_smoothing (how cDPO was configured in TRL); ipo and ipo-mean -> loss_type="ipo", with beta
standing for tau. Family variants are searched instead (`trl_search`). The trainer itself is built by
`trl_trainer.build` (re-exported here, as the reproductions import it from this module).
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings

import torch

from dpo_ref import variants as V
from dpo_ref.errors import InputError
from dpo_ref.family import LOSS_FAMILY, TRL_LOSS_TYPES
from dpo_ref.logps import sequence_logps
from dpo_ref.losses import dpo_loss, ipo_loss
from dpo_ref.oracle.adapters import tiny, trl_search
from dpo_ref.oracle.adapters.trl_search import SEARCH_EXAMPLES
from dpo_ref.oracle.adapters.trl_trainer import build, import_trl, loss_type_for
from dpo_ref.oracle.report import FAILED, PASSED, CheckResult, Report

# The model runs in float64, but TRL's fused LM head computes the log-probs in float32 whatever the model
# dtype, so TRL's values carry float32 rounding: relative 1e-5 on values, 1e-4 on gradients.
RTOL = 1e-5
GRAD_RTOL = 1e-4


def trl_loss(trainer, examples) -> tuple[torch.Tensor, dict, dict]:
    """TRL's loss on `examples` (its mean over them), the collated batch, and the metrics it logged."""
    batch = trainer.data_collator(examples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = trainer.compute_loss(trainer.model, batch)
        with contextlib.redirect_stdout(io.StringIO()):  # a printer callback echoes the logs
            trainer.log({})
    return loss, batch, dict(trainer.state.log_history[-1])


def dpo_ref_loss(trainer, batch, variant: str, beta: float, label_smoothing: float = 0.0):
    """dpo_ref on TRL's batch: `(losses (B,), policy logps (2B,), reference logps (2B,))`.

    Labels are TRL's input ids with everything outside the completion set to -100; ipo-mean uses
    length-averaged log-probs, every other variant summed ones.
    """
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)  # (2B, T)
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    average = variant == "ipo-mean"
    policy = sequence_logps(trainer.model(**kwargs).logits, labels, average=average)  # (2B,)
    with torch.no_grad():
        reference = sequence_logps(trainer.ref_model(**kwargs).logits, labels, average=average)  # (2B,)
    pc, pr = policy.chunk(2)
    rc, rr = reference.chunk(2)
    if variant in ("ipo", "ipo-mean"):
        losses = ipo_loss(pc, pr, rc, rr, tau=beta).losses
    else:
        losses = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing if variant == "cdpo" else 0.0)
        losses = losses.losses
    return losses, policy, reference


def _f(t: torch.Tensor) -> float:
    return float(t.detach())


def _close(a: float, b: float, rtol: float = RTOL) -> bool:
    return abs(a - b) <= rtol * (1.0 + abs(b))


def _repro(variant: str, beta: float, eps: float, what: str) -> str:
    kw = f"variant={variant!r}, beta={beta!r}" + (f", label_smoothing={eps!r}" if variant == "cdpo" else "")
    lines = [
        "from dpo_ref.oracle.adapters.trl import build, trl_loss, dpo_ref_loss",
        f"trainer, examples = build({kw})",
        "for i, example in enumerate(examples):",
        "    loss, batch, metrics = trl_loss(trainer, [example])",
        f"    ref, policy, reference = dpo_ref_loss(trainer, batch, {kw})",
    ]
    if what == "logps":
        lines.append(
            "    print(i, metrics['logps/chosen'], metrics['logps/rejected'], policy.tolist())  # TRL vs dpo_ref"
        )
    else:
        lines.append("    print(i, loss.item(), ref.item())  # TRL vs dpo_ref")
    return "\n".join(lines)


def run(cfg, only=None) -> Report:
    """The library-level checks on TRL for `cfg.variant` (beta = cfg.beta or 0.1, eps = cfg.label_smoothing or 0.1)."""
    trl = import_trl()
    variant = cfg.variant
    if cfg.family is not None:
        return _run_family(cfg, trl.__version__)
    beta = cfg.beta if cfg.beta is not None else 0.1
    eps = (cfg.label_smoothing if cfg.label_smoothing is not None else 0.1) if variant == "cdpo" else 0.0
    report = Report(f"trl {trl.__version__} DPOTrainer", "library", variant)
    report.settings = _settings(variant, beta, eps)
    trainer, examples = build(variant, beta, eps)
    report.notes.extend(_notes(examples, beta))
    per_example = [trl_loss(trainer, [ex]) for ex in examples]
    refs = [dpo_ref_loss(trainer, batch, variant, beta, eps) for _, batch, _ in per_example]
    report.checks.append(_check_logps(trainer, per_example, variant, beta, eps))
    report.checks.append(_check_loss_values(trainer, per_example, refs, variant, beta, eps))
    report.checks.append(_check_gradients(trainer, examples, variant, beta, eps))
    loss_type = V.REGISTRY[variant].adapters.get("trl")
    if loss_type in TRL_LOSS_TYPES:  # the question `dpo-ref matrix` asks too: the same search, so one verdict
        report.checks.append(trl_search.search(trl_search.build_search(), ((loss_type, 1.0),), SEARCH_EXAMPLES))
    return report


def _settings(variant: str, beta: float, eps: float) -> dict:
    """The report's settings: TRL's configuration for `variant`, the model, the tolerance."""
    return {
        "loss_type": loss_type_for(variant),
        "beta" if variant not in ("ipo", "ipo-mean") else "beta (tau)": beta,
        **({"label_smoothing": eps} if variant == "cdpo" else {}),
        "model": "tiny LlamaForCausalLM (1 layer, vocab 24), float64, policy seed 0 / reference seed 1",
        "tolerance": f"relative {RTOL:g}",
    }


def _notes(examples, beta: float) -> list[str]:
    """TRL's conventions, reported as notes: its tokens (EOS appended), float32 log-probs, the bf16 default."""
    notes = []
    tok = tiny.tokenizer()
    extra = []  # TRL's tokens vs the oracle's own tokenization of the same strings
    for i, ex in enumerate(examples):
        prompt = tiny.ROWS["prompt"][i]
        for side in ("chosen", "rejected"):
            _, own = tiny.own_token_ids(tok, prompt, tiny.ROWS[side][i])
            if list(ex[f"{side}_ids"]) != own:
                extra.append(f"row {i} {side}: TRL {list(ex[f'{side}_ids'])} vs {own}")
    if extra:
        notes.append(
            "TRL appends the EOS token to every completion before tokenizing (non-conversational data), so the "
            f"scored tokens include it: {extra[0]} (EOS id {tok.eos_token_id}). All comparisons below use TRL's tokens."
        )
    notes.append(
        "TRL's fused LM head computes logits and log-probs in float32 even for a float64 model: its values carry "
        f"float32 rounding, hence the tolerances (relative {RTOL:g} on values, {GRAD_RTOL:g} on gradients)."
    )
    notes.append(_bf16_note("dpo", beta, 0.0))
    return notes


def _check_logps(trainer, per_example, variant: str, beta: float, eps: float) -> CheckResult:
    """1. sequence log-probs (summed, as TRL logs them) on TRL's tokens."""
    bad = []
    for i, (_, batch, metrics) in enumerate(per_example):
        _, summed, _ = dpo_ref_loss(trainer, batch, "dpo", beta)
        for key, value in (("logps/chosen", summed[0].detach()), ("logps/rejected", summed[1].detach())):
            if not _close(metrics[key], float(value)):
                bad.append(f"row {i} {key}: TRL {metrics[key]!r}, dpo_ref.sequence_logps {float(value)!r}")
    return CheckResult(
        "logps",
        FAILED if bad else PASSED,
        "summed completion log-probs TRL logs equal dpo_ref.sequence_logps on the same tokens",
        "; ".join(bad[:2]),
        _repro(variant, beta, eps, "logps") if bad else None,
        len(per_example),
    )


def _check_loss_values(trainer, per_example, refs, variant: str, beta: float, eps: float) -> CheckResult:
    """2. per-example loss values; on a difference, which other dpo_ref variant TRL's values equal."""
    bad, hint = [], ""
    for i, ((loss, _, _), (ref, _, _)) in enumerate(zip(per_example, refs)):
        if not _close(_f(loss), _f(ref[0])):
            bad.append(f"row {i}: TRL {_f(loss)!r}, dpo_ref {variant} {_f(ref[0])!r}")
    if bad:
        hint = _diagnose(trainer, per_example, variant, beta, eps)
    return CheckResult(
        "loss_values",
        FAILED if bad else PASSED,
        f"per-example loss equals dpo_ref {variant} on the same model and tokens",
        "; ".join(bad[:2]) + (f". {hint}" if hint else ""),
        _repro(variant, beta, eps, "loss") if bad else None,
        len(per_example),
    )


def _check_gradients(trainer, examples, variant: str, beta: float, eps: float) -> CheckResult:
    """3. the batch loss and its gradients with respect to every model parameter."""
    loss, batch, _ = trl_loss(trainer, examples)
    trl_grads = _grads(trainer.model, loss)
    ref, _, _ = dpo_ref_loss(trainer, batch, variant, beta, eps)
    ref_grads = _grads(trainer.model, ref.mean())
    num = sum(float((a - b).pow(2).sum()) for a, b in zip(trl_grads, ref_grads)) ** 0.5
    den = sum(float(b.pow(2).sum()) for b in ref_grads) ** 0.5
    ok = _close(_f(loss), _f(ref.mean())) and num <= GRAD_RTOL * (den + 1e-12)
    return CheckResult(
        "gradients",
        PASSED if ok else FAILED,
        "batch-mean loss and its gradient w.r.t. every model parameter equal dpo_ref's",
        ""
        if ok
        else f"batch loss TRL {_f(loss)!r} vs dpo_ref {_f(ref.mean())!r}; "
        f"relative gradient difference {num / max(den, 1e-300):.3g}",
        None if ok else _repro(variant, beta, eps, "loss"),
        1,
    )


def _grads(model, loss: torch.Tensor) -> list[torch.Tensor]:
    """The gradient of `loss` w.r.t. each parameter of `model` (which starts and ends with no gradients)."""
    model.zero_grad()
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad()
    return grads


def _run_family(cfg, version: str) -> Report:
    """A family variant: TRL's loss type for it, searched through TRL's own tokenisation (`trl_search`)."""
    loss_type = LOSS_FAMILY[cfg.family].trl
    if loss_type is None:
        raise InputError(f"trl {version} has no loss_type computing {cfg.variant}")
    report = Report(f"trl {version} DPOTrainer", "library", cfg.variant)
    report.settings = {
        "loss_type": loss_type,
        "coefficients": {k: v for k, v in trl_search.COEFFICIENTS.items() if k in LOSS_FAMILY[cfg.family].coefficients},
        "rows": "searched (Hypothesis) through TRL's _prepare_dataset and DataCollatorForPreference",
        "tolerance": f"relative {trl_search.RTOL:g}",
    }
    report.checks.append(trl_search.search(trl_search.build_search(), ((loss_type, 1.0),), SEARCH_EXAMPLES))
    return report


def _diagnose(trainer, per_example, variant: str, beta: float, eps: float) -> str:
    """Which other dpo_ref variant TRL's values match, if any: the finding in one sentence."""
    candidates = {"dpo": "plain DPO (label_smoothing ignored)", "ipo-mean": "IPO on length-averaged log-probs"}
    candidates.pop(variant, None)
    for other, words in candidates.items():
        if all(
            _close(_f(loss), _f(dpo_ref_loss(trainer, batch, other, beta, eps)[0][0])) for loss, batch, _ in per_example
        ):
            return f"TRL's values equal dpo_ref {other}: {words}"
    return "TRL's values match no dpo_ref variant"


@functools.lru_cache(maxsize=8)
def _bf16_note(variant: str, beta: float, eps: float) -> str:
    """How far TRL's logged log-probs move under DPOConfig's default bf16=True (reference under bf16 autocast)."""
    trainer, examples = build("dpo", beta, 0.0, bf16=True)  # the log-probs do not depend on the loss type
    worst = 0.0
    for ex in examples:
        _, batch, metrics = trl_loss(trainer, [ex])
        _, policy, reference = dpo_ref_loss(trainer, batch, "dpo", beta)
        ref_chosen_trl = metrics["logps/chosen"] - metrics["rewards/chosen"] / beta  # rewards = beta (pi - ref)
        worst = max(worst, abs(ref_chosen_trl - float(reference[0])))
    return (
        "DPOConfig defaults to bf16=True (also on CPU); the reference model is then run under bf16 autocast: on this "
        f"model its summed log-probs differed from float64 by up to {worst:.3g} nats. The checks use bf16=False."
    )
