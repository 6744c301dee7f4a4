"""A prompt's attention (attn_bench.py's shapes) gives different bits in a process that compiled the kernels
than in one that loaded them from numba's cache: run twice on one empty NUMBA_CACHE_DIR (the first compiles,
the second loads), and once more with ``nocache`` (the second's cache, but _attend_parallel compiled anew).
Within one process the serial and the parallel path agree.

    D=$(mktemp -d); for m in first second nocache; do NUMBA_CACHE_DIR=$D python cache_vs_compile.py $m; done
"""
import hashlib
import sys

import numpy as np
from numba.core.caching import NullCache

from attn_bench import SHAPES, case
from corert.plugins.kv_cache import contiguous_attention as A

if sys.argv[1] == "nocache":
    A._attend_parallel._cache = NullCache()
for name in SHAPES:
    q, k, v, s, p, scale, w = case(name)
    out, out2 = np.empty_like(q), np.empty_like(q)
    A.attend_contiguous(q, k, v, s, p, scale, out, w)
    A.PARALLEL_MIN_WORK = 1 << 62
    A.attend_contiguous(q, k, v, s, p, scale, out2, w)
    A.PARALLEL_MIN_WORK = 1 << 16
    print(sys.argv[1], name, "parallel", hashlib.md5(out.tobytes()).hexdigest()[:8],
          "serial", hashlib.md5(out2.tobytes()).hexdigest()[:8])
