"""The outside group of the corpus (tests/corpus/) is labelled right: checked here WITHOUT the oracle or dpo_ref.

Loss level: every correct case equals a float64 closed form written below, on fixed and random batches, for
several beta (tau) and eps, with float64 and float32 inputs, at the tolerance of the dtype it returns; its
gradient equals the closed-form gradient and its inputs are left as they were. Every broken case with a
diagnosis equals that diagnosis' closed form (also written below) everywhere, equals no other named
alternative, and differs from the variant it claims somewhere. Every broken case with diagnosis None shows
its bug (a value that differs, a mutated input, a missing gradient, wrong rewards) and matches no named
alternative. Log-prob level: the same, against a loop over rows and positions in float64.

Tolerances, from first principles. u = the machine epsilon of the dtype the case returns (float32 when it
computes in float32, whatever its inputs). The margin h is a signed sum of the four log-probs: any summation
order gives |error| <= 3u S, S = |pc| + |pr| + |rc| + |rr|. The loss L(h) then errs by |L'(h)| 3u S, plus a
few u |L| for the last operations. |L'| <= beta for DPO and cDPO (a weighted sigmoid times beta), and
2 |h - c| + O(u) for IPO (c = 1/(2 tau), itself rounded: add c to S). We allow 8u (|L| + |L'| (S + c)) per
example; a mean or a sum adds B u of the result. One legitimate approximation gets its own allowance:
F.softplus's default threshold=20 returns x for x > 20, off by log1p(exp(-x)) <= exp(-20) ~ 2.1e-9
(at most 10 exp(-20) once weighted by cDPO/rDPO coefficients <= 1 / (1 - 2 eps), eps <= 0.45).
Log-probs: log_softmax(x)_y = x_y - logsumexp(x) errs by <= a few u (max |x| + log V + |result|) per token;
we allow 8u times that summed over the row (over n for a mean); a logit computed from hidden states h W^T
adds its dot-product error H u max_v sum_i |h_i w_vi|. The `sum / (n + 1e-6)` guard changes a mean by a
relative 1e-6 / n <= 1e-6: that case gets a relative 1e-6 allowance.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import math
import textwrap
from pathlib import Path

import pytest
import torch

from tests.corpus import DIAGNOSES, Case, select

ROOT = Path(__file__).resolve().parents[2]
CASES = select("outside")  # written by a separate session, labelled with a diagnosis or a witness
LOSS_ALTS = {
    "dpo": ["chosen-rejected-swapped", "beta-ignored", "beta-squared", "no-reference", "batch-sum", "ipo-not-dpo",
            "reference-sign"],
    "cdpo": ["plain-dpo", "robust-dpo", "cdpo-weights-exchanged", "chosen-rejected-swapped", "beta-ignored",
             "beta-squared", "no-reference", "batch-sum", "ipo-not-dpo", "reference-sign"],
    "ipo": ["ipo-target-1/tau", "chosen-rejected-swapped", "beta-ignored", "beta-squared", "no-reference",
            "batch-sum", "dpo-not-ipo", "reference-sign"],
}  # fmt: skip
LOGPS_ALTS = {
    "dpo": ["no-shift", "mean-not-sum", "prompt-counted", "padding-counted", "last-token-dropped", "float16-scoring",
            "first-label-wrapped"],
    "ipo-mean": ["no-shift", "sum-not-mean", "prompt-counted", "padding-counted", "last-token-dropped",
                 "float16-scoring", "first-label-wrapped"],
}  # fmt: skip
# the same function under two names: cDPO at -h is (1 - eps) softplus(beta h) + eps softplus(-beta h), which is
# cDPO with eps and 1 - eps exchanged (test_cdpo_swap_is_weights_exchanged); a case may match both
SAME_FUNCTION = {("cdpo", "cdpo-weights-exchanged"): {"chosen-rejected-swapped"}}
# F.softplus with the default threshold (see the module docstring)
SOFTPLUS_THRESHOLD = 10 * math.exp(-20)
EPS_GUARD = {"averaged_eps_guard": 1e-6}
# how a broken case with diagnosis None shows its bug
WITNESS = {
    "ipo_precedence": "values",
    "half_precision_margin": "values",
    "beta_floored": "values",
    "nan_on_ties": "values",
    "inplace_inputs": "mutates",
    "detached_policy": "no-gradient",
    "batch_centred_margin": "values",
    "naive_log_sigmoid": "values",
    "rewards_not_detached": "rewards",
    "rewards_without_beta": "rewards",
    "shift_wrong_way": "values",
    "divides_by_full_length": "values",
    "unmasked_zero_labels": "values",
    "logits_modified_in_place": "mutates",
}

_modules: dict[str, object] = {}


def load(target: str):
    """The function a `file.py:name` target names, its module loaded from the file (as the oracle does)."""
    path, name = target.rsplit(":", 1)
    if path not in _modules:
        spec = importlib.util.spec_from_file_location(f"_corpus_{Path(path).stem}", ROOT / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[path] = module
    return getattr(_modules[path], name)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (CPU logsigmoid ~10 ms per call with 2 threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cases(level: str, conforms: bool, diagnosed: bool | None = None) -> list:
    out = [c for c in CASES if c.level == level and c.conforms == conforms]
    if diagnosed is not None:
        out = [c for c in out if (c.diagnosis is not None) == diagnosed]
    return [pytest.param(c, id=c.name) for c in out]


# ============================================================================================== the index


def test_index():
    """At least 20 correct and 35 broken, both levels, every diagnosis used, each case loads and is described."""
    correct = [c for c in CASES if c.conforms]
    broken = [c for c in CASES if not c.conforms]
    assert len(correct) >= 20 and len(broken) >= 35
    assert {c.level for c in correct} == {c.level for c in broken} == {"loss", "logps"}
    assert {c.diagnosis for c in broken if c.diagnosis} == set(DIAGNOSES)
    assert len({c.target for c in CASES}) == len(CASES)
    for c in CASES:
        assert callable(load(c.target)) and c.style, c.target
        assert c.variant in ("dpo", "cdpo", "ipo", "ipo-mean")
        assert c.conforms == (c.diagnosis is None and c.name not in WITNESS), c.name
    assert {c.name for c in broken if c.diagnosis is None} == set(WITNESS)


# ============================================================================================== loss level


def softplus(x):
    """log(1 + exp(x)) in float64, stable for every x."""
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def variant_loss(variant: str, h, beta: float, eps: float):
    """The per-example loss of `variant` at margin h (float64)."""
    if variant == "dpo":
        return softplus(-beta * h)
    if variant == "cdpo":
        return (1 - eps) * softplus(-beta * h) + eps * softplus(beta * h)
    return (h - 1 / (2 * beta)) ** 2  # ipo, ipo-mean; beta stands for tau


def variant_slope(variant: str, h, beta: float, eps: float):
    """dL/dh of `variant` (float64)."""
    if variant == "dpo":
        return -beta * torch.sigmoid(-beta * h)
    if variant == "cdpo":
        return -(1 - eps) * beta * torch.sigmoid(-beta * h) + eps * beta * torch.sigmoid(beta * h)
    return 2 * (h - 1 / (2 * beta))


def alternative_loss(name: str, variant: str, x, beta: float, eps: float):
    """The per-example loss a named loss-level mistake computes (batch-sum: the per-example losses it sums)."""
    pc, pr, rc, rr = x
    h = (pc - rc) - (pr - rr)
    v = "ipo" if variant == "ipo-mean" else variant
    if name == "plain-dpo":
        return softplus(-beta * h)
    if name == "robust-dpo":
        return ((1 - eps) * softplus(-beta * h) - eps * softplus(beta * h)) / (1 - 2 * eps)
    if name == "cdpo-weights-exchanged":
        return eps * softplus(-beta * h) + (1 - eps) * softplus(beta * h)
    if name == "ipo-target-1/tau":
        return (h - 1 / beta) ** 2
    if name == "chosen-rejected-swapped":
        return variant_loss(v, -h, beta, eps)
    if name == "beta-ignored":
        return variant_loss(v, h, 1.0, eps)
    if name == "beta-squared":
        return variant_loss(v, h, beta**2, eps)
    if name == "no-reference":
        return variant_loss(v, pc - pr, beta, eps)
    if name == "batch-sum":
        return variant_loss(v, h, beta, eps)
    if name == "ipo-not-dpo":
        return (h - 1 / (2 * beta)) ** 2
    if name == "dpo-not-ipo":
        return softplus(-beta * h)
    if name == "reference-sign":
        return variant_loss(v, (pc - pr) + (rc - rr), beta, eps)
    raise KeyError(name)


def loss_batches() -> list[tuple[torch.Tensor, ...]]:
    """(pc, pr, rc, rr) float64 batches: fixed ones (ties, large margins of both signs) and random ones."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    fixed = [
        (t(-3.0, -10.0, -1.5), t(-5.0, -2.0, -7.0), t(-4.0, -6.0, -2.0), t(-4.5, -3.0, -6.5)),
        (t(-7.25, -20.5, -3.0), t(-7.25, -20.5, -3.0), t(-9.5, -1.0, -4.0), t(-9.5, -1.0, -4.0)),  # ties: h = 0
        (t(-10.3, -2100.7, -35.1), t(-2300.9, -12.2, -800.4), t(-40.6, -50.3, -30.8), t(-44.1, -47.9, -31.2)),
        (t(-123.456, -0.1, -1e4 - 0.3), t(-98.765, -0.3, -2.2), t(-130.1, -0.2, -3.7), t(-95.5, -0.1, -1e4 + 0.7)),
    ]
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([5.0] * 4 + [300.0] * 4, dtype=torch.float64)  # small and large log-probs in one batch
    rand = tuple(-torch.rand(8, generator=g, dtype=torch.float64) * scale for _ in range(4))
    fixed = tuple(torch.cat([b[i] for b in fixed]) for i in range(4))  # one batch of 12
    return [fixed, rand]


