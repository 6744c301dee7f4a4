"""OpenMP's spin count is chosen from how busy the CPUs are now, sampled while numba imports
(corert.spin): long on free cores, short on busy ones or when nothing can be read; the user's setting
wins, a child process chooses again rather than inheriting its parent's choice, and every process a benchmark
starts goes through one helper that strips our choice (corert.tools.bench.spawn)."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from corert import spin as sc
from corert.tools.bench import spawn

STAT = "cpu  {user} 0 {system} {idle} {iowait} 0 0 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"
PSI = "some avg10=95.20 avg60=94.38 avg300=90.30 total={total}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


def _sample(wall_s, own_cpu_s, user, idle, stall_us, iowait=0, steal=0) -> sc.CpuSample:
    ticks = sc._busy_ticks(STAT.format(user=user, system=0, idle=idle, iowait=iowait, steal=steal))
    return sc.CpuSample(wall_s, own_cpu_s, ticks, sc._stall_us(PSI.format(total=stall_us)))


def test_others_cpus_are_the_busy_ticks_less_our_own_time():
    # 100 ms on 2 CPUs at 100 ticks/s: 20 ticks; 12 busy (we used 0.1 s of them: 10 ticks) -> others 0.2 CPUs
    a = _sample(10.0, 1.0, user=1000, idle=5000, stall_us=7_000_000)
    b = _sample(10.1, 1.1, user=1012, idle=5008, stall_us=7_004_000)
    load = sc.CpuLoad.between(a, b, ticks_per_s=100)
    assert abs(load.others_cpus - 0.2) < 1e-6 and abs(load.stall_pct - 4.0) < 1e-6
    assert sc.spin_count(load) == sc.SPIN_FREE
    # waiting for I/O is idle; a VM's stolen time is not
    c = _sample(10.1, 1.0, user=1000, idle=5000, stall_us=7_000_000, iowait=20)
    assert sc.CpuLoad.between(a, c, 100).others_cpus == 0.0
    d = _sample(10.1, 1.0, user=1000, idle=5000, stall_us=7_000_000, steal=10)
    assert abs(sc.CpuLoad.between(a, d, 100).others_cpus - 1.0) < 1e-6


def test_busy_by_either_vote_or_unknown_spins_short():
    assert sc.spin_count(sc.CpuLoad(0.05, 0.0, 0.0)) == sc.SPIN_FREE
    assert sc.spin_count(sc.CpuLoad(0.05, sc.BUSY_CPUS, 0.0)) == sc.SPIN_BUSY  # a hog beside us
    assert sc.spin_count(sc.CpuLoad(0.05, 0.0, sc.BUSY_PRESSURE)) == sc.SPIN_BUSY  # tasks waited for a CPU
    assert sc.spin_count(sc.CpuLoad(0.05, 0.1, None)) == sc.SPIN_FREE  # no PSI: /proc/stat alone
    assert sc.spin_count(sc.CpuLoad(0.05, None, None)) == sc.SPIN_BUSY  # cannot tell
    assert sc.SPIN_FREE > sc.SPIN_BUSY


def test_unreadable_counters_are_unknown():
    for text in (None, "", "intr 1 2 3\n", "cpu  1 2 3\n", "cpu  a b c d e f g h i j\n"):
        assert sc._busy_ticks(text) is None
    for text in (None, "", "full avg10=0.00 total=0\n", "some avg10=1.0 total=n/a\n"):
        assert sc._stall_us(text) is None


def _child(env: dict[str, str]) -> dict:
    code = ("import json, os, corert.numba_setup; from corert import spin as s; "
            "print(json.dumps({'spin': os.environ.get('GOMP_SPINCOUNT', ''), "
            "'load': s.LAST and s.LAST.to_dict(), 'libgomp': 'libgomp' in open('/proc/self/maps').read()}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         timeout=120).stdout
    return json.loads(out)


def test_the_users_setting_wins_and_a_child_chooses_again():
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", sc.CHOSEN)}
    assert _child({**base, "GOMP_SPINCOUNT": "777"})["spin"] == "777"
    assert _child({**base, "OMP_WAIT_POLICY": "passive"})["spin"] == ""
    # inherited from a corert parent: chosen again from this machine now (never the stale 5), by the rule,
    # from a window of at least MIN_WINDOW_S, before libgomp has loaded (it reads the variable when it loads)
    got = _child({**base, "GOMP_SPINCOUNT": "5", sc.CHOSEN: "5"})
    load = sc.CpuLoad(**got["load"])
    assert got["spin"] == str(sc.spin_count(load)) and load.window_s >= sc.MIN_WINDOW_S * 0.99
    assert load.others_cpus is not None and load.others_cpus >= 0.0  # /proc/stat is readable here
    assert got["libgomp"] is False


def test_a_given_spin_is_kept_and_the_users_setting_is_not_overridden():
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", sc.CHOSEN)}
    given = sc.given_spin(base)
    assert given["GOMP_SPINCOUNT"] in (str(sc.SPIN_FREE), str(sc.SPIN_BUSY)) and given[sc.CHOSEN] == sc.GIVEN
    # a process handed its spin keeps it, whatever the machine looks like at its own start
    assert _child({**base, "GOMP_SPINCOUNT": "4321", sc.CHOSEN: sc.GIVEN})["spin"] == "4321"
    assert sc.given_spin({**base, "GOMP_SPINCOUNT": "777"}) == {}
    assert sc.given_spin({**base, "OMP_WAIT_POLICY": "passive"}) == {}
    # a corert parent's own choice is not the user's: chosen again, now
    assert sc.given_spin({**base, "GOMP_SPINCOUNT": "5", sc.CHOSEN: "5"})["GOMP_SPINCOUNT"] != "5"


def test_a_worker_is_handed_its_hosts_spin():
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", sc.CHOSEN)}
    host = {**base, "GOMP_SPINCOUNT": "5", sc.CHOSEN: "5"}  # what this host chose (5: never chosen by a child)
    handed = sc.handed_spin(host)
    assert handed == {"GOMP_SPINCOUNT": "5", sc.CHOSEN: sc.GIVEN}
    assert _child({**host, **handed})["spin"] == "5"
    assert sc.handed_spin({**base, "GOMP_SPINCOUNT": "777"}) == {}  # the user's: inherited as it stands
    assert sc.handed_spin({**base, "GOMP_SPINCOUNT": "5", sc.CHOSEN: sc.GIVEN}) == {}
    fresh = dict(base)  # nothing chosen yet: chosen now, for the host too
    handed = sc.handed_spin(fresh)
    assert handed["GOMP_SPINCOUNT"] == fresh["GOMP_SPINCOUNT"] in (str(sc.SPIN_FREE), str(sc.SPIN_BUSY))


def test_a_competitor_gets_libgomps_own_spin_not_ours():
    chosen = {"PATH": "/bin", "GOMP_SPINCOUNT": "1000", sc.CHOSEN: "1000"}
    assert sc.child_env(chosen) == {"PATH": "/bin"}
    users = {"PATH": "/bin", "GOMP_SPINCOUNT": "777", sc.CHOSEN: "1000"}  # set by the user after us
    assert sc.child_env(users) == {"PATH": "/bin", "GOMP_SPINCOUNT": "777"}
    assert sc.child_env({"GOMP_SPINCOUNT": "5"}) == {"GOMP_SPINCOUNT": "5"}  # never chosen by corert


def test_the_spawn_helper_strips_our_spin(monkeypatch):
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    monkeypatch.setenv(sc.CHOSEN, "1000")
    code = "import json, os; print(json.dumps({k: os.environ.get(k) for k in ('GOMP_SPINCOUNT', 'EXTRA')}))"
    proc = spawn.popen([sys.executable, "-c", code], {"EXTRA": "x"}, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert json.loads(out) == {"GOMP_SPINCOUNT": None, "EXTRA": "x"}


def test_every_bench_process_starts_through_the_spawn_helper():
    """A bench module that starts a process itself could hand a competitor our spin: only spawn.py may."""
    bench = Path(spawn.__file__).parent
    calls = {"Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"}
    offenders = []
    for path in sorted(bench.glob("*.py")):
        if path.name == "spawn.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("subprocess", "multiprocessing"):
                offenders.append(f"{path.name}: from {node.module} import ...")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                    (node.value.id == "subprocess" and node.attr in calls) or
                    (node.value.id == "os" and node.attr.startswith(("spawn", "exec", "posix_spawn", "system"))) or
                    node.attr.startswith("create_subprocess")):
                offenders.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert offenders == []
