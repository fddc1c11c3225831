"""The pipeline and packed corpus in tests/corpus/ is labelled right: checked here WITHOUT the oracle.

Pipelines. The models and tokenizers are built here: a one-layer float64 LlamaForCausalLM (rotary positions) and a
one-layer float64 GPT2LMHeadModel (absolute positions), with a large init std so log-probs are far from flat; three
character-level BPE tokenizers sharing one vocabulary, with merges so that a prompt and a completion tokenised
together can merge across the boundary ("t" + "he" -> "th" "e"): one with a pad token that adds BOS, one with
neither pad token nor BOS, one with a pad token and no BOS. The reference scores each row alone, unpadded, with
positions 0..L-1, in float64, under a convention (separate or joint tokenisation, BOS or not, EOS or not).
Every correct pipeline equals the reference under its declared convention on every model, tokenizer and batch
(1e-9 relative in float64; the float32 cast gets 16 eps32 (n (max|logit| + 1) + 1)), differs from it under every
other convention somewhere, returns a graph whose gradient equals the reference's, and leaves the model as it
was. Every broken pipeline shows its bug: a value that differs somewhere (and, where the bug has a cheap float64
model, equals that model everywhere), or a changed model state, or no graph, with its values otherwise right.

Packed. The reference is a plain Python loop over segments and positions with math.log-sum-exp; every correct
function equals it (and its gradient the closed form onehot - softmax), every broken one differs and, where
cheap, equals a loop model of its bug.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_pipeline_corpus_{name}", CORPUS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


INDEX_MODULE = _load("pipeline_index")
INDEX = INDEX_MODULE.INDEX
MODULES = {name: _load(name) for name in ("pipeline_correct", "pipeline_broken", "packed_correct", "packed_broken")}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny float64 models: one thread is many times faster than several fighting over 2 shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fn(entry):
    return getattr(MODULES[entry.module], entry.function)


def _ids(entries):
    return [e.function for e in entries]


# ---------------------------------------------------------------------------------------------------------------
# the index itself


def test_index_lists_every_function_once():
    for name, module in MODULES.items():
        public = {n for n, f in inspect.getmembers(module, inspect.isfunction) if f.__module__ == module.__name__}
        public = {n for n in public if not n.startswith("_")}
        listed = [e.function for e in INDEX if e.module == name]
        assert len(listed) == len(set(listed)), name
        assert set(listed) == public, (name, set(listed) ^ public)


def test_counts_and_every_diagnosis_used():
    counts = {(e.level, e.conforms): 0 for e in INDEX}
    for e in INDEX:
        counts[(e.level, e.conforms)] += 1
    assert counts[("pipeline", True)] >= 14 and counts[("pipeline", False)] >= 24
    assert counts[("packed", True)] >= 5 and counts[("packed", False)] >= 8
    for level, names in (("pipeline", INDEX_MODULE.PIPELINE_DIAGNOSES), ("packed", INDEX_MODULE.PACKED_DIAGNOSES)):
        used = {e.diagnosis for e in INDEX if e.level == level and not e.conforms}
        assert used == set(names), (level, used ^ set(names))
    for e in INDEX:
        assert (e.diagnosis is None) == e.conforms
        assert e.level in ("pipeline", "packed")
        if e.level == "pipeline":
            assert set(e.convention) == {"tokenize", "bos", "eos"} and e.convention["tokenize"] in ("separate", "joint")
        assert e.target == f"tests/corpus/{e.module}.py:{e.function}" and e.description


def test_one_line_docstrings_and_light_imports():
    for name, module in MODULES.items():
        for fn_name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ != module.__name__:
                continue
            doc = fn.__doc__ or ""
            assert doc.strip() and "\n" not in doc.strip(), (name, fn_name)
        tree = ast.parse((CORPUS / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= {"torch", "transformers", "__future__"}, (name, roots)


# ---------------------------------------------------------------------------------------------------------------
# models, tokenizers, batches

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list("abcdefghijklmnopqrstuvwxyz .,?!")
MERGES = [("t", "h"), ("e", " "), ("i", "n"), ("a", "n"), ("th", "e")]
VOCAB = {t: i for i, t in enumerate(SPECIAL + CHARS + ["".join(m) for m in MERGES])}


def _tokenizer(*, bos: bool, pad: bool):
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab=dict(VOCAB), merges=list(MERGES), unk_token="<unk>"))
    backend.add_special_tokens(SPECIAL)
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", VOCAB["<s>"])]
        )
    extra = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   **extra)  # fmt: skip


TOKENIZERS = {
    "bos+pad": _tokenizer(bos=True, pad=True),
    "nobos-nopad": _tokenizer(bos=False, pad=False),
    "nobos+pad": _tokenizer(bos=False, pad=True),
}


def _models():
    from transformers import GPT2Config, GPT2LMHeadModel

    from dpo_ref.train.model import TinyLlamaSize, llama_config, tiny_llama

    vocab = len(VOCAB)
    size = TinyLlamaSize(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=128, initializer_range=0.3)  # fmt: skip
    llama = tiny_llama(llama_config(vocab, size), seed=0).to(torch.float64).eval()
    config = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3, bos_token_id=1, eos_token_id=2,
                        pad_token_id=0)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        gpt2 = GPT2LMHeadModel(config).to(torch.float64).eval()
    return {"llama": llama, "gpt2": gpt2}


MODELS = _models()


def _ex(prompt, chosen, rejected):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


BATCHES = {
    # short rows first (so sorting by length reorders), very different lengths, 1-token completions, >16 tokens
    "mixed": [
        _ex("hi", "a", "no way"),
        _ex("what is the answer to this long question, please?", "it is in the book, i think.", "x"),
        _ex("q", "yes indeed", "b"),
        _ex("tell me", "the end", "an ant in the sand, then the sea"),
    ],
    "single": [_ex("say it", "ok then", "no")],
    "seven": [
        _ex("a", "b", "c"),
        _ex("bb", "cc dd", "e"),
        _ex("the cat sat on the mat and then?", "it slept", "it ran off to the hills and in"),
        _ex("x", "y", "zz"),
        _ex("why", "because it is so and that is all there is to say", "no"),
        _ex("ok", "fine", "sure thing"),
        _ex("go on", "and then?", "!"),
    ],
    # prompts ending in "t" / "a" and completions starting "he" / "n": merges across the boundary when joint
    "merge": [
        _ex("what", "he said", "his hat"),
        _ex("a cat", "he ran", "hi"),
        _ex("sa", "nd then", "n ant"),
    ],
}
COMBOS = [(m, t, b) for m in MODELS for t in TOKENIZERS for b in BATCHES]
CONVENTIONS = [{"tokenize": k, "bos": bos, "eos": eos} for k in ("separate", "joint") for bos in (True, False)
               for eos in (True, False)]  # fmt: skip


def _encode(tok, prompt, completion, conv, *, completion_special=False):
    """(ids, n_prompt) of one row under `conv`; the completion is ids[n_prompt:]."""
    p = tok(prompt, add_special_tokens=conv["bos"])["input_ids"]
    if conv["tokenize"] == "separate":
        c = tok(completion, add_special_tokens=completion_special)["input_ids"]
        ids = p + c
    else:
        ids = tok(prompt + completion, add_special_tokens=conv["bos"])["input_ids"]
    if conv["eos"]:
        ids = ids + [tok.eos_token_id]
    return ids, len(p)


_LOGPS: dict = {}


def _row_logps(model_key, ids):
    """(L-1, V) float64 log-softmax of the row alone (cached) and the row's logits."""
    key = (model_key, tuple(ids))
    if key not in _LOGPS:
        with torch.no_grad():
            logits = MODELS[model_key](torch.tensor([ids])).logits[0]
        _LOGPS[key] = (logits[:-1].log_softmax(-1), logits)
    return _LOGPS[key]


