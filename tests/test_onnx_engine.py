"""The onnx engine on the real MiniLM models: registration, thread budget, inputs, truncation, batching,
results, and clear errors for bad input and bad model files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from corert.engines.onnx.config import OnnxConfig
from corert.engines.onnx.plugin import make_engine
from corert.errors import ConfigError, InputError, ModelError
from corert.interfaces import ThreadBudget
from corert.models.store import ModelStore

BUDGET_1 = ThreadBudget(cores=2, llama_threads=1, llama_batch_threads=1, ort_intra_op=1, ort_inter_op=1,
                        ort_spinning=False, numba_threads=1)


@pytest.fixture(scope="module")
def encoder_path():
    return ModelStore().resolve("minilm-l6")


@pytest.fixture(scope="module")
def classifier_path():
    return ModelStore().resolve("intent-minilm")


@pytest.fixture(scope="module", params=["q8", "stock"])
def embedder(request, encoder_path):
    return make_engine(request.param).load(encoder_path, "embed", BUDGET_1)


@pytest.fixture(scope="module")
def classifier(classifier_path):
    return make_engine("q8").load(classifier_path, "classify", BUDGET_1)


# -- plugging in ----------------------------------------------------------------------------------------------
def test_registered_through_the_entry_point():
    from corert.plugin_host import PluginHost

    host = PluginHost.build()
    reg = host.implementations("engine")["onnx"]
    assert reg.plugin == "engine_onnx"
    assert [v.name for v in reg.impl.variants] == ["q8", "stock"]
    resolved = host.resolve("engine", "onnx")
    assert resolved.variant.name == "q8"
    engine = host.create(resolved, config=None)
    assert engine.name == "onnx" and engine.variant == "q8"
    assert host.create(host.resolve("engine", "onnx:stock"), config=None).variant == "stock"


def test_thread_budget_reaches_the_session(embedder):
    so = embedder.session.get_session_options()
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_spinning_stays_on_when_the_budget_allows_it(encoder_path):
    import attrs

    m = make_engine("stock").load(encoder_path, "embed", attrs.evolve(BUDGET_1, ort_intra_op=2, ort_spinning=True))
    so = m.session.get_session_options()
    assert so.intra_op_num_threads == 2
    with pytest.raises(RuntimeError):  # not set: onnxruntime's default (spinning) applies
        so.get_session_config_entry("session.intra_op.allow_spinning")


def test_a_folder_is_accepted(encoder_path):
    assert make_engine("stock").load(encoder_path.parent, "embed").path == str(encoder_path)


# -- results --------------------------------------------------------------------------------------------------
def test_embed_result(embedder):
    r = embedder.embed(["How do I reset my password?", "hello"])
    assert r.embeddings.shape == (2, 384) and r.embeddings.dtype == np.float32
    tok = embedder.tokenizer
    assert [i.tokens for i in r.inputs] == [tok.count("How do I reset my password?"), 3]
    assert [i.truncated for i in r.inputs] == [False, False]
    d = json.loads(json.dumps(r.to_dict()))
    assert d["model"] == "minilm-l6" and d["dim"] == 384 and d["max_length"] == 256
    assert len(d["embeddings"]) == 2 and len(d["embeddings"][0]) == 384
    assert d["inputs"][1] == {"tokens": 3, "truncated": False}
    assert d["timings_ms"]["total"] >= d["timings_ms"]["infer"] > 0
    # semantics: a paraphrase is nearer than an unrelated sentence
    e = embedder.embed(["How can I change my password?", "The cat sat on the mat."]).embeddings
    assert r.embeddings[0] @ e[0] > 0.8 > 0.3 > r.embeddings[0] @ e[1]


def test_classify_result(classifier):
    r = classifier.classify(["set an alarm for 7 am tomorrow"], top_k=4)
    assert r.labels == ["alarm"] and r.n_labels == 157
    top = r.results[0].top
    assert len(top) == 4 and top[0].score > 0.5 and top[0].score >= top[1].score >= top[3].score
    d = json.loads(json.dumps(r.to_dict()))
    assert d["results"][0][0]["label"] == "alarm" and len(d["results"][0]) == 4
    assert d["inputs"][0] == {"tokens": classifier.tokenizer.count("set an alarm for 7 am tomorrow"),
                              "truncated": False}
    assert classifier.classify(["tell me a joke"], top_k=1000).results[0].top.__len__() == 157


def test_overlong_text_is_truncated_and_reported(embedder):
    words = " ".join(f"word{i}" for i in range(400))
    a, b = words + " the ending is about cats", words + " a completely different ending about finance"
    r = embedder.embed([a, b, "short text"])
    assert [(i.tokens, i.truncated) for i in r.inputs] == [(256, True), (256, True), (4, False)]
    assert embedder.tokenizer.untruncated_count(a) > 256
    # the model saw only the first 256 tokens: the different endings cannot matter
    np.testing.assert_allclose(r.embeddings[0], r.embeddings[1], atol=1e-6)


def test_max_length_from_config(encoder_path):
    m = make_engine("stock", config={"max_length": 16}).load(encoder_path, "embed")
    r = m.embed(["one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"])
    assert (r.inputs[0].tokens, r.inputs[0].truncated, r.max_length) == (16, True, 16)


def test_long_requests_are_batched_in_length_order(encoder_path):
    texts = [("x " * n) + f"sentence number {n}" for n in (30, 1, 12, 5, 40, 2, 7, 3, 25, 9)]
    small = make_engine("stock", config=OnnxConfig(batch_size=3)).load(encoder_path, "embed")
    got = small.embed(texts)
    single = np.stack([small.embed([t]).embeddings[0] for t in texts])
    np.testing.assert_allclose(got.embeddings, single, atol=2e-5)
    assert [i.tokens for i in got.inputs] == [small.tokenizer.count(t) for t in texts]


# -- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("texts, match", [
    ([], "no texts"),
    ("hello", "not a single string"),
    (None, "list of strings"),
    ([""], r"texts\[0\] is empty"),
    (["fine", "   \n"], r"texts\[1\] is empty"),
    (["fine", 3], r"texts\[1\] is int"),
    ([b"bytes"], r"texts\[0\] is bytes"),
    (["x" * 1_000_001], "over the 1,000,000 limit"),
])
def test_bad_texts(embedder, classifier, texts, match):
    with pytest.raises(InputError, match=match):
        embedder.embed(texts)
    with pytest.raises(InputError, match=match):
        classifier.classify(texts)


@pytest.mark.parametrize("top_k", [0, -1, "3", True, 2.5])
def test_bad_top_k(classifier, top_k):
    with pytest.raises(InputError, match="top_k"):
        classifier.classify(["hello"], top_k=top_k)


# -- bad models -----------------------------------------------------------------------------------------------
def _model_dir(tmp_path, encoder_path, content: bytes | None = None):
    shutil.copy(encoder_path.parent / "tokenizer.json", tmp_path / "tokenizer.json")
    if content is not None:
        (tmp_path / "model.onnx").write_bytes(content)
    return tmp_path / "model.onnx"


@pytest.mark.parametrize("variant", ["q8", "stock"])
def test_not_an_onnx_file(tmp_path, encoder_path, variant):
    path = _model_dir(tmp_path, encoder_path, b"GGUF\x03\x00\x00\x00 this is not a protobuf model" * 10)
    with pytest.raises(ModelError, match="not an ONNX model"):
        make_engine(variant).load(path, "embed")


@pytest.mark.parametrize("variant", ["q8", "stock"])
def test_wrong_inputs(tmp_path, encoder_path, variant):
    from onnx import TensorProto, helper, save

    g = helper.make_graph([helper.make_node("Identity", ["pixel_values"], ["out"])], "image",
                          [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = _model_dir(tmp_path, encoder_path)
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelError, match="must take input_ids and attention_mask"):
        make_engine(variant).load(path, "embed")


def test_missing_file_and_tokenizer(tmp_path, encoder_path):
    with pytest.raises(ModelError, match="not found"):
        make_engine("stock").load(tmp_path / "nope.onnx", "embed")
    shutil.copy(encoder_path, tmp_path / "model.onnx")
    with pytest.raises(ModelError, match="tokenizer.json"):
        make_engine("stock").load(tmp_path / "model.onnx", "embed")


def test_wrong_kind(encoder_path, classifier_path):
    with pytest.raises(ConfigError, match="unknown task kind"):
        make_engine("stock").load(encoder_path, "generate")
    with pytest.raises(ModelError, match="no label map"):
        make_engine("stock").load(encoder_path, "classify")
    for variant in ("stock", "q8"):
        with pytest.raises(ModelError, match="not an embedding model"):
            make_engine(variant).load(classifier_path, "embed")


def test_label_count_must_match(tmp_path, classifier_path):
    for f in ("classifier.onnx", "tokenizer.json"):
        shutil.copy(classifier_path.parent / f, tmp_path / f)
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(ModelError, match="157 classes but its label map has 3"):
        make_engine("stock").load(tmp_path / "classifier.onnx", "classify")


def test_any_sequence_classifier_with_logits_and_id2label(tmp_path, encoder_path, classifier):
    """A Hugging Face style export: a `logits` output and config.json's id2label, no corert files.  Built
    here from the real encoder and the real intent head; softmax is applied by the engine."""
    from onnx import helper, numpy_helper

    from corert.engines.onnx import graph

    head = {i.name: numpy_helper.to_array(i) for i in graph.load_model(classifier.path).graph.initializer
            if i.name.startswith("corert/head/")}
    m = graph.load_model(str(encoder_path))
    graph.add_mean_pool_l2(m)
    g = m.graph
    g.initializer.extend([numpy_helper.from_array(head["corert/head/weight_t"], "w"),
                          numpy_helper.from_array(head["corert/head/bias"], "b")])
    g.node.extend([helper.make_node("MatMul", ["sentence_embedding", "w"], ["xw"]),
                   helper.make_node("Add", ["xw", "b"], ["logits"])])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", 1, ["batch", 157]))
    (tmp_path / "model.onnx").write_bytes(m.SerializeToString())
    shutil.copy(encoder_path.parent / "tokenizer.json", tmp_path / "tokenizer.json")
    labels = classifier.labels
    (tmp_path / "config.json").write_text(json.dumps(
        {"id2label": {str(i): name for i, name in enumerate(labels)}, "max_position_embeddings": 512}))
    hf = make_engine("stock").load(tmp_path / "model.onnx", "classify")
    ours = make_engine("stock").load(classifier.path, "classify")
    texts = ["book a flight to rome", "what's my credit score"]
    a, b = hf.classify(texts, top_k=3), ours.classify(texts, top_k=3)
    assert a.labels == b.labels == ["book_flight", "credit_score"]
    np.testing.assert_allclose([x.score for r in a.results for x in r.top],
                               [x.score for r in b.results for x in r.top], atol=1e-5)


@pytest.mark.parametrize("k", [1, 5, 156, 157])
def test_top_k_rows_is_a_full_sort_cut_at_k(classifier, k):
    from corert.engines.onnx.tasks import top_k_rows

    texts = ["book a flight to rome", "what's my credit score", "play some jazz", "how old are you"]
    b = classifier.tokenizer.encode_batch(texts)
    probs = classifier.session.run(None, classifier._feed(b))[0]
    idx, scores = top_k_rows(probs, k)
    want = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.take_along_axis(probs, idx, 1), np.take_along_axis(probs, want, 1))
    np.testing.assert_array_equal(scores, np.take_along_axis(probs, want, 1))
