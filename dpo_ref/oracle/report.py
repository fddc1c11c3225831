"""The result of a conformance run: one `CheckResult` per check, gathered in a `Report`.

A check either passed, failed (with the shrunk failing input as a copy-pasteable `reproduction`),
or was skipped (not applicable to this variant or level; `message` says why). `Report.passed` is
True when no check failed; expected failures listed in an xfail file count as `xfailed`, not failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

PASSED, FAILED, SKIPPED, XFAILED, XPASSED = "passed", "failed", "skipped", "xfailed", "xpassed"


@dataclass
class CheckResult:
    """One named check: its status, what went wrong, and the smallest input that shows it."""

    name: str
    status: str  # passed | failed | skipped | xfailed | xpassed
    description: str = ""
    message: str = ""  # what was expected and what came out (failed), or why it was skipped
    reproduction: str | None = None  # a Python snippet reproducing the failure
    examples: int = 0  # inputs tried

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
    seconds: float = 0.0

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
        out["passed"] = self.passed
        out["counts"] = {
            s: sum(c.status == s for c in self.checks) for s in (PASSED, FAILED, SKIPPED, XFAILED, XPASSED)
        }
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self, reproductions: bool = True) -> str:
        """A human-readable report: one line per check, then each failure with its reproduction."""
        lines = [f"dpo-ref verify: {self.target}  (level={self.level}, variant={self.variant})"]
        for key, value in {**self.settings, **self.detected}.items():
            lines.append(f"  {key}: {value}")
        lines.append("")
        width = max((len(c.name) for c in self.checks), default=10)
        for c in self.checks:
            mark = {PASSED: "PASS", FAILED: "FAIL", SKIPPED: "skip", XFAILED: "xfail", XPASSED: "XPASS"}[c.status]
            tail = f"  {c.message}" if c.status in (SKIPPED, XFAILED) and c.message else ""
            lines.append(f"  {mark:5} {c.name:{width}}  {c.description}{tail}")
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
