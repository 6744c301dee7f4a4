"""Results of the embed and classify tasks: attrs values with a JSON-ready ``to_dict()``."""
from __future__ import annotations

from typing import Any

import attrs
import numpy as np


@attrs.frozen
class Timings:
    tokenize_ms: float
    infer_ms: float   # onnxruntime run(s), plus pooling when it is done in numpy
    total_ms: float   # the whole call, validation included

    def to_dict(self) -> dict[str, float]:
        return {"tokenize": round(self.tokenize_ms, 4), "infer": round(self.infer_ms, 4),
                "total": round(self.total_ms, 4)}


@attrs.frozen
class InputInfo:
    tokens: int       # tokens the model read, [CLS] and [SEP] included
    truncated: bool   # the text was longer than max_length tokens and was cut there


@attrs.frozen
class EmbedResult:
    embeddings: np.ndarray = attrs.field(eq=False)  # (n_texts, dim) float32, L2-normalised
    inputs: tuple[InputInfo, ...]
    model: str
    max_length: int
    timings: Timings

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dim": self.dim, "max_length": self.max_length,
                "embeddings": self.embeddings.tolist(),
                "inputs": [attrs.asdict(i) for i in self.inputs],
                "timings_ms": self.timings.to_dict()}


@attrs.frozen
class Label:
    label: str
    score: float  # probability (softmax over all classes)


@attrs.frozen
class Classification:
    top: tuple[Label, ...]  # best first, top_k of them
    tokens: int
    truncated: bool

    @property
    def label(self) -> str:
        return self.top[0].label

    @property
    def score(self) -> float:
        return self.top[0].score


@attrs.frozen
class ClassifyResult:
    results: tuple[Classification, ...]
    model: str
    max_length: int
    n_labels: int
    timings: Timings

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.results]

    def to_dict(self) -> dict[str, Any]:
        """``results``: per text, its top_k labels best first; ``inputs``: per text, tokens and truncation
        (the same shape as EmbedResult's)."""
        return {"model": self.model, "max_length": self.max_length, "n_labels": self.n_labels,
                "results": [[{"label": x.label, "score": x.score} for x in r.top] for r in self.results],
                "inputs": [{"tokens": r.tokens, "truncated": r.truncated} for r in self.results],
                "timings_ms": self.timings.to_dict()}
