"""GNU OpenMP's spin count (GOMP_SPINCOUNT) of corert's processes, chosen from how busy the CPUs are *now*.

The module's one job is that variable: the choice for this process (:func:`start` / :func:`finish`, called by
corert.numba_setup), the variables that hand a child process a spin instead of letting it choose at its own
start (:func:`handed_spin`: this process's own choice, for an isolated engine worker; :func:`given_spin`: a
sample taken now, for Ray's replicas), and the environment of a process that is not corert's, without our
choice (:func:`child_env`, a benchmark's competitor).

GNU OpenMP's threads spin at each barrier before sleeping, GOMP_SPINCOUNT times; libgomp reads it once, when
it loads (numba's first parallel call).  A token runs ~150 parallel regions with Python between them; a
worker that has gone to sleep costs a wake-up at the next region.  On free cores a long spin keeps it awake
through the gaps: Qwen 1.5B decode at 2 threads, quiet (2026-12-03), 1000 spins 8.0-14.4 tok/s (median 11.7),
300000 (libgomp's default) 15.6.  On busy cores a long spin burns the core a preempted peer needs: smollm2
~115 -> ~2 tok/s (2026-11-27); the 1.5B at load 10-11 0.58-0.64 tok/s with 300000 spins, 2.1 with 1000.

So the choice is made from a sample of the machine taken while numba imports (:func:`start` before the
import, :func:`finish` after it; at least :data:`MIN_WINDOW_S`): the CPU time other processes used in that
window (/proc/stat's busy ticks minus this process's own CPU time) and the share of it in which some task
waited for a CPU (/proc/pressure/cpu's ``total``).  Either one says busy -> the short spin; neither readable
-> the short spin.  PSI's ``avg10`` is not used: it remembers the last 10 s, so a process started right after
another's 2-thread run chose from that run.  The user's settings (OMP_WAIT_POLICY, GOMP_SPINCOUNT) win.
"""
from __future__ import annotations

import os
import time
from typing import Mapping, MutableMapping

import attrs

#: GOMP_SPINCOUNT on free cores (libgomp's own default) and on busy ones or when we cannot tell
SPIN_FREE, SPIN_BUSY = 300000, 1000
#: other processes' CPU use (in CPUs' worth over the window) from which the cores count as busy: our team has
#: a thread per core, so half a core taken already means a preempted thread at most barriers
BUSY_CPUS = 0.5
#: % of the window in which some task waited for a CPU (PSI "some") from which the cores count as busy
BUSY_PRESSURE = 10.0
#: the shortest window: /proc/stat counts in 10 ms ticks, so one stray tick over 50 ms is 0.2 CPUs
MIN_WINDOW_S = 0.05

#: the spin count corert chose, so a child process (which inherits it) chooses again for itself
CHOSEN = "CORERT_CHOSEN_SPINCOUNT"
#: CHOSEN's value in a process handed its spin (given_spin): it keeps it, as it would the user's
GIVEN = "given"


@attrs.frozen
class CpuSample:
    """One reading of the counters (None: unreadable here)."""

    wall_s: float
    own_cpu_s: float  # this process, every thread
    busy_ticks: int | None  # all CPUs: time not idle and not waiting for I/O (steal counts: a VM's lost time)
    stall_us: int | None  # PSI "some total": microseconds in which some task waited for a CPU

    @classmethod
    def take(cls) -> "CpuSample":
        return cls(time.monotonic(), time.process_time(), _busy_ticks(_read("/proc/stat")),
                   _stall_us(_read("/proc/pressure/cpu")))


@attrs.frozen
class CpuLoad:
    """What the CPUs did between two samples."""

    window_s: float
    others_cpus: float | None  # CPUs' worth used by other processes
    stall_pct: float | None  # % of the window in which some task waited for a CPU

    @classmethod
    def between(cls, a: CpuSample, b: CpuSample, ticks_per_s: int) -> "CpuLoad":
        window = max(b.wall_s - a.wall_s, 1e-9)
        others = stall = None
        if a.busy_ticks is not None and b.busy_ticks is not None:
            used = (b.busy_ticks - a.busy_ticks) / ticks_per_s - (b.own_cpu_s - a.own_cpu_s)
            others = max(used, 0.0) / window
        if a.stall_us is not None and b.stall_us is not None:
            stall = 100.0 * (b.stall_us - a.stall_us) / 1e6 / window
        return cls(window, others, stall)

    def to_dict(self) -> dict[str, float | None]:
        return {k: None if v is None else round(v, 3) for k, v in attrs.asdict(self).items()}


