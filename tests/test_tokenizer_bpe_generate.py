"""On the generation path the bpe tokenizer (the default) and llama.cpp's own give the same output."""
from __future__ import annotations

import warnings

import pytest

from test_tokenizer_helpers import model_path

PROMPTS = {
    "smollm2-135m-instruct": "The three primary colors are",
    "gemma3-270m": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
}


@pytest.mark.parametrize("model", sorted(PROMPTS))
def test_greedy_generation_identical_with_both_tokenizers(model):
    from corert import Runtime

    model_path(model)  # skips when the model is not pulled
    outputs = {}
    for name in ("bpe", "llama_cpp"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rt = Runtime(engine="llama.cpp", model=model, plugins={"tokenizer": name})
        try:
            assert rt.resolve("tokenizer").impl.name == name
            done = rt.generate(PROMPTS[model], max_tokens=16, temperature=0.0)
            outputs[name] = (done.text, done.token_ids, rt.tokenize(PROMPTS[model]))
        finally:
            rt.close()
    assert outputs["bpe"] == outputs["llama_cpp"]
    assert outputs["bpe"][0].strip(), "the model generated nothing"


def test_bpe_is_the_default_tokenizer():
    from corert import Runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(engine="llama.cpp")
    try:
        assert rt.resolve("tokenizer").impl.name == "bpe"
    finally:
        rt.close()
