"""On the native engine, batched verification is bit-exact, so greedy speculative output is identical to
plain decoding — for every draft source and depth policy."""
from __future__ import annotations

import pytest

from corert import Runtime

PROMPTS = [
    "<|im_start|>user\nRepeat exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps "
    "over the lazy dog.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "def factorial(n):\n",
    "Once upon a time",
]


@pytest.fixture(scope="module")
def plain_outputs(smollm2):
    rt = Runtime(engine="native", model=smollm2, plugins={"speculative": "plain"})
    outs = [rt.generate(p, max_tokens=40, temperature=0).token_ids for p in PROMPTS]
    rt.close()
    return outs


@pytest.mark.parametrize("spec", ["speculative:lookup", "speculative:adaptive"])
def test_greedy_speculative_equals_plain_on_native(smollm2, plain_outputs, spec):
    rt = Runtime(engine="native", model=smollm2, plugins={"speculative": spec})
    drafted = 0
    for prompt, expected in zip(PROMPTS, plain_outputs):
        out = rt.generate(prompt, max_tokens=40, temperature=0)
        assert out.token_ids == expected
        drafted += out.decoder_stats["drafted"]
    assert drafted > 0  # speculation really happened
    rt.close()
