"""Diagnoses: when a target disagrees, name what it computes instead.

One catalogue of known alternatives per level, each a float64 formula of the same inputs. The target is
evaluated on fixed diagnostic inputs (moderate values on which the alternatives differ from each other
and from the claimed formula) and compared with each alternative at the verdict tolerance; every
alternative it matches, and the claimed formula does not, is named. Used by every interface (API, CLI,
pytest plugin, library adapters) through `diagnose_loss` / `diagnose_logps`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpo_ref import variants as V
from dpo_ref.checks import properties as P
from dpo_ref.checks.strategies import IGNORE_INDEX, TokenBatch
from dpo_ref.losses import dpo_losses_from_margin, ipo_losses_from_margin, preference_margin

HALF_EPS = torch.finfo(torch.bfloat16).eps  # the coarser of the two half precisions


@dataclass(frozen=True)
class Alternative:
    """A known way to get the formula wrong: `losses(spec, pc, pr, rc, rr)` in float64, per example."""

    name: str
    says: str
    losses: Callable[..., torch.Tensor]  # which claims it is a plausible mistake for: the registry's `mistakes`


def _h(pc, pr, rc, rr):
    return preference_margin(pc, pr, rc, rr)


def _dpo(h, beta, eps=0.0):
    return dpo_losses_from_margin(h, beta, eps)


def _robust(spec, pc, pr, rc, rr):
    h, b, e = _h(pc, pr, rc, rr), spec.beta, spec.eps
    return ((1 - e) * -F.logsigmoid(b * h) - e * -F.logsigmoid(-b * h)) / (1 - 2 * e)


LOSS_ALTERNATIVES: tuple[Alternative, ...] = (
    Alternative(
        "plain-dpo",
        "plain DPO: label_smoothing is ignored",
        lambda s, *x: _dpo(_h(*x), s.beta),
    ),
    Alternative(
        "robust-dpo",
        "robust DPO (rDPO, Chowdhury et al. 2024): ((1-eps) l(h) - eps l(-h)) / (1 - 2 eps), not cDPO",
        _robust,
    ),
    Alternative(
        "cdpo-weights-exchanged",
        "cDPO with the weights exchanged: eps on the preferred order, 1 - eps on the flipped one",
        lambda s, *x: _dpo(_h(*x), s.beta, 1.0 - s.eps),
    ),
    Alternative(
        "ipo-target-1/tau",
        "IPO with target 1/tau instead of 1/(2 tau): (h - 1/tau)^2",
        lambda s, *x: (_h(*x) - 1.0 / s.tau) ** 2,
    ),
    Alternative(
        "ipo-times-tau-squared",
        "IPO scaled by tau^2: (tau h - 1/2)^2 (same minimiser, gradients tau^2 times too small)",
        lambda s, *x: (s.tau * _h(*x) - 0.5) ** 2,
    ),
    Alternative(
        "chosen-rejected-swapped",
        "the loss with chosen and rejected swapped (the sign of the margin flipped; for cDPO the same function "
        "as the weights exchanged)",
        lambda s, pc, pr, rc, rr: s.losses(_h(pr, pc, rr, rc)),
    ),
    Alternative(
        "beta-ignored",
        "the coefficient ignored (taken as 1)",
        lambda s, *x: P.LossSpec(s.variant, 1.0, s.label_smoothing, 1.0).losses(_h(*x)),
    ),
    Alternative(
        "beta-squared",
        "the coefficient squared",
        lambda s, *x: P.LossSpec(s.variant, s.beta**2, s.label_smoothing, s.tau**2).losses(_h(*x)),
    ),
    Alternative(
        "beta-outside",
        "the coefficient multiplying the loss instead of the margin: -beta log sigma(h)",
        lambda s, *x: s.beta * _dpo(_h(*x), 1.0),
    ),
    Alternative(
        "beta-divides",
        "the margin divided by beta (beta used as a temperature)",
        lambda s, *x: _dpo(_h(*x), 1.0 / s.beta, s.eps),
    ),
    Alternative(
        "hinge",
        "the hinge loss max(0, 1 - beta h) (RSO / SLiC), not the log-sigmoid of DPO",
        lambda s, *x: torch.relu(1.0 - s.beta * _h(*x)),
    ),
    Alternative(
        "no-reference",
        "no reference model: the margin is log pi(y_w) - log pi(y_l)",
        lambda s, pc, pr, rc, rr: s.losses(pc - pr),
    ),
    Alternative(
        "reference-sign",
        "the reference log-ratio added instead of subtracted",
        lambda s, pc, pr, rc, rr: s.losses((pc - pr) + (rc - rr)),
    ),
    Alternative(
        "ipo-not-dpo",
        "IPO (h - 1/(2 tau))^2 with tau = beta, not DPO",
        lambda s, *x: ipo_losses_from_margin(_h(*x), s.beta),
    ),
    Alternative(
        "dpo-not-ipo",
        "DPO -log sigma(beta h) with beta = tau, not IPO",
        lambda s, *x: _dpo(_h(*x), s.tau),
    ),
)

ALTERNATIVE_NAMES = tuple(a.name for a in LOSS_ALTERNATIVES) + ("batch-sum", "half-precision")


def _diagnostic_batches() -> list[tuple[torch.Tensor, ...]]:
    """Fixed inputs with moderate margins, on which the alternatives all differ from each other."""
    gen = torch.Generator().manual_seed(20231129)
    out = []
    for lo in (-8.0, -40.0):
        x = torch.rand(4, 6, generator=gen, dtype=torch.float64) * lo - 0.5  # (4, B) log-probs in [lo, -0.5]
        out.append(tuple(x))
    return out


def _coefficients(variant: str, beta: float | None, eps: float | None) -> list[tuple[float, float]]:
    coefs = [beta] if beta is not None else [0.3, 2.5]
    epss = [eps] if eps is not None else [0.15, 0.35]
    return [(c, e) for c in coefs for e in (epss if "label_smoothing" in V.REGISTRY[variant].coefficients else [0.0])]


def _matches_half_precision(got: torch.Tensor, spec: P.LossSpec, batch, tol: torch.Tensor) -> bool:
    """The target's losses equal the claimed formula on log-probs rounded to float16 or bfloat16, up to the
    rounding half arithmetic adds after that: the two log-ratios a, b and the margin h = a - b each rounded
    once (relative eps_half / 2 each, so |dL/dh| eps_half (|a| + |b| + |h|) bounds it with a factor 2 to
    spare) and the loss itself (eps_half |L|), on top of the float32 tolerance `tol`. A mistake of another
    kind (a shifted or rescaled margin) is far outside this band."""
    for dtype in (torch.float16, torch.bfloat16):
        eps_half = torch.finfo(dtype).eps
        pc, pr, rc, rr = (t.to(dtype).double() for t in batch)  # (B,) each, half-rounded
        a, b = pc - rc, pr - rr
        h = a - b
        expected = spec.losses(h)
        band = eps_half * (spec.dloss_dmargin(h).abs() * (a.abs() + b.abs() + h.abs()) + expected.abs())
        if bool(((got - expected).abs() <= tol + band).all()):
            return True
    return False


def diagnose_loss(target, cfg, coefficients: dict) -> list[str]:
    """Name what a loss-level target computes instead of the claimed variant (one sentence per match; [] when
    nothing matches or the target cannot be evaluated): for a closed-form variant its known mistakes, then the
    other members of the family; for the others, the family members and the variant's own mistakes."""
    if cfg.record.oracle == V.CLOSED_FORM:
        return _diagnose_margin(target.per_example, cfg.loss_variant, cfg.beta, cfg.label_smoothing)
    return diagnose_family(target, cfg.record.key, diagnostic_coefficients(cfg, coefficients))


