"""The pull-time conversion of the intent classifier's scikit-learn head into one ONNX graph."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from corert.engines.onnx import convert, graph
from corert.engines.onnx.plugin import make_engine
from corert.errors import ModelError
from corert.models.store import ModelStore, sha256_of

TEXTS = ["what is the weather in london", "cancel my reservation for tonight", "how many calories in a banana",
         "transfer 200 dollars to my savings account", "who made you"]


class _EncoderOnly:
    """The store's one method the conversion calls: where the pulled encoder is."""

    def path(self, name: str) -> Path:
        return ModelStore().resolve(name)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import sklearn  # noqa: F401
    src = ModelStore().resolve("intent-minilm").parent
    d = tmp_path_factory.mktemp("intent")
    for f in (convert.HEAD_FILE, convert.LABEL_MAP_FILE):
        shutil.copy(src / f, d / f)
    out = convert.convert_intent_head(d, _EncoderOnly())
    return out


def test_writes_one_graph_labels_and_tokenizer(converted):
    d = converted.parent
    assert converted.name == "classifier.onnx"
    meta = json.loads((d / "labels.json").read_text())
    assert len(meta["labels"]) == 157 and "weather" in meta["labels"] and meta["max_length"] == 256
    encoder_dir = ModelStore().resolve("minilm-l6").parent
    assert (d / "tokenizer.json").read_bytes() == (encoder_dir / "tokenizer.json").read_bytes()
    m = graph.load_model(str(converted))
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in m.graph.output] == ["probabilities"]
    assert {"corert/head/MatMul", "corert/head/Softmax", "corert/pool/normalize"} <= {n.name for n in m.graph.node}
    assert not list(d.glob("*.partial"))
    from corert.engines.onnx.prepare import cache_paths

    assert cache_paths(converted, "classify")[0].is_file()  # the q8 graph is built at pull time too


def test_graph_equals_sklearn_on_the_same_embeddings(converted):
    """The graph computes what the head's own predict_proba does on normalised MiniLM embeddings."""
    import warnings

    import joblib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trained with scikit-learn 1.5
        clf = joblib.load(converted.parent / convert.HEAD_FILE)
    emb = make_engine("stock").load(ModelStore().resolve("minilm-l6"), "embed").embed(TEXTS).embeddings
    want = clf.predict_proba(emb)
    model = make_engine("stock").load(converted, "classify")
    got = model.session.run(None, _feed(model, TEXTS))[0]
    np.testing.assert_allclose(got, want, atol=2e-5)
    labels = json.loads((converted.parent / "labels.json").read_text())["labels"]
    assert [labels[i] for i in want.argmax(1)][:3] == ["weather", "cancel_reservation", "calories"]


def _feed(model, texts):
    b = model.tokenizer.encode_batch(texts)
    return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "token_type_ids": b.token_type_ids}


def test_idempotent(converted):
    before = converted.read_bytes()
    convert.convert_intent_head(converted.parent, _EncoderOnly())
    assert converted.read_bytes() == before


def test_missing_sklearn_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    with pytest.raises(ModelError, match="pip install scikit-learn"):
        convert.convert_intent_head(tmp_path, _EncoderOnly())


def test_head_that_is_not_a_linear_classifier(tmp_path):
    import joblib as joblib
    joblib.dump({"not": "a model"}, tmp_path / convert.HEAD_FILE)
    joblib.dump({"0": "x"}, tmp_path / convert.LABEL_MAP_FILE)
    with pytest.raises(ModelError, match="does not match its registered sha256"):
        convert.convert_intent_head(tmp_path, _EncoderOnly())
    # files whose digests are the expected ones, yet not a classifier
    digests = {f: sha256_of(tmp_path / f) for f in (convert.HEAD_FILE, convert.LABEL_MAP_FILE)}
    with pytest.raises(ModelError, match="not a multinomial linear classifier"):
        convert.read_head(tmp_path, digests)
