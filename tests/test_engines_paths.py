"""Engine and batching paths on real models: llama.cpp prefix reuse, BatchRunner under a KV budget (the
newest stream waits when the pool is full, an idle stream is evicted and recomputed, a stream too big for
the pool fails alone), a prompt longer than one step's prefill rows, timeouts on the native and batched
paths (proven by what stopped, not by the clock), `speculative:draft` with its real draft model, and stop
strings (several, while streaming)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from corert import Runtime
from corert.tools.corpus import corpus_file
from corert.prefill import common_prefix_len, prefill
from corert.engines.native.batching import BatchRunner
from corert.errors import InputError, PluginError, TaskTimeoutError
from corert.interfaces import SamplingParams
from corert.plugins.kv_cache.paged.config import PagedConfig
from corert.plugins.kv_cache.paged.store import page_bytes

TEXT = corpus_file("license-apache2.txt").read_text(encoding="utf-8")
COUNT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # the model keeps counting: a long generation
GREEDY = dict(temperature=0.0)


def _wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    """Poll ``predicate`` (bounded in time and count): used only to wait for a state, never as the proof."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if predicate():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- llama.cpp prefix reuse ------------------------------------------------------------------------------
class EvalSpy:
    """Records how many ids each eval of a session evaluates (a spy on the real session: it calls through)."""

    def __init__(self, session):
        self.sizes: list[int] = []
        real = session.eval

        def eval(ids, all_logits=False):
            self.sizes.append(len(ids))
            return real(ids, all_logits)

        session.eval = eval


@pytest.mark.parametrize("flash_attn", [True, False], ids=["flash-attn", "no-flash-attn"])
def test_llama_cpp_prefix_reuse_gives_what_a_fresh_context_gives(smollm2, flash_attn):
    """Greedy tokens after a reuse equal a fresh context's either way.  The logits are bit-identical only
    without flash attention: ggml's flash-attention kernel rounds differently for a batch of another number of
    rows (the reused prompt's rest against the whole prompt), up to ~0.6 in a logit here."""
    shared = TEXT[:600]
    first, second = shared + "\n\nIn one sentence, this license", shared + "\n\nThe word 'Licensor' means"
    llama = {"llama": {"flash_attn": flash_attn}}
    rt = Runtime(engine="llama.cpp", model=smollm2, **llama)
    fresh = Runtime(engine="llama.cpp", model=smollm2, **llama)
    try:
        out1 = rt.generate(first, max_tokens=12, **GREEDY)
        loaded, _ = rt.load_generation_model()
        session = loaded.session()
        spy = EvalSpy(session)
        cached = list(session.tokens)
        assert cached[:out1.usage.prompt_tokens + 1] == [*rt.tokenize(first, parse_special=True), *out1.token_ids][
            :out1.usage.prompt_tokens + 1]
        out2 = rt.generate(second, max_tokens=12, **GREEDY)
        ids2 = rt.tokenize(second, parse_special=True)
        keep = common_prefix_len(cached, ids2)
        assert keep > 100  # the shared text is reused ...
        assert spy.sizes[0] == len(ids2) - keep  # ... and only the rest of the prompt is evaluated

        # a prompt that is a prefix of what is cached: rolled back, only the last token evaluated again
        spy.sizes.clear()
        out4 = rt.generate(shared, max_tokens=12, **GREEDY)
        assert spy.sizes[0] == 1

        fresh_session = fresh.load_generation_model()[0].session()
        for prompt, got in ((second, out2), (shared, out4)):
            fresh_session.truncate(0)  # every reference from an empty context
            assert got.token_ids == fresh.generate(prompt, max_tokens=12, **GREEDY).token_ids, prompt[-40:]
        if flash_attn:
            return
        # and the logits themselves are bit-identical: the reused K/V are those a fresh batch computes
        ids1 = rt.tokenize(first, parse_special=True)
        session.truncate(0)
        prefill(session, ids1)
        reused = prefill(session, ids2).copy()
        fresh_session.truncate(0)
        np.testing.assert_array_equal(reused, prefill(fresh_session, ids2))

        # a follow-up that extends the previous answer reuses the generated tokens too (their K/V were
        # computed one token at a time, which in llama.cpp differs from a batch in the last bits: see the
        # README, so only the reuse itself is asserted here)
        rt.generate(second, max_tokens=12, **GREEDY)
        follow = second + out2.text + " Also,"
        cached = list(session.tokens)
        spy.sizes.clear()
        rt.generate(follow, max_tokens=4, **GREEDY)
        ids3 = rt.tokenize(follow, parse_special=True)
        keep3 = common_prefix_len(cached, ids3)
        assert keep3 > len(ids2) and spy.sizes[0] == len(ids3) - keep3
    finally:
        rt.close()
        fresh.close()


