"""Broken whole log-prob pipelines, each with ONE realistic bug (its diagnosis is in tests/corpus/pipeline_index.py).

Same signature as the correct ones: `fn(model, tokenizer, examples) -> (chosen_logps, rejected_logps)`. Apart
from the bug, each follows a correct convention (recorded in the index as the convention the bug departs from).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

IGNORE_INDEX = -100


def _pad_id(tokenizer):
    """The id used for padding: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _rows(tokenizer, examples, *, bos=True, eos=True):
    """(prompt_ids, completion_ids) for the 2B rows, chosen rows first, tokenised separately."""
    rows = []
    for key in ("chosen", "rejected"):
        for ex in examples:
            p = tokenizer(ex["prompt"], add_special_tokens=bos)["input_ids"]
            c = tokenizer(ex[key], add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
            rows.append((p, c))
    return rows


def _right_padded(tokenizer, rows, device):
    """input_ids, attention_mask and a completion mask for right-padded rows."""
    pad_id = _pad_id(tokenizer)
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.tensor([p + c + [pad_id] * (width - len(p) - len(c)) for p, c in rows], device=device)
    am = torch.tensor([[1] * (len(p) + len(c)) + [0] * (width - len(p) - len(c)) for p, c in rows], device=device)
    cm = torch.tensor([[0] * len(p) + [1] * len(c) + [0] * (width - len(p) - len(c)) for p, c in rows], device=device)
    return ids, am, cm.bool()


def _masked_sum(logits, input_ids, mask):
    """Sum over t of log_softmax(logits[t-1])[input_ids[t]] where mask[t]."""
    lp = logits[:, :-1].log_softmax(-1).gather(2, input_ids[:, 1:, None]).squeeze(2)
    return (lp * mask[:, 1:]).sum(-1)


# ---- positions and attention -------------------------------------------------------------------------------------


def left_pad_no_position_ids(model, tokenizer, examples):
    """left-padding-without-position-ids: HF-tutorial left padding with an attention mask, but default positions."""
    rows = _rows(tokenizer, examples, bos=False, eos=False)
    pad_id = _pad_id(tokenizer)
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(p) - len(c)) + p + c for p, c in rows], device=model.device)
    attention_mask = torch.arange(width)[None] >= torch.tensor([width - len(p) - len(c) for p, c in rows])[:, None]
    mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for p, c in rows], device=model.device).bool()
    logits = model(input_ids=input_ids, attention_mask=attention_mask.long().to(model.device)).logits
    logps = _masked_sum(logits, input_ids, mask)
    return logps.chunk(2)


def trl_left_padding_no_position_ids(model, tokenizer, examples):
    """left-padding-without-position-ids: a TRL-style 2B batch left-padded, position ids forgotten."""
    rows = _rows(tokenizer, examples)
    pad_id = _pad_id(tokenizer)
    seqs = [torch.tensor(p + c) for p, c in rows]
    flipped = pad_sequence([s.flip(0) for s in seqs], batch_first=True, padding_value=pad_id)
    input_ids = flipped.flip(1).to(model.device)
    loss_mask = pad_sequence([torch.tensor([0] * len(p) + [1] * len(c)).flip(0) for p, c in rows], batch_first=True)
    attention_mask = pad_sequence([torch.ones(len(s), dtype=torch.long) for s in seqs], batch_first=True).flip(1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask.to(model.device)).logits
    all_logps = _masked_sum(logits, input_ids, loss_mask.flip(1).bool().to(model.device))
    b = len(examples)
    return all_logps[:b], all_logps[b:]


def left_pad_mask_forgotten(model, tokenizer, examples):
    """attention-mask-ignored: left padding with correct position ids, but no attention mask passed (pads attended)."""
    rows = _rows(tokenizer, examples, bos=False, eos=False)
    pad_id = _pad_id(tokenizer)
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(p) - len(c)) + p + c for p, c in rows], device=model.device)
    attention_mask = torch.tensor([[0] * (width - len(p) - len(c)) + [1] * (len(p) + len(c)) for p, c in rows])
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0).to(model.device)
    mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for p, c in rows], device=model.device).bool()
    logits = model(input_ids=input_ids, position_ids=position_ids).logits
    return _masked_sum(logits, input_ids, mask).chunk(2)


