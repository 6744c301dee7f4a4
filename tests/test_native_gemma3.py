"""gemma3 on the native engine (gemma3-270m, Q4_K_M: Q5_0, Q8_0, Q4_K, Q6_K and F32 tensors): exactness
against the float64 reference of test_native_engine, its sliding window, paged q8 K/V, batch invariance, and
agreement with llama.cpp on the same file.  One loaded model for the module."""
from __future__ import annotations

import attrs
import numpy as np
import pytest

from corert import RuntimeConfig
from corert.engines.native.plugin import NativeEngine
from corert.plugins.kv_cache.paged.plugin import PagedKV
from corert.plugins.kv_cache.paged.config import PagedConfig
from corert.plugins.tokenizer.llama_cpp import LlamaCppTokenizer

from test_native_engine import BUDGET, TEXT, _kld, _load, reference_logits


@pytest.fixture(scope="module")
def model(gemma):
    m = _load(gemma, n_ctx=128, n_seqs=2)
    yield m
    m.close()


def _ids(model, n: int) -> list[int]:
    return model.tokenizer.encode(TEXT)[:n]


def test_config_follows_the_gguf(model):
    cfg = model.transformer.cfg
    assert (cfg.arch, cfg.window, cfg.rope_base, cfg.rope_base_local) == ("gemma3", 512, 1e6, 1e4)
    assert cfg.local_layers == tuple(i % 6 < 5 for i in range(18))  # every 6th layer global
    assert cfg.attn_scale == pytest.approx(1 / 16) and cfg.softcap == 0.0


@pytest.mark.slow
def test_matches_f64_reference_with_a_short_window(model, gemma):
    """A window of 5 over 14 tokens, so the local layers' masking and RoPE base are exercised (the file's
    512 would cover the whole prompt).  Every tensor is kept exactly (Q6_K in the q6 layout): only f32
    rounding separates us from float64 (KL ~3e-12; with Q6_K requantized to 8 bits it was 1.2e-3)."""
    s = model.session()
    s.truncate(0)
    cfg = model.transformer.cfg
    model.transformer.cfg = attrs.evolve(cfg, window=5)
    try:
        ids = _ids(model, 14)
        got = s.eval(ids, all_logits=True)
    finally:
        model.transformer.cfg = cfg
        s.truncate(0)
    ref = reference_logits(gemma, ids, window=5)
    assert _kld(ref, got).max() < 1e-8
    assert np.array_equal(got.argmax(-1), ref.argmax(-1))


def test_batched_logits_identical_to_one_by_one(model):
    s = model.session()
    s.truncate(0)
    ids = _ids(model, 10)
    whole = s.eval(ids, all_logits=True)
    s.truncate(0)
    one = np.stack([s.eval([t]) for t in ids])
    s.truncate(0)
    np.testing.assert_array_equal(whole, one)


@pytest.mark.slow
def test_paged_q8_within_window_matches_contiguous(model, gemma):
    """paged:q8 K/V (calibrated at load, 8-bit pages) with the same short window: next-token distributions
    stay close to the contiguous f32 store's."""
    cfg = model.transformer.cfg
    paged = NativeEngine("avx2").load(gemma, tokenizer=model.tokenizer, kv_cache=PagedKV(PagedConfig(dtype="q8")),
                                      n_ctx=128, threads=BUDGET, config=RuntimeConfig(n_seqs=1))
    try:
        ids = _ids(model, 24)
        outs = []
        for m in (model, paged):
            m.transformer.cfg = attrs.evolve(cfg, window=7)
            s = m.session()
            s.truncate(0)
            outs.append(s.eval(ids, all_logits=True))
            s.truncate(0)
        assert _kld(outs[0], outs[1]).mean() < 5e-3
        assert (outs[0].argmax(-1) == outs[1].argmax(-1)).mean() >= 0.9
    finally:
        model.transformer.cfg = cfg
        paged.close()


@pytest.mark.slow
def test_agrees_with_llama_cpp(model, gemma):
    """The same 48 tokens through llama.cpp.  It rounds activations to 8 bits in its products, and gemma's
    residual stream (embeddings scaled by sqrt(640)) makes that cost more than on llama or qwen2: llama.cpp's
    own KL divergence from the float64 forward is ~0.014 on this text (ours ~3e-12), so the two engines sit
    that far apart."""
    from corert.llama_lib import llama_cpp

    ids = _ids(model, 48)
    llm = llama_cpp().Llama(model_path=gemma, n_ctx=64, n_threads=2, verbose=False, logits_all=True)
    try:
        llm.eval(ids)
        ref = np.array(llm.scores[:len(ids)])
    finally:
        llm.close()
    s = model.session()
    s.truncate(0)
    got = s.eval(ids, all_logits=True)
    s.truncate(0)
    assert _kld(ref, got).mean() <= 0.02
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.9


@pytest.mark.slow
def test_speculative_and_continuous_batching_on_paged_q8(gemma, monkeypatch):
    """paged:q8 with a window of 8 (so generation runs past it): greedy output is the same alone, in
    concurrent requests sharing forwards, and drafted by speculative:lookup (verified in batches)."""
    from corert import Runtime
    from concurrent_requests import hold_first_step_until_joined, run_concurrently

    prompts = ["Repeat: one two three four, one two three four, one two three four,",
               "The capital of France is", "def fibonacci(n):"]
    common = dict(model=gemma, engine="native", n_ctx=256, plugins={"tokenizer": "llama_cpp", "kv_cache": "paged:q8"})
    batched = Runtime(**common, n_seqs=3)
    spec = Runtime(**{**common, "plugins": {**common["plugins"], "speculative": "speculative:lookup"}})
    try:
        for rt in (batched, spec):
            t = rt.load_generation_model()[0].transformer
            t.cfg = attrs.evolve(t.cfg, window=8)
        alone = [batched.generate(p, max_tokens=24, temperature=0).token_ids for p in prompts]
        service = batched.load_generation_model()[0].batch_service()
        hold_first_step_until_joined(monkeypatch, service, len(prompts))
        together, errors = run_concurrently(lambda p: batched.generate(p, max_tokens=24, temperature=0), prompts)
        assert errors == [None] * len(prompts)
        assert [c.token_ids for c in together] == alone
        drafted = [spec.generate(p, max_tokens=24, temperature=0) for p in prompts]
        assert [c.token_ids for c in drafted] == alone
        assert sum(c.decoder_stats["drafted"] for c in drafted) > 0
    finally:
        batched.close()
        spec.close()
