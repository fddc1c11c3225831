"""OpenRLHF's and LLaMA-Factory's DPO batch log-prob paths through the pipeline level, and the `+space-eos`
convention OpenRLHF needs.

The convention tests: an EOS appended to the text after a space is detected (on a pipeline written here, which
spells the EOS as text and lets the tokenizer split it off), told apart from `+eos`, and a pipeline with that
convention and a bug is still rejected with the bug named; when no convention matches in every world the one of
the most worlds is taken; a BOS added where the tokenizer adds none, or before every message, is named.

The library tests execute OpenRLHF 0.11.2's and LLaMA-Factory 0.9.5's modules from their wheels (downloaded once;
skipped when the registry cannot be reached) and are slow: the minimal reproductions behind docs/pipelines.md, and
each verdict.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import dpo_ref
from dpo_ref.errors import InputError
from dpo_ref.oracle.pipeline import CONVENTIONS, PIPELINE_CHECKS, Convention, reference, row_ids, score_row, values
from dpo_ref.oracle.pipeline_worlds import WORLDS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROWS = [
    {"prompt": "a", "chosen": "r", "rejected": "h"},  # "r" + " " stay apart
    {"prompt": "sat a", "chosen": "r the", "rejected": "hes"},  # "the" + " " merge into "the ", "s" + " " into "s "
]
# float32 log-softmax over a few dozen tokens of |logit| < 50: the adapters' values (float32 upcasts) are within
# n u32 (max|logit| + 1) of the float64 reference, about 1e-4 here; 1e-3 leaves room and is far below a token's
# log-prob (the smallest differences the tests below look for are a whole token, > 0.1)
F32 = 1e-3


# ---- the +space-eos convention ------------------------------------------------------------------


def space_eos_rows(model, tokenizer, examples):
    """A pipeline with OpenRLHF's convention, written without it: each row alone, prompt + completion + " " + the EOS
    as *text*, tokenised together without special tokens; the prompt's own token count marks the completion."""
    out = []
    for side in ("chosen", "rejected"):
        vals = []
        for ex in examples:
            n = len(tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"])
            ids = tokenizer(ex["prompt"] + ex[side] + " " + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            logp = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            vals.append(logp.gather(-1, torch.tensor(ids[1:])[:, None])[n - 1 :].sum())
        out.append(torch.stack(vals))
    return tuple(out)


def space_eos_first_token_dropped(model, tokenizer, examples):
    """The same, with the first completion token never scored (the mask starts one token late)."""
    out = []
    for side in ("chosen", "rejected"):
        vals = []
        for ex in examples:
            n = len(tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"])
            ids = tokenizer(ex["prompt"] + ex[side] + " " + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            logp = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            vals.append(logp.gather(-1, torch.tensor(ids[1:])[:, None])[n:].sum())
        out.append(torch.stack(vals))
    return tuple(out)


def test_space_eos_parses_prints_and_is_a_candidate():
    conv = Convention.parse("joint+space-eos")
    assert conv == Convention("joint", False, True, True) and str(conv) == "joint+space-eos"
    assert str(Convention.parse("separate+bos+space-eos")) == "separate+bos+space-eos"
    assert conv in CONVENTIONS and Convention("joint", True, True, True) in CONVENTIONS
    with pytest.raises(InputError, match="one of \\+eos or \\+space-eos"):
        Convention.parse("joint+eos+space-eos")
    with pytest.raises(InputError, match="needs eos=True"):
        Convention("joint", space_eos=True)


def test_space_eos_tokenises_the_space_with_the_completion():
    """The row is what the tokenizer makes of the text with " </s>" at the end: the space is a token of its own,
    or merged with the completion's last characters ("the " and "s " are tokens), and scored."""
    tok = WORLDS["gpt2"].tokenizer()
    conv = Convention.parse("joint+space-eos")
    for ex in ROWS:
        for side in ("chosen", "rejected"):
            ids, start = row_ids(tok, ex, side, conv)
            assert ids == tok(ex["prompt"] + ex[side] + " </s>", add_special_tokens=False)["input_ids"]
            assert start == len(tok(ex["prompt"], add_special_tokens=False)["input_ids"])
    ids, _ = row_ids(tok, ROWS[1], "chosen", conv)
    assert tok.convert_ids_to_tokens(ids[-2:]) == ["the ", "</s>"]
    plain, _ = row_ids(tok, ROWS[1], "chosen", Convention("joint", eos=True))
    assert tok.convert_ids_to_tokens(plain[-2:]) == ["the", "</s>"]


@pytest.mark.slow  # about 8 s here: detection runs every convention in three worlds
def test_space_eos_is_detected_and_conforms():
    report = dpo_ref.verify(space_eos_rows, level="pipeline", max_examples=3, checks=["pipeline_values"])
    assert report.passed, report.to_text()
    assert report.detected["convention"].startswith("joint+space-eos"), report.detected


def test_space_eos_is_not_taken_for_eos():
    """Pinned to joint+eos, the same pipeline fails: the two conventions differ by the scored space."""
    report = dpo_ref.verify(space_eos_rows, level="pipeline", max_examples=3, convention="joint+eos",
                            checks=["pipeline_values"])  # fmt: skip
    assert not report.passed


@pytest.mark.slow  # about 8 s: detection, the failing check's shrinking, the diagnosis
def test_a_broken_space_eos_pipeline_is_killed_with_its_diagnosis():
    report = dpo_ref.verify(space_eos_first_token_dropped, level="pipeline", max_examples=3,
                            checks=["pipeline_values"])  # fmt: skip
    assert not report.passed
    assert "first-completion-token-dropped" in [d.split(":")[0] for d in report.diagnosis], report.diagnosis


# ---- detection when no convention matches everywhere; BOS mistakes ---------------------------------


def _rows_scored(model, tokenizer, examples, encode):
    """Each row alone: `encode(prompt, completion)` -> (ids, index of the first completion token), summed."""
    out = []
    for side in ("chosen", "rejected"):
        vals = []
        for ex in examples:
            ids, start = encode(ex["prompt"], ex[side])
            logp = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            vals.append(logp.gather(-1, torch.tensor(ids[1:])[:, None])[start - 1 :].sum())
        out.append(torch.stack(vals))
    return tuple(out)


def eos_lost_without_pad(model, tokenizer, examples):
    """separate+bos+eos, except that with no pad token the EOS is not scored (padded with EOS, every EOS masked)."""

    def encode(prompt, completion):
        p = tokenizer(prompt)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.pad_token_id is not None else []
        return p + tokenizer(completion, add_special_tokens=False)["input_ids"] + eos, len(p)

    return _rows_scored(model, tokenizer, examples, encode)


def bos_always(model, tokenizer, examples):
    """A BOS id of its own before the prompt, the texts encoded without special tokens (right where the tokenizer
    adds a BOS itself, one BOS too many where it adds none)."""

    def encode(prompt, completion):
        p = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return p + tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id], len(p)

    return _rows_scored(model, tokenizer, examples, encode)


def bos_per_message(model, tokenizer, examples):
    """A BOS of its own at the start, each message encoded with the tokenizer's special tokens: where the
    tokenizer adds a BOS, `<s> <s> prompt <s> completion </s>` with the middle `<s>` scored (torchtune 0.6.1's rows
    with a Hugging Face tokenizer that adds BOS, docs/pipelines.md)."""

    def encode(prompt, completion):
        p = [tokenizer.bos_token_id] + tokenizer(prompt)["input_ids"]
        return p + tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id], len(p)

    return _rows_scored(model, tokenizer, examples, encode)


@pytest.mark.slow  # about 8 s: every check
def test_fallback_takes_the_convention_of_the_most_worlds():
    """Right in two worlds, wrong only without a pad token: the expected values use the two worlds' convention, so
    only the no-pad check fails (judged by the convention that misses least overall, separate+space-eos here,
    every value check would fail), and the report says why it was taken."""
    report = dpo_ref.verify(eos_lost_without_pad, level="pipeline", max_examples=2)
    failed = {c.name for c in report.checks if c.status == "failed"}
    assert failed == {"pipeline_no_pad_token"}, report.to_text()
    text = report.detected["convention"]
    assert "use separate+bos+eos: it matches in 2 of 3 worlds (llama, gpt2)" in text, text
    assert [d.split(":")[0] for d in report.diagnosis] == ["eos-scored-as-pad"], report.diagnosis


def test_bos_added_where_the_tokenizer_adds_none_is_named():
    report = dpo_ref.verify(bos_always, level="pipeline", max_examples=2, checks=["pipeline_values"])
    assert not report.passed
    assert "bos-added" in [d.split(":")[0] for d in report.diagnosis], report.diagnosis
    assert "bos-per-message" not in [d.split(":")[0] for d in report.diagnosis], report.diagnosis


@pytest.mark.slow  # about 5 s
def test_bos_before_every_message_is_named():
    report = dpo_ref.verify(bos_per_message, level="pipeline", max_examples=2, checks=["pipeline_values"])
    named = [d.split(":")[0] for d in report.diagnosis]
    assert not report.passed and {"bos-per-message", "bos-added"} <= set(named), report.diagnosis


def _loaded(name: str):
    """The adapter module `name` of dpo_ref.oracle.adapters, its library loaded (from its wheel), or a skip."""
    import importlib

    from dpo_ref.oracle.adapters.wheel import Unavailable

    module = importlib.import_module(f"dpo_ref.oracle.adapters.{name}")
    try:
        module.load()
    except Unavailable as err:
        pytest.skip(str(err))
    return module


# ---- OpenRLHF 0.11.2 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openrlhf():
    return _loaded("openrlhf_pipeline")


def _all_passed(report) -> bool:
    names = {c.name: c.status for c in report.checks}
    return report.passed and all(names.get(c.name) == "passed" for c in PIPELINE_CHECKS)


def _openrlhf_rows(openrlhf, world: str, examples):
    """OpenRLHF's own tokenised rows: (ids, prompt token count) per side, from RewardDataset.__getitem__."""
    lib = openrlhf.load()
    tok = openrlhf._tokenizer(WORLDS[world].tokenizer())
    ds = openrlhf._dataset(lib, tok, examples)
    items = [ds[i] for i in range(len(ds))]
    return {side: [(item[k][0].tolist(), item[4]) for item in items] for side, k in (("chosen", 0), ("rejected", 2))}


@pytest.mark.slow
def test_openrlhf_appends_space_and_eos_text(openrlhf):
    """RewardDataset.__getitem__ (reward_dataset.py:141-143): prompt + completion + " " + EOS text, no specials
    (no BOS even where the tokenizer adds one); the prompt's count from the prompt tokenised alone (:113-121)."""
    for world in ("llama", "gpt2"):
        tok = WORLDS[world].tokenizer()
        rows = _openrlhf_rows(openrlhf, world, ROWS)
        for side in ("chosen", "rejected"):
            for ex, (ids, n) in zip(ROWS, rows[side]):
                assert ids == tok(ex["prompt"] + ex[side] + " </s>", add_special_tokens=False)["input_ids"]
                assert n == len(tok(ex["prompt"], add_special_tokens=False)["input_ids"])
                assert (ids, n) == row_ids(tok, ex, side, Convention.parse("joint+space-eos"))


@pytest.mark.slow
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_openrlhf_batch_values_are_its_rows_scored_alone(openrlhf, packed):
    """The collation, Actor.forward (padded: position ids from the mask; packed: one row, flash-attn's padding
    helpers' stand-ins) and _get_batch_logps give each row's own score: rows of unequal length in one batch."""
    fn = openrlhf.openrlhf_packed_pipeline if packed else openrlhf.openrlhf_pipeline
    examples = ROWS + [{"prompt": "the rat sat", "chosen": " there", "rejected": "n ants ate the tea"}]
    for world in ("llama", "gpt2"):
        model = WORLDS[world].model()
        got = fn(model, WORLDS[world].tokenizer(), examples)
        rows = _openrlhf_rows(openrlhf, world, examples)
        for g, side in zip(got, ("chosen", "rejected")):
            want = torch.stack([score_row(model, ids, n).value.detach() for ids, n in rows[side]])
            torch.testing.assert_close(g.detach().double(), want, rtol=0, atol=F32)


@pytest.mark.slow
def test_openrlhf_packed_row_would_attend_across_sequences_with_a_cache(openrlhf):
    """Why the adapter sets use_cache = False as Actor.__init__ does (actor.py:210): with the model's default cache
    transformers does not look for packed sequences in the position ids, and every sequence after the first attends
    to the ones before it. The packed path then differs from the padded one."""
    world = WORLDS["llama"]
    examples = ROWS
    model = world.model()
    lib = openrlhf.load()
    tok = openrlhf._tokenizer(world.tokenizer())
    ds = openrlhf._dataset(lib, tok, examples)
    batch = ds.collate_fn([ds[i] for i in range(len(ds))])
    actor = lib.Actor.__new__(lib.Actor)
    torch.nn.Module.__init__(actor)
    actor.model, actor.packing_samples, actor.temperature = model, True, 1.0
    trainer = lib.DPOTrainer.__new__(lib.DPOTrainer)
    trainer.tokenizer, trainer.strategy = tok, type("S", (), {"ring_attn_group": None})()
    assert model.config.use_cache
    leaky = trainer.concatenated_forward(actor, *batch)[:2]
    right = openrlhf.openrlhf_packed_pipeline(model, world.tokenizer(), examples)
    assert model.config.use_cache  # restored
    assert float((leaky[0][1:] - right[0][1:]).detach().abs().min()) > 0.1
    torch.testing.assert_close(leaky[0][0], right[0][0], rtol=0, atol=F32)  # the first sequence sees nothing before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["openrlhf", "openrlhf-packed"])
def test_openrlhf_pipeline_verdict(openrlhf, name):
    report = dpo_ref.verify(name, level="pipeline", max_examples=5)
    assert _all_passed(report), report.to_text()
    assert report.detected["convention"].startswith("joint+space-eos"), report.detected


# ---- LLaMA-Factory 0.9.5 ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llamafactory():
    return _loaded("llamafactory_pipeline")


@pytest.mark.slow
def test_llamafactory_empty_template_scores_the_completion_alone(llamafactory):
    """With no --template and no chat template in the tokenizer, get_template_and_fix_tokenizer picks `empty`
    (template.py:635-636), whose assistant slot is the content only (:890-891): prompt and completion encoded apart
    without special tokens, no BOS, no EOS. The values are the oracle's `separate` convention."""
    for world in ("llama", "gpt2", "llama-no-pad"):
        w = WORLDS[world]
        got = llamafactory.llamafactory_pipeline(w.model(), w.tokenizer(), ROWS)
        for conv in ("separate", "separate+eos"):
            want = reference(w, ROWS, Convention.parse(conv), average=False)
            close = all(bool(((g.detach().double() - values(r)).abs() <= F32).all()) for g, r in zip(got, want))
            assert close == (conv == "separate"), (world, conv)


@pytest.mark.slow
def test_llamafactory_pipeline_verdict(llamafactory):
    report = dpo_ref.verify("llamafactory", level="pipeline", max_examples=5)
    assert _all_passed(report), report.to_text()
    assert report.detected["convention"].startswith("separate"), report.detected


# ---- names --------------------------------------------------------------------------------------


def test_cli_pipeline_only_adapters_refuse_other_levels():
    run = subprocess.run([sys.executable, "-m", "dpo_ref", "verify", "openrlhf", "--level", "loss"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                         timeout=120)  # fmt: skip
    assert run.returncode == 2 and "--level pipeline only" in run.stderr, run.stdout + run.stderr
    assert "Traceback" not in run.stderr


# ---- ms-swift 4.6.0, padding-free (--level packed) ----------------------------------------------


@pytest.fixture(scope="module")
def swift_packed():
    return _loaded("swift_packed")


def _segment_logp(logits, labels, start, stop, extra=None):
    """sum over t in [start+1, stop) of log p(labels[t] | position t-1), float64 (and, with `extra` = (t, label),
    log p(label | position t) added: a prediction from position t of a label that is not its segment's)."""
    lp = logits[0].double().log_softmax(-1)
    total = sum(float(lp[t - 1, labels[0, t]]) for t in range(start + 1, stop) if labels[0, t] != -100)
    if extra is not None:
        total += float(lp[extra[0], extra[1]])
    return total


@pytest.mark.slow
def test_swift_scores_the_next_segments_first_label(swift_packed):
    """concatenated_forward rolls the labels by one over the whole packed row (dpo_trainer.py:143-145) and sums
    over the unshifted cu_seqlens (:152-167): the last position of segment 0 scores segment 1's first label, and
    the last segment scores segment 0's first label (the roll wraps). Harmless only where every segment's first
    label is -100."""
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7, dtype=torch.float64)
    labels = torch.tensor([[3, 1, 4, 1, 5]])  # every label set, segment 1's first (position 2) included
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    got = swift_packed.swift_packed_logps(logits, labels, cu)
    right = [_segment_logp(logits, labels, 0, 2), _segment_logp(logits, labels, 2, 5)]
    swift = [_segment_logp(logits, labels, 0, 2, extra=(1, 4)), _segment_logp(logits, labels, 2, 5, extra=(4, 3))]
    torch.testing.assert_close(got, torch.tensor(swift, dtype=torch.float64), rtol=0, atol=1e-12)
    assert min(abs(g - r) for g, r in zip(got.tolist(), right)) > 0.1
    labels[0, 0] = labels[0, 2] = -100  # every first label unscored: then it is right
    got = swift_packed.swift_packed_logps(logits, labels, cu)
    right = [_segment_logp(logits, labels, 0, 2), _segment_logp(logits, labels, 2, 5)]
    torch.testing.assert_close(got, torch.tensor(right, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.slow
def test_swift_packed_verdict(swift_packed):
    report = dpo_ref.verify(swift_packed.swift_packed_logps, level="packed", max_examples=20)
    failed = {c.name for c in report.checks if c.status == "failed"}
    assert "packed_boundary" in failed and "packed_inputs_unmodified" not in failed, report.to_text()
    assert [d.split(":")[0] for d in report.diagnosis] == ["cross-boundary"], report.diagnosis


@pytest.mark.slow
def test_swift_padded_path_wraps_the_first_label_too(swift_packed):
    """The same roll without padding_free (dpo_trainer.py:143-145, one row per sequence): a row whose first label
    is set scores it from its last position. `--level logps` (docs/verify.md) did not draw such rows then."""
    from types import SimpleNamespace

    lib = swift_packed.load()
    me = swift_packed._trainer(lib)
    me.template.padding_free = False
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    labels = torch.tensor([[2, 1, 3], [-100, 1, 3]])
    batch = {"input_ids": labels.clamp(min=0), "labels": labels}
    out = lib.DPOTrainer.concatenated_forward(me, lambda **kw: SimpleNamespace(logits=logits), batch)
    lp = logits.log_softmax(-1)
    right = [float(lp[r, 0, 1] + lp[r, 1, 3]) for r in (0, 1)]  # labels[:, 1:] from positions 0, 1
    assert abs(float(out["rejected_logps"][0]) - right[1]) < 1e-12  # first label -100: right
    assert abs(float(out["chosen_logps"][0]) - (right[0] + float(lp[0, 2, 2]))) < 1e-12  # + log p(2 | last)
