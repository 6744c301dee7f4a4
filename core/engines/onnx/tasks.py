"""Loaded embedding and classification models: texts in, results out.

The request path is kept short: validate, tokenize (one encode per text), one ``session.run`` per batch
of up to ``batch_size`` texts, and for embeddings a graph that already pools and normalises (q8), so the
numpy work is nil.  Requests larger than a batch are sorted by length first, so each run pads little.
"""
from __future__ import annotations

import time
from typing import Sequence

import attrs
import numpy as np

from ...errors import InputError, ModelError
from .results import Classification, ClassifyResult, EmbedResult, InputInfo, Label, Timings
from .wordpiece import Batch, WordPiece, check_texts


@attrs.define
class _Encoder:
    """What both tasks share: the session, the tokenizer and how to feed one batch."""

    name: str
    path: str            # the model file asked for
    graph_path: str      # the graph the session runs (the q8 preparation of ``path``, or ``path`` itself)
    variant: str
    session: object = attrs.field(repr=False)
    tokenizer: WordPiece = attrs.field(repr=False)
    max_length: int
    batch_size: int
    output: str          # the output read
    takes_token_types: bool
    _outputs: list = attrs.field(init=False, repr=False)  # [output], built once: run() wants a list

    def __attrs_post_init__(self) -> None:
        self._outputs = [self.output]

    def _feed(self, b: Batch) -> dict:
        if self.takes_token_types:
            return {"input_ids": b.input_ids, "attention_mask": b.attention_mask,
                    "token_type_ids": b.token_type_ids}
        return {"input_ids": b.input_ids, "attention_mask": b.attention_mask}

    def _run(self, texts: list[str]) -> tuple[np.ndarray, list[int], list[bool], float, float]:
        """Rows of the output in the texts' order, tokens and truncation per text, tokenize and run ms."""
        out_names = self._outputs
        if len(texts) <= self.batch_size:
            t0 = time.perf_counter()
            b = self.tokenizer.encode_batch(texts)
            t1 = time.perf_counter()
            y = self._post(self.session.run(out_names, self._feed(b))[0], b)
            return y, list(b.lengths), list(b.truncated), (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
        # long requests: sort by length (characters are a good proxy) so each batch pads little
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: list[np.ndarray | None] = [None] * len(texts)
        lengths, truncated = [0] * len(texts), [False] * len(texts)
        tok_ms = run_ms = 0.0
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            t0 = time.perf_counter()
            b = self.tokenizer.encode_batch([texts[i] for i in idx])
            t1 = time.perf_counter()
            y = self._post(self.session.run(out_names, self._feed(b))[0], b)
            run_ms += (time.perf_counter() - t1) * 1e3
            tok_ms += (t1 - t0) * 1e3
            for j, i in enumerate(idx):
                rows[i], lengths[i], truncated[i] = y[j], b.lengths[j], b.truncated[j]
        return np.stack(rows), lengths, truncated, tok_ms, run_ms

    def _post(self, y: np.ndarray, b: Batch) -> np.ndarray:
        return y

    def _run_checked(self, texts: list[str]):
        try:
            return self._run(texts)
        except InputError:
            raise
        except Exception as exc:  # onnxruntime's errors are plain RuntimeErrors subclasses
            if type(exc).__module__.startswith("onnxruntime"):
                raise ModelError(f"onnxruntime failed running {self.graph_path}: {exc}") from exc
            raise

    def info(self) -> dict:
        return {"name": self.name, "path": self.path, "graph": self.graph_path, "variant": self.variant,
                "max_length": self.max_length, "batch_size": self.batch_size, "output": self.output}

    def close(self) -> None:
        self.session = None


@attrs.define
class EmbedModel(_Encoder):
    pooled: bool = True  # the graph returns sentence embeddings; else it returns hidden states, pooled here
    dim: int = 0

    def _post(self, y: np.ndarray, b: Batch) -> np.ndarray:
        if self.pooled:
            return y
        return mean_pool_l2(y, b.attention_mask)

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        t0 = time.perf_counter()
        items = check_texts(texts)
        vecs, lengths, truncated, tok_ms, run_ms = self._run_checked(items)
        return EmbedResult(vecs, tuple(InputInfo(n, t) for n, t in zip(lengths, truncated)), self.name,
                           self.max_length, Timings(tok_ms, run_ms, (time.perf_counter() - t0) * 1e3))


@attrs.define
class ClassifyModel(_Encoder):
    labels: tuple[str, ...] = ()
    softmax: bool = False  # the graph returns logits: apply softmax here

    def _post(self, y: np.ndarray, b: Batch) -> np.ndarray:
        if self.softmax:
            e = np.exp(y - y.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return y

    def classify(self, texts: Sequence[str], top_k: int = 5) -> ClassifyResult:
        t0 = time.perf_counter()
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        items = check_texts(texts)
        probs, lengths, truncated, tok_ms, run_ms = self._run_checked(items)
        best, scores = top_k_rows(probs, min(int(top_k), len(self.labels)))
        labels = self.labels
        results = tuple(Classification(tuple(Label(labels[i], s) for i, s in zip(idx, sc)), n, t)
                        for idx, sc, n, t in zip(best.tolist(), scores.tolist(), lengths, truncated))
        return ClassifyResult(results, self.name, self.max_length, len(self.labels),
                              Timings(tok_ms, run_ms, (time.perf_counter() - t0) * 1e3))


def top_k_rows(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best class indices and their scores, best first: (rows, k) each.  One sort over all
    rows (157 classes sort in ~3 us a row: cheaper than argpartition's bookkeeping at this size)."""
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return best, np.take_along_axis(probs, best, axis=1)


def mean_pool_l2(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' Pooling(mean) + Normalize on (batch, seq, dim) hidden states."""
    m = mask.astype(np.float32)[:, :, None]                       # (b, s, 1)
    mean = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)  # (b, dim)
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean / np.maximum(norm, 1e-12)).astype(np.float32)
