"""Compile time of the bf16 kernels (k16): the first q8 product (split) of a variant (s15-k15/ab_k15.py's spec) in
this process; run it with NUMBA_CACHE_DIR set to a fresh directory so nothing comes from the cache.

    NUMBA_CACHE_DIR=$(mktemp -d) compile_time.py main --json out.jsonl"""
import argparse, json, os, sys, tempfile, time
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "s15-k15"))
from ab_k15 import case, load_variant  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("variant")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    f = case("q8", 64, 256, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((40, 256)).astype(np.float32)
    out = np.empty((40, 64), np.float32)
    vdir = tempfile.mkdtemp()
    name, mod = load_variant(a.variant, vdir)
    t0 = time.perf_counter()
    f(mod, x, out, 2)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    f(mod, x, out, 2)
    r = {"variant": a.variant, "first_q8_product_s": first, "second_s": time.perf_counter() - t0,
         "numba_cache_dir": "fresh" if os.environ.get("NUMBA_CACHE_DIR") else "default"}
    print(json.dumps(r))
    with open(a.json, "a") as fh:
        fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
