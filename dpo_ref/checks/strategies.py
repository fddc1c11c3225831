"""Public Hypothesis strategies for testing DPO / IPO code (yours or ours).

    from hypothesis import given
    from dpo_ref.checks import strategies as dst

    @given(batch=dst.preference_batches(), beta=dst.betas())
    def test_my_loss(batch, beta):
        losses = my_dpo_loss(*batch.tensors(torch.float32), beta=beta)
        ...

Log-prob batches (`preference_batches`) cover ties (policy equal to reference, chosen equal to
rejected), log-probs from 0 down to -1e4, and batch sizes from 1 up. `betas`, `taus` and
`label_smoothings` cover tiny and large coefficients. Token batches (`token_batches`) hold prompts of
different lengths, responses of different lengths (some reaching the last position), left or right
padding, and random logits per real token, so one batch can be re-padded and re-scored: padding side
and extra padding must not change a correct `sequence_logps`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from hypothesis import strategies as st

from dpo_ref.logps import IGNORE_INDEX


class PreferenceBatch(NamedTuple):
    """Four float64 tensors of shape (B,): the inputs of a DPO/IPO loss, in the standard order."""

    policy_chosen_logps: torch.Tensor
    policy_rejected_logps: torch.Tensor
    reference_chosen_logps: torch.Tensor
    reference_rejected_logps: torch.Tensor

    @property
    def size(self) -> int:
        return self.policy_chosen_logps.shape[0]

    def tensors(self, dtype: torch.dtype = torch.float64, requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
        """Fresh copies in `dtype` (leaves with `requires_grad` if asked)."""
        return tuple(t.detach().to(dtype).clone().requires_grad_(requires_grad) for t in self)

    def margin(self) -> torch.Tensor:
        """h in float64: (pc - rc) - (pr - rr)."""
        pc, pr, rc, rr = (t.double() for t in self)
        return (pc - rc) - (pr - rr)

    def __repr__(self) -> str:
        body = ", ".join(
            f"{name}=torch.tensor({t.tolist()!r}, dtype=torch.float64)" for name, t in self._asdict().items()
        )
        return f"PreferenceBatch({body})"


def log_probs(min_value: float = -1e4, max_value: float = 0.0) -> st.SearchStrategy[float]:
    """Sequence log-probs: mostly moderate values, with 0, tiny and huge magnitudes mixed in."""
    specials = [v for v in (0.0, -1e-12, -1.0, min_value, max_value) if min_value <= v <= max_value]
    moderate = (max(min_value, -60.0), min(max_value, 0.0))  # the usual range, where most of the mass goes
    parts = [st.sampled_from(specials)] if specials else []
    if moderate[0] <= moderate[1]:
        parts.append(st.floats(*moderate))
    return st.one_of(*parts, st.floats(min_value, max_value))  # every part within [min_value, max_value]


@st.composite
def _preference_row(draw, values: st.SearchStrategy[float], ties: bool) -> tuple[float, float, float, float]:
    pc, pr, rc, rr = (draw(values) for _ in range(4))
    if ties:
        kind = draw(st.sampled_from(["free", "free", "free", "policy=reference", "chosen=rejected", "all-equal"]))
        if kind == "policy=reference":
            pc, pr = rc, rr
        elif kind == "chosen=rejected":
            pr, rr = pc, rc
        elif kind == "all-equal":
            pr = rc = rr = pc
    return pc, pr, rc, rr


@st.composite
def preference_batches(
    draw,
    min_size: int = 1,
    max_size: int = 8,
    *,
    min_value: float = -1e4,
    max_value: float = 0.0,
    ties: bool = True,
) -> PreferenceBatch:
    """Batches of (policy_chosen, policy_rejected, reference_chosen, reference_rejected) log-probs.

    Values lie in [min_value, max_value]; with `ties`, some rows have policy equal to reference
    (margin 0) or chosen equal to rejected.
    """
    rows = draw(st.lists(_preference_row(log_probs(min_value, max_value), ties), min_size=min_size, max_size=max_size))
    columns = zip(*rows)
    return PreferenceBatch(*(torch.tensor(list(c), dtype=torch.float64) for c in columns))


def betas(min_value: float = 1e-3, max_value: float = 1e3) -> st.SearchStrategy[float]:
    """KL coefficients beta > 0 from tiny to large: the usual 0.1 and 0.5, the ends, powers of ten, and a
    log-uniform draw (a uniform one would almost never give beta < 1, where small-beta bugs show)."""
    usual = [v for v in (0.1, 0.5, 1.0, min_value, max_value) if min_value <= v <= max_value]
    powers = [10.0**k for k in range(-3, 4) if min_value <= 10.0**k <= max_value]
    parts = [st.sampled_from(usual)] + ([st.sampled_from(powers)] if powers else [])
    if min_value > 0:
        lo, hi = math.log10(min_value), math.log10(max_value)
        parts.append(st.floats(lo, hi).map(lambda e: min(max(10.0**e, min_value), max_value)))
    else:
        parts.append(st.floats(min_value, max_value, exclude_min=True))
    return st.one_of(*parts)


def taus(min_value: float = 1e-3, max_value: float = 1e3) -> st.SearchStrategy[float]:
    """IPO regularisation strengths tau > 0 (same range as `betas`)."""
    return betas(min_value, max_value)


def label_smoothings(max_value: float = 0.49) -> st.SearchStrategy[float]:
    """cDPO label-flip probabilities eps in (0, max_value]."""
    return st.one_of(st.sampled_from([0.1, 0.25, 1e-3, max_value]), st.floats(1e-4, max_value))


@dataclass
class TokenBatch:
    """Token sequences with their own random logits, ready to be padded either way.

    `rows[i]` is `(labels, logits)` for one unpadded sequence of length L_i: labels `(L_i,)` with
    IGNORE_INDEX on the prompt, logits `(L_i, V)` float64 as a model would give them, aligned with
    the input ids. `padded()` places the rows in a (B, T) batch; pad positions get label IGNORE_INDEX
    and arbitrary (random) logits, which a correct implementation never reads. A row's first label
    (set when it has no prompt) stays at position 0 with right padding, where a correct scorer skips
    it, and becomes IGNORE_INDEX after left padding, where a pad position would otherwise predict it.
    """

    rows: list[tuple[torch.Tensor, torch.Tensor]]
    vocab_size: int
    padding_side: str
    extra_padding: int
    seed: int

    @property
    def lengths(self) -> list[int]:
        return [labels.shape[0] for labels, _ in self.rows]

    def padded(
        self, padding_side: str | None = None, extra_padding: int | None = None, dtype: torch.dtype = torch.float64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(logits (B, T, V), labels (B, T))` with T = max length + extra padding."""
        side = padding_side or self.padding_side
        extra = self.extra_padding if extra_padding is None else extra_padding
        T = max(self.lengths) + extra
        B, V = len(self.rows), self.vocab_size
        gen = torch.Generator().manual_seed(self.seed + 1)
        logits = torch.randn(B, T, V, generator=gen, dtype=torch.float64) * 7.0  # (B, T, V) pad filler
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        for b, (row_labels, row_logits) in enumerate(self.rows):
            L = row_labels.shape[0]
            start = 0 if side == "right" else T - L
            labels[b, start : start + L] = row_labels
            if start > 0:  # left padding: a pad position would predict the first label, which is never scored
                labels[b, start] = IGNORE_INDEX
            logits[b, start : start + L] = row_logits
        return logits.to(dtype), labels

    def packed(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows as one packed row: `(logits (1, N, V), labels (1, N), cu_seqlens (S+1,) int32)`, no padding."""
        labels = torch.cat([lab for lab, _ in self.rows])[None]  # (1, N)
        logits = torch.cat([lg for _, lg in self.rows])[None].to(dtype)  # (1, N, V)
        cu_seqlens = torch.tensor([0, *itertools.accumulate(self.lengths)], dtype=torch.int32)  # (S+1,)
        return logits, labels, cu_seqlens


def _row(gen: torch.Generator, prompt: int, response: int, vocab: int, scale: float, holes: bool):
    """One unpadded row: `prompt` unscored positions, then `response` scored ones, -100 holes in them
    (a third of the response positions but its last) with `holes`. (labels (L,), logits (L, V))."""
    ids = torch.randint(0, vocab, (prompt + response,), generator=gen)
    labels = ids.clone()
    labels[:prompt] = IGNORE_INDEX
    if holes and response > 1:
        hole = torch.rand(response - 1, generator=gen) < 1 / 3  # the last position stays scored
        labels[prompt : prompt + response - 1][hole] = IGNORE_INDEX
    logits = torch.randn(prompt + response, vocab, generator=gen, dtype=torch.float64) * scale
    return labels, logits


@st.composite
def token_batches(
    draw,
    max_batch: int = 4,
    max_prompt: int = 5,
    max_response: int = 6,
    max_vocab: int = 23,
    allow_empty_response: bool = False,
) -> TokenBatch:
    """Token batches with prompts and responses of different lengths, left or right padding.

    Every row is `prompt + response`; the prompt's labels are IGNORE_INDEX. With `extra_padding == 0`
    the longest row reaches the last position. `allow_empty_response` adds rows with nothing to score.
    A prompt may be empty (the first label is then set: nothing predicts it, a correct scorer skips it)
    and a response may have -100 holes; every row still scores at least one label after the first.
    """
    B = draw(st.integers(1, max_batch))
    V = draw(st.integers(2, max_vocab))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))  # peaky or flat distributions
    holes = draw(st.booleans())
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        p = draw(st.integers(0, max_prompt))
        r = draw(st.integers(0 if allow_empty_response else (1 if p else 2), max_response + (p == 0)))
        rows.append(_row(gen, p, r, V, scale, holes))
    side = draw(st.sampled_from(["left", "right"]))
    extra = draw(st.sampled_from([0, 0, 1, 3]))
    return TokenBatch(rows=rows, vocab_size=V, padding_side=side, extra_padding=extra, seed=seed)


@st.composite
def packed_batches(
    draw, max_segments: int = 8, max_length: int = 9, max_vocab: int = 23, boundary: bool = False, average: bool = False
) -> TokenBatch:
    """Segments for one packed row (`TokenBatch.packed()`): lengths from 1 (nothing to score) up, prompts
    from none up, -100 holes. `boundary`: every segment's first label is set (a scorer that predicts across
    a segment boundary scores it). `average`: every segment scores at least one label after its first."""
    S = draw(st.integers(1, max_segments))
    V = draw(st.integers(2, max_vocab))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    holes = draw(st.booleans())
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(S):
        p = 0 if boundary else draw(st.integers(0, max_length - 1))
        least = (1 if p else 2) if average else 0
        r = draw(st.integers(least, max(least, max_length - p)))
        rows.append(_row(gen, p, r, V, scale, holes) if p + r else _row(gen, 0, 1, V, scale, holes))
    return TokenBatch(rows=rows, vocab_size=V, padding_side="right", extra_padding=0, seed=seed)


def fixed_packed_batch(segments: int, max_length: int, vocab: int, seed: int = 0) -> TokenBatch:
    """One deterministic packed batch: `segments` segments of lengths 1..max_length, half without a prompt."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for s in range(segments):
        length = int(torch.randint(1, max_length + 1, (1,), generator=gen))
        prompt = 0 if s % 2 else int(torch.randint(0, length, (1,), generator=gen))
        rows.append(_row(gen, prompt, length - prompt, vocab, 3.0, holes=s % 3 == 0))
    return TokenBatch(rows=rows, vocab_size=vocab, padding_side="right", extra_padding=0, seed=seed)


