"""GNU OpenMP's spin count (GOMP_SPINCOUNT) for a corert process: long on free cores, short on busy ones.

OpenMP's threads spin at each barrier before sleeping, GOMP_SPINCOUNT times; libgomp reads it once, when it
loads (numba's first parallel call).  A token runs ~150 parallel regions with Python between them; a worker
that has gone to sleep costs a wake-up at the next region.  On free cores a long spin keeps it awake through
the gaps: Qwen 1.5B decode at 2 threads, quiet (lead, 19:04-19:09 UTC 2026-12-03), 1000 spins 8.0-14.4 tok/s
(median 11.7), 20000 ~11.6, 50000 ~13.5, 300000 (libgomp's default) 15.6.  On busy cores a long spin burns
the core a preempted peer needs: smollm2 ~115 -> ~2 tok/s (2026-11-27), and again at load 10-11 with nice 19:
the 1.5B 0.58-0.64 tok/s with 300000 spins, 2.1 with 1000.  So the spin is chosen from how much tasks waited
for a CPU over the last 10 s (Linux PSI); where that is unknown, the short spin.  The user's settings
(OMP_WAIT_POLICY, GOMP_SPINCOUNT) win.  corert.numba_setup chooses when it loads; :func:`given_spin` is the
choice made now for processes that would otherwise choose at a busy moment of our own making.
"""
from __future__ import annotations

from typing import Mapping, MutableMapping

#: GOMP_SPINCOUNT on free cores (libgomp's own default) and on busy ones or when we cannot tell
SPIN_FREE, SPIN_BUSY = 300000, 1000
#: PSI ``some avg10`` (% of the last 10 s in which a task waited for a CPU) from which the cores count as busy
BUSY_PRESSURE = 10.0
#: the spin count corert chose, so a child process (which inherits it) chooses again for itself
CHOSEN = "CORERT_CHOSEN_SPINCOUNT"
#: CHOSEN's value in a process handed its spin (given_spin): it keeps it, as it would the user's
GIVEN = "given"


def spin_count(cpu_pressure: str | None) -> int:
    """The spin count for the text of /proc/pressure/cpu (None: unreadable)."""
    for line in (cpu_pressure or "").splitlines():
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        if line.startswith("some ") and "avg10" in fields:
            try:
                return SPIN_FREE if float(fields["avg10"]) < BUSY_PRESSURE else SPIN_BUSY
            except ValueError:
                break
    return SPIN_BUSY


def cpu_pressure() -> str | None:
    try:
        with open("/proc/pressure/cpu") as fh:
            return fh.read()
    except OSError:  # no PSI (not Linux, an old kernel, disabled): unknown
        return None


def _ours_to_choose(env: Mapping[str, str]) -> bool:
    """No setting of the user's: nothing, or what a corert parent chose for itself."""
    return "OMP_WAIT_POLICY" not in env and env.get("GOMP_SPINCOUNT", "") in ("", env.get(CHOSEN))


def choose_spin(env: MutableMapping[str, str]) -> None:
    """Sets GOMP_SPINCOUNT in ``env`` from the pressure now, unless the user set it (or OMP_WAIT_POLICY)."""
    if _ours_to_choose(env):
        env["GOMP_SPINCOUNT"] = env[CHOSEN] = str(spin_count(cpu_pressure()))


def given_spin(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that hand a process started on this machine the spin chosen from the pressure now (it
    keeps it instead of choosing at its own start); empty when the user's setting is in ``env``."""
    if not _ours_to_choose(env):
        return {}
    return {"GOMP_SPINCOUNT": str(spin_count(cpu_pressure())), CHOSEN: GIVEN}


def handed_spin(env: MutableMapping[str, str]) -> dict[str, str]:
    """The variables that hand one of this process's workers (corert.isolation) this process's own spin: the
    worker is its engine in another process and spins as it would here, rather than choosing from the
    pressure at its own start, which often falls in our own model load (a quiet machine ran native SmolLM2 at
    1000 spins in a worker beside 300000 in-process; in-process at 1000 it decodes 43 tok/s against 111).
    Chosen now, as this process's own, when nothing chose it yet (a host with no engine of its own never
    loads numba_setup); empty when the user's setting, or one handed to us, is in ``env`` (inherited as is)."""
    if "GOMP_SPINCOUNT" not in env:
        choose_spin(env)
    chosen = env.get(CHOSEN)
    if chosen is not None and chosen != GIVEN and env.get("GOMP_SPINCOUNT") == chosen:
        return {"GOMP_SPINCOUNT": chosen, CHOSEN: GIVEN}
    return {}
