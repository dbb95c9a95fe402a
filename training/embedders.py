"""Embedders: text -> feature matrix, each exportable to ONNX.

- `TfidfEmbedder`: word 1-2 grams + char 2-5 grams fitted on the traces,
  exported with skl2onnx (checked against sklearn at fit time).
- `EncoderEmbedder`: a pretrained sentence encoder folder (`model.onnx` +
  `tokenizer.json`), run through `router.encoder.SentenceEncoder`; or ``hf:OWNER/NAME``
  (``@REVISION`` optional), a Hugging Face hub repository with an ONNX export, fetched
  by `huggingface_hub` into its cache (read from the cache alone when offline,
  ``HF_HUB_OFFLINE=1``).
- A joined embedder is a list of both; features are concatenated.

All embedders see `router.text.normalize_text` output (whitespace collapsed,
lowercased), the same function the router applies.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import scipy.sparse as sp
from onnx import helper, numpy_helper
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion

from router.encoder import SentenceEncoder
from router.manifest import sha256_file
from router.pipeline import safe_padding

# Word tokens: runs of anything but whitespace and ASCII punctuation. Not `\w`: the
# ONNX regex engine (RE2) treats \w as ASCII-only, Python as Unicode, so "café"
# would split differently. No inline flags either (skl2onnx drops them).
TOKEN_PATTERN = r"[^\s!-/:-@\[-`{-~]+"
ONNX_LOCALE = "C.UTF-8"


class TfidfEmbedder:
    kind = "tfidf"

    def __init__(
        self,
        word_ngrams: tuple[int, int] = (1, 2),
        char_ngrams: tuple[int, int] = (2, 5),
        min_df_word: int = 1,
        min_df_char: int = 2,
        max_features: int | None = None,
        weight: float = 1.0,
    ) -> None:
        self.params = {
            "word_ngrams": list(word_ngrams),
            "char_ngrams": list(char_ngrams),
            "min_df_word": min_df_word,
            "min_df_char": min_df_char,
            "max_features": max_features,
        }
        self.weight = weight
        common: dict[str, Any] = {
            "lowercase": False,  # normalize_text lowercases, identically everywhere
            "sublinear_tf": False,
            "dtype": np.float32,
            "max_features": max_features,
        }
        self.word = TfidfVectorizer(
            analyzer="word",
            token_pattern=TOKEN_PATTERN,
            ngram_range=word_ngrams,
            min_df=min_df_word,
            **common,
        )
        self.char = TfidfVectorizer(
            analyzer="char", ngram_range=char_ngrams, min_df=min_df_char, **common
        )
        self.union = FeatureUnion([("word", self.word), ("char", self.char)])
        self.dim = 0

    def fit(self, texts: Sequence[str]) -> TfidfEmbedder:
        self.union.fit(list(texts))
        self.dim = len(self.word.vocabulary_) + len(self.char.vocabulary_)
        return self

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        out = sp.csr_matrix(self.union.transform(list(texts)), dtype=np.float32)
        return out * self.weight if self.weight != 1.0 else out

    def to_onnx(self) -> onnx.ModelProto:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import StringTensorType

        options = {TfidfVectorizer: {"locale": ONNX_LOCALE}}
        with warnings.catch_warnings():
            # skl2onnx warns that analyzer='char' "may not work"; parity is checked instead.
            warnings.simplefilter("ignore")
            model = convert_sklearn(
                self.union,
                initial_types=[("text", StringTensorType([None, 1]))],
                options=options,
                target_opset={"": 17, "ai.onnx.ml": 3},
            )
        return standard_l2_normalizers(safe_padding(model))

    def identity(self) -> dict[str, Any]:
        return {"kind": "tfidf", "dim": self.dim, "weight": self.weight, "params": self.params}


def standard_l2_normalizers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace ai.onnx.ml Normalizer(L2) nodes by ReduceL2 / Max / Div.

    onnxruntime's Normalizer kernel takes about twice as long as the three
    standard ops on a wide TF-IDF row; the result is the same (an all-zero row
    stays zero).
    """
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    eps = "l2_eps"
    for node in graph.node:
        norm = next((a.s for a in node.attribute if a.name == "norm"), b"")
        if node.op_type != "Normalizer" or node.domain != "ai.onnx.ml" or norm != b"L2":
            nodes.append(node)
            continue
        x, out = node.input[0], node.output[0]
        nodes += [
            helper.make_node("ReduceL2", [x], [f"{out}_l2"], axes=[1], keepdims=1),
            helper.make_node("Max", [f"{out}_l2", eps], [f"{out}_l2safe"]),
            helper.make_node("Div", [x, f"{out}_l2safe"], [out]),
        ]
    if len(nodes) != len(graph.node):
        graph.initializer.append(numpy_helper.from_array(np.array(1e-30, np.float32), eps))
        del graph.node[:]
        graph.node.extend(nodes)
    return model


