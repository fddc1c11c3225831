"""Preference data: rows, validation, tokenisation and the collator for one concatenated forward.

A row is a mapping with three fields, in either of TRL's two formats:

    standard        {"prompt": str, "chosen": str, "rejected": str}
    conversational  {"prompt": [messages], "chosen": [messages], "rejected": [messages]}

where a message is {"role": str, "content": str}. Conversational rows are rendered with the
tokenizer's chat template: the prompt with the generation prompt appended, and each response as the
text the template adds after it. Rows come from a JSONL file, a list of dicts, or a `datasets.Dataset`.

Tokenisation of one response y to prompt x:

    input_ids = ids(x) + ids(y) + [eos]        labels = [-100] * len(ids(x)) + ids(y) + [eos]

Truncation: the prompt is cut to its LAST `max_prompt_length` tokens (the end of the prompt is what
the response answers); then the response is cut to its FIRST `max_length - len(prompt)` tokens, EOS
included (a response cut short loses its EOS). A prompt that leaves no room for a response token is a
malformed row.

Malformed rows (not an object, missing field, wrong type, empty, chosen identical to rejected before
or after tokenisation and truncation, a prompt that gives no tokens, no room for a response, longer than
the model's positions, text the built-in tokenizer cannot represent) raise `InputError` naming the row
(1-based; the line number in a JSONL file) and the field, or are skipped and counted with
`skip_bad_rows=True`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from dpo_ref.atomic import special_file_kind
from dpo_ref.errors import InputError, InputTypeError
from dpo_ref.logps import IGNORE_INDEX

FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class TokenizedPair:
    """One preference pair as token ids; `index` is its position in the prepared dataset."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    index: int = 0


# ---------------------------------------------------------------------------------------------- reading


def read_rows(source) -> list[tuple[str, object]]:
    """[(where, row)]: the raw rows of a JSONL path, a list of mappings or a `datasets.Dataset`.

    `where` names the row for error messages: "FILE line N" or "row N" (1-based).
    """
    if isinstance(source, (str, os.PathLike)):
        return _read_jsonl(os.fspath(source))
    if hasattr(source, "column_names") and hasattr(source, "__getitem__"):  # a datasets.Dataset, duck-typed
        if isinstance(source.column_names, dict):  # a DatasetDict: several splits
            raise InputError(f"got a DatasetDict with splits {list(source.column_names)}; pass one split")
        missing = [f for f in FIELDS if f not in source.column_names]
        if missing:
            raise InputError(f"the dataset has no column {missing[0]!r}; expected columns {list(FIELDS)}")
        return [(f"row {i + 1}", row) for i, row in enumerate(source)]
    if isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        return [(f"row {i + 1}", row) for i, row in enumerate(source)]
    raise InputTypeError(
        f"preference data must be a JSONL path, a list of dicts or a datasets.Dataset, got {type(source).__name__}"
    )


def check_data_path(path: str, option: str = "data file") -> None:
    """InputError unless `path` is a regular file, naming what it is instead; never opens it (a FIFO blocks)."""
    if path == "-":
        raise InputError(f"{option} '-': reading rows from standard input is not supported; give a JSONL file path")
    if not os.path.exists(path):
        raise InputError(f"{option} {path!r} does not exist")
    kind = special_file_kind(path)
    if kind:
        raise InputError(f"{option} {path!r} is {kind}; expected a JSONL file")


def _read_jsonl(path: str) -> list[tuple[str, object]]:
    check_data_path(path)
    rows = []
    with open(path, "rb") as f:  # bytes, so that a line that is not UTF-8 is reported with its number
        for number, raw in enumerate(f, start=1):
            where = f"{path} line {number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark begins some files
            except UnicodeDecodeError as err:
                rows.append((where, _BadJson(f"not UTF-8: byte 0x{raw[err.start]:02x} at column {err.start + 1}")))
                continue
            if not line.strip():
                continue
            try:
                rows.append((where, json.loads(line)))
            except json.JSONDecodeError as err:
                rows.append((where, _BadJson(err.msg)))
            except RecursionError:
                rows.append((where, _BadJson("nested too deeply")))
            except ValueError as err:  # e.g. an integer of more digits than Python converts (sys.int_info)
                rows.append((where, _BadJson(str(err).split(";")[0])))
    if not rows:
        raise InputError(f"data file {path!r} has no rows; expected one JSON object per line")
    return rows


class _BadJson:
    def __init__(self, message: str):
        self.message = message


# ---------------------------------------------------------------------------------------------- validation


def _message_error(messages: object, field: str) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"field {field!r} must be a non-empty list of messages"
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"field {field!r} message {j} must be an object with string 'role' and 'content'"
    if field != "prompt" and not any(m["content"].strip() for m in messages):
        return f"field {field!r} has only empty messages"
    return None


