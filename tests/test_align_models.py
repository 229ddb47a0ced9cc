"""Two real models with different tokenizers (MiniLM's WordPiece, e5-small's XLM-R
SentencePiece): refused at token level before any forward pass, aligned by document and by
character span in lockstep, and compared by document from their recorded runs — each
against pooling done by hand on the models' own activations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from aligning import pooled_means, segments, tokens_of

from neuronscope.analyses.cka import linear_cka_from_stats
from neuronscope.errors import NeuronscopeError
from neuronscope.lockstep import record_lockstep
from neuronscope.recording import forward_batches, record
from neuronscope.sources.text import TextSource, load_corpus
from neuronscope.specs import load_population_pair

SITES = {"minilm": "encoder.layer.5.intermediate", "e5-small": "encoder.layer.11.intermediate"}
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def corpus(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 documents of the bundled corpus (12 languages) as a .txt with blank lines between
    some, so document ids are line numbers, not indices."""
    texts = load_corpus(small_corpus).texts[:30]
    path = tmp_path_factory.mktemp("align") / "docs.txt"
    path.write_text("\n".join(t + ("\n" if i % 4 == 1 else "") for i, t in enumerate(texts)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pair(minilm, e5, corpus):
    models = {"minilm": minilm[0], "e5-small": e5[0]}
    sources = {"minilm": TextSource(corpus, minilm[1], batch_size=8, max_tokens=MAX_TOKENS),
               "e5-small": TextSource(corpus, e5[1], batch_size=8, max_tokens=MAX_TOKENS)}
    return models, sources


@pytest.fixture(scope="module")
def token_acts(pair):
    """Each model's own activations and sample coordinates, token by token."""
    models, sources = pair
    out = {}
    for m in models:
        acts, samples = [], []
        for batch, a in forward_batches(models[m], sources[m], SITES[m]):
            acts.append(a[SITES[m]])
            samples.append(batch.samples)
        coords = {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}
        order = np.lexsort((coords["pos"], coords["doc"]))  # corpus order, whatever the batching
        out[m] = (np.concatenate(acts)[order], {k: v[order] for k, v in coords.items()})
    return out


def _doc_means(acts: np.ndarray, samples: dict, pool: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Pooled per document over its real tokens, by pandas groupby."""
    import pandas as pd

    real = samples["special"] == 0
    df = pd.DataFrame(acts[real].astype(np.float64))
    g = df.groupby(samples["doc"][real], sort=True)
    res = {"mean": g.mean, "max": g.max, "last": g.last}[pool]()
    return res.index.to_numpy(), res.to_numpy()


def _cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) by its definition on centred features."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_token_level_is_refused_before_any_forward_pass(pair) -> None:
    models, sources = pair
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in models.values()]
    try:
        with pytest.raises(NeuronscopeError) as exc:
            record_lockstep(models, sources, SITES, align="token")
    finally:
        for h in hooks:
            h.remove()
    assert calls == []
    msg = str(exc.value)
    assert "\n" not in msg and "tokenize the corpus differently" in msg
    assert "align by word, char-span or doc" in msg
    # one source shared by models with different vocabularies is refused up front too
    with pytest.raises(NeuronscopeError, match="has 30522 token embeddings but its source's tokenizer has 250002"):
        record_lockstep(models, sources["e5-small"], SITES)
    assert calls == []


def test_cli_match_token_level_refused_in_one_line(corpus, capsys) -> None:
    from neuronscope.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["match", "--models", "minilm", "e5-small", "--corpus", str(corpus), "--align", "token", "--json"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: models 'minilm' and 'e5-small' tokenize the corpus differently")
    with pytest.raises(SystemExit):
        main(["match", "--models", "minilm", "e5-small", "--align", "sentence"])
    assert capsys.readouterr().err.splitlines() == ["error: align must be one of token, word, char-span, doc, not 'sentence'"]


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_doc_level_lockstep_equals_hand_pooled_documents(pair, token_acts, pool) -> None:
    models, sources = pair
    lock = record_lockstep(models, sources, SITES, align="doc", pool=pool)
    (da, xa), (db, xb) = (_doc_means(*token_acts[m], pool) for m in models)
    np.testing.assert_array_equal(da, db)
    assert lock.n_samples == len(da) == 30 and lock.source["align"] == "doc"
    assert da[:4].tolist() == [0, 1, 3, 4]  # line numbers: a blank line after the second document
    ref = np.corrcoef(xa.T, xb.T)[:1536, 1536:]
    got = lock.correlation("minilm", "e5-small")
    ok = np.isfinite(ref)
    assert ok.mean() > 0.9
    np.testing.assert_allclose(got[ok], ref[ok], atol=2e-4)
    # linear CKA from the streamed statistics equals CKA of the hand-pooled documents
    stats = lock.cross("minilm", "e5-small").sufficient_stats()
    assert linear_cka_from_stats(**stats) == pytest.approx(_cka(xa, xb), rel=1e-4)


def test_char_span_lockstep_equals_brute_force_segments(pair, token_acts, minilm, e5, corpus) -> None:
    models, sources = pair
    lock = record_lockstep(models, sources, SITES, align="char-span")
    texts = load_corpus(corpus).texts
    ref = segments(texts, [tokens_of(minilm[1], texts, MAX_TOKENS), tokens_of(e5[1], texts, MAX_TOKENS)],
                   [MAX_TOKENS] * 2)
    pooled = []
    for k, m in enumerate(models):
        acts, samples = token_acts[m]
        first = np.r_[0, np.cumsum(np.unique(samples["doc"], return_counts=True)[1])]
        pooled.append(pooled_means(acts, [first[d] + np.array(per[k]) for d, _, _, per in ref]))
    assert lock.n_samples == len(ref) > 150
    ref_r = np.corrcoef(pooled[0].T, pooled[1].T)[:1536, 1536:]
    ok = np.isfinite(ref_r)
    np.testing.assert_allclose(lock.correlation("minilm", "e5-small")[ok], ref_r[ok], atol=2e-4)


@pytest.fixture(scope="module")
def runs(pair, tmp_path_factory):
    models, sources = pair
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for m in models:
        out[m] = record(models[m], sources[m], SITES[m], out=root / f"{m}.zarr", keep="both", dtype="float32",
                        progress=False)
    return out


def test_doc_level_cka_between_runs_equals_hand_computed(runs) -> None:
    pooled = []
    for m, run in runs.items():
        pop = run.population(SITES[m])
        samples = {k: np.asarray(pop.coords[k].values) for k in ("doc", "special")}
        pooled.append(_doc_means(pop.values, samples))
    np.testing.assert_array_equal(pooled[0][0], pooled[1][0])
    want = _cka(pooled[0][1], pooled[1][1])
    pa, pb = load_population_pair(f"{runs['minilm'].path}:{SITES['minilm']}",
                                  f"{runs['e5-small'].path}:{SITES['e5-small']}", "doc", "mean")
    xa = pa[SITES["minilm"]]
    assert xa.sizes["sample"] == 30 and xa.coords["stimulus"].values.tolist() == pooled[0][0].tolist()
    np.testing.assert_allclose(xa.values, pooled[0][1], rtol=1e-5, atol=1e-6)
    from typer.testing import CliRunner

    from neuronscope.cli import app

    res = CliRunner().invoke(app, ["compare", f"{runs['minilm'].path}:{SITES['minilm']}",
                                   f"{runs['e5-small'].path}:{SITES['e5-small']}", "--align", "doc", "--pool", "mean",
                                   "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)["value"]
    assert got == pytest.approx(want, rel=1e-6)
    print(f"doc-level CKA minilm L5 vs e5 L11: compare {got:.6f}, by hand {want:.6f}")


def test_compare_refuses_mixed_tokenizers_before_loading(runs, monkeypatch, capsys) -> None:
    from neuronscope.cli import main
    from neuronscope.store import Run

    def no_loading(*_a, **_k):
        raise AssertionError("activations were loaded before the alignment check")

    monkeypatch.setattr(Run, "population", no_loading)
    a, b = (f"{runs[m].path}:{SITES[m]}" for m in ("minilm", "e5-small"))
    with pytest.raises(SystemExit) as exc:
        main(["compare", a, b])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "tokenize the corpus differently (document 0:" in err[0] and "--align doc" in err[0]
    with pytest.raises(SystemExit):
        main(["compare", a, b, "--align", "token"])
    assert "--align doc" in capsys.readouterr().err


def test_word_and_char_span_compare_between_runs_equal_lockstep(runs, pair) -> None:
    models, sources = pair
    a, b = (f"{runs[m].path}:{SITES[m]}" for m in ("minilm", "e5-small"))
    for level in ("word", "char-span"):
        pa, pb = load_population_pair(a, b, level, "max")
        lock = record_lockstep(models, sources, SITES, align=level, pool="max", within=False)
        x, y = pa[SITES["minilm"]].values.astype(np.float64), pb[SITES["e5-small"]].values.astype(np.float64)
        assert len(x) == lock.n_samples
        ref = np.corrcoef(x.T, y.T)[:1536, 1536:]
        ok = np.isfinite(ref)
        np.testing.assert_allclose(lock.correlation("minilm", "e5-small")[ok], ref[ok], atol=2e-4)
