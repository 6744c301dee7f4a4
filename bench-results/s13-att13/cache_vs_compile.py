"""pat12's check (bench-results/s12-pat12/cache_vs_compile.py) with ``nocache`` also compiling the tile kernels
anew: a prompt's attention in a process that compiles them, one that loads them from numba's cache, and one
that compiles them beside that cache; each line's hashes must agree across the three runs.

    D=$(mktemp -d); for m in first second nocache; do NUMBA_CACHE_DIR=$D python cache_vs_compile.py $m; done
"""
import pathlib
import runpy
import sys

from numba.core.caching import NullCache

from corert.plugins.kv_cache import contiguous_attention as A

if sys.argv[1] == "nocache":
    A._attend_tiles_parallel._cache = NullCache()
    A._attend_tiles_serial._cache = NullCache()
pat12 = pathlib.Path(__file__).resolve().parent.parent / "s12-pat12"
sys.path.insert(0, str(pat12))
runpy.run_path(str(pat12 / "cache_vs_compile.py"), run_name="__main__")
