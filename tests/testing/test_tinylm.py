"""The tiny causal LM: deterministic training, the disk cache, the byte tokenizer, the causal
mask, the vocabulary projection of FFN neurons, and recording through ``TextSource``.

Everything runs real training (no mocks). The default model trains once per machine (about a
minute of CPU) into the disk cache and is shared by the session fixture ``lm``; determinism and
cache tests use a very small configuration in a temporary cache directory.
"""

from __future__ import annotations

import collections
import copy
import math
import os
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest
import torch
from torch import nn

import neuronscope.testing.tinylm as tinylm_module
from neuronscope.errors import NeuronscopeError
from neuronscope.recording import forward_batches
from neuronscope.sources.text import Corpus, TextSource, default_corpus_path, load_corpus
from neuronscope.sources.torch_sites import sites
from neuronscope.testing.tinylm import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TINYLM_FFN_SITES,
    ByteTokenizer,
    TinyLMHparams,
    heldout_loss,
    heldout_loss_by_lang,
    load_tinylm,
    tinylm_cache_path,
    tinylm_corpus,
    tinylm_model,
    train_tinylm,
)

#: A configuration that trains in about a second (for determinism and cache tests).
TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ffn": 32, "n_ctx": 32, "epochs": 1, "batch_size": 64}

MULTILINGUAL = [
    "Hello, world!",
    "Grüße aus Köln — ça va?",
    "日本語のテキスト",
    "안녕하세요",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "emoji 🙂👍🏽 and a flag 🇸🇪",
    "tab\tnew\nline",
    "",
]


@pytest.fixture(scope="session")
def lm():
    """The default tiny LM (seed 0) and its tokenizer, from the disk cache after the first run."""
    return load_tinylm(0)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONSCOPE_CACHE", str(tmp_path))
    return tmp_path


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- training and cache


def test_training_is_deterministic_per_seed(tmp_cache):
    rng_before = torch.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = train_tinylm(0, cache=False, **TINY).state_dict()
        assert torch.get_num_threads() == 2  # the training thread count is restored
    finally:
        torch.set_num_threads(threads)
    b = train_tinylm(0, cache=False, **TINY).state_dict()
    c = train_tinylm(1, cache=False, **TINY).state_dict()
    assert _states_equal(a, b)
    # a different seed differs in every weight matrix
    assert all(not torch.equal(a[k], c[k]) for k in a if a[k].ndim == 2)
    assert torch.equal(torch.get_rng_state(), rng_before)  # torch's global RNG untouched
    assert list(tmp_cache.iterdir()) == []  # cache=False writes nothing


def test_training_lowers_the_loss(tmp_cache):
    tok = ByteTokenizer(model_max_length=TINY["n_ctx"])
    texts = tinylm_corpus("heldout").texts
    untrained = heldout_loss(train_tinylm(0, cache=False, **{**TINY, "epochs": 1, "lr": 1e-12}), tok, texts)
    trained = heldout_loss(train_tinylm(0, cache=False, **TINY), tok, texts)
    # an untrained net predicts ~uniformly over the 259 tokens: ln 259 = 5.56 nats
    assert untrained == pytest.approx(math.log(259), abs=0.05)
    assert trained < untrained - 0.5


def test_cache_round_trips_exactly(tmp_cache):
    fresh = train_tinylm(3, cache=False, **TINY).state_dict()
    model = train_tinylm(3, **TINY)
    path = tinylm_cache_path(3, **TINY)
    assert path.parent == tmp_cache and path.exists()
    assert [p.name for p in tmp_cache.iterdir()] == [path.name]  # no temporary file left behind
    assert _states_equal(torch.load(path, weights_only=True), fresh)
    assert _states_equal(model.state_dict(), fresh)
    assert model.neuronscope_id.startswith("tinylm:3:")  # non-default hyper-parameters are named
    # callers get independent copies
    with torch.no_grad():
        model.lm_head.weight.zero_()
    assert _states_equal(train_tinylm(3, **TINY).state_dict(), fresh)