def _span_sum(model_key, ids, lo, hi):
    """Sum of log p(ids[t] | ids[:t]) for t in [max(lo, 1), min(hi, L))."""
    logps, _ = _row_logps(model_key, ids)
    total = 0.0
    for t in range(max(lo, 1), min(hi, len(ids))):
        total += float(logps[t - 1, ids[t]])
    return total


def _rows(batch):
    return [(ex["prompt"], ex[k]) for k in ("chosen", "rejected") for ex in batch]


def reference(model_key, tok_key, batch_key, conv, *, span=None, completion_special=False):
    """(chosen, rejected) float lists: each row scored alone; span(ids, n, row) -> (lo, hi) picks the scored t."""
    tok = TOKENIZERS[tok_key]
    values = []
    for r, (prompt, completion) in enumerate(_rows(BATCHES[batch_key])):
        ids, n = _encode(tok, prompt, completion, conv, completion_special=completion_special)
        lo, hi = span(ids, n, r) if span else (n, len(ids))
        values.append(_span_sum(model_key, ids, lo, hi))
    b = len(BATCHES[batch_key])
    return values[:b], values[b:]


def _float32_tolerance(model_key, tok_key, batch_key, conv):
    tok = TOKENIZERS[tok_key]
    tols = []
    for prompt, completion in _rows(BATCHES[batch_key]):
        ids, n = _encode(tok, prompt, completion, conv)
        _, logits = _row_logps(model_key, ids)
        tols.append(16 * torch.finfo(torch.float32).eps * ((len(ids) - n) * (float(logits.abs().max()) + 1) + 1))
    b = len(BATCHES[batch_key])
    return tols[:b], tols[b:]


