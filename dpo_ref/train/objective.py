"""The trainer's objective for every loss of the registry (`dpo_ref.variants`): `--loss`, `--coef`, `--loss-weights`.

`--loss NAME` takes any registry name or alias (`dpo_ref.variants.VARIANTS`, `ALIASES`), or several joined by
commas (`--loss dpo,sft`) for TRL's multi-loss `loss_type=[...]`; `--loss-weights NAME=W,...` weighs them
(default 1 each): the objective is sum_i w_i mean(L_i), as TRL's `loss_weights`. Each loss's coefficients are
the registry record's `params`: their defaults, and the values given by `--coef NAME=V,...` (`--coef
simpo.beta=2` for one loss of a combination) or by the shorthands `--beta`, `--tau`, `--label-smoothing`,
each checked against the record's range (`Param.low`, `high`, inclusive or not) and then by the loss
function itself, before anything runs.

DPO, cDPO and paper IPO alone keep the trainer's original path (`dpo_ref.train.loop.preference_loss`, bit
for bit); `is_classic` says which. Every other objective goes through `Objective.__call__`: length-normalised
losses get the scored-token counts, batch-coupled ones (`aot`, `aot_unpaired`, `sft`) the whole micro-batch
at once, `ipo-mean` the per-token averages of the four log-probs (its record's `average`), and when every loss
is `reference_free` (SimPO, SFT) the trainer builds no reference model (`needs_reference`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from dpo_ref.errors import InputError
from dpo_ref.variants import ALIASES, VARIANTS, Param, Variant, get

LOSS_CHOICES: tuple[str, ...] = VARIANTS + ALIASES
CLASSIC = ("dpo", "cdpo", "ipo")  # the trainer's original losses: their own options and checks, unchanged
SHORTHANDS = {"beta": "--beta", "tau": "--tau", "label_smoothing": "--label-smoothing"}


def loss_help() -> str:
    return (
        "preference loss, any of the registry's (dpo_ref.variants): " + ", ".join(VARIANTS)
        + " (aliases " + ", ".join(ALIASES) + "); several joined by commas are summed, weighted by --loss-weights"
    )  # fmt: skip


def loss_names(text: str) -> tuple[str, ...]:
    """The canonical registry names of `--loss` (one, or several joined by commas); InputError otherwise."""
    names = []
    for part in str(text).split(","):
        part = part.strip()
        if part not in LOSS_CHOICES:
            choices = ", ".join(LOSS_CHOICES)
            raise InputError(f"--loss must be one of {choices} (or several joined by commas), got {part!r}")
        name = get(part).name
        if name in names:
            raise InputError(f"--loss names {name} twice")
        names.append(name)
    return tuple(names)


def loss_option(text: str) -> str:
    """argparse's type of `--loss`: the canonical names joined by commas (argparse's one-line error otherwise)."""
    import argparse

    try:
        return ",".join(loss_names(text))
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--loss ")) from None


def is_classic(cfg) -> bool:
    """Whether `cfg` trains DPO, cDPO or IPO alone with no --coef / --loss-weights: the original path."""
    return cfg.loss in CLASSIC and not cfg.coef and not cfg.loss_weights


def _number(text: str, option: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{option} {name}={text!r}: expected a number") from None
    if not math.isfinite(value):
        raise InputError(f"{option} {name} must be finite, got {text}")
    return value


def _assignments(text: str, option: str) -> list[tuple[str, float]]:
    """`NAME=V,NAME=V` as [(NAME, V)]; InputError naming `option` on anything else."""
    out = []
    for part in str(text).split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"{option} takes NAME=VALUE pairs joined by commas, got {part.strip()!r}")
        out.append((name, _number(value.strip(), option, name)))
    return out


def check_param(p: Param, value: float, option: str) -> float:
    """`value` if it lies in the registry's range of `p`, else InputError naming the option and the range."""
    low_ok = p.low is None or (value >= p.low if p.low_inclusive else value > p.low)
    high_ok = p.high is None or (value <= p.high if p.high_inclusive else value < p.high)
    if not (low_ok and high_ok):
        raise InputError(f"{option} must be in {p.interval()} ({p.means or p.name}), got {value:g}")
    return float(value)


@dataclass(frozen=True)
class Term:
    """One loss of the objective: its registry record, weight and coefficients."""

    variant: Variant
    weight: float
    coefficients: tuple[tuple[str, float], ...]

    @property
    def name(self) -> str:
        return self.variant.name


