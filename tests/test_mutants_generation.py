"""The generation loop (corert/generation.py) on SmolLM2 through llama.cpp: what it keeps, emits and counts.

Written to kill mutmut's mutants of the loop (scripts/mutation.sh generation): each test drives
``generation.generate`` with the Runtime's own loaded model and decoder, and checks one rule of the loop
against the model's own greedy output (computed once per module), not against constants of its own.

Under mutmut each mutant's run is a pytest run in a process forked from one that already ran this module
(mutmut's stats and clean runs), so the Runtime and the clean reference are kept at module level there: built
once by the clean code, inherited by every mutant's run (a mutant then never computes its own reference, and
no run loads the model again).  Outside mutmut the module fixtures build and close their own.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from corert import Runtime, generation
from corert.cancel import CancelToken, set_current
from corert.errors import InputError, TaskTimeoutError
from corert.interfaces import SamplingParams
from corert.results import GenerateRequest

MODEL = "smollm2-135m-instruct"
N_CTX = 256  # llama.cpp rounds a context up to a multiple of 256: ask for exactly that
PROMPT = "The three primary colours are"
CHAT = "<|im_start|>user\nSay hello in one word.<|im_end|>\n<|im_start|>assistant\n"


_KEPT: dict[str, object] = {}  # under mutmut only: what forked runs inherit (see the module docstring)


def _under_mutmut() -> bool:
    return "MUTANT_UNDER_TEST" in os.environ  # mutmut sets it in its own process and in every forked run


@pytest.fixture(scope="module")
def rt():
    if _under_mutmut():
        if "rt" not in _KEPT:
            _KEPT["rt"] = Runtime(engine="llama.cpp", model=MODEL, n_ctx=N_CTX, plugins={"speculative": "plain"})
        yield _KEPT["rt"]
        return
    runtime = Runtime(engine="llama.cpp", model=MODEL, n_ctx=N_CTX, plugins={"speculative": "plain"})
    yield runtime
    runtime.close()


class Recording:
    """The model's real decoder, recording whether the loop closed its token iterator and whether the
    model's lock was held while it decoded."""

    def __init__(self, decoder, lock=None):
        self.inner = decoder
        self.lock = lock
        self.closed = 0
        self.held: list[bool] = []
        self.runs_in_batcher = False

    def generate(self, session, ids, params, is_eog):
        self.held.append(self.lock is not None and self.lock.locked())
        try:
            yield from self.inner.generate(session, ids, params, is_eog)
        finally:
            self.closed += 1

    def stats(self):
        return {"recorded": True, **self.inner.stats()}


def run(rt, prompt=PROMPT, *, max_tokens=24, stop=(), cancel=None, clock=(10.0, 10.25), decoder=None,
        logprobs=None, chat=False):
    loaded, lock = rt.load_generation_model(MODEL)
    dec = decoder or Recording(rt.decoder(MODEL), lock)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=logprobs)
    req = GenerateRequest(prompt, MODEL, params, tuple(stop), chat=chat)
    chunks = []
    done = generation.generate(req, generation.Target(loaded, lock, dec), generation.Clock(*clock),
                               {"engine": "llama.cpp"}, emit=chunks.append, cancel=cancel)
    return done, chunks, dec


@pytest.fixture(scope="module")
def free(rt):
    """The greedy run with nothing stopping it early: the reference the other tests cut."""
    if "free" in _KEPT:
        return _KEPT["free"]
    done, chunks, _ = run(rt)
    assert done.finish_reason == "length" and len(done.token_ids) == 24
    if _under_mutmut():
        _KEPT["free"] = done
    return done


def test_text_is_the_detokenized_ids_and_the_chunks_add_up_to_it(rt, free):
    tok = rt.tokenizer(MODEL, "llama.cpp")
    assert free.text == tok.decode(list(free.token_ids))
    done, chunks, dec = run(rt)
    assert done.text == free.text and done.token_ids == free.token_ids
    assert "".join(c.text for c in chunks) == done.text
    assert [i for c in chunks for i in c.token_ids] == list(done.token_ids)
    last = chunks[-1]
    assert last.completion is done and last.finish_reason == "length" and last.text == "" and last.token_ids == ()
    assert all(c.completion is None and c.finish_reason is None for c in chunks[:-1])
    assert dec.closed == 1
    # one sequence per loaded model: the lock is held while the decoder runs, and released at the end
    assert dec.held == [True] and not dec.lock.locked()
    assert done.logprobs is None and all(c.logprobs == () for c in chunks)  # none asked for


