"""The registry of preference losses: one record per variant, every fact about it in one place (OpInfo style).

A record (`Variant`) says what the loss is and how to check it:

- `name`, the canonical name the oracle, the CLI (`--variant`) and the reports use, and `key`, its name in the
  loss family (`LOSS_FAMILY`, TRL's `loss_type` where TRL has it); `aliases`, other names people use;
- `function`, the reference implementation (`module:function`, resolved on first use as `fn`), and
  `reference`, an independent high-precision one written from the paper (mpmath at 30 digits; it never calls
  dpo_ref's losses), `reference(rows, c) -> [L_i]` over rows (pc, pr, rc, rr, n_w, n_l) and coefficients c;
- `params`, its coefficients with their defaults, valid ranges and the range the checks draw from;
- its structure: `needs_lengths` (takes scored-token counts), `length_normalised`, `batch_coupled` (one
  loss per quantile or per batch, not per example), `shift_invariant` (adding f(x) to both policy log-probs),
  `reference_free`, `optimum(**c)`, `bounds(c)`, and what the tolerances need (`constants`, `gradient_terms`,
  the `kink` where the gradient jumps, the `quantile_key` a sorted loss pairs by, the `slope` bound of a
  batch-coupled loss on large batches), and `rewards`, the implicit rewards a target may return beside the loss
  (beta (log pi - log pi_ref) unless the variant defines its own; none for SFT);
- `paper` (and equation), `proofs` (ids in `proofs/`), `properties` (the checks that apply: the oracle, the
  suite and the docs read them), `oracle` (which check table: "closed-form" margin losses have closed-form
  values and gradients, the others the mpmath reference), `average` (the log-prob level averages), and
  `adapters`, other libraries' names for it.

Every consumer (losses API, properties, strategies, the oracle's checks and diagnoses, the matrix, the docs,
the CLI's `--variant` choices) reads this module; none keeps its own list of names. Importing it imports
neither torch nor mpmath (the CLI and the pytest plugin read the names at start-up): functions resolve on
first use, and the mpmath helpers import mpmath when a reference is evaluated.

Adding a variant: its loss function (in `dpo_ref/family.py`), one `Variant(...)` below, its proof (or the
reason for none, in `proofs`), and its tests; see docs/architecture.md.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FAMILY_MAX_EXAMPLES = 25  # default examples per check for an mpmath-checked variant (~10 ms a row)

YES, NO, EQUAL_LENGTHS, BATCH_CONSTANT = "yes", "no", "equal_lengths", "batch_constant"
CLOSED_FORM, MPMATH = "closed-form", "mpmath"


# --- the independent references: mpmath, imported when a reference is evaluated ----------------------


_PRECISION_SET = []


def _mp():
    """mpmath, at 30 significant digits from the first use on (set once: `mpmath.diff` raises the precision
    while it evaluates a reference, which must not be reset underneath it)."""
    import mpmath

    if not _PRECISION_SET:
        mpmath.mp.dps = 30
        _PRECISION_SET.append(True)
    return mpmath


def logsig(x):
    """log sigma(x) in mpmath, without cancellation on either side."""
    mp = _mp()
    return -mp.log1p(mp.exp(-x)) if x >= 0 else x - mp.log1p(mp.exp(x))


def sig(x):
    return _mp().exp(logsig(x))


def margin(pc, pr, rc, rr):
    """h = (pc - rc) - (pr - rr)."""
    return (pc - rc) - (pr - rr)


def normalised_margin(pc, pr, rc, rr, nc, nr):
    """h_bar = (pc - rc) / n_w - (pr - rr) / n_l."""
    return (pc - rc) / nc - (pr - rr) / nr


def smoothed(z, e):
    """-(1 - e) log sigma(z) - e log sigma(-z)."""
    return -(1 - e) * logsig(z) - e * logsig(-z)


def _pairwise(row_loss: Callable) -> Callable:
    """A per-example reference (row, c) -> L as a batch reference (rows, c) -> [L_i]."""
    return lambda rows, c: [row_loss(*row, c) for row in rows]


def _exo(z, e):
    mp = _mp()
    return sig(z) * (logsig(z) - mp.log(1 - e)) + sig(-z) * (logsig(-z) - mp.log(e))


def _discopop(u, tau):
    s = sig(u / tau)
    return (1 - s) * -logsig(u) + s * _mp().exp(-u)


def _aot(rows, c, key_w, key_l):
    u = sorted(key_w(*r) for r in rows)
    v = sorted(key_l(*r) for r in rows)
    return [smoothed(c["beta"] * (a - b), c.get("label_smoothing", 0)) for a, b in zip(u, v)]


def _sft(rows, c):
    n_bar = _mp().fsum(r[4] for r in rows) / len(rows)
    return [-r[0] / n_bar for r in rows]


def _sft_slope(rows, c):
    """d sum_i L_i / d pc_j = -1 / n_bar (n_bar the batch's mean chosen length); no other input moves it."""
    return len(rows) / float(sum(float(r[4]) for r in rows))


# --- coefficients -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One coefficient: its default, its valid range (as the loss function validates it) and what the checks
    draw: ("log", lo, hi) log-uniform with the usual values and ends, ("probability", hi) a flip rate in
    (0, hi], ("uniform", lo, hi)."""

    name: str
    default: float
    low: float | None = None  # None: unbounded below
    high: float | None = None
    low_inclusive: bool = False
    high_inclusive: bool = False
    draw: tuple = ("log", 1e-3, 1e3)
    means: str = ""
    keywords: tuple[str, ...] = ()  # the keywords a target may take it as, preferred first (default: its name)

    def __post_init__(self) -> None:
        if not self.keywords:
            object.__setattr__(self, "keywords", (self.name,))

    def interval(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'[' if self.low_inclusive else '('}{lo}, {hi}{']' if self.high_inclusive else ')'}"


BETA = Param("beta", 0.1, 0.0, None, means="KL coefficient: the scale of the implicit reward")
TAU = Param("tau", 0.1, 0.0, None, means="IPO regularisation: the target margin is 1/(2 tau)")
TAU_AS_BETA = Param("tau", 0.1, 0.0, None, means=TAU.means, keywords=("beta", "tau"))  # most APIs call it beta
TAU_OR_BETA = Param("tau", 0.1, 0.0, None, means=TAU.means, keywords=("tau", "beta"))  # TRL: beta stands for tau
FLIP = Param("label_smoothing", 0.1, 0.0, 0.5, True, draw=("probability", 0.49), means="label-flip rate eps")


def _with_default(p: Param, default: float, **kw: Any) -> Param:
    return Param(**{**p.__dict__, "default": default, **kw})


# --- optima and bounds (facts from the papers and proofs/) -------------------------------------------


def _none(**_: float) -> None:
    return None


def _cdpo_optimum(beta: float = 0.1, label_smoothing: float = 0.0, **_: float) -> dict[str, float] | None:
    if label_smoothing <= 0:
        return None
    return {"margin": math.log((1.0 - label_smoothing) / label_smoothing) / beta}


def _ipo_optimum(tau: float = 0.1, **_: float) -> dict[str, float]:
    return {"margin": 1.0 / (2.0 * tau)}


def _nonnegative(c: dict) -> tuple[float | None, float | None]:
    return 0.0, None


def scaled_logratios(pc, pr, rc, rr, nc, nr, c):
    """The implicit rewards of DPO and of every loss TRL trains: beta (log pi - log pi_ref) per response (TRL's
    `beta * chosen_logratios`; its beta stands for tau under IPO)."""
    k = c["beta"] if "beta" in c else c["tau"]
    return k * (pc - rc), k * (pr - rr)


def normalised_logratios(pc, pr, rc, rr, nc, nr, c):
    """The length-normalised losses' own rewards (dpo_ref.family's ipo-norm and sigmoid_norm): beta (rho_w, rho_l) / n, the
    per-token log-ratios their margin h_bar is made of. TRL logs the unnormalised beta rho_w, beta rho_l for them (also accepted)."""
    k = c["beta"] if "beta" in c else c["tau"]
    return k * (pc - rc) / nc, k * (pr - rr) / nr


def simpo_rewards(pc, pr, rc, rr, nc, nr, c):
    """SimPO's reward (Meng et al. 2024, Eq. 4): beta log pi(y) / |y|, no reference (TRL's CPO trainer and
    Liger report these)."""
    return c["beta"] * pc / nc, c["beta"] * pr / nr


NORMALISED_REWARDS = (normalised_logratios, scaled_logratios)


@dataclass(frozen=True)
class Variant:
    """One preference loss and every fact the code, the checks and the docs need about it (module docstring)."""

    name: str
    key: str
    function: str  # "module:function"
    reference: Callable[[list, dict], list]
    params: tuple[Param, ...]
    paper: str
    formula: str
    trl: str | None = None  # the TRL 1.16 loss_type computing it
    needs_lengths: bool = False
    length_normalised: bool = False
    batch_coupled: bool = False
    shift_invariant: str = YES
    reference_free: bool = False
    optimum: Callable[..., dict[str, float] | None] = _none
    bounds: Callable[[dict], tuple[float | None, float | None]] = _nonnegative
    constants: Callable[[dict], tuple[float, float]] = lambda c: (0.0, 0.0)  # (C_h, C_L), checks.family_properties
    gradient_terms: Callable[[dict, float], float] = lambda c, loss: c.get("beta", 1.0)
    kink: Callable[[tuple, dict], tuple[float, float]] | None = None  # (distance, scale) to a gradient jump
    quantile_key: Callable[[tuple, int], float] | None = None  # the sort key of a quantile-paired loss
    # the implicit rewards a target may return beside the loss, each (pc, pr, rc, rr, nc, nr, c) -> (chosen,
    # rejected) on tensors or numbers: the accepted definitions, the variant's own first; (): none (SFT)
    rewards: tuple[Callable, ...] = (scaled_logratios,)
    slope: Callable[[list, dict], float] | None = None  # batch-coupled: a bound on |d sum_i L_i / dx| for any one
    # input x, the tolerance's G on large batches (its mpmath derivatives cost 4 B whole-batch evaluations there)
    proofs: tuple[str, ...] = ()
    no_proof: str = ""  # why there is no proof, when there is none
    properties: tuple[str, ...] = ()
    oracle: str = MPMATH
    average: bool = False  # the log-prob level averages over the scored tokens (ipo-mean)
    aliases: tuple[str, ...] = ()
    adapters: dict[str, str] = field(default_factory=dict)  # library -> its name for this loss (Liger's: its
    # adapter's `CLAIMS`, each verified as the variant it computes)
    reduces_to: tuple[str, float, str] | None = None  # (coefficient, value, variant): it is that variant there
    mistakes: tuple[str, ...] = ()  # closed-form diagnoses (`dpo_ref.oracle.diagnosis.LOSS_ALTERNATIVES`) to try

    @property
    def fn(self) -> Callable:
        """The reference implementation (imported on first use)."""
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def coefficients(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def per_example(self) -> bool:
        return not self.batch_coupled

    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.params}

    def describe(self, **c: float) -> str:
        return self.name + "(" + ", ".join(f"{k}={v!r}" for k, v in c.items()) + ")"

    def bind(self, **coefficients: float) -> Callable:
        """`fn(pc, pr, rc, rr, chosen_lengths, rejected_lengths) -> losses (B,)` with the coefficients bound."""
        unknown = set(coefficients) - set(self.coefficients)
        if unknown:
            from dpo_ref.errors import InputError

            raise InputError(f"{self.key} takes coefficients {self.coefficients}, not {sorted(unknown)}")
        fn = self.fn

        def losses(pc, pr, rc, rr, chosen_lengths=None, rejected_lengths=None):
            kw = dict(coefficients)
            if self.needs_lengths:
                kw.update(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
            return fn(pc, pr, rc, rr, **kw).losses

        return losses


# The properties (oracle checks) of the two tables, `dpo_ref.oracle.catalogue` and `dpo_ref.oracle.family_checks`.
MARGIN_PROPERTIES = ("values", "values_float32", "large_batch", "gradients", "z_cancellation", "init", "swap",
                     "permutation", "batch_independence", "finite", "inputs_unmodified", "reduction", "rewards",
                     "rewards_detached", "repeatable")  # fmt: skip
GENERAL_PROPERTIES = ("values", "values_float32", "gradients", "shift", "batch_structure", "bounds_finite",
                      "inputs_unmodified")  # fmt: skip


_COMMON_MISTAKES = ("chosen-rejected-swapped", "beta-ignored", "beta-squared")
_REFERENCE_MISTAKES = ("no-reference", "reference-sign")
DPO_MISTAKES = (*_COMMON_MISTAKES, "beta-outside", "beta-divides", "hinge", *_REFERENCE_MISTAKES, "ipo-not-dpo")
CDPO_MISTAKES = ("plain-dpo", "robust-dpo", "cdpo-weights-exchanged", *_COMMON_MISTAKES, "beta-divides", "hinge",
                 *_REFERENCE_MISTAKES, "ipo-not-dpo")  # fmt: skip
IPO_MISTAKES = ("ipo-target-1/tau", "ipo-times-tau-squared", *_COMMON_MISTAKES, *_REFERENCE_MISTAKES, "dpo-not-ipo")


REWARD_PROPERTIES = ("rewards", "rewards_detached")


def _general(*extra: str, rewards: bool = True) -> tuple[str, ...]:
    return GENERAL_PROPERTIES + extra + (REWARD_PROPERTIES if rewards else ())


_L = "dpo_ref.losses:"
_F = "dpo_ref.family:"
_h = margin
_hbar = normalised_margin


def _aot_slope(rows: list, c: dict) -> float:
    """One input moves one sorted key by 1, so one quantile's smoothed loss, whose slope in z is at most 1: beta."""
    return c["beta"]


