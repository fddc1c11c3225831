"""What a failing pipeline computes instead: each known mistake computed by the oracle itself, in float64, on a
fixed diagnostic batch, and matched against the target's values there.

Mistakes are of three kinds: which tokens are scored (the prompt too, the first completion token dropped, the
row cut to N tokens, a BOS between prompt and completion, a BOS added where the tokenizer adds none or before
every message where it adds one), how the batch is laid out (left padding without
position ids, pads attended or scored, with chosen and rejected padded together as one 2B batch or apart), and
what is done with the values (chosen and rejected swapped, rows reordered or shifted, a mean for a sum, a
normalisation by a batch statistic). The gradient and model-state checks name their own mistakes.
"""

from __future__ import annotations

import torch

from dpo_ref.checks.properties import PropertyViolation
from dpo_ref.oracle.catalogue import Config
from dpo_ref.oracle.pipeline import (
    CONVENTIONS,
    Convention,
    PipelineTarget,
    check_batch_composition,
    check_model_unchanged,
    reference,
    row_ids,
    score_row,
    tolerance,
    values,
)
from dpo_ref.oracle.pipeline_worlds import WORLDS, World

DIAGNOSTIC = [  # unequal lengths (padding shows), a long row (truncation shows), merges at the boundaries
    {"prompt": "the rat sat on", "chosen": " the mat and then the rat ran at the ant there", "rejected": " ants"},
    {"prompt": "a", "chosen": "n ant", "rejected": "t tea"},
    {"prompt": "she sat there as the sun set", "chosen": " seas", "rejected": " the rest of the net as she ate"},
    {"prompt": "rest", "chosen": "s", "rejected": "ers"},
]

EXPLAIN = {
    "prompt-scored": "also scores the prompt's tokens",
    "first-completion-token-dropped": "never scores the first completion token",
    "truncated": "silently truncates each row to {n} tokens",
    "bos-in-the-middle": "tokenises the completion with special tokens: a BOS sits between prompt and completion",
    "bos-added": "puts a BOS before each row although the tokenizer adds none",
    "bos-per-message": "adds a BOS to every message although the tokenizer already adds one: the row starts with two "
    "BOS, and a BOS is scored as the completion's first token",
    "left-padding-without-position-ids": "pads on the left without passing position ids (absolute positions shift)",
    "attention-mask-ignored": "pads on the left and attends to the pads (no attention mask)",
    "pads-scored": "also scores the padding after each completion (as the pad token)",
    "chosen-rejected-swapped": "returns the rejected log-probs as chosen and the chosen as rejected",
    "rows-reordered": "returns the rows in another order (e.g. sorted by length and not restored)",
    "rows-shifted": "pairs each row's values with another row's (the 2B batch split at the wrong place)",
    "mean-not-sum": "returns the mean over each completion's tokens, not the sum",
    "sum-not-mean": "returns the sum over each completion's tokens, not the mean",
    "batch-normalised": "scales every row by one batch-wide factor ({k:.4g}: e.g. divided by a batch token count)",
}


