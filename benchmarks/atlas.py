"""Atlas: build time, size and page render time, against naive references in the same run.

* examples: ``site_examples`` (all neurons of a site at once) vs one ``top_examples`` call per
  neuron (the per-neuron API: reads the site's summaries, then ``site_examples`` for one unit),
  timed per neuron on the same run and checked equal;
* size: the atlas's data files vs the same examples as plain JSON (token strings inline,
  full-precision floats), the naive format;
* render: ``data-page-ms`` that the viewer records (script loads + DOM build) for the index,
  a site table and a neuron page in headless Chromium (budget: a neuron page under 1 s).

Run: ``cd benchmarks && ../.venv/bin/python atlas.py [--docs 600] [--run PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from _results import write_section

import neuronscope
from neuronscope.analyses.characterize import site_examples, top_examples
from neuronscope.atlas.build import build_atlas, collect_atlas_data, site_bytes

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--virtual-time-budget=5000", "--dump-dom"]


def page_ms(index: Path, route: str) -> float:
    """The viewer's own timing of one page (``data-page-ms`` on <body>), in Chromium."""
    exe = shutil.which("chromium")
    if exe is None:
        raise SystemExit("chromium not installed: run `make chromium`")
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", index.resolve().as_uri() + "#/" + route],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    m = re.search(r'data-page-ms="([0-9.]+)"', out)
    if not m:
        raise SystemExit(f"page {route!r} did not render")
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=600, help="documents of the bundled corpus to record")
    ap.add_argument("--run", type=Path, default=None, help="use this recorded run instead of recording")
    ap.add_argument("--reference-units", type=int, default=48, help="neurons timed with top_examples")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    try:
        if args.run is None:
            model, tok = neuronscope.load_model("minilm")
            from neuronscope.sources.text import default_corpus_path

            lines = default_corpus_path().read_text(encoding="utf-8").splitlines()[: args.docs]
            texts = [json.loads(ln)["text"] for ln in lines]
            t = time.perf_counter()
            run = neuronscope.record(model, neuronscope.TextSource(texts, tok, batch_size=32, max_tokens=128),
                                     "encoder.layer.*.intermediate", out=work / "run", keep="summaries",
                                     progress=False)
            rec_s = time.perf_counter() - t
        else:
            run, rec_s = neuronscope.open_run(args.run), float("nan")
        site = list(run.sites)[-1]
        res = run.summaries(site).result()
        units = run.sites[site]

        t = time.perf_counter()
        fast = site_examples(res, run.samples, run.vocab, k=16)
        fast_per = (time.perf_counter() - t) / units
        step = max(1, units // args.reference_units)
        ref_units = list(range(0, units, step))[: args.reference_units]
        t = time.perf_counter()
        for u in ref_units:
            assert top_examples(run, site, u, k=16) == fast[u]
        ref_per = (time.perf_counter() - t) / len(ref_units)

        t = time.perf_counter()
        index = build_atlas(run, work / "atlas", examples=16)
        build_s = time.perf_counter() - t
        nbytes = site_bytes(index.parent)
        data = collect_atlas_data(run, examples=16)
        naive = sum(len(json.dumps(s["examples"])) + len(json.dumps(
            {c: list(map(str, v)) for c, v in s["table"].items()})) for s in data["sites"])
        neurons = sum(run.sites.values())

        ms_index = page_ms(index, "")
        ms_site = page_ms(index, quote(site, safe=""))
        ms_neuron = page_ms(index, quote(site, safe="") + "/" + str(units // 2))

        body = f"""
Run: MiniLM, {len(run.sites)} sites × {units} neurons = {neurons} neurons, {run.n_samples} tokens
(recorded in {rec_s:.1f} s); 16 examples per neuron.

| measure | neuronscope | reference | ratio |
|---|---|---|---|
| top examples, per neuron | `site_examples` {fast_per * 1e3:.3f} ms | `top_examples` {ref_per * 1e3:.1f} ms | {ref_per / fast_per:.0f}× faster |
| data size | atlas {nbytes / 1e6:.1f} MB | plain JSON {naive / 1e6:.1f} MB | {naive / nbytes:.2f}× smaller |
| build | {build_s:.1f} s ({build_s / neurons * 1e3:.2f} ms per neuron) | — | — |

Render in headless Chromium (`data-page-ms`: data scripts loaded + DOM built): index
{ms_index:.0f} ms, site table ({units} rows, paginated) {ms_site:.0f} ms, neuron page {ms_neuron:.0f} ms
(budget 1000 ms).
"""
        write_section("atlas", body)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
