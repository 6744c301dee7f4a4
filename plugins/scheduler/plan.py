"""How a preset divides the cores into lanes, and the thread budget that follows.

A lane is one worker thread pinned to its own cores.  It runs one task at a time, and a task drives one
pool at a time (a llama.cpp decode, a numba kernel or an onnxruntime run, never two at once), so the
pools a lane may use are *alternatives* on its cores, not a sum.  The rule this module enforces:

    sum over lanes of (the largest pool that may run on the lane)  <=  cores owned by the scheduler

so even when every lane is busy at once no core gets two busy threads from us.  Layouts (C = cores):

    inference  one lane of 1 core that runs ONLY interactive work (short embeds, classifications, short
               generates), and one general lane with the other C-1 cores for everything: llama.cpp and
               numba get C-1 threads, onnxruntime 1.  An interactive request never waits behind a batch
               generation, which costs batch throughput the reserved core.
    balanced   the default.  Below 4 cores one lane with every core (a single generation runs at full
               speed; priorities order the queue, nothing is reserved).  From 4 cores, max(2, C // 4)
               lanes splitting the cores; batch work may occupy all lanes but one, so interactive and
               normal work finds a free lane soon.
    batch      C lanes of one core each: many requests at once, one thread each (no cross-thread barrier
               per layer, which on small models costs more than a second thread gains).  Priorities still
               order the queue, but nothing is reserved.

onnxruntime's intra-op pool is fixed when a session is created and the session may run on any lane, so
its size is the narrowest lane's; inter-op is 1 (sequential execution) and spinning is off (an idle
spinning pool would burn the core a generation lane is using).  With a single core every preset collapses
to one lane with one thread.
"""
from __future__ import annotations

from typing import Sequence

import attrs

from corert.errors import ConfigError
from corert.interfaces import PRIORITIES, ThreadBudget

PRESETS = ("inference", "balanced", "batch")


@attrs.frozen
class Lane:
    """One worker: the cpus it is pinned to and the priorities it takes."""

    name: str
    cpus: tuple[int, ...]
    priorities: tuple[str, ...] = PRIORITIES

    @property
    def threads(self) -> int:
        return len(self.cpus)


@attrs.frozen
class ThreadPlan:
    preset: str
    cpus: tuple[int, ...]          # every cpu the scheduler owns
    lanes: tuple[Lane, ...]
    batch_cap: int                 # lanes that may run batch tasks at the same time
    budget: ThreadBudget           # what a pool created once (outside any lane) may use

    def lane_budget(self, lane: Lane) -> ThreadBudget:
        """The budget of work running on ``lane``: engines that can resize per call (llama.cpp's
        set_n_threads, numba's thread-local set_num_threads) use this inside a task."""
        n = lane.threads
        return attrs.evolve(self.budget, cores=n, llama_threads=n, llama_batch_threads=n, numba_threads=n,
                            ort_intra_op=min(self.budget.ort_intra_op, n))

    def concurrent_threads(self) -> int:
        """Worst case threads busy at once: every lane running its largest pool."""
        total = 0
        for lane in self.lanes:
            b = self.lane_budget(lane)
            total += max(b.llama_threads, b.llama_batch_threads, b.numba_threads,
                         b.ort_intra_op * b.ort_inter_op)
        return total

    def check(self) -> None:
        """Raise ConfigError if the plan could put more busy threads than cores on the machine."""
        seen: set[int] = set()
        for lane in self.lanes:
            if not lane.cpus:
                raise ConfigError(f"lane {lane.name} has no cpu")
            if seen & set(lane.cpus):
                raise ConfigError(f"lane {lane.name} shares cpus {sorted(seen & set(lane.cpus))} with another")
            seen |= set(lane.cpus)
        if not seen <= set(self.cpus):
            raise ConfigError(f"lanes use cpus {sorted(seen - set(self.cpus))} the scheduler does not own")
        if self.concurrent_threads() > len(self.cpus):
            raise ConfigError(f"{self.preset}: {self.concurrent_threads()} threads could run at once on "
                              f"{len(self.cpus)} cores")
        b = self.budget
        widest = max(lane.threads for lane in self.lanes)
        if max(b.llama_threads, b.llama_batch_threads, b.numba_threads) > widest or b.ort_intra_op > min(
                lane.threads for lane in self.lanes):
            raise ConfigError(f"{self.preset}: the global budget {b} does not fit its lanes")


def _split(cpus: Sequence[int], parts: int) -> list[tuple[int, ...]]:
    """``parts`` contiguous groups, sizes differing by at most one (the first groups get the extra)."""
    size, extra = divmod(len(cpus), parts)
    out, start = [], 0
    for i in range(parts):
        n = size + (1 if i < extra else 0)
        out.append(tuple(cpus[start:start + n]))
        start += n
    return out


def make_plan(preset: str, cpus: Sequence[int]) -> ThreadPlan:
    if preset not in PRESETS:
        raise ConfigError(f"unknown scheduler preset {preset!r}; use one of {', '.join(PRESETS)}")
    cpus = tuple(cpus)
    if not cpus:
        raise ConfigError("the scheduler needs at least one cpu")
    n = len(cpus)
    lanes: list[Lane]
    if n == 1:
        lanes = [Lane("general-0", cpus)]
        batch_cap = 1
    elif preset == "inference":
        lanes = [Lane("general-0", cpus[:-1]), Lane("interactive", cpus[-1:], ("interactive",))]
        batch_cap = 1
    elif preset == "balanced" and n < 4:
        lanes = [Lane("general-0", cpus)]
        batch_cap = 1
    elif preset == "balanced":
        parts = max(2, n // 4)
        lanes = [Lane(f"general-{i}", g) for i, g in enumerate(_split(cpus, parts))]
        batch_cap = parts - 1
    else:  # batch
        lanes = [Lane(f"general-{i}", (c,)) for i, c in enumerate(cpus)]
        batch_cap = n
    general = [lane for lane in lanes if "batch" in lane.priorities]
    gen_threads = min(lane.threads for lane in general)
    budget = ThreadBudget(cores=n, llama_threads=gen_threads, llama_batch_threads=gen_threads,
                          ort_intra_op=min(lane.threads for lane in lanes), ort_inter_op=1, ort_spinning=False,
                          numba_threads=gen_threads)
    plan = ThreadPlan(preset, cpus, tuple(lanes), batch_cap, budget)
    plan.check()
    return plan
