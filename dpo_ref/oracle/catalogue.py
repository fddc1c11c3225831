"""The catalogue of properties: each defined once (name, statement, strategy, check, reproduction).

A `Check` draws one example (a dict of inputs) from a Hypothesis strategy, runs one of the property
checks of `dpo_ref.checks.properties` on a target, and knows how to write a failing example as a snippet
(`dpo_ref.oracle.snippets`). The oracle (`dpo_ref.verify`, `dpo-ref verify`, the pytest plugin) and
dpo_ref's own test suite (`tests/checks/test_properties.py`: every check on dpo_ref itself, float64-exact) read
the same catalogue; `dpo_ref.oracle.runner` drives a check under Hypothesis.

Advisory checks (`advisory=True`) test robustness rather than the formula: their failure is reported
as advice and fails the verdict only under `strict`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from hypothesis import strategies as st

import dpo_ref.oracle.snippets as S
from dpo_ref import variants as V
from dpo_ref.checks import properties as P
from dpo_ref.checks import strategies as dst

LOGPS = "logps"  # the table of log-prob-level checks
PACKED = "packed"  # the packed (padding-free) level's checks, dpo_ref.oracle.packed
PIPELINE = "pipeline"  # the pipeline level's checks, dpo_ref.oracle.pipeline
LEVEL_TABLES = (LOGPS, PACKED, PIPELINE)  # tables whose checks apply to every variant (the convention is the Config's)


@dataclass(frozen=True)
class Config:
    """What the target claims to compute and how hard to look."""

    variant: str = "dpo"
    beta: float | None = None  # fixed coefficient (tau under IPO); None draws tiny to large values
    label_smoothing: float | None = None  # cdpo eps; None draws values in (0, 0.49]
    average: bool = False  # log-prob level: length-averaged convention
    max_examples: int = 100
    strict: bool = False  # float64 exactness and the advisory checks count in the verdict
    reduction: str = "auto"  # declared batch reduction: auto accepts per-example losses or the batch mean
    coefficients: tuple[tuple[str, float], ...] = ()  # family variants: fixed coefficients (others are drawn)
    fail_fast: bool = False  # stop at the first failing check (a verdict sooner; the rest are reported as not run)
    convention: str | None = None  # pipeline level: pinned tokenisation convention (e.g. "joint+eos"); None: detected

    @property
    def family(self) -> str | None:
        """The `dpo_ref.family` key of a family variant, None for dpo/cdpo/ipo/ipo-mean."""
        return V.FAMILY_VARIANTS.get(self.variant)

    @property
    def record(self) -> V.Variant:
        """The registry's record of the claimed variant."""
        return V.REGISTRY[self.variant]

    @property
    def loss_variant(self) -> str:
        """The variant computing the same loss function (ipo-mean -> ipo: they differ only in the log-probs fed)."""
        return V.LOSS_FAMILY[self.record.key].name

    @property
    def smoothed(self) -> bool:
        """Whether the claimed loss takes a label-flip rate (cDPO's eps)."""
        return "label_smoothing" in self.record.coefficients

    @property
    def coefficient_is_tau(self) -> bool:
        """Whether the margin's scale is IPO's tau (else beta)."""
        return "tau" in self.record.coefficients

    def spec(self, coef: float, eps: float) -> P.LossSpec:
        return P.LossSpec(self.loss_variant, beta=coef, label_smoothing=eps, tau=coef)


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    strategy: Callable[[Config], st.SearchStrategy]
    run: Callable  # (target, cfg, example) -> Precision | None, raises on violation
    snippet: Callable  # (target, cfg, example, error) -> str (the lines after the inputs)
    table: str = V.CLOSED_FORM  # which variants' table it belongs to (`dpo_ref.variants.Variant.oracle`)
    inputs: Callable | None = None  # (target, cfg, example) -> str, the input lines; default: the loss batch
    advisory: bool = False  # robustness advice: fails the verdict only under strict
    value: bool = False  # a failure means the values differ (not only robustness): a diagnosis is worth trying
    advice: str | None = None  # the fixed advice an advisory failure gives...
    cause: Callable | None = None  # ...when (target, cfg) -> True says its cause is what failed (None: always)
    skip_when: Callable | None = None  # (target, cfg) -> why the check cannot be observed on this target, or None

    def applies(self, variant: str) -> bool:
        """Whether the registry lists this check among `variant`'s properties (in this check's table)."""
        if self.table in LEVEL_TABLES:
            return True  # every variant's log-probs are scored the same way (the convention comes from the Config)
        record = V.REGISTRY[variant]
        return record.oracle == self.table and self.name in record.properties


