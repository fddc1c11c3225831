"""Reproductions: a failing check's shrunk input written as a Python snippet that shows the disagreement.

Every snippet defines the inputs, calls the target, computes what dpo_ref expects (float64), prints both,
and ends with an `assert` that fails exactly as the check did, with the tolerance the oracle applied. So
running a reproduction either raises the AssertionError it claims, or the target has changed. The suite
runs the snippets the oracle emits for broken implementations to keep that promise (`run_reproduction` in
`tests/oracle/test_oracle.py`).
"""

from __future__ import annotations

import math

import torch

from dpo_ref.checks import properties as P

HEADER = "import torch\nimport dpo_ref\ntorch.set_printoptions(precision=12)"
NAMES = ("pc", "pr", "rc", "rr")
LOSS_ARGS = "pc, pr, rc, rr"


def _fmt(x) -> str:
    """A Python literal for nested lists of numbers, with inf and nan spelled so they evaluate."""
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    if isinstance(x, float) and not math.isfinite(x):
        return f"float({str(x)!r})"
    return repr(x)


def tensor_src(t: torch.Tensor) -> str:
    return f"torch.tensor({_fmt(t.detach().tolist())}, dtype={t.dtype})"


def expected_src(spec: P.LossSpec, args: str = LOSS_ARGS) -> str:
    """dpo_ref's per-example losses for `spec` on `args`, in float64."""
    args64 = ", ".join(f"{a.strip()}.double()" for a in args.split(","))
    if spec.variant == "ipo":
        return f"dpo_ref.ipo_loss({args64}, tau={spec.tau!r}).losses"
    return f"dpo_ref.dpo_loss({args64}, beta={spec.beta!r}, label_smoothing={spec.eps!r}).losses"


def close_assert(got: str, expected: str, err: BaseException | None, what: str = "the target disagrees") -> str:
    """Lines asserting `got` matches `expected` where the check found it does not (index and tolerance)."""
    i, tol = getattr(err, "index", None), getattr(err, "tol", 0.0)
    if i is None:
        return "\n".join(
            [
                f"_got, _expected = ({got}).detach().double(), ({expected}).detach().double()",
                f"assert _got.shape == _expected.shape and torch.allclose(_got, _expected, rtol=0, atol={tol or 0.0!r},"
                f" equal_nan=False), {what!r}",
            ]
        )
    return "\n".join(
        [
            f"_got, _expected = ({got}).detach().double().reshape(-1), ({expected}).detach().double().reshape(-1)",
            f"print('at index {i}: |got - expected| =', (_got[{i}] - _expected[{i}]).abs().item(), "
            f"'> tolerance {tol:.3g}')",
            f"assert torch.isclose(_got[{i}], _expected[{i}], rtol=0, atol={tol!r}), {what!r}",
        ]
    )


# ---------------------------------------------------------------------------------------------------
# Loss level: input lines


def loss_inputs(target, cfg, ex: dict) -> str:
    tensors = ex["batch"].tensors(ex.get("dtype", torch.float64))
    return "\n".join(f"{n} = {tensor_src(t)}" for n, t in zip(NAMES, tensors))


def monotone_inputs(target, cfg, ex: dict) -> str:
    h = torch.sort(torch.tensor(ex["margins"], dtype=torch.float64)).values
    return f"pc = {tensor_src(h)}  # margins h, sorted\npr = rc = rr = torch.zeros_like(pc)"


def large_inputs(target, cfg, ex: dict) -> str:
    small = ex["small"].tensors(ex.get("dtype", torch.float64))
    n = ex["batch"].size
    return "\n".join(f"{name} = {tensor_src(t)}.repeat({ex['reps']})[:{n}]" for name, t in zip(NAMES, small))


# ---------------------------------------------------------------------------------------------------
# Loss level: bodies, (target, spec, ex, err) -> lines