def _snapshot(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad is None for p in model.parameters()],
    )


def _state_changes(model, snap):
    weights, training, req, nograd = snap
    changes = set()
    if any(not torch.equal(v, weights[k]) for k, v in model.state_dict().items()):
        changes.add("weights")
    if [m.training for m in model.modules()] != training:
        changes.add("train-mode")
    if [p.requires_grad for p in model.parameters()] != req:
        changes.add("requires-grad")
    if [p.grad is None for p in model.parameters()] != nograd:
        changes.add("grad")
    return changes


def _restore(model, snap):
    weights = snap[0]
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(weights[k])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None


def _call(fn, model_key, tok_key, batch_key):
    """(chosen, rejected, state changes) of one call; the model is restored afterwards."""
    model = MODELS[model_key]
    snap = _snapshot(model)
    chosen, rejected = fn(model, TOKENIZERS[tok_key], [dict(ex) for ex in BATCHES[batch_key]])
    changes = _state_changes(model, snap)
    _restore(model, snap)
    b = len(BATCHES[batch_key])
    assert chosen.shape == (b,) and rejected.shape == (b,), (chosen.shape, rejected.shape)
    return chosen, rejected, changes


def _close(got, want, tol=None):
    got = [float(x) for x in torch.as_tensor(got).detach()]
    if tol is None:
        tol = [1e-9 * (1 + abs(w)) for w in want]
    return all(abs(g - w) <= t for g, w, t in zip(got, want, tol))


def test_fixtures_discriminate():
    """The fixtures tell the conventions apart: joint differs from separate on the merge batch, and so on."""
    tok = TOKENIZERS["bos+pad"]
    sep = [_encode(tok, p, c, CONVENTIONS[1]) for p, c in _rows(BATCHES["merge"])]
    joint = [_encode(tok, p, c, CONVENTIONS[5]) for p, c in _rows(BATCHES["merge"])]
    assert sep != joint
    assert TOKENIZERS["nobos-nopad"].pad_token_id is None and TOKENIZERS["bos+pad"]("a")["input_ids"][0] == 1
    assert max(len(_encode(tok, p, c, CONVENTIONS[0])[0]) for p, c in _rows(BATCHES["mixed"])) > 16
    for model in MODELS.values():
        ids = _encode(tok, *_rows(BATCHES["mixed"])[1], CONVENTIONS[0])[0]
        with torch.no_grad():
            lp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        assert float(lp.max(-1).values.mean()) > -2.0  # far from flat (log 40 = 3.7)


