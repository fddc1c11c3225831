"""Correct whole log-prob pipelines, in the styles real DPO trainers use (written here, never copied).

Every function: `fn(model, tokenizer, examples) -> (chosen_logps, rejected_logps)`, two (B,) tensors of the summed
log-probs of each completion's tokens given its prompt, with the graph to the model kept and the model left as it
was. The convention each one uses (separate or joint tokenisation, BOS, EOS) is in tests/corpus/pipeline_index.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

IGNORE_INDEX = -100


def _pad_id(tokenizer):
    """The id used for padding: the tokenizer's pad token, else its EOS (always masked out)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def trl_concatenated_forward(model, tokenizer, examples):
    """TRL-style concatenated forward: chosen and rejected stacked into one 2B batch, right padding, a loss mask."""
    device = model.device
    pad_id = _pad_id(tokenizer)
    rows, masks = [], []
    for key in ("chosen", "rejected"):
        for ex in examples:
            prompt_ids = tokenizer(ex["prompt"])["input_ids"]
            completion_ids = tokenizer(ex[key], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append(prompt_ids + completion_ids)
            masks.append([0] * len(prompt_ids) + [1] * len(completion_ids))
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    loss_mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], device=device, dtype=torch.bool)

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    labels = input_ids[:, 1:].clone()
    loss_mask = loss_mask[:, 1:]
    labels[~loss_mask] = 0
    per_token_logps = torch.gather(logits[:, :-1].log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    all_logps = (per_token_logps * loss_mask).sum(-1)
    num_examples = len(examples)
    return all_logps[:num_examples], all_logps[num_examples:]


def torchtune_style(model, tokenizer, examples):
    """torchtune-style: per-row token lists, labels padded with ignore_index, logits[:, :-1] against labels[:, 1:]."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    chosen_tokens, chosen_labels, rejected_tokens, rejected_labels = [], [], [], []
    for ex in examples:
        prompt = tokenizer.encode(ex["prompt"], add_special_tokens=True)
        for key, toks, labs in (
            ("chosen", chosen_tokens, chosen_labels),
            ("rejected", rejected_tokens, rejected_labels),
        ):
            answer = tokenizer.encode(ex[key], add_special_tokens=False) + [tokenizer.eos_token_id]
            toks.append(torch.tensor(prompt + answer))
            labs.append(torch.tensor([IGNORE_INDEX] * len(prompt) + answer))
    concatenated_input_ids = pad_sequence(chosen_tokens + rejected_tokens, batch_first=True, padding_value=pad_id)
    concatenated_labels = pad_sequence(chosen_labels + rejected_labels, batch_first=True, padding_value=IGNORE_INDEX)
    concatenated_input_ids = concatenated_input_ids.to(model.device)
    concatenated_labels = concatenated_labels.to(model.device)

    logits = model(concatenated_input_ids).logits  # right padding: causal attention never sees the pads
    labels = concatenated_labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != IGNORE_INDEX
    labels[labels == IGNORE_INDEX] = 0
    per_token_log_probs = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    all_log_probs = (per_token_log_probs * loss_mask).sum(-1)
    len_chosen = len(chosen_tokens)
    return all_log_probs[:len_chosen], all_log_probs[len_chosen:]


def left_padded_with_position_ids(model, tokenizer, examples):
    """Left padding with position ids from the attention mask (cumsum - 1, clamped); no BOS, no EOS."""
    device = model.device
    pad_id = _pad_id(tokenizer)
    seqs, prompt_lens = [], []
    for key in ("chosen", "rejected"):
        for ex in examples:
            p = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
            c = tokenizer(ex[key], add_special_tokens=False)["input_ids"]
            seqs.append(p + c)
            prompt_lens.append(len(p))
    width = max(map(len, seqs))
    input_ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], device=device)
    attention_mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    completion_mask = torch.zeros_like(attention_mask, dtype=torch.bool)
    for i, s in enumerate(seqs):
        completion_mask[i, width - len(s) + prompt_lens[i] :] = True

    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    logprobs = out.logits[:, :-1].log_softmax(dim=-1)
    targets = input_ids[:, 1:]
    token_logps = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    sums = token_logps.masked_fill(~completion_mask[:, 1:], 0.0).sum(dim=1)
    chosen, rejected = sums.chunk(2)
    return chosen, rejected


def row_by_row_joint(model, tokenizer, examples):
    """One unpadded row at a time; joint tokenisation, the completion being the tokens after the prompt's."""
    results = {"chosen": [], "rejected": []}
    for ex in examples:
        n_prompt = len(tokenizer(ex["prompt"]).input_ids)
        for key in results:
            ids = tokenizer(ex["prompt"] + ex[key]).input_ids
            logits = model(torch.tensor([ids], device=model.device)).logits[0]
            logps = torch.log_softmax(logits[:-1], dim=-1)
            target = torch.tensor(ids[1:], device=model.device)
            token_logps = logps[torch.arange(len(ids) - 1), target]
            results[key].append(token_logps[n_prompt - 1 :].sum())
    return torch.stack(results["chosen"]), torch.stack(results["rejected"])


def _build_tokenized_answer(tokenizer, prompt, answer):
    """Old-TRL-style: tokenise prompt+answer together and split at the prompt's length."""
    full = tokenizer(prompt + answer)["input_ids"]
    prompt_len = len(tokenizer(prompt)["input_ids"])
    return full[:prompt_len], full[prompt_len:]


def joint_tokenization_batched(model, tokenizer, examples):
    """Old-TRL-style build_tokenized_answer (joint tokenisation), EOS appended and scored, labels with -100, batched."""
    pad_id = _pad_id(tokenizer)
    input_rows, label_rows = [], []
    for key in ("chosen", "rejected"):
        for ex in examples:
            prompt_ids, answer_ids = _build_tokenized_answer(tokenizer, ex["prompt"], ex[key])
            answer_ids = answer_ids + [tokenizer.eos_token_id]
            input_rows.append(prompt_ids + answer_ids)
            label_rows.append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)
    max_len = max(len(r) for r in input_rows)
    input_ids = torch.full((len(input_rows), max_len), pad_id, dtype=torch.long)
    labels = torch.full((len(input_rows), max_len), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(input_rows), max_len), dtype=torch.long)
    for i, (r, lab) in enumerate(zip(input_rows, label_rows)):
        input_ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(r)] = 1
    logits = model(input_ids.to(model.device), attention_mask=attention_mask.to(model.device)).logits
    logps = _get_batch_logps(logits, labels.to(model.device))
    return logps[: len(examples)], logps[len(examples) :]


