"""Finding the code to verify, and calling it the same way whatever its style.

A TARGET is `path/to/file.py:name`, `package.module:name` (the name may be dotted, `Class.method`),
or a built-in adapter name (`trl`, `torchtune`). Loss-level callables are called as

    fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta=...)

(plus `label_smoothing=` for cdpo; a function taking `tau` instead of `beta` gets `tau=` for IPO) and
may return per-example losses `(B,)`, their mean or sum as a scalar, or a tuple / named tuple whose
first item is one of those. `LossTarget.detect_reduction` finds out which on a probe batch.

Every other variant of the registry (`dpo_ref.variants`, docs/variants.md) is called the same way with its
own coefficients as keywords, named as in its record's `params` (`beta`, `tau`, `label_smoothing`, `gamma`,
`delta`, ...; each `Param.keywords` lists the names a target may use for it, e.g. `beta` standing for `tau`,
TRL's convention), and, for a record with `needs_lengths`, the scored-token counts as keywords:

    fn(pc, pr, rc, rr, beta=..., chosen_lengths=n_w, rejected_lengths=n_l)

n_w, n_l: int64 tensors (B,), the number of completion tokens that carry a log-prob (>= 1). See
`LossTarget`.
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

from dpo_ref import variants as V
from dpo_ref.checks.properties import LossSpec, PropertyViolation
from dpo_ref.errors import InputError

ADAPTERS = ("trl", "torchtune", "openrlhf", "openrlhf-packed", "llamafactory")
PIPELINE_ONLY = ("openrlhf", "openrlhf-packed", "llamafactory")  # adapters with only a pipeline level


class TargetImportFailed(Exception):
    """Importing the target raised `SystemExit` or another non-`Exception`: a failed verification, not a usage error."""


def _code(err: BaseException) -> str:
    return f"({err.code!r})" if isinstance(err, SystemExit) else ""


def _current_directory_importable() -> None:
    """`pkg.mod:name` resolves from the current directory, as `python -m` and pytest do: the `dpo-ref` console
    script's sys.path starts at its own bin directory, so a package beside the user would not be found."""
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)


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
        _current_directory_importable()
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as err:
            raise InputError(
                f"target {spec!r}: cannot import module {where!r} ({err}; looked in the current directory and sys.path)"
            ) from None
        except Exception as err:  # an error raised while importing the user's module
            raise InputError(f"target {spec!r}: importing {where!r} raised {type(err).__name__}: {err}") from None
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # SystemExit & co: a target must not end the verification
            raise TargetImportFailed(f"importing {where!r} raised {type(err).__name__}{_code(err)}") from None
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
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:  # as `python file.py` has it: the file's folder first, so its siblings import
        sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[mod_name]
        raise InputError(f"target file {path!r}: importing it raised {type(err).__name__}: {err}") from None
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # SystemExit & co: a target must not end the verification
        del sys.modules[mod_name]
        raise TargetImportFailed(f"importing {path!r} raised {type(err).__name__}{_code(err)}") from None
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


LOSS_KEYS = ("loss", "losses")
COEFFICIENT_NAMES = ("beta", "tau", "label_smoothing")


def first_item(out: object) -> object:
    """The loss part of a return value: a tuple's (or named tuple's) first item, a dict's "loss"/"losses", else
    the value itself."""
    if isinstance(out, dict):
        for key in LOSS_KEYS:
            if key in out:
                return out[key]
        return plain_tensor(next(iter(out.values()), out))
    return plain_tensor(out[0] if isinstance(out, tuple) and len(out) > 0 else out)


def plain_tensor(out: object) -> object:
    """`out` unchanged, unless it is a tensor the checks cannot trust: a `torch.Tensor` subclass (it may
    override `==`, `<=` or arithmetic, and so agree with anything) or a complex tensor (the imaginary part
    would be dropped silently). Those are refused: a failed check saying so."""
    if isinstance(out, torch.Tensor):
        if type(out) not in (torch.Tensor, torch.nn.Parameter):
            raise PropertyViolation(
                f"returned a {type(out).__name__}, a torch.Tensor subclass; the checks compare plain tensors "
                "only: return a torch.Tensor (e.g. out.as_subclass(torch.Tensor))"
            )
        if out.is_complex():
            raise PropertyViolation(f"returned a complex tensor ({out.dtype}); losses and log-probs are real")
    return out


def _reward_key(key: str, side: str) -> bool:
    key = key.lower()
    return side in key and "reward" in key