BETAS = (1e-3, 0.1, 1.0, 10.0)
EPSES = (0.1, 0.45)


@functools.cache
def parameters(fn) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)


def call_loss(fn, case: Case, x, beta: float, eps: float, fresh: bool = True):
    """Call (on copies of x unless fresh=False) as the oracle does: by the standard names when the function has
    them, else by position; `tau=` for an IPO function with a tau parameter and no beta; label_smoothing only
    for cDPO."""
    params = parameters(fn)
    names = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")
    kw = {"tau" if "tau" in params and "beta" not in params else "beta": beta}
    if case.variant == "cdpo":
        kw["label_smoothing"] = eps
    if fresh:
        x = tuple(v.detach().clone().requires_grad_(v.requires_grad) for v in x)
    if all(n in params for n in names):
        return fn(**dict(zip(names, x)), **kw)
    return fn(*x, **kw)


def split_output(out):
    """(loss, chosen_rewards or None, rejected_rewards or None) of a tensor, tuple, named tuple or dict."""
    if isinstance(out, dict):
        loss = out["losses"] if "losses" in out else out["loss"]
        return loss, out.get("chosen_rewards"), out.get("rejected_rewards")
    if isinstance(out, tuple):
        return out[0], *(out[1:3] if len(out) >= 3 else (None, None))
    return out, None, None