@dataclass(frozen=True)
class Objective:
    """sum_i w_i L_i over the `terms`; called like a family loss, with the token counts."""

    terms: tuple[Term, ...]

    @property
    def needs_reference(self) -> bool:
        return not all(t.variant.reference_free for t in self.terms)

    @property
    def combined(self) -> bool:
        return len(self.terms) > 1

    def settings(self) -> dict:
        """{name: {"weight": w, coefficient: value}} (the run's record of what it trains)."""
        return {t.name: {"weight": t.weight, **dict(t.coefficients)} for t in self.terms}

    def __call__(self, pc, pr, rc, rr, chosen_lengths, rejected_lengths):
        """(losses (B,) = sum_i w_i L_i, chosen rewards, rejected rewards, {name: L_i (B,)}); rewards are the
        first loss's. No validation (the hot path): the coefficients were checked by `resolve`."""
        total, rewards, parts = None, None, {}
        for t in self.terms:
            v, args = t.variant, (pc, pr, rc, rr)
            if v.average:  # the log-prob level averages over the scored tokens (ipo-mean)
                n_w, n_l = chosen_lengths.to(pc.dtype), rejected_lengths.to(pc.dtype)
                args = (pc / n_w, pr / n_l, rc / n_w, rr / n_l)
            kw = dict(t.coefficients)
            if v.needs_lengths:
                kw.update(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
            result = v.fn(*args, **kw, validate=False)
            parts[t.name] = result.losses
            weighted = result.losses if t.weight == 1.0 else t.weight * result.losses
            total = weighted if total is None else total + weighted
            if rewards is None:
                rewards = (result.chosen_rewards, result.rejected_rewards)
        return total, rewards[0], rewards[1], parts


def _probe(v: Variant, coefficients: dict, option: str) -> None:
    """The loss function's own validation of the coefficients (as `dpo_ref.oracle.api.family_coefficients`)."""
    import torch

    x = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    n = torch.tensor([1, 2])
    lengths = {"chosen_lengths": n, "rejected_lengths": n} if v.needs_lengths else {}
    try:
        v.fn(x, x, x, x, **lengths, **coefficients)
    except InputError as err:
        raise InputError(f"{option}: {err}") from None


@lru_cache(maxsize=64)
def _resolve(loss: str, coef: str | None, loss_weights: str | None, shorthands: tuple) -> Objective:
    names = loss_names(loss)
    weights = dict.fromkeys(names, 1.0)
    if loss_weights:
        given = _assignments(loss_weights, "--loss-weights")
        for name, w in given:
            canonical = get(name).name if name in LOSS_CHOICES else name
            if canonical not in weights:
                raise InputError(f"--loss-weights names {name}, which --loss ({loss}) does not train")
            if w < 0:
                raise InputError(f"--loss-weights {name} must be >= 0, got {w:g}")
            weights[canonical] = w
        if not any(weights.values()):
            raise InputError("--loss-weights must give some loss a weight > 0")
    variants = [get(n) for n in names]
    values: list[dict] = [v.defaults() for v in variants]
    sources: list[dict] = [{p: f"--coef {p}" for p in v.coefficients} for v in variants]
    given = [(SHORTHANDS[k], None, k, value) for k, value in shorthands]
    if coef:
        for key, value in _assignments(coef, "--coef"):
            scope, dot, name = key.rpartition(".")
            if dot and scope not in LOSS_CHOICES:
                raise InputError(f"--coef {key}: {scope!r} is not a loss (expected LOSS.NAME=VALUE or NAME=VALUE)")
            given.append((f"--coef {key}", get(scope).name if dot else None, name, value))
    for option, scope, name, value in given:
        if scope is not None and scope not in names:
            raise InputError(f"{option}: --loss ({loss}) does not train {scope}")
        targets = [i for i, v in enumerate(variants) if (scope is None or v.name == scope) and name in v.coefficients]
        if not targets:
            takes = "; ".join(f"{v.name}: {', '.join(v.coefficients) or 'none'}" for v in variants)
            raise InputError(f"{option}: no loss of --loss {loss} takes {name} (their coefficients: {takes})")
        for i in targets:
            p = next(p for p in variants[i].params if p.name == name)
            values[i][name] = check_param(p, value, option)
            sources[i][name] = option
    terms = []
    for (
        v,
        c,
        src,
    ) in zip(variants, values, sources):
        for name in c:  # the function's own checks too (e.g. a coefficient whose product overflows)
            _probe(v, {name: c[name]}, src[name])
        _probe(v, c, "--coef")
        terms.append(Term(v, weights[v.name], tuple(c.items())))
    return Objective(tuple(terms))


def resolve(cfg) -> Objective:
    """The objective of `cfg` (InputError naming the option at fault); the same object for the same settings."""
    shorthands = tuple((k, float(getattr(cfg, k))) for k in SHORTHANDS if getattr(cfg, k) is not None)
    for k, value in shorthands:
        if not math.isfinite(value):
            raise InputError(f"{SHORTHANDS[k]} must be finite, got {value}")
    return _resolve(cfg.loss, cfg.coef, cfg.loss_weights, shorthands)


def step0_value(obj: Objective) -> float | None:
    """The objective at policy = reference (h = 0, rho_w = rho_l = 0) from the registry's mpmath references, or None
    when a loss is reference-free (its step-0 value depends on the log-probs themselves)."""
    if obj.needs_reference is False or any(t.variant.reference_free for t in obj.terms):
        return None
    row = (-3.0, -5.0, -3.0, -5.0, 3, 5)  # any policy = reference row gives the same value
    total = 0.0
    for t in obj.terms:
        total += t.weight * float(t.variant.reference([row], dict(t.coefficients))[0])
    return total
