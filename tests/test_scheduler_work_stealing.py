"""The work_stealing scheduler: stealing, priorities, lanes, cancellation, timeouts, back-pressure, affinity.

These tests drive the scheduler with tasks that block on events, so every interleaving they rely on is
forced, not hoped for; no test sleeps to let something happen.  The real-model behaviour (a generation that
stops at its cancel token) is in test_scheduler_real.py.
"""
from __future__ import annotations

import concurrent.futures
import gc
import os
import threading
import weakref

import pytest

from corert.errors import CancelledError, ConfigError, PluginError, QueueFullError, TaskTimeoutError
from corert.plugins.scheduler.affinity import process_cpus, thread_cpus
from corert.cancel import current_token
from corert.plugins.scheduler.work_stealing import WorkStealingConfig, WorkStealingScheduler

WAIT = 10.0  # generous upper bound for an event that must happen; never reached when things work
two_cores = pytest.mark.skipif(len(process_cpus()) < 2, reason="needs 2 cores")


def make(preset="balanced", **kw) -> WorkStealingScheduler:
    return WorkStealingScheduler(WorkStealingConfig(preset=preset, **kw))


@pytest.fixture
def sched_factory():
    made = []

    def factory(*a, **kw):
        s = make(*a, **kw)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.shutdown(wait=True, cancel_pending=True)


class Payload:
    """Stands for what a task holds (a prompt, a KV cache, arrays): must be freed once the task is gone."""


def gate(sched, priority="batch"):
    """Occupy a worker until the returned event is set; returns (started, release, future)."""
    started, release = threading.Event(), threading.Event()

    def hold():
        started.set()
        assert release.wait(WAIT)
        return "held"

    fut = sched.submit(hold, priority=priority)
    assert started.wait(WAIT)
    return started, release, fut


# -- stealing --------------------------------------------------------------------------------------------
@two_cores
def test_idle_worker_steals_subtasks_and_counts_them(sched_factory):
    sched = sched_factory("batch", n_threads=2)  # two single-core lanes
    children_done = threading.Event()
    ran_on: list[int] = []
    lock = threading.Lock()
    n_children = 4

    def child():
        with lock:
            ran_on.append(threading.get_native_id())
            if len(ran_on) == n_children:
                children_done.set()

    def parent():
        # sub-tasks land in the parent's own deque; the parent stays busy until they are done, so only the
        # other worker can run them: by stealing
        for _ in range(n_children):
            sched.submit(child, priority="normal")
        assert children_done.wait(WAIT)
        return threading.get_native_id()

    parent_id = sched.submit(parent).result(WAIT)
    stats = sched.stats()
    assert len(ran_on) == n_children and parent_id not in ran_on
    # (the parent itself may be stolen too: both workers were idle when it was queued)
    thief = next(w for w in stats["per_worker"] if w["native_id"] != parent_id)
    assert thief["steals"] >= n_children
    assert stats["steals"] == sum(w["steals"] for w in stats["per_worker"]) >= n_children
    assert stats["completed"] == n_children + 1


def test_waiting_on_a_queued_subtask_runs_it_instead_of_deadlocking(sched_factory):
    sched = sched_factory("balanced", n_threads=1)  # one worker: a blocking wait would deadlock

    def parent():
        me = threading.get_native_id()
        return sched.submit(lambda: threading.get_native_id() == me).result(WAIT)

    assert sched.submit(parent).result(WAIT) is True


# -- priorities ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset,n", [("balanced", 1), pytest.param("batch", 2, marks=two_cores)])
def test_priority_order_holds_under_load(sched_factory, preset, n):
    """Nine tasks queue, worst priority first, while every worker is busy.  One worker is then freed and
    runs them all (with two workers the other stays held, so the order recorded inside the tasks is the order
    they were taken, not a race between two workers): every interactive task before any normal one, normal
    before batch, taking from the held worker's deque too."""
    sched = sched_factory(preset, n_threads=n)
    gates = [gate(sched, "normal") for _ in range(n)]  # every worker busy
    started: list[str] = []

    def job(label):
        started.append(label)

    futs = []
    for i in range(3):  # interleaved, worst first
        for prio in ("batch", "normal", "interactive"):
            futs.append(sched.submit(job, f"{prio}{i}", priority=prio))
    gates[0][1].set()  # free one worker
    done, _ = concurrent.futures.wait(futs, timeout=WAIT)
    assert len(done) == len(futs)
    stats = sched.stats()
    for _, release, _ in gates[1:]:
        release.set()
    ranks = [("interactive", "normal", "batch").index(label.rstrip("0123456789")) for label in started]
    assert ranks == sorted(ranks), started  # every interactive started before any normal, normal before batch
    if n == 1:  # one worker: first-in first-out within a priority too
        assert started == [f"{p}{i}" for p in ("interactive", "normal", "batch") for i in range(3)]
    else:  # the tasks were spread over both workers' deques: the free one stole the held one's, by priority
        assert stats["steals"] >= 1
    assert stats["queue_wait_ms_by_priority"]["interactive"]["n"] == 3


