"""`corert bench embed|classify` runs end to end through the CLI (a handful of runs: it checks the shape of the
report and that every side computes the same answer, never the timings)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from corert.cli import main as cli_main
from corert.tools.bench import encoders as bench
from corert.engines.onnx.plugin import make_engine
from corert.interfaces import ThreadBudget
from corert.models.store import ModelStore

FEW = ["--runs", "4", "--batch-runs", "2", "--warmup", "1", "--threads", "1"]


@pytest.mark.parametrize("n", [16, 64])
def test_texts_of_exactly_n_tokens(n):
    """The bench's "@16 tokens" holds for every side: Hugging Face's own tokenizer, which the raw sides run,
    makes exactly n tokens of the text, and the text is a run of whole words of the bench's prose."""
    from tokenizers import Tokenizer

    path = ModelStore().resolve(bench.DEFAULT_MODEL["embed"])
    ours = make_engine("stock").load(path, "embed").tokenizer
    text = bench.text_of_tokens(ours, n)
    hf = Tokenizer.from_file(str(path.parent / "tokenizer.json"))
    hf.no_padding()  # as the raw sides run it (the file pads to 128)
    assert len(hf.encode(text).ids) == n
    assert f" {text} " in f" {' '.join(bench.PROSE.split())} "


def test_bench_embed_json_through_the_cli(capsys):
    assert cli_main(["bench", "embed", "--json", "--explore", *FEW]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["machine"]["cores"] >= 1  # the CLI adds the machine
    assert r["model"] == bench.DEFAULT_MODEL["embed"] and r["runs"] == 4
    for n in ("16", "64"):
        for side in ("raw-stock", "raw-same", "corert"):
            assert r["single"][n][side]["n"] == 4 and r["single"][n][side]["p95_ms"] > 0
        paired = r["single"][n]["paired"]  # corert/raw-same, call by call, summarized per round of calls
        assert len(paired["wall_rounds"]) == 3 and all(x > 0 for x in paired["wall_rounds"])
        assert paired["wall_range"] == [min(paired["wall_rounds"]), max(paired["wall_rounds"])]
    assert r["batch32"]["corert"]["texts_per_s"] > 0
    assert len(r["explore"]) == 9 and r["explore"][0]["skip_ln_fusion"] is False
    text = bench.render(r)
    assert "corert/raw-same p50 @16" in text and "goal p95 @16 tokens" in text and "SkipLN fusion" in text


def test_bench_classify_table_through_the_cli(capsys):
    assert cli_main(["bench", "classify", *FEW]) == 0
    text = capsys.readouterr().out
    assert bench.DEFAULT_MODEL["classify"] in text
    assert "corert/raw-same p50 @16" in text and "goal p95 @16 tokens" in text and "SkipLN fusion" not in text


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
