"""End to end on a real GGUF model through the llama.cpp engine, against raw llama-cpp-python."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from corert import ModelError, Runtime

from oracle import raw_greedy

PROMPT = "The three primary colors are"


@pytest.fixture(scope="module")
def rt_ref(smollm2):
    rt = Runtime(model=smollm2, engine="llama.cpp", plugins={"tokenizer": "llama_cpp"})
    yield rt
    rt.close()


def test_greedy_is_deterministic_and_matches_raw_llama_cpp(rt_ref, raw_llama):
    a = rt_ref.generate(PROMPT, max_tokens=64, temperature=0)
    b = rt_ref.generate(PROMPT, max_tokens=64, temperature=0)
    assert a.token_ids == b.token_ids and len(a.token_ids) > 10
    assert list(a.token_ids) == raw_greedy(raw_llama, PROMPT, 64)
    assert a.text == rt_ref.detokenize(a.token_ids)


def test_cli_generate_json_matches_raw_llama_cpp(smollm2, raw_llama):
    cmd = [sys.executable, "-m", "corert.cli", "generate", "--engine", "llama.cpp", "--model", "smollm2-135m-instruct",
           "--temperature", "0",
           "--max-tokens", "64", "--json", PROMPT]
    runs = [json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout) for _ in range(2)]
    for out in runs:
        assert {"text", "token_ids", "usage", "timings", "choices"} <= set(out)
        assert {"prompt_tokens_per_s", "decode_tokens_per_s"} <= set(out["timings"])
        assert out["usage"]["completion_tokens"] == len(out["token_ids"])
    assert runs[0]["token_ids"] == runs[1]["token_ids"] == raw_greedy(raw_llama, PROMPT, 64)


def test_stream_yields_the_same_text_as_generate(rt_ref):
    whole = rt_ref.generate("Write a haiku about rain.", max_tokens=40, temperature=0)
    chunks = list(rt_ref.stream("Write a haiku about rain.", max_tokens=40, temperature=0))
    assert "".join(c.text for c in chunks) == whole.text
    assert chunks[-1].completion is not None and chunks[-1].completion.token_ids == whole.token_ids


def test_seeded_sampling_is_reproducible(rt_ref):
    kw = dict(max_tokens=24, temperature=0.9, top_k=40, top_p=0.95, seed=1234)
    assert rt_ref.generate(PROMPT, **kw).token_ids == rt_ref.generate(PROMPT, **kw).token_ids


def test_stop_string_ends_the_text_before_it(rt_ref):
    full = rt_ref.generate(PROMPT, max_tokens=48, temperature=0).text
    stop = full.strip().split()[3]  # a word a few tokens in
    out = rt_ref.generate(PROMPT, max_tokens=48, temperature=0, stop=stop)
    assert out.finish_reason == "stop" and stop not in out.text and full.startswith(out.text)


def test_chat_uses_the_models_template(rt_ref, raw_llama):
    messages = [{"role": "user", "content": "Name three fruits."}]
    res = rt_ref.chat(messages, max_tokens=32, temperature=0)
    d = res.to_dict()
    assert d["object"] == "chat.completion" and d["choices"][0]["message"]["role"] == "assistant"
    raw_llama.reset()
    raw = raw_llama.create_chat_completion(messages, temperature=0, max_tokens=32)
    assert d["choices"][0]["message"]["content"] == raw["choices"][0]["message"]["content"]
    # the template wrapped the message in SmolLM2's <|im_start|> markers and default system prompt
    assert res.usage.prompt_tokens == raw["usage"]["prompt_tokens"]


def test_chat_without_template_is_a_clear_error(gemma):
    rt = Runtime(engine="llama.cpp", model=gemma, plugins={"tokenizer": "llama_cpp"})
    with pytest.raises(ModelError, match="no chat template"):
        rt.chat([{"role": "user", "content": "hi"}])


def test_kv_cache_type_is_applied(smollm2):
    rt = Runtime(engine="llama.cpp", model=smollm2, plugins={"kv_cache": "llama_cpp:q8_0", "tokenizer": "llama_cpp"})
    loaded, _ = rt.load_generation_model()
    assert loaded.llama.context_params.type_k == 8 and loaded.llama.context_params.type_v == 8
    assert len(rt.generate(PROMPT, max_tokens=8, temperature=0).token_ids) == 8
    rt.close()


def test_prefix_is_reused_and_rollback_is_exact(rt_ref, raw_llama):
    """A prompt that shares a prefix with what the context holds evaluates only the rest (llama.cpp's own
    counters say so) and generates what a fresh context generates; Session.truncate drops K/V exactly."""
    import numpy as np

    from corert.prefill import common_prefix_len

    loaded, lock = rt_ref.load_generation_model()
    lib, ctx, session, tok = loaded.lib, loaded.llama._ctx.ctx, loaded.session(), loaded.tokenizer

    def evaluated() -> int:  # tokens llama.cpp has decoded in this context: prompt batches + single tokens
        perf = lib.llama_perf_context(ctx)
        return perf.n_p_eval + perf.n_eval

    first = "The quick brown fox jumps over the lazy dog"
    second = first + ". Then the fox ran into the forest, and"
    rt_ref.generate(first, max_tokens=8, temperature=0)
    ids = tok.encode(second, parse_special=True)
    shared = common_prefix_len(session.tokens, ids)
    assert shared >= len(tok.encode(first, parse_special=True)) - 1  # the whole first prompt, give or take
    before = evaluated()
    out = rt_ref.generate(second, max_tokens=16, temperature=0)
    # the new part of the prompt in one batch, then one decode per generated token after the first
    assert evaluated() - before == (len(ids) - shared) + out.timings.decode_tokens
    # llama.cpp's KV cache holds exactly the session's tokens: the shared prefix was kept, not rebuilt
    assert session.tokens[:len(ids)] == ids
    assert lib.llama_memory_seq_pos_max(lib.llama_get_memory(ctx), 0) == len(session.tokens) - 1
    # and the reused prefix changed nothing: a fresh context generates the same
    assert list(out.token_ids) == raw_greedy(raw_llama, second, 16)

    ids = tok.encode("The quick brown fox jumps over the lazy dog")
    with lock:
        session.truncate(0)
        fresh = session.eval(ids).copy()
        session.eval(tok.encode(" and then", add_bos=False))
        session.truncate(len(ids) - 1)
        again = session.eval(ids[-1:]).copy()
    assert np.allclose(fresh, again, atol=1e-4)
    assert int(np.argmax(fresh)) == int(np.argmax(again))