def test_weights_come_from_the_disk_cache(tmp_cache):
    # seed 5's cache file holds seed 4's weights: loading seed 5 must return them untrained
    planted = train_tinylm(4, cache=False, **TINY).state_dict()
    path = tinylm_cache_path(5, **TINY)
    torch.save(planted, path)
    assert _states_equal(train_tinylm(5, **TINY).state_dict(), planted)


def test_corrupt_cache_file_is_retrained_and_replaced(tmp_cache):
    path = tinylm_cache_path(6, **TINY)
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="retraining"):
        model = train_tinylm(6, **TINY)
    fresh = train_tinylm(6, cache=False, **TINY).state_dict()
    assert _states_equal(model.state_dict(), fresh)
    assert _states_equal(torch.load(path, weights_only=True), fresh)


def test_cache_key_covers_seed_and_every_hyper_parameter(tmp_cache, tmp_path_factory, monkeypatch):
    base = tinylm_cache_path(0)
    assert base == tinylm_cache_path(0) and base.parent == tmp_cache
    assert base.name.startswith("tinylm-seed0-") and base.suffix == ".pt"
    assert tinylm_cache_path(1) != base
    default = TinyLMHparams()
    names = set()
    for f in fields(TinyLMHparams):
        value = getattr(default, f.name)
        changed = value * 2 if f.name != "warmup" else value / 2
        path = tinylm_cache_path(0, **{f.name: changed})
        assert path != base, f.name
        names.add(path.name)
        assert tinylm_cache_path(0, **{f.name: value}) == base  # an explicit default is the default
    assert len(names) == len(fields(TinyLMHparams))
    other = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.setenv("NEURONSCOPE_CACHE", str(other))
    assert tinylm_cache_path(0).parent == other
    # a different training corpus gives a different key
    corpus_hash = tinylm_module._corpus_hash
    monkeypatch.setattr(tinylm_module, "_corpus_hash", lambda: "another corpus")
    assert tinylm_cache_path(0).name != base.name
    # and so does an edit of the code that produces the weights
    monkeypatch.setattr(tinylm_module, "_corpus_hash", corpus_hash)
    assert tinylm_cache_path(0).name == base.name
    monkeypatch.setattr(tinylm_module, "_code_hash", lambda: "edited")
    assert tinylm_cache_path(0).name != base.name


