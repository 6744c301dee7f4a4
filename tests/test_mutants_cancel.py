"""CancelToken, the never-cancelled token and the per-thread current token: every branch, directly and
through the real FIFO scheduler (the code that sets a task's token).  Written to kill mutmut's mutants of
corert/cancel.py (scripts/mutation.sh).  No model is loaded: the module holds no model logic."""
from __future__ import annotations

import threading
import time

import pytest

from corert.cancel import CancelToken, current_token, set_current
from corert.errors import CancelledError, TaskTimeoutError
from corert.plugins.scheduler.fifo import FifoScheduler


@pytest.fixture(autouse=True)
def _no_token_left_behind():
    yield
    set_current(None)


def test_fresh_token_is_not_cancelled():
    t = CancelToken()
    assert t.deadline is None
    assert t.cancelled is False and t.reason == ""
    t.check()  # does not raise


def test_cancel_sets_reason_once_and_check_raises_cancelled():
    t = CancelToken()
    t.cancel()
    assert t.cancelled is True and t.reason == "cancelled"
    t.cancel("shutdown")  # the first reason stays
    assert t.reason == "cancelled"
    with pytest.raises(CancelledError, match=r"^the task was cancelled \(cancelled\)$") as e:
        t.check()
    assert not isinstance(e.value, TaskTimeoutError)


def test_cancel_with_reason():
    t = CancelToken()
    t.cancel("shutdown")
    assert t.reason == "shutdown"
    with pytest.raises(CancelledError, match=r"\(shutdown\)"):
        t.check()


def test_past_deadline_is_a_timeout():
    t = CancelToken(deadline=time.monotonic() - 1)
    assert t.cancelled is True and t.reason == "timeout"
    with pytest.raises(TaskTimeoutError, match="^the task ran past its timeout and was stopped$"):
        t.check()


def test_future_deadline_is_not_yet_cancelled():
    t = CancelToken(deadline=time.monotonic() + 3600)
    assert t.deadline is not None
    assert t.cancelled is False and t.reason == ""
    t.check()


def test_explicit_cancel_beats_a_passed_deadline():
    t = CancelToken(deadline=time.monotonic() - 1)
    t.cancel("caller")
    assert t.reason == "caller"
    with pytest.raises(CancelledError) as e:
        t.check()
    assert not isinstance(e.value, TaskTimeoutError)


def test_a_cancel_named_timeout_is_reported_as_a_timeout():
    t = CancelToken()
    t.cancel("timeout")  # the watchdog's reason
    with pytest.raises(TaskTimeoutError):
        t.check()


def test_wait_without_deadline_times_out_false():
    t = CancelToken()
    assert t.wait(0.01) is False


def test_wait_returns_true_when_cancelled_from_another_thread():
    t = CancelToken()
    started = threading.Event()

    def cancel_later():
        started.wait()
        t.cancel("other thread")

    th = threading.Thread(target=cancel_later)
    th.start()
    started.set()
    assert t.wait(600) is True  # returns on the cancel, not after 600 s (mutmut's timeout catches a hang)
    th.join()
    assert t.reason == "other thread"


def test_wait_is_bounded_by_the_deadline():
    # The deadline is 50 ms ahead and the caller asks for a day (or for no limit): both return at the deadline.
    for timeout in (86400.0, None):
        t = CancelToken(deadline=time.monotonic() + 0.05)
        start = time.monotonic()
        assert t.wait(timeout) is True
        assert time.monotonic() - start < 30  # far under the day; a hang would be caught by the timeout


def test_wait_on_a_passed_deadline_returns_at_once():
    t = CancelToken(deadline=time.monotonic() - 5)
    start = time.monotonic()
    assert t.wait() is True
    assert time.monotonic() - start < 0.5


def test_wait_short_timeout_before_a_far_deadline():
    t = CancelToken(deadline=time.monotonic() + 3600)
    assert t.wait(0.01) is False


def test_outside_a_scheduler_the_token_is_never_cancelled():
    t = current_token()
    assert isinstance(t, CancelToken)
    assert t is current_token()  # one shared token
    t.cancel("stop everything")
    assert t.cancelled is False and t.reason == ""
    t.check()


def test_set_current_is_per_thread_and_resettable():
    mine = CancelToken()
    set_current(mine)
    assert current_token() is mine
    seen = []
    th = threading.Thread(target=lambda: seen.append(current_token()))
    th.start()
    th.join()
    assert seen[0] is not mine and seen[0].cancelled is False
    set_current(None)
    assert current_token() is not mine
    assert current_token() is seen[0]


def test_fifo_task_sees_its_own_token_and_its_timeout():
    with_sched = FifoScheduler(cores=1)
    try:
        def report():
            tok = current_token()
            return tok.deadline is not None, tok.cancelled

        assert with_sched.submit(report).result(10) == (False, False)

        def late():
            current_token().wait()  # returns at the task's deadline
            current_token().check()

        with pytest.raises(TaskTimeoutError):
            with_sched.submit(late, timeout=0.05).result(30)
        # the worker clears the token: the next task runs with no deadline
        assert with_sched.submit(report).result(10) == (False, False)
    finally:
        with_sched.shutdown()
