"""Correct sequence log-prob functions with the other common signatures, for the oracle's adapters.

The adapter each needs is in its index entry (`options={"adapter": ...}`):
- "loss_mask": fn(logits (B, T, V), labels (B, T), loss_mask (B, T)) -> (B,); labels are token ids at every
  position, loss_mask is 1 where the token is scored, aligned with labels (the logits at t score labels[t + 1]).
- "input_ids_mask": fn(logits, input_ids (B, T), response_mask (B, T)) -> (B,); the mask is 1 on the response
  tokens of input_ids (the tokens to score), aligned with input_ids.
- "concatenated": fn(concatenated_logits (2B, T, V), concatenated_labels (2B, T)) -> (chosen (B,), rejected (B,)),
  chosen rows first, labels as in the (logits, labels) convention (-100 not scored).
- "hidden_states": fn(hidden_states (B, T, H), lm_head_weight (V, H), labels (B, T)) -> (B,), logits = h W^T.
Written as third-party code would be (not importing dpo_ref).
"""

import torch
import torch.nn.functional as F


def loss_mask_slice(logits, labels, loss_mask):
    """loss_mask: slice-shift labels and mask, gather, multiply by the mask."""
    labels = labels[:, 1:]
    loss_mask = loss_mask[:, 1:].bool()
    logits = logits[:, :-1]
    per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    return torch.where(loss_mask, per_token, 0.0).sum(-1)


def loss_mask_roll(logits, labels, loss_mask):
    """loss_mask: shift by torch.roll(-1) over the whole row (newer TRL's style), the wrapped-around last position
    masked (it would carry loss_mask[:, 0], set when a row has no prompt)."""
    labels = torch.roll(labels, shifts=-1, dims=1)
    loss_mask = torch.roll(loss_mask, shifts=-1, dims=1).bool()
    loss_mask[:, -1] = False
    per_token = torch.gather(logits.float().log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    per_token[~loss_mask] = 0
    return per_token.sum(1)


def loss_mask_roll_unmasked_wrap(logits, labels, loss_mask):
    """loss_mask: the same roll, the wrap not masked: relies on loss_mask[:, 0] being 0 (a prompt token first),
    so a row without a prompt scores its first token with the row's last logits."""
    labels = torch.roll(labels, shifts=-1, dims=1)
    loss_mask = torch.roll(loss_mask, shifts=-1, dims=1).bool()
    per_token = torch.gather(logits.float().log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    per_token[~loss_mask] = 0
    return per_token.sum(1)


def input_ids_response_mask(logits, input_ids, response_mask):
    """input_ids_mask: log_softmax over logits[:, :-1], ids input_ids[:, 1:], weighted by the shifted mask."""
    log_probs = F.log_softmax(logits[:, :-1, :], dim=-1)
    token_log_probs = log_probs.gather(dim=-1, index=input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    action_mask = response_mask[:, 1:].to(token_log_probs.dtype)
    return (token_log_probs * action_mask).sum(dim=-1)


def concatenated_halves(concatenated_logits, concatenated_labels):
    """concatenated: one pass over chosen and rejected stacked, split into the two halves."""
    n = concatenated_logits.shape[0] // 2
    labels = concatenated_labels[:, 1:].clone()
    logits = concatenated_logits[:, :-1, :]
    mask = labels != -100
    labels[~mask] = 0
    per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    all_logps = (per_token * mask).sum(-1)
    return all_logps[:n], all_logps[n:]


def hidden_states_full(hidden_states, lm_head_weight, labels):
    """hidden_states: logits = hidden_states @ W^T, then -cross_entropy per token, summed per row."""
    logits = hidden_states[:, :-1] @ lm_head_weight.T  # (B, T-1, V)
    nll = F.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="none", ignore_index=-100)
    return -nll.sum(-1)


def hidden_states_chunked_float32(hidden_states, lm_head_weight, labels, chunk_size=3):
    """hidden_states: the LM head applied in float32 over chunks of positions (a fused-kernel's memory saving)."""
    B, T, _ = hidden_states.shape
    h = hidden_states[:, :-1].float()
    w = lm_head_weight.float()
    lb = labels[:, 1:]
    total = torch.zeros(B, dtype=torch.float32)
    for start in range(0, T - 1, chunk_size):
        stop = min(start + chunk_size, T - 1)
        logits = torch.matmul(h[:, start:stop], w.t())  # (B, c, V)
        tgt = lb[:, start:stop]
        lp = logits.log_softmax(-1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total = total + lp.masked_fill(tgt == -100, 0.0).sum(-1)
    return total
