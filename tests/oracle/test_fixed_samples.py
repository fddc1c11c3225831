"""The oracle's fixed samples: large shapes at the log-prob level, and repeated calls on one input.

Drawn token batches stay small (a few rows, tens of positions, a small vocabulary), so an implementation
that chunks over the sequence, the vocabulary or the batch is only exercised past its chunk size by
`logps_large_shapes`; one that is wrong on a few per cent of its calls is caught by `repeatable` /
`logps_repeatable` (P >= 1 - (1 - p)^REPEATS). Each is shown to catch such an implementation, and correct
chunked code written another way conforms.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import dpo_ref
from dpo_ref.oracle.catalogue import LARGE_SHAPES, REPEATS


def chunked_over_vocab(logits, labels, chunk=4096):
    """Correct, memory-lean: logsumexp over vocabulary chunks, the label's logit gathered directly."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    safe = labels.masked_fill(~mask, 0)
    lse = torch.stack([c.logsumexp(-1) for c in logits.split(chunk, dim=-1)], -1).logsumexp(-1)
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return ((picked - lse) * mask).sum(-1)


def chunked_over_vocab_first_chunk_only(logits, labels, chunk=4096):
    """Normalises over the first vocabulary chunk only: right whenever V <= chunk, as in every drawn batch."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    safe = labels.masked_fill(~mask, 0)
    lse = logits[..., :chunk].logsumexp(-1)
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return ((picked - lse) * mask).sum(-1)


def chunked_over_positions_dropping_boundaries(logits, labels, chunk=256):
    """Scores positions in chunks of 256 and shifts inside each chunk: the boundary tokens are lost."""
    total = torch.zeros(logits.shape[0], dtype=logits.dtype)
    for start in range(0, logits.shape[1], chunk):
        lg, lb = logits[:, start : start + chunk], labels[:, start : start + chunk]
        logp = lg[:, :-1].log_softmax(-1)
        lab = lb[:, 1:]
        mask = lab != -100
        total = total + (logp.gather(-1, lab.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1) * mask).sum(-1)
    return total


_calls = itertools.count()


def wrong_on_every_fortieth_call(pc, pr, rc, rr, beta=0.1):
    out = -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
    return out * 1.01 if next(_calls) % 40 == 39 else out


def test_the_large_shapes_reach_past_common_chunk_sizes():
    assert max(shape[2] + shape[1] for shape in LARGE_SHAPES) >= 512  # positions
    assert max(shape[3] for shape in LARGE_SHAPES) >= 32000  # vocabulary
    assert max(shape[0] for shape in LARGE_SHAPES) >= 256  # batch


@pytest.mark.parametrize("fn", [chunked_over_vocab_first_chunk_only, chunked_over_positions_dropping_boundaries])
def test_chunking_bugs_fail_only_the_large_shapes(fn):
    report = dpo_ref.verify(fn, level="logps", max_examples=10)
    assert report["logps_large_shapes"].failed, report.to_text()
    assert report["logps_values"].passed  # the drawn batches are too small to see it


def test_correct_chunked_code_conforms():
    assert dpo_ref.verify(chunked_over_vocab, level="logps", max_examples=10).passed


def test_a_rarely_wrong_loss_is_caught_by_the_repeated_sample():
    assert REPEATS >= 40
    report = dpo_ref.verify(wrong_on_every_fortieth_call, checks=["repeatable"], max_examples=1)
    assert report["repeatable"].failed


def test_a_rarely_wrong_log_prob_is_caught_by_the_repeated_sample():
    calls = itertools.count()

    def logps(logits, labels):
        out = dpo_ref.sequence_logps(logits, labels)
        return out + 0.01 if next(calls) % 40 == 39 else out

    assert dpo_ref.verify(logps, level="logps", checks=["logps_repeatable"], max_examples=1)["logps_repeatable"].failed