def diagnostic_coefficients(cfg, coefficients: dict) -> dict:
    """The probe's coefficients, except that a drawn (not fixed) coefficient whose default 0 makes it vanish from
    the formula (BCO's reward shift delta, drawn from (-10, 10)) is taken as 1, so that ignoring it shows."""
    fixed = dict(cfg.coefficients)
    out = dict(coefficients)
    for p in cfg.record.params:
        if p.name not in fixed and p.default == 0.0 and p.draw[0] == "uniform" and p.draw[1] < 1.0 < p.draw[2]:
            out[p.name] = 1.0
    return out


def _diagnose_margin(
    per_example: Callable[[P.LossSpec], Callable], variant: str, beta: float | None, eps: float | None
) -> list[str]:
    """The closed-form variants' diagnosis: the registry's `mistakes` of `variant` the target's per-example
    losses match (and the claimed formula does not), else the family members it matches.

    `per_example(spec)` returns the target as fn(pc, pr, rc, rr) -> (B,).
    """
    mistakes = V.REGISTRY[variant].mistakes
    matches: dict[str, bool] = {a.name: True for a in LOSS_ALTERNATIVES if a.name in mistakes}
    claimed_matches, half_matches = True, True
    try:
        for coef, e in _coefficients(variant, beta, eps):
            spec = P.LossSpec(variant, beta=coef, label_smoothing=e, tau=coef)
            fn = per_example(spec)
            for batch in _diagnostic_batches():
                with torch.no_grad():
                    got = fn(*(t.clone() for t in batch))
                if not isinstance(got, torch.Tensor) or got.shape != batch[0].shape:
                    return []
                got = got.detach().double()
                scale = P.tolerance_scale(spec, batch)
                tol = P.TOLERANCE_K * P.EPS_FLOAT32 * scale
                expected = spec.losses(_h(*batch))
                claimed_matches &= bool(((got - expected).abs() <= tol).all())
                half_matches &= _matches_half_precision(got, spec, batch, tol)
                for a in LOSS_ALTERNATIVES:
                    if matches.get(a.name):
                        alt = a.losses(spec, *batch)
                        matches[a.name] = bool(((got - alt).abs() <= tol + 1e-6 * alt.abs()).all())
    except KeyboardInterrupt:
        raise
    except BaseException:  # whatever the target raises (SystemExit included), nothing can be diagnosed
        return []
    if claimed_matches:
        return []
    found = [f"{a.name}: its values are {a.says}" for a in LOSS_ALTERNATIVES if matches.get(a.name)]
    if not found:
        found = _family_members_matching(per_example, variant, beta, eps)
    if not found and half_matches:
        found = ["half-precision: its values match the formula only to half-precision (float16/bfloat16) rounding"]
    return found


