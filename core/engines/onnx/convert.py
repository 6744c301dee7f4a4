"""Pull-time conversions for the onnx engine's models (ModelSpec.convert hooks).

``convert_intent_head`` turns rag-intent-classifier's scikit-learn LogisticRegression (trained on
all-MiniLM-L6-v2 sentence embeddings, which are mean-pooled and L2-normalised) into ONE ONNX graph:
the minilm-l6 encoder + mean pooling + L2 norm + MatMul/Add with the head + Softmax, plus labels.json.
scikit-learn and joblib are needed here only.  A joblib file is a pickle: loading it runs code, so each is
checked against the registry's sha256 right before it is loaded -- not only when it was downloaded (a pull
that finds the files already there, e.g. after classifier.onnx was deleted, converts what is on disk).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from ...errors import ModelError
from . import graph

ENCODER = "minilm-l6"
HEAD_FILE = "LogisticRegression.joblib"
LABEL_MAP_FILE = "label_map.joblib"
OUTPUT = "classifier.onnx"
LABELS = "labels.json"


def _joblib():
    try:
        import joblib
        import sklearn  # noqa: F401 - the pickles reference sklearn classes
    except ImportError:
        raise ModelError("converting the intent classifier's head needs scikit-learn once, at pull time: "
                         "pip install scikit-learn (then pull again)") from None
    return joblib


def head_digests(store=None) -> dict[str, str]:
    """filename -> sha256 of the joblib files, from the spec whose convert hook is this module's (the
    store's specs when it has them: a plugin may register the model)."""
    from ...models.registry import BUILTIN_MODELS

    specs = list(getattr(store, "specs", {}).values()) or list(BUILTIN_MODELS)
    hook = f"{__name__}:convert_intent_head"
    for spec in specs:
        if spec.convert == hook:
            return {f.filename: f.sha256 for f in spec.files}
    raise ModelError(f"no model spec converts with {hook}: the joblib files cannot be verified")


def _verified(path: Path, digests: dict[str, str]) -> Path:
    from ...models.store import sha256_of

    want = digests.get(path.name)
    if want is None:
        raise ModelError(f"{path.name} has no registered sha256; refusing to unpickle it")
    if not path.is_file():
        raise ModelError(f"{path} is missing; run: corert models pull --force intent-minilm")
    got = sha256_of(path)
    if got != want:
        raise ModelError(f"{path} does not match its registered sha256 (got {got[:12]}..., expected "
                         f"{want[:12]}...); it was not loaded. Run: corert models pull --force intent-minilm")
    return path


def read_head(model_dir: Path, digests: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(weight (classes, 384), bias (classes,), label per class row) from the joblib files, each unpickled
    only after its sha256 matched ``digests`` (default: the registry's)."""
    joblib = _joblib()
    digests = head_digests() if digests is None else digests
    head, label_file = _verified(model_dir / HEAD_FILE, digests), _verified(model_dir / LABEL_MAP_FILE, digests)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # InconsistentVersionWarning: trained with another sklearn
        try:
            clf = joblib.load(head)
            label_map = joblib.load(label_file)
        except Exception as exc:  # noqa: BLE001 - verified files that still fail: another sklearn, say
            raise ModelError(f"cannot load the classifier head from {model_dir}: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}") from exc
    coef = np.asarray(getattr(clf, "coef_", None), dtype=np.float32)
    bias = np.asarray(getattr(clf, "intercept_", None), dtype=np.float32)
    classes = [str(c) for c in getattr(clf, "classes_", [])]
    if coef.ndim != 2 or coef.shape[0] != len(classes) or bias.shape != (len(classes),) or len(classes) < 3:
        raise ModelError(f"{HEAD_FILE} is not a multinomial linear classifier (coef {coef.shape}, "
                         f"intercept {bias.shape}, {len(classes)} classes)")
    if not isinstance(label_map, dict):
        raise ModelError(f"{LABEL_MAP_FILE} is a {type(label_map).__name__}, not a dict of class -> label")
    names = {str(k): str(v) for k, v in label_map.items()}
    # classes_ are the numeric ids as strings; the label map names them.  A few extra classes (the
    # package's meta-intents, ids 201-205) are named only by their id: keep the id, as the package does.
    labels = [names.get(c, c) for c in classes]
    return coef, bias, labels


def convert_intent_head(model_dir: Path, store) -> Path:
    """Write classifier.onnx, labels.json and the encoder's tokenizer.json into ``model_dir``.  Idempotent;
    every output is written atomically."""
    model_dir = Path(model_dir)
    coef, bias, labels = read_head(model_dir, head_digests(store))
    encoder_path = Path(store.path(ENCODER))
    if not encoder_path.is_file():
        raise ModelError(f"the encoder {ENCODER!r} is not pulled ({encoder_path}); run: corert models pull {ENCODER}")
    if coef.shape[1] != 384:
        raise ModelError(f"{HEAD_FILE} expects {coef.shape[1]}-dim embeddings; {ENCODER} gives 384")
    model = graph.load_model(str(encoder_path))
    graph.add_mean_pool_l2(model)  # the head was trained on normalised sentence-transformers embeddings
    graph.add_linear_softmax(model, coef, bias)
    model.doc_string = (f"corert: {ENCODER} encoder + mean pooling + L2 norm + rag-intent-classifier "
                        f"LogisticRegression head ({len(labels)} classes) + softmax")
    _copy_atomic(encoder_path.parent / "tokenizer.json", model_dir / "tokenizer.json")
    _write_atomic(model_dir / LABELS, json.dumps(
        {"labels": labels, "max_length": 256, "encoder": ENCODER, "head": HEAD_FILE}, indent=1))
    graph.save_atomic(model, str(model_dir / OUTPUT))
    from .prepare import prepared

    prepared(model_dir / OUTPUT, "classify")  # the q8 graph too, now rather than on first use
    return model_dir / OUTPUT


def prepare_encoder(model_dir: Path, store=None) -> Path:
    """Build the q8 graph of an encoder at pull time (otherwise it is built on first load)."""
    from .prepare import prepared

    return prepared(Path(model_dir) / "model.onnx", "embed")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".partial")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