def values(target, spec, ex, err) -> str:
    lines = [f"got = {target.call_src(spec)}", "got = got[0] if isinstance(got, tuple) else got"]
    if target.reduction not in ("per-example", None):
        lines.append(f"# the target reduces the batch ({target.reduction}): each example is called alone below")
        one = target.call_src(spec, "pc[i:i+1], pr[i:i+1], rc[i:i+1], rr[i:i+1]")
        lines.append(
            f"got = torch.stack([torch.as_tensor((lambda out: out[0] if isinstance(out, tuple) else out)({one}))"
            ".reshape(()) for i in range(pc.shape[0])])"
        )
    lines += [
        f"expected = {expected_src(spec)}",
        "print(got)       # got",
        "print(expected)  # expected (dpo_ref, float64)",
        close_assert("got", "expected", err, f"loss values differ from {spec.describe()}"),
    ]
    return "\n".join(lines)


def gradients(reduce: str):
    def body(target, spec, ex, err) -> str:
        red = "" if target.reduction != "per-example" else f".{reduce}()"
        # the check also calls the target as trainers do, the references not requiring grad
        refs_grad = "references without grad" not in str(err)
        return "\n".join(
            [
                "leaves = [t.clone().requires_grad_() for t in (pc, pr, rc, rr)]"
                if refs_grad
                else "leaves = [pc.clone().requires_grad_(), pr.clone().requires_grad_(), rc.clone(), rr.clone()]"
                "  # references without grad, as trainers pass them",
                f"out = {target.call_src(spec, 'leaves[0], leaves[1], leaves[2], leaves[3]')}",
                "out = out[0] if isinstance(out, tuple) else out",
                "ref = [t.detach().double().requires_grad_() for t in (pc, pr, rc, rr)]",
                f"{expected_src(spec, 'ref[0], ref[1], ref[2], ref[3]')}.{reduce}().backward()",
                "expected = torch.stack([t.grad for t in ref])  # d/d pc, pr, rc, rr (dpo_ref, float64)",
                f"got = torch.stack([g if g is not None else torch.zeros_like(pc) for g in torch.autograd.grad("
                f"out{red}, {'leaves' if refs_grad else 'leaves[:2]'}, allow_unused=True)]).double() "
                "if out.requires_grad else torch.zeros_like(expected)",
                *([] if refs_grad else ["expected = expected[:2]  # the policy's gradients only"]),
                "print(got)       # got",
                "print(expected)  # expected",
                "compared = [0, 1] + [k for k in (2, 3) if got[k].abs().sum() > 0]  # a detached reference is fine"
                if refs_grad
                else "compared = [0, 1]",
                "diff = (got[compared] - expected[compared]).abs().max().item()",
                f"assert diff <= {getattr(err, 'tol', 0.0)!r}, f'gradients differ by {{diff}}'",
            ]
        )

    return body


def large_batch(target, spec, ex, err) -> str:
    """The check compares values, then gradients: the snippet shows whichever was off."""
    body = gradients("sum") if "dL/d" in str(err) else values
    return body(target, spec, ex, err)


def repeated(body, times: int):
    """A snippet that calls the target `times` times: a wrong answer on some calls only shows in a loop."""

    def snippet(target, spec, ex, err) -> str:
        inner = body(target, spec, ex, err).splitlines()
        return "\n".join([f"for call in range({times}):", *("    " + line for line in inner)])

    return snippet


def z_cancellation(target, spec, ex, err) -> str:
    f = torch.tensor(ex["shift"], dtype=ex.get("dtype", torch.float64))
    tol = getattr(err, "tol", 0.0)
    return "\n".join(
        [
            f"f = {tensor_src(f)}  # a per-prompt constant added to both policy log-probs",
            "def loss_and_grads(a, b):",
            "    a, b = a.clone().requires_grad_(), b.clone().requires_grad_()",
            f"    out = {target.call_src(spec, 'a, b, rc, rr')}",
            "    out = out[0] if isinstance(out, tuple) else out",
            "    grads = torch.autograd.grad(out.sum(), (a, b), allow_unused=True)",
            "    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, (a, b))]",
            "    return torch.cat([out.detach().double(), *(g.double() for g in grads)])",
            "base, moved = loss_and_grads(pc, pr), loss_and_grads(pc + f, pr + f)",
            "print(base)  # losses, then dL/d policy chosen and rejected",
            "print(moved)  # must be the same: Z(x) cancels",
            "assert bool(torch.isfinite(base).all()), 'the loss or its gradient is not finite even without f(x)'",
            f"assert torch.allclose(moved, base, rtol=0, atol={tol!r}), 'adding f(x) to both policy log-probs changed "
            "the loss or its gradients'",
        ]
    )


