"""A tiny byte-level causal language model trained on the bundled multilingual corpus.

``load_tinylm(seed)`` returns ``(model, tokenizer)``: a GPT-2 style pre-LayerNorm decoder-only
transformer (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"; learned
absolute positions, causal multi-head self-attention, GELU feed-forward blocks) over UTF-8 bytes,
trained deterministically on the training split of the bundled 20-language dialogue corpus
(``neuronscope.sources.text.default_corpus_path()``) in about a minute of CPU. It is the
generative model for locating language-specific neurons, for attribution / ablation / steering,
for MoEfication, and a second real architecture for matching neurons across models.

Module layout (``TinyLM``)::

    tok_emb            Embedding(vocab, d_model)          byte + special-token embeddings
    pos_emb            Embedding(n_ctx, d_model)          learned absolute positions
    blocks.{i}.ln_1    LayerNorm                          pre-LN before attention
    blocks.{i}.attn    CausalSelfAttention (qkv: Linear d→3d, proj: Linear d→d)
    blocks.{i}.ln_2    LayerNorm                          pre-LN before the FFN
    blocks.{i}.mlp.fc_in   Linear d_model→d_ffn
    blocks.{i}.mlp.act     GELU  ← the FFN neurons: site glob ``TINYLM_FFN_SITES``
    blocks.{i}.mlp.fc_out  Linear d_ffn→d_model
    ln_f               LayerNorm                          final LayerNorm
    lm_head            Linear d_model→vocab, no bias      the unembedding (untied from tok_emb)

Each block computes ``x = x + attn(ln_1(x)); x = x + fc_out(act(fc_in(ln_2(x))))``, and the
logits are ``lm_head(ln_f(x))``. The unembedding is a separate matrix (not tied to ``tok_emb``)
without bias, so what FFN neuron ``u`` of block ``i`` writes into the vocabulary is
``lm_head.weight @ blocks[i].mlp.fc_out.weight[:, u]`` (up to ``ln_f``'s normalisation).

Tokens: ids 0–255 are the bytes of UTF-8 text, then ``BOS`` (256), ``EOS`` (257) and ``PAD``
(258). The tokenizer prepends ``BOS``; training documents are ``BOS bytes… EOS`` truncated to
``n_ctx`` tokens. The held-out split is a fixed ~10% of each language's documents (independent
of the model seed). Trained weights are cached on disk (``NEURONSCOPE_CACHE``, default
``~/.cache/neuronscope``) under a name keyed by the seed, every hyper-parameter, the training
corpus, the torch version and the source code that produces the weights, and in-process, so
repeated calls are free.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from neuronscope.errors import NeuronscopeError
from neuronscope.sources.text import Corpus, default_corpus_path, load_corpus

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "TINYLM_FFN_SITES",
    "VOCAB_SIZE",
    "ByteTokenizer",
    "TinyLM",
    "TinyLMConfig",
    "TinyLMHparams",
    "cache_dir",
    "heldout_loss",
    "heldout_loss_by_lang",
    "load_tinylm",
    "tinylm_cache_path",
    "tinylm_corpus",
    "tinylm_model",
    "train_tinylm",
]

#: Token ids of the special tokens (after the 256 byte values).
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
#: Vocabulary size: 256 bytes and the three specials.
VOCAB_SIZE = 259
_SPECIAL_NAMES = {BOS_ID: "<bos>", EOS_ID: "<eos>", PAD_ID: "<pad>"}

#: The FFN neuron sites of the tiny LM (post-GELU activations of every block).
TINYLM_FFN_SITES = "blocks.*.mlp.act"

#: Intra-op threads used while training (fixed so every machine computes the same weights).
TRAIN_THREADS = 1
#: Fraction of each language's documents held out for evaluation, and the split's fixed seed.
HELDOUT_FRACTION = 0.1
SPLIT_SEED = 12345


# --------------------------------------------------------------------------- tokenizer


class ByteTokenizer:
    """UTF-8 byte tokenizer with the Hugging Face call interface that ``TextSource`` uses.

    ``tok(texts, padding=True, truncation=True, max_length=N, return_tensors="pt")`` returns a
    dict with ``input_ids`` and ``attention_mask`` (``[batch, seq]``, right padding with
    ``PAD``); every sequence starts with ``BOS`` (``add_special_tokens=True``). With
    ``return_offsets_mapping=True`` it adds ``offset_mapping``: the ``(start, end)`` character
    span of each token in its text (every byte of a multi-byte character maps to that
    character's span; ``BOS`` and ``PAD`` map to ``(0, 0)``). Text is encoded with
    ``errors="surrogatepass"`` (a lone surrogate becomes three bytes) and decoded with
    ``errors="replace"``.
    """

    bos_token_id = BOS_ID
    eos_token_id = EOS_ID
    pad_token_id = PAD_ID
    bos_token, eos_token, pad_token = "<bos>", "<eos>", "<pad>"
    padding_side = "right"
    vocab_size = VOCAB_SIZE

    def __init__(self, model_max_length: int = 256):
        if model_max_length < 1:
            raise NeuronscopeError("model_max_length must be a positive integer")
        self.model_max_length = int(model_max_length)

    def __len__(self) -> int:
        return VOCAB_SIZE

    def __repr__(self) -> str:
        return f"ByteTokenizer(model_max_length={self.model_max_length})"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text: ``BOS`` (if ``add_special_tokens``) then its UTF-8 bytes."""
        if not isinstance(text, str):
            raise NeuronscopeError(f"ByteTokenizer encodes str, not {type(text).__name__}; pass text")
        ids = list(text.encode("utf-8", "surrogatepass"))
        return [BOS_ID, *ids] if add_special_tokens else ids

    @staticmethod
    def _offsets(text: str, add_special_tokens: bool) -> list[tuple[int, int]]:
        spans = [(0, 0)] if add_special_tokens else []
        for i, ch in enumerate(text):
            n = 1 if ch < "\x80" else len(ch.encode("utf-8", "surrogatepass"))
            spans.extend([(i, i + 1)] * n)
        return spans

    def __call__(
        self,
        text: str | Sequence[str],
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
        return_offsets_mapping: bool = False,
    ) -> dict[str, Any]:
        """Tokenize one text or a list of texts (Hugging Face semantics for the arguments used).

        * ``padding``: ``False`` / ``"do_not_pad"``, ``True`` / ``"longest"`` (pad to the
          longest sequence), or ``"max_length"`` (pad to ``max_length``);
        * ``truncation``: keep the first ``max_length`` tokens (``model_max_length`` if
          ``max_length`` is None), ``BOS`` included;
        * ``return_tensors``: ``None`` (lists) or ``"pt"`` (int64 tensors ``[batch, seq]``;
          a single text gives a batch of one).
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise NeuronscopeError("ByteTokenizer takes a str or a non-empty list of str; convert the inputs to text")
        if return_tensors not in (None, "pt"):
            raise NeuronscopeError(f"return_tensors must be None or 'pt', not {return_tensors!r}")
        pad_mode = {False: None, "do_not_pad": None, True: "longest", "longest": "longest",
                    "max_length": "max_length"}.get(padding, "bad")  # type: ignore[arg-type]
        if pad_mode == "bad":
            raise NeuronscopeError(f"padding must be True, False, 'longest' or 'max_length', not {padding!r}")
        if max_length is not None and max_length < 1:
            raise NeuronscopeError("max_length must be a positive integer")
        limit = (max_length or self.model_max_length) if truncation not in (False, "do_not_truncate") else None
        ids = [self.encode(t, add_special_tokens) for t in texts]
        offs = [self._offsets(t, add_special_tokens) for t in texts] if return_offsets_mapping else None
        if limit is not None:
            ids = [x[:limit] for x in ids]
            offs = [o[:limit] for o in offs] if offs is not None else None
        lengths = [len(x) for x in ids]
        if pad_mode == "max_length":
            if max_length is None:
                raise NeuronscopeError("padding='max_length' needs max_length; pass max_length=N")
            width = max(max_length, *lengths)
        elif pad_mode == "longest":
            width = max(lengths)
        else:
            width = None
            if return_tensors == "pt" and len(set(lengths)) > 1:
                raise NeuronscopeError("texts of different lengths need padding to make a tensor; pass padding=True")
        if width is not None:
            ids = [x + [PAD_ID] * (width - len(x)) for x in ids]
            offs = [o + [(0, 0)] * (width - len(o)) for o in offs] if offs is not None else None
        mask = [[1] * n + [0] * (len(x) - n) for x, n in zip(ids, lengths, strict=True)]
        out: dict[str, Any] = {"input_ids": ids}
        if return_attention_mask:
            out["attention_mask"] = mask
        if offs is not None:
            out["offset_mapping"] = offs
        if return_tensors == "pt":
            out = {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
            if offs is not None and out["offset_mapping"].ndim == 2:  # empty sequences
                out["offset_mapping"] = out["offset_mapping"].reshape(len(texts), -1, 2)
        elif single:
            out = {k: v[0] for k, v in out.items()}
        return out

    def convert_ids_to_tokens(self, ids: int | Sequence[int] | torch.Tensor) -> str | list[str]:
        """Readable token strings: the character for printable ASCII (space included),
        ``<0xE2>`` for other bytes, ``<bos>`` / ``<eos>`` / ``<pad>`` for the specials."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if isinstance(ids, int | np.integer):
            return self._token(int(ids))
        return [self._token(int(i)) for i in ids]

    @staticmethod
    def _token(i: int) -> str:
        if 0x20 <= i < 0x7F:
            return chr(i)
        if 0 <= i < 256:
            return f"<0x{i:02X}>"
        if i in _SPECIAL_NAMES:
            return _SPECIAL_NAMES[i]
        raise NeuronscopeError(f"token id {i} is outside the byte vocabulary (0..{VOCAB_SIZE - 1})")

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of a token sequence: bytes decoded as UTF-8 with ``errors="replace"``; special
        tokens dropped (or written as ``<bos>``… with ``skip_special_tokens=False``)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        parts: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                run.append(i)
                continue
            if i not in _SPECIAL_NAMES:
                raise NeuronscopeError(f"token id {i} is outside the byte vocabulary (0..{VOCAB_SIZE - 1})")
            parts.append(run.decode("utf-8", "replace"))  # a special token ends a byte run
            run = bytearray()
            if not skip_special_tokens:
                parts.append(_SPECIAL_NAMES[i])
        parts.append(run.decode("utf-8", "replace"))
        return "".join(parts)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class TinyLMConfig:
    """Architecture of a :class:`TinyLM`."""

    n_layers: int = 3
    d_model: int = 128
    n_heads: int = 4
    d_ffn: int = 512
    n_ctx: int = 256
    vocab_size: int = VOCAB_SIZE


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (GPT-2's ``c_attn`` / ``c_proj`` as ``qkv`` / ``proj``)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``x`` ``[batch, seq, d]``; ``allowed`` ``[batch or 1, 1, seq, seq]`` bool (query, key)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // self.n_heads))
        att = att.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class MLP(nn.Module):
    """The feed-forward block: ``fc_out(act(fc_in(x)))``; ``act``'s output are the neurons."""

    def __init__(self, d_model: int, d_ffn: int):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ffn)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(d_ffn, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class Block(nn.Module):
    """One pre-LN transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ffn)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), allowed)
        return x + self.mlp(self.ln_2(x))


class TinyLM(nn.Module):
    """A GPT-2 style pre-LN decoder-only transformer over bytes (Radford et al. 2019).

    See the module docstring for the layout. ``forward`` returns next-token logits
    ``[batch, seq, vocab]``; :meth:`loss` the mean next-token cross-entropy; :meth:`generate`
    continues a prompt greedily or by seeded sampling.
    """

    def __init__(self, config: TinyLMConfig | None = None):
        super().__init__()
        cfg = config or TinyLMConfig()
        if cfg.d_model % cfg.n_heads:
            raise NeuronscopeError(f"d_model ({cfg.d_model}) must be a multiple of n_heads ({cfg.n_heads})")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, cfg.d_ffn) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()

    def get_output_embeddings(self) -> nn.Linear:
        """The unembedding ``lm_head`` (the Hugging Face accessor: targets such as ``logit``
        and "what a neuron writes" read the output vocabulary through it)."""
        return self.lm_head

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2 n_layers)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln_" in name or name.startswith("ln_f"):
                nn.init.ones_(p)
            else:
                std = 0.02
                if name.endswith(("attn.proj.weight", "mlp.fc_out.weight")):
                    std /= math.sqrt(2 * self.config.n_layers)
                nn.init.normal_(p, 0.0, std)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``[batch, seq, vocab]`` for ``input_ids`` ``[batch, seq]``.

        ``attention_mask`` (1 = real token) hides padding keys and numbers positions by the
        real tokens before them, so right- and left-padded batches give every real token the
        logits it has unpadded. ``token_type_ids`` (emitted by some tokenizers) is ignored.
        """
        del token_type_ids
        if input_ids.ndim != 2:
            raise NeuronscopeError(f"input_ids must be [batch, seq], not of shape {tuple(input_ids.shape)}; add a batch axis")
        b, t = input_ids.shape
        if t > self.config.n_ctx:
            raise NeuronscopeError(
                f"sequence of {t} tokens exceeds the model's context of {self.config.n_ctx}; "
                f"truncate to max_length={self.config.n_ctx}"
            )
        if t == 0:
            raise NeuronscopeError("empty input: give at least one token (the tokenizer adds BOS)")
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size:
            raise NeuronscopeError(f"token ids must lie in 0..{self.config.vocab_size - 1}; encode text with ByteTokenizer")
        causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
        if attention_mask is None:
            pos = torch.arange(t, device=input_ids.device)[None]
            allowed = causal[None, None]
        else:
            keep = attention_mask.to(torch.bool)
            pos = (keep.long().cumsum(1) - 1).clamp(min=0)
            # a padding query still sees itself, so no row of the softmax is empty
            diag = torch.eye(t, dtype=torch.bool, device=input_ids.device)
            allowed = ((causal[None] & keep[:, None, :]) | diag[None])[:, None]
        x = self.tok_emb(input_ids) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x, allowed)
        return self.lm_head(self.ln_f(x))

    def token_losses(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position next-token cross-entropy (nats) ``[batch, seq-1]`` and the bool mask of
        positions whose target is a real token (padding targets have loss 0)."""
        logits = self.forward(input_ids, attention_mask)[:, :-1]
        targets = input_ids[:, 1:]
        valid = attention_mask[:, 1:].to(torch.bool) if attention_mask is not None else torch.ones_like(targets, dtype=torch.bool)
        losses = F.cross_entropy(logits.transpose(1, 2), targets.masked_fill(~valid, 0), reduction="none")
        return losses * valid, valid

    def loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) over the real target tokens of a batch."""
        losses, valid = self.token_losses(input_ids, attention_mask)
        return losses.sum() / valid.sum().clamp(min=1)

    @torch.no_grad()
    def generate_ids(
        self,
        input_ids: Sequence[int],
        max_new_tokens: int = 64,
        *,
        greedy: bool = True,
        temperature: float = 1.0,
        seed: int = 0,
        stop_at_eos: bool = True,
    ) -> list[int]:
        """Continue the token sequence ``input_ids`` (include ``BOS`` first) by up to
        ``max_new_tokens`` tokens; return the new token ids (the final ``EOS`` excluded).

        ``greedy`` takes the most likely token; otherwise tokens are sampled from
        ``softmax(logits / temperature)`` with a generator seeded by ``seed`` (same seed, same
        tokens). ``BOS`` and ``PAD`` are never produced; generation stops at ``EOS`` (never
        produced when ``stop_at_eos=False``) or when the context of ``n_ctx`` tokens is full.
        """
        if max_new_tokens < 0:
            raise NeuronscopeError("max_new_tokens must be a non-negative integer")
        if not greedy and not temperature > 0:
            raise NeuronscopeError(f"temperature must be positive for sampling, not {temperature}")
        ids = [int(i) for i in input_ids]
        if not ids:
            raise NeuronscopeError("give at least one input token (BOS starts every sequence)")
        if len(ids) > self.config.n_ctx:
            raise NeuronscopeError(
                f"prompt of {len(ids)} tokens exceeds the model's context of {self.config.n_ctx}; shorten it"
            )
        gen = torch.Generator().manual_seed(int(seed))
        device = self.lm_head.weight.device
        seq = torch.tensor([ids], dtype=torch.long, device=device)
        banned = [BOS_ID, PAD_ID] if stop_at_eos else [BOS_ID, PAD_ID, EOS_ID]
        new: list[int] = []
        for _ in range(max_new_tokens):
            if seq.shape[1] >= self.config.n_ctx:
                break
            logits = self.forward(seq)[0, -1].float()
            logits[banned] = float("-inf")
            if greedy:
                nxt = int(logits.argmax())
            else:
                probs = (logits / temperature).softmax(-1).cpu()
                nxt = int(torch.multinomial(probs, 1, generator=gen))
            if nxt == EOS_ID:
                break
            new.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]], device=device)], dim=1)
        return new

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        *,
        greedy: bool = True,
        temperature: float = 1.0,
        seed: int = 0,
        stop_at_eos: bool = True,
    ) -> str:
        """Continue the text ``prompt`` (``BOS`` is prepended) by up to ``max_new_tokens``
        bytes and return the continuation as text (UTF-8, ``errors="replace"``); the arguments
        are those of :meth:`generate_ids`."""
        tok = ByteTokenizer()
        new = self.generate_ids(tok.encode(prompt), max_new_tokens, greedy=greedy,
                                temperature=temperature, seed=seed, stop_at_eos=stop_at_eos)
        return tok.decode(new)


