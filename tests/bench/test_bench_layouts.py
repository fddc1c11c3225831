"""`dpo-ref bench --layout`: the layouts' steps timed side by side, refused when a layout computes another loss.

The figures themselves are measurements (docs/results/layouts.json); what is tested is what would make them
wrong: a layout whose step is not the two-sequence step must stop the bench, the ratios must be the ratios of
the medians printed beside them, and the memory worker must report a positive peak.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from dpo_ref.bench import layouts as bench_layouts
from dpo_ref.bench.run import PRESETS
from dpo_ref.errors import InputError
from dpo_ref.train import layouts

TINY = PRESETS["tiny"]


@pytest.mark.slow
def test_every_layout_is_timed_against_two_sequence_with_the_same_first_loss():
    result = bench_layouts.timing(TINY, torch.device("cpu"), 2, layouts.LAYOUTS, shapes=("p64_c192",))
    rows = result["p64_c192"]
    base = rows["two-sequence"]
    for lay in layouts.LAYOUTS:
        r = rows[lay]
        assert len(r["runs_s"]) == 2 and r["median_s"] == statistics.median(r["runs_s"])
        assert r["speedup"] == pytest.approx(base["median_s"] / r["median_s"], rel=1e-12)
        assert r["tokens_per_s"] == pytest.approx(rows["tokens"] / r["median_s"], rel=1e-12)
        assert r["first_step_loss"] == pytest.approx(base["first_step_loss"], rel=bench_layouts.AGREEMENT)
    # each pair's prompt counted twice (two sequences hold it): 8 x (2 x 64 + 192 + 192) tokens
    assert rows["tokens"] == bench_layouts.PAIRS * (2 * 64 + 2 * 192)
    assert rows["prefix-sharing"]["rows"] == bench_layouts.PAIRS and rows["two-sequence"]["rows"] == 16


@pytest.mark.slow
def test_a_layout_that_computes_another_loss_stops_the_bench(monkeypatch):
    real = layouts.collate

    def drops_a_label(pairs, layout, pad, max_length=None):
        batch = real(pairs, layout, pad, max_length=max_length)
        if layout == "prefix-sharing":  # one label misread: the step still runs, and computes something else
            batch["score_targets"][0] = (batch["score_targets"][0] + 1) % TINY.vocab
        return batch

    monkeypatch.setattr(layouts, "collate", drops_a_label)
    with pytest.raises(bench_layouts.LayoutMismatch, match="prefix-sharing gives loss"):
        bench_layouts.timing(TINY, torch.device("cpu"), 1, ("two-sequence", "prefix-sharing"), shapes=("p64_c192",))


@pytest.mark.slow
def test_the_memory_worker_reports_a_peak_for_each_layout():
    peaks = bench_layouts.memory(TINY, "cpu", ("two-sequence", "both"), shapes=("mixed",))
    assert set(peaks["mixed"]) == {"two-sequence", "both"} and all(v > 0 for v in peaks["mixed"].values())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", (*layouts.LAYOUTS, "prefix-sharing+segments", "packing+segments", "both+segments")),
        ("packing", ("two-sequence", "packing")),
        ("both,two-sequence", ("two-sequence", "both")),
    ],
)
def test_layout_names_always_include_the_baseline(text, expected):
    assert bench_layouts.parse_layouts(text) == expected


@pytest.mark.parametrize("text", ["", "prefix", "all,packing", "packing,,nope"])
def test_an_unknown_layout_is_refused_naming_the_choices(text):
    with pytest.raises(InputError, match="--layout: unknown layout .*two-sequence, prefix-sharing, packing, both"):
        bench_layouts.parse_layouts(text)


def test_flex_layouts_are_named_with_their_kernel_and_refused_on_the_cpu():
    assert bench_layouts.parse_layouts("packing+flex") == ("two-sequence", "packing+flex")
    assert bench_layouts.split_kernel("both+flex") == ("both", "flex")
    assert bench_layouts.split_kernel("both") == ("both", "mask")
    assert bench_layouts.split_kernel("both+segments") == ("both", "segments")
    on_cuda = bench_layouts.parse_layouts("all", "cuda")
    assert {"prefix-sharing+flex", "packing+flex", "both+flex"} <= set(on_cuda)
    assert not any(n.endswith("+flex") for n in bench_layouts.parse_layouts("all", "cpu"))
    with pytest.raises(InputError, match="no backward pass on the CPU"):
        bench_layouts.parse_layouts("prefix-sharing+flex", "cpu")
    with pytest.raises(InputError, match="unknown layout 'two-sequence\\+flex'"):
        bench_layouts.parse_layouts("two-sequence+flex")


def test_the_kernel_is_switched_per_layout_and_restored():
    from dpo_ref.bench.sizes import bench_model

    model = bench_model(TINY, 0)
    own = model.config._attn_implementation
    bench_layouts.use_kernel([model], "packing+flex")
    assert model.config._attn_implementation == "flex_attention"
    bench_layouts.use_kernel([model], "packing+segments")
    assert model.config._attn_implementation == "dpo_ref_segments"
    bench_layouts.use_kernel([model], "packing")
    assert model.config._attn_implementation == own
