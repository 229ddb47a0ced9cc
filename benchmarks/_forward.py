"""The bare forward pass the recording benchmarks compare with: one stream of batches on
torch's threads, or ``lanes`` streams side by side with one torch thread each (the layout
``record`` uses by default), batches taken from one queue in order."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import torch


def bare_forward(model: Any, inputs: Sequence[dict], lanes: int = 1) -> float:
    """Seconds to run ``model(**x)`` for every ``x`` of ``inputs`` (already tokenized) under
    ``torch.inference_mode()``; with ``lanes > 1``, on that many threads with one torch
    thread each (torch's thread count restored afterwards)."""
    if lanes <= 1:
        t = time.perf_counter()
        with torch.inference_mode():
            for x in inputs:
                model(**x)
        return time.perf_counter() - t
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    it = iter(inputs)
    lock = threading.Lock()

    def lane() -> None:
        with torch.inference_mode():
            while True:
                with lock:
                    x = next(it, None)
                if x is None:
                    return
                model(**x)

    try:
        threads = [threading.Thread(target=lane) for _ in range(lanes)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return time.perf_counter() - t
    finally:
        torch.set_num_threads(before)
