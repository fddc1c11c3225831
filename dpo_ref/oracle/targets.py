"""Finding the code to verify, and calling it the same way whatever its style.

A TARGET is `path/to/file.py:name`, `package.module:name` (the name may be dotted, `Class.method`),
or a built-in adapter name (`trl`, `torchtune`). Loss-level callables are called as

    fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta=...)

(plus `label_smoothing=` for cdpo; a function taking `tau` instead of `beta` gets `tau=` for IPO) and
may return per-example losses `(B,)`, their mean or sum as a scalar, or a tuple / named tuple whose
first item is one of those. `LossTarget.detect_reduction` finds out which on a probe batch.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dpo_ref.errors import InputError
from dpo_ref.properties import LossSpec, preference_margin

ADAPTERS = ("trl", "torchtune")


def load_target(spec: str) -> Callable | str:
    """The callable named by `spec` (`file.py:name` or `pkg.mod:name`), or the adapter name itself.

    Raises `InputError` with one line saying what is wrong: no such file or module, an import error
    inside it, no such attribute, or not callable.
    """
    if spec in ADAPTERS:
        return spec
    if ":" not in spec:
        raise InputError(
            f"target {spec!r} must be path/to/file.py:name, package.module:name, or one of {', '.join(ADAPTERS)}"
        )
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise InputError(f"target {spec!r}: expected path/to/file.py:name or package.module:name")
    if where.endswith(".py") or os.sep in where or "/" in where:
        module = _import_file(where)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as err:
            raise InputError(f"target {spec!r}: cannot import module {where!r} ({err})") from None
        except Exception as err:  # an error raised while importing the user's module
            raise InputError(f"target {spec!r}: importing {where!r} raised {type(err).__name__}: {err}") from None
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            available = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise InputError(
                f"target {spec!r}: {where!r} has no attribute {name!r} (callables there: {', '.join(available)})"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"target {spec!r}: {name!r} is a {type(obj).__name__}, not a callable")
    return obj


def _import_file(path: str):
    if not os.path.isfile(path):
        raise InputError(f"target file {path!r} does not exist")
    mod_name = "_dpo_ref_target_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    if module_spec is None or module_spec.loader is None:
        raise InputError(f"target file {path!r} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[mod_name]
        raise InputError(f"target file {path!r}: importing it raised {type(err).__name__}: {err}") from None
    return module


def import_source(fn: Callable, spec: str | None) -> str:
    """Python lines that bring `fn` into scope as `fn` in a reproduction snippet."""
    if spec is not None and spec not in ADAPTERS:
        return f"from dpo_ref.oracle import load_target\nfn = load_target({spec!r})"
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if module and qualname and "<" not in qualname and module != "__main__" and not module.startswith("_dpo_ref"):
        head, _, rest = qualname.partition(".")
        return f"from {module} import {head} as fn" if not rest else f"from {module} import {head}\nfn = {qualname}"
    return "fn = ...  # the function you passed to dpo_ref.verify"


def first_item(out: object) -> object:
    """The loss part of a return value: a tuple's (or named tuple's) first item, else the value itself."""
    return out[0] if isinstance(out, tuple) and len(out) > 0 else out


@dataclass
class LossTarget:
    """A loss-level callable and how to call it: the coefficient keywords it takes and its reduction."""

    fn: Callable
    name: str
    import_src: str
    beta_name: str = "beta"  # or "tau"
    takes_label_smoothing: bool = False
    reduction: str = "per-example"  # per-example | mean | sum | unknown
    call_src_template: str | None = None  # e.g. "DPOLoss({kwargs})({args})" for adapters

    @classmethod
    def from_callable(cls, fn: Callable, spec: LossSpec, name: str, import_src: str) -> LossTarget:
        params, var_kw = _parameters(fn)
        beta_name = "beta"
        if params is not None and "beta" not in params and not var_kw:
            if spec.variant == "ipo" and "tau" in params:
                beta_name = "tau"
            else:
                raise InputError(
                    f"{name} takes no `beta` keyword argument; a loss-level target is called as "
                    "fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, "
                    "beta=...) (beta stands for tau under IPO)"
                )
        takes_eps = params is None or var_kw or "label_smoothing" in params
        if spec.variant == "cdpo" and not takes_eps:
            raise InputError(f"{name} takes no `label_smoothing` keyword argument, which variant cdpo needs")
        return cls(fn, name, import_src, beta_name, bool(takes_eps and spec.variant == "cdpo"))

    def kwargs(self, spec: LossSpec) -> dict:
        kw = {self.beta_name: spec.coefficient}
        if self.takes_label_smoothing:
            kw["label_smoothing"] = spec.label_smoothing
        return kw

    def raw(self, spec: LossSpec) -> Callable[..., torch.Tensor]:
        """fn(pc, pr, rc, rr) -> what the target returns (its first item if a tuple), coefficients bound."""
        kw = self.kwargs(spec)
        return lambda pc, pr, rc, rr: first_item(self.fn(pc, pr, rc, rr, **kw))

    def per_example(self, spec: LossSpec) -> Callable[..., torch.Tensor]:
        """fn(pc, pr, rc, rr) -> (B,). A reducing target is called on one example at a time."""
        raw = self.raw(spec)
        if self.reduction == "per-example":
            return raw

        def one_at_a_time(pc, pr, rc, rr):
            outs = []
            for i in range(pc.shape[0]):
                out = raw(pc[i : i + 1], pr[i : i + 1], rc[i : i + 1], rr[i : i + 1])
                outs.append(out.reshape(()) if isinstance(out, torch.Tensor) and out.numel() == 1 else out)
            return torch.stack(outs)

        return one_at_a_time

    def call_src(self, spec: LossSpec, args: str = "pc, pr, rc, rr") -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.kwargs(spec).items())
        if self.call_src_template:
            return self.call_src_template.format(args=args, kwargs=kw)
        return f"fn({args}, {kw})"

    def detect_reduction(self, spec: LossSpec) -> str:
        """Call the target on a probe batch of 3 and decide: per-example, mean, sum or unknown.

        Raises `PropertyViolation`-style `AssertionError` if it cannot be called or returns no tensor.
        """
        probe = tuple(
            torch.tensor(v, dtype=torch.float64)
            for v in ([-3.0, -10.0, -1.5], [-5.0, -2.0, -7.0], [-4.0, -6.0, -2.0], [-4.5, -3.0, -6.5])
        )
        out = self.raw(spec)(*probe)
        if not isinstance(out, torch.Tensor):
            raise AssertionError(f"returned {type(out).__name__}; expected a tensor of losses (or a tuple of them)")
        if tuple(out.shape) == (3,):
            self.reduction = "per-example"
        elif out.numel() == 1:
            expected = spec.losses(preference_margin(*probe))
            value = float(out.detach().double().reshape(()))
            for reduction, ref in (("mean", expected.mean()), ("sum", expected.sum())):
                if abs(value - float(ref)) <= 1e-4 * (1.0 + abs(float(ref))):
                    self.reduction = reduction
                    break
            else:
                self.reduction = "unknown"  # a scalar that is neither: the value checks will say how it is off
        else:
            raise AssertionError(
                f"returned shape {tuple(out.shape)} for a batch of 3; expected per-example losses (3,) or a scalar"
            )
        return self.reduction


def _parameters(fn: Callable) -> tuple[set[str] | None, bool]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None, True
    names = {p.name for p in sig.parameters.values()}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


@dataclass
class LogpsTarget:
    """A log-prob-level callable fn(logits (B, T, V), labels (B, T)) -> (B,) and how to show a call."""

    fn: Callable
    name: str
    import_src: str
    call_src_template: str | None = None

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return first_item(self.fn(logits, labels))

    def call_src(self, args: str = "logits, labels") -> str:
        return self.call_src_template.format(args=args) if self.call_src_template else f"fn({args})"