# ---------------------------------------------------------------------------------------------------
# The loss family: every member is a candidate for every claimed variant

DIAGNOSTIC_LENGTHS = (torch.tensor([3, 1, 7, 2, 5, 4]), torch.tensor([1, 4, 2, 6, 3, 8]))  # unequal, so h_bar != h


def _defaults(key: str) -> dict:
    import inspect

    from dpo_ref.family import LOSS_FAMILY

    v = LOSS_FAMILY[key]
    return {n: p.default for n, p in inspect.signature(v.fn).parameters.items() if n in v.coefficients}


def coefficients_for(key: str, claimed: dict) -> dict:
    """The coefficients family member `key` is evaluated with when a target claiming `claimed` is compared with
    it: the same name when claimed, beta and tau standing for each other (TRL's convention), else `key`'s own
    default (what a library falls back to)."""
    out = {}
    for name, default in _defaults(key).items():
        if name in claimed:
            out[name] = claimed[name]
        elif name == "beta" and "tau" in claimed:
            out[name] = claimed["tau"]
        elif name == "tau" and "beta" in claimed and "beta" not in _defaults(key):
            out[name] = claimed["beta"]
        else:
            out[name] = default
    return out


def family_alternatives(key: str, claimed: dict, lengths: bool) -> list[tuple[str, str, Callable]]:
    """(name, what it is, fn(pc, pr, rc, rr, nc, nr) -> (B,) float64): first the common mistakes in `key` itself
    (the closed-form level's catalogue carried over: chosen/rejected swapped; the scale coefficient ignored,
    squared, outside the loss, dividing; no reference, the reference's sign flipped; any other coefficient
    ignored; for the length-normalised: counts one too many, no normalisation; IPO's target 1/tau), then every
    other family member. A mistake of the claimed variant names what its code does to that variant, so it comes
    before a member it happens to equal (sigmoid_norm on sums is DPO). Members needing lengths only when
    `lengths`."""
    from dpo_ref.family import LOSS_FAMILY
    from dpo_ref.variants import ORACLE_NAME

    claimed_name = ORACLE_NAME[key]
    own = LOSS_FAMILY[key]
    fn = own.bind(**claimed)
    out = [
        (
            "chosen-rejected-swapped",
            f"{claimed_name} with chosen and rejected swapped",
            lambda pc, pr, rc, rr, nc, nr: fn(pr, pc, rr, rc, nr, nc),
        )
    ]
    for coef in ("beta", "tau"):
        if coef in claimed and claimed[coef] != 1.0:
            k = claimed[coef]
            out.append(
                ("beta-ignored", f"{claimed_name} with {coef} ignored (taken as 1)", own.bind(**{**claimed, coef: 1.0}))
            )
            out.append(("beta-squared", f"{claimed_name} with {coef} squared", own.bind(**{**claimed, coef: k * k})))
            unit = own.bind(**{**claimed, coef: 1.0})
            out.append(
                (
                    "beta-outside",
                    f"{claimed_name} at {coef} = 1, multiplied by {coef} (the coefficient outside the loss)",
                    lambda *x, unit=unit, k=k: k * unit(*x),
                )
            )
            out.append(
                (
                    "beta-divides",
                    f"{claimed_name} with 1/{coef} for {coef} (the coefficient used as a temperature)",
                    own.bind(**{**claimed, coef: 1.0 / k}),
                )
            )
    if not own.reference_free:
        out.append(
            (
                "no-reference",
                f"{claimed_name} without the reference model (reference log-probs taken as 0)",
                lambda pc, pr, rc, rr, nc, nr: fn(pc, pr, 0 * rc, 0 * rr, nc, nr),
            )
        )
        out.append(
            (
                "reference-sign",
                f"{claimed_name} with the reference log-probs' sign flipped (the reference log-ratio added)",
                lambda pc, pr, rc, rr, nc, nr: fn(pc, pr, -rc, -rr, nc, nr),
            )
        )
    for name, value in claimed.items():
        if name in ("beta", "tau") or value == 0.0:
            continue
        if own.reduces_to is not None and own.reduces_to[:2] == (name, 0.0):
            continue  # there it is another member (rDPO at eps = 0 is DPO), named as that member below
        out.append(
            (f"{name}-ignored", f"{claimed_name} with {name} ignored (taken as 0)", own.bind(**{**claimed, name: 0.0}))
        )
    if own.needs_lengths:
        out.append(
            (
                "count-plus-one",
                f"{claimed_name} with every token count one too many (n + 1: the unshifted completion mask, "
                "which counts a first token that has no log-prob)",
                lambda pc, pr, rc, rr, nc, nr: fn(pc, pr, rc, rr, nc + 1, nr + 1),
            )
        )
        out.append(
            (
                "not-length-normalised",
                f"{claimed_name} on summed log-probs (no division by the token counts)",
                lambda pc, pr, rc, rr, nc, nr: fn(pc, pr, rc, rr, torch.ones_like(nc), torch.ones_like(nr)),
            )
        )
    if key == "ipo":  # IPO on per-token averages: the closed-form IPO's own mistake
        out.append(
            (
                "ipo-target-1/tau",
                f"{claimed_name} with target 1/tau instead of 1/(2 tau): (h_bar - 1/tau)^2",
                own.bind(**{**claimed, "tau": claimed["tau"] / 2}),
            )
        )
    for other, v in LOSS_FAMILY.items():
        if other == key or (v.needs_lengths and not lengths):
            continue
        coefs = coefficients_for(other, claimed)
        if v.reduces_to is not None and coefs.get(v.reduces_to[0]) == v.reduces_to[1]:
            continue  # there it is another member (cDPO and rDPO at eps = 0 are plain DPO), already a candidate
        shown = ", ".join(f"{k}={x!r}" for k, x in coefs.items())
        out.append(
            (
                ORACLE_NAME[other],
                f"{ORACLE_NAME[other]}({shown}) ({v.paper}), not {claimed_name}",
                v.bind(**coefs),
            )
        )
    return out


