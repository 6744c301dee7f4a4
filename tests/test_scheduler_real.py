"""The work_stealing scheduler under real work: SmolLM2 generation (llama.cpp) and MiniLM embeddings, served
by the Runtime.

No timings are asserted.  The generation is held at a known token by its own engine session (eval_trace.py
wraps the real session's ``eval``), so the tests assert *stopping* (no token evaluated after the cancel or
timeout) and *order* (an embed finishing while a generation holds its lane) as facts, not as likelihoods.
"""
from __future__ import annotations

import logging
import os
import threading

import pytest

from corert import Runtime
from corert.errors import TaskTimeoutError
from corert.models.store import ModelStore
from corert.plugins.scheduler.affinity import process_cpus, thread_cpus
from corert.plugins.scheduler.work_stealing import WorkStealingConfig, WorkStealingScheduler

from eval_trace import EvalTrace

WAIT = 60.0  # bound on an event that must happen; never reached when things work
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # greedy SmolLM2 keeps counting: no early end of text
HOLD_AT = 5  # the generation is held before its 5th evaluation (the prompt, then 3 tokens, then this one)


def _path(name):
    return str(ModelStore(progress=False).resolve(name))  # pulled on first use, never skipped


def _hold(at: int, until):
    """A pause for EvalTrace: the first request's ``at``-th evaluation waits for ``until(token)``."""
    held = threading.Event()

    def pause(token, n):
        if n == at and not held.is_set():
            held.set()
            until(token)

    return held, pause


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_real_generation_stops_at_its_token_and_frees_the_worker(how, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="corert.scheduler")
    # the held evaluation goes on once the caller has its error: the watchdog settled the future first (the
    # token's own deadline also wakes the task, which then raced the watchdog to settle it)
    go_on = threading.Event()
    held, pause = _hold(HOLD_AT, lambda token: go_on.wait(WAIT))
    with Runtime(engine="llama.cpp", model=_path("smollm2-135m-instruct"), n_threads=1,
                 plugins={"scheduler": "work_stealing:balanced", "tokenizer": "llama_cpp"}) as rt:
        rt.generate("Hi", max_tokens=1, temperature=0)  # loads the model
        loaded, _ = rt.load_generation_model()
        trace = EvalTrace(monkeypatch, loaded.session(), pause=pause)
        if how == "cancel":
            stream = rt.stream(COUNTING, max_tokens=400, temperature=0, priority="batch")
            next(stream)
            assert held.wait(WAIT)  # mid-generation, about to evaluate its next token
            stream.close()  # the caller walks away: the task's token is cancelled
            go_on.set()
        else:
            with pytest.raises(TaskTimeoutError):
                rt.generate(COUNTING, max_tokens=400, temperature=0, priority="batch", timeout=2.0)
            go_on.set()
            assert held.is_set(), "the deadline passed before the generation got going"
        # the worker is free again (the task stopped at its next token), so the next task runs
        assert rt.scheduler.submit(len, "abc").result(WAIT) == 3
        (generation,) = trace.requests()
        assert len(trace.evals(generation)) == HOLD_AT  # the held evaluation was the last
        s = rt.scheduler.stats()
    assert s["completed"] == 2 and s["failed"] == 0  # the warm-up generate and len
    if how == "cancel":
        assert s["cancelled"] == 1  # ended by a CancelledError at its token, not by running out
    else:
        # the watchdog failed the future at the deadline; the task itself then stopped at its token
        assert s["timed_out"] == 1 and s["overran"] == 1
        assert "stopped at its token" in caplog.text and "ran to the end" not in caplog.text