def _get_batch_logps(logits, labels):
    """The classic get_batch_logps: shift, mask -100, gather, sum."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != IGNORE_INDEX
    labels[labels == IGNORE_INDEX] = 0
    per_token_logps = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    return (per_token_logps * loss_mask).sum(-1)


def no_pad_token_pad_with_eos(model, tokenizer, examples):
    """A tokenizer without a pad token: pad with EOS but mask by length, so the appended EOS is still scored."""
    eos = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    batch = []
    for key in ("chosen", "rejected"):
        for ex in examples:
            p = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
            c = tokenizer(ex[key], add_special_tokens=False)["input_ids"] + [eos]
            batch.append((p + c, len(p)))
    lengths = torch.tensor([len(ids) for ids, _ in batch])
    starts = torch.tensor([n for _, n in batch])
    width = int(lengths.max())
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for i, (ids, _) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
    cols = torch.arange(width)
    attention_mask = (cols[None, :] < lengths[:, None]).long()
    # scored targets are at columns [start, length): masks from lengths, never from token ids
    target_cols = cols[1:]
    loss_mask = (target_cols[None, :] >= starts[:, None]) & (target_cols[None, :] < lengths[:, None])
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logps = logits[:, :-1].log_softmax(-1).gather(2, input_ids[:, 1:, None]).squeeze(2)
    summed = (logps * loss_mask.to(model.device)).sum(1)
    half = len(examples)
    return summed[:half], summed[half:]


def separate_forward_passes(model, tokenizer, examples):
    """Chosen and rejected batches through the model in two separate forward passes (BOS on the prompt, no EOS)."""

    def batch_logps(key):
        pad_id = _pad_id(tokenizer)
        ids, lab = [], []
        for ex in examples:
            p = tokenizer(ex["prompt"])["input_ids"]
            c = tokenizer(ex[key], add_special_tokens=False)["input_ids"]
            ids.append(torch.tensor(p + c))
            lab.append(torch.tensor([IGNORE_INDEX] * len(p) + c))
        input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_id).to(model.device)
        labels = pad_sequence(lab, batch_first=True, padding_value=IGNORE_INDEX).to(model.device)
        attention_mask = pad_sequence([torch.ones(len(x), dtype=torch.long) for x in ids], batch_first=True)
        logits = model(input_ids, attention_mask=attention_mask.to(model.device)).logits
        return _get_batch_logps(logits, labels)

    return batch_logps("chosen"), batch_logps("rejected")


def sorted_by_length_restored(model, tokenizer, examples):
    """Rows sorted by length (longest first) to save padding, then put back in the original order."""
    pad_id = _pad_id(tokenizer)
    rows = []
    for key in ("chosen", "rejected"):
        for ex in examples:
            p = tokenizer(ex["prompt"])["input_ids"]
            c = tokenizer(ex[key], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append((p + c, [IGNORE_INDEX] * len(p) + c))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    input_ids = pad_sequence([torch.tensor(rows[i][0]) for i in order], batch_first=True, padding_value=pad_id)
    labels = pad_sequence([torch.tensor(rows[i][1]) for i in order], batch_first=True, padding_value=IGNORE_INDEX)
    attention_mask = (labels != IGNORE_INDEX) | (torch.arange(labels.shape[1]) < torch.tensor(
        [len(rows[i][0]) for i in order])[:, None])  # fmt: skip
    logits = model(input_ids.to(model.device), attention_mask=attention_mask.long().to(model.device)).logits
    sorted_logps = _get_batch_logps(logits, labels.to(model.device))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    logps = sorted_logps[inverse.to(sorted_logps.device)]
    return logps[: len(examples)], logps[len(examples) :]


def openrlhf_style(model, tokenizer, examples):
    """OpenRLHF-style: prompt+response+eos text tokenised together, prompt_id_lens mask, position ids."""
    eos_text = tokenizer.eos_token
    prompt_id_lens, sequences = [], []
    for key in ("chosen", "rejected"):
        for ex in examples:
            prompt_id_lens.append(len(tokenizer(ex["prompt"])["input_ids"]))
            sequences.append(tokenizer(ex["prompt"] + ex[key] + eos_text)["input_ids"])
    pad_id = _pad_id(tokenizer)
    max_len = max(len(s) for s in sequences)
    input_ids = torch.tensor([s + [pad_id] * (max_len - len(s)) for s in sequences], device=model.device)
    attention_mask = torch.tensor([[1] * len(s) + [0] * (max_len - len(s)) for s in sequences], device=model.device)
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    output = model(input_ids, attention_mask=attention_mask, position_ids=position_ids)
    log_probs = output.logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    loss_masks = attention_mask.clone().bool()
    for i, source_len in enumerate(prompt_id_lens):
        loss_masks[i, :source_len] = False
    loss_masks = loss_masks[:, 1:]
    logps_sum = (log_probs * loss_masks).sum(-1)
    chosen_logps = logps_sum[: len(examples)]
    rejected_logps = logps_sum[len(examples) :]
    return chosen_logps, rejected_logps


def llamafactory_style(model, tokenizer, examples):
    """LLaMA-Factory-style: labels with IGNORE_INDEX on the prompt, one 2B batch split in half with torch.split."""
    input_ids, labels = [], []
    for key in ("chosen", "rejected"):
        for ex in examples:
            source_ids = tokenizer.encode(ex["prompt"], add_special_tokens=False)
            target_ids = tokenizer.encode(ex[key], add_special_tokens=False) + [tokenizer.eos_token_id]
            input_ids.append(source_ids + target_ids)
            labels.append([IGNORE_INDEX] * len(source_ids) + target_ids)
    pad = _pad_id(tokenizer)
    longest = max(len(x) for x in input_ids)
    batch = {
        "input_ids": torch.tensor([x + [pad] * (longest - len(x)) for x in input_ids]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x in input_ids]),
        "labels": torch.tensor([x + [IGNORE_INDEX] * (longest - len(x)) for x in labels]),
    }
    batch = {k: v.to(model.device) for k, v in batch.items()}
    all_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    all_logps, valid_length = _llamafactory_batch_logps(all_logits, batch["labels"])
    batch_size = batch["input_ids"].size(0) // 2
    chosen_logps, rejected_logps = all_logps.split(batch_size, dim=0)
    return chosen_logps, rejected_logps


def _llamafactory_batch_logps(logits, labels):
    """(sum of label log-probs, number of valid labels) per row."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != IGNORE_INDEX
    labels[labels == IGNORE_INDEX] = 0
    per_token_logps = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    return (per_token_logps * loss_mask).sum(-1), loss_mask.sum(-1)


