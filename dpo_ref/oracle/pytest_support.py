"""pytest integration: one test per conformance check.

In your own test suite (in the style of scikit-learn's `parametrize_with_checks`):

    from dpo_ref import parametrize_with_dpo_checks

    @parametrize_with_dpo_checks(my_dpo_loss, variant="dpo")
    def test_my_dpo_loss(dpo_check):
        dpo_check()

Each generated test runs one check and fails with the check's message, the report's diagnosis (what the target
computes instead, from the catalogue every interface shares) and its reproduction snippet.
From the command line, with the plugin that dpo-ref registers (`pytest11` entry point):

    pytest --dpo-target path/to/file.py:my_loss --dpo-level loss --dpo-variant dpo [--dpo-xfail FILE]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import pytest


class DpoCheck:
    """One named check on one target; calling it runs the check (once) and fails, skips or xfails.

    `run()` returns the `Report` of a run that includes the check."""

    def __init__(self, name: str, run: Callable[[], object]):
        self.name = name
        self._run = run
        self._report = None

    def __repr__(self) -> str:
        return f"DpoCheck({self.name!r})"

    def report(self):
        if self._report is None:
            self._report = self._run()
        return self._report

    def result(self):
        return self.report()[self.name]

    def __call__(self) -> None:
        from dpo_ref.oracle.report import ADVICE, FAILED, SKIPPED, XFAILED

        r = self.result()
        if r.status == ADVICE:
            from dpo_ref.oracle.catalogue import ADVICE as ADVICE_TEXT

            advice = ADVICE_TEXT.get(r.name, "")
            if advice not in self.report().advice:  # the fixed advice is not the cause: give only what failed
                advice = "failed"
            warnings.warn(f"dpo-ref advice from {r.name!r}: {advice} ({r.message})", UserWarning, stacklevel=2)
        if r.status == SKIPPED:
            pytest.skip(f"{r.name}: {r.message}")
        if r.status == XFAILED:
            pytest.xfail(f"{r.name} (listed as expected to fail): {r.message}")
        if r.status == FAILED:
            text = f"dpo-ref check {r.name!r} failed: {r.message}"
            text += "".join(f"\nDiagnosis: {d}" for d in self.report().diagnosis)
            if r.reproduction:
                text += "\n\nReproduction:\n" + r.reproduction
            raise AssertionError(text)


def checks_for(
    fn: Callable | str,
    level: str | None = None,
    variant: str = "dpo",
    *,
    xfail: Iterable[str] | str = (),
    **verify_kwargs,
) -> list[DpoCheck]:
    """One `DpoCheck` per check the oracle runs on `fn` at `level`, each running only its own check."""
    from dpo_ref.oracle.api import check_names, verify
    from dpo_ref.oracle.targets import ADAPTERS

    xfail = [xfail] if isinstance(xfail, str) else list(xfail)  # one name, not its characters

    if isinstance(fn, str) and fn in ADAPTERS:
        report_cache: dict = {}

        def whole():
            if "r" not in report_cache:
                report_cache["r"] = verify(fn, level, variant, xfail=xfail, **verify_kwargs)
            return report_cache["r"]

        return [DpoCheck(c.name, whole) for c in whole().checks]
    xfail = set(xfail)
    names = check_names(level or "loss", variant)
    verify(fn, level, variant, checks=[], **verify_kwargs)  # bad arguments or target: InputError now, not per test
    if xfail - set(names):
        from dpo_ref.errors import InputError

        unknown = ", ".join(sorted(xfail - set(names)))
        raise InputError(f"xfail names unknown check(s) {unknown}; checks: {', '.join(names)}")

    def one(name: str):
        return verify(
            fn,
            level,
            variant,
            checks=[] if name == "call" else [name],
            xfail=[name] if name in xfail else (),
            **verify_kwargs,
        )

    return [DpoCheck(name, lambda n=name: one(n)) for name in names]


def parametrize_with_dpo_checks(fn: Callable | str, level: str | None = None, variant: str = "dpo", **kwargs):
    """`pytest.mark.parametrize("dpo_check", ...)` with one test per conformance check of `fn`.

    Takes the arguments of `dpo_ref.verify` (level, variant, beta, label_smoothing, average,
    max_examples) and `xfail`, the check names expected to fail (a list, or one name as a string).
    """
    checks = checks_for(fn, level, variant, **kwargs)
    return pytest.mark.parametrize("dpo_check", checks, ids=[c.name for c in checks])
