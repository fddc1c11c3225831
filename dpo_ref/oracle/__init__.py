"""The conformance oracle: judge third-party DPO / IPO code against dpo_ref.

dpo_ref.verify(fn, level="loss" | "logps", variant="dpo" | "cdpo" | "ipo" | "ipo-mean") -> Report
dpo-ref verify TARGET ...                       (the command line, `dpo_ref.oracle.cli`)
@parametrize_with_dpo_checks(fn, variant=...)    (one pytest test per check)
"""

from dpo_ref.oracle.api import check_names, verify
from dpo_ref.oracle.report import CheckResult, Report
from dpo_ref.oracle.targets import load_target


def parametrize_with_dpo_checks(*args, **kwargs):
    """See `dpo_ref.oracle.pytest_support.parametrize_with_dpo_checks`."""
    from dpo_ref.oracle.pytest_support import parametrize_with_dpo_checks as decorator

    return decorator(*args, **kwargs)


__all__ = ["CheckResult", "Report", "check_names", "load_target", "parametrize_with_dpo_checks", "verify"]
