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
    "<|im_start|>user\nCopy this list exactly: apples, pears, plums, cherries, grapes, lemons, limes, figs, dates, "
    "kiwis.<|im_end|>\n<|im_start|>assistant\n",
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


def test_adaptive_keeps_its_measurements_across_requests(smollm2):
    """The Runtime keeps one decoder per loaded model, so speculative:adaptive's second request starts from
    the verify costs the first measured (and the accepted runs it sampled) instead of from the priors.
    Every decoding step records exactly one verify timing, so the evidence held after each request counts
    the steps of every request so far."""
    rt = Runtime(engine="native", model=smollm2, plugins={"speculative": "speculative:adaptive"})
    decoder = rt.decoder()

    def evidence():
        return sum(e.weight for e in decoder.verify.times.values())

    first = rt.generate(PROMPTS[0], max_tokens=40, temperature=0)
    assert rt.decoder() is decoder
    assert evidence() == first.decoder_stats["steps"] > 0
    classes = decoder.controllers[0].classes
    sampled = sum(len(c.runs) for c in classes)
    assert sampled > 0  # the first request's accepted runs were sampled
    second = rt.generate(PROMPTS[1], max_tokens=40, temperature=0)
    assert rt.decoder() is decoder and decoder.controllers[0].classes is classes
    assert evidence() == first.decoder_stats["steps"] + second.decoder_stats["steps"]
    assert sum(len(c.runs) for c in classes) >= sampled  # added to, never restarted
    rt.close()


@pytest.mark.parametrize("spec", ["speculative:lookup", "speculative:tree"])
def test_a_fully_accepted_draft_teaches_the_whole_run(smollm2, plain_outputs, spec):
    """Drafting at most 4 deep, a verbatim copy is accepted 4 by 4; the controller still learns a run longer
    than 4 (the rest of each fully accepted offer is followed against the output), and the output is plain's."""
    rt = Runtime(engine="native", model=smollm2, draft_depth=4, plugins={"speculative": spec})
    out = rt.generate(PROMPTS[3], max_tokens=40, temperature=0)
    assert out.token_ids == plain_outputs[3]
    assert out.decoder_stats["accepted"] > 4
    decoder = rt.decoder()
    classes = decoder.ctrl.classes if spec.endswith("tree") else decoder.controllers[0].classes
    assert max(r for c in classes for r in c.runs) > 4
    rt.close()
