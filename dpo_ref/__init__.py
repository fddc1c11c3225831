"""dpo-ref: the reference implementation of DPO, cDPO and IPO, and a conformance oracle for others'.

Names are loaded on first use (module `__getattr__`), so `import dpo_ref` does not import torch: the
pytest plugin (`dpo_ref.oracle.pytest_plugin`) loads in every pytest run and must stay cheap.
"""

from __future__ import annotations

import importlib
import importlib.util

from dpo_ref.errors import InputError, InputTypeError

_LAZY = {
    "PreferenceLoss": "dpo_ref.losses",
    "dpo_loss": "dpo_ref.losses",
    "ipo_loss": "dpo_ref.losses",
    "preference_margin": "dpo_ref.losses",
    "sequence_logps": "dpo_ref.logps",
    "packed_sequence_logps": "dpo_ref.logps",
    "verify": "dpo_ref.oracle",
    "parametrize_with_dpo_checks": "dpo_ref.oracle",
}

# Public modules that live in a sub-package (`from dpo_ref import strategies` keeps working).
_MODULES = {
    "strategies": "dpo_ref.checks.strategies",
    "properties": "dpo_ref.checks.properties",
    "family_properties": "dpo_ref.checks.family_properties",
}

__all__ = ["InputError", "InputTypeError", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: dpo_ref.losses, ...
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'dpo_ref' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
