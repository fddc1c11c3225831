"""The segmented attention kernel (`dpo_ref.train.segments`, `--attention segments`): the layouts' mask run as
causal blocks.

1. The blocks, expanded back to a (T, T) mask, are the dense mask `layouts.collate` builds, on every query that
   is not padding, over drawn batches of every layout (the blocks are read from the per-token ids, the dense
   mask is built piece by piece: two descriptions); a plan that merges the rejected block into the chosen one
   is caught.
2. The model scores and differentiates what it does with the dense mask, in float64, with grouped-query
   attention: both compute the same softmax over the same keys, so the only difference is the order of the
   sums, ~1e-16 relative per operation over a few hundred operations: atol 1e-10 on log-probs and gradients of
   order 1-10. A leaky plan moves the scores by far more.
3. What the kernel leaves out it refuses (soft-capping, a sliding window narrower than a block); a call without
   blocks (a two-sequence batch) is transformers' SDPA attention.
4. Training with --attention segments equals --attention mask over a short run (test_layouts.py's tolerance).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_ref.train import attention, layouts, segments
from tests.train.test_attention import MIXED, _pairs, pair_lists, trains_like_the_dense_mask


def _dense(plan, T: int) -> torch.Tensor:
    """(R, T, T) bool: the blocks expanded -- query q of block b sees the spans' keys, the last causally."""
    out = torch.zeros(len(plan), T, T, dtype=torch.bool)
    for r, row in enumerate(plan):
        for block in row:
            n, m = block.q1 - block.q0, block.keys
            cols = torch.cat([torch.arange(a, b) for a, b in block.spans])
            out[r, block.q0 : block.q1, cols] = torch.ones(n, m, dtype=torch.bool).tril(m - n)
    return out


def _plan_equals_mask(batch) -> bool:
    plan = segments.blocks(batch["segment_ids"], batch["piece_ids"], batch["shared"])
    mask = batch["attention_mask"][:, 0]  # (R, T, T)
    real = batch["segment_ids"] >= 0  # padding queries: the dense mask has them see themselves, the blocks skip them
    return torch.equal(_dense(plan, mask.shape[-1])[real], mask[real])


@settings(max_examples=60, deadline=None)
@given(drawn=pair_lists, layout=st.sampled_from(layouts.LAYOUTS[1:]), max_length=st.sampled_from([None, 8, 20]))
def test_the_blocks_are_the_dense_mask(drawn, layout, max_length):
    assert _plan_equals_mask(layouts.collate(_pairs(drawn), layout, 0, max_length))


def _merging_everything(segment_ids, piece_ids, shared):
    """A plan that runs each sequence as one causal block: the rejected tokens see the chosen ones."""
    out = []
    for row in segment_ids.tolist():
        runs = [(v, a, b) for v, a, b in segments._runs(row) if v >= 0]
        out.append([segments.Block(a, b, ((a, b),)) for _, a, b in runs])
    return out


def test_a_plan_that_lets_rejected_see_chosen_is_not_the_dense_mask(monkeypatch):
    batch = layouts.collate(_pairs(MIXED), "prefix-sharing", 0)
    assert _plan_equals_mask(batch)
    monkeypatch.setattr(segments, "blocks", _merging_everything)
    assert not _plan_equals_mask(batch)


def _model(kv_heads: int = 2):
    from dpo_ref.train.model import TinyLlamaSize, llama_config, tiny_llama

    size = TinyLlamaSize(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=kv_heads)  # fmt: skip
    return tiny_llama(llama_config(32, size), seed=0).double()


def _scores_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    logps, counts = layouts.score(model, batch)
    (logps * torch.linspace(0.5, 1.5, len(logps), dtype=logps.dtype)).sum().backward()  # every row weighs in
    return logps.detach(), counts, [p.grad.clone() for p in model.parameters()]


# rows laid out alike run as one batch: all alike, two of three alike (the third row's order restored)
ALIKE = [([5, 6, 7], [8, 9], [10, 11, 12])] * 3
TWO_ALIKE = [([5, 6, 7], [8, 9], [10, 11, 12]), ([9, 8], [7, 6, 5, 4], [3]), ([7, 6, 5], [4, 3], [12, 11, 10])]


def _segments_vs_mask(layout, max_length, drawn=MIXED):
    model = _model()
    batch = layouts.collate(_pairs(drawn), layout, 0, max_length)
    expected = _scores_and_grads(model, batch)
    attention.use(model, "segments")
    return _scores_and_grads(model, batch), expected


CASES = [("prefix-sharing", None, MIXED), ("packing", 48, MIXED), ("both", 64, MIXED), ("prefix-sharing", None, ALIKE),
         ("prefix-sharing", None, TWO_ALIKE), ("packing", 16, TWO_ALIKE)]  # fmt: skip


@pytest.mark.parametrize("layout,max_length,drawn", CASES)
def test_segments_score_and_differentiate_what_the_dense_mask_does(layout, max_length, drawn):
    (logps, counts, grads), (logps0, counts0, grads0) = _segments_vs_mask(layout, max_length, drawn)
    assert torch.equal(counts, counts0)
    torch.testing.assert_close(logps, logps0, rtol=0, atol=1e-10)
    for g, g0 in zip(grads, grads0):
        torch.testing.assert_close(g, g0, rtol=0, atol=1e-10)


def test_a_leaky_plan_is_caught_in_the_scores(monkeypatch):
    monkeypatch.setattr(segments, "blocks", _merging_everything)
    (logps, _, _), (logps0, _, _) = _segments_vs_mask("prefix-sharing", None)
    assert (logps - logps0).abs().max() > 1e-2  # the rejected rows now condition on the chosen tokens


def test_a_call_without_blocks_is_sdpa():
    model = _model()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        attention.use(model, "segments")
        got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], rtol=0, atol=1e-12)


def test_what_the_kernel_leaves_out_is_refused():
    plan = [[segments.Block(0, 6, ((0, 6),))]]
    q = torch.zeros(1, 2, 6, 4)
    module = torch.nn.Module()
    for kwargs, words in ((dict(softcap=30.0), "softcap"), (dict(sliding_window=4), "sliding_window=4")):
        with pytest.raises(ValueError, match=words):
            segments.segments_attention(module, q, q, q, None, segments=plan, **kwargs)
    out, _ = segments.segments_attention(module, q, q, q, None, segments=plan, sliding_window=6)  # wide enough
    assert out.shape == (1, 6, 2, 4)


def test_training_with_segments_equals_the_dense_mask(data, tmp_path):
    trains_like_the_dense_mask(data, tmp_path, "segments", keys=("loss", "logps/chosen", "logps/rejected"))


def test_the_oracle_rejects_the_segments_path_with_a_leaky_plan(monkeypatch):
    """The pipeline level (`dpo-ref verify dpo_ref.train.layouts:prefix_sharing_segments`, test_layouts.py)
    passes the real kernel; with the rejected block merged into the chosen one it fails."""
    import warnings

    import dpo_ref

    monkeypatch.setattr(segments, "blocks", _merging_everything)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = dpo_ref.verify(layouts.pipeline("prefix-sharing", "segments"), level="pipeline", max_examples=4,
                                fail_fast=True)  # fmt: skip
    assert not report.passed


@pytest.mark.gpu  # auto picks mask on CUDA until this has passed there
def test_training_with_segments_equals_the_dense_mask_on_cuda(data, tmp_path):
    trains_like_the_dense_mask(data, tmp_path, "segments", "cuda")
