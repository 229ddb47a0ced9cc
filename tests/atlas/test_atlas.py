"""The static atlas: data files, escaping, and real pages rendered by headless Chromium."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from atlas_browser import page_url, parse_dom

from neuronscope.atlas import build
from neuronscope.atlas.build import CHUNK, QLEVELS, js_literal, rank_curve, write_site
from neuronscope.errors import NeuronscopeError

TITLE = "neuronscope atlas"
# Each would change the DOM or the title if it were ever parsed as markup or run as script.
HOSTILE = [
    "<script>document.title='pwned'</script>",
    "<img src=x onerror=\"document.title='pwned';document.body.setAttribute('data-pwned','1')\">",
    "javascript:document.title='pwned'",
    "\"><b id=injected>bold</b><a href=\"javascript:alert(1)\">",
    "'></span><svg onload=\"document.title='pwned'\"></svg>",
    "</script><!-- \u2028\u2029 &amp; &lt;",
]


def _load_data_script(path: Path) -> tuple[str, object]:
    """Parse one data/<key>.js back into (key, value): it must be exactly our assignment form."""
    text = path.read_text(encoding="utf-8")
    m = re.fullmatch(r"window\.NS_DATA=window\.NS_DATA\|\|\{\};window\.NS_DATA\[(\"[^\"]*\")\]=(.*);\n",
                     text, re.S)
    assert m, f"{path.name} is not a data assignment"
    return json.loads(m.group(1)), json.loads(m.group(2))


def synthetic_site(name: str, n: int, seed: int) -> dict:
    """A site dict as collect_atlas_data produces it, with hostile strings in every text slot."""
    r = np.random.default_rng(seed)
    freq = np.round(r.random(n) * 0.5, 6)
    freq[:3] = 0.0
    table = {
        "unit": np.arange(n),
        "freq": freq,
        "mean": r.normal(size=n),
        "dead": freq == 0,
        "dormant_score": r.random(n),
        "dormant": r.random(n) < 0.2,
        "positional_score": r.random(n),
        "positional": r.random(n) < 0.1,
        "token_score": r.random(n),
        "top_token": [HOSTILE[i % len(HOSTILE)] for i in range(n)],
    }
    examples = []
    for u in range(n):
        exs = []
        for k in range(3):
            toks = [f"u{u}k{k}t{j}" if j % 2 else HOSTILE[(u + j) % len(HOSTILE)] for j in range(9)]
            acts = [float(v) for v in r.normal(size=9)]
            acts[4] = 5.0 - k
            if k == 2:
                acts[0] = None
            exs.append({"activation": 5.0 - k, "sample": 10 * k + u, "doc": k, "pos": 4,
                        "tokens": toks, "acts": acts, "peak": 4})
        examples.append(exs)
    return {
        "name": name,
        "summary": {"samples": 1000, "pct_active_per_token": 25.0, "dead_frac": 3 / n,
                    "dormant_frac": 0.2, "powerlaw_exponent": -1.1, "top20_share": 0.5},
        "table": table,
        "hist_edges": np.linspace(-2.0, 6.0, 17),
        "hist_counts": r.integers(0, 50, size=(n, 16)),
        "hist_under": np.zeros(n, dtype=np.int64),
        "hist_over": np.ones(n, dtype=np.int64),
        "examples": examples,
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[dict, Path]:
    data = {
        "title": "toy " + HOSTILE[0],
        "meta": {"model": HOSTILE[1], "samples": 1000},
        "sites": [synthetic_site("blocks.0.mlp", 70, 0), synthetic_site("blocks.1.mlp" + HOSTILE[3], 150, 1)],
        "extras": [{"name": "cka", "title": "CKA " + HOSTILE[0], "notes": {"metric": "linear CKA"},
                    "heatmaps": [{"title": "layers", "matrix": np.eye(3), "rows": ["a", "b", HOSTILE[2]],
                                  "cols": ["a", "b", "c"]},
                                 {"title": "big", "matrix": np.arange(400 * 10).reshape(400, 10)}]}],
    }
    out = tmp_path_factory.mktemp("atlas") / "site"
    return data, write_site(data, out)


# ----------------------------------------------------------------------------- pure python


def test_js_literal_is_script_safe_and_lossless():
    obj = {"s": HOSTILE, "n": [1, 2.5, None], "u": "\u2028\u2029"}
    text = js_literal(obj)
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in text
    assert json.loads(text) == obj


def test_rank_curve_known_answer():
    c = rank_curve([0.1, 0.4, 0.0, 0.2, 0.3], points=5)
    assert c["r"] == [1, 2, 3, 4, 5]
    assert c["f"] == [0.4, 0.3, 0.2, 0.1, 0.0]
    big = rank_curve(np.linspace(0, 1, 10000), points=50)
    assert big["r"][0] == 1 and big["r"][-1] == 10000 and len(big["r"]) <= 50
    assert big["f"][0] == 1.0 and big["f"][-1] == 0.0
    assert all(a >= b for a, b in zip(big["f"], big["f"][1:], strict=False))


def test_data_files_round_trip(synthetic):
    data, index = synthetic
    ddir = index.parent / "data"
    files = {p.name: _load_data_script(p) for p in ddir.glob("*.js")}
    for name, (key, _) in files.items():
        assert name == key + ".js"
        text = (ddir / name).read_text(encoding="utf-8")
        assert "</" not in text and "\u2028" not in text
    vocab = files["vocab.js"][1]
    idx = files["index.js"][1]
    assert [s["name"] for s in idx["sites"]] == [s["name"] for s in data["sites"]]
    for si, site in enumerate(data["sites"]):
        n = len(site["table"]["unit"])
        assert len(idx["sites"][si]["rank"]["r"]) <= n
        table = files[f"site-{si}.js"][1]
        assert table["rows"]["top_token"] == site["table"]["top_token"]
        assert table["rows"]["dead"] == [bool(x) for x in site["table"]["dead"]]
        n_chunks = -(-n // CHUNK)
        assert {f"site-{si}-{c}.js" for c in range(n_chunks)} <= set(files)
        assert f"site-{si}-{n_chunks}.js" not in files
        for u in (0, CHUNK - 1, CHUNK, n - 1):
            chunk = files[f"site-{si}-{u // CHUNK}.js"][1]
            nb = chunk["neurons"][u - chunk["start"]]
            assert nb["h"] == site["hist_counts"][u].tolist()
            for packed, ex in zip(nb["e"], site["examples"][u], strict=True):
                activation, sample, doc, pos, toks, q, peak = packed[:7]
                assert packed[7:] == [None, None]  # no item ids or labels in this site
                assert [vocab[t] for t in toks] == ex["tokens"]
                assert (activation, sample, doc, pos, peak) == (
                    ex["activation"], ex["sample"], ex["doc"], ex["pos"], ex["peak"])
                for qi, a in zip(q, ex["acts"], strict=True):
                    if a is None:
                        assert qi is None
                    else:  # dequantized within half a level of the neuron's scale
                        assert abs(qi / QLEVELS * nb["s"] - a) <= 0.5 / QLEVELS * nb["s"] + 1e-6
    big = files["extra-0.js"][1]["heatmaps"][1]
    m = np.array(big["matrix"])
    assert m.shape == (build.MAX_HEATMAP, 10)
    assert m[:, 0].mean() == pytest.approx(np.arange(4000).reshape(400, 10)[:, 0].mean())
    assert "block-averaged" in big["note"].lower()


def test_out_dir_guard(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(NeuronscopeError, match="not an atlas directory"):
        write_site({"sites": []}, tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_viewer_never_builds_markup_from_strings():
    app = (Path(build.__file__).parent / "static" / "app.js").read_text()
    app = re.sub(r"/\*.*?\*/", "", app, flags=re.S)  # block comments may name the sinks
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "srcdoc"):
        assert sink not in app, sink


def test_serve_command_serves_the_atlas(synthetic):
    from neuronscope.cli.atlas import make_server

    _, index = synthetic
    server = make_server(index.parent, 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with urllib.request.urlopen(url + "index.html", timeout=10) as r:
            assert r.read() == index.read_bytes()
        with urllib.request.urlopen(url + "data/vocab.js", timeout=10) as r:
            assert r.read() == (index.parent / "data" / "vocab.js").read_bytes()
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------- in Chromium


def _assert_no_injection(root, html: str) -> None:
    body = root.find(tag="body")
    assert "data-pwned" not in body.attrs
    assert not root.find_all(id="injected")
    assert not root.find_all(tag="img") and not root.find_all(tag="svg", attr="onload")
    assert "pwned" not in root.find(tag="title").text
    # every <script> in the page is ours: the two static ones and data/*.js loaded on demand
    for s in root.find_all(tag="script"):
        assert re.fullmatch(r"(app\.js|data/[a-z0-9-]+\.js)(\?v=[0-9a-f]+)?", s.attrs.get("src") or ""), s.attrs


def test_browser_index_lists_every_site(synthetic, chromium):
    data, index = synthetic
    html = chromium.dump_dom(page_url(index))
    root = parse_dom(html)
    assert root.find(tag="body").attrs.get("data-ready") == "1"
    assert root.find(tag="title").text == TITLE
    links = [a.text for a in root.find(id="sites").find_all(tag="a")]
    assert links == [s["name"] for s in data["sites"]]
    assert root.find(cls="lede").text == data["title"]
    assert HOSTILE[1] in root.find(tag="table", cls="kv").text
    assert [a.text for a in root.find(id="extras").find_all(tag="a")] == [data["extras"][0]["title"]]
    _assert_no_injection(root, html)


def test_browser_neuron_page_shows_examples_literally(synthetic, chromium):
    data, index = synthetic
    site = data["sites"][1]
    unit = CHUNK + 5  # second chunk
    html = chromium.dump_dom(page_url(index, site["name"], unit))
    root = parse_dom(html)
    assert root.find(tag="title").text == f"{TITLE} · {site['name']} / {unit}"
    assert root.find(id="neuron-title").text == f"{site['name']} · unit {unit}"
    items = root.find(id="examples").find_all(tag="li")
    assert len(items) == len(site["examples"][unit])
    for li, ex in zip(items, site["examples"][unit], strict=True):
        spans = li.find_all(tag="span")
        assert [s.text for s in spans] == ex["tokens"]
        peaks = [i for i, s in enumerate(spans) if "peak" in s.attrs["class"].split()]
        assert peaks == [ex["peak"]]
    stats = root.find(id="stats").text
    assert site["table"]["top_token"][unit] in stats
    # without min/max in the table: the bins from one before the first non-empty one to one
    # after the last, every one a bar (empty ones of height 0)
    counts = site["hist_counts"][unit]
    nz = np.flatnonzero(counts)
    first, last = max(0, nz[0] - 1), min(len(counts) - 1, nz[-1] + 1)
    bars = root.find(id="histogram").find_all(tag="rect", cls="bar")
    assert len(bars) == last - first + 1
    assert len([b for b in bars if "empty" not in b.attrs["class"]]) == len(nz)
    _assert_no_injection(root, html)


def test_browser_site_table_sorted_and_paginated(synthetic, chromium):
    data, index = synthetic
    site = data["sites"][1]
    root = chromium.dom(page_url(index, site["name"]))
    tbody = root.find(id="neurons").find(tag="tbody")
    rows = tbody.find_all(tag="tr")
    assert len(rows) == 100  # one page of 150
    units = [int(r.find(tag="a").text) for r in rows]
    freq = site["table"]["freq"]
    expected = sorted(range(len(freq)), key=lambda i: (-freq[i], i))[:100]
    assert units == expected
    assert root.find(cls="status").text == "150 of 150 neurons"


def test_browser_site_table_state_from_url(synthetic, chromium):
    data, index = synthetic
    site = data["sites"][1]
    url = page_url(index, site["name"]) + "?q=SVG&sort=mean&desc=0&dead=0"
    root = chromium.dom(url)
    units = [int(r.find(tag="a").text) for r in root.find(id="neurons").find(tag="tbody").find_all(tag="tr")]
    t = site["table"]
    # the browser sorts the values the atlas shipped: read them from the site's data script
    _, shipped = _load_data_script(index.parent / "data" / "site-1.js")
    mean = shipped["rows"]["mean"]
    raw = np.asarray(t["mean"])
    # ... which are the table's means to 4 significant digits (half a unit of the 4th digit)
    half_unit = 0.5 * 10.0 ** (np.floor(np.log10(np.abs(raw))) - 3)
    assert np.all(np.abs(np.asarray(mean) - raw) <= half_unit * (1 + 1e-9))
    keep = [i for i in range(len(mean)) if "svg" in t["top_token"][i].lower() and not t["dead"][i]]
    assert units == sorted(keep, key=lambda i: (mean[i], i))
    assert root.find(cls="status").text == f"{len(keep)} of {len(mean)} neurons"


def test_browser_comparison_heatmap_and_screenshot(synthetic, chromium, tmp_path):
    data, index = synthetic
    root = chromium.dom(page_url(index, "compare", "cka"))
    maps = root.find_all(tag="svg", cls="heatmap")
    assert len(maps) == 2
    assert len([r for r in maps[0].find_all(tag="rect") if r.find_all(tag="title")]) == 9
    labels = [t.text for t in maps[0].find_all(tag="text", cls="tick")]
    assert HOSTILE[2] in labels or any(lbl.startswith("…") for lbl in labels)
    px = chromium.screenshot(page_url(index, data["sites"][0]["name"], 1), tmp_path / "neuron.png")
    assert px.shape[0] == 900 and px.shape[1] == 1200
    assert float(px[..., :3].var()) > 1e-3


# ----------------------------------------------------------------------------- a real run

# Markup-dense documents: any context window of a few tokens holds '<', '>' or quotes.
HOSTILE_DOCS = [
    "<script>document.title='pwned'</script><script>document.title='pwned'</script>",
    "<img src=x onerror=\"document.title='pwned'\"><img src=x onerror=\"document.title='pwned'\">",
    "<a href=\"javascript:document.title='pwned'\">click</a><a href='javascript:alert(1)'>x</a>",
    "\"><b id=injected>bold</b>\"><b id=injected>bold</b>\"><b id=injected>bold</b>",
    "'><svg onload=\"document.title='pwned'\"></svg>'><svg onload=alert(1)></svg>",
]
N_PLAIN = 24
SITES = "encoder.layer.0.intermediate,encoder.layer.5.intermediate"


@pytest.fixture(scope="module")
def real_run(minilm, small_corpus, tmp_path_factory):
    """MiniLM recorded over 24 corpus documents + 5 hostile ones, with a CKA extra."""
    import neuronscope
    from neuronscope.analyses.compare import compare_all

    model, tok = minilm
    texts = [json.loads(ln)["text"] for ln in small_corpus.read_text().splitlines()[:N_PLAIN]]
    source = neuronscope.TextSource(texts + HOSTILE_DOCS, tok, batch_size=16, max_tokens=32)
    tmp = tmp_path_factory.mktemp("real")
    run = neuronscope.record(model, source, SITES, out=tmp / "run", keep="both", dtype="float32",
                             progress=False, summary_config={"k": 8, "window": 4})
    pops = {s: run.population(s).compute() for s in run.sites}
    cka = compare_all(pops, "cka")
    names = [str(x) for x in cka.coords["a"].values]
    run.write_extras("cka", {"cka": cka.values},
                     {"title": "linear CKA between sites", "metric": "linear CKA",
                      "heatmaps": {"cka": {"title": "linear CKA", "rows": names, "cols": names}}})
    run = neuronscope.open_run(tmp / "run")
    return run, build.build_atlas(run, tmp / "atlas", examples=8), cka


def _brute_force_examples(run, site: str, unit: int, k: int, window: int) -> list[dict]:
    """The top-k examples of one neuron by sorting the stored float32 activations of every
    sample (activation descending, sample id ascending), with their context from the samples."""
    pop = run.population(site)
    acts = np.asarray(pop.values[:, unit])
    sample = np.asarray(pop["sample"].values)
    doc, pos, tok = (np.asarray(pop[c].values) for c in ("doc", "pos", "token_id"))
    out = []
    for row in np.lexsort((sample, -acts))[:k]:
        ctx = np.flatnonzero((doc == doc[row]) & (np.abs(pos - pos[row]) <= window))
        ctx = ctx[np.argsort(pos[ctx])]
        out.append({
            "activation": float(acts[row]), "sample": int(sample[row]), "doc": int(doc[row]),
            "pos": int(pos[row]), "token_id": int(tok[row]), "token": run.vocab[tok[row]],
            "tokens": [run.vocab[t] for t in tok[ctx]], "acts": [float(a) for a in acts[ctx]],
            "peak": int(np.flatnonzero(ctx == row)[0]),
        })
    return out


def test_site_examples_and_top_examples_equal_a_brute_force_sort(real_run):
    from neuronscope.analyses.characterize import site_examples, top_examples

    run, _, _ = real_run
    assert run.config["keep"] == "both" and run.config["dtype"] == "float32"
    site = list(run.sites)[-1]
    res = run.summaries(site).result()
    fast = site_examples(res, run.samples, run.vocab, k=5)
    assert build.site_examples is site_examples  # the atlas uses the analysis layer's
    edge = int(np.argmax(res["topk.pos"][:, 0] == 0))  # a neuron whose top example starts a doc
    units = (0, 1, edge, 777, run.sites[site] - 1)
    assert res["topk.pos"][edge, 0] == 0
    for unit in units:
        expected = _brute_force_examples(run, site, unit, k=5, window=4)
        assert fast[unit] == expected
        assert top_examples(run, site, unit, k=5) == expected
    # a plain {site: SiteSummaries} dict with the run's samples and vocab gives the same
    plain = {site: run.summaries(site)}
    assert top_examples(plain, site, edge, k=5, samples=run.samples, vocab=run.vocab) == fast[edge]


def _expected_context(run, doc: int, pos: int, window: int) -> list[str]:
    """Tokens of ``doc`` at ``pos - window .. pos + window``, straight from the run's samples."""
    s = run.samples
    sel = np.flatnonzero((s["doc"] == doc) & (np.abs(s["pos"] - pos) <= window))
    sel = sel[np.argsort(s["pos"][sel])]
    return [run.vocab[t] for t in s["token_id"][sel]]