# ---------------------------------------------------------------------------------------------------------------
# correct pipelines

PIPE_OK = [e for e in INDEX if e.level == "pipeline" and e.conforms]
PIPE_BAD = [e for e in INDEX if e.level == "pipeline" and not e.conforms]


@pytest.mark.parametrize("entry", PIPE_OK, ids=_ids(PIPE_OK))
def test_correct_pipeline(entry):
    fn = _fn(entry)
    conv = entry.convention
    others = {i: False for i, c in enumerate(CONVENTIONS) if c != conv}
    float32 = entry.function == "float32_logits_cast"
    for model_key, tok_key, batch_key in COMBOS:
        chosen, rejected, changes = _call(fn, model_key, tok_key, batch_key)
        assert not changes, (model_key, tok_key, batch_key, changes)
        assert chosen.requires_grad and rejected.requires_grad
        assert chosen.dtype == (torch.float32 if float32 else torch.float64)
        want_c, want_r = reference(model_key, tok_key, batch_key, conv)
        tol_c, tol_r = _float32_tolerance(model_key, tok_key, batch_key, conv) if float32 else (None, None)
        where = (model_key, tok_key, batch_key)
        assert _close(chosen, want_c, tol_c), (where, chosen.tolist(), want_c)
        assert _close(rejected, want_r, tol_r), (where, rejected.tolist(), want_r)
        for i in others:
            if not others[i]:
                oc, orr = reference(model_key, tok_key, batch_key, CONVENTIONS[i])
                others[i] = not (_close(chosen, oc, tol_c) and _close(rejected, orr, tol_r))
    assert all(others.values()), [CONVENTIONS[i] for i, seen in others.items() if not seen]


def _reference_grads(model, tok, batch, conv, weights):
    params = [p for p in model.parameters()]
    total = 0.0
    for w, (prompt, completion) in zip(weights, _rows(batch)):
        ids, n = _encode(tok, prompt, completion, conv)
        lp = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        total = total + w * lp[torch.arange(n - 1, len(ids) - 1), torch.tensor(ids[n:])].sum()
    return torch.autograd.grad(total, params, allow_unused=True)


@pytest.mark.parametrize("entry", PIPE_OK, ids=_ids(PIPE_OK))
def test_correct_pipeline_gradients(entry):
    fn = _fn(entry)
    for model_key, tok_key in (("llama", "bos+pad"), ("gpt2", "nobos-nopad")):
        model, tok, batch = MODELS[model_key], TOKENIZERS[tok_key], BATCHES["mixed"]
        weights = [1.0 + 0.25 * i for i in range(2 * len(batch))]
        chosen, rejected = fn(model, tok, [dict(ex) for ex in batch])
        out = torch.cat([chosen, rejected]).to(torch.float64)
        grads = torch.autograd.grad((out * torch.tensor(weights)).sum(), list(model.parameters()), allow_unused=True)
        want = _reference_grads(model, tok, batch, entry.convention, weights)
        rtol = 1e-4 if entry.function == "float32_logits_cast" else 1e-8
        for g, w in zip(grads, want):
            g = torch.zeros_like(w) if g is None else g
            w = torch.zeros_like(g) if w is None else w
            assert torch.allclose(g.double(), w, rtol=rtol, atol=rtol * float(w.abs().max() + 1)), model_key
        assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# broken pipelines: the bug shows, and where cheap it equals a float64 model of the bug


