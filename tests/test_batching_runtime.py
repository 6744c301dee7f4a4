"""Continuous batching reached through the Runtime (native engine, n_seqs > 1): concurrent requests share
forwards, each gets exactly the text it gets alone, a request that stops early or fails leaves the others
and the KV pool intact."""
from __future__ import annotations

import pytest

from corert import Runtime
from corert.errors import InputError

from concurrent_requests import hold_first_step_until_joined, run_concurrently

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "Q: What is 12 times 12?\nA:", "Water boils at"]


@pytest.fixture(scope="module")
def runtimes(smollm2):
    common = dict(model=smollm2, engine="native", n_ctx=512,
                  plugins={"tokenizer": "llama_cpp", "kv_cache": "paged:q8"})
    alone, batched = Runtime(**common), Runtime(**common, n_seqs=4)
    yield alone, batched
    alone.close()
    batched.close()


def test_concurrent_requests_are_batched_and_identical_to_alone(runtimes, monkeypatch):
    alone_rt, rt = runtimes
    alone = [alone_rt.generate(p, max_tokens=16, temperature=0) for p in PROMPTS]
    loaded, _ = rt.load_generation_model()
    service = loaded.batch_service()  # the one the Runtime's requests join
    hold_first_step_until_joined(monkeypatch, service, len(PROMPTS))
    got, errors = run_concurrently(lambda p: rt.generate(p, max_tokens=16, temperature=0), PROMPTS)
    assert errors == [None] * len(PROMPTS)
    assert [c.token_ids for c in got] == [c.token_ids for c in alone]
    assert [c.text for c in got] == [c.text for c in alone]
    # they shared forwards: every sequence slot was decoding in one forward (6 requests, 4 slots)
    assert service.n_seqs == 4 < len(PROMPTS)
    assert max(c.decoder_stats["peak_streams"] for c in got) == service.n_seqs
    assert all(c.decoder_stats["continuous_batching"] for c in got)


def test_a_stream_stopped_early_and_a_bad_request_harm_no_one(runtimes):
    alone_rt, rt = runtimes
    loaded, _ = rt.load_generation_model()
    kv = loaded.kv
    expected = alone_rt.generate(PROMPTS[0], max_tokens=24, temperature=0)

    def stop_early(_):
        stream = rt.stream(PROMPTS[1], max_tokens=200, temperature=0)
        next(stream)
        stream.close()  # the consumer walks away: its stream is cancelled, its pages freed
        return "closed"

    def too_long(_):
        return rt.generate("word " * 600, max_tokens=4, temperature=0)  # more than n_ctx=512

    def normal(_):
        return rt.generate(PROMPTS[0], max_tokens=24, temperature=0)

    results, errors = run_concurrently(lambda f: f(None), [stop_early, too_long, normal])
    assert results[0] == "closed" and errors[0] is None
    assert isinstance(errors[1], InputError)
    assert errors[2] is None and results[2].token_ids == expected.token_ids
    # every stream left: only pages still referenced by the prefix cache remain, none held by a sequence
    assert not kv.seqs


def test_bad_n_seqs_is_a_config_error():
    from corert import RuntimeConfig
    from corert.errors import ConfigError

    for bad in (0, 257, "4"):
        with pytest.raises(ConfigError, match="n_seqs"):
            Runtime(n_seqs=bad)
    with pytest.raises(ConfigError, match="CORERT_N_SEQS"):
        RuntimeConfig.from_env(environ={"CORERT_N_SEQS": "many"})