def _token_logps(model, ids: list[int]) -> torch.Tensor:
    """(L-1,): log p(ids[t+1] | ids[:t+1]), the row alone (every scored-token mistake is a slice of it)."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return logits[:-1].log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def _slice(lp: torch.Tensor, start: int, stop: int, average: bool) -> float:
    part = lp[max(start - 1, 0) : max(stop - 1, 0)]
    return float(part.sum() / max(part.numel(), 1)) if average else float(part.sum())


def _token_variants(world: World, conv: Convention, average: bool) -> dict[str, list[torch.Tensor]]:
    """Scored-token mistakes, each as (chosen, rejected) values computed one row at a time."""
    tok, model = world.tokenizer(), world.model()
    rows = {s: [row_ids(tok, e, s, conv) for e in DIAGNOSTIC] for s in ("chosen", "rejected")}
    with torch.no_grad():
        lps = {s: [_token_logps(model, ids) for ids, _ in rows[s]] for s in rows}

        def each(pick) -> list[torch.Tensor]:
            return [
                torch.tensor(
                    [_slice(lp, *pick(ids, start), average) for (ids, start), lp in zip(rows[s], lps[s])],
                    dtype=torch.float64,
                )  # fmt: skip
                for s in rows
            ]

        out = {
            "prompt-scored": each(lambda ids, start: (1, len(ids))),
            "first-completion-token-dropped": each(lambda ids, start: (start + 1, len(ids))),
        }
        longest = max(len(ids) for s in rows for ids, _ in rows[s])
        for n in range(2, longest):
            out[f"truncated:{n}"] = each(lambda ids, start, n=n: (min(start, n), min(n, len(ids))))
        if world.bos and conv.tokenize == "separate":
            out["bos-in-the-middle"] = [
                torch.stack([
                    score_row(model, *row_ids(tok, e, s, conv, completion_specials=True),
                              average=average).value
                    for e in DIAGNOSTIC
                ])
                for s in rows
            ]  # fmt: skip
        bos = tok.bos_token_id
        if bos is not None and not world.bos:  # a BOS of its own, where the tokenizer adds none
            out["bos-added"] = [
                torch.stack([score_row(model, [bos] + ids, start + 1, average=average).value for ids, start in rows[s]])
                for s in rows
            ]
        if world.bos and conv.bos and conv.tokenize == "separate":  # one more BOS before the prompt's own
            out["bos-per-message"] = [
                torch.stack([
                    score_row(model, [bos] + ids, start + 1, average=average).value
                    for ids, start in (row_ids(tok, e, s, conv, completion_specials=True) for e in DIAGNOSTIC)
                ])
                for s in rows
            ]  # fmt: skip
    return out


def _padded(world: World, conv: Convention, average: bool, side: str, together: bool, mask: bool, positions: bool,
            score_pads: bool) -> list[torch.Tensor]:  # fmt: skip
    """(chosen, rejected) values of a padded batch as a pipeline would build it (float64)."""
    tok, model = world.tokenizer(), world.model()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = {s: [row_ids(tok, e, s, conv) for e in DIAGNOSTIC] for s in ("chosen", "rejected")}
    groups = [rows["chosen"] + rows["rejected"]] if together else [rows["chosen"], rows["rejected"]]
    results = []
    for group in groups:
        T = max(len(ids) for ids, _ in group)
        ids_t = torch.full((len(group), T), pad)
        attn = torch.zeros(len(group), T, dtype=torch.long)
        scored = torch.zeros(len(group), T, dtype=torch.bool)
        for i, (ids, start) in enumerate(group):
            off = T - len(ids) if side == "left" else 0
            ids_t[i, off : off + len(ids)] = torch.tensor(ids)
            attn[i, off : off + len(ids)] = 1
            scored[i, off + start : off + len(ids)] = True
            if score_pads and side == "right":
                scored[i, off + len(ids) :] = True
        kwargs = {"attention_mask": attn} if mask else {}
        if positions:
            kwargs["position_ids"] = (attn.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids_t, **kwargs).logits.double()  # (R, T, V)
        logp = logits[:, :-1].log_softmax(-1).gather(-1, ids_t[:, 1:, None])[..., 0]  # (R, T-1)
        keep = scored[:, 1:]
        total = (logp * keep).sum(-1)
        results.append(total / keep.sum(-1).clamp(min=1) if average else total)
    flat = torch.cat(results)
    B = len(DIAGNOSTIC)
    return [flat[:B], flat[B:]]


def _layout_variants(world: World, conv: Convention, average: bool) -> dict[str, list[torch.Tensor]]:
    out = {}
    for together in (True, False):
        if world.positions == "absolute":
            out[f"left-padding-without-position-ids:{together}"] = _padded(
                world, conv, average, "left", together, mask=True, positions=False, score_pads=False
            )
        out[f"attention-mask-ignored:{together}"] = _padded(
            world, conv, average, "left", together, mask=False, positions=False, score_pads=False
        )
        for mask in (True, False):  # the scored pads' own logits depend on whether they attend
            key = f"pads-scored:{together}"
            alt = _padded(world, conv, average, "right", together, mask=mask, positions=False, score_pads=True)
            out[key if mask else key + ":unmasked"] = alt
    return out


def _matches(got: list[torch.Tensor], alt: list[torch.Tensor], tol: list[torch.Tensor]) -> bool:
    return all(bool(((g - a).abs() <= t).all()) for g, a, t in zip(got, alt, tol))


def _window(got: torch.Tensor, both: torch.Tensor, tol_both: torch.Tensor) -> int | None:
    """The offset o with got = both[o : o + B] (both = the 2B concatenation chosen + rejected), if any."""
    B = got.shape[0]
    for o in range(both.shape[0] - B + 1):
        if bool(((got - both[o : o + B]).abs() <= tol_both[o : o + B]).all()):
            return o
    return None


def _permuted(got: torch.Tensor, exp: torch.Tensor, tol: torch.Tensor) -> bool:
    """got holds exp's values in another order."""
    order = exp.argsort()
    return bool(((got.sort().values - exp[order]).abs() <= tol[order]).all())