def loss_tolerance(variant: str, x, beta: float, eps: float, u: float, loss, softplus_threshold: bool):
    """Per-example allowance (see the module docstring)."""
    pc, pr, rc, rr = x
    h = (pc - rc) - (pr - rr)
    c = 1 / (2 * beta) if variant in ("ipo", "ipo-mean") else 0.0
    slope = variant_slope(variant, h, beta, eps).abs()
    if variant in ("ipo", "ipo-mean"):
        slope = slope + 2 * 8 * u * (pc.abs() + pr.abs() + rc.abs() + rr.abs() + c)
    else:
        slope = torch.full_like(h, beta)
    tol = 8 * u * (loss.abs() + slope * (pc.abs() + pr.abs() + rc.abs() + rr.abs() + c))
    return tol + (SOFTPLUS_THRESHOLD if softplus_threshold else 0.0)


@functools.cache
def uses_softplus_threshold(fn) -> bool:
    """Whether fn's body calls F.softplus without a `threshold=` (so with the default 20)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    return any(
        isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", "")) == "softplus"
        and not any(k.arg == "threshold" for k in node.keywords)
        for node in ast.walk(tree)
    )


def close(got, want, tol) -> bool:
    """|got - want| <= tol everywhere; equal infinities are equal; NaN never is."""
    got, want = got.double(), want.double()
    same_inf = torch.isinf(got) & (got == want)
    ok = same_inf | ((got - want).abs() <= tol)
    return bool(ok.all())


def reduce_like(got, per_example, tol, reduction: str):
    """The expected value and tolerance in the shape `got` has: per example, or the batch mean / sum."""
    if got.dim() == 0:
        B = per_example.numel()
        if reduction == "sum":
            return per_example.sum(), tol.sum() + B * 2.3e-16 * per_example.abs().sum() + tol.new_tensor(0.0)
        return per_example.mean(), tol.mean() + tol.new_tensor(0.0)
    return per_example, tol


def loss_grid(case: Case):
    """Every (x in float64 as fed, beta, eps, input dtype) the loss-level checks run on."""
    eps_values = EPSES if case.variant == "cdpo" else (0.0,)
    for xb in loss_batches():
        for dtype in (torch.float64, torch.float32):
            x = tuple(v.to(dtype) for v in xb)
            for beta in BETAS:
                for eps in eps_values:
                    yield x, beta, eps


def matches_loss(case: Case, fn, expected_name: str | None, x, beta, eps, out=None) -> bool:
    """Whether the case's output at (x, beta, eps) equals the claimed variant (expected_name None) or the
    named alternative, at the tolerance of the dtype it returns."""
    if out is None:
        out = call_loss(fn, case, x, beta, eps)
    got = split_output(out)[0]
    x64 = tuple(v.double() for v in x)
    h = (x64[0] - x64[2]) - (x64[1] - x64[3])
    variant = "ipo" if case.variant == "ipo-mean" else case.variant
    if expected_name is None:
        per_example = variant_loss(variant, h, beta, eps)
        reduction = case.options.get("reduction", "mean")
    else:
        per_example = alternative_loss(expected_name, case.variant, x64, beta, eps)
        reduction = "sum" if expected_name == "batch-sum" else "mean"
        if expected_name == "batch-sum" and got.dim() != 0:
            return False
    u = torch.finfo(got.dtype).eps
    tol = loss_tolerance(variant, x64, beta, eps, u, per_example, uses_softplus_threshold(fn))
    want, tol = reduce_like(got, per_example, tol, reduction)
    if expected_name == "robust-dpo" or (expected_name is None and reduction == "sum"):
        tol = tol + (per_example.numel() * SOFTPLUS_THRESHOLD if uses_softplus_threshold(fn) else 0.0)
    return got.shape == want.shape and close(got, want, tol)


@pytest.mark.parametrize("case", cases("loss", True))
def test_correct_loss_equals_closed_form(case: Case):
    fn = load(case.target)
    for x, beta, eps in loss_grid(case):
        before = [v.clone() for v in x]
        out = call_loss(fn, case, x, beta, eps, fresh=False)
        assert matches_loss(case, fn, None, x, beta, eps, out), (case.name, x, beta, eps, out)
        assert all(torch.equal(a, b) for a, b in zip(before, x)), "inputs modified"
        _, chosen, rejected = split_output(out)
        if chosen is not None:
            u = torch.finfo(chosen.dtype).eps
            pc, pr, rc, rr = (v.double() for v in x)
            pairs = ((chosen, beta * (pc - rc), pc.abs() + rc.abs()), (rejected, beta * (pr - rr), pr.abs() + rr.abs()))
            for got, want, s in pairs:
                assert close(got, want, 8 * u * beta * s), (case.name, "rewards")


def loss_gradient_ok(case: Case, fn, x, beta: float, eps: float) -> bool:
    """d(sum of per-example losses)/d(pc, pr, rc, rr) = L'(h) (+1, -1, -1, +1) (over B for a mean)."""
    leaves = tuple(v.clone().requires_grad_(True) for v in x)
    got = split_output(call_loss(fn, case, leaves, beta, eps, fresh=False))[0]
    got.sum().backward()
    x64 = tuple(v.double() for v in x)
    h = (x64[0] - x64[2]) - (x64[1] - x64[3])
    variant = "ipo" if case.variant == "ipo-mean" else case.variant
    mean = got.dim() == 0 and case.options.get("reduction") != "sum"
    slope = variant_slope(variant, h, beta, eps) / (h.numel() if mean else 1)
    u = torch.finfo(got.dtype).eps
    curvature = 2.0 if variant == "ipo" else beta**2 / 4
    S = sum(v.abs() for v in x64)
    tol = 16 * u * (slope.abs() + curvature * (S + (1 / (2 * beta) if variant == "ipo" else 0.0)))
    if uses_softplus_threshold(fn):  # above the threshold the slope is exactly 1, not 1 - sigmoid(-x) >= 1 - e^-20
        tol = tol + beta * SOFTPLUS_THRESHOLD
    for leaf, sign in zip(leaves, (1, -1, -1, 1)):
        if leaf.grad is None or not close(leaf.grad, sign * slope, tol):
            return False
    return True


