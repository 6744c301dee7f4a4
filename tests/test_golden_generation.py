"""The golden greedy test: one prompt on SmolLM2-135M at temperature 0, and every lossless way of running it
must produce the same tokens, token for token.

The reference (native engine, kv_cache=contiguous, plain decoding, one request at a time) is computed in
this session and checked against tests/data/golden_smollm2_greedy.json (made by the product's own CLI; the
file says how to regenerate it), so a change that alters every combination alike still fails.

Combinations (native engine):
    kv_cache {contiguous, paged:f32} x decoding {plain, speculative:lookup, speculative:adaptive}
    x {one request at a time (cold, then reusing the cached prompt), n_seqs=4 with concurrent requests}
With n_seqs > 1 the requests run in the continuous batcher (they share forwards), the speculative ones
with their lookup drafts verified inside the batched steps (batch_speculation); the test checks that this
is what happened.
Not applicable: paged:q8 / paged:f16 (quantized pages are not lossless); speculative:draft (it needs a
smaller model of the same family, and SmolLM2-135M is the smallest); the llama.cpp engine with n_seqs > 1
(it does not batch) or with speculative decoding (its batched verify is not bit-exact with one-row steps).

The golden prompt asks the model to repeat a sentence: the copy makes lookup and adaptive draft long runs
and accept them (adaptive picks its depth from measured times, so only a long exact copy makes it draft
on every run).  A second prompt (OTHER) makes drafts be rejected and rolled back.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from corert import Runtime

from concurrent_requests import hold_first_step_until_joined, run_concurrently

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_smollm2_greedy.json").read_text())
PROMPT, MAX_TOKENS, N_CTX = GOLDEN["prompt"], GOLDEN["max_tokens"], GOLDEN["n_ctx"]
# a second prompt: the model copies part of its paragraph and then leaves it (", and" for " and", "She then"
# for "Then she"), so speculative drafts are also rejected and rolled back; it shares only the chat
# template's first tokens with PROMPT, and in the batch it has another length than PROMPT
OTHER = ("<|im_start|>user\nCopy this paragraph exactly: Alice packed three red apples, two green pears and a "
         "loaf of bread into her basket. Then she walked down the hill to the market, where she sold the apples "
         "to a baker and bought a small bunch of yellow flowers for her mother.<|im_end|>\n<|im_start|>assistant\n")
KV_CACHES = ("contiguous", "paged:f32")
DECODERS = ("plain", "speculative:lookup", "speculative:adaptive")


def _generate(rt: Runtime, prompt: str = PROMPT):
    return rt.generate(prompt, max_tokens=MAX_TOKENS, temperature=0)


def _native(smollm2: str, kv_cache: str, decoder: str, n_seqs: int = 1) -> Runtime:
    return Runtime(engine="native", model=smollm2, n_ctx=N_CTX, n_seqs=n_seqs,
                   plugins={"kv_cache": kv_cache, "speculative": decoder})


def _assert_speculated(completion, decoder: str) -> None:
    """A speculative decoder really drafted and had drafts accepted (else this test checks plain twice)."""
    if decoder != "plain":
        assert completion.decoder_stats["accepted"] > 0, completion.decoder_stats


@pytest.fixture(scope="module")
def reference(smollm2):
    """Token ids of the golden prompt and of OTHER on the reference combination, one request at a time."""
    with _native(smollm2, "contiguous", "plain") as rt:
        golden, other = _generate(rt), _generate(rt, OTHER)
    return golden, other


def test_reference_equals_the_committed_golden(reference):
    golden, _ = reference
    assert list(golden.token_ids) == GOLDEN["token_ids"]
    assert golden.text == GOLDEN["text"]


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("kv_cache", KV_CACHES)
def test_one_request_at_a_time(smollm2, reference, kv_cache, decoder):
    golden, other = reference
    with _native(smollm2, kv_cache, decoder) as rt:
        cold = _generate(rt)
        warm = _generate(rt)  # the session still holds the prompt's K/V: only its last token is evaluated
        second = _generate(rt, OTHER)  # keeps only the shared chat-template prefix
    for out in (cold, warm):
        assert out.token_ids == golden.token_ids
        assert out.text == golden.text
        _assert_speculated(out, decoder)
    assert second.token_ids == other.token_ids
    if decoder == "speculative:lookup":  # fixed depth: some of its drafts are rejected, then rolled back
        assert 0 < second.decoder_stats["accepted"] < second.decoder_stats["drafted"], second.decoder_stats


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("kv_cache", KV_CACHES)
def test_concurrent_requests_with_n_seqs(smollm2, reference, kv_cache, decoder, monkeypatch):
    golden, other = reference
    prompts = [PROMPT, OTHER, PROMPT]  # the golden prompt twice: on paged, the two may share prefix pages
    with _native(smollm2, kv_cache, decoder, n_seqs=4) as rt:
        service = rt.load_generation_model()[0].batch_service()
        hold_first_step_until_joined(monkeypatch, service, len(prompts))
        got, errors = run_concurrently(lambda p: _generate(rt, p), prompts)
    assert errors == [None] * len(prompts)
    assert [c.token_ids for c in got] == [golden.token_ids, other.token_ids, golden.token_ids]
    assert [c.text for c in got] == [golden.text, other.text, golden.text]
    # all three decoded in one forward
    assert all(c.decoder_stats["continuous_batching"] for c in got)
    assert max(c.decoder_stats["peak_streams"] for c in got) == len(prompts)
    if decoder != "plain":  # drafts were verified inside the batch, and some kept
        assert service.runner.accepted > 0


def test_llama_cpp_plain_matches_the_native_golden(smollm2, reference):
    """llama.cpp computes differently (its own kernels, quantized dot products) and differs from the native
    engine on some prompts; on this one its greedy tokens agree, and they must keep agreeing, from a cold
    context and when it reuses the cached prompt."""
    golden, _ = reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = Runtime(engine="llama.cpp", model=smollm2, n_ctx=N_CTX, plugins={"speculative": "plain"})
    with rt:
        cold = _generate(rt)
        warm = _generate(rt)
    assert cold.token_ids == warm.token_ids == golden.token_ids
    assert cold.text == warm.text == golden.text