def _blank_model(cfg: TinyLMConfig) -> TinyLM:
    """A model to load weights into, built without drawing from torch's global RNG."""
    with torch.random.fork_rng(devices=[]):
        return TinyLM(cfg)


# --------------------------------------------------------------------------- corpus


@functools.lru_cache(maxsize=1)
def _split_indices() -> tuple[tuple[int, ...], tuple[int, ...]]:
    corpus = load_corpus(default_corpus_path())
    langs = np.array([str(x) for x in corpus.labels["lang"]])
    rng = np.random.default_rng(SPLIT_SEED)
    held: list[int] = []
    for lang in sorted(set(langs)):
        idx = np.flatnonzero(langs == lang)
        n_held = max(1, round(HELDOUT_FRACTION * len(idx)))
        held.extend(rng.permutation(idx)[:n_held].tolist())
    held_set = set(held)
    train = tuple(i for i in range(len(corpus)) if i not in held_set)
    return train, tuple(sorted(held_set))


def tinylm_corpus(split: str = "train") -> Corpus:
    """The tiny LM's training (``train``, ~90%) or evaluation (``heldout``, ~10%) documents of
    the bundled corpus, in file order, as a :class:`~neuronscope.sources.text.Corpus` with the
    ``lang`` label (``corpus.texts``, ``corpus.labels["lang"]``).

    The held-out split is ``round(0.1 × n)`` documents of each language, drawn by a fixed
    permutation (seed ``SPLIT_SEED``), the same for every model seed.
    """
    if split not in ("train", "heldout"):
        raise NeuronscopeError(f"split must be 'train' or 'heldout', not {split!r}")
    corpus = load_corpus(default_corpus_path())
    idx = _split_indices()[0 if split == "train" else 1]
    return Corpus(
        [corpus.texts[i] for i in idx],
        {"lang": [corpus.labels["lang"][i] for i in idx]},
        name=f"{corpus.name}#tinylm-{split}",
    )


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TinyLMHparams:
    """Every hyper-parameter of a tiny LM: the architecture and the training schedule.

    AdamW (betas 0.9/0.95, weight decay on matrices only) with a linear warm-up over the
    first ``warmup`` fraction of steps and a cosine decay to ``lr / 10``; ``epochs`` passes
    over the training split in seeded order, batches of ``batch_size`` documents grouped by
    length (little padding).
    """

    n_layers: int = 3
    d_model: int = 128
    n_heads: int = 4
    d_ffn: int = 512
    n_ctx: int = 256
    epochs: int = 5
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: float = 0.05

    def config(self) -> TinyLMConfig:
        return TinyLMConfig(self.n_layers, self.d_model, self.n_heads, self.d_ffn, self.n_ctx)

    def validate(self) -> None:
        for f in ("n_layers", "d_model", "n_heads", "d_ffn", "epochs", "batch_size"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise NeuronscopeError(f"hyper-parameter {f} must be a positive integer, not {getattr(self, f)!r}")
        if not isinstance(self.n_ctx, int) or self.n_ctx < 2:
            raise NeuronscopeError(f"hyper-parameter n_ctx must be an integer ≥ 2, not {self.n_ctx!r}")
        if self.d_model % self.n_heads:
            raise NeuronscopeError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.warmup < 1:
            raise NeuronscopeError("lr must be > 0, weight_decay ≥ 0 and warmup in [0, 1)")


def _hparams(seed: int, overrides: dict[str, Any]) -> TinyLMHparams:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise NeuronscopeError(f"seed must be a non-negative integer, not {seed!r}")
    names = {f.name for f in fields(TinyLMHparams)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise NeuronscopeError(f"unknown tiny LM hyper-parameter(s) {', '.join(unknown)}; use {', '.join(sorted(names))}")
    hp = TinyLMHparams(**overrides)
    hp.validate()
    return hp


def _training_tensor(n_ctx: int) -> torch.Tensor:
    """Training documents as ``BOS bytes… EOS`` (truncated to ``n_ctx``), right-padded."""
    tok = ByteTokenizer()
    docs = [(tok.encode(t) + [EOS_ID])[:n_ctx] for t in tinylm_corpus("train").texts]
    out = torch.full((len(docs), max(map(len, docs))), PAD_ID, dtype=torch.long)
    for i, d in enumerate(docs):
        out[i, : len(d)] = torch.tensor(d)
    return out


def _batch_order(lengths: torch.Tensor, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """One epoch's batches: a seeded permutation, sorted by length within windows of 16
    batches (so a batch holds documents of similar length), in seeded batch order."""
    perm = torch.randperm(len(lengths), generator=gen)
    window = 16 * batch_size
    batches: list[torch.Tensor] = []
    for w0 in range(0, len(perm), window):
        idx = perm[w0 : w0 + window]
        idx = idx[torch.argsort(lengths[idx], stable=True)]
        batches.extend(idx.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _fit(seed: int, hp: TinyLMHparams) -> dict[str, torch.Tensor]:
    """Train a tiny LM from scratch; deterministic for ``(seed, hp)`` on a given machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = TinyLM(hp.config())
            data = _training_tensor(hp.n_ctx)
            mask = data != PAD_ID
            lengths = mask.sum(1)
            gen = torch.Generator().manual_seed(seed)
            decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "emb" not in n]
            other = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "emb" not in n)]
            opt = torch.optim.AdamW(
                [{"params": decay, "weight_decay": hp.weight_decay}, {"params": other, "weight_decay": 0.0}],
                lr=hp.lr, betas=(0.9, 0.95),
            )
            steps_per_epoch = math.ceil(len(data) / hp.batch_size)
            total = hp.epochs * steps_per_epoch
            warm = max(1, round(hp.warmup * total))

            def schedule(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                frac = (step - warm) / max(1, total - warm)
                return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
            model.train()
            for _ in range(hp.epochs):
                for idx in _batch_order(lengths, hp.batch_size, gen):
                    width = int(lengths[idx].max())
                    loss = model.loss(data[idx, :width], mask[idx, :width])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    sched.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- caching


def cache_dir() -> Path:
    """The on-disk cache directory: ``$NEURONSCOPE_CACHE``, else ``~/.cache/neuronscope``."""
    env = os.environ.get("NEURONSCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "neuronscope"


@functools.lru_cache(maxsize=1)
def _corpus_hash() -> str:
    return tinylm_corpus("train").fingerprint()


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
    """Hash of the source that determines the trained weights (architecture, tokenization,
    split, training loop): editing any of it invalidates cached weights."""
    parts = (ByteTokenizer.encode, TinyLMConfig, CausalSelfAttention, MLP, Block, TinyLM.__init__,
             TinyLM._init_weights, TinyLM.forward, TinyLM.token_losses, TinyLM.loss, _split_indices,
             TinyLMHparams, _training_tensor, _batch_order, _fit)
    h = hashlib.blake2b(digest_size=8)
    for obj in parts:
        h.update(inspect.getsource(obj).encode())
    return h.hexdigest()


def _cache_key(seed: int, hp: TinyLMHparams) -> str:
    key = {
        "code": _code_hash(),
        "seed": int(seed),
        "hparams": asdict(hp),
        "corpus": _corpus_hash(),
        "threads": TRAIN_THREADS,
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()


def tinylm_cache_path(seed: int = 0, **hparams: Any) -> Path:
    """Where the weights of ``train_tinylm(seed, **hparams)`` are cached:
    ``cache_dir()/tinylm-seed{seed}-{key}.pt``, where ``key`` hashes the seed, every
    hyper-parameter (defaults included), the training corpus, the torch version, the
    training thread count and the source code of the model and its training: a change of any
    gives a new file."""
    hp = _hparams(seed, hparams)
    return cache_dir() / f"tinylm-seed{int(seed)}-{_cache_key(seed, hp)}.pt"


def _read_cache(path: Path, hp: TinyLMHparams) -> dict[str, torch.Tensor] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        _blank_model(hp.config()).load_state_dict(state)  # checks names and shapes
    except Exception as e:  # a corrupt or foreign file is retrained and replaced
        warnings.warn(f"ignoring unreadable tiny LM cache {path} ({type(e).__name__}); retraining", stacklevel=3)
        return None
    return state


def _write_cache(path: Path, state: dict[str, torch.Tensor]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is readable like any file
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        warnings.warn(f"cannot write the tiny LM cache {path} ({e}); set NEURONSCOPE_CACHE to a writable directory", stacklevel=3)


@functools.lru_cache(maxsize=16)
def _cached_state(path: str, seed: int, hp: TinyLMHparams) -> dict[str, torch.Tensor]:
    state = _read_cache(Path(path), hp)
    if state is None:
        state = _fit(seed, hp)
        _write_cache(Path(path), state)
    return state


# --------------------------------------------------------------------------- public entry points


def _model_id(seed: int, hp: TinyLMHparams) -> str:
    default = TinyLMHparams()
    diff = [f"{f.name}={getattr(hp, f.name)}" for f in fields(hp) if getattr(hp, f.name) != getattr(default, f.name)]
    return f"tinylm:{int(seed)}" + (":" + ",".join(diff) if diff else "")


def train_tinylm(seed: int = 0, *, cache: bool = True, **hparams: Any) -> TinyLM:
    """The tiny LM trained from random seed ``seed`` (a fresh module in eval mode).

    ``hparams`` override fields of :class:`TinyLMHparams` (``n_layers``, ``d_model``,
    ``n_heads``, ``d_ffn``, ``n_ctx``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``,
    ``warmup``). Training is deterministic: seeded initialisation and batch order, a fixed
    thread count (``TRAIN_THREADS``, restored afterwards), torch's global RNG left untouched.
    With ``cache=True`` the weights come from the in-process cache, else the disk cache
    (:func:`tinylm_cache_path`), else are trained (about a minute of CPU for the defaults)
    and written there atomically; ``cache=False`` always trains and writes nothing.
    """
    hp = _hparams(seed, hparams)
    state = _cached_state(str(tinylm_cache_path(seed, **hparams)), int(seed), hp) if cache else _fit(int(seed), hp)
    model = _blank_model(hp.config())
    model.load_state_dict(state)
    model.eval()
    model.neuronscope_id = _model_id(seed, hp)
    return model


def load_tinylm(seed: int = 0, **hparams: Any) -> tuple[TinyLM, ByteTokenizer]:
    """``(model, tokenizer)``: :func:`train_tinylm` (cached) and a :class:`ByteTokenizer`
    whose ``model_max_length`` is the model's context. ``model.neuronscope_id`` is
    ``tinylm:SEED`` (non-default hyper-parameters are appended)."""
    model = train_tinylm(seed, **hparams)
    return model, ByteTokenizer(model_max_length=model.config.n_ctx)


def tinylm_model(name: str) -> TinyLM:
    """A tiny LM from a name ``tinylm:SEED`` (default hyper-parameters)."""
    parts = name.split(":")
    if len(parts) != 2 or parts[0] != "tinylm" or not parts[1].isdigit():
        raise NeuronscopeError(f"bad tiny LM name {name!r}; use tinylm:SEED, e.g. tinylm:0")
    return train_tinylm(int(parts[1]))


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _loss_sums(model: TinyLM, tok: ByteTokenizer, texts: Sequence[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per text: summed next-byte loss (nats) and the number of predicted bytes."""
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise NeuronscopeError("texts must be a non-empty list of str; wrap a single text in a list")
    if batch_size < 1:
        raise NeuronscopeError("batch_size must be a positive integer")
    texts = list(texts)
    # batches of similar length waste little compute on padding
    order = np.argsort([len(t) for t in texts], kind="stable")
    sums, counts = np.zeros(len(texts)), np.zeros(len(texts), dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        for b0 in range(0, len(texts), batch_size):
            idx = order[b0 : b0 + batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True,
                      max_length=model.config.n_ctx, return_tensors="pt")
            losses, valid = model.token_losses(enc["input_ids"], enc["attention_mask"])
            sums[idx] = losses.double().sum(1).numpy()
            counts[idx] = valid.sum(1).numpy()
    finally:
        model.train(was_training)
    return sums, counts


def heldout_loss(model: TinyLM, tok: ByteTokenizer, texts: Sequence[str] | None = None, batch_size: int = 64) -> float:
    """Mean next-token loss per byte (nats) over ``texts`` (default: the held-out split).

    Each text is ``BOS`` + its bytes (truncated to the model's context); every byte is
    predicted from the ones before it; the mean is over all bytes of all texts (texts weigh by
    length). Divide by ``ln 2`` for bits per byte.
    """
    texts = tinylm_corpus("heldout").texts if texts is None else texts
    s, n = _loss_sums(model, tok, texts, batch_size)
    if n.sum() == 0:
        raise NeuronscopeError("no bytes to predict: give at least one non-empty text")
    return float(s.sum() / n.sum())


def heldout_loss_by_lang(model: TinyLM, tok: ByteTokenizer, corpus: Corpus | None = None, label: str = "lang") -> dict[str, float]:
    """Mean next-token loss per byte (nats) of each language (or other ``label`` value) on
    ``corpus`` (default: the held-out split), as :func:`heldout_loss` per language."""
    corpus = tinylm_corpus("heldout") if corpus is None else corpus
    if label not in corpus.labels:
        raise NeuronscopeError(f"corpus has no label {label!r}; use one of {', '.join(corpus.labels) or '(none)'}")
    s, n = _loss_sums(model, tok, corpus.texts, 64)
    labels = np.array([str(v) for v in corpus.labels[label]])
    out = {}
    for lab in sorted(set(labels)):
        sel = labels == lab
        if n[sel].sum():
            out[lab] = float(s[sel].sum() / n[sel].sum())
    return out