def packed_block_diagonal_mask(model, tokenizer, examples):
    """Padding-free: every row in one sequence, position ids reset per row, a 4-D block-diagonal causal mask."""
    device = model.device
    ids, pos, seg, scored = [], [], [], []
    for key in ("chosen", "rejected"):
        for ex in examples:
            p = tokenizer(ex["prompt"])["input_ids"]
            c = tokenizer(ex[key], add_special_tokens=False)["input_ids"]
            row = len(seg) and seg[-1] + 1
            ids += p + c
            pos += list(range(len(p) + len(c)))
            seg += [row] * (len(p) + len(c))
            scored += [False] * len(p) + [True] * len(c)
    n = len(ids)
    seg_t = torch.tensor(seg, device=device)
    allowed = (seg_t[:, None] == seg_t[None, :]) & torch.ones(n, n, dtype=torch.bool, device=device).tril()
    input_ids = torch.tensor([ids], device=device)
    logits = model(
        input_ids=input_ids, attention_mask=allowed[None, None], position_ids=torch.tensor([pos], device=device)
    ).logits[0]
    token_logps = logits[:-1].log_softmax(-1).gather(1, input_ids[0, 1:, None])[:, 0]
    mask = torch.tensor(scored[1:], device=device)  # a row's first token is a prompt token: never scored
    per_row = torch.zeros(2 * len(examples), dtype=token_logps.dtype, device=device)
    per_row = per_row.index_add(0, seg_t[1:], token_logps * mask)
    return per_row[: len(examples)], per_row[len(examples) :]