def find_rewards(out: object) -> tuple[str, str] | None:
    """Where a return value keeps chosen and rejected implicit rewards, as two access expressions on `out`.

    Recognised: a dict or named tuple with keys/fields naming "chosen"/"rejected" and "reward", or a plain
    tuple `(losses, chosen_rewards, rejected_rewards, ...)` (the original DPO code's and TRL's order).
    """
    if isinstance(out, dict):
        keys = [k for k in out if isinstance(k, str)]
    elif isinstance(out, tuple) and hasattr(out, "_fields"):
        keys = list(out._fields)
    else:
        keys = []
    chosen = [k for k in keys if _reward_key(k, "chosen")]
    rejected = [k for k in keys if _reward_key(k, "rejected")]
    if len(chosen) == 1 and len(rejected) == 1:
        if isinstance(out, dict):
            return f"[{chosen[0]!r}]", f"[{rejected[0]!r}]"
        return f".{chosen[0]}", f".{rejected[0]}"
    if isinstance(out, tuple) and not hasattr(out, "_fields") and len(out) >= 3:
        if all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in out[1:3]):
            return "[1]", "[2]"
    return None


# Which of the four log-probs a parameter name means: (policy or reference, chosen or rejected).
_ROLE_ORDER = (("policy", "chosen"), ("policy", "rejected"), ("reference", "chosen"), ("reference", "rejected"))


def _role(name: str) -> tuple[str, str] | None:
    n = name.lower()
    side = (
        "chosen"
        if ("chosen" in n or n.endswith("_w"))
        else "rejected"
        if ("rejected" in n or n.endswith("_l"))
        else None
    )
    if side is None:
        return None
    model = "reference" if ("ref" in n) else "policy"
    return model, side