@two_cores
def test_inference_lane_serves_interactive_while_generation_lane_is_busy(sched_factory):
    sched = sched_factory("inference", n_threads=2)
    _, release, batch = gate(sched, "batch")          # the general lane is busy with bulk work
    normal = sched.submit(lambda: "normal")            # must wait: the reserved lane takes interactive only
    lane_ids = {w["native_id"] for w in sched.stats()["per_worker"] if w["lane"] == "interactive"}
    got = sched.submit(threading.get_native_id, priority="interactive").result(WAIT)
    assert got in lane_ids
    assert not batch.done() and not normal.done()
    release.set()
    assert normal.result(WAIT) == "normal" and batch.result(WAIT) == "held"


def test_balanced_never_lets_batch_work_take_the_last_free_lane(sched_factory):
    # A 4-core layout on unpinned workers: this machine may have fewer cores, the lanes are only labels.
    sched = sched_factory("balanced", cpus=(0, 1, 2, 3), pin=False)
    assert [w["cpus"] for w in sched.stats()["per_worker"]] == [[0, 1], [2, 3]]
    _, release, first = gate(sched, "batch")
    second = sched.submit(lambda: "second batch", priority="batch")
    assert sched.submit(lambda: "urgent", priority="interactive").result(WAIT) == "urgent"
    assert sched.submit(lambda: "normal").result(WAIT) == "normal"
    assert not second.running() and not second.done()  # a lane is free, but it is kept for urgent work
    release.set()
    assert second.result(WAIT) == "second batch" and first.result(WAIT) == "held"


# -- back-pressure ---------------------------------------------------------------------------------------
def test_full_queue_raises_instead_of_growing_and_drops_nothing(sched_factory):
    sched = sched_factory("balanced", n_threads=1, queue_size=3)
    _, release, held = gate(sched)
    ran = []
    futs = [sched.submit(ran.append, i) for i in range(3)]
    with pytest.raises(QueueFullError, match="queue is full"):
        sched.submit(ran.append, 99)
    assert sched.stats()["queued"] == 3 and sched.stats()["rejected"] == 1
    assert futs[0].cancel() is True  # frees its slot at once
    futs.append(sched.submit(ran.append, 3))
    release.set()
    concurrent.futures.wait(futs + [held], timeout=WAIT)
    assert ran == [1, 2, 3]  # everything accepted ran, except the one cancelled; nothing else vanished
    s = sched.stats()
    assert (s["submitted"], s["completed"], s["cancelled"], s["rejected"], s["queued"]) == (5, 4, 1, 1, 0)


# -- cancellation ----------------------------------------------------------------------------------------
def test_cancelling_a_queued_task_never_runs_it(sched_factory):
    sched = sched_factory("balanced", n_threads=1)
    _, release, _ = gate(sched)
    ran = threading.Event()
    payload = Payload()
    held = weakref.ref(payload)
    fut = sched.submit(lambda p: ran.set(), payload)
    del payload
    assert fut.cancel() and fut.cancelled() and fut.token.cancelled
    gc.collect()
    assert held() is None  # the queued task's arguments are freed at once, not when a worker passes by
    release.set()
    assert sched.submit(lambda: 1).result(WAIT) == 1  # the worker went past the cancelled task
    assert not ran.is_set() and sched.stats()["cancelled"] == 1


def test_cancelling_a_running_task_stops_it_at_its_token_and_frees_the_worker(sched_factory):
    sched = sched_factory("balanced", n_threads=1)
    started = threading.Event()

    def long_task():
        token = current_token()
        started.set()
        steps = 0
        while not token.wait(0.001):  # a generate loop checks once per token like this
            steps += 1
        token.check()

    fut = sched.submit(long_task, priority="batch")
    assert started.wait(WAIT)
    assert fut.cancel() is False  # a running future cannot be cancelled outright...
    with pytest.raises(CancelledError):  # ...but it stops at its next check
        fut.result(WAIT)
    assert sched.submit(lambda: "next").result(WAIT) == "next"
    assert sched.stats()["cancelled"] == 1


# -- timeouts --------------------------------------------------------------------------------------------
def test_timeout_while_queued_frees_the_slot_and_never_runs(sched_factory):
    sched = sched_factory("balanced", n_threads=1, queue_size=1)
    _, release, _ = gate(sched)
    ran = threading.Event()
    payload = Payload()
    held = weakref.ref(payload)
    fut = sched.submit(lambda p: ran.set(), payload, timeout=0.05)
    del payload
    assert isinstance(fut.exception(WAIT), TaskTimeoutError)
    assert sched.stats()["queued"] == 0
    gc.collect()
    assert held() is None
    after = sched.submit(lambda: "after")  # the slot is free again (queue_size=1)
    release.set()
    assert after.result(WAIT) == "after"
    assert not ran.is_set()
    assert sched.stats()["timed_out"] == 1


