"""The q8 preparation of the encoder graph: what it changes, what it keeps, and its cache."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from corert.engines.onnx import fusions, graph, prepare
from corert.engines.onnx.plugin import make_engine
from corert.models.store import ModelStore

import onnx as onnx


@pytest.fixture(scope="module")
def encoder_path():
    return ModelStore().resolve("minilm-l6")


def _run(model_bytes_or_path, ids):
    import onnxruntime as ort

    s = ort.InferenceSession(model_bytes_or_path, providers=["CPUExecutionProvider"])
    return s.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})[0]


def test_gather_before_dequant_gives_the_same_numbers(encoder_path):
    m = graph.load_model(str(encoder_path))
    assert fusions.gather_before_dequant(m) == 2  # word and position tables
    ids = np.array([[101, 7592, 2088, 1010, 2129, 2024, 2017, 1029, 102]], np.int64)
    np.testing.assert_allclose(_run(m.SerializeToString(), ids), _run(str(encoder_path), ids), atol=1e-5)


def test_fusions_give_the_same_numbers(tmp_path, encoder_path):
    """One MultiHeadAttention per layer computes what the exported block did, padding included."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "fp32.onnx")
    ort.InferenceSession(str(encoder_path), so, providers=["CPUExecutionProvider"])
    m = graph.load_model(str(tmp_path / "fp32.onnx"))
    n_before = len(m.graph.node)
    assert fusions.fuse_attention(m) == 6 and fusions.fuse_gelu(m) == 6 and fusions.pack_qkv(m) == 6
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("MultiHeadAttention") == 6 and ops.count("Gelu") == 6 and "Erf" not in ops
    assert ops.count("Split") == 6 and ops.count("MatMul") == 6 * 4  # QKV, output, FFN up, FFN down
    assert len(m.graph.node) < 0.4 * n_before
    ids = np.array([[101, 7592, 2088, 1010, 2129, 2024, 2017, 1029, 102], [101, 2023, 2003, 102, 0, 0, 0, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    want = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got[0], want[0], atol=1e-4)
    np.testing.assert_allclose(got[1, :4], want[1, :4], atol=1e-4)  # padded positions are never read


@pytest.mark.parametrize("kind, model, fp32", [("embed", "minilm-l6", 1), ("classify", "intent-minilm", 2)])
def test_prepared_graph(kind, model, fp32):
    path = prepare.prepared(ModelStore().resolve(model), kind)
    m = graph.load_model(str(path))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("MultiHeadAttention") == 6
    assert ops.count("MatMulInteger") == 6 * 4 - 1  # every encoder projection (QKV packed) but layer 0's FFN down
    inits = {i.name: i for i in m.graph.initializer}
    const_matmuls = [n for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert len(const_matmuls) == fp32  # that one, plus the classifier head
    table = [i for i in m.graph.initializer if list(i.dims) == [30522, 384]]  # the word embeddings
    assert len(table) == 1 and table[0].data_type == onnx.TensorProto.INT8
    assert os.path.getsize(path) < 30e6
    out = [o.name for o in m.graph.output]
    assert out == (["sentence_embedding"] if kind == "embed" else ["probabilities"])


def test_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path, encoder_path):
    src = tmp_path / "model.onnx"
    shutil.copy(encoder_path, src)
    first = prepare.prepared(src, "embed")
    stamp = first.stat().st_mtime_ns
    assert prepare.prepared(src, "embed") == first and first.stat().st_mtime_ns == stamp
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))  # "re-pulled"
    again = prepare.prepared(src, "embed")
    assert again == first and again.stat().st_mtime_ns != stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", f"model.{prepare.RECIPE}-embed.json",
                                                          f"model.{prepare.RECIPE}-embed.onnx"]
    # the other kind gets its own graph; the embedding one stays
    assert prepare.prepared(src, "classify") != first and first.stat().st_mtime_ns == again.stat().st_mtime_ns


def test_q8_and_stock_agree(encoder_path):
    texts = ["How do I reset my online banking password?", "Heavy rain is expected tomorrow."]
    a = make_engine("q8").load(encoder_path, "embed").embed(texts).embeddings
    b = make_engine("stock").load(encoder_path, "embed").embed(texts).embeddings
    assert np.sum(a * b, axis=1).min() > 0.98


def test_pull_time_hook_builds_the_graph_loading_uses(tmp_path, encoder_path):
    """minilm-l6's ModelSpec.convert hook, called as the store calls it after a pull, builds the q8 graph in
    the model's folder; loading the model then uses that graph without building it again."""
    import importlib

    store = ModelStore()
    spec = store.spec("minilm-l6")
    for f in spec.files:  # a freshly pulled folder: the model's files, no prepared graph yet
        shutil.copy(encoder_path.parent / f.filename, tmp_path / f.filename)
    module, _, func = spec.convert.partition(":")
    hook = getattr(importlib.import_module(module), func)
    built = hook(tmp_path, store)
    assert built.parent == tmp_path and built.is_file()
    m = graph.load_model(str(built))
    assert [n.op_type for n in m.graph.node].count("MatMulInteger") == 6 * 4 - 1
    assert [o.name for o in m.graph.output] == ["sentence_embedding"]
    stamp = built.stat().st_mtime_ns
    loaded = make_engine("q8").load(tmp_path / spec.main, "embed")
    assert os.path.samefile(loaded.graph_path, built) and built.stat().st_mtime_ns == stamp
    assert loaded.embed(["a pulled model embeds"]).embeddings.shape == (1, 384)
