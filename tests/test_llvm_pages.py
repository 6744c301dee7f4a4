"""LLVM's code pages are given back after numba compiles or loads a kernel (corert/llvm_pages.py): only
libllvmlite's clean read-only mappings are advised, kernels still run (cached and freshly compiled), and the
library's resident size falls.  Each measurement runs in a fresh process (import-time state)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from corert.llvm_pages import library_ranges, parse_smaps

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux /proc only")

# A fresh process: numba through corert (the release installed or not), one cached kernel of the native
# engine and one new kernel, each checked against numpy, then libllvmlite's resident MB from smaps.
PROBE = r"""
import json, os, numpy as np
import corert.numba_setup
from corert.llvm_pages import resident_mb
from corert.engines.native import ops
import numba

x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
w = np.linspace(0.5, 1.5, 64, dtype=np.float32)
out = np.empty_like(x)
ops.rmsnorm(x, w, 1e-6, out)  # from numba's cache
want = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True) + 1e-6) * w
fresh = numba.njit(lambda a: (a * 2.0).sum())(x)  # compiled now: LLVM must run again after a release

print(json.dumps({"rmsnorm_err": float(np.abs(out - want).max()), "fresh_err": float(abs(fresh - 2 * x.sum())),
                  "llvm_mb": resident_mb()}))
"""


def _probe(keep: bool) -> dict:
    env = dict(os.environ, CORERT_KEEP_LLVM_PAGES="1" if keep else "0")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_llvm_pages_are_released_and_kernels_still_run():
    kept, released = _probe(keep=True), _probe(keep=False)
    for r in (kept, released):
        assert r["rmsnorm_err"] < 1e-5 and r["fresh_err"] < 1e-2
    assert kept["llvm_mb"] > 50  # static initializers, numba's set-up and the compiles touched this much
    assert released["llvm_mb"] < kept["llvm_mb"] / 4


def test_only_clean_read_only_mappings_are_advised():
    import corert.numba_setup  # noqa: F401 - loads libllvmlite

    with open("/proc/self/smaps") as fh:
        text = fh.read()
    maps = [m for m in parse_smaps(text) if os.path.basename(m.path).startswith("libllvmlite")]
    chosen = set(library_ranges(text))
    assert chosen and len(chosen) < len(maps)  # the writable / relocated mappings are left alone
    for m in maps:
        advised = (m.start, m.end) in chosen
        assert advised == (m.perms in ("r--p", "r-xp") and m.anonymous_kb == 0 and m.private_dirty_kb == 0)
        if m.perms == "rw-p":
            assert not advised


def test_parse_smaps_reads_ranges_permissions_and_counts():
    text = ("7f0000000000-7f0000004000 r-xp 00000000 fd:01 123  /lib/libllvmlite.so\n"
            "Rss:                  16 kB\nPrivate_Dirty:          0 kB\nAnonymous:              0 kB\n"
            "VmFlags: rd ex mr mw me\n"
            "7f0000004000-7f0000005000 r--p 00004000 fd:01 123  /lib/libllvmlite.so\n"
            "Private_Dirty:          4 kB\nAnonymous:              4 kB\n"
            "7f0000006000-7f0000007000 rw-p 00000000 00:00 0\nAnonymous:              4 kB\n")
    maps = parse_smaps(text)
    assert [(m.start, m.end, m.perms, m.anonymous_kb) for m in maps] == [
        (0x7f0000000000, 0x7f0000004000, "r-xp", 0), (0x7f0000004000, 0x7f0000005000, "r--p", 4),
        (0x7f0000006000, 0x7f0000007000, "rw-p", 4)]
    assert library_ranges(text) == [(0x7f0000000000, 0x7f0000004000)]