@pytest.mark.skipif(len(process_cpus()) < 2, reason="the reserved lane needs 2 cores")
@pytest.mark.parametrize("scheduler,n_threads,embed_overtakes", [
    ("work_stealing:inference", 2, True),
    ("fifo", 1, False),  # one llama.cpp thread: the point is queue order, and 2 threads crawl on a busy box
])
def test_embed_runs_beside_a_batch_generation_only_with_the_reserved_lane(scheduler, n_threads, embed_overtakes,
                                                                         monkeypatch):
    _path("smollm2-135m-instruct"), _path("minilm-l6")
    release = threading.Event()
    held, pause = _hold(HOLD_AT, lambda token: release.wait(WAIT))
    with Runtime(engine="llama.cpp", plugins={"scheduler": scheduler}, n_threads=n_threads) as rt:
        rt.embed(["warm up the encoder"])
        rt.generate("Hi", max_tokens=1, temperature=0)  # load the model outside the observed part
        loaded, _ = rt.load_generation_model()
        trace = EvalTrace(monkeypatch, loaded.session(), pause=pause)
        queued = threading.Event()
        real_submit = rt.scheduler.submit

        def submit(fn, *args, priority="normal", **kwargs):  # the real submit; notes when the embed is queued
            fut = real_submit(fn, *args, priority=priority, **kwargs)
            if priority == "interactive":
                queued.set()
            return fut

        monkeypatch.setattr(rt.scheduler, "submit", submit)
        chunks = rt.stream(COUNTING, max_tokens=40, temperature=0, priority="batch")
        next(chunks)
        assert held.wait(WAIT)  # the generation holds its worker, mid-way
        got = {}

        def embed():
            got["vec"] = rt.embed(["how do I reset my password"], priority="interactive")
            trace.mark("embed done")

        embedder = threading.Thread(target=embed)
        embedder.start()
        assert queued.wait(WAIT)  # the embed is in the scheduler's queue while the generation is held
        if embed_overtakes:
            embedder.join(WAIT)
            assert "vec" in got, "the embed waited for the generation"
        release.set()
        rest = list(chunks)
        embedder.join(WAIT)
    assert got["vec"].embeddings.shape == (1, 384)
    assert rest[-1].completion is not None and rest[-1].completion.usage.completion_tokens == 40
    (generation,) = trace.requests()
    evals = trace.evals(generation)
    done = trace.position("embed done")
    if embed_overtakes:  # served on the reserved lane while the generation was held before its 5th token
        assert evals[HOLD_AT - 1].index < done < evals[HOLD_AT].index
    else:  # FIFO: the embed queued behind the whole generation
        assert done > evals[-1].index


_NUMBA_TWO_LANES = r"""
import threading
import numpy as np
from numba import njit, prange
import numba
import corert.numba_setup  # noqa: F401  (chooses a thread-safe layer)
from corert.plugins.scheduler.work_stealing import WorkStealingConfig, WorkStealingScheduler

@njit(parallel=True, cache=False)
def row_sums(x):
    out = np.empty(x.shape[0])
    for i in prange(x.shape[0]):
        out[i] = x[i].sum()
    return out

x = np.arange(200_000, dtype=np.float64).reshape(1000, 200)
row_sums(x)
both = threading.Barrier(2)

def job():
    both.wait()  # both lanes enter numba's parallel region together
    return [float(row_sums(x).sum()) for _ in range(50)]

sched = WorkStealingScheduler(WorkStealingConfig(preset="batch", cpus=(0, 1), pin=False))
a, b = sched.submit(job), sched.submit(job)
ra, rb = a.result(60), b.result(60)
sched.shutdown()
assert ra == rb == [float(x.sum())] * 50
print(numba.threading_layer())
"""


def test_two_lanes_in_numba_parallel_code_at_once_do_not_abort():
    # numba's workqueue layer aborts the process when two threads enter it at once; in a subprocess, so an
    # abort fails this test instead of killing the run
    import numba  # noqa: F401
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _NUMBA_TWO_LANES], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() in ("omp", "tbb")


def _thread_ids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


@pytest.mark.skipif(len(process_cpus()) < 2 or not os.path.isdir("/proc/self/task"),
                    reason="needs 2 cores and Linux /proc")
def test_llama_cpp_threads_started_by_a_task_stay_on_its_lane():
    import llama_cpp
    llm = llama_cpp.Llama(_path("smollm2-135m-instruct"), n_ctx=512, n_threads=2, n_threads_batch=2,
                          verbose=False)  # two threads on purpose: llama.cpp must start a helper thread
    sched = WorkStealingScheduler(WorkStealingConfig(preset="inference", n_threads=2))
    try:
        general = next(w for w in sched.stats()["per_worker"] if w["lane"] == "general-0")

        def generate_and_look():
            before = _thread_ids()
            started: dict[int, frozenset[int] | None] = {}
            # few tokens: two threads pinned to one core are slow (their barrier spins), and speed is not
            # what this test is about
            for _ in llm.create_completion(COUNTING, max_tokens=4, temperature=0, stream=True):
                for tid in _thread_ids() - before:  # llama.cpp's (OpenMP) helpers, alive mid-generation
                    started.setdefault(tid, thread_cpus(tid))
            return started

        started = sched.submit(generate_and_look, priority="batch").result(3 * WAIT)  # batch: general lane only
        assert started, "llama.cpp started no helper thread"
        assert all(cpus == frozenset(general["cpus"]) for cpus in started.values()), started
    finally:
        sched.shutdown()
        llm.close()
