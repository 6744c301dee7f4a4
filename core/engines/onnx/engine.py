"""The onnx engine: loads an encoder (embeddings) or a classifier graph with its tokenizer and labels.

Variants: ``q8`` (default) runs the graph prepared by prepare.py (int8 matmuls, pooling in the graph);
``stock`` runs the model file exactly as shipped, pooling in numpy.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import attrs

from ...errors import ConfigError, ModelError
from ...interfaces import EngineCapabilities, ThreadBudget
from . import graph
from .config import DEFAULT_MAX_LENGTH, OnnxConfig, default_budget, new_session
from .tasks import ClassifyModel, EmbedModel
from .wordpiece import WordPiece

KINDS = ("embed", "classify")
VARIANTS = ("q8", "stock")
_MAIN_FILES = ("model.onnx", "classifier.onnx")
CAPABILITIES = EngineCapabilities(tasks=set(KINDS))


@attrs.define
class OnnxEngine:
    capabilities: ClassVar[EngineCapabilities] = CAPABILITIES
    name: str = "onnx"
    variant: str = "q8"
    config: OnnxConfig = attrs.field(factory=OnnxConfig)

    def load(self, model_path: str | os.PathLike, kind: str, threads: ThreadBudget | None = None,
             name: str | None = None) -> EmbedModel | ClassifyModel:
        if kind not in KINDS:
            raise ConfigError(f"unknown task kind {kind!r} for the onnx engine; use one of {', '.join(KINDS)}")
        path = _main_file(Path(model_path))
        name = name or (path.parent.name if path.name in _MAIN_FILES else path.stem)
        labels = _labels(path) if kind == "classify" else None  # cheap, and spares preparing a graph in vain
        graph_path = path
        if self.variant == "q8":
            from .prepare import prepared

            graph_path = prepared(path, kind)
        session = _session(graph_path, path, self.config, threads or default_budget())
        input_names = [i.name for i in session.get_inputs()]
        graph.check_inputs(input_names, str(path))
        # after the graph: "this is not an ONNX model" says more than "no tokenizer beside it"
        tokenizer = WordPiece.from_file(path.parent / "tokenizer.json", _max_length(path, self.config))
        common = dict(name=name, path=str(path), graph_path=str(graph_path), variant=self.variant,
                      session=session, tokenizer=tokenizer, max_length=tokenizer.max_length,
                      batch_size=self.config.batch_size, takes_token_types="token_type_ids" in input_names)
        outputs = {o.name: o for o in session.get_outputs()}
        if kind == "embed":
            if graph.EMBEDDING_OUTPUT in outputs:
                out = outputs[graph.EMBEDDING_OUTPUT]
                pooled = True
            else:
                out = next((o for o in outputs.values() if len(o.shape) == 3), None)
                if out is None:
                    raise ModelError(f"{path} is not an embedding model: it has no (batch, seq, hidden) output "
                                     f"(outputs: {_shapes(outputs)})")
                pooled = False
            dim = out.shape[-1] if isinstance(out.shape[-1], int) else 0
            return EmbedModel(**common, output=out.name, pooled=pooled, dim=dim)
        out = outputs.get(graph.PROBABILITIES_OUTPUT) or outputs.get("logits") or \
            next((o for o in outputs.values() if len(o.shape) == 2), None)
        if out is None:
            raise ModelError(f"{path} is not a classification model: it has no (batch, classes) output "
                             f"(outputs: {_shapes(outputs)})")
        n = out.shape[-1]
        if isinstance(n, int) and n != len(labels):
            raise ModelError(f"{path} scores {n} classes but its label map has {len(labels)} labels")
        return ClassifyModel(**common, output=out.name, labels=tuple(labels),
                             softmax=out.name != graph.PROBABILITIES_OUTPUT)


def _shapes(outputs: dict) -> str:
    return ", ".join(f"{k} {v.shape}" for k, v in outputs.items())


def _main_file(p: Path) -> Path:
    """A model file, or a folder holding model.onnx / classifier.onnx."""
    if p.is_dir():
        for f in _MAIN_FILES:
            if (p / f).is_file():
                return p / f
        raise ModelError(f"{p} holds no model.onnx or classifier.onnx")
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    return p


def _session(graph_path: Path, src: Path, cfg: OnnxConfig, threads: ThreadBudget):
    try:
        return new_session(str(graph_path), cfg, threads)
    except Exception as exc:
        if type(exc).__name__ == "InvalidProtobuf":
            raise ModelError(f"{src} is not an ONNX model (onnxruntime could not parse it)") from exc
        raise ModelError(f"onnxruntime cannot load {src}: {exc}") from exc


#: the longest input a model file may declare; beyond it the number is damage, not a model (a (1, n) int64
#: mask is allocated at load)
MAX_DECLARED_LENGTH = 1 << 20


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {p}: {' '.join(str(exc).split())}") from exc


def _json_object(p: Path) -> dict:
    data = _read_json(p)
    if not isinstance(data, dict):
        raise ModelError(f"{p} is not a JSON object")
    return data


def _declared_length(p: Path, key: str) -> int | None:
    """``key`` of the JSON object in ``p``: None when absent, else a positive integer within reason."""
    value = _json_object(p).get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_DECLARED_LENGTH:
        raise ModelError(f"{p}: {key} is {value!r}; expected a token count in 1..{MAX_DECLARED_LENGTH}")
    return value


def _max_length(path: Path, cfg: OnnxConfig) -> int:
    """The config's, else the model's sentence-transformers setting, else DEFAULT_MAX_LENGTH; never above the
    position-embedding count in a config.json beside the model."""
    d = path.parent
    n = cfg.max_length
    if n is None and (d / "sentence_bert_config.json").is_file():
        n = _declared_length(d / "sentence_bert_config.json", "max_seq_length")
    if n is None and (d / "labels.json").is_file() and isinstance(_read_json(d / "labels.json"), dict):
        n = _declared_length(d / "labels.json", "max_length")
    n = int(n or DEFAULT_MAX_LENGTH)
    if (d / "config.json").is_file():
        n = min(n, _declared_length(d / "config.json", "max_position_embeddings") or n)
    if n < 3:
        raise ConfigError(f"max_length {n} leaves no room for text between [CLS] and [SEP]")
    return n


def _labels(path: Path) -> list[str]:
    """labels.json beside the model (a list, {"labels": [...]}, or {"id2label": {...}}), else config.json's
    id2label (Hugging Face sequence-classification exports)."""
    for f in ("labels.json", "config.json"):
        p = path.parent / f
        if not p.is_file():
            continue
        data = _read_json(p)
        if isinstance(data, dict) and "labels" in data:
            data = data["labels"]
        elif isinstance(data, dict) and "id2label" in data:
            m = data["id2label"]
            try:
                data = [m[k] for k in sorted(m, key=int)]
            except (ValueError, TypeError):
                raise ModelError(f"{p}: id2label keys must be class indices") from None
        if isinstance(data, list) and data and all(isinstance(x, str) for x in data):
            return data
        if f == "labels.json":
            raise ModelError(f"{p} is not a label map (expected a list of label strings)")
    raise ModelError(f"{path} has no label map: put labels.json (a list of class names) beside it")
