"""The work_stealing scheduler under real work: SmolLM2 generation (llama.cpp) and MiniLM embeddings.

No timings are asserted; the tests assert *order* (an embed finishing while a generation is still emitting
tokens) and *stopping* (a generation ending at its cancel token long before max_tokens).
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from corert.errors import CancelledError, TaskTimeoutError
from corert.models.store import ModelStore
from corert.plugins.scheduler.affinity import process_cpus, thread_cpus
from corert.plugins.scheduler.pools import llama_kwargs
from corert.cancel import current_token
from corert.plugins.scheduler.work_stealing import WorkStealingConfig, WorkStealingScheduler

WAIT = 60.0
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # greedy SmolLM2 keeps counting: no early end of text


def _path(name):
    return str(ModelStore(progress=False).resolve(name))  # pulled on first use, never skipped


@pytest.fixture(scope="module")
def llama():
    import llama_cpp
    sched = WorkStealingScheduler(WorkStealingConfig(preset="batch", n_threads=1))
    llm = llama_cpp.Llama(_path("smollm2-135m-instruct"), n_ctx=1024, verbose=False,
                          **llama_kwargs(sched.thread_budget()))
    sched.shutdown()
    yield llm
    llm.close()


def _generate_checking_token(llm, n_tokens: int, produced: list[int]) -> list[int]:
    """What the Runtime's generate loop does: one token, one look at the cancel token."""
    token = current_token()
    for tok in llm.generate(llm.tokenize(COUNTING.encode()), temp=0.0):
        token.check()
        produced.append(tok)
        if len(produced) >= n_tokens:
            break
    return produced


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_real_generation_stops_at_its_token_and_frees_the_worker(llama, how):
    sched = WorkStealingScheduler(WorkStealingConfig(preset="balanced", n_threads=1))
    try:
        produced: list[int] = []
        fut = sched.submit(_generate_checking_token, llama, 400, produced, priority="batch",
                           timeout=1.0 if how == "timeout" else None)
        if how == "cancel":
            while len(produced) < 5 and not fut.done():  # let it get going, then cancel mid-generation
                threading.Event().wait(0.01)
            assert fut.cancel() is False  # running: cooperative
            expected = CancelledError
        else:
            expected = TaskTimeoutError
        with pytest.raises(expected):
            fut.result(WAIT)
        # the worker is free again (the task stopped at its next token), so the next task runs
        assert sched.submit(len, produced).result(WAIT) == len(produced)
        assert 0 < len(produced) < 400
        s = sched.stats()
        assert s["completed"] == 1 and s["timed_out" if how == "timeout" else "cancelled"] == 1
    finally:
        sched.shutdown()


@pytest.mark.skipif(len(process_cpus()) < 2, reason="the reserved lane needs 2 cores")
@pytest.mark.parametrize("scheduler,n_threads,embed_overtakes", [
    ("work_stealing:inference", 2, True),
    ("fifo", 1, False),  # one llama.cpp thread: the point is queue order, and 2 threads crawl on a busy box
])
def test_embed_runs_beside_a_batch_generation_only_with_the_reserved_lane(scheduler, n_threads, embed_overtakes):
    import corert
    _path("smollm2-135m-instruct"), _path("minilm-l6")
    with corert.Runtime(plugins={"scheduler": scheduler}, n_threads=n_threads) as rt:
        rt.embed(["warm up the encoder"])
        rt.generate("Hi", max_tokens=1, temperature=0)  # load the model outside the measured part
        chunks = rt.stream(COUNTING, max_tokens=80, temperature=0, priority="batch")
        produced_at: list[float] = []
        first = threading.Event()

        def consume():  # stamps each chunk as it arrives (the stream buffers, so stamp here, not later)
            for _ in chunks:
                produced_at.append(time.monotonic())
                first.set()

        consumer = threading.Thread(target=consume)
        consumer.start()
        assert first.wait(WAIT)  # the generation is running now
        vec = rt.embed(["how do I reset my password"], priority="interactive")
        embed_done = time.monotonic()
        consumer.join(WAIT)
        after = sum(t > embed_done for t in produced_at)
        assert vec.embeddings.shape == (1, 384)
        if embed_overtakes:
            assert after > 10, f"the embed waited for the generation ({after} chunks came after it)"
        else:  # FIFO: the embed queued behind the whole generation
            assert after <= 2  # the last chunks may be stamped a moment late by the consumer thread


_NUMBA_TWO_LANES = r"""
import threading
import numpy as np
from numba import njit, prange
import numba
import corert.engines.native.numba_setup  # noqa: F401  (chooses a thread-safe layer)
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