class Eager(Recording):
    """The real decoder's tokens handed over as a plain list iterator: the Decoder protocol asks for an
    iterator, and one without ``close()`` is one."""

    def generate(self, session, ids, params, is_eog):
        return iter(list(super().generate(session, ids, params, is_eog)))


def test_a_decoder_may_return_any_iterator(rt, free):
    loaded, lock = rt.load_generation_model(MODEL)
    dec = Eager(rt.decoder(MODEL), lock)
    done, chunks, _ = run(rt, decoder=dec)
    assert done.token_ids == free.token_ids and "".join(c.text for c in chunks) == free.text
    assert dec.held == [True] and dec.closed == 1


def test_usage_and_timings_count_what_ran(rt, free):
    """On a run of its own (``free`` is the clean code's under mutmut, so a mutant never made it)."""
    n_prompt = len(rt.tokenizer(MODEL, "llama.cpp").encode(PROMPT, parse_special=True))
    start = time.perf_counter()
    done, _, _ = run(rt, chat=True)
    wall_ms = (time.perf_counter() - start) * 1e3
    assert done.token_ids == free.token_ids
    assert done.usage.prompt_tokens == n_prompt and done.usage.completion_tokens == 24
    t = done.timings
    assert t.prompt_tokens == n_prompt and t.decode_tokens == 23
    assert t.queue_ms == pytest.approx(250.0)
    assert t.tokenize_ms >= 0 and t.prompt_ms > 0 and t.decode_ms > 0
    # the three phases split this run's own wall time, in milliseconds (no speed is asserted)
    phases = (t.tokenize_ms, t.prompt_ms, t.decode_ms)
    assert all(0 <= p < wall_ms for p in phases) and 0.5 * wall_ms < sum(phases) <= wall_ms
    assert done.id.startswith("cmpl-") and len(done.id) == 29 and done.id != free.id and done.model == MODEL
    assert done.plugins == {"engine": "llama.cpp"} and done.decoder_stats.get("recorded") is True
    assert done.chat is True and free.chat is False  # the request's flag, passed on


def test_a_stop_string_cuts_the_text_before_it_and_ends_the_decoder(rt, free):
    stop = free.text[10:14]
    assert stop and free.text.find(stop) == 10
    done, chunks, dec = run(rt, stop=[stop])
    assert done.finish_reason == "stop" and done.text == free.text[:10]
    # the ids kept run up to and including the token that completed the stop string
    assert 0 < len(done.token_ids) < 24 and done.token_ids == free.token_ids[:len(done.token_ids)]
    tok = rt.tokenizer(MODEL, "llama.cpp")
    assert stop in tok.decode(list(done.token_ids)) and stop not in tok.decode(list(done.token_ids[:-1]))
    assert "".join(c.text for c in chunks) == done.text
    assert done.usage.completion_tokens == len(done.token_ids)
    assert dec.closed == 1


def test_text_held_for_a_stop_string_that_never_completes_is_flushed(rt, free):
    tail = free.text[-3:]
    done, chunks, _ = run(rt, stop=[tail + "\x00never"])
    assert done.finish_reason == "length" and done.text == free.text
    assert "".join(c.text for c in chunks) == free.text
    flushed = chunks[-2]  # the held text, sent after the loop: no token of its own
    assert flushed.text and free.text.endswith(flushed.text) and flushed.token_ids == ()