def test_real_atlas_in_browser(real_run, chromium, tmp_path):
    run, index, _ = real_run
    root = chromium.dom(page_url(index))
    assert [a.text for a in root.find(id="sites").find_all(tag="a")] == list(run.sites)

    site = list(run.sites)[-1]
    res = run.summaries(site).result()
    hostile = np.flatnonzero(res["topk.doc"][:, 0] >= N_PLAIN)
    assert len(hostile), "no neuron of the last layer peaks on a hostile document"
    unit = int(hostile[np.argmax(res["topk.values"][hostile, 0])])
    doc, pos = int(res["topk.doc"][unit, 0]), int(res["topk.pos"][unit, 0])
    expected = _expected_context(run, doc, pos, window=4)
    assert any(c in "".join(expected) for c in "<>\"'")

    url = page_url(index, site, unit)
    html = chromium.dump_dom(url)
    root = parse_dom(html)
    assert root.find(tag="title").text == f"{TITLE} · {site} / {unit}"
    first = root.find(id="examples").find_all(tag="li")[0]
    spans = first.find_all(tag="span")
    assert [s.text for s in spans] == expected
    peak = [s.text for s in spans if "peak" in s.attrs["class"].split()]
    assert peak == [run.vocab[int(res["topk.token_id"][unit, 0])]]
    assert f"doc {doc} · pos {pos} · sample {int(res['topk.sample'][unit, 0])}" in first.find(cls="exhead").text
    _assert_no_injection(root, html)

    px = chromium.screenshot(url, tmp_path / "neuron.png")
    assert px.shape[:2] == (900, 1200)
    assert float(px[..., :3].var()) > 1e-3