def packed_rows_all_ones_mask(model, tokenizer, examples):
    """depends-on-batch: rows packed with reset positions, but an all-ones 2-D mask: rows see earlier rows."""
    rows = _rows(tokenizer, examples, eos=False)
    ids, pos, seg, scored = [], [], [], []
    for r, (p, c) in enumerate(rows):
        ids += p + c
        pos += list(range(len(p) + len(c)))
        seg += [r] * (len(p) + len(c))
        scored += [0] * len(p) + [1] * len(c)
    input_ids = torch.tensor([ids], device=model.device)
    logits = model(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        position_ids=torch.tensor([pos], device=model.device),
    ).logits[0]
    lp = logits[:-1].log_softmax(-1).gather(1, input_ids[0, 1:, None])[:, 0]
    lp = lp * torch.tensor(scored[1:], device=model.device)
    out = torch.zeros(len(rows), dtype=lp.dtype, device=model.device).index_add(0, torch.tensor(seg[1:]), lp)
    return out[: len(examples)], out[len(examples) :]


# ---- which tokens are scored -------------------------------------------------------------------------------------


def pads_scored_right_padding(model, tokenizer, examples):
    """pads-scored: the loss mask is 'every position after the prompt', so right pads count as completion tokens."""
    rows = _rows(tokenizer, examples)
    input_ids, attention_mask, _ = _right_padded(tokenizer, rows, model.device)
    prompt_lens = torch.tensor([len(p) for p, _ in rows], device=model.device)
    loss_mask = torch.arange(input_ids.shape[1], device=model.device)[None] >= prompt_lens[:, None]
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return _masked_sum(logits, input_ids, loss_mask).chunk(2)


def torchtune_labels_padded_with_pad_id(model, tokenizer, examples):
    """pads-scored: torchtune-style, but the labels are padded with the pad id instead of ignore_index."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens, labels = [], []
    for key in ("chosen", "rejected"):
        for ex in examples:
            prompt = tokenizer.encode(ex["prompt"])
            answer = tokenizer.encode(ex[key], add_special_tokens=False) + [tokenizer.eos_token_id]
            tokens.append(torch.tensor(prompt + answer))
            labels.append(torch.tensor([IGNORE_INDEX] * len(prompt) + answer))
    input_ids = pad_sequence(tokens, batch_first=True, padding_value=pad_id).to(model.device)
    labels = pad_sequence(labels, batch_first=True, padding_value=pad_id).to(model.device)
    logits = model(input_ids).logits[:, :-1]
    labels = labels[:, 1:].clone()
    loss_mask = labels != IGNORE_INDEX
    labels[~loss_mask] = 0
    per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    all_logps = (per_token * loss_mask).sum(-1)
    return all_logps[: len(examples)], all_logps[len(examples) :]


def prompt_scored_attention_mask_as_loss_mask(model, tokenizer, examples):
    """prompt-scored: the attention mask reused as the loss mask, so prompt tokens are scored too."""
    rows = _rows(tokenizer, examples)
    input_ids, attention_mask, _ = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return _masked_sum(logits, input_ids, attention_mask.bool()).chunk(2)


def llamafactory_labels_not_masked(model, tokenizer, examples):
    """prompt-scored: LLaMA-Factory-style, but labels = input_ids.clone() with only the pads set to IGNORE_INDEX."""
    rows = _rows(tokenizer, examples, bos=False)
    input_ids, attention_mask, _ = _right_padded(tokenizer, rows, model.device)
    labels = input_ids.clone()
    labels[attention_mask == 0] = IGNORE_INDEX
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    labels = labels[:, 1:].clone()
    loss_mask = labels != IGNORE_INDEX
    labels[labels == IGNORE_INDEX] = 0
    logps = (torch.gather(logits[:, :-1].log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2) * loss_mask).sum(-1)
    chosen, rejected = logps.split(logps.size(0) // 2, dim=0)
    return chosen, rejected


def mask_applied_after_shift(model, tokenizer, examples):
    """first-completion-token-dropped: the prompt is masked on the already-shifted labels, one position too far."""
    rows = _rows(tokenizer, examples)
    input_ids, attention_mask, _ = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    labels = input_ids[:, 1:]
    loss_mask = attention_mask[:, 1:].bool().clone()
    for i, (p, _) in enumerate(rows):
        loss_mask[i, : len(p)] = False  # should be len(p) - 1 on shifted labels
    per_token = logits.log_softmax(-1).gather(2, labels.unsqueeze(2)).squeeze(2)
    return (per_token * loss_mask).sum(-1).chunk(2)


def separator_token_masked(model, tokenizer, examples):
    """first-completion-token-dropped: torchtune-style labels masking the completion's first token as a 'separator'."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens, labels = [], []
    for key in ("chosen", "rejected"):
        for ex in examples:
            prompt = tokenizer.encode(ex["prompt"], add_special_tokens=False)
            answer = tokenizer.encode(ex[key], add_special_tokens=False) + [tokenizer.eos_token_id]
            tokens.append(torch.tensor(prompt + answer))
            labels.append(torch.tensor([IGNORE_INDEX] * (len(prompt) + 1) + answer[1:]))
    input_ids = pad_sequence(tokens, batch_first=True, padding_value=pad_id).to(model.device)
    labels = pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX).to(model.device)
    logits = model(input_ids).logits[:, :-1]
    labels = labels[:, 1:].clone()
    loss_mask = labels != IGNORE_INDEX
    labels[~loss_mask] = 0
    per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    all_logps = (per_token * loss_mask).sum(-1)
    return all_logps[: len(examples)], all_logps[len(examples) :]


