"""A pretrained sentence encoder served from ONNX + tokenizer.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


class SentenceEncoder:
    """Tokenise with `tokenizers`, run the encoder, mean-pool, L2-normalise."""

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        *,
        max_length: int = 128,
        intra_op_threads: int = 1,
    ) -> None:
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # The shipped tokenizer.json pads every input to 128 tokens: 6x slower.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_path), opts, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        out = self.session.get_outputs()[0]
        self.dim = int(out.shape[-1]) if isinstance(out.shape[-1], int) else 0

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        chunks = []
        # Sort by length so padding to the longest in a batch stays cheap.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            chunks.append((idx, self._encode_batch([texts[i] for i in idx])))
        result = np.zeros((len(texts), self.dim or chunks[0][1].shape[1]), dtype=np.float32)
        for idx, emb in chunks:
            result[idx] = emb
        return result

    def _encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        encs = self.tokenizer.encode_batch(list(texts))
        length = max(1, max(len(e.ids) for e in encs))
        ids = np.zeros((len(encs), length), dtype=np.int64)
        mask = np.zeros((len(encs), length), dtype=np.int64)
        types = np.zeros((len(encs), length), dtype=np.int64)
        for row, enc in enumerate(encs):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = enc.attention_mask
            types[row, :n] = enc.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        hidden = self.session.run(None, feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: np.ndarray = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return out