def test_real_atlas_comparison_page(real_run, chromium):
    run, index, cka = real_run
    root = chromium.dom(page_url(index, "compare", "cka"))
    assert root.find(tag="h1").text == "linear CKA between sites"
    svg = root.find(tag="svg", cls="heatmap")
    cells = [r.find(tag="title").text for r in svg.find_all(tag="rect") if r.find_all(tag="title")]
    names = list(run.sites)
    assert len(cells) == len(names) ** 2
    assert cells[1] == f"{names[0]} × {names[1]}: {cka.values[0, 1]:.4g}"


def test_atlas_cli_json(real_run, tmp_path):
    import typer
    from typer.testing import CliRunner

    from neuronscope.cli.atlas import atlas as atlas_command

    run, _, _ = real_run
    app = typer.Typer()
    app.command()(atlas_command)
    result = CliRunner().invoke(app, [str(run.path), "--out", str(tmp_path / "a"), "--examples", "2", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert Path(info["index"]) == (tmp_path / "a" / "index.html").resolve()
    assert info["bytes"] == build.site_bytes(tmp_path / "a") and info["seconds"] > 0
    _, chunk = _load_data_script(tmp_path / "a" / "data" / "site-0-0.js")
    assert all(len(n["e"]) == 2 for n in chunk["neurons"] if n["e"])


def test_atlas_of_a_non_text_run(tmp_path, chromium):
    """Images/features have no tokens: examples show their sample ids, the page still renders."""
    import torch

    import neuronscope

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    run = neuronscope.record(model, neuronscope.TensorSource(x, batch_size=50), "1", out=tmp_path / "run",
                             keep="summaries", progress=False, summary_config={"k": 4})
    index = build.build_atlas(run, tmp_path / "atlas", examples=4)
    res = run.summaries("1").result()
    unit = int(np.argmax(res["topk.values"][:, 0]))
    root = chromium.dom(page_url(index, "1", unit))
    heads = [h.text for h in root.find(id="examples").find_all(cls="exhead")]
    expected = []
    for j in range(4):
        pos, sample = int(res["topk.pos"][unit, j]), int(res["topk.sample"][unit, j])
        value = float(f"{res['topk.values'][unit, j]:.6g}")
        expected.append(f"activation {value:.4g}" + (f" · pos {pos}" if pos >= 0 else "")
                        + f" · item {int(run.samples['item'][sample])} · sample {sample}")
    assert heads == expected
    # feature vectors are items, not images: the pages say so, and show no thumbnails
    assert "one of the items on which this neuron is most active" in root.find(id="examples").parent.text
    assert not root.find_all(tag="img")
    front = chromium.dom(page_url(index))
    assert "mean % active / item" in front.find(id="sites").text
    assert not root.find(id="examples").find_all(cls="ctx")


def test_build_atlas_needs_summaries(tmp_path):
    import torch

    import neuronscope

    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU())
    x = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    run = neuronscope.record(model, neuronscope.TensorSource(x, batch_size=20), "1", out=tmp_path / "run",
                             keep="activations", progress=False)
    with pytest.raises(NeuronscopeError, match="no summaries"):
        build.build_atlas(run, tmp_path / "atlas")
    assert not (tmp_path / "atlas").exists()


# ----------------------------------------------------------------------------- beyond text (issue 11, item 8)


def _png_pixels(uri: str) -> np.ndarray:
    """Decode a data:image/png;base64 URI to 8-bit pixels."""
    import base64
    import io

    import matplotlib.image as mpimg

    assert uri.startswith("data:image/png;base64,")
    a = mpimg.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")
    return np.round(a * 255).astype(int)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """An (untrained) digits CNN over the 1,797 sklearn digits, conv channels averaged over
    space, with the digit labels: an image run."""
    import torch

    import neuronscope
    from neuronscope.testing.digits import build_digits, digits_data

    torch.manual_seed(0)
    x, y = digits_data("all", "cnn")
    source = neuronscope.TensorSource(x, batch_size=256, labels={"digit": y.tolist()}, name="sklearn digits")
    tmp = tmp_path_factory.mktemp("digits")
    run = neuronscope.record(build_digits("cnn"), source, "act*", out=tmp / "run.zarr", keep="summaries",
                             conv="mean", progress=False, summary_config={"k": 6})
    return run, y, tmp


def test_image_run_neuron_page_shows_thumbnails_labels_and_images(digits_run, chromium):
    from neuronscope.testing.digits import digits_images

    run, y, tmp = digits_run
    seen = []
    index = build.build_atlas(run, tmp / "atlas", examples=6,
                              progress=lambda done, total, detail: seen.append((done, total)))
    assert seen[-1] == (1 + 2 * len(run.sites),) * 2  # characterize + each site read + written
    res = run.summaries("act3").result()
    unit = int(np.argmax(res["topk.values"][:, 0]))
    root = chromium.dom(page_url(index, "act3", unit))
    items = root.find(id="examples").find_all(tag="li")
    assert len(items) == 6
    raw = digits_images()  # 0..16 intensities: the thumbnails scale them to 0..255
    for j, li in enumerate(items):
        sample = int(res["topk.sample"][unit, j])
        item = int(run.samples["item"][sample])
        (img,) = li.find_all(tag="img")
        assert "thumb" in img.attrs["class"].split() and img.attrs["alt"] == f"image {item} (digit {y[item]})"
        np.testing.assert_array_equal(_png_pixels(img.attrs["src"]), np.round(raw[item] / 16 * 255))
        assert li.find(cls="exhead").text.endswith(f"image {item} · sample {sample} · digit {y[item]}")
    page = root.find(tag="main").text
    assert "one of the images on which this neuron is most active" in page and "token" not in page
    front = chromium.dom(page_url(index))
    assert "mean % active / image" in front.find(id="sites").text
    assert "samples (images)" in front.find(tag="table", cls="kv").text
    assert "fraction of images with activation > 0" in front.find(tag="main").text


def test_explicit_image_inputs_are_checked_against_the_run(tmp_path, chromium):
    import torch

    import neuronscope
    from neuronscope.atlas.images import thumbnail

    rng = np.random.default_rng(0)
    x = rng.random(size=(40, 3, 12, 12)).astype(np.float32)  # RGB, channels first
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(432, 6), torch.nn.ReLU())
    run = neuronscope.record(model, neuronscope.TensorSource(x, batch_size=10), "2", out=tmp_path / "run.zarr",
                             keep="summaries", progress=False, summary_config={"k": 3})
    with pytest.raises(NeuronscopeError, match="not the ones this run recorded"):
        build.build_atlas(run, tmp_path / "bad", inputs=x[::-1].copy(), progress=False)
    with pytest.raises(NeuronscopeError, match="not the ones this run recorded"):
        build.build_atlas(run, tmp_path / "bad", inputs=x[:20], progress=False)
    np.save(tmp_path / "x.npy", x)
    index = build.build_atlas(run, tmp_path / "atlas", inputs=tmp_path / "x.npy", progress=False)
    res = run.summaries("2").result()
    unit = int(np.argmax(res["topk.values"][:, 0]))
    root = chromium.dom(page_url(index, "2", unit))
    imgs = root.find(id="examples").find_all(tag="img")
    assert len(imgs) == 3
    lo, hi = np.percentile(x, [0.5, 99.5])
    for j, img in enumerate(imgs):
        item = int(run.samples["item"][int(res["topk.sample"][unit, j])])
        px = _png_pixels(img.attrs["src"])
        assert px.shape == (12, 12, 3)  # RGB, moved channels-last
        np.testing.assert_array_equal(px, thumbnail(x[item], lo, hi))
        np.testing.assert_allclose(px / 255, np.clip((x[item].transpose(1, 2, 0) - lo) / (hi - lo), 0, 1), atol=0.6 / 255)
    # without inputs: no thumbnails, still images
    index = build.build_atlas(run, tmp_path / "plain", inputs=None, progress=False)
    root = chromium.dom(page_url(index, "2", unit))
    assert not root.find_all(tag="img") and "images" in root.find(tag="main").text


