"""The closing check of a derivation: its result, evaluated to 50 digits, against dpo_ref's code in float64.

Each proof module that derives code has a `compare() -> list[Row]`; the notebook's closing section of that
proof calls `report(name)`, which prints the rows and fails if one disagrees. The derived value is the
proof's own sympy expression evaluated with 50 significant digits at the float64 inputs (exact binary
values): an independent computation, not the code called twice.

Tolerance, from first principles: the code computes each value in float64 (unit roundoff u = 2^-53 ≈
1.1e-16) with fewer than 20 floating-point operations, at points chosen so that every expression has a
condition number below 100 (margins |βh| ≤ 10, probabilities ≥ 0.05). Its error is then below
20 · 100 · u ≈ 2.2e-13 relative; RTOL = 1e-12 leaves a margin of 4 and still fails any wrong constant,
sign or factor. Values near zero (a gradient at an optimum) are compared with ATOL = 1e-12 on the same
grounds, scaled by the size of the terms that cancel (≤ 1 at the chosen points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import sympy as sp

from .core import unfold

RTOL = 1e-12
ATOL = 1e-12
DIGITS = 50


@dataclass(frozen=True)
class Row:
    """One comparison: what is compared, the derived value (50 digits, rounded once) and the code's value."""

    what: str
    derived: float
    code: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.code) and abs(self.code - self.derived) <= ATOL + RTOL * abs(self.derived)


def exact(expr: sp.Basic, values: dict) -> float:
    """expr (σ written out, d/dx evaluated) at the given float inputs, to DIGITS digits, rounded once."""
    point = {k: sp.Float(v, DIGITS) for k, v in values.items()}
    result = sp.N(unfold(expr).subs(point), DIGITS)
    if not result.is_real:
        raise ValueError(f"the derived expression is not a real number at {values}: {result}")
    return float(result)


def tensors(*values: float):
    """float64 leaves of shape (1,) that record gradients."""
    import torch

    return [torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in values]


def table(rows: Sequence[Row]) -> str:
    width = max(len(r.what) for r in rows)
    lines = [f"  {'':{width}}  {'derived (50 digits)':>24}  {'dpo_ref (float64)':>24}  {'|diff|':>9}"]
    for r in rows:
        mark = "✓" if r.ok else "✗"
        diff = abs(r.code - r.derived)
        lines.append(f"{mark} {r.what:{width}}  {r.derived:>24.17g}  {r.code:>24.17g}  {diff:>9.1e}")
    return "\n".join(lines)


def report(name: str) -> list[Row]:
    """Print the proof's comparison table; AssertionError naming the rows that disagree."""
    import importlib

    from . import MODULES

    module = importlib.import_module("." + MODULES[name], __package__)
    rows = module.compare()
    print(table(rows))
    bad = [r.what for r in rows if not r.ok]
    if bad:
        raise AssertionError(f"proof '{name}': dpo_ref disagrees with the derivation on: {', '.join(bad)}")
    return rows
