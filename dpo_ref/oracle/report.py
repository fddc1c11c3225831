"""The result of a conformance run: one `CheckResult` per check, gathered in a `Report`.

A check either passed, failed (with the shrunk failing input as a copy-pasteable `reproduction`),
gave advice (an advisory robustness check that failed: not a formula error, so not a failure unless
strict), or was skipped (not applicable to this variant or level; `message` says why). `Report.passed`
is True when no check failed; expected failures listed in an xfail file count as `xfailed`, not failed.
Beside the verdict: `precision` (the grade and worst error measured on float64 inputs) and, when values
disagree, `diagnosis` (what the target computes instead, from `dpo_ref.oracle.diagnosis`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

PASSED, FAILED, SKIPPED, XFAILED, XPASSED, ADVICE = "passed", "failed", "skipped", "xfailed", "xpassed", "advice"
STATUSES = (PASSED, FAILED, ADVICE, SKIPPED, XFAILED, XPASSED)
MARKS = {PASSED: "PASS", FAILED: "FAIL", SKIPPED: "skip", XFAILED: "xfail", XPASSED: "XPASS", ADVICE: "advice"}


@dataclass
class CheckResult:
    """One named check: its status, what went wrong, and the smallest input that shows it."""

    name: str
    status: str  # passed | failed | skipped | xfailed | xpassed
    description: str = ""
    message: str = ""  # what was expected and what came out (failed), or why it was skipped
    reproduction: str | None = None  # a Python snippet reproducing the failure
    examples: int = 0  # inputs tried
    precision: object = None  # dpo_ref.checks.properties.Precision measured on the examples that passed, if any

    def line(self, width: int = 10) -> str:
        """One line: mark, name, description (and why, when skipped or expected to fail)."""
        tail = f"  {self.message}" if self.status in (SKIPPED, XFAILED) and self.message else ""
        return f"  {MARKS[self.status]:6} {self.name:{width}}  {self.description}{tail}"

    @property
    def passed(self) -> bool:
        return self.status != FAILED

    @property
    def failed(self) -> bool:
        return self.status == FAILED


@dataclass
class Report:
    """All checks run on one target, plus what the oracle detected about it (e.g. its reduction)."""

    target: str
    level: str
    variant: str
    settings: dict = field(default_factory=dict)
    detected: dict = field(default_factory=dict)  # e.g. {"reduction": "mean"}
    notes: list[str] = field(default_factory=list)  # findings that are not pass/fail (conventions, differences)
    checks: list[CheckResult] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)  # what the target computes instead, when it disagrees
    advice: list[str] = field(default_factory=list)  # robustness advice (advisory checks that failed)
    seconds: float = 0.0

    @property
    def precision(self) -> dict | None:
        """The precision grade over the value checks on float64 inputs: grade, worst error in units of the
        float64 bound, worst relative error; None when no value check passed."""
        worst = None
        for c in self.checks:
            if c.precision is not None:
                worst = c.precision.worst(worst)
        if worst is None:
            return None
        return {
            "grade": worst.grade,
            "worst_units_of_float64_bound": worst.units,
            "worst_relative_error": worst.relative,
        }

    @property
    def passed(self) -> bool:
        """True when no check failed (skipped and expected failures do not count against it)."""
        return not any(c.failed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.failed]

    def __getitem__(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks: {', '.join(c.name for c in self.checks)}")

    def to_dict(self) -> dict:
        out = asdict(self)
        for c in out["checks"]:
            c.pop("precision", None)
        out["passed"] = self.passed
        out["precision"] = self.precision
        out["counts"] = {s: sum(c.status == s for c in self.checks) for s in STATUSES}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self, reproductions: bool = True, check_lines: bool = True) -> str:
        """A human-readable report: one line per check (unless already streamed: `check_lines=False`), the
        precision grade, diagnosis and advice, then each failure with its reproduction."""
        lines = [f"dpo-ref verify: {self.target}  (level={self.level}, variant={self.variant})"] if check_lines else []
        for key, value in {**self.settings, **self.detected}.items():
            lines.append(f"  {key}: {value}")
        if check_lines:
            lines.append("")
            width = max((len(c.name) for c in self.checks), default=10)
            lines.extend(c.line(width) for c in self.checks)
        if self.precision is not None:
            p = self.precision
            lines.append("")
            lines.append(
                f"Precision: {p['grade']} (worst error {p['worst_units_of_float64_bound']:.3g} x the float64 bound, "
                f"relative {p['worst_relative_error']:.3g}, on float64 inputs)"
            )
        if self.diagnosis:
            lines.append("")
            lines.append("Diagnosis:")
            lines.extend(f"  - {d}" for d in self.diagnosis)
        if self.advice:
            lines.append("")
            lines.append("Advice (not a formula error; fails only with --strict):")
            lines.extend(f"  - {a}" for a in self.advice)
        if self.notes:
            lines.append("")
            lines.append("Notes:")
            lines.extend(f"  - {n}" for n in self.notes)
        for c in self.failures:
            lines.append("")
            lines.append(f"FAIL {c.name}: {c.message}")
            if reproductions and c.reproduction:
                lines.append("  reproduction:")
                lines.extend("    " + line for line in c.reproduction.rstrip().splitlines())
        n_fail = len(self.failures)
        n = len(self.checks)
        verdict = "CONFORMS" if self.passed else f"DOES NOT CONFORM ({n_fail} of {n} checks failed)"
        lines.append("")
        lines.append(f"{verdict}  [{self.seconds:.1f} s]")
        return "\n".join(lines)