def test_text_held_for_a_stop_string_is_kept_when_the_model_ends_the_text(rt):
    """An end-of-generation token also finishes with "stop", but it cuts nothing: text held back because it
    could begin a stop string is the end of the text (it was dropped before mutmut found it)."""
    whole, _, _ = run(rt, CHAT, max_tokens=40)
    assert whole.finish_reason == "stop" and len(whole.text) >= 3
    done, chunks, _ = run(rt, CHAT, max_tokens=40, stop=[whole.text[-2:] + "\x00never"])
    assert done.finish_reason == "stop" and done.token_ids == whole.token_ids
    assert done.text == whole.text and "".join(c.text for c in chunks) == whole.text


def test_an_empty_prompt_is_refused_before_any_decode(rt):
    dec = Recording(rt.decoder(MODEL))
    with pytest.raises(InputError, match="^the prompt is empty after tokenization$"):
        run(rt, "", decoder=dec)
    assert dec.closed == 0 and dec.held == []


def test_end_of_generation_is_not_kept(rt):
    done, _, _ = run(rt, CHAT, max_tokens=40)
    tok = rt.tokenizer(MODEL, "llama.cpp")
    assert done.finish_reason == "stop" and len(done.token_ids) < 40
    assert not any(tok.is_eog(i) for i in done.token_ids)
    assert done.timings.decode_tokens == len(done.token_ids)  # the end-of-generation id was yielded too
    assert done.text.strip()


def test_a_cancel_keeps_the_token_in_hand_and_stops(rt, free):
    cancel = threading.Event()
    cancel.set()
    done, chunks, dec = run(rt, cancel=cancel)
    assert done.finish_reason == "cancelled" and done.token_ids == free.token_ids[:1]
    assert chunks[-1].finish_reason == "cancelled" and dec.closed == 1


def test_the_scheduler_token_ends_the_loop_with_its_error(rt):
    token = CancelToken()
    token.cancel("timeout")
    set_current(token)
    loaded, lock = rt.load_generation_model(MODEL)
    dec = Recording(rt.decoder(MODEL), lock)
    try:
        with pytest.raises(TaskTimeoutError) as raised:
            run(rt, decoder=dec)
    finally:
        set_current(None)
    # the loop closed the decoder itself: the error's traceback, still held here, keeps its frames (and the
    # suspended decoder in them) alive, so garbage collection would not have closed it yet
    assert raised.value.__traceback__ is not None and dec.closed == 1 and not lock.locked()


def long_prompt(rt, n_tokens: int) -> str:
    """Real text cut to about ``n_tokens`` tokens."""
    tok = rt.tokenizer(MODEL, "llama.cpp")
    words = " ".join(["The river runs past the mill, and the miller counts the sacks of grain."] * 40)
    return tok.decode(tok.encode(words, parse_special=True)[:n_tokens])


def test_max_tokens_is_clamped_to_the_context(rt):
    loaded, _ = rt.load_generation_model(MODEL)
    assert loaded.n_ctx == N_CTX
    prompt = long_prompt(rt, N_CTX - 12)
    n_prompt = len(rt.tokenizer(MODEL, "llama.cpp").encode(prompt, parse_special=True))
    assert n_prompt < N_CTX
    start = time.perf_counter()
    done, _, _ = run(rt, prompt, max_tokens=10_000)
    wall_ms = (time.perf_counter() - start) * 1e3
    assert done.finish_reason == "length" and len(done.token_ids) == N_CTX - n_prompt
    # most of this run is the long prompt's forward: its share, in milliseconds, is in the split too
    t = done.timings
    assert 0.5 * wall_ms < t.tokenize_ms + t.prompt_ms + t.decode_ms <= wall_ms and t.prompt_tokens == n_prompt


def test_a_prompt_that_fills_the_context_is_refused_before_any_decode(rt):
    tok = rt.tokenizer(MODEL, "llama.cpp")
    ids = tok.encode(long_prompt(rt, N_CTX + 20), parse_special=True)
    prompt = tok.decode(ids[:N_CTX])
    n = len(tok.encode(prompt, parse_special=True))
    assert n >= N_CTX
    dec = Recording(rt.decoder(MODEL))
    with pytest.raises(InputError, match=f"has {n} tokens; the context holds {N_CTX}"):
        run(rt, prompt, decoder=dec)
    assert dec.closed == 0
    # one token shorter than the context still runs, and generates exactly the one token left
    prompt = tok.decode(ids[:N_CTX - 1])
    if len(tok.encode(prompt, parse_special=True)) == N_CTX - 1:
        done, _, _ = run(rt, prompt)
        assert len(done.token_ids) == 1 and done.finish_reason == "length"