def test_reordered_parameters_need_name_mapping():
    """The reordered case tests mapping by name: called by position it computes chosen-rejected-swapped."""
    case = next(c for c in CASES if c.name == "reordered_parameters")
    fn = load(case.target)
    x = loss_batches()[1]
    assert matches_loss(case, fn, None, x, 0.1, 0.0)
    assert matches_loss(case, fn, "chosen-rejected-swapped", x, 0.1, 0.0, fn(*x, beta=0.1))


def rewards_detached(case: Case, fn) -> bool:
    """Rewards returned beside the loss (if any) carry no graph, with inputs that require grad."""
    x = tuple(v.clone().requires_grad_(True) for v in loss_batches()[0])
    _, chosen, rejected = split_output(call_loss(fn, case, x, 0.1, 0.2, fresh=False))
    return not any(r is not None and r.requires_grad for r in (chosen, rejected))


@pytest.mark.parametrize("case", cases("loss", True))
def test_correct_loss_gradient(case: Case):
    fn = load(case.target)
    assert rewards_detached(case, fn)
    for xb in loss_batches():
        for beta in (1e-3, 0.1, 10.0):
            assert loss_gradient_ok(case, fn, xb, beta, 0.3), (case.name, beta)


@pytest.mark.parametrize("case", cases("loss", False, diagnosed=True))
def test_broken_loss_computes_its_diagnosis(case: Case):
    """Equals its named alternative everywhere, equals no other named alternative, and not the claimed variant."""
    fn = load(case.target)
    claimed_somewhere_wrong = False
    variant = "ipo" if case.variant == "ipo-mean" else case.variant
    others = set(LOSS_ALTS[variant]) - {case.diagnosis} - SAME_FUNCTION.get((variant, case.diagnosis), set())
    assert case.diagnosis in LOSS_ALTS["ipo" if case.variant == "ipo-mean" else case.variant]
    for x, beta, eps in loss_grid(case):
        out = call_loss(fn, case, x, beta, eps)
        assert matches_loss(case, fn, case.diagnosis, x, beta, eps, out), (case.name, x, beta, eps, out)
        claimed_somewhere_wrong |= not matches_loss(case, fn, None, x, beta, eps, out)
        others = {a for a in others if matches_loss(case, fn, a, x, beta, eps, out)}
    assert claimed_somewhere_wrong, f"{case.name} equals the {case.variant} it claims"
    assert not others, f"{case.name} also matches {others}"


