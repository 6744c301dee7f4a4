"""Timeouts and cancellation reach the generate loop (through the scheduler's cancel token), free the
model, and harm no later request.

Proven by what stops, never by a wall-clock bound: the engine session's evaluations are traced with the
task that made them (eval_trace.py), so a test counts the tokens a request evaluated after its cancel and
sees that the next request was the very next thing the engine served.
"""
from __future__ import annotations

import threading

import pytest

from corert import Runtime, TaskTimeoutError

from eval_trace import EvalTrace

COUNT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # the model keeps counting: a long generation
NEXT = "Count from one to ten:"
LONG = 1900  # tokens a timed-out or abandoned request would produce if nothing stopped it (~25 s here)


@pytest.fixture(scope="module", params=["fifo", "work_stealing"])
def served(smollm2, request):
    """(runtime, its model's session, what NEXT gives alone) for each scheduler."""
    # one llama.cpp thread: two crawl on a busy box (a team thread off the CPU stalls every barrier), and the
    # timed request's first tokens then outlasted its 5 s deadline (held was never reached)
    rt = Runtime(engine="llama.cpp", model=smollm2, n_ctx=2048, n_threads=1,
                 plugins={"scheduler": request.param, "tokenizer": "llama_cpp"})
    expected = rt.generate(NEXT, max_tokens=12, temperature=0).token_ids  # also loads the model
    loaded, _ = rt.load_generation_model()
    yield rt, loaded.session(), expected
    rt.close()


def _served_next(trace, stopped, following) -> None:
    """The following request's evaluations all come after the stopped one's last: the engine went straight
    from the stopped request (at most the step it was in) to the next."""
    assert trace.evals(following)[0].index > trace.evals(stopped)[-1].index


def test_timeout_stops_a_long_generation_and_frees_the_model(served, monkeypatch):
    rt, session, expected = served
    held = threading.Event()
    armed = threading.Event()  # only the timed request is held: a following one has no deadline to wait for
    armed.set()

    def hold_until_late(token, n):
        # the timed request's 4th evaluation (prompt + 3 tokens) waits for its deadline: the timeout comes
        # mid-generation, with the engine about to evaluate the next token
        if n == 4 and armed.is_set() and not held.is_set():
            held.set()
            token.wait()

    trace = EvalTrace(monkeypatch, session, pause=hold_until_late)
    with pytest.raises(TaskTimeoutError):
        rt.generate(COUNT, max_tokens=LONG, temperature=0, timeout=5.0)
    armed.clear()
    trace.mark("timed out")
    after = rt.generate(NEXT, max_tokens=12, temperature=0)
    assert held.is_set(), "the deadline passed before the generation got going"
    timed, following = trace.requests()
    # no evaluation began once the deadline had passed (the one held across it had begun before)
    late = [e for e in trace.evals(timed) if e.cancelled]
    assert late == [], f"{len(late)} tokens evaluated after the timeout"
    assert trace.after("timed out", timed) == []
    assert len(trace.evals(timed)) == 4
    # the model is free: the next request runs at once and gets what it gets alone
    _served_next(trace, timed, following)
    assert after.token_ids == expected


def test_a_stream_abandoned_by_its_caller_stops(served, monkeypatch):
    rt, session, expected = served
    trace = EvalTrace(monkeypatch, session)
    stream = rt.stream(COUNT, max_tokens=LONG, temperature=0)
    first = next(stream)
    stream.close()  # the caller walks away after one chunk
    trace.mark("closed")
    after = rt.generate(NEXT, max_tokens=12, temperature=0)
    abandoned, following = trace.requests()
    assert first.text and first.finish_reason is None
    # at most the token whose evaluation was starting as the caller left; nothing after it
    assert len(trace.after("closed", abandoned)) <= 1
    assert len(trace.evals(abandoned)) < LONG
    _served_next(trace, abandoned, following)
    assert after.token_ids == expected


def test_a_timed_out_request_leaves_the_batch(smollm2):
    """Continuous batching (native engine, n_seqs > 1): a request whose timeout fires leaves the batch at
    the next step instead of decoding on to its max_tokens beside the next request."""
    rt = Runtime(model=smollm2, engine="native", n_ctx=1024, n_seqs=2,
                 plugins={"tokenizer": "llama_cpp", "kv_cache": "paged:q8"})
    try:
        expected = rt.generate(NEXT, max_tokens=12, temperature=0)
        loaded, _ = rt.load_generation_model()
        runner = loaded.batch_service().runner
        steps: list[tuple[int, ...] | str] = []  # the stream ids in each batched forward, and one mark
        real_step = runner.step

        def traced_step():
            steps.append(tuple(runner.streams))
            return real_step()

        runner.step = traced_step
        with pytest.raises(TaskTimeoutError):
            rt.generate(COUNT, max_tokens=900, temperature=0, timeout=2.0)
        steps.append("timed out")
        after = rt.generate(NEXT, max_tokens=12, temperature=0)
        runner.step = real_step
    finally:
        rt.close()
    at = steps.index("timed out")
    following = set(steps[-1])
    stale = [s for s in steps[at + 1:] if set(s) - following]  # forwards that still decoded the timed-out one
    assert len(stale) <= 1, f"the timed-out stream was decoded in {len(stale)} forwards after its timeout"
    assert all(len(s) == 1 for s in steps[at + 2:]), steps[at:]
    assert after.token_ids == expected.token_ids
