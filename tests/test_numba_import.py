"""What numba's set-up costs a process: scipy.linalg is not imported for it (numba_import.py) yet jitted
BLAS calls still work, and the C heap's free pages go back after a load (memory.trim_heap).  Fresh processes:
import-time state."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

needs_scipy = pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="scipy not installed")

PROBE = r"""
import json, sys
if sys.argv[1] == "1":
    import scipy.linalg  # the user had it already
import corert.numba_setup
before = "scipy.linalg" in sys.modules
import numba, numpy as np
dot = numba.njit(lambda a, b: np.dot(a, b))(np.arange(4.0), np.arange(4.0))
print(json.dumps({"linalg_at_setup": before, "dot": float(dot), "linalg_after": "scipy.linalg" in sys.modules}))
"""


def _run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_scipy
def test_numba_sets_up_without_scipy_linalg_and_jitted_blas_still_works():
    fresh = _run(PROBE, "0")
    assert fresh == {"linalg_at_setup": False, "dot": 14.0, "linalg_after": True}
    had = _run(PROBE, "1")  # imported before corert: left as it was
    assert had == {"linalg_at_setup": True, "dot": 14.0, "linalg_after": True}


TRIM = r"""
import json, numpy as np
from corert.memory import trim_heap

def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 1024

blocks = [np.ones(8192) for _ in range(800)]  # 64 kB each: from the heap, below malloc's mmap threshold
pin = np.ones(8192)  # keeps the top of the heap in use, so free() alone cannot shrink it
del blocks
freed = rss()
trim_heap()
print(json.dumps({"freed": freed, "trimmed": rss()}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc only")
def test_trim_heap_returns_freed_pages():
    r = _run(TRIM)
    assert r["freed"] - r["trimmed"] > 25  # ~50 MB freed below a live block