def _value_variants(got, expected, tol, average: bool) -> list[str]:
    """Mistakes made with the right values: exchanged, shifted between rows, reordered, rescaled."""
    exp = [values(rows) for rows in expected]
    B = len(exp[0])
    both, tol_both = torch.cat(exp), torch.cat(tol)
    found = []
    offsets = [_window(g, both, tol_both) for g in got]
    if offsets == [B, 0]:
        found.append("chosen-rejected-swapped")
    elif None not in offsets and offsets != [0, B]:
        found.append("rows-shifted")
    elif all(_permuted(g, e, t) for g, e, t in zip(got, exp, tol)):
        found.append("rows-reordered")
    counts = [torch.tensor([float(max(r.tokens, 1)) for r in rows], dtype=torch.float64) for rows in expected]
    other = [e / c for e, c in zip(exp, counts)] if not average else [e * c for e, c in zip(exp, counts)]
    if _matches(got, other, tol):
        found.append("sum-not-mean" if average else "mean-not-sum")
    ratio = torch.cat(got) / torch.cat(exp)
    if (
        not found
        and bool(torch.isfinite(ratio).all())
        and float(ratio.std()) < 1e-6
        and abs(float(ratio[0]) - 1) > 1e-3
    ):
        found.append(f"batch-normalised:{float(ratio[0])}")
    return found


def _say(key: str, world: World) -> str:
    name, _, arg = key.partition(":")
    text = EXPLAIN[name]
    if name == "truncated":
        text = text.format(n=arg)
    elif name == "batch-normalised":
        text = text.format(k=float(arg))
    elif arg:
        together, _, unmasked = arg.partition(":")
        text += (
            " (chosen and rejected padded as one batch" if together == "True" else " (chosen and rejected padded apart"
        )
        text += ", no attention mask)" if unmasked else ")"
    return f"{name}: {text} [{world.name}: {world.describe}]"


