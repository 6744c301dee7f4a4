"""The embed/classify bench module runs end to end (a handful of runs: it checks the shape of the report and
that every side computes the same answer, never the timings)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from corert.engines.onnx import bench
from corert.engines.onnx.plugin import make_engine
from corert.interfaces import ThreadBudget
from corert.models.store import ModelStore


def _args(kind: str, *extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    a = p.parse_args(["--runs", "4", "--batch-runs", "2", "--warmup", "1", *extra])
    a.bench, a.model, a.engine, a.threads, a.json = kind, None, None, 1, True
    return a


@pytest.fixture(scope="module")
def tokenizer():
    return make_engine("stock").load(ModelStore().resolve("minilm-l6"), "embed").tokenizer


@pytest.mark.parametrize("n", [16, 64])
def test_texts_of_exactly_n_tokens(tokenizer, n):
    assert tokenizer.count(bench.text_of_tokens(tokenizer, n)) == n


@pytest.mark.parametrize("kind, extra", [("embed", ("--explore",)), ("classify", ())])
def test_bench_runs_and_renders(kind, extra):
    r = bench.run(_args(kind, *extra))
    r["machine"] = {"cpu": "test", "cores": 2, "isa": "x"}
    json.dumps(r)
    assert r["model"] == bench.DEFAULT_MODEL[kind] and r["runs"] == 4
    for n in ("16", "64"):
        for side in ("raw-stock", "raw-same", "corert"):
            assert r["single"][n][side]["n"] == 4 and r["single"][n][side]["p95_ms"] > 0
    assert r["batch32"]["corert"]["texts_per_s"] > 0
    text = bench.render(r)
    assert "corert/raw-same p50 @16" in text and "goal p95 @16 tokens" in text
    if extra:
        assert len(r["explore"]) == 9 and r["explore"][0]["skip_ln_fusion"] is False
        assert "SkipLN fusion" in text


@pytest.mark.parametrize("kind", ["embed", "classify"])
def test_raw_sides_compute_what_corert_computes(kind):
    """The raw pipelines are real competitors: same graph, same answer."""
    path = ModelStore().resolve(bench.DEFAULT_MODEL[kind])
    budget = ThreadBudget(2, 1, 1, 1, 1, False, 1)
    model = make_engine("q8").load(path, kind, budget)
    texts = bench.batch_texts(5)
    raw = bench._raw_side(model.graph_path, str(path.parent / "tokenizer.json"), model.max_length, budget,
                          kind, pooled=True)(texts)
    ours = model.embed(texts).embeddings if kind == "embed" else None
    if kind == "embed":
        np.testing.assert_allclose(raw, ours, atol=1e-5)
    else:
        top = model.classify(texts, top_k=5)
        best, scores = raw
        assert [[model.labels[i] for i in row] for row in best] == [[x.label for x in r.top] for r in top.results]
        np.testing.assert_allclose(scores, [[x.score for x in r.top] for r in top.results], atol=2e-5)