def _family_tolerance(expected: torch.Tensor, batch) -> torch.Tensor:
    """A diagnosis tolerance (not the verdict's): float32-level rounding of the inputs' size times a generous
    slope, plus relative 1e-6. The alternatives differ from each other by far more on the diagnostic inputs."""
    size = sum(t.abs() for t in batch)  # (B,)
    return P.TOLERANCE_K * P.EPS_FLOAT32 * (expected.abs() + 1.0) * (size + 1.0) + 1e-6 * expected.abs()


def _target_outputs(fn, batches, lengths) -> list[torch.Tensor] | None:
    """The target's float64 outputs on the diagnostic batches; None if it raises or returns the wrong shape."""
    outs = []
    try:
        for batch in batches:
            with torch.no_grad():
                got = fn(*(t.clone() for t in batch), *(n.clone() for n in lengths))
            if not isinstance(got, torch.Tensor) or got.shape != batch[0].shape:
                return None
            outs.append(got.detach().double())
    except KeyboardInterrupt:
        raise
    except BaseException:  # whatever the target raises (SystemExit included), nothing can be diagnosed
        return None
    return outs


def _matching(outs, batches, alternatives, mean_only: bool) -> list[str]:
    """The sentences of the alternatives every output matches (one whose coefficients are invalid is skipped)."""
    found = []
    for name, says, alt_fn in alternatives:
        try:
            alts = [alt_fn(*batch, *DIAGNOSTIC_LENGTHS) for batch in batches]
        except Exception:  # e.g. EXO with label_smoothing 0: not a candidate at these coefficients
            continue
        if mean_only:
            alts = [a.mean().expand_as(a) for a in alts]
        if all(bool(((g - a).abs() <= _family_tolerance(a, b)).all()) for g, a, b in zip(outs, alts, batches)):
            found.append(f"{name}: its values are {says}")
    return found


