"""Work-stealing priority scheduler: per-worker deques, three priorities, lanes pinned to cores.

Each worker owns one lane of cores (see :mod:`.plan`) and three deques, one per priority.  A task lands
in the deque of the worker that submitted it (a task spawning sub-tasks keeps them local) or else of the
least loaded worker that takes its priority, preferring an idle one.  A free worker looks, for each
priority from interactive down to batch, first in its own deque and then steals the oldest task of that
priority from another worker, so no queued interactive task waits while a worker picks batch work.  One
lock guards the deques and counters: under the GIL a lock-free deque would buy nothing, and one lock keeps
the bounded-queue count exact.

Priorities order the queue; they cannot preempt a task already running.  So the ``inference`` preset
reserves a one-core lane that runs only interactive work: with every general worker busy on long
generations, an interactive request still starts at once.  Cancellation and timeouts are cooperative for
running tasks (see :mod:`.token`): the caller's future is settled at once and the queue slot freed; the
worker itself is freed when the task next checks its token.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable

import attrs

from corert import Implementation, Mode, hookimpl
from corert.config import SchedulerConfig
from corert.errors import CancelledError, ConfigError, PluginError, QueueFullError, TaskTimeoutError
from corert.interfaces import PRIORITIES, ThreadBudget

from .affinity import pin_current_thread, process_cpus
from .plan import PRESETS, Lane, ThreadPlan, make_plan
from .pools import apply_numba
from .stats import SchedulerStats, summarize
from corert.cancel import CancelToken, current_token, set_current as _set_current

log = logging.getLogger("corert.scheduler")

_RANK = {p: i for i, p in enumerate(PRIORITIES)}  # 0 = most urgent
DEFAULT_QUEUE_SIZE = 1024


@attrs.frozen
class WorkStealingConfig:
    preset: str = attrs.field(default="balanced", validator=attrs.validators.in_(PRESETS))
    n_threads: int | None = None      # cores to use (the first of the affinity mask); None: all of them
    queue_size: int = DEFAULT_QUEUE_SIZE
    pin: bool = True                  # pin workers to their lane's cpus where the OS allows
    #: cpu ids to lay the lanes out on (default: the process's affinity mask).  Unpinned, they are only
    #: labels, which lets a test lay out a machine bigger than the one it runs on.
    cpus: tuple[int, ...] | None = attrs.field(default=None,
                                              converter=attrs.converters.optional(tuple))

    @classmethod
    def from_runtime(cls, preset: str, config: Any = None) -> "WorkStealingConfig":
        """Read ``n_threads`` / ``queue_size`` and the ``scheduler`` table (``pin_threads``, ``cpus``) from the
        Runtime's config (any object, or None: the defaults and the ``CORERT_SCHEDULER_*`` variables)."""
        table = SchedulerConfig.of(config)
        return cls(preset=preset, n_threads=getattr(config, "n_threads", None),
                   queue_size=getattr(config, "queue_size", None) or DEFAULT_QUEUE_SIZE,
                   pin=table.pin_threads, cpus=table.cpus)


@attrs.define(eq=False)
class _Task:
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    priority: str
    token: CancelToken
    submitted: float
    future: "TaskFuture" = attrs.field(default=None)
    home: "_Worker" = attrs.field(default=None)
    queued: bool = False   # in a deque right now


def _release(task: _Task) -> None:
    """Drop a finished or withdrawn task's callable and arguments (the timeout heap may keep its shell
    until the deadline), so what they hold (prompts, arrays, models) is freed now."""
    task.fn, task.args, task.kwargs = None, (), {}


class TaskFuture(Future):
    """A Future whose ``cancel()`` also frees the queue slot, and asks a running task to stop (its token
    is set; ``cancel()`` still returns False then, as for any running Future).  ``token`` is the task's
    cooperative cancel token."""

    def __init__(self, scheduler: "WorkStealingScheduler", task: _Task):
        super().__init__()
        self._scheduler = scheduler
        self._task = task

    @property
    def token(self) -> CancelToken:
        return self._task.token

    def cancel(self) -> bool:
        withdrawn = self._scheduler._withdraw(self._task)
        if withdrawn:
            self._task.token.cancel("cancelled")
            ok = super().cancel()
            if ok:
                self._scheduler._count("cancelled")
                # no worker will see it now: tell wait()/as_completed() waiters, as an executor would
                self.set_running_or_notify_cancel()
            return ok
        if super().cancel():  # taken by a worker but not started: the worker will see it and count it
            self._task.token.cancel("cancelled")
            return True
        if self.running():
            self._task.token.cancel("cancelled")
        return False

    def result(self, timeout: float | None = None) -> Any:
        # A worker waiting on a queued task would block its lane (and with every worker doing so, deadlock):
        # it runs the task itself instead.
        self._scheduler._help(self._task)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._scheduler._help(self._task)
        return super().exception(timeout)


