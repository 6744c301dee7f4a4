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


# A fresh process runs a forward (so it has a compute thread and llama.cpp's OpenMP team), then forks: the
# child's forward must start its own compute thread and give the same token.  Before, it queued its work for
# the parent's thread, which a forked child does not have, and waited forever.
FORK_CHILD = """
import os, sys, time
import numpy as np
from corert import Runtime
rt = Runtime(engine="llama.cpp", model=sys.argv[1], n_ctx=256)
loaded, _ = rt.load_generation_model()
ids = loaded.tokenizer.encode("The three primary colours are")
session = loaded.session()
parent = int(np.argmax(session.eval(ids)))
pid = os.fork()
if pid == 0:
    session.truncate(0)
    print(int(np.argmax(session.eval(ids))), flush=True)
    os._exit(0)
deadline = time.monotonic() + 60
while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
    time.sleep(0.05)
if done[0] == 0:  # hung: stopped here, so no process outlives the test
    os.kill(pid, 9)
    done = os.waitpid(pid, 0)
    print("hung", flush=True)
print(parent, os.waitstatus_to_exitcode(done[1]))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_runs_forwards_on_a_compute_thread_of_its_own(smollm2):
    out = subprocess.run([sys.executable, "-c", FORK_CHILD, smollm2], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    child, parent, child_exit = out.stdout.split()
    assert child == parent and child_exit == "0", out.stdout
