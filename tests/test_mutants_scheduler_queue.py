"""The work_stealing scheduler's queue: what cancelling a task does in each of its states (queued, taken but
not started, running, finished), and what the queue counts.  Written to kill mutmut's mutants of the queue
functions of corert/plugins/scheduler/work_stealing.py (scripts/mutation.sh).  Tasks block on events, so
every state is forced, never waited for by time."""
from __future__ import annotations

import threading

import pytest

from corert.cancel import current_token
from corert.errors import CancelledError
from corert.plugins.scheduler.work_stealing import WorkStealingConfig, WorkStealingScheduler

WAIT = 10.0  # an upper bound for an event that must happen; never reached when things work


@pytest.fixture
def sched():
    s = WorkStealingScheduler(WorkStealingConfig(preset="balanced", n_threads=1))
    yield s
    s.shutdown(wait=True, cancel_pending=True)


def _hold(sched):
    """Occupy the only worker; returns (release event, its future)."""
    started, release = threading.Event(), threading.Event()

    def hold():
        started.set()
        assert release.wait(WAIT)
        return "held"

    fut = sched.submit(hold)
    assert started.wait(WAIT)
    return release, fut


def test_cancelling_a_queued_task(sched):
    release, held = _hold(sched)
    ran = []
    fut = sched.submit(ran.append, 1)
    assert sched.stats()["queued"] == 1
    assert fut.cancel() is True
    assert fut.cancelled() and fut.token.cancelled and fut.token.reason == "cancelled"
    st = sched.stats()
    assert st["queued"] == 0 and st["cancelled"] == 1
    assert fut.cancel() is True  # again: still cancelled, nothing withdrawn twice, counted once
    assert sched.stats()["cancelled"] == 1
    release.set()
    assert held.result(WAIT) == "held"
    assert sched.submit(lambda: "next").result(WAIT) == "next"
    assert ran == []


def test_cancelling_a_task_taken_but_not_started(sched):
    release, held = _hold(sched)
    fut = sched.submit(lambda: "never")
    # what a worker does when it takes the task: out of the deque, not yet running
    assert sched._withdraw(fut._task, release=False) is True
    assert sched.stats()["queued"] == 0
    assert fut.cancel() is True
    assert fut.cancelled() and fut.token.reason == "cancelled"
    release.set()
    held.result(WAIT)


def test_cancelling_a_running_task_asks_it_to_stop(sched):
    started, stop_seen = threading.Event(), threading.Event()

    def run():
        started.set()
        assert current_token().wait(WAIT)  # returns once cancelled
        stop_seen.set()
        current_token().check()

    fut = sched.submit(run)
    assert started.wait(WAIT)
    assert fut.cancel() is False  # a running Future cannot be cancelled ...
    assert fut.token.cancelled and fut.token.reason == "cancelled"  # ... but it is asked to stop
    assert stop_seen.wait(WAIT)
    with pytest.raises(CancelledError, match=r"\(cancelled\)"):
        fut.result(WAIT)
    assert sched.stats()["cancelled"] == 1


def test_cancelling_a_finished_task_changes_nothing(sched):
    fut = sched.submit(lambda: 42)
    assert fut.result(WAIT) == 42
    assert fut.cancel() is False
    assert not fut.cancelled() and fut.token.cancelled is False and fut.token.reason == ""
    st = sched.stats()
    assert st["completed"] == 1 and st["cancelled"] == 0 and st["queued"] == 0


def test_submit_refusals_say_why(sched):
    from corert.errors import ConfigError, PluginError, QueueFullError

    with pytest.raises(ConfigError, match="^unknown priority 'urgent'; use one of interactive, normal, batch$"):
        sched.submit(print, priority="urgent")
    with pytest.raises(ConfigError, match="^submit\\(\\) needs a callable, not int$"):
        sched.submit(3)
    small = WorkStealingScheduler(WorkStealingConfig(preset="balanced", n_threads=1, queue_size=1))
    try:
        release, held = _hold(small)
        small.submit(print)
        for _ in range(2):
            with pytest.raises(QueueFullError):
                small.submit(print)
        assert small.stats()["rejected"] == 2
        release.set()
        held.result(WAIT)
    finally:
        small.shutdown()
    with pytest.raises(PluginError, match="^the work_stealing scheduler is shut down; create a new one$"):
        small.submit(print)


def _lanes(n_cpus: int) -> WorkStealingScheduler:
    """A machine of ``n_cpus`` laid out unpinned: one single-core lane (worker) per cpu."""
    return WorkStealingScheduler(WorkStealingConfig(preset="batch", cpus=tuple(range(n_cpus)), pin=False))