def test_timeout_while_running_settles_the_future_and_stops_the_task(sched_factory):
    sched = sched_factory("balanced", n_threads=1)
    stopped = threading.Event()
    payload = Payload()
    held = weakref.ref(payload)

    def stubborn(p):
        token = current_token()
        token.wait()  # returns when the deadline passes
        stopped.set()
        token.check()

    # long enough for the idle worker to take it first: at 0.05 s a worker woken late on a loaded machine met
    # it past its deadline, still queued, and stubborn never ran
    fut = sched.submit(stubborn, payload, timeout=0.5)
    del payload
    with pytest.raises(TaskTimeoutError):
        fut.result(WAIT)
    assert stopped.wait(WAIT)
    assert sched.submit(lambda: "free").result(WAIT) == "free"  # the worker is free again
    gc.collect()
    assert held() is None
    s = sched.stats()
    assert s["timed_out"] == 1 and s["failed"] == 0 and s["running_cancelled"] == 0


# -- affinity and budgets --------------------------------------------------------------------------------
@two_cores
@pytest.mark.parametrize("preset", ["inference", "batch", "balanced"])
def test_workers_are_pinned_to_their_lane(sched_factory, preset):
    sched = sched_factory(preset, n_threads=2)
    for w in sched.stats()["per_worker"]:
        assert w["affinity"] == "pinned"
        assert thread_cpus(w["native_id"]) == frozenset(w["cpus"])
    inside = sched.submit(lambda: frozenset(os.sched_getaffinity(0)), priority="interactive").result(WAIT)
    assert inside in {frozenset(w["cpus"]) for w in sched.stats()["per_worker"]}


def test_affinity_refused_degrades_to_a_recorded_no_op(sched_factory, monkeypatch):
    # A fake stands in for a container that forbids sched_setaffinity: this machine allows it.
    def refuse(pid, cpus):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    sched = sched_factory("balanced", n_threads=1)
    assert sched.stats()["per_worker"][0]["affinity"].startswith("refused by the OS")
    assert sched.submit(lambda: 7).result(WAIT) == 7


@two_cores
def test_current_budget_is_the_lane_budget_inside_a_task(sched_factory):
    sched = sched_factory("inference", n_threads=2)
    lane = sched.submit(sched.current_budget, priority="interactive").result(WAIT)
    assert lane.llama_threads == lane.numba_threads == lane.ort_intra_op == 1
    assert sched.current_budget() == sched.thread_budget()
    b = sched.thread_budget()
    assert b.llama_threads + b.ort_intra_op <= b.cores == 2 and not b.ort_spinning


# -- errors and lifecycle --------------------------------------------------------------------------------
def test_bad_arguments_get_typed_errors(sched_factory):
    sched = sched_factory("balanced", n_threads=1)
    with pytest.raises(ConfigError, match="unknown priority"):
        sched.submit(print, priority="urgent")
    with pytest.raises(ConfigError, match="timeout"):
        sched.submit(print, timeout=0)
    with pytest.raises(ConfigError, match="n_threads"):
        make("balanced", n_threads=len(process_cpus()) + 1)
    with pytest.raises(ValueError):
        WorkStealingConfig(preset="fastest")


def test_task_errors_reach_the_caller_and_are_counted(sched_factory):
    sched = sched_factory("balanced", n_threads=1)
    with pytest.raises(ZeroDivisionError):
        sched.submit(lambda: 1 / 0).result(WAIT)
    assert sched.stats()["failed"] == 1


def test_shutdown_cancels_pending_and_refuses_new_work():
    sched = make("balanced", n_threads=1)
    _, release, held = gate(sched)
    queued = sched.submit(lambda: None)
    sched.shutdown(wait=False, cancel_pending=True)
    assert queued.cancelled()
    assert held.running() and held.token.cancelled  # asked to stop; it ends when it next looks
    with pytest.raises(PluginError, match="shut down"):
        sched.submit(lambda: None)
    release.set()
    sched.shutdown(wait=True)
    assert held.result(WAIT) == "held"
    assert all(not w["native_id"] or not _alive(w["native_id"]) for w in sched.stats()["per_worker"])


def _alive(native_id: int) -> bool:
    return any(t.native_id == native_id and t.is_alive() for t in threading.enumerate())


def test_queue_wait_percentiles_are_nearest_rank():
    from corert.plugins.scheduler.stats import percentile

    waits = [float(i) for i in range(1, 101)]  # 1..100
    assert percentile(waits, 50) == 50.0 and percentile(waits, 95) == 95.0 and percentile(waits, 100) == 100.0
    assert percentile([], 95) is None and percentile([7.0], 95) == 7.0


def test_stats_count_queue_waits_per_priority_and_busy_time(sched_factory):
    sched = sched_factory("balanced", n_threads=1)
    _, release, held = gate(sched, "batch")
    futs = [sched.submit(lambda: None, priority="interactive") for _ in range(3)]
    release.set()
    concurrent.futures.wait(futs + [held], timeout=WAIT)
    s = sched.stats()
    by = s["queue_wait_ms_by_priority"]
    assert by["interactive"]["n"] == 3 and by["batch"]["n"] == 1 and by["normal"]["n"] == 0
    assert by["interactive"]["p50"] > 0 and s["queue_wait_ms"]["n"] == 4
    worker = s["per_worker"][0]
    assert worker["tasks"] == 4 and worker["busy_s"] > 0