def init(target, spec, ex, err) -> str:
    slope = float(spec.dloss_dmargin(torch.zeros(1))[0])
    tol = getattr(err, "tol", 0.0)
    return "\n".join(
        [
            "rc, rr = pc.clone(), pr.clone()  # policy = reference",
            "x = pc.clone().requires_grad_()",
            f"got = {target.call_src(spec, 'x, pr, rc, rr')}",
            "got = got[0] if isinstance(got, tuple) else got",
            "slope = torch.autograd.grad(got.sum(), x)[0] if got.requires_grad else torch.zeros_like(x)",
            f"print(got)    # expected every value to be {spec.value_at_init()!r}",
            f"print(slope)  # expected every value to be dL/dh(0) = {slope!r}",
            f"assert torch.allclose(got.detach().double(), torch.full(got.shape, {spec.value_at_init()!r}, "
            f"dtype=torch.float64), rtol=0, atol={tol!r}), 'the loss at pi = pi_ref is wrong'",
            f"assert torch.allclose(slope.double(), torch.full(slope.shape, {slope!r}, dtype=torch.float64), "
            f"rtol=0, atol={tol!r}), 'the slope dL/dh at pi = pi_ref is wrong'",
        ]
    )


def swap(target, spec, ex, err) -> str:
    return "\n".join(
        [
            f"got = {target.call_src(spec, 'pr, pc, rr, rc')}  # chosen and rejected swapped",
            "got = got[0] if isinstance(got, tuple) else got",
            f"expected = {expected_src(spec, 'pr, pc, rr, rc')}",
            "print(got)\nprint(expected)",
            close_assert("got", "expected", err, "swapping chosen and rejected does not give the loss at -h"),
        ]
    )


def monotone(target, spec, ex, err) -> str:
    i, tol = getattr(err, "index", None) or 0, getattr(err, "tol", 0.0)
    return "\n".join(
        [
            f"got = {target.call_src(spec)}",
            "got = (got[0] if isinstance(got, tuple) else got).detach().double()",
            f"expected = {expected_src(spec)}",
            "print(got)       # h increases along the batch: the loss must not increase",
            "print(expected)  # and must fall where the formula visibly does",
            f"i, tol = {i}, {tol!r}",
            "assert got[i + 1] <= got[i] + tol, 'the loss increased with the margin'",
            "assert not (expected[i] - expected[i + 1] > 2 * tol) or bool(got[i + 1] < got[i]), "
            "'the loss did not fall where the formula does'",
        ]
    )


def optimum(target, spec, ex, err) -> str:
    h = spec.optimum()
    return "\n".join(
        [
            f"h_star = {h!r}  # the minimiser of the per-pair loss",
            "def at(h):",
            "    x = (rc + h).requires_grad_()",
            f"    out = {target.call_src(spec, 'x, rr.clone(), rc, rr')}",
            "    out = out[0] if isinstance(out, tuple) else out",
            "    (g,) = torch.autograd.grad(out.sum(), x)",
            "    return out.detach(), g",
            "(l0, g0), (lm, _), (lp, _) = at(h_star), at(h_star - " + repr(ex["delta"]) + "), at(h_star + "
            f"{ex['delta']!r})",
            "print(l0, g0)  # expected: the smallest loss and a zero gradient at h_star",
            "print(lm, lp)  # the loss either side",
            f"assert bool((g0.abs() <= {max(getattr(err, 'tol', 0.0), 1e-9)!r}).all()) and bool((lm > l0).all()) and "
            "bool((lp > l0).all()), 'h_star is not where the loss is smallest'",
        ]
    )