# how each padding bug scores a row: (padding side, attention mask passed, position ids, pad id rule)
PADDED_ROW_BUGS = {
    "left_pad_no_position_ids": ("left", True, "default", "pad-or-eos"),
    "trl_left_padding_no_position_ids": ("left", True, "default", "pad-or-eos"),
    "left_pad_mask_forgotten": ("left", False, "from-mask", "pad-or-eos"),
    "pads_scored_right_padding": ("right", True, "default", "pad-or-eos"),
    "torchtune_labels_padded_with_pad_id": ("right", False, "default", "pad-or-0"),
}


def _padded_rows_model(name, model_key, tok_key, batch_key):
    """Each row alone, padded to the batch's width as the bug pads it: left pads at shifted positions (or attended),
    right pads scored as completion tokens."""
    side, masked, positions, pad_rule = PADDED_ROW_BUGS[name]
    entry = next(e for e in PIPE_BAD if e.function == name)
    tok = TOKENIZERS[tok_key]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id if pad_rule == "pad-or-eos" else 0)
    encoded = [_encode(tok, p, c, entry.convention) for p, c in _rows(BATCHES[batch_key])]
    width = max(len(ids) for ids, _ in encoded)
    values = []
    for ids, n in encoded:
        k = width - len(ids)
        if side == "left":
            x, am, lo, hi = [pad_id] * k + ids, [0] * k + [1] * len(ids), k + n, width
            pos = list(range(width)) if positions == "default" else [0] * k + list(range(len(ids)))
        else:
            x, am, lo, hi = ids + [pad_id] * k, [1] * len(ids) + [0] * k, n, width  # the pads are scored
            pos = list(range(width))
        kwargs = {"position_ids": torch.tensor([pos])}
        if masked:
            kwargs["attention_mask"] = torch.tensor([am])
        with torch.no_grad():
            lp = MODELS[model_key](torch.tensor([x]), **kwargs).logits[0, :-1].log_softmax(-1)
        values.append(sum(float(lp[t - 1, x[t]]) for t in range(max(lo, 1), hi)))
    b = len(BATCHES[batch_key])
    return values[:b], values[b:]


def _bug_model(entry, model_key, tok_key, batch_key):
    """(chosen, rejected) the bug predicts, in float64; None where there is no cheap model."""
    conv, name, tok = entry.convention, entry.function, TOKENIZERS[tok_key]
    batch = BATCHES[batch_key]
    b = len(batch)

    def ref(**kw):
        return reference(model_key, tok_key, batch_key, conv, **kw)

    def completion_lengths():
        return [len(_encode(tok, p, c, conv)[0]) - _encode(tok, p, c, conv)[1] for p, c in _rows(batch)]

    if entry.diagnosis == "prompt-scored":
        return ref(span=lambda ids, n, r: (1, len(ids)))
    if entry.diagnosis == "first-completion-token-dropped":
        return ref(span=lambda ids, n, r: (n + 1, len(ids)))
    if entry.diagnosis == "truncated":
        return ref(span=lambda ids, n, r: (n, 16))
    if entry.diagnosis == "bos-in-the-middle":
        return ref(completion_special=True)
    if entry.diagnosis == "eos-scored-as-pad":
        return reference(model_key, tok_key, batch_key, {**conv, "eos": tok.pad_token_id is not None})
    if entry.diagnosis == "chosen-rejected-swapped":
        c, r = ref()
        return r, c
    if entry.diagnosis == "rows-shifted":
        c, r = ref()
        return c, ([c[-1]] + r)[:b]
    if name == "first_row_prompt_length":
        p0 = _encode(tok, batch[0]["prompt"], batch[0]["chosen"], conv)[1]
        return ref(span=lambda ids, n, r: (p0, len(ids)))
    if entry.diagnosis in ("batch-normalised", "mean-not-sum"):
        c, r = ref()
        lengths = completion_lengths()
        if name == "normalised_by_batch_tokens":
            d = [sum(lengths)] * (2 * b)
        elif name == "scaled_by_mean_length":
            d = [sum(lengths) / len(lengths)] * (2 * b)
        else:
            d = lengths
        vals = [v / x for v, x in zip(c + r, d)]
        return vals[:b], vals[b:]
    if entry.diagnosis == "rows-reordered":
        c, r = ref()
        lengths = [len(_encode(tok, p, x, conv)[0]) for p, x in _rows(batch)]
        order_c = sorted(range(b), key=lambda i: -lengths[i])
        order_r = sorted(range(b), key=lambda i: -lengths[b + i])
        return [c[i] for i in order_c], [r[i] for i in order_r]
    if name in PADDED_ROW_BUGS:
        return _padded_rows_model(name, model_key, tok_key, batch_key)
    if entry.diagnosis in ("detached", "model-left-in-train-mode", "model-grad-left", "requires-grad-changed"):
        return ref()  # the values are right: the bug is elsewhere
    return None