def row_error(row: object) -> str | None:
    """Why `row` is malformed (naming the field and what was expected), or None if it is well formed."""
    if isinstance(row, _BadJson):
        return row.message if row.message.startswith("not UTF-8") else f"not valid JSON ({row.message})"
    if not isinstance(row, dict):
        return f"expected a JSON object with fields {list(FIELDS)}, got {type(row).__name__}"
    for field in FIELDS:
        if field not in row or row[field] is None:
            return f"field {field!r} is missing"
    conversational = isinstance(row["prompt"], list)
    for field in FIELDS:
        value = row[field]
        if conversational:
            error = _message_error(value, field)
            if error:
                return error
        elif not isinstance(value, str):
            kind = type(value).__name__
            return f"field {field!r} must be a string (or all three fields lists of messages), got {kind}"
        elif not value.strip():
            return f"field {field!r} is empty"
    if row["chosen"] == row["rejected"]:
        return "fields 'chosen' and 'rejected' are identical; a preference needs two different responses"
    return None


# ---------------------------------------------------------------------------------------------- tokenisation


def render_texts(row: dict, tokenizer) -> tuple[str, str, str, bool]:
    """(prompt_text, chosen_text, rejected_text, conversational): the strings that get tokenised."""
    if not isinstance(row["prompt"], list):
        return row["prompt"], row["chosen"], row["rejected"], False
    if getattr(tokenizer, "chat_template", None) is None:
        raise InputError("conversational rows need a tokenizer with a chat template; this tokenizer has none")
    prompt = _apply_chat_template(tokenizer, row["prompt"], "prompt", add_generation_prompt=True)
    responses = []
    for field in ("chosen", "rejected"):
        full = _apply_chat_template(tokenizer, row["prompt"] + row[field], field)
        if not full.startswith(prompt):
            raise InputError(f"field {field!r}: the chat template does not render the prompt as a prefix")
        responses.append(full[len(prompt) :])
    return prompt, responses[0], responses[1], True


def _apply_chat_template(tokenizer, messages: list, field: str, **kwargs) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as err:  # a template is code (Jinja): it may raise anything, e.g. raise_exception(...)
        raise InputError(f"field {field!r}: the tokenizer's chat template raised {type(err).__name__}: {err}") from err


def _unrepresentable(text: str) -> str | None:
    """The first character of `text` the built-in character tokenizer maps to <unk>, or None."""
    from dpo_ref.train.tokenizer import CHARACTERS

    known = set(CHARACTERS)
    return next((c for c in text if c not in known), None)


def _prompt_ids(prompt: str, tokenizer, conversational: bool, max_prompt_length: int | None) -> list[int]:
    """The prompt's token ids, cut to its last `max_prompt_length`; `InputError` if it gives none."""
    # plain prompts get the tokenizer's special tokens (BOS); a chat template writes its own
    ids = tokenizer(prompt, add_special_tokens=not conversational)["input_ids"]
    if not ids:  # the first response token would have no position to be predicted from: never scored
        raise InputError(
            "field 'prompt' gives no tokens (the tokenizer or chat template renders it empty); every response "
            "token is predicted from the tokens before it, so a prompt needs at least one"
        )
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        ids = ids[-max_prompt_length:]  # keep the end of the prompt
    return ids