def map_by_name(fn: Callable) -> tuple[list[str] | None, str | None]:
    """The names of fn's first four parameters in the standard order (policy chosen, policy rejected, reference
    chosen, reference rejected) when their names say which is which, and a note when that is not the order
    they are declared in. (None, None) when the names do not say."""
    try:
        params = [
            p
            for p in _signature(fn).parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return None, None
    if len(params) < 4 or any(p.kind is inspect.Parameter.POSITIONAL_ONLY for p in params[:4]):
        return None, None
    names = [p.name for p in params[:4]]
    roles = [_role(n) for n in names]
    if None in roles or len(set(roles)) != 4:
        return None, None
    ordered = [names[roles.index(r)] for r in _ROLE_ORDER]
    if ordered == names:
        return None, None  # already the standard order: call positionally
    return ordered, "arguments passed by name (their order differs from the standard one): " + ", ".join(
        f"{n}={s}"
        for n, s in zip(ordered, ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected"))
    )


def _signature(fn: Callable) -> inspect.Signature:
    """fn's signature; for a `torch.nn.Module` instance, its `forward`'s (the module's own `__call__` takes
    *args, **kwargs, which would hide that, e.g., beta was fixed at construction)."""
    if isinstance(fn, torch.nn.Module):
        return inspect.signature(fn.forward)
    return inspect.signature(fn)


def _slots(fn: Callable, named: tuple[str, ...]) -> tuple[list[str], list[str], list[str]] | None:
    """fn's positional parameters, the required ones among them, and its required keyword-only ones, leaving out
    the names in `named` (passed by keyword); None when fn takes *args or has no readable signature."""
    try:
        params = list(_signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in params if p.kind in kinds and p.name not in named]
    required = [p.name for p in positional if p.default is inspect.Parameter.empty]
    required_kw = [
        p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty and p.name not in named
    ]
    return [p.name for p in positional], required, required_kw


def check_loss_signature(fn: Callable, name: str, extra: tuple[str, ...] = ()) -> None:
    """`InputError` (a usage error) when fn cannot be called as fn(pc, pr, rc, rr, beta=...) (plus the keywords
    `extra`, which a family variant passes)."""
    slots = _slots(fn, COEFFICIENT_NAMES + extra)  # a coefficient may be positional-or-keyword too
    if slots is None:
        return
    positional, required, required_kw = slots
    hint = (
        "a loss-level target is called as fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, "
        "reference_rejected_logps, beta=...); wrap yours in a small function with that signature"
    )
    if len(positional) < 4:
        raise InputError(f"{name} takes {len(positional)} positional argument(s), not the four log-probs: {hint}")
    if required[4:]:
        raise InputError(f"{name} requires more than the four log-probs ({', '.join(required[4:])}): {hint}")
    if required_kw:
        raise InputError(f"{name} requires keyword argument(s) {', '.join(required_kw)}: {hint}")


PROBE_LOGPS = ([-3.0, -10.0, -1.5], [-5.0, -2.0, -7.0], [-4.0, -6.0, -2.0], [-4.5, -3.0, -6.5])  # pc, pr, rc, rr


def _probe() -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(v, dtype=torch.float64) for v in PROBE_LOGPS)


MEAN_EXPANDED = "mean-expanded"  # the batch mean copied to every row: TRL's sft shape


def _is_mean_expanded(out: torch.Tensor, expected: Callable[[], torch.Tensor]) -> bool:
    """Whether (3,) `out` holds one value in every row while the expected per-example losses differ: the shape of
    TRL's `sft` loss (dpo_trainer.py:1495-1502, `batch_loss.expand(batch_size)`), whose rows are no per-example
    losses, only copies of the batch's token-mean NLL (only their mean is used). Recognised by the shape, right or
    wrong: the value checks then compare that one value with the batch mean."""
    values = out.detach().double()
    ref = expected().detach().double()
    same = float(values.max() - values.min()) <= 1e-9 * (1.0 + float(values.abs().max()))
    return same and float(ref.max() - ref.min()) > 1e-3 * (1.0 + float(ref.abs().max()))


def _reduction_of(out: object, expected: Callable[[], torch.Tensor], coupled: bool = False) -> str:
    """per-example, mean, sum, mean-expanded (a batch-coupled loss's batch mean copied to every row, when
    `coupled`) or unknown: what a target's loss item `out` on the probe batch of 3 is, given the expected
    per-example losses; `AssertionError` when it is no tensor or has another shape."""
    if not isinstance(out, torch.Tensor):
        raise AssertionError(
            f"returned {type(out).__name__}; expected a tensor of losses (or a tuple or dict holding them)"
        )
    if tuple(out.shape) == (3,):
        return MEAN_EXPANDED if coupled and _is_mean_expanded(out, expected) else "per-example"
    if out.numel() != 1:
        raise AssertionError(
            f"returned shape {tuple(out.shape)} for a batch of 3; expected per-example losses (3,) or a scalar"
        )
    ref = expected()
    value = float(out.detach().double().reshape(()))
    for reduction, r in (("mean", ref.mean()), ("sum", ref.sum())):
        if abs(value - float(r)) <= 1e-4 * (1.0 + abs(float(r))):
            return reduction
    return "unknown"  # a scalar that is neither: the value checks will say how it is off


def _format_call(arg_names: list[str] | None, template: str | None, args: str, kw: str) -> str:
    """The source of a call to the target, log-probs passed by name when it was mapped by name."""
    if arg_names:
        values = [a.strip() for a in args.split(",")]
        args = ", ".join(f"{n}={v}" for n, v in zip(arg_names, values))
    if template:
        return template.format(args=args, kwargs=kw)
    return f"fn({args}, {kw})"


def _stack(outs: list) -> torch.Tensor:
    """One-example outputs (scalars or (1,) tensors) stacked into (B,)."""
    return torch.stack([o.reshape(()) if isinstance(o, torch.Tensor) and o.numel() == 1 else o for o in outs])


LENGTH_KEYWORDS = ("chosen_lengths", "rejected_lengths")


def _as_coefficients(coefficients: dict | LossSpec) -> dict:
    """The coefficients by name; a closed-form check passes its `LossSpec`, whose coefficients these are."""
    return coefficients.coefficients if isinstance(coefficients, LossSpec) else dict(coefficients)


def _keyword_for(param: V.Param, params: set[str] | None, var_kw: bool) -> str | None:
    """The keyword a target takes for registry coefficient `param`: the first of `param.keywords` it accepts (the
    first one when it takes **kwargs or has no readable signature); None when it takes none of them."""
    if params is None or var_kw:
        return param.keywords[0]
    return next((k for k in param.keywords if k in params), None)


def _missing_keyword(fn: Callable, name: str, param: V.Param, record: V.Variant) -> InputError:
    if param.name == "beta" or param.keywords[0] == "beta":
        module_hint = (
            "; a module whose beta is fixed at construction can be wrapped: "
            f"lambda pc, pr, rc, rr, beta: {type(fn).__name__}(beta=beta)(pc, pr, rc, rr)"
            if isinstance(fn, torch.nn.Module)
            else ""
        )
        return InputError(
            f"{name} takes no `beta` keyword argument; a loss-level target is called as "
            "fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, "
            "beta=...) (beta stands for tau under IPO)" + module_hint
        )
    if record.oracle == V.CLOSED_FORM:
        return InputError(f"{name} takes no `{param.name}` keyword argument, which variant {record.name} needs")
    return InputError(f"{name} takes no `{param.name}` keyword argument, which {record.key} needs: {_hint(record)}")


def _hint(record: V.Variant) -> str:
    return (
        f"the loss-level convention for {record.key} is fn(pc, pr, rc, rr, "
        + ", ".join(f"{c}=..." for c in record.coefficients)
        + (", chosen_lengths=n_w, rejected_lengths=n_l" if record.needs_lengths else "")
        + ")"
    )


@dataclass
class LossTarget:
    """A loss-level callable claiming registry variant `variant`, and how to call it: the keyword it takes for
    each coefficient, whether it gets the scored-token counts, its reduction and where it returns rewards.

    Every method takes the coefficients as a dict (or a closed-form check's `LossSpec`)."""

    fn: Callable
    name: str
    import_src: str
    variant: str = "dpo"
    keywords: dict[str, str] | None = None  # coefficient -> the target's keyword; None: the registry's names
    lengths: bool = False  # chosen_lengths=, rejected_lengths= passed
    reduction: str = "per-example"  # per-example | mean | sum | mean-expanded (batch-coupled only) | unknown
    call_src_template: str | None = None  # e.g. "DPOLoss({kwargs})({args})" for adapters
    arg_names: list[str] | None = None  # keyword names of the four log-probs, when mapped by name
    reward_access: tuple[str, str] | None = None  # where the return value keeps the rewards

    @property
    def record(self) -> V.Variant:
        return V.REGISTRY[self.variant]

    @classmethod
    def from_callable(cls, fn: Callable, variant: str, name: str, import_src: str) -> LossTarget:
        """`InputError` (a usage error, with a hint) when fn cannot be called with the variant's keywords."""
        record = V.REGISTRY[variant]
        extra = () if record.oracle == V.CLOSED_FORM else LENGTH_KEYWORDS + record.coefficients
        check_loss_signature(fn, name, extra=extra)
        params, var_kw = _parameters(fn)
        keywords = {}
        for param in record.params:
            keyword = _keyword_for(param, params, var_kw)
            if keyword is None:
                raise _missing_keyword(fn, name, param, record)
            keywords[param.name] = keyword
        if record.needs_lengths and not (params is None or var_kw or set(LENGTH_KEYWORDS) <= params):
            raise InputError(
                f"{name} takes no chosen_lengths/rejected_lengths keywords, which the length-normalised "
                f"{record.key} needs (the scored-token counts): {_hint(record)}"
            )
        arg_names, _ = map_by_name(fn)
        return cls(fn, name, import_src, variant, keywords, record.needs_lengths, arg_names=arg_names)

    @property
    def mapping_note(self) -> str | None:
        return map_by_name(self.fn)[1] if self.arg_names else None

    def kwargs(self, coefficients: dict | LossSpec, nc=None, nr=None) -> dict:
        c = _as_coefficients(coefficients)
        keywords = self.keywords or {k: k for k in self.record.coefficients}
        kw = {keywords[k]: v for k, v in c.items() if k in keywords}
        if self.lengths:
            kw.update(chosen_lengths=nc, rejected_lengths=nr)
        return kw

    def call(self, coefficients: dict | LossSpec, pc, pr, rc, rr, nc=None, nr=None) -> object:
        """What the target returns for these inputs, the log-probs passed by name if it was mapped by name."""
        kw = self.kwargs(coefficients, nc, nr)
        if self.arg_names:
            return self.fn(**dict(zip(self.arg_names, (pc, pr, rc, rr))), **kw)
        return self.fn(pc, pr, rc, rr, **kw)

    def raw(self, coefficients: dict | LossSpec) -> Callable[..., object]:
        """fn(pc, pr, rc, rr[, nc, nr]) -> the target's loss item (of a tuple or dict), coefficients bound."""
        return lambda pc, pr, rc, rr, nc=None, nr=None: first_item(self.call(coefficients, pc, pr, rc, rr, nc, nr))

    def rewards(self, coefficients: dict | LossSpec) -> Callable[..., tuple]:
        """fn(pc, pr, rc, rr[, nc, nr]) -> (chosen_rewards, rejected_rewards) from the target's return value."""
        chosen, rejected = self.reward_access or ("[1]", "[2]")

        def get(out, access: str):
            return (
                out[access[2:-2]]
                if access.startswith("['")
                else getattr(out, access[1:])
                if access.startswith(".")
                else out[int(access[1:-1])]
            )

        return lambda pc, pr, rc, rr, nc=None, nr=None: (lambda out: (get(out, chosen), get(out, rejected)))(
            self.call(coefficients, pc, pr, rc, rr, nc, nr)
        )

    def rewards_src(self) -> str:
        chosen, rejected = self.reward_access or ("[1]", "[2]")
        return f"(out{chosen}, out{rejected})"

    def per_example(self, coefficients: dict | LossSpec) -> Callable[..., torch.Tensor]:
        """fn(pc, pr, rc, rr[, nc, nr]) -> (B,). A reducing target of a per-example loss is called one example at
        a time; a reducing target of a batch-coupled loss (the record's `batch_coupled`) gives its batch mean repeated
        B times (the gradient of their sum is then the gradient of the summed losses; values are checked on the
        mean)."""
        raw = self.raw(coefficients)
        if self.reduction == "per-example":
            return raw
        if self.record.batch_coupled:
            if self.reduction == MEAN_EXPANDED:
                return raw  # already (B,), every row the batch mean (the value checks compare each row with it)
            return lambda pc, *rest: torch.as_tensor(raw(pc, *rest)).reshape(()).expand(pc.shape[0])

        def one_at_a_time(pc, pr, rc, rr, nc=None, nr=None):
            rows = [[t[i : i + 1] if t is not None else None for t in (pc, pr, rc, rr, nc, nr)] for i in range(len(pc))]
            return _stack([raw(*row) for row in rows])

        return one_at_a_time

    def call_src(self, coefficients: dict | LossSpec, args: str = "pc, pr, rc, rr") -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.kwargs(coefficients).items() if k not in LENGTH_KEYWORDS)
        if self.lengths:
            kw += ", chosen_lengths=nc, rejected_lengths=nr"
        return _format_call(self.arg_names, self.call_src_template, args, kw)

    def detect_reduction(self, coefficients: dict | LossSpec) -> str:
        """Call the target on a probe batch of 3 and decide: per-example, mean, sum or unknown; also find
        where it returns implicit rewards, if it does.

        Raises `PropertyViolation`-style `AssertionError` if it cannot be called or returns no tensor.
        """
        probe, nc, nr = _probe(), PROBE_LENGTHS[0].clone(), PROBE_LENGTHS[1].clone()
        full = self.call(coefficients, *probe, nc, nr)
        self.reward_access = find_rewards(full)
        expected = self.record.bind(**_as_coefficients(coefficients))
        self.reduction = _reduction_of(first_item(full), lambda: expected(*probe, nc, nr), self.record.batch_coupled)
        return self.reduction


