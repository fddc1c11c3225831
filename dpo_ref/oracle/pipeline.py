"""The pipeline level: `fn(model, tokenizer, examples) -> (chosen_logps, rejected_logps)`, rows of text to log-probs.

`examples` is a list of TRL-style rows `{"prompt": str, "chosen": str, "rejected": str}`; the result is two `(B,)`
tensors, each row's completion log-prob summed over its tokens (`average`: the per-token mean). This is where the
bugs users report live: tokenisation at the prompt/completion boundary, padding, position ids, masks, the shift,
truncation, rows mixed up, values that depend on the rest of the batch.

The expected value of a row is the one-row-at-a-time float64 score: the row alone, unpadded, positions 0..L-1,
under the target's *convention* (`Convention`: prompt and completion tokenised separately or together, BOS or
not, EOS appended and scored or not). The convention is detected on a probe batch before the checks run (or
pinned with `convention=`) and named in the report. The models and tokenizers are the oracle's own
(`dpo_ref.oracle.pipeline_worlds`): a Llama (rotary) and a GPT-2 (absolute positions), with and without a pad
token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from dpo_ref.checks.properties import TOLERANCE_K, PropertyViolation, _close, verdict_eps
from dpo_ref.errors import InputError
from dpo_ref.oracle.catalogue import PIPELINE, Check, Config
from dpo_ref.oracle.pipeline_worlds import ALPHABET, WORLDS, World

CALL_ARGS = ("model", "tokenizer", "examples")
PIPELINE_HINT = (
    "a pipeline-level target is called as fn(model, tokenizer, examples) -> (chosen_logps (B,), rejected_logps "
    "(B,)), examples a list of {'prompt': str, 'chosen': str, 'rejected': str}, model a Hugging Face causal LM"
)
MAX_EXAMPLES = 20  # per check by default: each example is a few dozen forward passes of the oracle's models


# ---------------------------------------------------------------------------------------------------
# Conventions and the one-row-at-a-time reference


@dataclass(frozen=True)
class Convention:
    """How a row becomes tokens: `tokenize` is one of TOKENIZATIONS; BOS added (the tokenizer's own, as
    `add_special_tokens=True` adds it); EOS appended and scored; `space_eos`: the EOS is appended to the text after
    a space (OpenRLHF 0.11's `RewardDataset.__getitem__`: `chosen += " " + tokenizer.eos_token`), so the space is
    tokenised with the completion's last characters and scored with it (implies `eos`)."""

    tokenize: str = "separate"
    bos: bool = False
    eos: bool = False
    space_eos: bool = False

    def __post_init__(self):
        if self.space_eos and not self.eos:
            raise InputError("Convention(space_eos=True) appends an EOS: it needs eos=True")

    def __str__(self) -> str:
        eos = ["space-eos"] if self.space_eos else ["eos"] if self.eos else []
        return "+".join([self.tokenize] + (["bos"] if self.bos else []) + eos)

    @classmethod
    def parse(cls, text: str) -> Convention:
        parts = [p.strip() for p in str(text).split("+")]
        extras = parts[1:]
        if (not parts or parts[0] not in TOKENIZATIONS or not set(extras) <= {"bos", "eos", "space-eos"}
                or {"eos", "space-eos"} <= set(extras)):  # fmt: skip
            raise InputError(
                f"convention must be one of {', '.join(TOKENIZATIONS)}, optionally followed by +bos and one of +eos "
                f"or +space-eos (e.g. joint+eos), got {text!r}"
            )
        space = "space-eos" in extras
        return cls(parts[0], "bos" in extras, "eos" in extras or space, space)


TOKENIZATIONS = {
    "separate": "prompt and completion tokenised apart, the ids concatenated",
    "joint": "prompt + completion tokenised together; the completion is what follows len(ids(prompt))",
    "diverge": "tokenised together; the completion starts where ids(prompt) and ids(prompt + completion) diverge",
    "diverge-pair": "tokenised together; the completion starts where ids(prompt) diverges from the ids of prompt + "
    "chosen or of prompt + rejected, whichever is first (TRL 1.16's tokenize_fn)",
}
EOS_WAYS = ((False, False), (True, False), (True, True))  # (eos, space_eos): none, the EOS token, " " + EOS text
CONVENTIONS = tuple(Convention(t, b, e, s) for t in TOKENIZATIONS for b in (False, True) for e, s in EOS_WAYS)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def row_ids(tokenizer, ex: dict, side: str, conv: Convention, *, completion_specials: bool = False):
    """(token ids of the row `ex` with its `side` completion, index of the first completion token) under `conv`."""
    prompt, completion = ex["prompt"], ex[side] + (" " if conv.space_eos else "")
    prompt_ids = tokenizer(prompt, add_special_tokens=conv.bos)["input_ids"]
    start = len(prompt_ids)
    if conv.tokenize == "separate":
        ids = prompt_ids + tokenizer(completion, add_special_tokens=completion_specials)["input_ids"]
    else:
        ids = tokenizer(prompt + completion, add_special_tokens=conv.bos)["input_ids"]
        if conv.tokenize.startswith("diverge"):
            start = _common_prefix(prompt_ids, ids)
        if conv.tokenize == "diverge-pair":
            other = ex["rejected" if side == "chosen" else "chosen"] + (" " if conv.space_eos else "")
            start = min(start, _common_prefix(prompt_ids, tokenizer(prompt + other, add_special_tokens=conv.bos)
                                              ["input_ids"]))  # fmt: skip
    if conv.eos:
        ids = ids + [tokenizer.eos_token_id]
    return ids, start


@dataclass
class Scored:
    """One row scored alone: its completion log-prob, the number of tokens and the largest |logit| seen."""

    value: torch.Tensor  # () float64, with the graph when the model's parameters require grad
    tokens: int
    max_logit: float


def score_row(model, ids: list[int], start: int, stop: int | None = None, average: bool = False) -> Scored:
    """sum_{start <= t < stop} log p(ids[t] | ids[:t]) for the row alone, positions 0..L-1 (float64)."""
    stop = len(ids) if stop is None else stop
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()  # (L, V)
    logp = logits[:-1].log_softmax(-1)  # (L-1, V): position t predicts ids[t+1]
    targets = torch.tensor(ids[1:])
    picked = logp.gather(-1, targets[:, None])[:, 0]  # (L-1,)
    value = picked[max(start - 1, 0) : max(stop - 1, 0)].sum()
    n = max(stop - max(start, 1), 0)
    if average:
        value = value / max(n, 1)
    return Scored(value, n, float(logits.detach().abs().max()))


def reference(world: World, examples: list[dict], conv: Convention, average: bool, model=None):
    """Each row's expected (chosen, rejected) `Scored` values, one row at a time."""
    tok, model = world.tokenizer(), model if model is not None else world.model()
    out = []
    for side in ("chosen", "rejected"):
        rows = []
        for ex in examples:
            ids, start = row_ids(tok, ex, side, conv)
            rows.append(score_row(model, ids, start, average=average))
        out.append(rows)
    return out


def tolerance(rows: list[Scored], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per row: K u (4 n (max|logit| + 1) + 1), as for `sequence_logps` (a target may score in float32, as
    `logits.float()` does on the float64 model: u is float32's unless strict)."""
    return torch.tensor(
        [TOLERANCE_K * verdict_eps(torch.float64) * (4 * r.tokens * (r.max_logit + 1) + 1) for r in rows],
        dtype=torch.float64,
    )


def values(rows: list[Scored]) -> torch.Tensor:
    return torch.stack([r.value.detach() for r in rows])


# ---------------------------------------------------------------------------------------------------
# The target


@dataclass
class PipelineTarget:
    """A pipeline-level callable, the conventions detected for it per world, and how to show a call."""

    fn: Callable
    name: str
    import_src: str
    conventions: dict | None = None  # world name -> Convention (detected or pinned)

    def __call__(self, model, tokenizer, examples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fn(model, tokenizer, [dict(e) for e in examples])
        if isinstance(out, dict):
            out = tuple(out[k] for k in ("chosen_logps", "rejected_logps") if k in out) or tuple(out.values())
        if not isinstance(out, (tuple, list)) or len(out) < 2:
            raise PropertyViolation(
                f"expected (chosen_logps, rejected_logps), got {type(out).__name__}"
                + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
            )
        B = len(examples)
        for what, t in zip(("chosen_logps", "rejected_logps"), out[:2]):
            if type(t) is not torch.Tensor:
                raise PropertyViolation(f"{what}: expected a plain torch.Tensor, got {type(t).__name__}")
            if t.shape != (B,):
                raise PropertyViolation(f"{what}: expected shape ({B},) for {B} examples, got {tuple(t.shape)}")
            if t.is_complex():
                raise PropertyViolation(f"{what}: a complex tensor")
        return out[0], out[1]

    def call_src(self, args: str = "model, tokenizer, examples") -> str:
        return f"fn({args})"


def _world_call(target: PipelineTarget, world: World, examples: list[dict], model=None):
    model = model if model is not None else world.model()
    return target(model, world.tokenizer(), examples)


# ---------------------------------------------------------------------------------------------------
# Convention detection


PROBE = [  # boundaries that merge when tokenised together ("t" + "he", "e" + " s"), rows of unequal length
    {"prompt": "the rat at", "chosen": "he ran", "rejected": "s"},
    {"prompt": "a", "chosen": "n ant sat there", "rejected": " tan"},
    {"prompt": "she sat ne", "chosen": " ", "rejected": "rr"},
]


def _distance(got: tuple, expected: list[list[Scored]]) -> float:
    """The largest miss in units of the tolerance (<= 1: a match)."""
    worst = 0.0
    for g, rows in zip(got, expected):
        diff = (g.detach().double() - values(rows)).abs() / tolerance(rows)
        worst = max(worst, float(diff.max()) if bool(torch.isfinite(diff).all()) else math.inf)
    return worst


def detect(target: PipelineTarget, cfg: Config) -> dict[str, tuple[Convention, float, list[Convention]]]:
    """Per world: (the convention the expected values use, its distance on the probe, the conventions that match).

    A pipeline has one convention: the one used everywhere is the first that matches in every world (a world
    whose tokenizer adds no BOS matches with and without it); failing that, the one that matches in the most
    worlds (ties: the smallest largest miss over the worlds), so that the worlds where the target departs from
    it are the ones that fail: a pipeline right everywhere but without a pad token is judged by the convention
    of the two worlds where it is right, not by whichever misses least there."""
    found = {}
    candidates = [Convention.parse(cfg.convention)] if cfg.convention else list(CONVENTIONS)
    for name, world in WORLDS.items():
        try:
            got = _world_call(target, world, PROBE)
        except Exception:
            found[name] = {c: math.inf for c in candidates}
            continue
        found[name] = {c: _distance(got, reference(world, PROBE, c, cfg.average)) for c in candidates}
    common = [c for c in candidates if all(d[c] <= 1.0 for d in found.values())]

    def rank(c: Convention) -> tuple[int, float]:  # the most worlds matched first, then the smallest largest miss
        return -sum(d[c] <= 1.0 for d in found.values()), max(d[c] for d in found.values())

    chosen = common[0] if common else min(candidates, key=rank)
    return {name: (chosen, d[chosen], [c for c in candidates if d[c] <= 1.0]) for name, d in found.items()}


def describe_detection(detected: dict) -> str:
    conv, dist, _ = detected["llama"]  # the world with a BOS: the only one where bos is observable
    if all(d <= 1.0 for _, d, _ in detected.values()):
        same = [c for c in detected["llama"][2] if all(c in m for _, _, m in detected.values())]
        return f"{conv} (values match: {' = '.join(str(c) for c in same)})" if len(same) > 1 else str(conv)
    apart = {n: "/".join(str(c) for c in m) or "none" for n, (_, _, m) in detected.items()}
    where = ", ".join(f"{n}: {m}" for n, m in apart.items())
    right = [n for n, (_, d, _) in detected.items() if d <= 1.0]
    why = (f"it matches in {len(right)} of {len(detected)} worlds ({', '.join(right)}), the most of any"
           if right else "no convention matches in any world; it misses least")  # fmt: skip
    return f"no one convention matches in every world ({where}); the expected values use {conv}: {why}"


# ---------------------------------------------------------------------------------------------------
# Strategies


def _text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=ALPHABET, min_size=min_size, max_size=max_size)


def _row(max_prompt: int, max_completion: int, min_size: int = 1):
    return st.fixed_dictionaries(
        {
            "prompt": _text(1, max_prompt),
            "chosen": _text(min_size, max_completion),
            "rejected": _text(min_size, max_completion),
        }
    )


def _scorable(world: World, rows: list[dict]) -> bool:
    """Every completion has a token under every convention (a joint tokenisation can swallow a 1-char one)."""
    tok = world.tokenizer()
    for ex in rows:
        for side in ("chosen", "rejected"):
            for conv in (Convention(t) for t in TOKENIZATIONS):
                ids, start = row_ids(tok, ex, side, conv)
                if len(ids) <= start:
                    return False
    return True


def examples_strategy(worlds: tuple[str, ...], max_rows: int = 8, max_prompt: int = 12, max_completion: int = 12,
                      long_row: bool = False) -> Callable[[Config], st.SearchStrategy[dict]]:  # fmt: skip
    """{"world", "examples"}: 1..max_rows rows; `long_row` adds one row of 60-100 characters among short ones."""

    def strategy(cfg: Config) -> st.SearchStrategy[dict]:
        rows = st.lists(_row(max_prompt, max_completion), min_size=1, max_size=max_rows)
        if long_row:
            long = st.fixed_dictionaries({"prompt": _text(30, 50), "chosen": _text(30, 50), "rejected": _text(1, 3)})
            rows = st.tuples(rows, long, st.integers(0, max_rows)).map(lambda a: a[0][: a[2]] + [a[1]] + a[0][a[2] :])
        drawn = st.fixed_dictionaries({"world": st.sampled_from(worlds), "examples": rows})
        return drawn.filter(lambda ex: _scorable(WORLDS[ex["world"]], ex["examples"]))

    return strategy


# ---------------------------------------------------------------------------------------------------
# The properties


def _convention(target: PipelineTarget, world: str) -> Convention:
    return target.conventions[world][0]


def check_values(target: PipelineTarget, cfg: Config, ex: dict) -> None:
    """Each row's chosen and rejected values equal the row scored alone under the detected convention."""
    world = WORLDS[ex["world"]]
    got = _world_call(target, world, ex["examples"])
    expected = reference(world, ex["examples"], _convention(target, world.name), cfg.average)
    for what, g, rows in zip(("chosen", "rejected"), got, expected):
        _close(g, values(rows), tolerance(rows), f"{what} log-prob ({world.describe})")


def check_batch_composition(target: PipelineTarget, cfg: Config, ex: dict) -> None:
    """A row's values do not depend on the other rows: the batch, the batch reversed and each row alone agree."""
    world = WORLDS[ex["world"]]
    rows = ex["examples"]
    scale = reference(world, rows, _convention(target, world.name), cfg.average)
    full = _world_call(target, world, rows)
    reverse = [t.flip(0) for t in _world_call(target, world, rows[::-1])]
    alone = [torch.cat(t) for t in zip(*(_world_call(target, world, [r]) for r in rows))]
    for label, other in (("the batch reversed", reverse), ("each row alone", alone)):
        for what, a, b, s in zip(("chosen", "rejected"), full, other, scale):
            _close(a, b.detach().double(), 2 * tolerance(s), f"{what} log-prob in the batch vs in {label}")


def _param_grads(model) -> dict[str, torch.Tensor]:
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for n, p in
            model.named_parameters()}  # fmt: skip


def check_gradients(target: PipelineTarget, cfg: Config, ex: dict) -> None:
    """d (sum_i a_i chosen_i + b_i rejected_i) / d weights equals the same weighted sum of the rows scored alone."""
    world = WORLDS[ex["world"]]
    rows = ex["examples"]
    B = len(rows)
    a = torch.arange(1, B + 1, dtype=torch.float64)
    b = -0.5 * torch.arange(1, B + 1, dtype=torch.float64)
    model = world.model()
    chosen, rejected = target(model, world.tokenizer(), rows)
    if not (chosen.requires_grad or rejected.requires_grad):
        raise PropertyViolation("the log-probs carry no graph (detached, or computed under torch.no_grad): "
                                "no gradient reaches the model")  # fmt: skip
    model.zero_grad(set_to_none=True)
    ((a * chosen.double()).sum() + (b * rejected.double()).sum()).backward()
    got = _param_grads(model)
    ref_model = world.model()
    expected = reference(world, rows, _convention(target, world.name), cfg.average, model=ref_model)
    ((a * torch.stack([r.value for r in expected[0]])).sum() + (b * torch.stack([r.value for r in expected[1]])).sum()
     ).backward()  # fmt: skip
    want = _param_grads(ref_model)
    # each token's logit gradient rounds at u (max|logit| + 1); the weights' gradients sum n_tokens such terms
    tokens = sum(r.tokens for side in expected for r in side)
    logit = max(r.max_logit for side in expected for r in side)
    for name, g in got.items():
        w = want[name]
        tol = TOLERANCE_K * verdict_eps(torch.float64) * 4 * tokens * (logit + 1) * (float(w.abs().max()) + 1) * B
        diff = float((g - w).abs().max())
        if not diff <= tol:
            raise PropertyViolation(
                f"the gradient of {name} differs from the rows scored alone by {diff:.3g} (tolerance {tol:.3g}; "
                f"largest expected entry {float(w.abs().max()):.3g})",
                tol=tol,
            )


def _state(model) -> tuple:
    return (
        {n: p.detach().clone() for n, p in model.state_dict().items()},
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def check_model_unchanged(target: PipelineTarget, cfg: Config, ex: dict) -> None:
    """The model comes back as it was given: the same weights, train/eval mode, requires_grad flags, no .grad."""
    world = WORLDS[ex["world"]]
    model = world.model()
    model.train(ex.get("train", False))
    weights, modes, flags = _state(model)
    target(model, world.tokenizer(), ex["examples"])
    after_weights, after_modes, after_flags = _state(model)
    changed = [n for n in weights if not torch.equal(weights[n], after_weights[n])]
    if changed:
        raise PropertyViolation(f"the target changed the model's weights: {', '.join(changed[:3])} "
                                "(model-weights-changed)")  # fmt: skip
    if after_modes != modes:
        mode = "train" if modes[""] else "eval"
        raise PropertyViolation(
            f"the model was given in {mode} mode and came back in "
            f"{'train' if after_modes[''] else 'eval'} mode (model-left-in-train-mode)"
            if after_modes[""] != modes[""]
            else "a submodule's train/eval mode was changed"
        )
    if after_flags != flags:
        changed = [n for n in flags if flags[n] != after_flags[n]]
        raise PropertyViolation(f"the target changed requires_grad of {', '.join(changed[:3])} (requires-grad-changed)")
    left = [n for n, p in model.named_parameters() if p.grad is not None]
    if left:
        raise PropertyViolation(f"the target left .grad on {', '.join(left[:3])} (model-grad-left): it ran backward "
                                "or did not clear what it accumulated")  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Reproductions


def _inputs(target, cfg: Config, ex: dict) -> str:
    world = ex["world"]
    rows = ",\n    ".join(repr(e) for e in ex["examples"])
    return "\n".join(
        [
            "from dpo_ref.oracle.pipeline_worlds import WORLDS",
            f"world = WORLDS[{world!r}]  # {WORLDS[world].describe}",
            "model, tokenizer = world.model(), world.tokenizer()",
            f"examples = [\n    {rows},\n]",
        ]
    )


def _values_snippet(target, cfg: Config, ex: dict, err) -> str:
    conv = _convention(target, ex["world"])
    return "\n".join(
        [
            f"got = {target.call_src()}",
            "from dpo_ref.oracle.pipeline import Convention, reference, values",
            f"expected = [values(rows) for rows in reference(world, examples, Convention.parse({str(conv)!r}), "
            f"average={cfg.average!r})]  # each row alone, unpadded, float64",
            "print(got)       # got (chosen, rejected)",
            "print(expected)  # expected",
            f"# dpo-ref check: {str(err).splitlines()[0] if err else ''}",
            "assert all(torch.allclose(g.double(), e, rtol=0, atol=1e-6) for g, e in zip(got, expected))",
        ]
    )


def _call_snippet(what: str):
    def snippet(target, cfg: Config, ex: dict, err) -> str:
        return "\n".join([f"out = {target.call_src()}", f"# {what}: {str(err).splitlines()[0] if err else ''}"])

    return snippet


def _value_check(name: str, description: str, strategy) -> Check:
    """A check of the rows' values against each row scored alone, on the examples `strategy` draws."""
    return Check(name, description, strategy, check_values, _values_snippet, inputs=_inputs, value=True, table=PIPELINE)


PIPELINE_CHECKS: tuple[Check, ...] = (
    _value_check(
        "pipeline_values",
        "each row's chosen and rejected log-probs equal the row scored alone (1 to 8 rows; Llama, GPT-2)",
        examples_strategy(("llama", "gpt2")),
    ),
    _value_check(
        "pipeline_absolute_positions",
        "the same with absolute position embeddings (GPT-2): left padding needs position ids there",
        examples_strategy(("gpt2",), max_rows=4),
    ),
    _value_check(
        "pipeline_long_rows",
        "one long row (60-100 characters) among short ones: no silent truncation, no padding effect",
        examples_strategy(("llama", "gpt2"), max_rows=3, long_row=True),
    ),
    _value_check(
        "pipeline_one_token",
        "one-character prompts and completions",
        examples_strategy(("llama", "gpt2"), max_rows=4, max_prompt=1, max_completion=1),
    ),
    _value_check(
        "pipeline_no_pad_token",
        "a tokenizer without a pad token (as many base models ship): pad with something and mask it",
        examples_strategy(("llama-no-pad",), max_rows=4),
    ),
    Check(
        "pipeline_batch_composition",
        "a row's values do not depend on the other rows, their order or the padding they bring",
        examples_strategy(("llama", "gpt2"), max_rows=4),
        check_batch_composition,
        _call_snippet("compare with examples[::-1] and with each row alone"),
        inputs=_inputs,
        value=True,
        table=PIPELINE,
    ),
    Check(
        "pipeline_gradients",
        "gradients reach the model's weights and equal those of the rows scored alone",
        examples_strategy(("llama", "gpt2"), max_rows=3),
        check_gradients,
        _call_snippet("backward through out and compare each parameter's .grad with the rows scored alone"),
        inputs=_inputs,
        table=PIPELINE,
    ),
    Check(
        "pipeline_model_unchanged",
        "the model is left as given: weights, train/eval mode, requires_grad flags, no leftover .grad",
        lambda cfg: st.tuples(examples_strategy(("llama",), max_rows=2)(cfg), st.booleans()).map(
            lambda a: {**a[0], "train": a[1]}
        ),
        check_model_unchanged,
        _call_snippet("compare the model's state_dict, .training, requires_grad and .grad before and after"),
        inputs=_inputs,
        table=PIPELINE,
    ),
)
