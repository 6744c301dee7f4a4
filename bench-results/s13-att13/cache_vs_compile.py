"""pat12's check (bench-results/s12-pat12/cache_vs_compile.py) for the tile kernels: a prompt's attention in a
process that compiles them, one that loads them from numba's cache, and one that compiles them anew beside
that cache (``nocache``); each line's hashes must agree across the three runs (and parallel with serial).

    D=$(mktemp -d); for m in first second nocache; do NUMBA_CACHE_DIR=$D python cache_vs_compile.py $m; done
"""
import hashlib
import pathlib
import sys

import numpy as np
from numba.core.caching import NullCache

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "s12-pat12"))
from attn_bench import SHAPES, case  # noqa: E402
from corert.plugins.kv_cache import contiguous_attention as A  # noqa: E402

if sys.argv[1] == "nocache":
    A._attend_tiles_parallel._cache = NullCache()
    A._attend_tiles_serial._cache = NullCache()
for name in SHAPES:
    q, k, v, s, p, scale, w = case(name)
    out, out2 = np.empty_like(q), np.empty_like(q)
    A.attend_contiguous(q, k, v, s, p, scale, out, w)
    A.PARALLEL_MIN_WORK = 1 << 62
    A.attend_contiguous(q, k, v, s, p, scale, out2, w)
    A.PARALLEL_MIN_WORK = 1 << 16
    print(sys.argv[1], name, "parallel", hashlib.md5(out.tobytes()).hexdigest()[:8],
          "serial", hashlib.md5(out2.tobytes()).hexdigest()[:8])
