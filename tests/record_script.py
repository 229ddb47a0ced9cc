"""Run a recording in a subprocess (for kill/resume and write-error tests).

usage: python record_script.py OUT CORPUS DELAY [FSIZE_LIMIT_BYTES] [KEEP]
(NS_OVERWRITE=1 in the environment records with overwrite=True)
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tinymodels import TinyText  # noqa: E402

from neuronscope.errors import NeuronscopeError  # noqa: E402
from neuronscope.recording import record  # noqa: E402
from neuronscope.sources.text import TextSource  # noqa: E402
from neuronscope.specs import load_model  # noqa: E402


def main() -> int:
    out, corpus, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    limit = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "0" else 0
    keep = sys.argv[5] if len(sys.argv) > 5 else "activations"
    _, tok = load_model("minilm")
    model = TinyText(delay=delay)
    source = TextSource(corpus, tok, max_tokens=32, max_batch_tokens=64)  # bucketed, many batches
    calls = []
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # main thread only; on_batch runs on a worker

    def limit_after_a_few_batches(site, acts, samples):
        # the store exists and has committed; from now on files may not grow past `limit`
        calls.append(site)
        if limit and len(calls) == 6:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    try:
        record(model, source, "ff,act", out=out, keep=keep, dtype="float32", chunk_rows=64,
               commit_every=1, progress=False, model_id="tinytext", on_batch=limit_after_a_few_batches,
               overwrite=os.environ.get("NS_OVERWRITE") == "1")
    except NeuronscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