def truncated_to_max_length(model, tokenizer, examples):
    """truncated: every concatenated row silently cut to max_length=16 tokens before the forward pass."""
    max_length = 16
    rows = []
    for p, c in _rows(tokenizer, examples):
        full = (p + c)[:max_length]
        rows.append((full[: len(p)], full[len(p) :]))
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return _masked_sum(logits, input_ids, loss_mask).chunk(2)


def tokenizer_truncation(model, tokenizer, examples):
    """truncated: joint tokenisation with tokenizer(..., truncation=True, max_length=16): long rows lose their ends."""
    rows = []
    for key in ("chosen", "rejected"):
        for ex in examples:
            full = tokenizer(ex["prompt"] + ex[key], truncation=True, max_length=16)["input_ids"]
            n = len(tokenizer(ex["prompt"])["input_ids"])
            rows.append((full[:n], full[n:]))
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return _masked_sum(logits, input_ids, loss_mask).chunk(2)


def bos_in_the_middle(model, tokenizer, examples):
    """bos-in-the-middle: the completion tokenised with special tokens, so a BOS sits between prompt and completion."""
    rows = []
    for key in ("chosen", "rejected"):
        for ex in examples:
            p = tokenizer(ex["prompt"])["input_ids"]
            c = tokenizer(ex[key])["input_ids"] + [tokenizer.eos_token_id]
            rows.append((p, c))
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return _masked_sum(logits, input_ids, loss_mask).chunk(2)