def test_24_sites_get_24_colours_and_full_names_in_the_legend(chromium, tmp_path):
    names = [f"model.encoder.transformer.blocks.{i}.feed_forward.intermediate_activation" for i in range(24)]
    data = {"title": "24 sites", "meta": {}, "sites": [synthetic_site(nm, 8, i) for i, nm in enumerate(names)],
            "extras": []}
    index = write_site(data, tmp_path / "atlas")
    root = chromium.dom(page_url(index))
    lines = root.find(id="rank-plot").find_all(tag="polyline")
    assert len(lines) == 24 and len({ln.attrs["stroke"].lower() for ln in lines}) == 24
    legend = [li.text for li in root.find(id="rank-legend").find_all(tag="li")]
    assert legend == names and "…" not in root.find(id="rank-legend").text
    app = (Path(build.__file__).parent / "static" / "app.js").read_text()
    palette = re.findall(r'"(#[0-9a-f]{6})"', app[app.index("const PALETTE"): app.index("const DATA_PNG")])
    assert len(palette) == 24 and min(_delta_e(a, b) for i, a in enumerate(palette) for b in palette[i + 1:]) > 25


def _delta_e(a: str, b: str) -> float:
    """CIE76 colour difference of two sRGB hex colours."""
    def lab(h: str) -> np.ndarray:
        rgb = np.array([int(h[i:i + 2], 16) for i in (1, 3, 5)]) / 255
        rgb = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
        xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ rgb
        f = np.cbrt(xyz / [0.95047, 1.0, 1.08883])
        return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])

    return float(np.linalg.norm(lab(a) - lab(b)))


def test_real_histograms_cover_the_neurons_own_range(real_run, chromium):
    run, index, _ = real_run
    site = list(run.sites)[0]
    res = run.summaries(site).result()
    edges, counts = res["histogram.edges"], res["histogram.counts"]
    lo, hi = res["moments.min"], res["moments.max"]
    unit = int(np.argmax(hi - lo))
    root = chromium.dom(page_url(index, site, unit))
    bars = root.find(id="histogram").find_all(tag="rect", cls="bar")
    in_range = [j for j in range(len(counts[unit])) if edges[j + 1] > lo[unit] and edges[j] <= hi[unit]]
    assert len(bars) >= len(in_range) > 1
    assert [int(b.find(tag="title").text.rsplit(": ", 1)[1]) for b in bars] == [int(counts[unit][j]) for j in in_range]
    assert f"{len(in_range)} of the site's {len(edges) - 1} summary bins" in root.find(id="hist-note").text
    main = root.find(tag="main").text
    assert "tokens are coloured" in main  # text runs keep their words