# -- BatchRunner under a KV budget -----------------------------------------------------------------------
PAGE = 16
PAGE_BYTES = page_bytes(PagedConfig("q8", page_tokens=PAGE), 30, 3, 64)  # SmolLM2-135M: 30 layers, 3 x 64
POOL_PAGES = 14
P24 = SamplingParams(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def tight(smollm2):
    """SmolLM2 on the native engine, loaded by a Runtime, with a paged q8 pool of 14 pages of 16 tokens
    (CORERT_KV_BUDGET) for 3 sequences."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CORERT_KV_BUDGET", str(POOL_PAGES * PAGE_BYTES))
    rt = Runtime(engine="native", model=smollm2, plugins={"kv_cache": "paged:q8"}, n_seqs=3)
    loaded, _ = rt.load_generation_model()
    mp.undo()
    assert loaded.kv.stats()["pages_total"] == POOL_PAGES
    yield loaded
    rt.close()


def _alone(model, ids, params=P24):
    return BatchRunner(model, share_prefixes=False).run([ids], params)[0]


def test_batch_runner_full_pool_waits_evicts_and_recomputes(tight):
    ids = tight.tokenizer.encode(TEXT)
    a, b, c = ids[:40], ids[300:340], ids[600:720]  # 3 + 3 pages of prompt; c: 8 pages of prompt
    r = BatchRunner(tight, prefill_rows=16)  # c's prompt is evaluated 16 rows a step
    sa, sb = r.add(a, P24), r.add(b, P24)
    r.step()
    r.step()
    sc = r.add(c, P24)
    waited = 0  # steps where a and b advanced and c, not evicted, did not: "cache full, retry without it"
    for _ in range(200):
        if not r.active:
            break
        st = r.streams.get(sc)
        before = None if st is None else (st.done_upto, len(st.generated), st.recomputed)
        out = r.step()
        tight.kv.check()
        st = r.streams.get(sc)
        if before and st and (st.done_upto, len(st.generated), st.recomputed) == before \
                and not tight.kv.evicted(st.seq) and len(out) == 2:
            waited += 1
    assert not r.active
    res = {s: r.result(s) for s in (sa, sb, sc)}
    assert all(x.finish == "length" for x in res.values())
    assert waited >= 1
    assert res[sc].recomputed > 0 and tight.kv.stats()["evictions"] >= 1  # c was evicted and recomputed
    assert tight.kv.stats()["pages_used"] == 0
    # each stream produced exactly the tokens it produces alone (references computed after, so the run
    # above found no cached prefix from them)
    assert [res[s].generated for s in (sa, sb, sc)] == [_alone(tight, x) for x in (a, b, c)]


def test_batch_runner_stream_too_big_for_the_pool_fails_alone(tight):
    ids = tight.tokenizer.encode(TEXT)
    a, big = ids[:40], ids[1000:1000 + (POOL_PAGES + 1) * PAGE]  # 15 pages: more than the pool
    r = BatchRunner(tight, prefill_rows=64)
    sa, sbig = r.add(a, P24), r.add(big, P24)
    error = None
    for _ in range(200):
        if not r.active:
            break
        try:
            r.step()
        except InputError as exc:
            error = exc
    assert error is not None and "KV cache full" in str(error)
    assert r.result(sbig).finish.startswith("error: KV cache full")
    assert r.result(sa).finish == "length" and r.result(sa).generated == _alone(tight, a)
    tight.kv.check()
    assert tight.kv.stats()["pages_used"] == 0


# -- the batched path through the Runtime ------------------------------------------------------------------
@pytest.fixture(scope="module")
def batched(smollm2):
    rt = Runtime(engine="native", model=smollm2, plugins={"kv_cache": "paged:q8", "scheduler": "work_stealing"},
                 n_seqs=2)
    yield rt
    rt.close()


def test_batched_prompt_longer_than_one_steps_prefill_rows(batched):
    """A prompt of more than DEFAULT_PREFILL_ROWS (256) tokens is evaluated over several steps, some of
    which sample nothing (such a step used to fail with an IndexError)."""
    prompt = " ".join(TEXT.split()[:300])
    out = batched.generate(prompt, max_tokens=6, **GREEDY)
    assert out.usage.prompt_tokens > 256 and out.decoder_stats["continuous_batching"] is True
    loaded, _ = batched.load_generation_model()
    ids = loaded.tokenizer.encode(prompt, parse_special=True)
    one_step = BatchRunner(loaded, prefill_rows=10_000, share_prefixes=False).run(
        [ids], SamplingParams(max_tokens=6, temperature=0.0))[0]
    assert list(out.token_ids) == [t for t in one_step if not loaded.tokenizer.is_eog(t)]


def test_batched_timeout_stops_the_stream_and_frees_its_pages(batched):
    loaded, _ = batched.load_generation_model()
    expected = batched.generate("Count from one to ten:", max_tokens=8, **GREEDY).token_ids
    service = loaded.batch_service()
    for streaming in (True, False):
        steps0, received = service.runner.steps, 0
        with pytest.raises(TaskTimeoutError):
            if streaming:
                for chunk in batched.stream(COUNT, max_tokens=1500, timeout=1.0, **GREEDY):
                    received += len(chunk.token_ids)
            else:
                batched.generate(COUNT, max_tokens=1500, timeout=1.0, **GREEDY)
        _wait_for(lambda: not service.runner.streams, "the timed-out stream to leave the batch")
        # what stopped: a few forwards past the tokens delivered (the prompt's, the step in flight, and the
        # few the driver may be ahead of a starved request thread), not 1,500
        steps = service.runner.steps - steps0
        assert steps < 1500 // 2 and (not streaming or steps <= received + 10), (steps, received)
        assert service.runner.finished == {}  # nothing kept for a cancelled stream
        stats = loaded.kv.stats()
        assert stats["sequences"] == 0 and stats["pages_used"] == 0
        # the next request is served, with the tokens it always gets
        assert batched.generate("Count from one to ten:", max_tokens=8, **GREEDY).token_ids == expected


def test_native_timeout_stops_generation_and_frees_the_model(smollm2):
    rt = Runtime(engine="native", model=smollm2, plugins={"kv_cache": "paged:q8"})
    try:
        expected = rt.generate("Count from one to ten:", max_tokens=8, **GREEDY).token_ids
        loaded, lock = rt.load_generation_model()
        prompt_len = len(loaded.tokenizer.encode(COUNT, parse_special=True))
        started: list[float] = []  # when each forward of the session began (a spy calling through)
        session = loaded.session()
        real_eval = session.eval
        session.eval = lambda ids, all_logits=False: (started.append(time.monotonic()), real_eval(ids, all_logits))[1]

        # streaming: the caller gets the error at the deadline; the tokens evaluated are those it received
        received = 0
        with pytest.raises(TaskTimeoutError):
            for chunk in rt.stream(COUNT, max_tokens=1500, timeout=1.0, **GREEDY):
                received += len(chunk.token_ids)
        # the generation loop held the model's lock: once it is free, the session shows how far it got
        assert lock.acquire(timeout=120), "the timed-out generation never released the model"
        try:
            evaluated = len(session.tokens) - prompt_len
        finally:
            lock.release()
        assert evaluated <= received + 2, (evaluated, received)  # stopped within a token of the timeout

        # not streaming: nothing is received, so count the forwards that began after the deadline (the
        # loop checks its cancel token before each: none, or one racing the deadline)
        started.clear()
        t0 = time.monotonic()
        with pytest.raises(TaskTimeoutError):
            rt.generate(COUNT, max_tokens=1500, timeout=1.0, **GREEDY)
        assert lock.acquire(timeout=120), "the timed-out generation never released the model"
        lock.release()
        late = [t for t in started if t > t0 + 1.0]
        assert started and len(late) <= 2, (len(started), len(late))
        assert rt.generate("Count from one to ten:", max_tokens=8, **GREEDY).token_ids == expected
    finally:
        rt.close()


def test_a_request_waiting_behind_a_timed_out_one_is_served(batched):
    """Two streams share the batch; one times out, the other runs to its end with its own tokens."""
    alone = batched.generate(TEXT[:200], max_tokens=40, **GREEDY).token_ids
    result = {}

    def other():
        result["ids"] = batched.generate(TEXT[:200], max_tokens=40, **GREEDY).token_ids

    t = threading.Thread(target=other)
    t.start()
    with pytest.raises(TaskTimeoutError):
        batched.generate(COUNT, max_tokens=1500, timeout=0.5, **GREEDY)
    t.join(timeout=300)
    assert not t.is_alive() and result["ids"] == alone


# -- speculative:draft -------------------------------------------------------------------------------------
def test_draft_model_that_is_the_target_is_a_plugin_error(smollm2):
    """The same model as target and draft shares one session and one lock: it used to wait on itself forever."""
    for draft in (smollm2, "smollm2-135m-instruct"):  # by path or by name, the same loaded model
        rt = Runtime(engine="llama.cpp", model="smollm2-135m-instruct", draft_model=draft,
                     plugins={"speculative": "speculative:draft"})
        try:
            with pytest.raises(PluginError, match="is the target model itself"):
                rt.generate("Hello", max_tokens=4, timeout=120, **GREEDY)
        finally:
            rt.close()


GROUNDED = ("<|im_start|>user\nAdd type hints to this function and return the whole function:\n\n"
            "def add(a, b):\n    total = a + b\n    return total\n<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_speculative_draft_with_its_real_draft_model(store):
    """qwen2.5-coder-1.5b-instruct drafted by its registered pairing, the 0.5B (no draft_model given), on
    the native engine, where batched verification is exact: greedy output equals plain decoding.  The 1.5B
    is loaded once: the plain reference is the plain decoding plugin run by the generation loop on the same
    loaded model, after the speculative request."""
    from corert import generation
    from corert.results import GenerateRequest

    target = "qwen2.5-coder-1.5b-instruct"
    store.resolve(target)  # pulled on first use (1.1 GB)
    spec = Runtime(engine="native", model=target, n_ctx=512,
                   plugins={"tokenizer": "llama_cpp", "speculative": "speculative:draft"}, draft_model=None)
    try:
        got = spec.generate(GROUNDED, max_tokens=24, **GREEDY)
        assert spec.config.draft_model is None
        assert any(k.path.endswith("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") for k in spec._loaded)
        loaded, lock = spec.load_generation_model(target)
        plain = spec.host.create(spec.host.resolve("speculative", "plain"), config=spec.config, context=None)
        req = GenerateRequest(GROUNDED, target, SamplingParams(max_tokens=24, **GREEDY))
        want = generation.generate(req, generation.Target(loaded, lock, plain), generation.Clock(0.0, 0.0),
                                   {"engine": "native"})
    finally:
        spec.close()
    assert "generated" in want.decoder_stats and "drafted" not in want.decoder_stats  # plain made it
    assert got.token_ids == want.token_ids
    st = got.decoder_stats
    assert st["drafted"] > 0 and 0 < st["accepted"] <= st["drafted"] and st["spec_steps"] > 0
    assert st["steps"] < len(got.token_ids)  # accepted drafts: fewer target steps than tokens


# -- stop strings ------------------------------------------------------------------------------------------
PROMPT = "The capital of France is"


def _streamed(rt, **kw):
    chunks = list(rt.stream(PROMPT, max_tokens=32, **GREEDY, **kw))
    return "".join(c.text for c in chunks), chunks


def test_several_stop_strings_and_streaming(runtime):
    whole = runtime.generate(PROMPT, max_tokens=32, **GREEDY)
    text = whole.text
    words = text.split()
    assert len(words) >= 6
    # a stop string that starts inside one token and ends inside another
    pos = text.find(words[3])
    span = text[pos + 1:pos + len(words[3]) + 3]
    later = words[5]
    early = words[1]
    assert len(runtime.tokenize(span, add_bos=False)) >= 2
    for stops in ([span], [later, span], ["never here", span, later], [span, early], [early, span]):
        # several: the earliest match in the text wins, whatever the order given
        cut = min(text.find(s) for s in stops if s in text)
        out = runtime.generate(PROMPT, max_tokens=32, stop=stops, **GREEDY)
        assert out.text == text[:cut] and out.finish_reason == "stop", stops
        streamed, chunks = _streamed(runtime, stop=stops)
        assert streamed == text[:cut] and chunks[-1].finish_reason == "stop", stops
        # no chunk ever carried text past the cut, even for a moment
        assert all(text[:cut].startswith("".join(c.text for c in chunks[:i + 1])) for i in range(len(chunks)))
    # a stop string that starts like the output but then differs is held back, then released whole
    near = text[:text.find(words[2]) + len(words[2])] + "XYZ"
    out = runtime.generate(PROMPT, max_tokens=32, stop=[near], **GREEDY)
    assert out.text == text and out.finish_reason == whole.finish_reason
    streamed, chunks = _streamed(runtime, stop=[near])
    assert streamed == text and chunks[-1].completion.text == text
    # a stop string at the very start: nothing is emitted
    out = runtime.generate(PROMPT, max_tokens=32, stop=[text[:3]], **GREEDY)
    assert out.text == "" and out.finish_reason == "stop"