def spin_count(load: CpuLoad) -> int:
    """The spin count for what the CPUs did over the window."""
    if load.others_cpus is None and load.stall_pct is None:
        return SPIN_BUSY  # cannot tell (not Linux, /proc hidden)
    if load.others_cpus is not None and load.others_cpus >= BUSY_CPUS:
        return SPIN_BUSY
    if load.stall_pct is not None and load.stall_pct >= BUSY_PRESSURE:
        return SPIN_BUSY
    return SPIN_FREE


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def _busy_ticks(stat: str | None) -> int | None:
    """/proc/stat's first line: user nice system idle iowait irq softirq steal (guest time is inside user)."""
    first = (stat or "").split("\n", 1)[0].split()
    if len(first) < 9 or first[0] != "cpu":
        return None
    try:
        ticks = [int(x) for x in first[1:9]]
    except ValueError:
        return None
    return sum(ticks) - ticks[3] - ticks[4]


def _stall_us(pressure: str | None) -> int | None:
    for line in (pressure or "").splitlines():
        if line.startswith("some "):
            fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            try:
                return int(fields["total"])
            except (KeyError, ValueError):
                return None
    return None


#: the last choice's sample (None: not sampled in this process), for benches to report
LAST: CpuLoad | None = None


def _ours_to_choose(env: Mapping[str, str]) -> bool:
    """No setting of the user's (nor a given spin): nothing, or what a corert parent chose for itself."""
    return "OMP_WAIT_POLICY" not in env and env.get("GOMP_SPINCOUNT", "") in ("", env.get(CHOSEN))


def start() -> CpuSample | None:
    """The window's first sample, or None when the spin is not ours to choose."""
    return CpuSample.take() if _ours_to_choose(os.environ) else None


def _load_since(first: CpuSample) -> CpuLoad:
    rest = MIN_WINDOW_S - (time.monotonic() - first.wall_s)
    if rest > 0:
        time.sleep(rest)
    return CpuLoad.between(first, CpuSample.take(), os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def finish(first: CpuSample | None) -> None:
    """Ends the window (waiting out :data:`MIN_WINDOW_S`) and sets GOMP_SPINCOUNT for this process's libgomp."""
    global LAST
    if first is None:
        return
    LAST = _load_since(first)
    _choose(os.environ, LAST)


def _choose(env: MutableMapping[str, str], load: CpuLoad) -> None:
    env["GOMP_SPINCOUNT"] = env[CHOSEN] = str(spin_count(load))


def given_spin(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that hand a process started on this machine the spin chosen from a sample taken now
    (:data:`MIN_WINDOW_S`; it keeps it instead of choosing at its own start); empty when the user's setting is
    in ``env``."""
    if not _ours_to_choose(env):
        return {}
    return {"GOMP_SPINCOUNT": str(spin_count(_load_since(CpuSample.take()))), CHOSEN: GIVEN}


def handed_spin(env: MutableMapping[str, str]) -> dict[str, str]:
    """The variables that hand one of this process's workers (corert.isolation) this process's own spin: the
    worker is its engine in another process and spins as it would here, rather than choosing at its own start,
    which often falls in our own model load (the two sides of a bench could spin 1000 and 300000).  Chosen
    now, as this process's own, when nothing chose it yet (a host with no engine of its own never loads
    numba_setup); empty when the user's setting, or one handed to us, is in ``env`` (inherited as is)."""
    if "GOMP_SPINCOUNT" not in env and _ours_to_choose(env):
        _choose(env, _load_since(CpuSample.take()))
    chosen = env.get(CHOSEN)
    if chosen is not None and chosen != GIVEN and env.get("GOMP_SPINCOUNT") == chosen:
        return {"GOMP_SPINCOUNT": chosen, CHOSEN: GIVEN}
    return {}


def child_env(env=None) -> dict[str, str]:
    """``env`` (default os.environ) for a process that is not corert's -- a benchmark's competitor: without the
    spin count numba_setup chose for itself (libgomp in that process then uses its own default, or the user's
    setting, which is kept).  A corert child would choose again anyway."""
    env = dict(os.environ if env is None else env)
    if env.get(CHOSEN) is not None and env.get("GOMP_SPINCOUNT") == env.get(CHOSEN):
        del env["GOMP_SPINCOUNT"]
    env.pop(CHOSEN, None)
    return env