def diagnose_world(target: PipelineTarget, cfg: Config, world: World) -> list[str] | None:
    """The mistakes the target's values on the diagnostic batch match in `world` (None: its values are right),
    under the convention detected for it or, failing a match there, under another one."""
    detected = target.conventions[world.name][0]
    try:
        with torch.no_grad():
            got = [t.detach().double() for t in target(world.model(), world.tokenizer(), DIAGNOSTIC)]
    except KeyboardInterrupt:
        raise
    except BaseException:  # whatever the target raises, nothing can be diagnosed here
        return []
    conventions = [detected] + [c for c in CONVENTIONS if c != detected and not cfg.convention]
    for conv in conventions:
        with torch.no_grad():
            expected = reference(world, DIAGNOSTIC, conv, cfg.average)
        tol = [tolerance(rows) for rows in expected]
        if _matches(got, [values(r) for r in expected], tol):
            return None if conv == detected else []
        found = _value_variants(got, expected, tol, cfg.average)
        for key, alt in _token_variants(world, conv, cfg.average).items():
            if _matches(got, alt, tol):
                found.append(key)
        for key, alt in _layout_variants(world, conv, cfg.average).items():
            if _matches(got, alt, tol) and key.partition(":")[0] not in {k.partition(":")[0] for k in found}:
                found.append(key)
        if found:
            suffix = "" if conv == target.conventions["llama"][0] else f" (convention {conv})"
            return [_say(k, world) + suffix for k in found]
    return []


STATE_MISTAKES = ("model-left-in-train-mode", "model-grad-left", "requires-grad-changed", "model-weights-changed")


def diagnose(target: PipelineTarget, cfg: Config, failures: dict[str, str], passed: set[str]) -> list[str]:
    """Name the mistakes behind the failed checks (`failures`: check name -> its message; `passed`: the checks
    that passed). What fail-fast left unrun and the diagnosis needs (model state, batch dependence) is run here."""
    out: list[str] = []
    state = failures.get("pipeline_model_unchanged", "")
    if not state and "pipeline_model_unchanged" not in passed:
        state = _failure(lambda: check_model_unchanged(target, cfg, {"world": "llama", "examples": DIAGNOSTIC[:2]}))
    out += [f"{name}: {state}" for name in STATE_MISTAKES if f"({name})" in state]
    if "pipeline_gradients" in failures and _detached(target):
        out.append("detached: the log-probs carry no autograd graph (.detach(), torch.no_grad or .item()): "
                   "training on them would not update the model")  # fmt: skip
    value_checks = set(failures) - {"pipeline_gradients", "pipeline_model_unchanged"}
    if value_checks:
        seen_right = False
        for world in (WORLDS["gpt2"], WORLDS["llama"], WORLDS["llama-no-pad"]):
            found = diagnose_world(target, cfg, world)
            if found is None:
                seen_right = True
                continue
            out += [f for f in found if f.split(":")[0] not in {o.split(":")[0] for o in out}]
        if not out and ("pipeline_batch_composition" in failures or _depends_on_batch(target, cfg)):
            out.append("depends-on-batch: a row's values change with the other rows of the batch")
        if not out and seen_right and value_checks == {"pipeline_no_pad_token"} and _eos_lost(target):
            out.append("eos-scored-as-pad: with no pad token it pads with EOS and masks every EOS, so the EOS it "
                       "appends is not scored (it is elsewhere)")  # fmt: skip
        if not out and seen_right and value_checks == {"pipeline_no_pad_token"}:
            out.append("no-pad-token: wrong only with a tokenizer that has no pad token")
    return out


def _failure(check) -> str:
    """The message of a check run here ("" if it passes or cannot run)."""
    try:
        check()
    except PropertyViolation as err:
        return str(err)
    except Exception:
        return ""
    return ""


def _depends_on_batch(target: PipelineTarget, cfg: Config) -> bool:
    return bool(_failure(lambda: check_batch_composition(target, cfg, {"world": "llama", "examples": DIAGNOSTIC})))


def _eos_lost(target: PipelineTarget) -> bool:
    """The convention detected elsewhere appends EOS, and without a pad token the values are those without it."""
    conv, _, no_pad = target.conventions["llama-no-pad"]
    return conv.eos and any(c == Convention(conv.tokenize, c.bos, False) for c in no_pad)


def _detached(target: PipelineTarget) -> bool:
    world = WORLDS["llama"]
    try:
        chosen, rejected = target(world.model(), world.tokenizer(), DIAGNOSTIC[:2])
    except Exception:
        return False
    return not (chosen.requires_grad or rejected.requires_grad)