def test_cdpo_swap_is_weights_exchanged():
    """Why SAME_FUNCTION holds: the two closed forms agree (so no cDPO test can tell the two mistakes apart)."""
    x = loss_batches()[-1]
    for beta in BETAS:
        for eps in EPSES:
            a = alternative_loss("chosen-rejected-swapped", "cdpo", x, beta, eps)
            b = alternative_loss("cdpo-weights-exchanged", "cdpo", x, beta, eps)
            assert torch.allclose(a, b, rtol=1e-14, atol=0)


def loss_alternatives_matching(case: Case, fn) -> set[str]:
    names = set(LOSS_ALTS["ipo" if case.variant == "ipo-mean" else case.variant])
    for x, beta, eps in loss_grid(case):
        out = call_loss(fn, case, x, beta, eps)
        names = {a for a in names if matches_loss(case, fn, a, x, beta, eps, out)}
    return names


@pytest.mark.parametrize("case", cases("loss", False, diagnosed=False))
def test_broken_loss_without_diagnosis_shows_its_bug(case: Case):
    fn = load(case.target)
    witness = WITNESS[case.name]
    assert not loss_alternatives_matching(case, fn)
    if witness == "values":
        assert any(not matches_loss(case, fn, None, x, b, e) for x, b, e in loss_grid(case))
    elif witness == "mutates":
        x = loss_batches()[0]
        before = [v.clone() for v in x]
        call_loss(fn, case, x, 0.1, 0.0, fresh=False)
        assert not all(torch.equal(a, b) for a, b in zip(before, x))
    elif witness == "no-gradient":
        assert all(matches_loss(case, fn, None, x, b, e) for x, b, e in loss_grid(case))
        assert not loss_gradient_ok(case, fn, loss_batches()[0], 0.1, 0.0)
    elif witness == "rewards":
        assert all(matches_loss(case, fn, None, x, b, e) for x, b, e in loss_grid(case))
        pc, pr, rc, rr = loss_batches()[0]
        _, chosen, rejected = split_output(call_loss(fn, case, (pc, pr, rc, rr), 0.1, 0.0))
        right = torch.allclose(chosen, 0.1 * (pc - rc), rtol=1e-12) and torch.allclose(rejected, 0.1 * (pr - rr))
        assert not rewards_detached(case, fn) or not right