def test_logprobs_follow_the_tokens_and_ride_with_the_text_that_completes_them(rt, free):
    """Each kept token's logprob, in order, each sent once, with the first chunk that carries text of its
    token (a stop string that never completes holds text back here, flushed at the end)."""
    tok = rt.tokenizer(MODEL, "llama.cpp")
    done, chunks, _ = run(rt, logprobs=2, stop=[free.text[-3:] + "\x00never"])
    assert done.token_ids == free.token_ids and done.text == free.text  # asking for them changes no choice
    lps = done.logprobs
    assert [lp.token for lp in lps] == list(done.token_ids)
    for lp in lps:
        assert lp.piece == tok.token_bytes(lp.token) and lp.logprob <= 0.0
        assert len(lp.top) == 2 and lp.top[0].token == lp.token  # greedy: the chosen one is the likeliest
        assert lp.top[0].logprob == lp.logprob >= lp.top[1].logprob
        assert all(t.piece == tok.token_bytes(t.token) and t.top == () for t in lp.top)
    assert [lp for c in chunks for lp in c.logprobs] == list(lps)
    assert all(c.logprobs == () for c in chunks if not c.text)


class RecordingBatch:
    """The model's real llama.cpp batch service (its own 2-sequence context, built per test so that no forked
    mutant run inherits a driver thread), recording what the loop asked of it.  llama.cpp verifies no drafts
    in a batch, so the speculation the loop hands over is recorded, not passed on."""

    def __init__(self, loaded):
        from corert.batch_service import BatchService
        from corert.engines.llama_cpp_batching import BatchContext, LlamaBatchRunner

        self.context = BatchContext.create(loaded, 2)
        self.inner = BatchService(LlamaBatchRunner(self.context), 2)
        self.calls: list[tuple] = []

    @property
    def peak_streams(self):
        return self.inner.peak_streams

    def generate(self, ids, params, is_eog, speculation=None):
        self.calls.append((list(ids), params.max_tokens, is_eog, speculation))
        return self.inner.generate(ids, params, is_eog)

    def close(self):
        self.inner.close()
        self.context.close()


class CountingLock:
    def __init__(self):
        self.entered = 0

    def __enter__(self):
        self.entered += 1

    def __exit__(self, *exc):
        return False


def test_a_batched_request_runs_in_the_batch_without_the_model_lock(rt, free):
    loaded, _ = rt.load_generation_model(MODEL)
    tok = rt.tokenizer(MODEL, "llama.cpp")
    batch, lock, drafts = RecordingBatch(loaded), CountingLock(), object()
    dec = Recording(rt.decoder(MODEL))
    req = GenerateRequest(PROMPT, MODEL, SamplingParams(max_tokens=24, temperature=0.0))
    chunks = []
    try:
        done = generation.generate(req, generation.Target(loaded, lock, dec, batch, drafts),
                                   generation.Clock(1.0, 1.5), {"engine": "llama.cpp"}, emit=chunks.append)
    finally:
        batch.close()
    assert done.token_ids == free.token_ids and done.text == free.text  # a batch stream decodes as alone
    assert "".join(c.text for c in chunks) == done.text and chunks[-1].completion is done
    ((ids, max_tokens, is_eog, speculation),) = batch.calls
    assert ids == tok.encode(PROMPT, parse_special=True) and max_tokens == 24 and speculation is drafts
    assert is_eog(tok.eos_id) and not is_eog(done.token_ids[0])  # the tokenizer's own test
    assert lock.entered == 0 and dec.held == [] and dec.closed == 0  # the model's decoder is not used
    assert done.decoder_stats == {"continuous_batching": True, "peak_streams": 1}
    assert done.timings.queue_ms == pytest.approx(500.0) and done.finish_reason == "length"
