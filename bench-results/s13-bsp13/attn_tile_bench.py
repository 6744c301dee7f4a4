"""One layer's paged q8 attention, Qwen2.5 0.5B's shapes (14 heads, 2 KV heads of 64), ms per call: a
454-row prompt of one sequence, 8 streams x 1 decode row, 8 streams x 5 and one stream x 5 or 9 verify rows at ~400 positions.
Run with each tree's own venv (the kernel of that tree)."""
import time

import numpy as np

from corert.plugins.kv_cache.paged.config import PagedConfig
from corert.plugins.kv_cache.paged.store import PagedKVStore

KV, H, HD = 2, 14, 64


def fill(st, lens, rng):
    sid = np.concatenate([np.full(n, s, np.int32) for s, n in enumerate(lens)])
    pos = np.concatenate([np.arange(n) for n in lens]).astype(np.int32)
    st.reserve(sid, pos, token_ids=(sid * 10000 + pos).astype(np.int64))
    st.write(0, sid, pos, rng.standard_normal((len(sid), KV, HD)).astype(np.float32),
             rng.standard_normal((len(sid), KV, HD)).astype(np.float32))
    return sid, pos


def timed(st, sid, pos, rng, reps):
    q = rng.standard_normal((len(sid), H, HD)).astype(np.float32)
    out = np.empty_like(q)
    st.attend(0, sid, pos, q, 0.125, out)
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        st.attend(0, sid, pos, q, 0.125, out)
        t.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(t))


def main():
    rng = np.random.default_rng(0)
    st = PagedKVStore(PagedConfig(dtype="q8", kernel="wide"), 1, KV, HD, 1024, 9)
    for _ in range(9):
        st.new_sequence()
    sid, pos = fill(st, [454], rng)
    print(f"prompt 454 rows: {timed(st, sid, pos, rng, 40):.3f} ms")
    lens = [400 + 13 * s for s in range(8)]
    sid, pos = fill(st, [0] + lens, rng)  # seq 0 keeps the prompt; seqs 1..8 the streams
    for k in (1, 5):
        s = np.repeat(np.arange(1, 9, dtype=np.int32), k)
        p = np.concatenate([np.arange(n - k, n) for n in lens]).astype(np.int32)
        print(f"8 streams x {k} rows: {timed(st, s, p, rng, 200):.3f} ms")
    for k in (5, 9):  # a lone stream's verify rows
        s, p = np.full(k, 1, np.int32), np.arange(lens[0] - k, lens[0], dtype=np.int32)
        print(f"1 stream x {k} rows: {timed(st, s, p, rng, 400):.3f} ms")


if __name__ == "__main__":
    main()