STATE_BUGS = {"model-left-in-train-mode": "train-mode", "model-grad-left": "grad",
              "requires-grad-changed": "requires-grad"}  # fmt: skip


@pytest.mark.parametrize("entry", PIPE_BAD, ids=_ids(PIPE_BAD))
def test_broken_pipeline_shows_its_bug(entry):
    fn = _fn(entry)
    differs, state_seen, detached_seen, gaps = [], set(), False, {}
    for model_key, tok_key, batch_key in COMBOS:
        chosen, rejected, changes = _call(fn, model_key, tok_key, batch_key)
        where = (model_key, tok_key, batch_key)
        state_seen |= changes
        if not (chosen.requires_grad or rejected.requires_grad):
            detached_seen = True
        want_c, want_r = reference(model_key, tok_key, batch_key, entry.convention)
        if not (_close(chosen, want_c) and _close(rejected, want_r)):
            differs.append(where)
            gaps[model_key] = max(gaps.get(model_key, 0.0), max(
                abs(float(g) - w) for g, w in zip(torch.cat([chosen, rejected]), want_c + want_r)))  # fmt: skip
        predicted = _bug_model(entry, model_key, tok_key, batch_key)
        if predicted is not None:
            assert _close(chosen, predicted[0]) and _close(rejected, predicted[1]), (
                where, chosen.tolist(), rejected.tolist(), predicted)  # fmt: skip
        if entry.diagnosis == "rows-reordered":
            assert sorted(float(x) for x in chosen) == pytest.approx(sorted(want_c), rel=1e-9)
        if entry.function == "packed_rows_all_ones_mask":
            assert _close(chosen[:1], want_c[:1])  # the first row sees no other row
    if entry.diagnosis in STATE_BUGS:
        assert STATE_BUGS[entry.diagnosis] in state_seen and not differs
    elif entry.diagnosis == "detached":
        assert detached_seen and not differs
    else:
        assert differs and not state_seen and not detached_seen
    if entry.diagnosis == "left-padding-without-position-ids":
        # gross with absolute positions; with rotary ones only float32 rope rounding (cos/sin in float32)
        assert gaps["gpt2"] > 1e-2 and gaps.get("llama", 0.0) < 1e-4
    assert entry.function in NO_BUG_MODEL or _bug_model(entry, *COMBOS[0]) is not None


# the functions whose bug has no cheap float64 model here: shown by a difference (and a state change) only
NO_BUG_MODEL = {"packed_rows_all_ones_mask"}
# the bugs that need padding, a long row, several rows, different prompts or different lengths to show
NEEDS_A_TRIGGER = {
    "left_pad_no_position_ids", "trl_left_padding_no_position_ids", "left_pad_mask_forgotten",
    "pads_scored_right_padding", "torchtune_labels_padded_with_pad_id", "sorted_not_restored",
    "first_row_prompt_length", "truncated_to_max_length", "tokenizer_truncation",
}  # fmt: skip
# every row of the same length, with the same prompt length, short, no merges: none of those bugs can show
EQUAL_BATCH = [_ex("xyz", "bcd", "fgk"), _ex("qrs", "uvw", "lmo")]