def diagnose_family(target, key: str, claimed: dict) -> list[str]:
    """Name the family members (and mistakes) whose values a target claiming family variant `key` matches.

    `target` is a `LossTarget`; [] when its values match the claim or nothing, or it cannot be evaluated."""
    from dpo_ref.family import LOSS_FAMILY

    batches = _diagnostic_batches()
    outs = _target_outputs(target.per_example(claimed), batches, DIAGNOSTIC_LENGTHS)
    if outs is None:
        return []
    mean_only = not LOSS_FAMILY[key].per_example and target.reduction != "per-example"
    claim = [(key, "", LOSS_FAMILY[key].bind(**claimed))]
    if _matching(outs, batches, claim, mean_only):
        return []
    return _matching(outs, batches, family_alternatives(key, claimed, lengths=target.lengths), mean_only)


def _family_members_matching(per_example, variant: str, beta: float | None, eps: float | None) -> list[str]:
    """For a dpo/cdpo/ipo claim no classic alternative explains: the family members (without lengths) it matches."""
    record = V.REGISTRY[variant]
    coef = beta if beta is not None else 0.5
    smoothing = (eps or 0.15) if "label_smoothing" in record.coefficients else 0.0
    spec = P.LossSpec(variant, beta=coef, label_smoothing=smoothing, tau=coef)
    key, claimed = record.key, spec.coefficients
    fn = per_example(spec)
    batches = _diagnostic_batches()
    outs = _target_outputs(lambda pc, pr, rc, rr, nc, nr: fn(pc, pr, rc, rr), batches, DIAGNOSTIC_LENGTHS)
    if outs is None:
        return []
    classic = ("chosen-rejected-swapped", "beta-ignored", "no-reference") + ALTERNATIVE_NAMES
    members = [a for a in family_alternatives(key, claimed, lengths=False) if a[0] not in classic]
    return _matching(outs, batches, members, mean_only=False)


def batch_sum_diagnosis() -> str:
    return (
        "batch-sum: returns the sum of the per-example losses over the batch, so its gradient grows with the "
        "batch size; return the mean (or per-example losses), or declare reduction='sum' (--reduction sum)"
    )