def eos_masked_as_pad(model, tokenizer, examples):
    """eos-scored-as-pad: pad = EOS when there is no pad token, labels == pad masked: the appended EOS is lost."""
    if tokenizer.pad_token_id is None:
        pad_id = tokenizer.eos_token_id  # the usual `tokenizer.pad_token = tokenizer.eos_token`
    else:
        pad_id = tokenizer.pad_token_id
    ids, labels = [], []
    for key in ("chosen", "rejected"):
        for ex in examples:
            p = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
            c = tokenizer(ex[key], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids.append(torch.tensor(p + c))
            labels.append(torch.tensor([IGNORE_INDEX] * len(p) + c))
    input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_id).to(model.device)
    labels = pad_sequence(labels, batch_first=True, padding_value=pad_id).to(model.device)
    labels[labels == pad_id] = IGNORE_INDEX
    attention_mask = (input_ids != pad_id).long()
    attention_mask[:, 0] = 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    labels = labels[:, 1:]
    loss_mask = labels != IGNORE_INDEX
    lp = logits.log_softmax(-1).gather(2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
    return (lp * loss_mask).sum(-1).chunk(2)


# ---- rows of the batch -------------------------------------------------------------------------------------------


def sorted_not_restored(model, tokenizer, examples):
    """rows-reordered: rows sorted by length (longest first) to save padding and never put back."""
    rows = _rows(tokenizer, examples)
    b = len(examples)
    chosen_rows = sorted(rows[:b], key=lambda r: -(len(r[0]) + len(r[1])))
    rejected_rows = sorted(rows[b:], key=lambda r: -(len(r[0]) + len(r[1])))
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, chosen_rows + rejected_rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logps = _masked_sum(logits, input_ids, loss_mask)
    return logps[:b], logps[b:]


def chosen_rejected_swapped(model, tokenizer, examples):
    """chosen-rejected-swapped: the 2B batch is chosen-first but unpacked as `rejected, chosen = logps.chunk(2)`."""
    rows = _rows(tokenizer, examples)
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    rejected, chosen = _masked_sum(logits, input_ids, loss_mask).chunk(2)
    return chosen, rejected


def rows_shifted_by_one(model, tokenizer, examples):
    """rows-shifted: an off-by-one slice takes rejected from rows B-1 .. 2B-2 of the concatenated batch."""
    rows = _rows(tokenizer, examples)
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logps = _masked_sum(logits, input_ids, loss_mask)
    b = len(examples)
    return logps[:b], logps[b - 1 : 2 * b - 1]


def first_row_prompt_length(model, tokenizer, examples):
    """depends-on-batch: the prompt length of the batch's first row used to mask every row."""
    rows = _rows(tokenizer, examples)
    input_ids, attention_mask, _ = _right_padded(tokenizer, rows, model.device)
    prompt_len = len(rows[0][0])
    loss_mask = attention_mask.bool().clone()
    loss_mask[:, :prompt_len] = False
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return _masked_sum(logits, input_ids, loss_mask).chunk(2)


# ---- reductions --------------------------------------------------------------------------------------------------


def normalised_by_batch_tokens(model, tokenizer, examples):
    """batch-normalised: meant a per-row mean, but divides by loss_mask.sum() over the whole batch (dim forgotten)."""
    rows = _rows(tokenizer, examples)
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    lp = logits[:, :-1].log_softmax(-1).gather(2, input_ids[:, 1:, None]).squeeze(2)
    mask = loss_mask[:, 1:]
    logps = (lp * mask).sum(-1) / mask.sum()
    return logps.chunk(2)


def scaled_by_mean_length(model, tokenizer, examples):
    """batch-normalised: sums divided by the batch's mean completion length ('length-normalised' across the batch)."""
    rows = _rows(tokenizer, examples, bos=False)
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    sums = _masked_sum(logits, input_ids, loss_mask)
    mean_len = loss_mask[:, 1:].sum(-1).double().mean()
    return (sums / mean_len).chunk(2)


def per_token_mean(model, tokenizer, examples):
    """mean-not-sum: the per-row mean log-prob over completion tokens instead of the sum."""
    rows = _rows(tokenizer, examples)
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    lp = logits[:, :-1].log_softmax(-1).gather(2, input_ids[:, 1:, None]).squeeze(2)
    mask = loss_mask[:, 1:]
    return ((lp * mask).sum(-1) / mask.sum(-1)).chunk(2)


def llamafactory_average_log_prob(model, tokenizer, examples):
    """mean-not-sum: LLaMA-Factory-style split in halves, returning all_logps / valid_length (the IPO/ORPO branch)."""
    rows = _rows(tokenizer, examples, bos=False)
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    labels = input_ids.masked_fill(~loss_mask, IGNORE_INDEX)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    labels = labels[:, 1:].clone()
    mask = labels != IGNORE_INDEX
    labels[~mask] = 0
    all_logps = (torch.gather(logits[:, :-1].log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2) * mask).sum(-1)
    valid_length = mask.sum(-1)
    chosen, rejected = (all_logps / valid_length).split(len(examples), dim=0)
    return chosen, rejected


# ---- the graph and the model's state -----------------------------------------------------------------------------


def detached_logps(model, tokenizer, examples):
    """detached: the log-probs .detach()ed 'to save memory' before they are returned."""
    rows = _rows(tokenizer, examples)
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logps = _masked_sum(logits, input_ids, loss_mask).detach()
    return logps.chunk(2)


def scored_under_no_grad(model, tokenizer, examples):
    """detached: the policy scored under torch.no_grad(), as one would for the reference model."""
    rows = _rows(tokenizer, examples, eos=False)
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        logps = _masked_sum(logits, input_ids, loss_mask)
    return logps.chunk(2)


def leaves_train_mode(model, tokenizer, examples):
    """model-left-in-train-mode: calls model.train() for the policy forward and never restores eval mode."""
    model.train()
    rows = _rows(tokenizer, examples)
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return _masked_sum(logits, input_ids, loss_mask).chunk(2)


def backward_inside(model, tokenizer, examples):
    """model-grad-left: a 'gradient sanity check' calls backward inside and leaves the .grad on the parameters."""
    rows = _rows(tokenizer, examples)
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logps = _masked_sum(logits, input_ids, loss_mask)
    margin = F.logsigmoid(logps[: len(examples)] - logps[len(examples) :]).mean()
    margin.backward(retain_graph=True)
    grad_norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters() if p.grad is not None))
    assert torch.isfinite(grad_norm)
    return logps.chunk(2)


def freezes_embeddings(model, tokenizer, examples):
    """requires-grad-changed: freezes the input embeddings 'to save memory' and leaves them frozen."""
    model.get_input_embeddings().requires_grad_(False)
    rows = _rows(tokenizer, examples)
    input_ids, attention_mask, loss_mask = _right_padded(tokenizer, rows, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return _masked_sum(logits, input_ids, loss_mask).chunk(2)