HF_PREFIX = "hf:"
# What an encoder needs from a hub repository: the tokenizer, small configs and the ONNX
# export (at the root, or in onnx/ as sentence-transformers publishes it), not the
# PyTorch or TensorFlow weights.
HF_FILES = ["*.json", "*.txt", "model.onnx", "onnx/model.onnx"]


def hf_snapshot(spec: str) -> Path:
    """``hf:OWNER/NAME[@REVISION]`` -> the local folder of that repository's snapshot.

    Downloaded into huggingface_hub's cache when the hub is reachable; with
    ``HF_HUB_OFFLINE=1`` (or no network) only the cache is read.
    """
    repo, _, revision = spec.removeprefix(HF_PREFIX).partition("@")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - a declared dependency
        raise ValueError(f"{spec}: needs the huggingface_hub package") from None
    try:
        folder = snapshot_download(repo, revision=revision or None, allow_patterns=HF_FILES)
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{spec}: not in the Hugging Face cache, and the hub cannot be reached (offline?)"
        ) from None
    except Exception as exc:  # the hub's own errors: unknown repository, gated, network
        raise FileNotFoundError(f"{spec}: {type(exc).__name__}: {exc}") from None
    return Path(folder)


def encoder_files(source: str | Path) -> tuple[Path, Path, str]:
    """(model.onnx, tokenizer.json, a name) of an encoder folder or an ``hf:`` repository."""
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        folder, name = hf_snapshot(source), source.removeprefix(HF_PREFIX)
    else:
        folder = Path(source)
        name = folder.name
    model = folder / "model.onnx"
    if not model.is_file() and (folder / "onnx" / "model.onnx").is_file():
        model = folder / "onnx" / "model.onnx"
    return model, folder / "tokenizer.json", name


class EncoderEmbedder:
    kind = "encoder"
    _cache: dict[tuple[str, str], np.ndarray] = {}  # noqa: RUF012  (process-wide memo)

    def __init__(
        self, folder: str | Path, *, weight: float = 1.0, threads: int = 2, max_length: int = 128
    ) -> None:
        self.model_path, self.tokenizer_path, self.name = encoder_files(folder)
        self.folder = self.tokenizer_path.parent  # the encoder's folder (or hub snapshot)
        for p in (self.model_path, self.tokenizer_path):
            if not p.is_file():
                raise FileNotFoundError(f"encoder folder lacks {p.name}: {self.folder}")
        self.weight = weight
        self.max_length = max_length
        self.model_sha = sha256_file(self.model_path)
        self.tokenizer_sha = sha256_file(self.tokenizer_path)
        self.encoder = SentenceEncoder(
            self.model_path, self.tokenizer_path, max_length=max_length, intra_op_threads=threads
        )
        self.dim = self.encoder.dim or int(self.encoder.encode(["probe"]).shape[1])

    def fit(self, texts: Sequence[str]) -> EncoderEmbedder:
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        key = self.model_sha
        missing = [t for t in dict.fromkeys(texts) if (key, t) not in self._cache]
        if missing:
            emb = self.encoder.encode(missing)
            for t, e in zip(missing, emb, strict=True):
                self._cache[(key, t)] = e
        out = np.stack([self._cache[(key, t)] for t in texts]) if texts else np.zeros((0, self.dim))
        out = out.astype(np.float32)
        return out * self.weight if self.weight != 1.0 else out

    def copy_files(self, out_dir: Path) -> tuple[str, str]:
        shutil.copyfile(self.model_path, out_dir / "encoder.onnx")
        shutil.copyfile(self.tokenizer_path, out_dir / "tokenizer.json")
        return "encoder.onnx", "tokenizer.json"

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "encoder",
            "name": self.name,
            "dim": self.dim,
            "weight": self.weight,
            "max_length": self.max_length,
            "source_model_sha256": self.model_sha,
            "source_tokenizer_sha256": self.tokenizer_sha,
            "pooling": "mean",
            "normalize": "l2",
        }


Embedder = TfidfEmbedder | EncoderEmbedder


def parse_embedder_spec(spec: str, *, encoder_weight: float = 1.0) -> list[Embedder]:
    """'tfidf' | PATH | hf:REPO | 'tfidf+PATH' | 'tfidf+hf:REPO' -> embedders (TF-IDF first)."""
    parts: list[Embedder] = []
    for item in spec.split("+"):
        item = item.strip()
        if item == "tfidf":
            parts.append(TfidfEmbedder())
        elif item:
            parts.append(EncoderEmbedder(item, weight=encoder_weight if "+" in spec else 1.0))
    if not parts:
        raise ValueError(f"empty embedder spec {spec!r}")
    return parts


def embed(parts: Sequence[Embedder], texts: Sequence[str]) -> sp.csr_matrix | np.ndarray:
    """Concatenate the parts' features (sparse when any part is sparse)."""
    blocks = [p.transform(texts) for p in parts]
    if len(blocks) == 1:
        return blocks[0]
    if any(sp.issparse(b) for b in blocks):
        return sp.hstack([sp.csr_matrix(b) for b in blocks], format="csr", dtype=np.float32)
    return np.hstack(blocks)