@pytest.mark.parametrize("name", sorted(NEEDS_A_TRIGGER))
def test_broken_pipeline_is_right_without_its_trigger(name):
    """One bug each: on a batch that cannot trigger it, the function equals the reference."""
    entry = next(e for e in PIPE_BAD if e.function == name)
    BATCHES["equal"] = EQUAL_BATCH
    try:
        for model_key in MODELS:
            for tok_key in TOKENIZERS:
                chosen, rejected, changes = _call(_fn(entry), model_key, tok_key, "equal")
                want_c, want_r = reference(model_key, tok_key, "equal", entry.convention)
                assert not changes and _close(chosen, want_c) and _close(rejected, want_r), (model_key, tok_key)
    finally:
        del BATCHES["equal"]


# ---------------------------------------------------------------------------------------------------------------
# packed

PACK_OK = [e for e in INDEX if e.level == "packed" and e.conforms]
PACK_BAD = [e for e in INDEX if e.level == "packed" and not e.conforms]


def _packed_case(lengths, vocab, seed, holes=0.2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    logits = (torch.randn(1, n, vocab, generator=g, dtype=torch.float64) * 4).to(dtype)
    labels = torch.randint(0, vocab, (1, n), generator=g)
    labels[torch.rand(1, n, generator=g) < holes] = -100
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32)
    labels[0, cu[:-1].long()] = torch.randint(0, vocab, (len(lengths),), generator=g)  # first labels real
    return logits, labels, cu


PACKED_CASES = {
    "two": ([5, 7], 11, 0),
    "one-segment": ([9], 6, 1),
    "many-with-len1": ([1, 4, 1, 1, 6, 3, 2, 1, 5], 13, 2),
    "len1-first-last": ([1, 8, 2, 1], 9, 3),
    "long": ([30, 17, 25], 33, 4),
}


def _lp(row, y):
    m = max(row)
    return row[y] - (m + math.log(sum(math.exp(x - m) for x in row)))


def packed_reference(logits, labels, cu, pairs=None, *, holes_zero=False, mean=False):
    """Per segment: sum over (i, t) pairs of log_softmax(logits[i])[labels[t]]; default pairs (t-1, t), a < t < b."""
    x = logits[0].double().tolist()
    y = labels[0].tolist()
    n = len(y)
    bounds = cu.tolist()
    out = []
    for s in range(len(bounds) - 1):
        a, b = bounds[s], bounds[s + 1]
        ps = pairs(s, a, b, n) if pairs else [(t - 1, t) for t in range(a + 1, b)]
        total, count = 0.0, 0
        for i, t in ps:
            label = y[t]
            if label == -100:
                if not holes_zero:
                    continue
                label = 0
            total += _lp(x[i], label)
            count += 1
        out.append(total / max(count, 1) if mean else total)
    return out


def _packed_bug_model(entry, logits, labels, cu):
    name, s_count = entry.function, cu.numel() - 1
    n = labels.shape[1]
    if name == "packed_global_shift_unmasked":
        return packed_reference(logits, labels, cu, lambda s, a, b, n: [(t - 1, t) for t in range(max(a, 1), b)])
    if name == "packed_window_one_past_end":
        return packed_reference(
            logits, labels, cu, lambda s, a, b, n: [(t - 1, t) for t in range(a + 1, min(b + 1, n))]
        )
    if name == "packed_no_shift":
        return packed_reference(logits, labels, cu, lambda s, a, b, n: [(t, t) for t in range(a + 1, b)])
    if name == "packed_double_shift":
        return packed_reference(logits, labels, cu, lambda s, a, b, n: [(t - 2, t) for t in range(a + 2, b)])
    if name == "packed_mean_not_sum":
        return packed_reference(logits, labels, cu, mean=True)
    if name == "packed_holes_clamped":
        return packed_reference(logits, labels, cu, holes_zero=True)
    if name == "packed_segment_last_dropped":
        return packed_reference(logits, labels, cu, lambda s, a, b, n: [(t - 1, t) for t in range(a + 1, b - 1)])
    if name == "packed_boundaries_off_by_one":
        right = packed_reference(logits, labels, cu)
        if s_count >= 2:
            right[-2] += right[-1]
            right[-1] = 0.0
        return right
    if name == "packed_cu_seqlens_as_lengths":
        spans, start = [], 0
        for length in cu[1:].tolist():
            end = min(start + length, n)
            spans.append((start, end))
            start = end
        return packed_reference(logits, labels, cu, lambda s, a, b, n: [(t - 1, t) for t in range(*_inner(spans[s]))])
    return None