@attrs.define(eq=False)
class _Worker:
    index: int
    lane: Lane
    deques: dict[str, collections.deque] = attrs.field(
        factory=lambda: {p: collections.deque() for p in PRIORITIES})
    thread: threading.Thread | None = None
    native_id: int | None = None
    affinity: str = "not started"
    running: _Task | None = None
    tasks: int = 0
    steals: int = 0
    busy_s: float = 0.0

    def load(self) -> int:
        return sum(len(d) for d in self.deques.values()) + (self.running is not None)


class WorkStealingScheduler:
    name = "work_stealing"

    def __init__(self, config: WorkStealingConfig | None = None):
        self.config = config or WorkStealingConfig()
        cpus = self.config.cpus or process_cpus()
        if self.config.cpus and self.config.pin and not set(cpus) <= set(process_cpus()):
            raise ConfigError(f"cpus {sorted(set(cpus) - set(process_cpus()))} are not in this process's "
                              f"affinity mask {list(process_cpus())}")
        n = self.config.n_threads
        if n is not None:
            if n < 1 or n > len(cpus):
                raise ConfigError(f"n_threads={n}: this process may use {len(cpus)} cores; "
                                  f"choose 1..{len(cpus)}")
            cpus = cpus[:n]
        if self.config.queue_size < 1:
            raise ConfigError(f"queue_size={self.config.queue_size} must be at least 1")
        self.plan: ThreadPlan = make_plan(self.config.preset, cpus)
        self._cond = threading.Condition(threading.Lock())
        self._stats = SchedulerStats()
        self._queued = 0
        self._running_batch = 0
        self._stopping = False
        self._rr = itertools.count()
        self._local = threading.local()
        self._deadlines: list[tuple[float, int, _Task]] = []
        self._seq = itertools.count()
        self._workers = [_Worker(i, lane) for i, lane in enumerate(self.plan.lanes)]
        started = threading.Barrier(len(self._workers) + 1)
        for w in self._workers:
            w.thread = threading.Thread(target=self._work, args=(w, started), daemon=True,
                                        name=f"corert-ws-{w.lane.name}")
            w.thread.start()
        started.wait()  # affinity and native ids are known once the constructor returns
        self._watchdog = threading.Thread(target=self._watch, daemon=True, name="corert-ws-watchdog")
        self._watchdog.start()

    # -- public API -------------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args: Any, priority: str = "normal",
               timeout: float | None = None, **kwargs: Any) -> TaskFuture:
        """Queue ``fn(*args, **kwargs)``.  ``timeout`` counts from now (queue wait included); past it the
        future fails with TaskTimeoutError.  Raises QueueFullError when ``queue_size`` tasks wait."""
        if priority not in _RANK:
            raise ConfigError(f"unknown priority {priority!r}; use one of {', '.join(PRIORITIES)}")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if not callable(fn):
            raise ConfigError(f"submit() needs a callable, not {type(fn).__name__}")
        now = time.monotonic()
        task = _Task(fn, args, kwargs, priority, CancelToken(None if timeout is None else now + timeout), now)
        task.future = TaskFuture(self, task)
        with self._cond:
            if self._stopping:
                raise PluginError("the work_stealing scheduler is shut down; create a new one")
            if self._queued >= self.config.queue_size:
                self._stats.rejected += 1
                raise QueueFullError(f"scheduler queue is full ({self._queued} tasks waiting, "
                                     f"queue_size={self.config.queue_size}); retry later or raise queue_size")
            task.home = self._home_for(priority)
            task.home.deques[priority].append(task)
            task.queued = True
            self._queued += 1
            self._stats.submitted += 1
            if timeout is not None:
                heapq.heappush(self._deadlines, (task.token.deadline, next(self._seq), task))
            self._cond.notify_all()
        return task.future

    def thread_budget(self) -> ThreadBudget:
        """The budget for pools created once, outside any lane (see :mod:`.plan` for the rule)."""
        return self.plan.budget

    def current_budget(self) -> ThreadBudget:
        """Inside a task: the budget of the lane it runs on; elsewhere the global one."""
        worker = getattr(self._local, "worker", None)
        return self.plan.lane_budget(worker.lane) if worker is not None else self.plan.budget

    def stats(self) -> dict[str, Any]:
        with self._cond:
            snap = self._stats.snapshot()
            out = {"scheduler": self.name, "preset": self.plan.preset, "workers": len(self._workers),
                   "queued": self._queued, "running": sum(w.running is not None for w in self._workers),
                   # running although cancelled or past their timeout: they hold their worker until they
                   # next check their token
                   "running_cancelled": sum(w.running is not None and w.running.token.cancelled
                                            for w in self._workers),
                   "per_worker": [{"lane": w.lane.name, "cpus": list(w.lane.cpus),
                                   "priorities": list(w.lane.priorities), "affinity": w.affinity,
                                   "native_id": w.native_id, "tasks": w.tasks, "steals": w.steals,
                                   "busy_s": round(w.busy_s, 6)} for w in self._workers],
                   "budget": attrs.asdict(self.plan.budget)}
        return {**out, **summarize(snap)}

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop taking tasks.  Queued tasks still run unless ``cancel_pending``; running ones are asked to
        stop only when ``cancel_pending``."""
        with self._cond:
            self._stopping = True
            pending = [t for w in self._workers for d in w.deques.values() for t in d] if cancel_pending else []
            if cancel_pending:
                for w in self._workers:
                    if w.running is not None:
                        w.running.token.cancel("shutdown")
            self._cond.notify_all()
        for t in pending:  # withdraws, counts and notifies waiters; one a worker took meanwhile just runs
            t.token.cancel("shutdown")
            t.future.cancel()
        if wait:
            for w in self._workers:
                if w.thread is not threading.current_thread():
                    w.thread.join()
            self._watchdog.join()

    def __enter__(self) -> "WorkStealingScheduler":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(wait=True, cancel_pending=exc[0] is not None)

    # -- placement and taking (under self._cond) --------------------------------------------------------
    def _home_for(self, priority: str) -> _Worker:
        me = getattr(self._local, "worker", None)
        if me is not None and priority in me.lane.priorities:
            return me
        eligible = [w for w in self._workers if priority in w.lane.priorities]
        turn = next(self._rr)
        # least loaded first; on a tie a worker dedicated to this priority, then round robin
        return min(eligible, key=lambda w: (w.load(), len(w.lane.priorities),
                                            (w.index - turn) % len(self._workers)))

    def _take(self, me: _Worker) -> tuple[_Task, bool] | None:
        n = len(self._workers)
        for priority in me.lane.priorities:
            if priority == "batch" and self._running_batch >= self.plan.batch_cap:
                continue
            if me.deques[priority]:
                return me.deques[priority].popleft(), False
            for k in range(1, n):
                victim = self._workers[(me.index + k) % n]
                if victim.deques[priority]:
                    return victim.deques[priority].popleft(), True  # the oldest: keeps the queue roughly FIFO
        return None

    def _withdraw(self, task: _Task, release: bool = True) -> bool:
        """Remove a still-queued task from its deque; True if it was there.  ``release``: it will not run,
        drop what it holds."""
        with self._cond:
            if not task.queued:
                return False
            task.home.deques[task.priority].remove(task)
            task.queued = False
            self._queued -= 1
            self._cond.notify_all()
        if release:
            _release(task)
        return True

    def _count(self, key: str) -> None:
        with self._cond:
            setattr(self._stats, key, getattr(self._stats, key) + 1)

    # -- workers ----------------------------------------------------------------------------------------
    def _work(self, me: _Worker, started: threading.Barrier) -> None:
        try:
            me.native_id = threading.get_native_id()
            me.affinity = pin_current_thread(me.lane.cpus) if self.config.pin else "disabled"
            try:
                apply_numba(me.lane.threads)
            except Exception as exc:  # noqa: BLE001 - numba's own budget is the engine's fallback
                log.warning("could not set numba's thread count on %s: %s", me.lane.name, exc)
            self._local.worker = me
        finally:
            started.wait()  # always: the constructor waits for every worker
        while True:
            with self._cond:
                while True:
                    got = self._take(me)
                    if got is not None:
                        break
                    if self._stopping and self._queued == 0:
                        return
                    self._cond.wait()
                task, stolen = got
                task.queued = False
                self._queued -= 1
                if stolen:
                    self._stats.steals += 1
                    me.steals += 1
                if task.priority == "batch":
                    self._running_batch += 1
                me.running = task
            try:
                self._execute(me, task)
            finally:
                with self._cond:
                    me.running = None
                    if task.priority == "batch":
                        self._running_batch -= 1
                    self._cond.notify_all()

    def _execute(self, me: _Worker, task: _Task) -> None:
        fut = task.future
        try:
            if not fut.set_running_or_notify_cancel():
                self._count("cancelled")
                return
        except RuntimeError:  # settled by the watchdog between being taken and starting
            return
        start = time.monotonic()
        with self._cond:
            self._stats.record_wait(task.priority, start - task.submitted)
        outer = current_token()
        _set_current(task.token)
        result, exc = None, None
        try:
            task.token.check()
            result = task.fn(*task.args, **task.kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            exc = e
        finally:
            _set_current(outer)
        with self._cond:  # accounted before the caller can see the outcome
            me.tasks += 1
            me.busy_s += time.monotonic() - start
        self._settle(fut, task, result, exc)
        _release(task)

    def _settle(self, fut: TaskFuture, task: _Task, result: Any, exc: BaseException | None) -> None:
        if exc is None:
            key = "completed"
        elif isinstance(exc, (CancelledError, TaskTimeoutError)) and task.token.cancelled:
            key = "timed_out" if task.token.reason == "timeout" else "cancelled"
            # a fresh error without the task's traceback: its frames (and what they hold) are freed now
            exc = type(exc)(*exc.args)
        else:
            key = "failed"
        self._count(key)  # before settling, so stats() agree with what the caller just received
        try:
            if exc is None:
                fut.set_result(result)
            else:
                fut.set_exception(exc)
        except InvalidStateError:  # the watchdog (or a cancel) settled it first: the caller has moved on
            with self._cond:
                setattr(self._stats, key, getattr(self._stats, key) - 1)
                self._stats.overran += 1
            late = time.monotonic() - (task.token.deadline or task.submitted)
            stopped = isinstance(exc, (CancelledError, TaskTimeoutError))
            (log.info if stopped else log.warning)(
                "a %s task ended %.3fs after its %s (%s); its outcome was dropped", task.priority, late,
                task.token.reason or "settlement", "stopped at its token" if stopped else "ran to the end")

    def _help(self, task: _Task) -> None:
        """Run ``task`` on the calling worker if it waits for it while it is still queued."""
        me = getattr(self._local, "worker", None)
        if me is None or task.future.done() or not self._withdraw(task, release=False):
            return
        prev, me.running = me.running, task
        try:
            self._execute(me, task)
        finally:
            me.running = prev

    # -- timeouts ---------------------------------------------------------------------------------------
    def _watch(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping and self._queued == 0 and all(w.running is None for w in self._workers):
                        return
                    now = time.monotonic()
                    if self._deadlines and self._deadlines[0][0] <= now:
                        _, _, task = heapq.heappop(self._deadlines)
                        break
                    wait = self._deadlines[0][0] - now if self._deadlines else None
                    self._cond.wait(wait if wait is None else max(wait, 1e-4))
            self._expire(task)

    def _expire(self, task: _Task) -> None:
        if task.future.done():
            return
        queued = self._withdraw(task)
        task.token.cancel("timeout")
        where = "while queued" if queued else "while running"
        self._count("timed_out")
        try:
            task.future.set_exception(TaskTimeoutError(
                f"{task.priority} task exceeded its timeout {where} "
                f"({time.monotonic() - task.submitted:.3f}s since submit)"))
        except InvalidStateError:
            with self._cond:
                self._stats.timed_out -= 1
            return
        if not queued:
            log.warning("%s task passed its timeout while running; it was asked to stop (cancel token)",
                        task.priority)


#: the presets (see plan.py): scheduler=work_stealing:inference
MODES = (
    Mode("inference", priority=5,
         description="low latency: a 1-core lane reserved for interactive work, the rest for generation"),
    Mode("balanced", priority=10,
         description="lanes of ~4 cores (at least 2); batch work never takes the last free lane"),
    Mode("batch", priority=0, description="throughput: one single-threaded lane per core"),
)


def create(variant: str, config: Any = None) -> WorkStealingScheduler:
    return WorkStealingScheduler(WorkStealingConfig.from_runtime(variant, config))


@hookimpl
def register_schedulers(register):
    register(Implementation(area="scheduler", name="work_stealing", factory=create, variants=MODES,
                            priority=10, description="work-stealing priority pool that owns the core budget"))
