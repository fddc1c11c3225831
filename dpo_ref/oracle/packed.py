"""The packed level: `fn(logits (1, N, V), labels (1, N), cu_seqlens (S+1,)) -> (S,)`, padding-free log-probs.

Several sequences share one row; `cu_seqlens` gives their boundaries as flash-attention's varlen API does; labels
are aligned with the input ids (-100: not scored) and the logits at t predict t+1. The checks (one `Check`
record each, run by the same runner as every other level) compare each segment with scoring it alone
(`dpo_ref.checks.packed_properties`); the diagnosis names which packing mistake the values match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

import dpo_ref.oracle.snippets as S
from dpo_ref.checks import packed_properties as PP
from dpo_ref.checks import properties as P
from dpo_ref.checks import strategies as dst
from dpo_ref.oracle.catalogue import PACKED, REPEATS, Check, Config
from dpo_ref.oracle.targets import first_item

CALL_ARGS = ("logits", "labels", "cu_seqlens")
PACKED_HINT = (
    "a packed-level target is called as fn(logits (1, N, V), labels (1, N), cu_seqlens (S+1,) int32) -> (S,): "
    "segment s is positions cu_seqlens[s]:cu_seqlens[s+1], labels aligned with the input ids, -100 = not scored"
)
# A few fixed large packings: many short segments, and long segments over a larger vocabulary (loop-checked in
# well under a second each on one core).
LARGE_PACKINGS = ((64, 24, 257), (3, 600, 1031))


@dataclass
class PackedTarget:
    """A packed-level callable and how to show a call of it."""

    fn: Callable
    name: str
    import_src: str

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        return first_item(self.fn(logits, labels, cu_seqlens))

    def call_src(self, args: str = "logits, labels, cu_seqlens") -> str:
        return f"fn({args})"


# ---------------------------------------------------------------------------------------------------
# Reproductions


def _inputs(target, cfg: Config, ex: dict) -> str:
    if "fixed" in ex:  # a large fixed packing: rebuilt from its parameters, not printed
        args = ", ".join(str(a) for a in ex["fixed"])
        return (
            f"from dpo_ref.checks.strategies import fixed_packed_batch\n"
            f"logits, labels, cu_seqlens = fixed_packed_batch({args}).packed()"
        )
    logits, labels, cu_seqlens = ex["batch"].packed(ex.get("dtype", torch.float64))
    return (
        f"logits = {S.tensor_src(logits)}  # (1, N, V)\n"
        f"labels = {S.tensor_src(labels)}  # (1, N), aligned with the input ids, -100 = not scored\n"
        f"cu_seqlens = {S.tensor_src(cu_seqlens)}  # (S+1,): segment s is positions cu_seqlens[s]:cu_seqlens[s+1]"
    )


def _expected(cfg: Config) -> str:
    return f"dpo_ref.packed_sequence_logps(logits.double(), labels, cu_seqlens, average={cfg.average!r})"


def _values(target, cfg, ex, err) -> str:
    return "\n".join(
        [
            f"got = {target.call_src()}",
            f"expected = {_expected(cfg)}  # each segment scored alone",
            "print(got)       # got",
            "print(expected)  # expected (dpo_ref, float64)",
            S.close_assert("got", "expected", err, "the per-segment log-probs differ"),
        ]
    )


def _gradients(target, cfg, ex, err) -> str:
    return "\n".join(
        [
            "w = torch.arange(1, cu_seqlens.numel(), dtype=torch.float64)  # a distinct weight per segment",
            "x = logits.clone().requires_grad_()",
            f"out = {target.call_src('x, labels, cu_seqlens')}",
            "y = logits.clone().requires_grad_()",
            f"(dpo_ref.packed_sequence_logps(y, labels, cu_seqlens, average={cfg.average!r}) * w).sum().backward()",
            "got = torch.autograd.grad((out * w).sum(), x)[0] if out.requires_grad else torch.zeros_like(x)",
            "diff = (got - y.grad).abs().max().item()",
            "print(diff)  # expected 0 up to rounding",
            f"assert diff <= {getattr(err, 'tol', 0.0) or 1e-9!r}, 'the gradient differs from one segment at a time'",
        ]
    )


def _unmodified(target, cfg, ex, err) -> str:
    return "\n".join(
        [
            "before = (logits.clone(), labels.clone(), cu_seqlens.clone())",
            target.call_src(),
            "same = tuple(torch.equal(a, b) for a, b in zip((logits, labels, cu_seqlens), before))",
            "print(same)  # expected (True, True, True)",
            "assert all(same), 'the target wrote into its inputs'",
        ]
    )


# ---------------------------------------------------------------------------------------------------
# The checks


def _draw(dtype=torch.float64, **kw) -> Callable[[Config], st.SearchStrategy[dict]]:
    return lambda cfg: st.fixed_dictionaries(
        {"batch": dst.packed_batches(average=cfg.average, **kw), "dtype": st.just(dtype)}
    )


def _values_run(dtype: torch.dtype):
    def run(t, cfg, ex):
        precision = PP.check_packed_values(t, ex["batch"], cfg.average, dtype)
        return precision if dtype == torch.float64 else None

    return run


def _large(cfg: Config) -> st.SearchStrategy[dict]:
    def build(shape):
        batch = dst.fixed_packed_batch(*shape)
        if cfg.average:  # every segment must score something for a mean: drop the ones that do not
            batch.rows[:] = [r for r in batch.rows if bool((r[0][1:] != P.IGNORE_INDEX).any())]
            return {"batch": batch, "dtype": torch.float64}
        return {"batch": batch, "dtype": torch.float64, "fixed": shape}

    return st.sampled_from(LARGE_PACKINGS).map(build)


def _repeated(t, cfg, ex):
    for _ in range(REPEATS):
        PP.check_packed_values(t, ex["batch"], cfg.average, torch.float64)


def _value_check(name: str, description: str, strategy, run=None, snippet=_values) -> Check:
    """A check of the per-segment values against each segment scored alone."""
    run = run or _values_run(torch.float64)
    return Check(name, description, strategy, run, snippet, inputs=_inputs, value=True, table=PACKED)


PACKED_CHECKS: tuple[Check, ...] = (
    _value_check(
        "packed_values",
        "each segment's log-prob equals scoring it alone: the shift inside the segment, -100 masked (float64)",
        _draw(),
    ),
    Check(
        "packed_values_float32",
        "the same within the float32 tolerance (float32 logits)",
        _draw(torch.float32),
        _values_run(torch.float32),
        _values,
        inputs=_inputs,
        value=True,
        table=PACKED,
    ),
    _value_check(
        "packed_boundary",
        "every segment's first label is set and must not be scored: nothing is predicted across a boundary",
        _draw(boundary=True),
    ),
    _value_check(
        "packed_single_tokens",
        "many segments of one or two tokens (a one-token segment scores nothing: 0)",
        _draw(max_segments=24, max_length=2),
    ),
    _value_check(
        "packed_large",
        "64 short segments in one row, and 600-token segments over a 1031-token vocabulary",
        _large,
    ),
    Check(
        "packed_repeatable",
        f"the same packed input called {REPEATS} times gives the right log-probs every time",
        lambda cfg: st.just({"batch": dst.fixed_packed_batch(5, 6, 7, seed=1), "dtype": torch.float64}),
        _repeated,
        S.repeated(_values, REPEATS),
        inputs=_inputs,
        value=True,
        table=PACKED,
    ),
    Check(
        "packed_gradients",
        "d logps / d logits is one-hot minus softmax within each segment, weighted per segment, 0 elsewhere",
        _draw(),
        lambda t, cfg, ex: PP.check_packed_gradients(t, ex["batch"], cfg.average),
        _gradients,
        inputs=_inputs,
        table=PACKED,
    ),
    Check(
        "packed_inputs_unmodified",
        "logits, labels and cu_seqlens are not written to",
        _draw(),
        lambda t, cfg, ex: PP.check_packed_inputs_unmodified(t, ex["batch"]),
        _unmodified,
        inputs=_inputs,
        table=PACKED,
    ),
)


# ---------------------------------------------------------------------------------------------------
# Diagnosis: which packing mistake the values match


def diagnostic_packed_batch():
    """Segments that tell the mistakes apart: first labels set (no prompt) in some, prompts in others, a one-token
    segment, -100 holes, unequal lengths."""
    batch = dst.fixed_packed_batch(7, 7, 11, seed=3)
    batch.rows.insert(2, dst.fixed_packed_batch(1, 1, 11, seed=4).rows[0])  # a one-token segment
    return batch


def _pairs(labels: list[int], a: int, b: int, n: int, mistake: str) -> list[tuple[int, int]]:
    """(position of the logits, position of the label) scored for segment [a, b) under `mistake`."""
    scored = [(t - 1, t) for t in range(a + 1, b) if labels[t] != P.IGNORE_INDEX]
    if mistake == "cross-boundary:previous" and a > 0 and labels[a] != P.IGNORE_INDEX:
        return [(a - 1, a), *scored]
    if mistake == "cross-boundary:next" and b < n and labels[b] != P.IGNORE_INDEX:
        return [*scored, (b - 1, b)]
    if mistake in ("no-shift", "no-shift:start"):
        first = a if mistake == "no-shift:start" else a + 1
        return [(t, t) for t in range(first, b) if labels[t] != P.IGNORE_INDEX]
    if mistake == "double-shift":
        return [(t - 2, t) for t in range(a + 2, b) if labels[t] != P.IGNORE_INDEX]
    if mistake == "segment-last-dropped":
        return [(s, t) for s, t in scored if t != b - 1]
    if mistake == "holes-scored":
        return [(t - 1, t) for t in range(a + 1, b)]
    return scored


MISTAKES = {
    "cross-boundary:previous": "predicts across a segment boundary: each segment also scores its own first label "
    "from the previous segment's last logits (a shift over the whole row, the segment starts not masked)",
    "cross-boundary:next": "predicts across a segment boundary: each segment also scores the next segment's first "
    "label (the shifted labels summed over the unshifted cu_seqlens)",
    "no-shift": "no shift: scores labels[t] with the logits at t",
    "no-shift:start": "no shift: scores labels[t] with the logits at t, the segment's first label included",
    "double-shift": "shifted twice: scores labels[t] with the logits at t-2",
    "segment-last-dropped": "never scores each segment's last position",
    "holes-scored": "scores the -100 positions too, as token 0 (the mask is not applied)",
}
# segments read from other boundaries than cu_seqlens gives: (a, b) per output, scored correctly inside
MISREADINGS = {
    "merged": "the last two segments merged into one (cu_seqlens' last boundary but one skipped), the last 0",
    "as-lengths": "cu_seqlens[1:] read as segment lengths instead of offsets",
}


def _misread(cu: list[int], n: int, how: str) -> list[tuple[int, int]]:
    if how == "merged":
        return [*zip(cu[:-2], cu[1:-2]), (cu[-3] if len(cu) > 2 else 0, n), (n, n)][: len(cu) - 1]
    spans, start = [], 0
    for length in cu[1:]:
        end = min(start + length, n)
        spans.append((start, end))
        start = end
    return spans


def _alternative(logits, labels, cu: list[int], mistake: str, mean: bool, dtype=None, spans=None) -> torch.Tensor:
    logp = logits[0].to(dtype or torch.float64).log_softmax(-1).double()  # (N, V)
    ids, n = labels[0].tolist(), labels.shape[1]
    out = []
    for a, b in spans or list(zip(cu, cu[1:])):
        pairs = _pairs(ids, a, b, n, mistake)
        values = [float(logp[s, max(ids[t], 0)]) for s, t in pairs if s >= 0]
        out.append(sum(values) / max(1, len(values)) if mean else sum(values))
    return torch.tensor(out, dtype=torch.float64)


def diagnose_packed(fn: Callable, average: bool) -> list[str]:
    """The packing mistakes (and reductions, precisions) the target's values on a diagnostic packing match."""
    batch = diagnostic_packed_batch()
    logits, labels, cu_seqlens = batch.packed()
    try:
        with torch.no_grad():
            got = fn(logits.clone(), labels.clone(), cu_seqlens.clone())
        if not isinstance(got, torch.Tensor) or got.shape != (len(batch.rows),):
            return []
        got = got.detach().double()
    except KeyboardInterrupt:
        raise
    except BaseException:  # whatever the target raises, nothing can be diagnosed
        return []
    rows = [(lab, lg) for lab, lg in batch.rows]
    tol = P.TOLERANCE_K * P.EPS_FLOAT32 * P.logps_tolerance_scale(rows)
    if bool(((got - P.loop_sequence_logps(rows, average)).abs() <= tol).all()):
        return []
    cu = cu_seqlens.tolist()
    found = []
    for mistake, says in MISTAKES.items():
        for mean in (average, not average):
            if bool(((got - _alternative(logits, labels, cu, mistake, mean)).abs() <= tol).all()):
                reduction = "" if mean == average else (" and averages" if mean else " and sums")
                found.append(f"{mistake.split(':')[0]}: {says}{reduction}")
    for how, says in MISREADINGS.items():
        spans = _misread(cu, labels.shape[1], how)
        if bool(((got - _alternative(logits, labels, cu, "none", average, spans=spans)).abs() <= tol).all()):
            found.append(f"segments-misread: {says}")
    if bool(((got - _alternative(logits, labels, cu, "none", not average)).abs() <= tol).all()):
        found.append(
            "sum-not-mean: returns the sum over each segment's scored tokens"
            if average
            else "mean-not-sum: returns the mean over each segment's scored tokens"
        )
    residual = {}
    for dtype in (torch.float16, torch.bfloat16):
        alt = _alternative(logits, labels, cu, "none", average, dtype)
        slack = 4 * torch.finfo(torch.bfloat16).eps * alt.abs()  # half rounding is not reproducible exactly
        if bool(((got - alt).abs() <= tol + slack).all()):
            residual[dtype] = float((got - alt).abs().max())
    if residual and not found:  # both may match within the slack: the dtype used leaves the smaller residual
        dtype = min(residual, key=residual.get)
        found.append(f"{str(dtype).removeprefix('torch.')}-scoring: the log-softmax is done in {dtype}")
    return found