# ---------------------------------------------------------------------------------------------------
# Log-prob level: alternatives on the padded batch, j indexing the scored label labels[:, j + 1]


def diagnostic_token_batch() -> TokenBatch:
    """Right padding, no extra: the longest row reaches the last position, the others end in padding."""
    gen = torch.Generator().manual_seed(7)
    V, rows = 11, []
    for p, r in ((2, 3), (3, 4), (1, 2)):
        labels = torch.randint(1, V, (p + r,), generator=gen)
        labels[:p] = IGNORE_INDEX
        rows.append((labels, torch.randn(p + r, V, generator=gen, dtype=torch.float64) * 3.0))
    return TokenBatch(rows=rows, vocab_size=V, padding_side="right", extra_padding=0, seed=3)


def first_label_batch() -> TokenBatch:
    """`diagnostic_token_batch` with a fourth row that has no prompt, so its first label is set (and never scored:
    nothing predicts it); right padding, so the row ends in padding."""
    batch = diagnostic_token_batch()
    gen = torch.Generator().manual_seed(11)
    labels = torch.randint(1, batch.vocab_size, (3,), generator=gen)
    logits = torch.randn(3, batch.vocab_size, generator=gen, dtype=torch.float64) * 3.0
    batch.rows.append((labels, logits))
    return batch


def _first_label_wrapped(logits: torch.Tensor, labels: torch.Tensor, average: bool) -> torch.Tensor:
    """torch.roll(labels, -1) with the wrapped-around last position left scored: each row's first label, where set,
    is scored with the row's last logits (pad filler, for a row that ends in padding). (B,)"""
    lp = torch.log_softmax(logits.double(), dim=-1)
    target = labels[:, 1:]
    scored = target != IGNORE_INDEX
    tok = torch.gather(lp[:, :-1], 2, target.clamp_min(0)[..., None])[..., 0]
    wrapped = labels[:, 0] != IGNORE_INDEX  # (B,)
    total = (tok * scored).sum(-1) + torch.gather(lp[:, -1], 1, labels[:, :1].clamp_min(0))[:, 0] * wrapped
    return total / (scored.sum(-1) + wrapped).clamp_min(1) if average else total