PROBE_LENGTHS = (torch.tensor([2, 5, 1]), torch.tensor([3, 1, 4]))  # n_w, n_l of the probe batch


def _parameters(fn: Callable) -> tuple[set[str] | None, bool]:
    try:
        sig = _signature(fn)
    except (TypeError, ValueError):
        return None, True
    names = {p.name for p in sig.parameters.values()}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


LOGPS_HINT = (
    "a log-prob-level target is called as fn(logits (B, T, V), labels (B, T)) with -100 = not scored; "
    "for other shapes wrap it with dpo_ref.oracle.adapters: from_loss_mask(fn) for fn(logits, labels, loss_mask), "
    "from_input_ids_mask(fn) for fn(logits, input_ids, mask), from_concatenated(fn) for chosen and rejected "
    "concatenated, from_hidden_states(fn) for fn(hidden_states, lm_head_weight, labels)"
)


def check_call_signature(fn: Callable, name: str, args: tuple[str, ...], hint: str) -> None:
    """`InputError` (a usage error, with `hint`) when fn cannot be called with the positional `args` alone."""
    slots = _slots(fn, ())
    if slots is None:
        return
    positional, required, required_kw = slots
    shown = ", ".join(args)
    if len(positional) < len(args):
        raise InputError(f"{name} takes {len(positional)} positional argument(s), not ({shown}): {hint}")
    if len(required) > len(args) or required_kw:
        extra = ", ".join(required[len(args) :] + required_kw)
        raise InputError(f"{name} requires more than ({shown}) ({extra}): {hint}")


def check_logps_signature(fn: Callable, name: str) -> None:
    """`InputError` (a usage error, with a hint) when fn cannot be called as fn(logits, labels)."""
    check_call_signature(fn, name, ("logits", "labels"), LOGPS_HINT)


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
