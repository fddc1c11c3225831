"""Small adapters: verify log-prob functions of other common shapes at the log-prob level.

The oracle calls a log-prob target as `fn(logits (B, T, V), labels (B, T))`, labels aligned with the input
ids and -100 where nothing is scored. Libraries often take something else; wrap yours and verify the result:

    from dpo_ref.oracle.adapters import from_loss_mask
    dpo_ref.verify(from_loss_mask(my_logps), level="logps")          # my_logps(logits, labels, loss_mask)

Each adapter only translates the inputs (it computes nothing itself), so whatever the oracle finds is the
wrapped function's doing:
- `from_loss_mask(fn)`: `fn(logits, labels, loss_mask)`, labels = token ids everywhere (0 where unscored),
  `loss_mask` 1 where `labels[t]` is scored, aligned with labels (`shifted=True`: aligned with
  `labels[:, 1:]`, shape (B, T - 1)).
- `from_input_ids_mask(fn)`: `fn(logits, input_ids, mask)`, the same translation under the other naming.
- `from_concatenated(fn)`: `fn(logits (2B, T, V), labels (2B, T)) -> (chosen (B,), rejected (B,))` or a
  (2B,) tensor: chosen and rejected concatenated along the batch. The rows are fed as chosen and, rolled
  by one, as rejected; the adapter returns the chosen half and checks the rejected half scores the same rows.
- `from_hidden_states(fn)`: `fn(hidden_states (B, T, H), lm_head_weight (V, H), labels)`: the logits are
  passed as hidden states with an identity LM head (H = V), so hidden @ weight.T is exactly the logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dpo_ref.checks.strategies import IGNORE_INDEX

LogpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def from_loss_mask(fn: Callable, *, shifted: bool = False, fill_id: int = 0) -> LogpsFn:
    """`fn(logits, labels, loss_mask)` as `fn(logits, labels)` with -100 marking what is not scored."""

    def logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mask = (labels != IGNORE_INDEX).long()  # (B, T)
        ids = labels.masked_fill(labels == IGNORE_INDEX, fill_id)  # (B, T)
        return _first(fn(logits, ids, mask[:, 1:] if shifted else mask))

    logps.__qualname__ = f"from_loss_mask({getattr(fn, '__qualname__', 'fn')})"
    return logps


def from_input_ids_mask(fn: Callable, *, shifted: bool = False, fill_id: int = 0) -> LogpsFn:
    """`fn(logits, input_ids, mask)` as `fn(logits, labels)`; see `from_loss_mask`."""
    adapted = from_loss_mask(fn, shifted=shifted, fill_id=fill_id)
    adapted.__qualname__ = f"from_input_ids_mask({getattr(fn, '__qualname__', 'fn')})"
    return adapted


def from_concatenated(fn: Callable) -> LogpsFn:
    """`fn(logits (2B, T, V), labels (2B, T))` returning chosen and rejected halves, as `fn(logits, labels)`."""

    def logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B = logits.shape[0]
        out = fn(torch.cat([logits, logits.roll(1, 0)]), torch.cat([labels, labels.roll(1, 0)]))
        if isinstance(out, tuple) and len(out) >= 2:
            chosen, rejected = out[0], out[1]
        else:
            chosen, rejected = out[:B], out[B:]
        again = chosen.detach().roll(1, 0)
        if rejected.shape != again.shape or not torch.allclose(rejected.detach().double(), again.double(), atol=1e-5):
            raise AssertionError(
                "the rejected half does not score the rows it was given the way the chosen half does "
                f"(chosen rolled by one: {again.tolist()}, rejected: {rejected.detach().tolist()})"
            )
        return chosen

    logps.__qualname__ = f"from_concatenated({getattr(fn, '__qualname__', 'fn')})"
    return logps


def _exact_lm_head(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (B, T, H) and an LM-head weight W (V, H), H = V + 3, with hidden @ W.T == logits exactly:
    W = [P D | 0], a permutation P scaled row by row by powers of two D, then three zero columns. Every logit is
    one product by a power of two, so no rounding. A non-square, non-symmetric, unevenly scaled W makes a
    missing transpose fail (shapes), and any other use of W (row norms, W.T @ ..., another scale) give other
    values, which an identity head cannot tell apart."""
    vocab, dtype = logits.shape[-1], logits.dtype
    perm = torch.roll(torch.arange(vocab), 1)  # (V,) row i of W reads hidden column perm[i]
    scale = 2.0 ** (torch.arange(vocab) % 5 - 2).to(dtype)  # (V,) 1/4 .. 4
    weight = torch.zeros(vocab, vocab + 3, dtype=dtype)
    weight[torch.arange(vocab), perm] = scale
    hidden = torch.zeros(*logits.shape[:-1], vocab + 3, dtype=dtype)  # (B, T, H)
    hidden[..., perm] = logits / scale  # placed, not multiplied: no 0 * inf
    return hidden, weight


def from_hidden_states(fn: Callable) -> LogpsFn:
    """`fn(hidden_states, lm_head_weight, labels)` as `fn(logits, labels)`: the hidden states and an LM-head
    weight (V, H = V + 3) are built so that `hidden_states @ lm_head_weight.T` equals the logits exactly."""

    def logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden, weight = _exact_lm_head(logits)  # hidden carries the logits' graph (the gradient checks)
        return _first(fn(hidden, weight, labels))

    logps.__qualname__ = f"from_hidden_states({getattr(fn, '__qualname__', 'fn')})"
    return logps