def padding_free_position_ids(model, tokenizer, examples):
    """Padding-free via transformers' packed-sequence detection: reset position ids, no attention mask, no KV cache."""
    device = model.device
    flat, positions, row_of, is_completion = [], [], [], []
    rows = [(ex["prompt"], ex[k]) for k in ("chosen", "rejected") for ex in examples]
    for r, (prompt, completion) in enumerate(rows):
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        c = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        flat.extend(p + c)
        positions.extend(range(len(p) + len(c)))
        row_of.extend([r] * (len(p) + len(c)))
        is_completion.extend([0] * len(p) + [1] * len(c))
    input_ids = torch.tensor(flat, device=device).unsqueeze(0)
    position_ids = torch.tensor(positions, device=device).unsqueeze(0)
    # with no mask and no cache, transformers builds the block-diagonal mask from the position-id resets
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    logp = F.log_softmax(logits[0, :-1], dim=-1).gather(-1, input_ids[0, 1:].unsqueeze(-1)).squeeze(-1)
    weights = torch.tensor(is_completion[1:], device=device, dtype=logp.dtype)
    out = torch.zeros(len(rows), dtype=logp.dtype, device=device)
    out = out.index_add(0, torch.tensor(row_of[1:], device=device), logp * weights)
    return out[: len(examples)], out[len(examples) :]


def chunked_vocab_logsoftmax(model, tokenizer, examples):
    """Joint tokenisation, no BOS; the log-softmax normaliser computed over vocabulary chunks (memory-saving style)."""
    pad_id = _pad_id(tokenizer)
    seqs, starts = [], []
    for key in ("chosen", "rejected"):
        for ex in examples:
            full = tokenizer(ex["prompt"] + ex[key], add_special_tokens=False)["input_ids"]
            starts.append(len(tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]))
            seqs.append(full)
    width = max(len(s) for s in seqs)
    input_ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=model.device)
    attention_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = input_ids[:, 1:]
    chunk_lse = [torch.logsumexp(chunk, dim=-1) for chunk in torch.split(logits, 8, dim=-1)]
    lse = torch.logsumexp(torch.stack(chunk_lse, dim=-1), dim=-1)
    token_logps = torch.gather(logits, 2, targets.unsqueeze(-1)).squeeze(-1) - lse
    cols = torch.arange(1, width, device=model.device)
    mask = (cols[None] >= torch.tensor(starts, device=model.device)[:, None]) & (
        cols[None] < torch.tensor([len(s) for s in seqs], device=model.device)[:, None]
    )
    logps = (token_logps * mask).sum(-1)
    return logps[: len(examples)], logps[len(examples) :]