def _hinge_kink(row: tuple, c: dict) -> tuple[float, float]:
    return c["beta"] * float(_h(*row[:4])) - 1.0, c["beta"]


RECORDS: tuple[Variant, ...] = (
    Variant(
        "dpo", "sigmoid", _L + "dpo_loss",
        _pairwise(lambda pc, pr, rc, rr, nc, nr, c: -logsig(c["beta"] * _h(pc, pr, rc, rr))),
        (BETA,), "Rafailov et al. 2023, Eq. 7", "-log sigma(beta h)", trl="sigmoid",
        proofs=("optimal-policy", "reward-reparam", "bt-cancellation", "reward-equivalence", "dpo-theorem-1",
                "dpo-loss", "dpo-gradient", "init-ln2", "implicit-reward-kl"),
        properties=MARGIN_PROPERTIES + ("gradient_signs", "monotone"), oracle=CLOSED_FORM, mistakes=DPO_MISTAKES,
        aliases=("sigmoid",), adapters={"trl": "sigmoid", "torchtune": "DPOLoss"},
    ),
    Variant(
        "cdpo", "cdpo", _L + "dpo_loss",
        _pairwise(lambda pc, pr, rc, rr, nc, nr, c: smoothed(c["beta"] * _h(pc, pr, rc, rr), c["label_smoothing"])),
        (BETA, FLIP), "Mitchell 2023 (cDPO note)", "-(1 - eps) log sigma(beta h) - eps log sigma(-beta h)",
        optimum=_cdpo_optimum, proofs=("cdpo", "exo-cdpo", "deterministic-preference"),
        reduces_to=("label_smoothing", 0.0, "dpo"),
        properties=MARGIN_PROPERTIES + ("optimum",), oracle=CLOSED_FORM, mistakes=CDPO_MISTAKES,
        adapters={"trl": "sigmoid + label_smoothing", "torchtune": "DPOLoss"},
    ),
    Variant(
        "ipo", "ipo_sum", _L + "ipo_loss",
        _pairwise(lambda pc, pr, rc, rr, nc, nr, c: (_h(pc, pr, rc, rr) - 1 / (2 * c["tau"])) ** 2),
        (TAU_AS_BETA,), "Azar et al. 2023, Eq. 17", "(h - 1/(2 tau))^2", optimum=_ipo_optimum,
        constants=lambda c: (1 / (2 * c["tau"]), 0.0), proofs=("ipo", "ipo-psi"),
        properties=MARGIN_PROPERTIES + ("optimum",), oracle=CLOSED_FORM, mistakes=IPO_MISTAKES,
    ),
    Variant(
        "ipo-mean", "ipo_sum", _L + "ipo_loss",
        _pairwise(lambda pc, pr, rc, rr, nc, nr, c: (_h(pc, pr, rc, rr) - 1 / (2 * c["tau"])) ** 2),
        (TAU_AS_BETA,), "Azar et al. 2023, Eq. 17 on length-averaged log-probs", "(h - 1/(2 tau))^2, h of averages",
        optimum=_ipo_optimum, constants=lambda c: (1 / (2 * c["tau"]), 0.0), proofs=("ipo", "ipo-noise"),
        properties=MARGIN_PROPERTIES + ("optimum",), oracle=CLOSED_FORM, mistakes=IPO_MISTAKES, average=True,
        adapters={"trl": "ipo"},
    ),
    Variant(
        "hinge", "hinge", _F + "hinge_loss",
        _pairwise(lambda pc, pr, rc, rr, nc, nr, c: max(_mp().mpf(0), 1 - c["beta"] * _h(pc, pr, rc, rr))),
        (BETA,), "Liu et al. 2023 (RSO), hinge-norm", "max(0, 1 - beta h)", trl="hinge",
        optimum=lambda beta=0.1, **_: {"margin_at_least": 1.0 / beta},
        constants=lambda c: (1 / c["beta"], 0.0), kink=_hinge_kink, proofs=("hinge",),
        properties=_general("hinge_margin"), adapters={"trl": "hinge", "torchtune": "RSOLoss"},
    ),
    Variant(
        "ipo-norm", "ipo", _F + "ipo_norm_loss",
        _pairwise(lambda pc, pr, rc, rr, nc, nr, c: (_hbar(pc, pr, rc, rr, nc, nr) - 1 / (2 * c["tau"])) ** 2),
        (TAU_OR_BETA,), "Azar et al. 2023, Eq. 17 on per-token averages", "(h_bar - 1/(2 tau))^2", trl="ipo",
        needs_lengths=True, length_normalised=True, shift_invariant=EQUAL_LENGTHS, optimum=_ipo_optimum,
        constants=lambda c: (1 / (2 * c["tau"]), 0.0), proofs=("ipo-noise",), rewards=NORMALISED_REWARDS,
        properties=_general("optimum", "flip_noise_optimum"), aliases=("ipo_norm",), adapters={"trl": "ipo"},
    ),
    Variant(
        "exo_pair", "exo_pair", _F + "exo_pair_loss",
        _pairwise(lambda pc, pr, rc, rr, nc, nr, c: _exo(c["beta"] * _h(pc, pr, rc, rr), c["label_smoothing"])),
        (BETA, _with_default(FLIP, 1e-3, low_inclusive=False)), "Ji et al. 2024, Eq. 16",
        "KL(Bern(sigma(beta h)) || Bern(1 - eps))", trl="exo_pair",
        optimum=lambda beta=0.1, label_smoothing=1e-3, **_: {
            "margin": math.log((1.0 - label_smoothing) / label_smoothing) / beta
        },
        bounds=lambda c: (0.0, -math.log(c["label_smoothing"])),
        constants=lambda c: (0.0, abs(math.log(c["label_smoothing"]))),
        gradient_terms=lambda c, loss: c["beta"] * (abs(math.log(c["label_smoothing"])) + 1),
        proofs=("exo-cdpo",), properties=_general("optimum"), adapters={"trl": "exo_pair"},
    ),
    Variant(
        "nca_pair", "nca_pair", _F + "nca_pair_loss",
        _pairwise(
            lambda pc, pr, rc, rr, nc, nr, c: -logsig(c["beta"] * (pc - rc))
            - logsig(-c["beta"] * (pc - rc)) / 2
            - logsig(-c["beta"] * (pr - rr)) / 2
        ),
        (BETA,), "Chen et al. 2024 (NCA)",
        "-log sigma(beta rho_w) - log sigma(-beta rho_w)/2 - log sigma(-beta rho_l)/2",
        trl="nca_pair", shift_invariant=NO, optimum=lambda beta=0.1, **_: {"chosen_logratio": math.log(2.0) / beta},
        proofs=("shift-invariance", "bounded-losses"), properties=_general("optimum"), adapters={"trl": "nca_pair"},
    ),
    Variant(
        "robust", "robust", _F + "robust_loss",
        _pairwise(
            lambda pc, pr, rc, rr, nc, nr, c: (
                -(1 - c["label_smoothing"]) * logsig(c["beta"] * _h(pc, pr, rc, rr))
                + c["label_smoothing"] * logsig(-c["beta"] * _h(pc, pr, rc, rr))
            )
            / (1 - 2 * c["label_smoothing"])
        ),
        (BETA, FLIP), "Chowdhury et al. 2024, rDPO", "[(1 - eps) l(h) - eps l(-h)] / (1 - 2 eps)", trl="robust",
        bounds=lambda c: (None, None) if c["label_smoothing"] > 0 else (0.0, None),
        gradient_terms=lambda c, loss: c["beta"] / (1 - 2 * c["label_smoothing"]),
        proofs=("robust-dpo",), properties=_general("robust_unbiased"), aliases=("rdpo",),
        reduces_to=("label_smoothing", 0.0, "dpo"),
        adapters={"trl": "robust"},
    ),
    Variant(
        "bco_pair", "bco_pair", _F + "bco_pair_loss",
        _pairwise(
            lambda pc, pr, rc, rr, nc, nr, c: -logsig(c["beta"] * (pc - rc) - c["delta"])
            - logsig(c["delta"] - c["beta"] * (pr - rr))
        ),
        (BETA, Param("delta", 0.0, draw=("uniform", -10.0, 10.0), means="reward shift (running mean)")),
        "Jung et al. 2024 (BCO)", "-log sigma(beta rho_w - delta) - log sigma(-(beta rho_l - delta))", trl="bco_pair",
        shift_invariant=NO, constants=lambda c: (0.0, abs(c["delta"])), proofs=("shift-invariance",),
        properties=_general(), adapters={"trl": "bco_pair"},
    ),
    Variant(
        "sppo_hard", "sppo_hard", _F + "sppo_hard_loss",
        _pairwise(
            lambda pc, pr, rc, rr, nc, nr, c: (pc - rc - 1 / (2 * c["beta"])) ** 2
            + (pr - rr + 1 / (2 * c["beta"])) ** 2
        ),
        (BETA,), "Wu et al. 2024, Eq. 4.7", "(rho_w - 1/(2 beta))^2 + (rho_l + 1/(2 beta))^2", trl="sppo_hard",
        shift_invariant=NO,
        optimum=lambda beta=0.1, **_: {"chosen_logratio": 0.5 / beta, "rejected_logratio": -0.5 / beta},
        constants=lambda c: (1 / (2 * c["beta"]), 0.0), proofs=("sppo-hard",), properties=_general("optimum"),
        adapters={"trl": "sppo_hard"},
    ),
    Variant(
        "aot", "aot", _F + "aot_loss",
        lambda rows, c: _aot(rows, c, lambda pc, pr, rc, rr, nc, nr: pc - pr, lambda pc, pr, rc, rr, nc, nr: rc - rr),
        (BETA, _with_default(FLIP, 0.0)), "Melnyk et al. 2024 (paired)",
        "smoothed DPO on sort(log pi(y_w) - log pi(y_l)) - sort(reference's)", trl="aot", batch_coupled=True,
        quantile_key=lambda r, k: float(r[0] - r[1]), slope=_aot_slope, proofs=("simpo-sft-aot",),
        properties=_general("large_batch"), adapters={"trl": "aot"},
    ),
    Variant(
        "aot_unpaired", "aot_unpaired", _F + "aot_unpaired_loss",
        lambda rows, c: _aot(rows, c, lambda pc, pr, rc, rr, nc, nr: pc - rc, lambda pc, pr, rc, rr, nc, nr: pr - rr),
        (BETA, _with_default(FLIP, 0.0)), "Melnyk et al. 2024 (unpaired)", "smoothed DPO on sort(rho_w) - sort(rho_l)",
        trl="aot_unpaired", batch_coupled=True, shift_invariant=BATCH_CONSTANT,
        quantile_key=lambda r, k: float(r[k] - r[k + 2]), slope=_aot_slope, proofs=("simpo-sft-aot",),
        properties=_general("large_batch"), adapters={"trl": "aot_unpaired"},
    ),
    Variant(
        "apo_zero", "apo_zero", _F + "apo_zero_loss",
        _pairwise(lambda pc, pr, rc, rr, nc, nr, c: 1 - sig(c["beta"] * (pc - rc)) + sig(c["beta"] * (pr - rr))),
        (BETA,), "D'Oosterlinck et al. 2024, Eq. 7", "1 - sigma(beta rho_w) + sigma(beta rho_l)", trl="apo_zero",
        shift_invariant=NO, bounds=lambda c: (0.0, 2.0), proofs=("shift-invariance", "bounded-losses"),
        properties=_general(), adapters={"trl": "apo_zero"},
    ),
    Variant(
        "apo_down", "apo_down", _F + "apo_down_loss",
        _pairwise(
            lambda pc, pr, rc, rr, nc, nr, c: sig(c["beta"] * (pc - rc)) + 1 - sig(c["beta"] * _h(pc, pr, rc, rr))
        ),
        (BETA,), "D'Oosterlinck et al. 2024, Eq. 8", "sigma(beta rho_w) + 1 - sigma(beta h)", trl="apo_down",
        shift_invariant=NO, bounds=lambda c: (0.0, 2.0), proofs=("shift-invariance", "bounded-losses"),
        properties=_general(), adapters={"trl": "apo_down"},
    ),
    Variant(
        "discopop", "discopop", _F + "discopop_loss",
        _pairwise(lambda pc, pr, rc, rr, nc, nr, c: _discopop(c["beta"] * _h(pc, pr, rc, rr), c["tau"])),
        (BETA, _with_default(TAU, 0.05, draw=("log", 0.01, 1.0), means="temperature of the modulation")),
        "Lu et al. 2024, Eq. 5", "(1 - sigma(u/tau)) (-log sigma(u)) + sigma(u/tau) exp(-u), u = beta h",
        trl="discopop", gradient_terms=lambda c, loss: c["beta"] * (1 + 1 / c["tau"]) * (abs(loss) + 1),
        proofs=("discopop",), properties=_general(), adapters={"trl": "discopop"},
    ),
    Variant(
        "sft", "sft", _F + "sft_loss", _sft, (), "negative log-likelihood (token mean)",
        "-log pi(y_w) / n_bar, n_bar the batch's mean chosen length", trl="sft", needs_lengths=True,
        length_normalised=True, batch_coupled=True, shift_invariant=NO, reference_free=True, slope=_sft_slope,
        rewards=(), proofs=("simpo-sft-aot",), properties=_general("large_batch", rewards=False),
        adapters={"trl": "sft"},
    ),
    Variant(
        "sigmoid_norm", "sigmoid_norm", _F + "sigmoid_norm_loss",
        _pairwise(lambda pc, pr, rc, rr, nc, nr, c: -logsig(c["beta"] * _hbar(pc, pr, rc, rr, nc, nr))),
        (BETA,), "Rafailov et al. 2023, Eq. 7 on per-token averages", "-log sigma(beta h_bar)", trl="sigmoid_norm",
        needs_lengths=True, length_normalised=True, shift_invariant=EQUAL_LENGTHS, rewards=NORMALISED_REWARDS,
        no_proof="DPO's proofs with h_bar for h", properties=_general(), adapters={"trl": "sigmoid_norm"},
    ),
    Variant(
        "simpo", "simpo", _F + "simpo_loss",
        _pairwise(lambda pc, pr, rc, rr, nc, nr, c: -logsig(c["beta"] * (pc / nc - pr / nr) - c["gamma"])),
        (_with_default(BETA, 2.0), Param("gamma", 0.5, 0.0, None, True, draw=("uniform", 0.0, 5.0),
                                         means="target reward margin")),
        "Meng et al. 2024, Eq. 6", "-log sigma(beta log pi(y_w)/n_w - beta log pi(y_l)/n_l - gamma)",
        needs_lengths=True, length_normalised=True, shift_invariant=EQUAL_LENGTHS, reference_free=True,
        constants=lambda c: (0.0, c["gamma"]), rewards=(simpo_rewards,), proofs=("simpo-sft-aot",),
        properties=_general(),
        adapters={"liger": "simpo"},
    ),
    Variant(
        "dpop", "dpop", _F + "dpop_loss",
        _pairwise(lambda pc, pr, rc, rr, nc, nr, c: -logsig(
            c["beta"] * (_h(pc, pr, rc, rr) - c["dpop_lambda"] * max(_mp().mpf(0), rc - pc)))),
        (BETA, Param("dpop_lambda", 50.0, 0.0, None, True, draw=("uniform", 0.5, 100.0),  # 0 is DPO: drawn > 0
                     means="penalty per nat the chosen log-prob falls below the reference's")),
        "Pal et al. 2024 (Smaug, DPO-Positive), Eq. 3",
        "-log sigma(beta (h - lambda max(0, log pi_ref(y_w) - log pi(y_w))))", shift_invariant=NO,
        gradient_terms=lambda c, loss: c["beta"] * (1 + c["dpop_lambda"]),
        kink=lambda r, c: (float(r[2] - r[0]), 1.0),
        no_proof="DPO's derivation with a penalty term; no new identity to prove (its checks test the formula)",
        properties=_general(), aliases=("dpo-positive",), reduces_to=("dpop_lambda", 0.0, "dpo"),
    ),
)  # fmt: skip

