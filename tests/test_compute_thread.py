"""The compute thread (corert.compute) runs on the process's cpus, not on the cpus of the lane that happened
to start it: a model first loaded from a one-core lane must not leave every later forward on that core."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# A fresh process, so the compute thread does not exist yet: a thread pinned to one cpu starts it.
CHILD = """
import json, os, threading
from corert.compute import on_compute_thread
seen = {}
def lane():
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    seen["lane"] = sorted(os.sched_getaffinity(0))
    seen["compute"] = sorted(on_compute_thread(os.sched_getaffinity, 0))
t = threading.Thread(target=lane)
t.start(); t.join()
seen["process"] = sorted(os.sched_getaffinity(0))
print(json.dumps(seen))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs thread affinity (Linux) and at least two cpus")
def test_the_compute_thread_leaves_its_creators_pin():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    seen = json.loads(out.stdout)
    assert len(seen["lane"]) == 1 < len(seen["process"])  # the creator really was pinned to one cpu
    assert seen["compute"] == seen["process"]