def permutation(target, spec, ex, err) -> str:
    return "\n".join(
        [
            f"perm = torch.tensor({list(ex['perm'])!r})",
            f"a = {target.call_src(spec)}",
            f"b = {target.call_src(spec, 'pc[perm], pr[perm], rc[perm], rr[perm]')}",
            "a, b = (x[0] if isinstance(x, tuple) else x for x in (a, b))",
            "print(a[perm])\nprint(b)  # must be the same",
            close_assert("b", "a[perm]", err, "permuting the batch does not permute the losses"),
        ]
    )


def independence(target, spec, ex, err) -> str:
    i = ex["index"]
    other = ex["other"].tensors(ex.get("dtype", torch.float64))
    j = i % other[0].shape[0]
    lines = [f"a = {target.call_src(spec)}", "a = a[0] if isinstance(a, tuple) else a"]
    for n, t in zip(NAMES, other):
        lines.append(f"{n} = {n}.clone(); {n}[{i}] = {t[j].item()!r}  # change example {i} only")
    lines += [
        f"b = {target.call_src(spec)}",
        "b = b[0] if isinstance(b, tuple) else b",
        f"keep = [k for k in range(a.shape[0]) if k != {i}]",
        "print(a[keep])\nprint(b[keep])  # every other example's loss must be unchanged",
        f"assert torch.allclose(a[keep].double(), b[keep].double(), rtol=0, atol={getattr(err, 'tol', 0.0)!r}), "
        "'changing one example changed the others'",
    ]
    return "\n".join(lines)


def finite(target, spec, ex, err) -> str:
    return "\n".join(
        [
            "leaves = [t.clone().requires_grad_() for t in (pc, pr, rc, rr)]",
            f"out = {target.call_src(spec, 'leaves[0], leaves[1], leaves[2], leaves[3]')}",
            "out = out[0] if isinstance(out, tuple) else out",
            "grads = torch.autograd.grad(out.sum(), leaves[:2], allow_unused=True) if out.requires_grad else ()",
            "print(out, *grads)",
            "assert bool(torch.isfinite(out).all()) and all(g is None or bool(torch.isfinite(g).all()) for g in grads),"
            " 'a loss or gradient is not finite'",
        ]
    )


def unmodified(target, spec, ex, err) -> str:
    return "\n".join(
        [
            "before = [t.clone() for t in (pc, pr, rc, rr)]",
            f"{target.call_src(spec)}",
            "same = [torch.equal(a, b) for a, b in zip(before, (pc, pr, rc, rr))]",
            "print(same)  # expected all True",
            "assert all(same), 'the target wrote into its inputs'",
        ]
    )


def reduction(target, spec, ex, err) -> str:
    red = target.reduction if target.reduction in ("mean", "sum") else "mean"
    return "\n".join(
        [
            f"got = {target.call_src(spec)}",
            "got = got[0] if isinstance(got, tuple) else got",
            f"expected = {expected_src(spec)}.{red}()",
            "print(got)\nprint(expected)",
            close_assert("got", "expected", err, f"the scalar is not the {red} of the per-example losses"),
        ]
    )


# ---------------------------------------------------------------------------------------------------
# Log-prob level


def logps_inputs_from(logits: torch.Tensor, labels: torch.Tensor, note: str = "") -> str:
    return (
        f"logits = {tensor_src(logits)}  # (B, T, V){note}\nlabels = {tensor_src(labels)}  # (B, T), -100 = not scored"
    )


def logps_inputs(target, cfg, ex: dict) -> str:
    logits, labels = ex["batch"].padded(dtype=ex.get("dtype", torch.float64))
    return logps_inputs_from(logits, labels)


def unscored_inputs(fill: float):
    def inputs(target, cfg, ex: dict) -> str:
        logits, labels = P.unscored_filled(ex["batch"], fill)
        return logps_inputs_from(logits, labels, note=f", {fill!r} where nothing is scored")

    return inputs


