"""OpenMP's spin count is chosen from the CPU pressure when numba starts (corert.numba_setup): long on free
cores, short on busy ones or when the pressure cannot be read; the user's setting wins, and a child process
chooses again rather than inheriting its parent's choice."""
from __future__ import annotations

import os
import subprocess
import sys

from corert import numba_setup, spin

FREE = "some avg10=0.35 avg60=1.20 avg300=0.80 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
BUSY = "some avg10=95.20 avg60=94.38 avg300=90.30 total=30585097838\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


def test_free_cores_spin_long_busy_ones_short():
    assert numba_setup.spin_count(FREE) == numba_setup.SPIN_FREE
    assert numba_setup.spin_count(BUSY) == numba_setup.SPIN_BUSY
    edge = f"some avg10={numba_setup.BUSY_PRESSURE:.2f} avg60=0 avg300=0 total=1\n"
    assert numba_setup.spin_count(edge) == numba_setup.SPIN_BUSY
    assert numba_setup.SPIN_FREE > numba_setup.SPIN_BUSY


def test_unknown_pressure_spins_short():
    for text in (None, "", "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", "some avg10=n/a total=1\n"):
        assert numba_setup.spin_count(text) == numba_setup.SPIN_BUSY


def _child_spin(env: dict[str, str]) -> str:
    code = "import os, corert.numba_setup; print(os.environ.get('GOMP_SPINCOUNT', ''))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def test_the_users_setting_wins_and_a_child_chooses_again():
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY",
                                                               numba_setup._CHOSEN)}
    assert _child_spin({**base, "GOMP_SPINCOUNT": "777"}) == "777"
    assert _child_spin({**base, "OMP_WAIT_POLICY": "passive"}) == ""
    # inherited from a corert parent: chosen again from this machine's pressure (never the stale 5)
    got = _child_spin({**base, "GOMP_SPINCOUNT": "5", numba_setup._CHOSEN: "5"})
    assert got in (str(numba_setup.SPIN_FREE), str(numba_setup.SPIN_BUSY))


def test_a_competitor_gets_libgomps_own_spin_not_ours():
    chosen = {"PATH": "/bin", "GOMP_SPINCOUNT": "1000", numba_setup._CHOSEN: "1000"}
    assert numba_setup.child_env(chosen) == {"PATH": "/bin"}
    users = {"PATH": "/bin", "GOMP_SPINCOUNT": "777", numba_setup._CHOSEN: "1000"}  # set by the user after us
    assert numba_setup.child_env(users) == {"PATH": "/bin", "GOMP_SPINCOUNT": "777"}
    assert numba_setup.child_env({"GOMP_SPINCOUNT": "5"}) == {"GOMP_SPINCOUNT": "5"}  # never chosen by corert


def test_a_given_spin_is_kept_and_the_users_setting_is_not_overridden():
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", spin.CHOSEN)}
    given = spin.given_spin(base)
    assert given["GOMP_SPINCOUNT"] in (str(spin.SPIN_FREE), str(spin.SPIN_BUSY)) and given[spin.CHOSEN] == spin.GIVEN
    # a process handed its spin keeps it, whatever the pressure at its own start says
    assert _child_spin({**base, "GOMP_SPINCOUNT": "4321", spin.CHOSEN: spin.GIVEN}) == "4321"
    assert spin.given_spin({**base, "GOMP_SPINCOUNT": "777"}) == {}
    assert spin.given_spin({**base, "OMP_WAIT_POLICY": "passive"}) == {}
    # a corert parent's own choice is not the user's: chosen again, now
    assert spin.given_spin({**base, "GOMP_SPINCOUNT": "5", spin.CHOSEN: "5"})["GOMP_SPINCOUNT"] != "5"


def test_a_worker_is_handed_its_hosts_spin():
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", spin.CHOSEN)}
    host = {**base, "GOMP_SPINCOUNT": "5", spin.CHOSEN: "5"}  # what this host chose (5: never chosen by a child)
    handed = spin.handed_spin(host)
    assert handed == {"GOMP_SPINCOUNT": "5", spin.CHOSEN: spin.GIVEN}
    assert _child_spin({**host, **handed}) == "5"
    assert spin.handed_spin({**base, "GOMP_SPINCOUNT": "777"}) == {}  # the user's: inherited as it stands
    assert spin.handed_spin({**base, "GOMP_SPINCOUNT": "5", spin.CHOSEN: spin.GIVEN}) == {}
    fresh = dict(base)  # nothing chosen yet: chosen now, for the host too
    handed = spin.handed_spin(fresh)
    assert handed["GOMP_SPINCOUNT"] == fresh["GOMP_SPINCOUNT"] in (str(spin.SPIN_FREE), str(spin.SPIN_BUSY))
