"""Continuous batching on the llama.cpp engine (n_seqs > 1): concurrent requests share one llama_decode per
step, each gets the greedy tokens raw llama-cpp-python gives it alone (both with flash attention, as the
model's own context has it), streams join and leave between steps, a cancelled stream's slot is free at once,
a prompt reuses the slot holding its longest prefix, and a bad request or a failed forward harms no one
after it."""
from __future__ import annotations

import time

import pytest

from corert import Runtime
from corert.errors import InputError, ModelError
from corert.interfaces import SamplingParams

from concurrent_requests import hold_first_step_until_joined, run_concurrently
from oracle import raw_greedy

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "Water boils at"]
GREEDY = dict(temperature=0)


@pytest.fixture(scope="module")
def rt(smollm2):
    rt = Runtime(model=smollm2, engine="llama.cpp", n_ctx=512, n_seqs=4, plugins={"tokenizer": "llama_cpp"})
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def service(rt):
    loaded, _ = rt.load_generation_model()
    return loaded.batch_service()


@pytest.fixture(scope="module")
def solo(raw_llama):
    """Each prompt's greedy tokens from raw llama-cpp-python, one sequence, computed once."""
    cache = {}

    def get(prompt: str, n: int) -> list[int]:
        if (prompt, n) not in cache:
            cache[prompt, n] = raw_greedy(raw_llama, prompt, n)
        return cache[prompt, n]
    return get


def test_concurrent_greedy_requests_share_steps_and_equal_solo(rt, service, solo, monkeypatch):
    hold_first_step_until_joined(monkeypatch, service, 4)
    got, errors = run_concurrently(lambda p: rt.generate(p, max_tokens=24, **GREEDY), PROMPTS[:4])
    assert errors == [None] * 4
    assert [list(c.token_ids) for c in got] == [solo(p, 24) for p in PROMPTS[:4]]
    assert all(c.decoder_stats["continuous_batching"] for c in got)
    assert max(c.decoder_stats["peak_streams"] for c in got) == 4  # all four in one llama_decode


def test_a_request_joins_while_others_decode(rt, service, solo):
    first = rt.stream(PROMPTS[0], max_tokens=40, **GREEDY)
    head = [next(first) for _ in range(3)]  # it is decoding now
    steps0 = service.runner.steps
    joined = rt.generate(PROMPTS[2], max_tokens=16, **GREEDY)  # joins the running batch, leaves before it
    rest = list(first)
    assert service.runner.steps - steps0 < 40 + 16  # the two shared steps
    assert list(joined.token_ids) == solo(PROMPTS[2], 16)
    assert list(rest[-1].completion.token_ids) == solo(PROMPTS[0], 40)
    assert "".join(c.text for c in head + rest) == rest[-1].completion.text


def test_cancel_mid_stream_frees_the_slot_for_a_fifth_request(rt, service, solo):
    streams = [rt.stream(p, max_tokens=300, **GREEDY) for p in PROMPTS[:4]]
    for s in streams:
        next(s)  # all four slots decode
    assert len(service.runner.streams) == 4
    streams[1].close()  # the consumer walks away mid-stream
    fifth = rt.generate(PROMPTS[4], max_tokens=12, timeout=300, **GREEDY)  # gets the freed slot
    assert list(fifth.token_ids) == solo(PROMPTS[4], 12)
    for s in streams:
        s.close()
    for _ in range(600):  # bounded: the driver drops the closed streams at its next step
        if not service.runner.streams:
            break
        time.sleep(0.05)
    assert not service.runner.streams and all(slot.stream is None for slot in service.runner.slots)
    assert service.runner.finished == {}  # nothing kept for cancelled streams


def test_prefix_reuse_takes_the_slot_holding_the_prompt_and_evaluates_only_the_rest(rt, service):
    tok = rt.tokenizer()
    a = "Prefix reuse check: a long shared introduction about rivers, lakes and the sea."
    b = "Something else entirely: the rules of chess for beginners."
    runner = service.runner
    rt.generate(a, max_tokens=1, **GREEDY)
    slot_a = next(s for s in runner.slots if s.tokens == tok.encode(a, parse_special=True))
    rt.generate(b, max_tokens=1, **GREEDY)  # another slot: the one holding a's prompt is kept
    assert slot_a.tokens == tok.encode(a, parse_special=True)
    longer = a + " It goes on with more words."
    ids_a, ids_long = tok.encode(a, parse_special=True), tok.encode(longer, parse_special=True)
    assert ids_long[:len(ids_a)] == ids_a
    rows0 = runner.rows
    rt.generate(longer, max_tokens=1, **GREEDY)
    assert runner.rows - rows0 == len(ids_long) - len(ids_a)  # only the new part was evaluated
    assert slot_a.tokens == ids_long


