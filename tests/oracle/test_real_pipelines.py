"""Real libraries' DPO batch log-prob paths through the pipeline level (dpo_ref.oracle.adapters.pipelines).

Per library: the verdict `verify --level pipeline` gives (slow: a whole verify), and the finding behind it as a
minimal reproduction on fixed rows (quick). docs/pipelines.md has the library lines each finding rests on.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import dpo_ref
from dpo_ref.oracle.pipeline import Convention, reference, score_row, values
from dpo_ref.oracle.pipeline_worlds import WORLDS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# rows whose prompt and completions do not merge into one token when tokenised together, in any world
NO_MERGE = [
    {"prompt": "a", "chosen": "r", "rejected": "h"},
    {"prompt": "sat a", "chosen": "r tan", "rejected": "hr"},
]
# the prompt's last token "e" merges with " a" ("e " is a token) but not with "a"
MERGE = [{"prompt": "ae", "chosen": "a", "rejected": " a"}]


def _verdict(fn, **kw):
    report = dpo_ref.verify(fn, level="pipeline", **kw)
    return report, {c.name for c in report.checks if c.status == "failed"}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# ---- TRL ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trl_pipeline():
    pytest.importorskip("trl")
    from dpo_ref.oracle.adapters.pipelines import trl_pipeline

    return trl_pipeline


@pytest.mark.parametrize("world", ["llama", "gpt2", "llama-no-pad"])
def test_trl_is_joint_eos_where_nothing_merges(trl_pipeline, world):
    """Prompt+completion tokenised together, EOS appended and scored, BOS where the tokenizer adds one."""
    w = WORLDS[world]
    got = trl_pipeline(w.model(), w.tokenizer(), NO_MERGE)
    want = reference(w, NO_MERGE, Convention("joint", bos=w.bos, eos=True), average=False)
    for g, rows in zip(got, want):
        torch.testing.assert_close(g.double(), values(rows), rtol=0, atol=1e-4)


def test_trl_completion_starts_where_the_pair_diverges(trl_pipeline):
    """TRL's completion starts at min(common prefix of prompt ids with prompt+chosen ids, with prompt+rejected ids):
    when one completion merges with the prompt's last token, both completions' scores take in that prompt token."""
    w = WORLDS["gpt2"]
    model, tok = w.model(), w.tokenizer()
    got = trl_pipeline(model, tok, MERGE)
    ex = MERGE[0]
    prompt = tok(ex["prompt"])["input_ids"]
    full = {side: tok(ex["prompt"] + ex[side])["input_ids"] + [tok.eos_token_id] for side in ("chosen", "rejected")}
    start = min(_common_prefix(prompt, ids) for ids in full.values())
    assert start == len(prompt) - 1  # the prompt's "e" is scored as part of both completions
    for g, side in zip(got, ("chosen", "rejected")):
        torch.testing.assert_close(g.double()[0], score_row(model, full[side], start).value.detach(), rtol=0, atol=1e-4)
    joint = reference(w, MERGE, Convention("joint", eos=True), average=False)
    assert abs(float(got[0]) - float(values(joint[0])[0])) > 1.0  # not the oracle's joint+eos


@pytest.mark.slow
def test_trl_pipeline_verdict(trl_pipeline):
    """Conforms under the convention TRL 1.16 documents (the completion starts where the pair diverges from the
    prompt's tokens: `diverge-pair`), with BOS where the tokenizer adds one and EOS appended."""
    report, failed = _verdict(trl_pipeline, max_examples=5)
    assert report.passed, report.to_text()
    assert report.detected["convention"].startswith("diverge-pair+bos+eos"), report.detected


@pytest.mark.slow
def test_cli_verify_trl_pipeline_exits_0_and_1_when_another_convention_is_pinned(trl_pipeline):
    def run(*extra):
        return subprocess.run(
            [sys.executable, "-m", "dpo_ref", "verify", "trl", "--level", "pipeline", "--checks", "pipeline_one_token,"
             "pipeline_values", "--max-examples", "5", *extra],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300,
        )  # fmt: skip

    ok = run()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    pinned = run("--convention", "joint+bos+eos")  # the merges at the boundary tell the two apart
    assert pinned.returncode == 1 and "FAIL pipeline_values" in pinned.stdout, pinned.stdout + pinned.stderr


# ---- torchtune ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchtune_pipeline():
    pytest.importorskip("torchtune")
    from dpo_ref.oracle.adapters.pipelines import torchtune_pipeline

    return torchtune_pipeline


def _torchtune_row(world: str, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    from torchtune.data import ChosenRejectedToMessages
    from torchtune.datasets import PreferenceDataset

    from dpo_ref.oracle.adapters.pipelines import _TorchtuneHFTokenizer

    dataset = type("D", (), {})()
    dataset._message_transform, dataset._tokenizer = (
        ChosenRejectedToMessages(),
        _TorchtuneHFTokenizer(WORLDS[world].tokenizer()),
    )
    conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    row = PreferenceDataset._prepare_sample(dataset, {"chosen": conv, "rejected": conv})
    return list(row["chosen_input_ids"]), [int(x) for x in row["chosen_labels"]]


def test_torchtune_hf_tokenizer_adds_bos_to_every_message(torchtune_pipeline):
    """HuggingFaceBaseTokenizer.encode(add_bos=False) keeps the BOS the HF tokenizer adds itself: with a tokenizer
    that adds BOS, the row starts <s> <s> and the completion starts with a scored <s>."""
    ids, labels = _torchtune_row("llama", "a", "r")
    assert ids == [1, 1, 4, 1, 8, 2]
    assert labels == [-100, -100, -100, 1, 8, 2]


def test_torchtune_strips_trailing_spaces_and_always_adds_bos(torchtune_pipeline):
    """tokenize_messages_no_special_tokens rstrips each message: the prompt "sat "'s space is gone, a completion of
    only spaces is just EOS; BOS is prepended although the GPT-2 world's tokenizer adds none."""
    tok = WORLDS["gpt2"].tokenizer()
    ids, labels = _torchtune_row("gpt2", "sat ", " a")
    assert ids == [tok.bos_token_id] + tok("sat")["input_ids"] + tok(" a")["input_ids"] + [tok.eos_token_id]
    _, labels = _torchtune_row("gpt2", "she", " ")
    assert [x for x in labels if x != -100] == [tok.eos_token_id]


def test_torchtune_batch_path_matches_its_own_rows_scored_alone(torchtune_pipeline):
    """The collate + concatenated_forward + get_batch_log_probs part is right: each value is torchtune's own
    tokenised row scored alone (the mismatch with the oracle is the tokenisation only)."""
    w = WORLDS["gpt2"]
    model = w.model()
    rows = [{"prompt": "sat ", "chosen": " a", "rejected": "rr"}, {"prompt": "a", "chosen": "r tan", "rejected": "h"}]
    got = torchtune_pipeline(model, w.tokenizer(), rows)
    for g, side in zip(got, ("chosen", "rejected")):
        want = []
        for ex in rows:
            ids, labels = _torchtune_row("gpt2", ex["prompt"], ex[side])
            start = next(i for i, x in enumerate(labels) if x != -100)
            want.append(score_row(model, ids, start).value.detach())
        torch.testing.assert_close(g.detach(), torch.stack(want), rtol=0, atol=1e-9)


@pytest.mark.slow
def test_torchtune_pipeline_verdict(torchtune_pipeline):
    report, failed = _verdict(torchtune_pipeline, max_examples=5)
    assert not report.passed
    assert {"pipeline_values", "pipeline_one_token", "pipeline_gradients"} <= failed
    assert not failed & {"call", "pipeline_batch_composition", "pipeline_model_unchanged"}
    # the defects found by reading torchtune's code (docs/pipelines.md), named by the diagnosis
    assert {"bos-per-message", "bos-added"} <= {d.split(":")[0] for d in report.diagnosis}, report.diagnosis