def _loss(body: Callable) -> Callable:
    """A loss-level snippet body (target, spec, ex, err) as a catalogue snippet (target, cfg, ex, err)."""
    return lambda target, cfg, ex, err: body(target, spec_of(cfg, ex), ex, err)


def spec_of(cfg: Config, ex: dict) -> P.LossSpec:
    return cfg.spec(ex["coef"], ex["eps"])


# ---------------------------------------------------------------------------------------------------
# Strategies


COEF_RANGE = (1e-3, 1e3)  # the coefficients drawn when none is fixed


def _coef(cfg: Config) -> st.SearchStrategy[float]:
    """The coefficient: fixed, or drawn over COEF_RANGE with its two ends drawn often (a quarter of the time):
    coefficient bugs (a floored or capped beta, a beta that overflows) live there, and a verdict must not
    depend on whether a few dozen draws happened to reach them."""
    if cfg.beta is not None:
        return st.just(float(cfg.beta))
    drawn = dst.taus(*COEF_RANGE) if cfg.coefficient_is_tau else dst.betas(*COEF_RANGE)
    return st.one_of(st.sampled_from(COEF_RANGE), drawn)


def _eps(cfg: Config) -> st.SearchStrategy[float]:
    if not cfg.smoothed:
        return st.just(0.0)
    return st.just(float(cfg.label_smoothing)) if cfg.label_smoothing is not None else dst.label_smoothings()


def _base(dtype: torch.dtype = torch.float64, **batch_kw) -> Callable[[Config], st.SearchStrategy[dict]]:
    def strategy(cfg: Config) -> st.SearchStrategy[dict]:
        return st.fixed_dictionaries(
            {
                "batch": dst.preference_batches(**batch_kw),
                "coef": _coef(cfg),
                "eps": _eps(cfg),
                "dtype": st.just(dtype),
            }
        )

    return strategy


LARGE_BATCH = 256
# A target that is wrong on a fraction p of its calls (a race, a cache, a rarely taken branch) is caught by the
# drawn examples only if one of them hits it and it then reproduces while Hypothesis shrinks; the fixed sample
# is called REPEATS times on one input besides: P(caught) >= 1 - (1 - p)^REPEATS, 95 % at p = 3 %.
REPEATS = 100
# Fixed large shapes (batch, prompt, response, vocab) for the log-prob level, one dimension large at a time so
# memory stays small: chunking over the sequence (1024 positions), over the vocabulary (32768 > any 2^k
# chunk of 32k or less), over the batch (256 rows).
LARGE_SHAPES = ((1, 8, 1016, 50), (2, 4, 8, 32768), (256, 3, 3, 7))


def _large(ex: dict) -> dict:
    """The drawn batch tiled to LARGE_BATCH rows: a batch size no test of a few examples reaches."""
    b = ex["batch"]
    reps = -(-LARGE_BATCH // b.size)
    tiled = type(b)(*(t.repeat(reps)[:LARGE_BATCH] for t in b))
    return {**ex, "batch": tiled, "small": b, "reps": reps}


def _with(base: Callable, extra: Callable[[dict], st.SearchStrategy[dict]]) -> Callable:
    return lambda cfg: base(cfg).flatmap(lambda ex: extra(ex).map(lambda more: {**ex, **more}))


def _size(ex: dict) -> int:
    return ex["batch"].size


def _shift(ex: dict) -> st.SearchStrategy[dict]:
    floats = st.floats(-100.0, 100.0, allow_nan=False)
    return st.lists(floats, min_size=_size(ex), max_size=_size(ex)).map(lambda f: {"shift": f})


def _perm(ex: dict) -> st.SearchStrategy[dict]:
    return st.permutations(list(range(_size(ex)))).map(lambda p: {"perm": p})


def _other(ex: dict) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"other": dst.preference_batches(), "index": st.integers(0, _size(ex) - 1)})