def _values_on(fn: Callable, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """The target's (B,) values on copies of a diagnostic batch, float64; None when it raises (whatever it raises,
    SystemExit included: then nothing can be diagnosed) or returns something else."""
    try:
        with torch.no_grad():
            got = fn(logits.clone(), labels.clone())
    except KeyboardInterrupt:
        raise
    except BaseException:
        return None
    if not isinstance(got, torch.Tensor) or got.shape != (logits.shape[0],):
        return None
    return got.detach().double()


def _diagnose_first_label(fn: Callable, average: bool) -> list[str]:
    """For a target right on the batches with prompts: is it wrong only where a row's first label is set?"""
    batch = first_label_batch()
    logits, labels = batch.padded()
    got = _values_on(fn, logits, labels)
    if got is None:
        return []
    tol = P.TOLERANCE_K * P.EPS_FLOAT32 * P.logps_tolerance_scale(batch.rows)
    if bool(((got - P.loop_sequence_logps(batch.rows, average)).abs() <= tol).all()):
        return []
    if bool(((got - _first_label_wrapped(logits, labels, average)).abs() <= tol).all()):
        return [
            "first-label-wrapped: its values score a row's first label (set when the row has no prompt) with the "
            "row's last logits: a torch.roll shift whose wrapped-around last position is not masked"
        ]
    return []


def _logps_alternatives(
    logits: torch.Tensor, labels: torch.Tensor, average: bool
) -> list[tuple[str, str, torch.Tensor]]:
    """(name, what it is, per-row values) for each known log-prob mistake, on padded (B, T, V) / (B, T)."""
    target = labels[:, 1:]  # (B, T-1)
    scored = target != IGNORE_INDEX
    ids = target.clamp_min(0)[..., None]  # -100 read as token 0

    def token(lp: torch.Tensor) -> torch.Tensor:  # (B, T-1) log-prob of labels[:, j+1] at position j
        return torch.gather(lp[:, :-1], 2, ids)[..., 0].double()

    def reduce(values: torch.Tensor, mask: torch.Tensor, mean: bool = average) -> torch.Tensor:
        total = (values * mask).sum(-1)
        return total / mask.sum(-1).clamp_min(1) if mean else total

    lp = torch.log_softmax(logits.double(), dim=-1)
    tok = token(lp)
    j = torch.arange(target.shape[1])[None, :]  # (1, T-1)
    first = torch.where(scored, j, target.shape[1]).amin(-1, keepdim=True)  # (B, 1) first scored label
    last = torch.where(scored, j, -1).amax(-1, keepdim=True)  # (B, 1) last scored label
    no_shift = torch.gather(lp[:, 1:], 2, ids)[..., 0]
    out = [
        (
            "no-shift",
            "scored without the one-token shift (position t's logits score token t)",
            reduce(no_shift, scored),
        ),
        ("last-token-dropped", "missing the last scored token of each row", reduce(tok, scored & (j != last))),
        ("last-token-dropped", "missing the last position's token", reduce(tok, scored & (j != target.shape[1] - 1))),
        ("prompt-counted", "counting the prompt's positions too (as token 0)", reduce(tok, scored | (j < first))),
        (
            "padding-counted",
            "counting the padding after the response too (as token 0)",
            reduce(tok, scored | (j > first)),
        ),
        ("padding-counted", "counting every unscored position (prompt and padding) as token 0", reduce(tok, j >= 0)),
    ]
    for dtype, name in ((torch.float16, "float16-scoring"), (torch.bfloat16, "bfloat16-scoring")):
        half = token(torch.log_softmax(logits.to(dtype), dim=-1))
        out.append((name, f"a log-softmax computed in {str(dtype)[6:]}", reduce(half, scored)))
    if average:
        out.append(("sum-not-mean", "the sum over scored tokens, not their mean", reduce(tok, scored, mean=False)))
    else:
        out.append(("mean-not-sum", "the mean over scored tokens, not their sum", reduce(tok, scored, mean=True)))
    return out


def diagnose_logps(fn: Callable, average: bool) -> list[str]:
    """Name the log-prob conventions the target's values match (and the claimed one does not)."""
    batch = diagnostic_token_batch()
    logits, labels = batch.padded()
    got = _values_on(fn, logits, labels)
    if got is None:
        return []
    tol = P.TOLERANCE_K * P.EPS_FLOAT32 * P.logps_tolerance_scale(batch.rows)
    expected = P.loop_sequence_logps(batch.rows, average)
    if bool(((got - expected).abs() <= tol).all()):
        return _diagnose_first_label(fn, average)
    found: dict[str, str] = {}
    residual: dict[str, float] = {}  # the half-precision candidates matched, by their largest residual
    for name, says, alt in _logps_alternatives(logits, labels, average):
        slack = 4 * HALF_EPS * alt.abs() if name.endswith("scoring") else 0.0  # half rounding is not reproducible
        if name not in found and bool(((got - alt).abs() <= tol + slack).all()):
            found[name] = f"{name}: its values are {says}"
            if name.endswith("scoring"):
                residual[name] = float((got - alt).abs().max())
    if len(residual) == 2:
        # The slack is the coarser (bfloat16) rounding, so a float16 log-softmax is within it of the bfloat16
        # candidate and a bfloat16 one within it of the float16 candidate: both match. The two roundings differ
        # by 8x in eps, so the dtype actually used leaves the smaller residual; name only that one.
        del found[max(residual, key=residual.get)]
    # Half precision explains per token about eps_half (|logit| + 1) (the logits and the log-softmax rounded to a
    # half's 8 or 11 significant bits; 2x for slack), n of them per row: not the float32 tolerance's K * 4 factor,
    # which would make a window tens of nats wide and call unrelated mistakes "half-precision".
    half = 2 * HALF_EPS * (P.logps_tolerance_scale(batch.rows) - 1.0) / 4 + tol
    if not found and bool(((got - expected).abs() <= half).all()):
        found["half-precision"] = "half-precision: its values match only to half-precision (float16/bfloat16) rounding"
    return list(found.values())