def fixed_token_batch(batch: int, prompt: int, response: int, vocab: int, seed: int = 0) -> TokenBatch:
    """One deterministic TokenBatch of a given shape (the strategies above draw small shapes; the oracle also
    runs a few fixed large ones: long sequences, a large vocabulary, a large batch)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        ids = torch.randint(0, vocab, (prompt + response,), generator=gen)
        labels = ids.clone()
        labels[:prompt] = IGNORE_INDEX
        rows.append((labels, torch.randn(prompt + response, vocab, generator=gen, dtype=torch.float64) * 3.0))
    return TokenBatch(rows=rows, vocab_size=vocab, padding_side="right", extra_padding=1, seed=seed)


def fixed_preference_batch(size: int = 8, seed: int = 0) -> PreferenceBatch:
    """One deterministic PreferenceBatch of moderate log-probs (for calls repeated on the same input)."""
    gen = torch.Generator().manual_seed(seed)
    return PreferenceBatch(*(-torch.rand(size, generator=gen, dtype=torch.float64) * 40.0 for _ in range(4)))


def scored_token_counts(size: int, max_count: int = 64) -> st.SearchStrategy[tuple[torch.Tensor, torch.Tensor]]:
    """(chosen_lengths, rejected_lengths): scored-token counts >= 1 for `size` pairs, float64, often unequal."""
    counts = st.lists(st.integers(1, max_count), min_size=size, max_size=size)
    return st.tuples(counts, counts).map(lambda c: tuple(torch.tensor(v, dtype=torch.float64) for v in c))


def coefficient(param) -> st.SearchStrategy[float]:
    """The values the checks draw for one registry coefficient (`dpo_ref.variants.Param.draw`)."""
    kind, *args = param.draw
    if kind == "log":
        return betas(*args)
    if kind == "probability":
        return label_smoothings(*args)
    if kind == "uniform":
        return st.floats(*args)
    raise ValueError(f"unknown draw {param.draw!r} for coefficient {param.name}")


@st.composite
def family_coefficients(draw, variant: str) -> dict:
    """Coefficients for the family variant with key `variant` (`dpo_ref.variants.LOSS_FAMILY`), each drawn from
    the range its registry record gives."""
    from dpo_ref.variants import LOSS_FAMILY

    return {p.name: draw(coefficient(p)) for p in LOSS_FAMILY[variant].params}