def _inner(span):
    """The label positions strictly inside a (start, end) span."""
    return span[0] + 1, span[1]


def _packed_grad(logits, labels, cu, weights):
    """d/dlogits of sum_s w_s value_s: onehot(label) - softmax at each scored logit position."""
    grad = torch.zeros_like(logits[0], dtype=torch.float64)
    probs = logits[0].double().softmax(-1)
    bounds = cu.tolist()
    for s in range(len(bounds) - 1):
        for t in range(bounds[s] + 1, bounds[s + 1]):
            y = int(labels[0, t])
            if y != -100:
                grad[t - 1] -= weights[s] * probs[t - 1]
                grad[t - 1, y] += weights[s]
    return grad


@pytest.mark.parametrize("entry", PACK_OK, ids=_ids(PACK_OK))
def test_correct_packed(entry):
    fn = _fn(entry)
    for case, (lengths, vocab, seed) in PACKED_CASES.items():
        for dtype in (torch.float64, torch.float32):
            logits, labels, cu = _packed_case(lengths, vocab, seed, dtype=dtype)
            logits.requires_grad_(True)
            before = (logits.detach().clone(), labels.clone(), cu.clone())
            out = fn(logits, labels, cu)
            assert out.shape == (len(lengths),) and out.dtype == dtype
            want = packed_reference(logits, labels, cu)
            eps = torch.finfo(dtype).eps
            n_tok = [max(b - a, 1) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
            tol = [16 * eps * (k * (float(logits.abs().max()) + math.log(vocab) + 1) + 1) for k in n_tok]
            assert _close(out, want, tol), (case, dtype, out.tolist(), want)
            assert all(float(out[s]) == 0.0 for s, k in enumerate(lengths) if k == 1)
            weights = [1.0 + 0.5 * s for s in range(len(lengths))]
            (grad,) = torch.autograd.grad((out * torch.tensor(weights, dtype=dtype)).sum(), logits)
            assert torch.allclose(grad.double(), _packed_grad(logits.detach(), labels, cu, weights),
                                  atol=1e3 * eps)  # fmt: skip
            assert torch.equal(logits.detach(), before[0]) and torch.equal(labels, before[1])
            assert torch.equal(cu, before[2])


@pytest.mark.parametrize("entry", PACK_BAD, ids=_ids(PACK_BAD))
def test_broken_packed_shows_its_bug(entry):
    fn = _fn(entry)
    differs = []
    for case, (lengths, vocab, seed) in PACKED_CASES.items():
        logits, labels, cu = _packed_case(lengths, vocab, seed)
        out = fn(logits, labels, cu)
        want = packed_reference(logits, labels, cu)
        if out.shape != (len(lengths),) or not _close(out, want):
            differs.append(case)
        predicted = _packed_bug_model(entry, logits, labels, cu)
        if predicted is not None:
            assert _close(out, predicted), (case, out.tolist(), predicted)
        if entry.diagnosis == "float16-scoring":
            n_tok = sum(lengths)
            assert all(abs(float(o) - w) < 0.01 * n_tok for o, w in zip(out, want))  # half-precision-sized
    assert differs