# ============================================================================================== log-prob level


def logps_batch(kind: str, scale: float, dtype, B: int = 4, T: int = 9, V: int = 11, seed: int = 0):
    """(logits (B, T, V), ids (B, T), labels (B, T)): ids are tokens everywhere (padding = V - 1), labels -100 on
    the prompt and the padding. kind "right": [prompt, response, padding]; "left": [padding, prompt, response];
    every batch has a row whose response ends at the last position, and rows of different prompt lengths."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    ids = torch.randint(0, V - 1, (B, T), generator=g)
    labels = torch.full((B, T), -100)
    shapes = [(1, T - 1, 0), (3, 2, T - 5), (2, 4, T - 6), (4, 1, T - 5)]  # (prompt, response, padding)
    if kind == "right-first":  # a row without a prompt: its first label is set (nothing predicts it)
        shapes[3] = (0, 3, T - 3)
    right = kind.startswith("right")
    for b, (p, r, pad) in enumerate(shapes[:B]):
        start = p if right else pad + p
        if right:
            ids[b, p + r :] = V - 1
        else:
            ids[b, :pad] = V - 1
        labels[b, start : start + r] = ids[b, start : start + r]
    return logits, ids, labels


@functools.cache
def logps_batches() -> tuple:
    """(kind, logits, ids, labels) for right and left padding, logits of scale 1 and 30, float64 and float32.
    Cached: never handed to a case itself (logps_runs gives each call its own copies)."""
    return tuple(
        (kind, *logps_batch(kind, scale, dtype, seed=int(scale)))
        for kind in ("right", "left", "right-first")
        for scale in (1.0, 30.0)
        for dtype in (torch.float64, torch.float32)
    )


def token_logp(row_logits, token: int) -> torch.Tensor:
    """log softmax(row_logits)[token] in float64, written out: x_y - max - log sum exp(x - max)."""
    x = row_logits.double()
    m = x.max()
    return x[token] - m - torch.log(torch.exp(x - m).sum())


_loop_cache: dict = {}


def loop_logps(logits, labels, name: str | None, average: bool):
    """loop_logps_uncached, memoised for the cached batches (the same tensors objects every time)."""
    key = (id(logits), id(labels), name, average)
    if logits.requires_grad or key not in _loop_cache:
        result = loop_logps_uncached(logits, labels, positions_for(name), average)
        if logits.requires_grad:
            return result
        _loop_cache[key] = (logits, labels, result)  # holding the tensors keeps their ids unique
    return _loop_cache[key][2]


def loop_logps_uncached(logits, labels, positions, average: bool):
    """Sum (or mean) over rows of log p(token at t | logits at t - 1) for t in positions(b, labels), the
    token being labels[b, t], or 0 where labels[b, t] is -100; plus the allowance per row (module docstring)."""
    out, tol_terms, counts = [], [], []
    V = logits.shape[-1]
    for b in range(labels.shape[0]):
        total = torch.zeros((), dtype=torch.float64)
        slack = 0.0
        ts = list(positions(b, labels))
        for t, src in ts:
            token = max(int(labels[b, t]), 0)
            lp = token_logp(logits[b, src], token)
            total = total + lp
            slack += float(logits[b, src].detach().abs().max()) + math.log(V) + abs(float(lp.detach()))
        n = max(len(ts), 1)
        out.append(total / n if average else total)
        tol_terms.append(slack / n if average else slack)
        counts.append(n)
    return torch.stack(out), torch.tensor(tol_terms, dtype=torch.float64), torch.tensor(counts)


def scored(b, labels):
    return [(t, t - 1) for t in range(1, labels.shape[1]) if labels[b, t] != -100]


def positions_for(name: str | None):
    """positions(b, labels) -> [(label position t, logits position)] of the claimed convention or a mistake."""
    if name in (None, "mean-not-sum", "sum-not-mean", "float16-scoring"):
        return scored
    if name == "no-shift":
        return lambda b, labels: [(t, t) for t in range(labels.shape[1]) if labels[b, t] != -100]
    if name == "first-label-wrapped":  # torch.roll(-1) unmasked: labels[0], where set, scored at the last position
        return lambda b, labels: scored(b, labels) + ([(0, labels.shape[1] - 1)] if labels[b, 0] != -100 else [])
    if name == "last-token-dropped":
        return lambda b, labels: [(t, s) for t, s in scored(b, labels) if t < labels.shape[1] - 1]
    idx = lambda b, labels: [t for t in range(labels.shape[1]) if labels[b, t] != -100]  # noqa: E731
    if name == "prompt-counted":
        return lambda b, labels: [(t, t - 1) for t in range(1, max(idx(b, labels)) + 1)]
    if name == "padding-counted":
        return lambda b, labels: [(t, t - 1) for t in range(max(1, min(idx(b, labels))), labels.shape[1])]
    raise KeyError(name)


def call_logps(fn, case: Case, logits, ids, labels, hidden=None):
    """Call the case with its adapter's signature; returns (B,) log-probs."""
    adapter = case.options.get("adapter")
    if adapter is None:
        return fn(logits, labels)
    if adapter in ("loss_mask", "input_ids_mask"):
        return fn(logits, ids, (labels != -100).long())
    if adapter == "concatenated":
        chosen, rejected = fn(logits, labels)
        assert chosen.shape == rejected.shape == (logits.shape[0] // 2,)
        return torch.cat([chosen, rejected])
    if adapter == "hidden_states":
        return fn(*hidden, labels)
    raise KeyError(adapter)


def hidden_inputs(logits, dtype, seed: int):
    """(hidden (B, T, H), W (V, H)) standing in for the logits, and the float64 logits h W^T + their error bound."""
    B, T, V = logits.shape
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, 6, generator=g, dtype=torch.float64).to(dtype)
    weight = (torch.randn(V, 6, generator=g, dtype=torch.float64) * 3).to(dtype)
    logits64 = hidden.double() @ weight.double().T
    dot_bound = (hidden.double().abs() @ weight.double().abs().T).amax(-1) * 6  # (B, T): H u max_v sum |h w|
    return (hidden, weight), logits64, dot_bound