def float32_logits_cast(model, tokenizer, examples):
    """Mixed-precision habit: logits.float() before the log-softmax (correct to float32 rounding)."""
    pad_id = _pad_id(tokenizer)
    ids, lab = [], []
    for key in ("chosen", "rejected"):
        for ex in examples:
            p = tokenizer(ex["prompt"])["input_ids"]
            c = tokenizer(ex[key], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids.append(torch.tensor(p + c))
            lab.append(torch.tensor([IGNORE_INDEX] * len(p) + c))
    input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_id).to(model.device)
    labels = pad_sequence(lab, batch_first=True, padding_value=IGNORE_INDEX).to(model.device)
    attention_mask = pad_sequence([torch.ones_like(x) for x in ids], batch_first=True).to(model.device)
    logits = model(input_ids, attention_mask=attention_mask).logits.float()
    logps = _get_batch_logps(logits, labels)
    return logps[: len(examples)], logps[len(examples) :]


def trl_flush_left(model, tokenizer, examples):
    """Newer-TRL-style: prompts left-padded, completions right-padded, concatenated, then flushed left."""
    pad_id = _pad_id(tokenizer)
    prompts, completions = [], []
    for key in ("chosen", "rejected"):
        for ex in examples:
            prompts.append(tokenizer(ex["prompt"])["input_ids"])
            completions.append(tokenizer(ex[key], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    pw, cw = max(map(len, prompts)), max(map(len, completions))
    prompt_ids = torch.tensor([[pad_id] * (pw - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (pw - len(p)) + [1] * len(p) for p in prompts])
    completion_ids = torch.tensor([c + [pad_id] * (cw - len(c)) for c in completions])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (cw - len(c)) for c in completions])
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    loss_mask = torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1)
    # flush left: move each row's first real token to column 0
    shifts = attention_mask.argmax(dim=1)
    cols = (torch.arange(input_ids.shape[1])[None, :] + shifts[:, None]) % input_ids.shape[1]
    input_ids, attention_mask, loss_mask = (t.gather(1, cols) for t in (input_ids, attention_mask, loss_mask))
    keep = int(attention_mask.sum(0).nonzero().max()) + 1
    input_ids, attention_mask, loss_mask = (
        t[:, :keep].to(model.device) for t in (input_ids, attention_mask, loss_mask)
    )

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    labels = torch.roll(input_ids, shifts=-1, dims=1)
    loss_mask = torch.roll(loss_mask, shifts=-1, dims=1).bool()
    logits, labels, loss_mask = logits[:, :-1], labels[:, :-1], loss_mask[:, :-1]
    per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    per_token = torch.where(loss_mask, per_token, torch.zeros_like(per_token))
    logps = per_token.sum(1)
    return logps[: len(examples)], logps[len(examples) :]


def nanogpt_cross_entropy(model, tokenizer, examples):
    """nanoGPT-like: targets -100 on prompt and pads, -F.cross_entropy(reduction='none') summed per row."""
    xs, ys = [], []
    for ex in examples:
        for key in ("chosen", "rejected"):  # interleaved: c0, r0, c1, r1, ...
            p = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
            c = tokenizer(ex[key], add_special_tokens=False)["input_ids"]
            seq = p + c
            xs.append(seq[:-1])
            ys.append([-100] * (len(p) - 1) + c)
    T = max(len(x) for x in xs)
    x = torch.zeros(len(xs), T, dtype=torch.long)
    y = torch.full((len(xs), T), -100, dtype=torch.long)
    for i, (a, b) in enumerate(zip(xs, ys)):
        x[i, : len(a)] = torch.tensor(a)
        y[i, : len(b)] = torch.tensor(b)
    x, y = x.to(model.device), y.to(model.device)
    logits = model(x).logits
    nll = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-100, reduction="none")
    logp = -nll.view(y.shape).sum(dim=1)
    return logp[0::2], logp[1::2]