def response_ids(text: str, tokenizer) -> list[int]:
    """A response's token ids, nothing added but the EOS it ends with (appended unless it is already last)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]


def untruncated_pair(row: dict, tokenizer, index: int = 0) -> TokenizedPair:
    """`tokenize_pair` without its refusals and truncation: the token ids the trainer scores for a row."""
    prompt, chosen, rejected, conversational = render_texts(row, tokenizer)
    prompt_ids = _prompt_ids(prompt, tokenizer, conversational, None)
    return TokenizedPair(prompt_ids, response_ids(chosen, tokenizer), response_ids(rejected, tokenizer), index)


def tokenize_pair(
    row: dict,
    tokenizer,
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    max_positions: int | None = None,
    builtin_tokenizer: bool = False,
) -> TokenizedPair:
    """Token ids of one well-formed row, truncated as the module docstring says.

    Every response keeps at least one token (its EOS at least) and the prompt at least one, so every
    response has >= 1 scored token: the trainer's token counts are never 0 (the count rule of
    `dpo_ref.rpo.per_token_nll`). `InputError` if the prompt gives no tokens, if no room is left for a
    response, if chosen and rejected become identical token ids (truncation cut off where they differ, or
    the tokenizer cannot tell them apart), if a sequence is longer than the model's `max_positions`, or
    (`builtin_tokenizer`) if the text holds a character the built-in character tokenizer cannot represent.
    """
    prompt, chosen, rejected, conversational = render_texts(row, tokenizer)
    if builtin_tokenizer:
        for field, text in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            char = _unrepresentable(text)
            if char is not None:
                raise InputError(
                    f"field {field!r} has {char!r}, which the built-in character tokenizer cannot represent (it "
                    "knows printable ASCII and newline): bring a model with its own tokenizer (--model DIR)"
                )
    prompt_ids = _prompt_ids(prompt, tokenizer, conversational, max_prompt_length)
    responses, full_lengths = [], []
    for text in (chosen, rejected):
        ids = response_ids(text, tokenizer)
        full_lengths.append(len(ids))
        if max_length is not None:
            room = max_length - len(prompt_ids)
            if room < 1:
                raise InputError(
                    f"field 'prompt' has {len(prompt_ids)} tokens, leaving no room for a response within "
                    f"max_length={max_length} (set max_prompt_length below max_length)"
                )
            ids = ids[:room]  # keep the start of the response
        responses.append(ids)
    if responses[0] == responses[1]:
        if max_length is not None and len(prompt_ids) + max(full_lengths) > max_length:
            why = f"max_length={max_length} cuts them off before they differ"
        else:
            why = "the tokenizer maps both to the same tokens"
        raise InputError(f"fields 'chosen' and 'rejected' are identical after tokenisation ({why})")
    longest = len(prompt_ids) + max(len(r) for r in responses)
    if max_positions is not None and longest > max_positions:
        raise InputError(
            f"{longest} tokens, more than the model's {max_positions} positions (max_position_embeddings): "
            f"set max_length to at most {max_positions}"
        )
    return TokenizedPair(prompt_ids, responses[0], responses[1])


def prepare_dataset(
    source,
    tokenizer,
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    skip_bad_rows: bool = False,
    max_positions: int | None = None,
    builtin_tokenizer: bool = False,
) -> tuple[list[TokenizedPair], int]:
    """(pairs, skipped): every row validated and tokenised.

    The first malformed row raises `InputError` ("FILE line N: field 'chosen' is empty ...", with the
    total count of malformed rows), unless `skip_bad_rows`, which drops them and returns their count.
    """
    pairs: list[TokenizedPair] = []
    bad: list[str] = []
    for where, row in read_rows(source):
        error = row_error(row)
        if error is None:
            try:
                pair = tokenize_pair(
                    row,
                    tokenizer,
                    max_length=max_length,
                    max_prompt_length=max_prompt_length,
                    max_positions=max_positions,
                    builtin_tokenizer=builtin_tokenizer,
                )
            except InputError as err:
                error = str(err)
        if error is not None:
            bad.append(f"{where}: {error}")
            continue
        pair.index = len(pairs)
        pairs.append(pair)
    if bad and not skip_bad_rows:
        more = f" ({len(bad)} malformed rows in all; --skip-bad-rows skips them)" if len(bad) > 1 else ""
        raise InputError(bad[0] + more)
    if not pairs:
        raise InputError("no usable preference rows" + (f" ({len(bad)} malformed rows skipped)" if bad else ""))
    return pairs, len(bad)


# ---------------------------------------------------------------------------------------------- collation


def pad_sequences(
    sequences: Sequence[Sequence[int]], value: int, side: str = "right", length: int | None = None
) -> torch.Tensor:
    """(N, T) long tensor of `sequences` padded with `value` on `side` to the longest (or `length`)."""
    T = length if length is not None else max(len(s) for s in sequences)
    out = torch.full((len(sequences), T), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        if side == "right":
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        else:
            out[i, T - len(s) :] = torch.tensor(s, dtype=torch.long)
    return out


@dataclass
class PreferenceCollator:
    """Pads chosen and rejected sequences to ONE length so a batch is a single (2B, T) forward.

    Rows 0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected. Returns `input_ids`, `attention_mask`,
    `labels` (prompt and padding = -100), all (2B, T), and `index` (B,). With `responses=("chosen",)`
    only the chosen half is built (for the SFT warm-up).
    """

    pad_token_id: int
    padding_side: str = "right"
    responses: tuple[str, ...] = ("chosen", "rejected")

    def __call__(self, pairs: Iterable[TokenizedPair]) -> dict[str, torch.Tensor]:
        pairs = list(pairs)
        ids, labels = [], []
        for field in self.responses:
            for p in pairs:
                response = getattr(p, f"{field}_ids")
                ids.append(p.prompt_ids + response)
                labels.append([IGNORE_INDEX] * len(p.prompt_ids) + response)
        input_ids = pad_sequences(ids, self.pad_token_id, self.padding_side)  # (2B, T)
        attention_mask = pad_sequences([[1] * len(s) for s in ids], 0, self.padding_side)  # (2B, T)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": pad_sequences(labels, IGNORE_INDEX, self.padding_side),  # (2B, T)
            "index": torch.tensor([p.index for p in pairs], dtype=torch.long),  # (B,)
        }