REGISTRY: dict[str, Variant] = {v.name: v for v in RECORDS}
VARIANTS: tuple[str, ...] = tuple(REGISTRY)
ALIASES: tuple[str, ...] = tuple(a for v in RECORDS for a in v.aliases)  # accepted wherever a name is
CLASSIC_VARIANTS: tuple[str, ...] = tuple(v.name for v in RECORDS if v.oracle == CLOSED_FORM)

# The loss family by key (TRL's loss_type names, `sigmoid` for DPO): one record per loss function.
LOSS_FAMILY: dict[str, Variant] = {}
for _v in RECORDS:
    LOSS_FAMILY.setdefault(_v.key, _v)
del _v
TRL_LOSS_TYPES: tuple[str, ...] = tuple(v.trl for v in LOSS_FAMILY.values() if v.trl)

# oracle name -> family key, for the variants the mpmath table checks
FAMILY_VARIANTS: dict[str, str] = {v.name: v.key for v in RECORDS if v.oracle == MPMATH}
# family key -> the name the oracle reports it under
ORACLE_NAME: dict[str, str] = {key: v.name for key, v in LOSS_FAMILY.items()}


def get(name: str) -> Variant:
    """The record of oracle variant `name` (or an alias); `InputError` naming the choices otherwise."""
    if name in REGISTRY:
        return REGISTRY[name]
    for v in RECORDS:
        if name in v.aliases:
            return v
    from dpo_ref.errors import InputError

    raise InputError(f"variant must be one of {', '.join(VARIANTS)}, got {name!r}")


def by_key(key: str) -> Variant:
    """The record of family key `key` (`sigmoid`, `ipo`, `hinge`, ...)."""
    return LOSS_FAMILY[key]


def names_text() -> str:
    """The variant names for help texts: 'dpo, cdpo, ...'."""
    return ", ".join(VARIANTS)
