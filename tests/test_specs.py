"""What users type, resolved: model names, sets of models and population specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.spatial.distance import squareform

import neuronscope as ns
from neuronscope.errors import NeuronscopeError
from neuronscope.rdms import RDMs
from neuronscope.specs import is_rdm_file, load_model, load_populations, load_zoo
from neuronscope.testing.digits import digits_data, train_digits


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_model_digits_equals_train_digits() -> None:
    model, tokenizer = load_model("digits-mlp:0")
    assert tokenizer is None and not model.training
    assert _same_weights(model, train_digits("mlp", 0))
    assert not _same_weights(model, train_digits("mlp", 1))
    untrained, _ = load_model("digits-mlp:0:untrained")
    assert _same_weights(untrained, train_digits("mlp", 0, trained=False))
    assert not _same_weights(untrained, model)
    assert untrained.neuronscope_id == "digits-mlp:0:untrained"


@pytest.mark.parametrize(
    "name, fix",
    [
        ("no-such-model", "unknown model 'no-such-model'; pass 'minilm', 'e5-small', a local Hugging Face "
                          "model directory with config.json, tinylm:SEED, or digits-mlp:SEED / "
                          "digits-cnn:SEED / digits-snn:SEED[:untrained]"),
        ("digits-snn:x", "bad SNN model name 'digits-snn:x'; use digits-snn:SEED[:untrained]"),
        ("digits-mlp:x", "bad digits model name 'digits-mlp:x'; use digits-mlp:SEED or digits-cnn:SEED[:untrained]"),
        ("digits-mlp:0:trained", "bad digits model name 'digits-mlp:0:trained'; the optional suffix is ':untrained'"),
        ("digits-rnn:0", "unknown digits architecture 'rnn'; use one of mlp, cnn"),
    ],
)
def test_bad_model_names_name_the_fix(name: str, fix: str) -> None:
    with pytest.raises(NeuronscopeError) as exc:
        load_model(name)
    assert str(exc.value) == fix


def test_a_directory_without_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(NeuronscopeError, match="local Hugging Face model directory with config.json"):
        load_model(tmp_path)


def test_load_zoo_digits() -> None:
    zoo = load_zoo(["digits-mlp:1", "digits-mlp:0:untrained"], batch_size=100)
    assert list(zoo.models) == ["digits-mlp:1", "digits-mlp:0:untrained"]
    assert _same_weights(zoo.models["digits-mlp:1"], train_digits("mlp", 1))
    assert (zoo.kind, zoo.sites, zoo.conv) == ("digits", "act*", "positions")
    x, y = digits_data("all", "mlp")
    assert len(zoo.source) == len(x) == 1797 and zoo.source.batch_size == 100
    np.testing.assert_array_equal(zoo.source.data.numpy(), x)
    assert zoo.source.label_categories == {"digit": [str(d) for d in range(10)]}
    cnn = load_zoo(["digits-cnn:0"])
    assert (cnn.kind, cnn.sites, cnn.conv) == ("digits", "act*", "mean")
    assert tuple(cnn.source.data.shape) == (1797, 1, 8, 8)


def test_load_zoo_text(small_corpus: Path) -> None:
    from neuronscope.sources.models import BERT_FFN_SITES
    from neuronscope.sources.text import TextSource

    zoo = load_zoo(["minilm"], corpus=small_corpus, batch_size=8, max_tokens=16)
    assert (zoo.kind, zoo.sites, zoo.conv) == ("text", BERT_FFN_SITES, "positions")
    assert isinstance(zoo.source, TextSource) and len(zoo.source.corpus.texts) == 48
    assert zoo.source.max_tokens == 16 and zoo.source.batch_size == 8
    assert zoo.models["minilm"].neuronscope_id == "minilm"


@pytest.mark.parametrize(
    "names, fix",
    [
        ([], "no model named; pass one or more model names"),
        (["digits-mlp:0", "digits-mlp:0"], "a model is listed twice; give each model once"),
        (["digits-mlp:0", "minilm"], "digits models and text models see different inputs; list only one kind"),
        (["digits-mlp:0", "digits-cnn:0"],
         "digits-cnn takes differently shaped inputs from digits-mlp / digits-snn; list one input shape"),
    ],
)
def test_load_zoo_rejects_mixed_or_repeated_names(names: list[str], fix: str) -> None:
    with pytest.raises(NeuronscopeError) as exc:
        load_zoo(names)
    assert str(exc.value) == fix


@pytest.fixture()
def small_run(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A real run of a tiny network: sites ``1`` (ReLU) and ``3`` (Tanh), float32 activations,
    and the activations computed directly."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4), torch.nn.Tanh())
    x = torch.randn(40, 6)
    run_dir = tmp_path / "run.zarr"
    ns.record(model, ns.TensorSource(x, batch_size=16), "1,3", out=run_dir, keep="activations",
              dtype="float32", progress=False)
    with torch.no_grad():
        h1 = model[1](model[0](x)).numpy()
        h3 = model(x).numpy()
    return run_dir, h1, h3


def test_load_populations_run_glob(small_run: tuple) -> None:
    run_dir, h1, h3 = small_run
    pops = load_populations(f"{run_dir}:*")
    assert list(pops) == ["1", "3"]
    for site, expected in (("1", h1), ("3", h3)):
        pop = pops[site]
        assert isinstance(pop, xr.DataArray) and pop.dims == ("sample", "neuron")
        assert set(pop.coords["site"].values) == {site}
        np.testing.assert_array_equal(pop.coords["unit"].values, np.arange(expected.shape[1]))
        np.testing.assert_allclose(pop.values, expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(pop.coords["item"].values, np.arange(40))
    assert list(load_populations(f"{run_dir}:3")) == ["3"]
    assert list(load_populations(f"{run_dir}:3,1")) == ["1", "3"]  # the run's order
    assert list(load_populations(f"{run_dir}:")) == ["1", "3"]  # an empty glob: every site


def test_load_populations_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    resp = rng.normal(size=(12, 5))
    np.save(tmp_path / "brain.npy", resp)
    pops = load_populations(tmp_path / "brain.npy")
    assert list(pops) == ["brain"]
    np.testing.assert_array_equal(pops["brain"].values, resp)
    np.testing.assert_array_equal(pops["brain"].coords["stimulus"].values, np.arange(12))

    d = np.abs(rng.normal(size=(2, 6, 6)))
    d = (d + d.transpose(0, 2, 1)) / 2
    d[:, np.arange(6), np.arange(6)] = 0
    np.savez(tmp_path / "subjects.npz", rdms=np.stack([squareform(m) for m in d]))
    np.savez(tmp_path / "responses.npz", responses=resp)
    assert is_rdm_file(tmp_path / "subjects.npz") and not is_rdm_file(tmp_path / "responses.npz")
    assert not is_rdm_file(tmp_path / "brain.npy")
    rdms = load_populations(str(tmp_path / "subjects.npz"))["subjects"]
    assert isinstance(rdms, RDMs)
    assert len(rdms) == 2
    np.testing.assert_allclose(rdms.square(0), d[0])
    np.testing.assert_allclose(rdms.square(1), d[1])
    assert isinstance(load_populations(tmp_path / "responses.npz")["responses"], xr.DataArray)


def test_load_populations_errors_name_the_fix(small_run: tuple, tmp_path: Path) -> None:
    run_dir, _, _ = small_run
    cases = [
        ("plainword", "'plainword' is neither a file nor RUN:SITE_GLOB; check the path"),
        (f"{tmp_path}/nowhere:*", f"run '{tmp_path}/nowhere' does not exist; give RUN:SITE_GLOB of a recorded run"),
    ]
    for spec, fix in cases:
        with pytest.raises(NeuronscopeError) as exc:
            load_populations(spec)
        assert str(exc.value) == fix
    with pytest.raises(NeuronscopeError, match="layer"):  # the store words it; the glob is named
        load_populations(f"{run_dir}:layer*")
    summaries_only = tmp_path / "summaries.zarr"
    ns.record(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()),
              ns.TensorSource(torch.randn(10, 3), batch_size=5), "1", out=summaries_only,
              keep="summaries", progress=False)
    with pytest.raises(NeuronscopeError) as exc:
        load_populations(f"{summaries_only}:*")
    assert str(exc.value) == f"run {summaries_only} kept no activations; record with activations to compare"


def test_load_model_tinylm_equals_load_tinylm() -> None:
    from neuronscope.testing.tinylm import ByteTokenizer, load_tinylm

    model, tok = load_model("tinylm:0")
    ref, _ = load_tinylm(0)
    assert model.neuronscope_id == "tinylm:0" and isinstance(tok, ByteTokenizer)
    for (k, a), (k2, b) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    with pytest.raises(NeuronscopeError, match="tinylm:SEED"):
        load_model("tinylm:first")


def test_load_zoo_gives_each_text_model_its_own_tokenizer(small_corpus: Path) -> None:
    from neuronscope.specs import ffn_sites
    from neuronscope.testing.tinylm import TINYLM_FFN_SITES

    zoo = load_zoo(["minilm", "e5-small"], corpus=small_corpus, batch_size=8, max_tokens=16)
    mini, e5 = zoo.sources["minilm"], zoo.sources["e5-small"]
    assert zoo.source is mini and len(mini.tokenizer) == 30522 and len(e5.tokenizer) == 250002
    assert mini.corpus is e5.corpus and (mini.batch_size, e5.max_tokens) == (8, 16)
    first = {m: next(s.batches()).samples for m, s in zoo.sources.items()}
    assert len(first["minilm"]["doc"]) != len(first["e5-small"]["doc"])  # each tokenized its own way
    assert ffn_sites("tinylm:3") == TINYLM_FFN_SITES and ffn_sites("e5-small") == zoo.sites