def test_a_new_stream_takes_the_slot_that_keeps_the_live_ones_consecutive(rt, service):
    """llama.cpp cuts a decode into micro-batches of consecutive sequence ids: a hole between live slots
    costs a pass over the weights every step, so a newcomer without a cached prefix fills it.  (The runner
    is driven directly while the service is idle.)"""
    runner, tok = service.runner, rt.tokenizer()
    prompts = [f"Slot placement check number {i}: an unrelated sentence about {w} and nothing else."
               for i, w in enumerate(("kites", "granite", "violins", "tea"))]
    params = SamplingParams(max_tokens=50, temperature=0)
    sids = [runner.add(tok.encode(p), params) for p in prompts[:3]]
    seqs = sorted(runner.streams[s].seq for s in sids)
    assert seqs == list(range(seqs[0], seqs[0] + 3))  # one run
    middle = next(s for s in sids if runner.streams[s].seq == seqs[1])
    runner.cancel(middle)
    late = runner.add(tok.encode(prompts[3]), params)
    assert runner.streams[late].seq == seqs[1]
    for sid in list(runner.streams):
        runner.cancel(sid)
    runner.finished.clear()


def test_a_bad_request_fails_alone_and_a_failed_forward_leaves_the_service_usable(rt, service, solo,
                                                                                  monkeypatch):
    is_eog = rt.tokenizer().is_eog
    bad = service.generate([10 ** 9], SamplingParams(max_tokens=4, temperature=0), is_eog)
    good = rt.stream(PROMPTS[3], max_tokens=20, **GREEDY)
    with pytest.raises(InputError, match="token ids"):
        next(bad)
    assert list(list(good)[-1].completion.token_ids) == solo(PROMPTS[3], 20)

    context = service.runner.context
    real_decode = context.decode
    calls = []

    def decode_failing_once(*args):
        calls.append(1)
        if len(calls) == 2:  # the second step, while the stream decodes
            raise ModelError("llama.cpp failed to evaluate the batch (injected)")
        return real_decode(*args)

    monkeypatch.setattr(context, "decode", decode_failing_once)
    with pytest.raises(ModelError, match="injected"):
        rt.generate(PROMPTS[1], max_tokens=8, **GREEDY)
    assert not service.runner.streams  # the failed stream left, its slot free
    assert list(rt.generate(PROMPTS[1], max_tokens=8, **GREEDY).token_ids) == solo(PROMPTS[1], 8)


def test_forget_empties_the_free_slots_so_a_repeated_prompt_is_evaluated_in_full(rt, service, solo):
    tok, runner = rt.tokenizer(), service.runner
    prompt = "Forget check: a sentence about lighthouses, harbours and the fog that rolls in at dusk."
    ids = tok.encode(prompt, parse_special=True)
    first = rt.generate(prompt, max_tokens=4, **GREEDY)
    assert any(s.tokens[:len(ids)] == ids for s in runner.slots)  # its prefix is cached in a slot
    runner.forget()  # the service is idle: every slot is free
    assert all(not s.tokens for s in runner.slots)
    rows0 = runner.rows
    again = rt.generate(prompt, max_tokens=1, **GREEDY)
    assert runner.rows - rows0 == len(ids)  # no prefix reused: the whole prompt evaluated again
    assert again.token_ids[0] == first.token_ids[0] == solo(prompt, 1)[0]


def test_set_threads_reaches_both_llama_cpp_contexts(rt, service):
    """The loaded model's own context and the batching context take the new thread counts (llama.cpp's
    getters read them back); restored afterwards for the other tests."""
    from corert.interfaces import ThreadBudget
    from corert.llama_lib import llama_cpp

    lib = llama_cpp()
    loaded, _ = rt.load_generation_model()
    contexts = [loaded.llama._ctx.ctx, service.runner.context.ctx.ctx]
    before = [(lib.llama_n_threads(c), lib.llama_n_threads_batch(c)) for c in contexts]
    budget = ThreadBudget(cores=2, llama_threads=1, llama_batch_threads=2, ort_intra_op=1, ort_inter_op=1,
                          ort_spinning=False, numba_threads=1)
    try:
        loaded.set_threads(budget)
        assert [(lib.llama_n_threads(c), lib.llama_n_threads_batch(c)) for c in contexts] == [(1, 2)] * 2
        assert len(rt.generate(PROMPTS[0], max_tokens=4, **GREEDY).token_ids) == 4
    finally:
        for c, (n, nb) in zip(contexts, before):
            lib.llama_set_n_threads(c, n, nb)
