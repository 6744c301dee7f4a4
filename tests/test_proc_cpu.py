"""The benchmarks' per-process CPU meter (corert.tools.bench.proc_cpu) on a real child process that spins."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from corert.tools.bench.proc_cpu import CpuMeter, per_token_ms

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")

# says it is ready, waits for a line, spins for 0.3 s of its own CPU time, says so, then sleeps
SPIN = ("import sys, time\nprint('ready', flush=True)\nsys.stdin.readline()\nend = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\nprint('spun', flush=True)\ntime.sleep(60)\n")


def test_a_spinning_child_is_counted_under_its_role_and_an_idle_one_is_not():
    busy, idle = (subprocess.Popen([sys.executable, "-c", SPIN, marker], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True) for marker in ("marker-busy", "marker-idle"))
    try:
        meter = CpuMeter(os.getpid(), [("busy", "marker-busy"), ("idle", "marker-idle")], root_role="test")
        assert busy.stdout.readline().strip() == idle.stdout.readline().strip() == "ready"  # started up
        meter.start()
        busy.stdin.write("go\n")
        busy.stdin.flush()
        assert busy.stdout.readline().strip() == "spun"
        spent = meter.stop()
    finally:
        for p in (busy, idle):
            p.kill()
            p.communicate(timeout=10)
    assert 0.25 <= spent["busy"] <= 0.45, spent  # 0.3 s, read in clock ticks (10 ms)
    assert spent["idle"] < 0.03 and spent["test"] < 0.2, spent
    assert per_token_ms([spent, {"busy": 0.1}], [100, 100])["busy"] == pytest.approx(
        1e3 * (spent["busy"] + 0.1) / 200, abs=1e-3)
    assert per_token_ms([{}], [0]) is None