def logps_expected(average: bool) -> str:
    return f"dpo_ref.sequence_logps(logits.double(), labels, average={average!r})"


def logps_values(target, cfg, ex, err) -> str:
    return "\n".join(
        [
            f"got = {target.call_src()}",
            f"expected = {logps_expected(cfg.average)}",
            "print(got)       # got",
            "print(expected)  # expected (dpo_ref, float64)",
            close_assert("got", "expected", err, "the sequence log-probs differ"),
        ]
    )


def logps_unscored(fill: float):
    def body(target, cfg, ex, err) -> str:
        return "\n".join(
            [
                f"got = {target.call_src()}",
                f"expected = dpo_ref.sequence_logps(logits.double(), labels, average={cfg.average!r})"
                "  # dpo_ref never reads the unscored positions",
                "print(got)       # got",
                "print(expected)  # expected",
                close_assert("got", "expected", err, f"{fill!r} logits at unscored positions changed the result"),
            ]
        )

    return body


def logps_padding(target, cfg, ex, err) -> str:
    b = ex["batch"]
    lines = ["results = []"]
    for side in ("left", "right"):
        for extra in (0, 2):
            logits, labels = b.padded(side, extra)
            lines.append(f"# {side} padding, {extra} extra positions")
            lines.append(logps_inputs_from(logits, labels))
            lines.append(f"results.append({target.call_src()})")
    lines += [
        "for r in results:\n    print(r)  # must be the same for every padding",
        f"assert all(torch.allclose(r.double(), results[0].double(), rtol=0, atol={getattr(err, 'tol', 0.0)!r}) "
        "for r in results), 'the padding changed the log-probs'",
    ]
    return "\n".join(lines)


def logps_gradients(target, cfg, ex, err) -> str:
    return "\n".join(
        [
            "x = logits.clone().requires_grad_()",
            f"out = {target.call_src('x, labels')}",
            "y = logits.clone().requires_grad_()",
            f"dpo_ref.sequence_logps(y, labels, average={cfg.average!r}).sum().backward()",
            "got = torch.autograd.grad(out.sum(), x)[0] if out.requires_grad else torch.zeros_like(x)",
            "diff = (got - y.grad).abs().max().item()",
            "print(diff)  # expected 0 up to rounding",
            f"assert diff <= {getattr(err, 'tol', 0.0) or 1e-9!r}, 'the gradient is not one-hot minus softmax'",
        ]
    )


def logps_unmodified(target, cfg, ex, err) -> str:
    return "\n".join(
        [
            "before = (logits.clone(), labels.clone())",
            f"{target.call_src()}",
            "same = (torch.equal(logits, before[0]), torch.equal(labels, before[1]))",
            "print(same)  # expected (True, True)",
            "assert all(same), 'the target wrote into its inputs'",
        ]
    )


def rewards(target, spec, ex, err) -> str:
    c = spec.coefficient
    return "\n".join(
        [
            f"out = {target.call_src(spec)}",
            f"got = torch.stack([torch.as_tensor(r) for r in {target.rewards_src()}])  # chosen, rejected rewards",
            f"expected = torch.stack([{c!r} * (pc.double() - rc.double()), {c!r} * (pr.double() - rr.double())])",
            "print(got)       # got",
            "print(expected)  # expected: coefficient * (log pi - log pi_ref)",
            close_assert("got", "expected", err, "the implicit rewards differ"),
        ]
    )


def rewards_detached(target, spec, ex, err) -> str:
    return "\n".join(
        [
            "pc, pr, rc, rr = (t.clone().requires_grad_() for t in (pc, pr, rc, rr))",
            f"out = {target.call_src(spec)}",
            f"grads = [torch.as_tensor(r).requires_grad for r in {target.rewards_src()}]",
            "print(grads)  # expected [False, False]",
            "assert not any(grads), 'the implicit rewards carry the autograd graph'",
        ]
    )