def _monotone_strategy(cfg: Config) -> st.SearchStrategy[dict]:
    margins = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=8)
    return st.fixed_dictionaries({"margins": margins, "coef": _coef(cfg), "eps": _eps(cfg)})


def _optimum_strategy(cfg: Config) -> st.SearchStrategy[dict]:
    def delta(ex):
        scale = 1.0 if cfg.coefficient_is_tau else 1.0 / ex["coef"]  # cDPO: in units of 1/beta
        return st.floats(0.05, 5.0).map(lambda d: {"delta": d * scale})

    return _with(_base(), delta)(cfg)


# ---------------------------------------------------------------------------------------------------
# Runners: (target, cfg, example) -> Precision | None


def _tensors(ex: dict) -> tuple[torch.Tensor, ...]:
    return ex["batch"].tensors(ex.get("dtype", torch.float64))


def _pe(target, cfg: Config, ex: dict) -> tuple[Callable, P.LossSpec]:
    spec = spec_of(cfg, ex)
    return target.per_example(spec), spec


def _run_values(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    precision = P.check_values(fn, spec, _tensors(ex))
    return precision if ex.get("dtype", torch.float64) == torch.float64 else None  # graded on float64 inputs


def _run_gradients(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_gradients(fn, spec, _tensors(ex))


def _fixed_sample(cfg: Config) -> st.SearchStrategy[dict]:
    coef = float(cfg.beta) if cfg.beta is not None else 0.1
    eps = (float(cfg.label_smoothing) if cfg.label_smoothing is not None else 0.1) if cfg.smoothed else 0.0
    return st.just({"batch": dst.fixed_preference_batch(), "coef": coef, "eps": eps, "dtype": torch.float64})


def _run_repeated(target, cfg, ex):
    for _ in range(REPEATS):
        _run_values(target, cfg, ex)


def _run_large(target, cfg, ex):
    _run_values(target, cfg, ex)
    _run_gradients(target, cfg, ex)


def _run_signs(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_gradient_signs(fn, spec, _tensors(ex))


def _run_z(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_z_cancellation(fn, spec, _tensors(ex), torch.tensor(ex["shift"], dtype=torch.float64))


def _run_init(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    pc, pr, _, _ = _tensors(ex)
    P.check_init(fn, spec, pc, pr)


def _run_swap(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_swap(fn, spec, _tensors(ex))


def _run_monotone(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_monotone(fn, spec, torch.tensor(ex["margins"], dtype=torch.float64))


def _run_optimum(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    _, _, rc, rr = _tensors(ex)
    P.check_optimum(fn, spec, (rc, rr), ex["delta"])


def _run_perm(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_permutation(fn, spec, _tensors(ex), torch.tensor(ex["perm"]))


def _run_indep(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_independence(fn, spec, _tensors(ex), ex["other"].tensors(ex["dtype"]), ex["index"])


def _run_finite(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_finite(fn, spec, _tensors(ex))


def _run_unmodified(target, cfg, ex):
    spec = spec_of(cfg, ex)
    P.check_inputs_unmodified(target.raw(spec), spec, _tensors(ex))


def _run_reduction(target, cfg, ex):
    spec = spec_of(cfg, ex)
    reduction = target.reduction if target.reduction in ("mean", "sum") else "mean"
    P.check_reduction(target.raw(spec), spec, _tensors(ex), reduction)


def _run_rewards(target, cfg, ex):
    spec = spec_of(cfg, ex)
    P.check_rewards(target.rewards(spec), spec, _tensors(ex))


def _run_rewards_detached(target, cfg, ex):
    spec = spec_of(cfg, ex)
    P.check_rewards_detached(target.rewards(spec), spec, _tensors(ex))


def _skip_per_example(target, cfg: Config) -> str | None:
    return "returns per-example losses" if target.reduction == "per-example" else None


def _skip_no_rewards(target, cfg: Config) -> str | None:
    return "returns no implicit rewards" if target.reward_access is None else None


def probe_spec(cfg: Config) -> P.LossSpec:
    """The coefficients of the `call` probe and the diagnosis: the fixed ones, else beta (tau) 0.5, eps 0.1."""
    coef = cfg.beta if cfg.beta is not None else 0.5
    eps = (cfg.label_smoothing or 0.1) if cfg.smoothed else 0.0
    return cfg.spec(coef, eps)


def _rewards_carry_graph(target, cfg: Config) -> bool:
    """The advice to detach is the cause when the rewards returned on the probe batch (leaves requiring grad)
    are tensors carrying the graph, not when reading them raised."""
    from dpo_ref.oracle.targets import PROBE_LOGPS

    leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in PROBE_LOGPS]
    rewards = target.rewards(probe_spec(cfg))(*leaves)
    return any(isinstance(r, torch.Tensor) and r.requires_grad for r in rewards)


MARGIN_CHECKS: tuple[Check, ...] = (
    Check(
        "values",
        "loss values equal the closed form (float64 inputs; float32 arithmetic allowed)",
        _base(),
        _run_values,
        _loss(S.values),
        value=True,
    ),
    Check(
        "values_float32",
        "loss values within the float32 tolerance (float32 inputs)",
        _base(torch.float32),
        _run_values,
        _loss(S.values),
        value=True,
    ),
    Check(
        "large_batch",
        f"values and gradients for a batch of {LARGE_BATCH} (float32)",
        lambda cfg: _base(torch.float32)(cfg).map(_large),
        _run_large,
        _loss(S.large_batch),
        inputs=S.large_inputs,
        value=True,
    ),
    Check(
        "gradients",
        "autograd gradients equal the closed form dL/dh",
        _base(),
        _run_gradients,
        _loss(S.gradients("sum")),
        value=True,
    ),
    Check(
        "gradient_signs",
        "dL/d log pi(y_w) < 0 < dL/d log pi(y_l), beta sigma(-beta h) / B under the mean",
        _base(),
        _run_signs,
        _loss(S.gradients("mean")),
    ),
    Check(
        "z_cancellation",
        "adding f(x) to both policy log-probs changes neither loss nor gradients",
        _with(_base(), _shift),
        _run_z,
        _loss(S.z_cancellation),
    ),
    Check(
        "init",
        "at pi = pi_ref: L = ln 2 (1/(4 tau^2) for IPO), dL/dh closed form",
        _base(),
        _run_init,
        _loss(S.init),
        value=True,
    ),
    Check("swap", "swapping chosen and rejected gives the loss at -h", _base(), _run_swap, _loss(S.swap), value=True),
    Check(
        "repeatable",
        f"the same input called {REPEATS} times gives the right values every time (a rare wrong answer is caught)",
        _fixed_sample,
        _run_repeated,
        _loss(S.repeated(S.values, REPEATS)),
        value=True,
    ),
    Check(
        "monotone",
        "the loss does not increase with the margin",
        _monotone_strategy,
        _run_monotone,
        _loss(S.monotone),
        inputs=S.monotone_inputs,
    ),
    Check(
        "optimum",
        "the gradient vanishes at h* (1/(2 tau); ln((1-eps)/eps)/beta) and h* is a strict minimum",
        _optimum_strategy,
        _run_optimum,
        _loss(S.optimum),
        value=True,
    ),
    Check(
        "permutation",
        "permuting the batch permutes the losses",
        _with(_base(), _perm),
        _run_perm,
        _loss(S.permutation),
    ),
    Check(
        "batch_independence",
        "changing one example leaves the others' losses unchanged",
        _with(_base(), _other),
        _run_indep,
        _loss(S.independence),
    ),
    Check(
        "finite",
        "finite values and gradients for log-probs down to -1e4 (float32)",
        _base(torch.float32),
        _run_finite,
        _loss(S.finite),
    ),
    Check(
        "inputs_unmodified",
        "the four input tensors are not written to",
        _base(),
        _run_unmodified,
        _loss(S.unmodified),
    ),
    Check(
        "reduction",
        "a scalar output is the batch mean (or a declared sum) of the per-example losses, with matching gradients",
        _base(),
        _run_reduction,
        _loss(S.reduction),
        value=True,
        skip_when=_skip_per_example,
    ),
    Check(
        "rewards",
        "returned implicit rewards are coefficient * (log pi - log pi_ref)",
        _base(),
        _run_rewards,
        _loss(S.rewards),
        skip_when=_skip_no_rewards,
    ),
    Check(
        "rewards_detached",
        "returned implicit rewards carry no autograd graph",
        _base(),
        _run_rewards_detached,
        _loss(S.rewards_detached),
        advisory=True,
        advice="returns implicit rewards that carry the autograd graph: detach them (.detach()) so logging them "
        "does not keep the graph alive",
        cause=_rewards_carry_graph,
        skip_when=_skip_no_rewards,
    ),
)


# ---------------------------------------------------------------------------------------------------
# Log-prob level


def _token_batches(dtype=torch.float64, **kw) -> Callable[[Config], st.SearchStrategy[dict]]:
    return lambda cfg: st.fixed_dictionaries({"batch": dst.token_batches(**kw), "dtype": st.just(dtype)})


def _scaled_token_batches(dtype=torch.float32) -> Callable[[Config], st.SearchStrategy[dict]]:
    """Token batches whose real logits are also scaled up 10x (|logits| in the hundreds: exp overflows float32)."""

    def scale(ex: dict, k: float) -> dict:
        b = ex["batch"]
        return {**ex, "batch": replace(b, rows=[(lab, lg * k) for lab, lg in b.rows])}

    return lambda cfg: st.tuples(_token_batches(dtype)(cfg), st.sampled_from([1.0, 10.0])).map(lambda a: scale(*a))


def _last_position(ex: dict) -> dict:
    return {**ex, "batch": replace(ex["batch"], padding_side="left", extra_padding=0)}


def _run_logps_values(dtype: torch.dtype):
    def run(t, cfg, ex):
        precision = P.check_logps_values(t, ex["batch"], cfg.average, dtype)
        return precision if dtype == torch.float64 else None  # graded on float64 inputs

    return run


def _run_unscored(fill: float):
    return lambda t, cfg, ex: P.check_logps_ignores_unscored(t, ex["batch"], cfg.average, fill)


def _multiplying_mask(target, cfg: Config) -> bool:
    """The advice on -inf logits is the cause when -inf at the unscored positions gives a NaN or an infinity
    while the same inputs with the finite extreme fill give the right values: only the fill's infiniteness
    differs, so 0 * -inf (a multiplying mask) is what went wrong. A function whose values are wrong anyway
    (a mean for a sum, no shift, a half-precision log-softmax) is not told this: its value checks fail."""
    from dpo_ref.oracle.diagnosis import diagnostic_token_batch

    batch = diagnostic_token_batch()
    logits, labels = P.unscored_filled(batch, -float("inf"))
    with torch.no_grad():
        out = torch.as_tensor(target(logits, labels))
    if bool(torch.isfinite(out).all()):
        return False
    try:
        with torch.no_grad():
            P.check_logps_ignores_unscored(target, batch, cfg.average, P.UNSCORED_FILL)
    except P.PropertyViolation:
        return False
    return True


def _large_shapes(cfg: Config) -> st.SearchStrategy[dict]:
    return st.sampled_from(LARGE_SHAPES).map(
        lambda shape: {"batch": dst.fixed_token_batch(*shape), "dtype": torch.float64, "shape": shape}
    )


def _run_logps_repeated(t, cfg, ex):
    for _ in range(REPEATS):
        P.check_logps_values(t, ex["batch"], cfg.average, torch.float64)


LOGPS_CHECKS: tuple[Check, ...] = (
    Check(
        "logps_values",
        "sum (or mean) of the scored tokens' log-probs, shifted by one, -100 masked (float64 inputs)",
        _token_batches(),
        _run_logps_values(torch.float64),
        S.logps_values,
        inputs=S.logps_inputs,
        value=True,
        table=LOGPS,
    ),
    Check(
        "logps_values_float32",
        "the same within the float32 tolerance (float32 logits, large ones included)",
        _scaled_token_batches(torch.float32),
        _run_logps_values(torch.float32),
        S.logps_values,
        inputs=S.logps_inputs,
        value=True,
        table=LOGPS,
    ),
    Check(
        "logps_large_shapes",
        "a 1024-token sequence, a 32768-token vocabulary and a batch of 256 (chunking bugs live there)",
        _large_shapes,
        _run_logps_values(torch.float64),
        S.logps_values,
        inputs=S.logps_inputs,
        value=True,
        table=LOGPS,
    ),
    Check(
        "logps_repeatable",
        f"the same input called {REPEATS} times gives the right log-probs every time",
        lambda cfg: st.just({"batch": dst.fixed_token_batch(4, 3, 5, 11), "dtype": torch.float64}),
        _run_logps_repeated,
        S.repeated(S.logps_values, REPEATS),
        inputs=S.logps_inputs,
        value=True,
        table=LOGPS,
    ),
    Check(
        "logps_last_position",
        "responses that reach the last position (left padding, no extra)",
        lambda cfg: _token_batches()(cfg).map(_last_position),
        _run_logps_values(torch.float64),
        S.logps_values,
        inputs=S.logps_inputs,
        value=True,
        table=LOGPS,
    ),
    Check(
        "logps_padding",
        "left, right and extra padding give the same log-probs",
        _token_batches(),
        lambda t, cfg, ex: P.check_logps_padding(t, ex["batch"]),
        S.logps_padding,
        inputs=lambda t, cfg, ex: "",
        table=LOGPS,
    ),
    Check(
        "logps_gradients",
        "d logps / d logits = one-hot minus softmax on the scored positions, 0 elsewhere",
        _token_batches(),
        lambda t, cfg, ex: P.check_logps_gradients(t, ex["batch"], cfg.average),
        S.logps_gradients,
        inputs=S.logps_inputs,
        table=LOGPS,
    ),
    Check(
        "logps_unscored_ignored",
        f"extreme logits ({P.UNSCORED_FILL:g}) at prompt, padding and last positions do not change the result",
        _token_batches(),
        _run_unscored(P.UNSCORED_FILL),
        S.logps_unscored(P.UNSCORED_FILL),
        inputs=S.unscored_inputs(P.UNSCORED_FILL),
        value=True,
        table=LOGPS,
    ),
    Check(
        "logps_neg_inf_unscored",
        "-inf logits at unscored positions (how some models mask) give finite, unchanged log-probs",
        _token_batches(),
        _run_unscored(-float("inf")),
        S.logps_unscored(-float("inf")),
        inputs=S.unscored_inputs(-float("inf")),
        advisory=True,
        advice="masks by multiplying: -inf logits at unscored positions give 0 * -inf = NaN; select with "
        "torch.where / masked_fill (or gather only the scored positions) to be robust to them",
        cause=_multiplying_mask,
        table=LOGPS,
    ),
    Check(
        "logps_inputs_unmodified",
        "logits and labels are not written to",
        _token_batches(),
        lambda t, cfg, ex: P.check_logps_inputs_unmodified(t, ex["batch"]),
        S.logps_unmodified,
        inputs=S.logps_inputs,
        table=LOGPS,
    ),
)


# Each advisory check's fixed advice, by name (read from the checks)
ADVICE = {c.name: c.advice for c in MARGIN_CHECKS + LOGPS_CHECKS if c.advice}


def advice_for(check_name: str) -> str:
    """The fixed advice of the advisory check `check_name` ("" if it has none)."""
    return ADVICE.get(check_name, "")