@pytest.mark.slow
def test_parallel_processes_share_one_cache_file(tmp_cache):
    # two processes train the same configuration at once into one cache directory: both
    # finish, and the file left behind (written atomically) is complete and correct
    code = (
        "from neuronscope.testing.tinylm import train_tinylm; import torch; "
        f"m = train_tinylm(7, **{TINY!r}); print(float(sum(p.double().sum() for p in m.parameters())))"
    )
    env = {**os.environ, "NEURONSCOPE_CACHE": str(tmp_cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    fresh = train_tinylm(7, cache=False, **TINY).state_dict()
    assert _states_equal(torch.load(tinylm_cache_path(7, **TINY), weights_only=True), fresh)
    assert [p.suffix for p in tmp_cache.iterdir()] == [".pt"]


@pytest.mark.slow
def test_another_seed_trains_another_good_model(lm):
    model1, tok = load_tinylm(1)
    assert model1.neuronscope_id == "tinylm:1"
    assert not _states_equal(model1.state_dict(), lm[0].state_dict())
    assert heldout_loss(model1, tok) == pytest.approx(heldout_loss(*lm), abs=0.15)


def test_bad_hyper_parameters_raise():
    with pytest.raises(NeuronscopeError, match="unknown tiny LM hyper-parameter"):
        train_tinylm(0, layers=2)
    with pytest.raises(NeuronscopeError, match="multiple of n_heads"):
        tinylm_cache_path(0, d_model=30, n_heads=4)
    with pytest.raises(NeuronscopeError, match="seed"):
        train_tinylm(-1)
    with pytest.raises(NeuronscopeError, match="positive integer"):
        tinylm_cache_path(0, epochs=0)
    with pytest.raises(NeuronscopeError, match="tinylm:SEED"):
        tinylm_model("tinylm-0")


# --------------------------------------------------------------------------- corpus split


def test_heldout_split_is_ten_percent_of_each_language():
    full = load_corpus(default_corpus_path())
    per_lang = collections.Counter(full.labels["lang"])
    train, held = tinylm_corpus("train"), tinylm_corpus("heldout")
    held_counts = collections.Counter(held.labels["lang"])
    assert held_counts == {k: round(0.1 * n) for k, n in per_lang.items()}
    # the two splits partition the corpus (as a multiset of (text, lang) pairs)
    pairs = collections.Counter(zip(full.texts, full.labels["lang"], strict=True))
    split = collections.Counter(zip(train.texts, train.labels["lang"], strict=True))
    split.update(zip(held.texts, held.labels["lang"], strict=True))
    assert split == pairs
    assert tinylm_corpus("heldout").texts == held.texts  # fixed, not reshuffled
    with pytest.raises(NeuronscopeError, match="heldout"):
        tinylm_corpus("test")


# --------------------------------------------------------------------------- the trained default model


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_default_model_beats_the_unigram_byte_model(lm):
    model, tok = lm
    train_bytes = np.frombuffer("".join(tinylm_corpus("train").texts).encode(), dtype=np.uint8)
    unigram = _entropy(np.bincount(train_bytes, minlength=256))  # nats per byte, in-sample
    loss = heldout_loss(model, tok)
    assert 4.0 < unigram < 4.6
    assert loss < unigram - 1.5, (loss, unigram)
    assert loss > 1.0  # a model this small cannot be near-perfect on unseen text


def test_heldout_loss_equals_hand_computed_log_likelihood(lm):
    model, tok = lm
    texts = ["Wie geht es dir?", "こんにちは", "ok"]
    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([[BOS_ID, *t.encode()]])
            logp = torch.log_softmax(model(ids)[0, :-1].double(), dim=-1)
            total -= float(logp.gather(1, ids[0, 1:, None]).sum())
            count += len(t.encode())
    assert heldout_loss(model, tok, texts) == pytest.approx(total / count, rel=1e-5)
    assert heldout_loss(model, tok, texts, batch_size=1) == pytest.approx(total / count, rel=1e-5)


def test_per_language_heldout_loss(lm):
    model, tok = lm
    held = tinylm_corpus("heldout")
    by_lang = heldout_loss_by_lang(model, tok)
    assert sorted(by_lang) == sorted(set(held.labels["lang"]))
    # byte-weighted mean over languages = the overall held-out loss
    n_ctx = model.config.n_ctx
    nbytes = collections.Counter()
    for t, lang in zip(held.texts, held.labels["lang"], strict=True):
        nbytes[lang] += min(len(t.encode()), n_ctx - 1)
    mean = sum(by_lang[k] * n for k, n in nbytes.items()) / sum(nbytes.values())
    assert mean == pytest.approx(heldout_loss(model, tok), rel=1e-6)
    # every language is predicted better (by 0.25 nats per byte) than by a unigram byte model of
    # that language's own training text (add-one smoothed, evaluated on its held-out bytes): a
    # baseline that is told the language, which the model must infer from the text
    train = tinylm_corpus("train")
    for lang, loss in by_lang.items():
        tr = np.frombuffer("".join(t for t, g in zip(train.texts, train.labels["lang"], strict=True) if g == lang).encode(), np.uint8)
        ho = np.frombuffer("".join(t for t, g in zip(held.texts, held.labels["lang"], strict=True) if g == lang).encode(), np.uint8)
        p = (np.bincount(tr, minlength=256) + 1) / (len(tr) + 256)
        unigram_ce = float(-np.log(p[ho]).mean())
        assert loss < unigram_ce - 0.25, (lang, loss, unigram_ce)
    with pytest.raises(NeuronscopeError, match="no label"):
        heldout_loss_by_lang(model, tok, Corpus(["a"]))


def test_load_tinylm_returns_an_eval_model_with_ffn_sites(lm):
    model, tok = lm
    assert model.neuronscope_id == "tinylm:0"
    assert not model.training
    assert tok.model_max_length == model.config.n_ctx
    found = sites(model, TINYLM_FFN_SITES)
    assert [s.name for s in found] == [f"blocks.{i}.mlp.act" for i in range(model.config.n_layers)]
    assert isinstance(found[0].module, nn.GELU)
    assert model.blocks[0].mlp.fc_in.weight.shape == (model.config.d_ffn, model.config.d_model)
    assert model.lm_head.weight.shape == (len(tok), model.config.d_model)
    assert tinylm_model("tinylm:0").state_dict().keys() == model.state_dict().keys()


# --------------------------------------------------------------------------- architecture


def test_causal_mask_later_tokens_never_change_earlier_logits(lm):
    model, _ = lm
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (3, 40), generator=g)
    ids[:, 0] = BOS_ID
    changed = ids.clone()
    changed[:, 25:] = torch.randint(0, 256, (3, 15), generator=g)
    with torch.no_grad():
        a, b = model(ids), model(changed)
        am, bm = model(ids, torch.ones_like(ids)), model(changed, torch.ones_like(ids))
    assert torch.equal(a[:, :25], b[:, :25])
    assert torch.equal(am[:, :25], bm[:, :25])
    assert not torch.allclose(a[:, 25:], b[:, 25:])  # the change itself is seen


def test_padding_left_or_right_leaves_real_tokens_unchanged(lm):
    model, tok = lm
    texts = ["Buenos días", "Hi"]
    with torch.no_grad():
        alone = [model(torch.tensor([tok.encode(t)]))[0] for t in texts]
        enc = tok(texts, padding=True, return_tensors="pt")
        right = model(enc["input_ids"], enc["attention_mask"])
        left_ids = torch.tensor([[PAD_ID] * 9 + tok.encode("Hi")])
        left = model(left_ids, (left_ids != PAD_ID).long())
    n = len(tok.encode("Hi"))
    torch.testing.assert_close(right[0], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right[1, :n], alone[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left[0, 9:], alone[1], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(left).all()  # padding queries have no empty softmax row


def test_vocabulary_projection_is_what_a_last_layer_neuron_writes(lm):
    # with ln_f the identity, adding 1 to unit u of the last block's FFN at the last position
    # changes the last logits by exactly W_U @ W_out[:, u], and no other position's logits
    model = copy.deepcopy(lm[0])
    model.ln_f = nn.Identity()
    last = model.blocks[-1].mlp
    ids = torch.tensor([[BOS_ID, *b"Guten Morgen"]])
    units = [0, 17, model.config.d_ffn - 1]

    def bump(u):
        def hook(_m, _inp, out):
            out = out.clone()
            out[:, -1, u] += 1.0
            return out
        return hook

    with torch.no_grad():
        base = model(ids).double()
        for u in units:
            handle = last.act.register_forward_hook(bump(u))
            try:
                moved = model(ids).double()
            finally:
                handle.remove()
            expected = model.lm_head.weight.double() @ last.fc_out.weight[:, u].double()
            torch.testing.assert_close(moved[0, -1] - base[0, -1], expected, atol=2e-5, rtol=1e-4)
            assert torch.equal(moved[0, :-1], base[0, :-1])
            assert expected.abs().max() > 1e-2  # a non-trivial write


def test_bad_model_inputs_raise(lm):
    model, _ = lm
    with pytest.raises(NeuronscopeError, match="max_length"):
        model(torch.zeros(1, model.config.n_ctx + 1, dtype=torch.long))
    with pytest.raises(NeuronscopeError, match="0..258"):
        model(torch.tensor([[BOS_ID, 300]]))
    with pytest.raises(NeuronscopeError, match="batch"):
        model(torch.tensor([BOS_ID, 65]))


# --------------------------------------------------------------------------- generation


def test_generate_greedy_and_seeded_sampling(lm):
    model, tok = lm
    prompt = "Hello, how are"
    ids = tok.encode(prompt)
    greedy = model.generate_ids(ids, 30)
    assert greedy == model.generate_ids(ids, 30)
    assert model.generate(prompt, 30) == tok.decode(greedy)
    # greedy decoding by hand: the argmax over bytes and EOS, fed back in
    seq, by_hand = list(ids), []
    with torch.no_grad():
        for _ in range(30):
            logits = model(torch.tensor([seq]))[0, -1]
            logits[[BOS_ID, PAD_ID]] = -float("inf")
            nxt = int(logits.argmax())
            if nxt == EOS_ID:
                break
            by_hand.append(nxt)
            seq.append(nxt)
    assert greedy == by_hand
    samples = [model.generate_ids(ids, 40, greedy=False, seed=s) for s in (0, 0, 1, 2)]
    assert samples[0] == samples[1]
    assert len({tuple(x) for x in samples[1:]}) > 1
    assert all(0 <= i < 256 for x in samples for i in x)  # bytes only: no BOS, PAD or EOS
    assert model.generate(prompt, 0) == ""
    with pytest.raises(NeuronscopeError, match="shorten"):
        model.generate("x" * model.config.n_ctx, 5)
    with pytest.raises(NeuronscopeError, match="temperature"):
        model.generate(prompt, 5, greedy=False, temperature=0.0)


def test_generation_fills_the_context_without_eos(tmp_cache):
    model = train_tinylm(0, cache=False, **TINY)
    new = model.generate_ids([BOS_ID, 97, 98], 100, stop_at_eos=False)
    # BOS + 2 prompt bytes + the new bytes fill the 32-token context exactly
    assert len(new) == TINY["n_ctx"] - 3
    assert all(0 <= i < 256 for i in new)
    assert len(model.generate_ids([BOS_ID, 97, 98], 5, stop_at_eos=False)) == 5


# --------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_tokenizer_round_trips_and_encodes_utf8_bytes(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == [256] + list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_tokenizer_round_trips_the_whole_corpus():
    tok = ByteTokenizer()
    texts = load_corpus(default_corpus_path()).texts
    enc = tok(texts)
    assert [tok.decode(x) for x in enc["input_ids"]] == texts


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_offsets_map_each_byte_to_its_character(text):
    tok = ByteTokenizer()
    enc = tok(text, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], enc["offset_mapping"]
    assert len(offs) == len(ids)
    assert offs[0] == (0, 0)  # BOS
    # consecutive tokens sharing a span are exactly the UTF-8 bytes of that one character,
    # and the spans walk through the text in order
    groups = []
    for tid, span in zip(ids[1:], offs[1:], strict=True):
        if groups and groups[-1][0] == span:
            groups[-1][1].append(tid)
        else:
            groups.append((span, [tid]))
    assert [span for span, _ in groups] == [(i, i + 1) for i in range(len(text))]
    for (s, e), group in groups:
        assert bytes(group) == text[s:e].encode("utf-8")


def test_offsets_with_padding_and_truncation():
    tok = ByteTokenizer()
    enc = tok(["é🙂", "a"], padding=True, truncation=True, max_length=4,
              return_offsets_mapping=True, return_tensors="pt")
    # "é" is 2 bytes, "🙂" 4: the first 3 bytes after BOS are é, é, 🙂
    assert enc["offset_mapping"].tolist() == [[[0, 0], [0, 1], [0, 1], [1, 2]],
                                              [[0, 0], [0, 1], [0, 0], [0, 0]]]


def test_padding_truncation_and_masks():
    tok = ByteTokenizer()
    enc = tok(["a", "héllo", ""], padding=True, truncation=True, max_length=4, return_tensors="pt")
    assert enc["input_ids"].dtype == torch.long
    assert enc["input_ids"].tolist() == [
        [256, 97, 258, 258],
        [256, 104, 0xC3, 0xA9],
        [256, 258, 258, 258],
    ]
    assert enc["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    wide = tok(["ab"], padding="max_length", max_length=6, return_tensors="pt")
    assert wide["input_ids"].tolist() == [[256, 97, 98, 258, 258, 258]]
    assert tok("ab", return_tensors="pt")["input_ids"].shape == (1, 3)
    assert tok("ab") == {"input_ids": [256, 97, 98], "attention_mask": [1, 1, 1]}
    # truncation without max_length stops at model_max_length
    assert len(ByteTokenizer(model_max_length=5)("abcdefgh", truncation=True)["input_ids"]) == 5
    with pytest.raises(NeuronscopeError, match="padding=True"):
        tok(["a", "bb"], return_tensors="pt")
    with pytest.raises(NeuronscopeError, match="list of str"):
        tok([b"bytes"])
    with pytest.raises(NeuronscopeError, match="list of str"):
        tok([])


def test_token_strings_and_decoding_of_invalid_utf8():
    tok = ByteTokenizer()
    assert len(tok) == 259
    assert tok.convert_ids_to_tokens([65, 32, 0xE2, 10, 0x7F, BOS_ID, EOS_ID, PAD_ID]) == [
        "A", " ", "<0xE2>", "<0x0A>", "<0x7F>", "<bos>", "<eos>", "<pad>"
    ]
    assert tok.convert_ids_to_tokens(126) == "~"
    assert tok.decode([0xE2, 0x82]) == b"\xe2\x82".decode("utf-8", "replace")
    assert tok.decode([BOS_ID, 97, EOS_ID], skip_special_tokens=False) == "<bos>a<eos>"
    assert tok.decode(torch.tensor([[BOS_ID, 104, 105, PAD_ID]])) == "hi"
    # a special token ends a byte run: the halves of "é" around it are two invalid sequences
    assert tok.decode([0xC3, EOS_ID, 0xA9]) == "\ufffd\ufffd"
    assert tok.decode([0xC3, 0xA9]) == "é"
    with pytest.raises(NeuronscopeError, match="vocabulary"):
        tok.convert_ids_to_tokens([259])


# --------------------------------------------------------------------------- recording


def test_text_source_records_one_sample_per_byte_token(lm):
    model, tok = lm
    held = tinylm_corpus("heldout")
    corpus = Corpus(held.texts[:37] + ["ünïcödé " * 12], {"lang": held.labels["lang"][:37] + ["de"]})
    max_tokens = 48
    source = TextSource(corpus, tok, batch_size=8, max_tokens=max_tokens)
    acts = collections.defaultdict(list)
    token_ids, docs, pos = [], [], []
    for batch, a in forward_batches(model, source, TINYLM_FFN_SITES):
        for k, v in a.items():
            acts[k].append(v)
        token_ids.append(batch.samples["token_id"])
        docs.append(batch.samples["doc"])
        pos.append(batch.samples["pos"])
    # batches are length-bucketed: compare in corpus order, rows sorted by (doc, pos)
    order = np.lexsort((np.concatenate(pos), np.concatenate(docs)))
    acts = {k: [np.concatenate(v)[order]] for k, v in acts.items()}
    token_ids, docs = [np.concatenate(token_ids)[order]], [np.concatenate(docs)[order]]
    expected = [([BOS_ID] + list(t.encode()))[:max_tokens] for t in corpus.texts]
    n = sum(len(e) for e in expected)
    assert n == sum(min(len(t.encode()) + 1, max_tokens) for t in corpus.texts)
    assert sorted(acts) == [f"blocks.{i}.mlp.act" for i in range(model.config.n_layers)]
    for v in acts.values():
        assert np.concatenate(v).shape == (n, model.config.d_ffn)
    assert np.concatenate(token_ids).tolist() == [i for e in expected for i in e]
    assert np.concatenate(docs).tolist() == [d for d, e in enumerate(expected) for _ in e]
    # the activations of a padded batch equal those of each document run alone
    site = "blocks.1.mlp.act"
    recorded = np.concatenate(acts[site])
    captured = {}
    handle = model.blocks[1].mlp.act.register_forward_hook(lambda _m, _i, out: captured.update(out=out))
    try:
        start = 0
        for e in expected[:3] + expected[-1:]:
            with torch.no_grad():
                model(torch.tensor([e]))
            if e is expected[-1]:
                start = n - len(e)
            np.testing.assert_allclose(recorded[start : start + len(e)], captured["out"][0].numpy(), atol=1e-5)
            start += len(e)
    finally:
        handle.remove()
    assert source.vocab()[:3] == ["<0x00>", "<0x01>", "<0x02>"] and source.vocab()[65] == "A"

