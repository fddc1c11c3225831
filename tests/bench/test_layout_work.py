"""The layout bench's work count (`dpo_ref.bench.layout_work`) against closed forms written out by hand for the
bench's fixed shapes (prompt P, completion C, B pairs): the count walks the collated batches and the kernels'
blocks, the closed forms do not."""

from __future__ import annotations

import pytest

from dpo_ref.bench import layouts as bench_layouts
from dpo_ref.bench.layout_work import attention_products, forward_flops, scored_positions
from dpo_ref.bench.sizes import BenchSize

SIZE = BenchSize()
P, C, B = 64, 192, bench_layouts.PAIRS


@pytest.fixture(scope="module")
def batches():
    pairs = bench_layouts.pairs_for("p64_c192", SIZE.vocab)
    return {n: bench_layouts.collated(pairs, n, "cpu") for n in bench_layouts.parse_layouts("all", "cpu")}


def _causal(n: int) -> int:
    return n * (n + 1) // 2


def test_attention_products_are_the_closed_forms(batches):
    L = P + C
    assert attention_products(batches["two-sequence"], "mask") == 2 * B * _causal(L)  # no padding: is_causal
    assert attention_products(batches["prefix-sharing"], "mask") == B * (P + 2 * C) ** 2  # the whole row
    # prompt+chosen causal; rejected queries over prompt + rejected keys under an explicit mask
    assert attention_products(batches["prefix-sharing+segments"], "segments") == B * (_causal(L) + C * (P + C))
    assert attention_products(batches["packing+segments"], "segments") == 2 * B * _causal(L)
    visible = B * (_causal(L) + C * P + _causal(C))  # what the rule lets through
    assert attention_products(batches["prefix-sharing"], "flex") == visible


def test_the_forward_flops_are_the_closed_form(batches):
    d, i, V, layers = SIZE.hidden, SIZE.intermediate, SIZE.vocab, SIZE.layers
    per_token = 4 * d * d + 3 * d * i  # q, k, v, o (kv heads = heads here) + the MLP
    assert scored_positions(batches["two-sequence"]) == scored_positions(batches["prefix-sharing"]) == 2 * B * C
    tokens = B * (P + 2 * C)
    products = B * (_causal(P + C) + C * (P + C))
    expected = 2 * (tokens * layers * per_token + products * layers * 2 * d + 2 * B * C * d * V)
    assert forward_flops(batches["prefix-sharing+segments"], "segments", SIZE) == expected


def test_a_layout_that_ran_on_padding_would_count_it():
    pairs = bench_layouts.pairs_for("mixed", SIZE.vocab)
    two = bench_layouts.collated(pairs, "two-sequence", "cpu")
    R, T = two["input_ids"].shape
    assert (two["attention_mask"] == 0).any() and attention_products(two, "mask") == R * T * T
