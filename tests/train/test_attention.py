"""The layouts' attention kernels (`dpo_ref.train.attention`): FlexAttention's block mask is the dense mask.

1. The block mask's rule, evaluated on every (query, key), equals the dense (T, T) mask that `layouts.collate`
   builds piece by piece (two descriptions of one layout, built independently), over drawn batches of every
   layout; a rule that lets the rejected tokens see the chosen ones is caught.
2. The model run with FlexAttention and the block mask scores what it scores with SDPA and the dense mask, on
   the CPU in the forward pass (FlexAttention has no CPU backward in torch 2.13, and inductor's CPU flex kernel
   fails to compile here, so the test runs torch's eager flex_attention in place of transformers' compiled
   wrapper). Both compute the same float32 softmax over the same keys; the values differ at most by the order
   of the sums, a few float32 ulps of each token's log-prob (|log p| <= ~10 here: ~1e-6 each), summed over at
   most ~60 tokens a sequence: atol 1e-4. A block mask that leaks is caught at the same tolerance.
3. The kernel choice: auto is the mask (FlexAttention only when asked for, until it has run on a GPU);
   --attention flex is refused (one line, exit 2, nothing written) on the CPU and for the two-sequence layout.
4. On CUDA only (skipped here): training with --attention flex equals --attention mask over a short run.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_ref.errors import InputError
from dpo_ref.train import attention, layouts
from dpo_ref.train.data import TokenizedPair

# torch warns that eager flex_attention is unfused: on the CPU, eager is the point
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

ids = st.lists(st.integers(3, 30), min_size=1, max_size=9)
pair_lists = st.lists(st.tuples(ids, ids, ids), min_size=1, max_size=5)


def _pairs(drawn) -> list[TokenizedPair]:
    return [TokenizedPair(p, c, r, i) for i, (p, c, r) in enumerate(drawn)]


@settings(max_examples=60, deadline=None)
@given(drawn=pair_lists, layout=st.sampled_from(layouts.LAYOUTS), max_length=st.sampled_from([None, 8, 20]))
def test_the_block_mask_rule_is_the_dense_mask(drawn, layout, max_length):
    batch = layouts.collate(_pairs(drawn), layout, 0, max_length)
    rule = attention.dense_from_ids(batch["segment_ids"], batch["piece_ids"], batch["shared"])
    assert torch.equal(rule, batch["attention_mask"][:, 0])


def _leaky_rule(segment_ids, piece_ids, shared, b, q, kv):
    """Causal within each sequence, the chosen/rejected split forgotten: the rejected tokens see the chosen."""
    same = (segment_ids[b, q] == segment_ids[b, kv]) & (segment_ids[b, q] >= 0)
    return (q == kv) | (same & (kv <= q))


def test_a_rule_that_lets_rejected_see_chosen_differs_from_the_dense_mask():
    batch = layouts.collate(_pairs([([5, 6], [7, 8], [9])]), "prefix-sharing", 0)
    leaky = _leaky_rule(batch["segment_ids"], batch["piece_ids"], batch["shared"],
                        *torch.meshgrid(torch.arange(1), torch.arange(5), torch.arange(5), indexing="ij"))  # fmt: skip
    assert not torch.equal(leaky, batch["attention_mask"][:, 0])


@pytest.fixture
def eager_flex(monkeypatch):
    """transformers' FlexAttention path with torch's eager flex_attention in place of its compiled wrapper."""
    hf_flex = pytest.importorskip("transformers.integrations.flex_attention")
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", lambda q, k, v, training=False, **kw:
                        flex_attention(q, k, v, **kw))  # fmt: skip


def _model():
    from dpo_ref.train.model import TinyLlamaSize, llama_config, tiny_llama

    size = TinyLlamaSize(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return tiny_llama(llama_config(32, size), seed=0).eval()


MIXED = [([5, 6, 7, 8, 9, 10, 11], [12], [13]), ([5], [6, 7, 8, 9, 10, 11, 12, 13, 14], [15, 16]),
         ([7, 8], [9, 10], [11, 12, 13]), ([9] * 20, [4, 5], [6] * 17)]  # fmt: skip


def _flex_vs_mask(layout, max_length=None):
    model = _model()
    batch = layouts.collate(_pairs(MIXED), layout, 0, max_length)
    with torch.no_grad():
        expected, counts = layouts.score(model, batch)
        attention.use(model, "flex")
        got, flex_counts = layouts.score(model, batch)
    assert torch.equal(counts, flex_counts)
    return got, expected


@pytest.mark.parametrize("layout,max_length", [("prefix-sharing", None), ("packing", 48), ("both", 64)])
def test_flex_attention_scores_what_the_dense_mask_scores(eager_flex, layout, max_length):
    got, expected = _flex_vs_mask(layout, max_length)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_a_leaky_block_mask_is_caught(eager_flex, monkeypatch):
    monkeypatch.setattr(attention, "allowed", _leaky_rule)
    got, expected = _flex_vs_mask("prefix-sharing")
    assert (got - expected).abs().max() > 1e-2  # the rejected rows now condition on the chosen tokens


# ---------------------------------------------------------------------------------------------- the choice


class _Flexible(torch.nn.Module):
    _supports_flex_attn = True


class _Backend(torch.nn.Module):  # a transformers class that takes a custom attention function
    _supports_attention_backend = True


class _SoftCapped(_Backend):
    config = type("Config", (), {"attn_logit_softcapping": 50.0})()


CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("requested,layout,device,model,expected", [
    ("auto", "prefix-sharing", CPU, _Flexible(), "mask"),  # a class without custom attention functions
    ("auto", "prefix-sharing", CPU, _Backend(), "segments"),
    ("auto", "packing", CPU, _SoftCapped(), "mask"),  # soft-capping: segments would leave it out
    ("auto", "packing", CUDA, _Backend(), "mask"),  # segments has not run on a GPU
    ("segments", "packing", CUDA, _Backend(), "segments"),
    ("segments", "both", CPU, _Backend(), "segments"),
    ("auto", "packing", CUDA, _Flexible(), "mask"),  # auto is mask until flex has run on a GPU
    ("auto", "both", CUDA, torch.nn.Module(), "mask"),  # a model class without FlexAttention support
    ("auto", "two-sequence", CUDA, _Flexible(), "mask"),
    ("mask", "both", CUDA, _Flexible(), "mask"),
    ("flex", "prefix-sharing", CUDA, _Flexible(), "flex"),
])  # fmt: skip
def test_the_kernel_choice(requested, layout, device, model, expected):
    assert attention.choose(requested, layout, device, model) == expected


@pytest.mark.parametrize("requested,layout,device,model,words", [
    ("flex", "prefix-sharing", CPU, _Flexible(), "no backward pass on the CPU"),
    ("flex", "two-sequence", CUDA, _Flexible(), "needs --prefix-sharing or --packing"),
    ("flex", "packing", CUDA, torch.nn.Module(), "cannot run FlexAttention"),
    ("fast", "packing", CUDA, _Flexible(), "must be one of auto, mask, segments, flex"),
    ("segments", "two-sequence", CPU, _Backend(), "needs --prefix-sharing or --packing"),
    ("segments", "packing", CPU, torch.nn.Module(), "does not take a custom attention function"),
    ("segments", "packing", CPU, _SoftCapped(), "soft-caps"),
])  # fmt: skip
def test_refused_kernels_name_the_reason(requested, layout, device, model, words):
    with pytest.raises(InputError, match=words):
        attention.choose(requested, layout, device, model)


def test_cli_refuses_flex_on_the_cpu_in_one_line_and_writes_nothing(tmp_path, capsys):
    from dpo_ref.cli import main

    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--steps", "1", "--prefix-sharing", "--attention", "flex",
                 "--device", "cpu", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--attention flex" in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_the_summary_names_the_layout_and_kernel(data, tmp_path):
    from dpo_ref.train.cli import _summary_lines
    from dpo_ref.train.loop import train
    from tests.train.test_train import small

    summary = train(small(data, tmp_path / "run", steps=1, prefix_sharing=True))
    assert summary["attention"] == "segments" and summary["layout"] == "prefix-sharing"  # auto, on the CPU
    assert "prefix-sharing layout (segments)" in _summary_lines(summary["config"], summary)[0]
    assert abs(summary["history"][0]["loss"] - math.log(2)) < 1e-6


def trains_like_the_dense_mask(data, tmp_path, kernel: str, device: str = "cpu", keys=("loss",)) -> None:
    """Training with `kernel` gives --attention mask's losses over a short run of both layouts at once: float32
    rounding carried through a few updates (relative 1e-4, as in test_layouts.py)."""
    from dpo_ref.train.loop import train
    from tests.train.test_train import small

    runs = {}
    for k in ("mask", kernel):
        flags = dict(prefix_sharing=True, packing=True, max_length=64, attention=k, device=device, dtype="float32")
        runs[k] = train(small(data, tmp_path / k, steps=4, **flags))
    assert runs[kernel]["attention"] == kernel and runs["mask"]["attention"] == "mask"
    assert abs(runs[kernel]["history"][0]["loss"] - math.log(2)) < 1e-6
    for a, b in zip(runs["mask"]["history"], runs[kernel]["history"]):
        for key in keys:
            if key in a:
                assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), (key, a, b)


@pytest.mark.gpu  # FlexAttention trains on CUDA only
def test_training_with_flex_equals_the_dense_mask_on_cuda(data, tmp_path):
    trains_like_the_dense_mask(data, tmp_path, "flex", "cuda")


def test_flex_without_a_shared_layout_is_refused_with_the_other_options():
    """Refused by check_config, before any model is loaded (a 7B load would otherwise come first)."""
    from dpo_ref.train.config import TrainConfig, check_config

    with pytest.raises(InputError, match="--attention flex needs --prefix-sharing or --packing"):
        check_config(TrainConfig(attention="flex"))