def logps_matches(case: Case, got, logits, labels, name: str | None, extra=None) -> bool:
    """Whether `got` equals the claimed convention (name None) or the named mistake, at got's dtype's tolerance
    (a float16/bfloat16 scoring mistake at the bfloat16 tolerance)."""
    average = case.variant == "ipo-mean"
    if name == "mean-not-sum":
        average = True
    if name == "sum-not-mean":
        average = False
    want, slack, counts = loop_logps(logits, labels, name, average)
    u = torch.finfo(torch.bfloat16 if name == "float16-scoring" else got.dtype).eps
    tol = 8 * u * slack
    if extra is not None:  # hidden states: the logits' own dot-product error, over the scored positions
        tol = tol + 8 * u * 2 * extra / (counts if average else 1)
    if name is None and case.name in EPS_GUARD:
        tol = tol + EPS_GUARD[case.name] * want.abs()
    if got.shape != want.shape:
        return False
    if name == "float16-scoring":  # within half-precision error of the right values, but not within got's own
        return close(got, want, tol) and not logps_matches(case, got, logits, labels, None, extra)
    return close(got, want, tol)


_hidden_cache: dict = {}


def logps_runs(case: Case, fn):
    """(output, reference logits, labels, kind, extra allowance, inputs unchanged) for every batch; the function
    gets its own copies, compared afterwards with the originals."""
    for kind, logits, ids, labels in logps_batches():
        extra = hidden = None
        ref_logits = logits
        if case.options.get("adapter") == "hidden_states":
            if id(logits) not in _hidden_cache:
                _hidden_cache[id(logits)] = (logits, hidden_inputs(logits, logits.dtype, seed=7))
            hidden, ref_logits, bound = _hidden_cache[id(logits)][1]
            extra = bound[:, :-1].sum(-1)  # over all positions, a superset of the scored ones
        mine = [t.clone() for t in (logits, ids, labels)]
        mine_hidden = None if hidden is None else tuple(t.clone() for t in hidden)
        got = call_logps(fn, case, *mine, mine_hidden)
        unchanged = all(torch.equal(a, b) for a, b in zip(mine, (logits, ids, labels)))
        if hidden is not None:
            unchanged &= all(torch.equal(a, b) for a, b in zip(mine_hidden, hidden))
        yield got, ref_logits, labels, kind, extra, unchanged


