"""The conformance oracle: judge third-party DPO / IPO code against dpo_ref.

dpo_ref.verify(fn, level="loss" | "logps", variant=<any name in dpo_ref.variants>) -> Report
dpo-ref verify TARGET ...                       (the command line, `dpo_ref.oracle.cli`)
@parametrize_with_dpo_checks(fn, variant=...)    (one pytest test per check)

Names load on first use, so the pytest plugin (`dpo_ref.oracle.pytest_plugin`, loaded in every pytest run)
imports this package without importing torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "verify": "dpo_ref.oracle.api",
    "check_names": "dpo_ref.oracle.api",
    "CheckResult": "dpo_ref.oracle.report",
    "Report": "dpo_ref.oracle.report",
    "load_target": "dpo_ref.oracle.targets",
    "parametrize_with_dpo_checks": "dpo_ref.oracle.pytest_support",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dpo_ref.oracle' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