def test_a_new_task_goes_to_an_idle_worker_not_a_busy_one():
    sched = _lanes(2)
    try:
        release, held = _hold(sched)
        steals = sched.stats()["steals"]
        started = threading.Event()
        second = sched.submit(lambda: started.set() or "second")
        assert started.wait(WAIT) and second.result(WAIT) == "second"
        # placed on the idle worker, which took it from its own deque: nothing was stolen
        assert sched.stats()["steals"] == steals
        release.set()
        held.result(WAIT)
    finally:
        sched.shutdown()


def test_equal_loads_take_turns_in_worker_order():
    sched = _lanes(4)
    try:
        holds = [_hold(sched) for _ in range(4)]  # every worker busy: equal loads
        homes = []
        for _ in range(4):
            fut = sched.submit(print)
            homes.append(fut._task.home.index)
            assert fut.cancel()  # withdrawn: the loads are equal again
        assert sorted(homes) == [0, 1, 2, 3]
        assert all((b - a) % 4 == 1 for a, b in zip(homes, homes[1:]))  # round robin, in index order
        for release, held in holds:
            release.set()
            held.result(WAIT)
    finally:
        sched.shutdown()


def test_a_queued_task_past_its_timeout_fails_while_queued(sched):
    from corert.errors import TaskTimeoutError

    release, held = _hold(sched)
    fut = sched.submit(print, timeout=0.05)
    with pytest.raises(TaskTimeoutError, match="while queued"):
        fut.result(WAIT)
    assert sched.stats()["queued"] == 0
    release.set()
    held.result(WAIT)


def test_unpinned_workers_say_so_and_set_numba_quietly(caplog):
    with caplog.at_level("WARNING", logger="corert.scheduler"):
        sched = _lanes(2)
    try:
        assert [w["affinity"] for w in sched.stats()["per_worker"]] == ["disabled", "disabled"]
        assert "numba" not in caplog.text
    finally:
        sched.shutdown()


def _gate(sched, priority):
    started, release = threading.Event(), threading.Event()

    def hold():
        started.set()
        assert release.wait(WAIT)

    return started, release, sched.submit(hold, priority=priority)


def test_batch_work_never_takes_the_last_free_lane():
    # 12 cpus, balanced: three 4-core lanes and at most two batch tasks at once
    sched = WorkStealingScheduler(WorkStealingConfig(preset="balanced", cpus=tuple(range(12)), pin=False))
    try:
        assert sched.plan.batch_cap == 2 and len(sched.plan.lanes) == 3
        b1, b2 = _gate(sched, "batch"), _gate(sched, "batch")
        assert b1[0].wait(WAIT) and b2[0].wait(WAIT)
        b3 = _gate(sched, "batch")
        # the third lane is free, yet takes no batch work: a normal task runs there at once
        assert sched.submit(lambda: "normal").result(WAIT) == "normal"
        assert not b3[0].is_set()
        b1[1].set()  # one batch task ends: the queued one may start
        assert b3[0].wait(WAIT)
        b4 = _gate(sched, "batch")
        assert sched.submit(lambda: "again").result(WAIT) == "again"
        assert not b4[0].is_set()  # two batch tasks run again: still capped
        for g in (b2, b3, b4):
            g[1].set()
        for g in (b1, b2, b3, b4):
            g[2].result(WAIT)
    finally:
        sched.shutdown()


def test_a_free_worker_steals_from_the_next_worker_first():
    sched = _lanes(3)
    try:
        ids, holds = [], []
        for _ in range(3):
            started, release = threading.Event(), threading.Event()

            def hold(started=started, release=release):
                ids.append(threading.get_native_id())
                started.set()
                assert release.wait(WAIT)

            holds.append((release, sched.submit(hold)))
            assert started.wait(WAIT)
        index_of = {w["native_id"]: i for i, w in enumerate(sched.stats()["per_worker"])}
        order: list[str] = []
        both_ran = threading.Event()

        def record(label):
            order.append(label)
            if len(order) == 2:
                both_ran.set()

        placed: dict[int, str] = {}
        n = 0
        while len(placed) < 2:  # one queued task on each of the workers after worker 0 (others withdrawn)
            n += 1
            label = f"task-{n}"
            fut = sched.submit(record, label)
            home = fut._task.home.index
            if home == 0 or home in placed:
                assert fut.cancel()
            else:
                placed[home] = label
        holds[[index_of[i] for i in ids].index(0)][0].set()  # free worker 0 only
        assert both_ran.wait(WAIT)
        assert order == [placed[1], placed[2]]  # it steals from worker 1 (its next) before worker 2
        for release, held in holds:
            release.set()
            held.result(WAIT)
    finally:
        sched.shutdown()