@pytest.mark.parametrize("case", cases("logps", True))
def test_correct_logps_equals_loop(case: Case):
    fn = load(case.target)
    for got, logits, labels, kind, extra, unchanged in logps_runs(case, fn):
        assert unchanged, (case.name, "inputs modified")
        assert logps_matches(case, got, logits, labels, None, extra), (case.name, kind, logits.dtype, got)


@pytest.mark.parametrize(
    "case", [p for p in cases("logps", True) if p.values[0].options.get("adapter") != "hidden_states"]
)
def test_correct_logps_gradient(case: Case):
    """The gradient w.r.t. the logits equals the loop reference's (autograd through the float64 loop)."""
    fn = load(case.target)
    logits, ids, labels = logps_batch("right", 3.0, torch.float64, seed=3)
    mine = logits.clone().requires_grad_(True)
    got = call_logps(fn, case, mine, ids, labels)
    got.sum().backward()
    ref = logits.clone().requires_grad_(True)
    loop_logps(ref, labels, None, case.variant == "ipo-mean")[0].sum().backward()
    u = torch.finfo(got.dtype).eps
    extra = EPS_GUARD.get(case.name, 0.0)
    assert close(mine.grad, ref.grad, 64 * u + extra), case.name


@pytest.mark.parametrize("case", cases("logps", False, diagnosed=True))
def test_broken_logps_computes_its_diagnosis(case: Case):
    fn = load(case.target)
    claimed_somewhere_wrong = False
    others = {a for a in LOGPS_ALTS[case.variant] if a != case.diagnosis}
    assert case.diagnosis in LOGPS_ALTS[case.variant]
    for got, logits, labels, kind, extra, _ in logps_runs(case, fn):
        padding_defined = kind.startswith("right")  # prompt-/padding-counted are defined on right-padded rows
        if case.diagnosis not in ("prompt-counted", "padding-counted") or padding_defined:
            assert logps_matches(case, got, logits, labels, case.diagnosis, extra), (case.name, kind, got)
        claimed_somewhere_wrong |= not logps_matches(case, got, logits, labels, None, extra)
        others = {a for a in others if logps_matches(case, got, logits, labels, a, extra)}
    assert claimed_somewhere_wrong, f"{case.name} equals the {case.variant} it claims"
    assert not others, f"{case.name} also matches {others}"


@pytest.mark.parametrize("case", cases("logps", False, diagnosed=False))
def test_broken_logps_without_diagnosis_shows_its_bug(case: Case):
    fn = load(case.target)
    others = set(LOGPS_ALTS[case.variant])
    wrong_somewhere = mutated = False
    for got, logits, labels, _, extra, unchanged in logps_runs(case, fn):
        others = {a for a in others if logps_matches(case, got, logits, labels, a, extra)}
        wrong_somewhere |= not logps_matches(case, got, logits, labels, None, extra)
        mutated |= not unchanged
    assert not others, f"{case.name} matches {others}"
    assert {"values": wrong_somewhere, "mutates": mutated}[WITNESS[case.name]]
