"""tok11: does a decode row's attention wait on memory?  The contiguous store's kernel (as in the tree) against
the same kernel asking for the K/V rows ``AHEAD`` bytes ahead (llvm.prefetch, a hint: the arithmetic is the
same), both with the K/V cold: 28 layers' stores of the model's shape at 500 positions, and between two
layers a 24 MB read standing in for the layer's products.  Median over rounds, per layer call, 2 threads."""
import json
import sys
import time

import numpy as np
from numba import njit, prange

from corert.kernels.fast_exp import exp_f32
from corert.kernels.simd import prefetch
from corert.kernels.tree_rows import balanced_row, row_span, slot_of
from corert.plugins.kv_cache import contiguous_attention as ca
from corert.plugins.kv_cache.contiguous_attention import _KEYS, _dot, _dot4, _dot4x2, _kv, window_start
from corert.tree import NO_TREE

AHEAD = int(sys.argv[2]) if len(sys.argv) > 2 else 4096


@njit(fastmath=True)
def _ask(k, v, row, ahead_rows):
    """The cache lines of rows row + ahead_rows .. + _KEYS of k and v."""
    r = row + ahead_rows
    if r + _KEYS <= k.shape[0]:
        step = 64 // k.itemsize
        for e in range(r * k.shape[1], (r + _KEYS) * k.shape[1], step):
            prefetch(k.reshape(-1), e)
            prefetch(v.reshape(-1), e)


@njit(fastmath=True)
def _attend_group_pf(q, k, v, tree, i, h0, h1, lo, ctx, scale, out, scores, ahead_rows):
    length = scores.shape[1] - 1
    hd = q.shape[2]
    nh = h1 - h0
    pairs = nh - nh % 2
    whole = length - length % _KEYS
    for t in range(0, whole, _KEYS):
        _ask(k, v, lo + t, ahead_rows)
        k0, k1 = k[slot_of(tree, i, ctx, lo + t)], k[slot_of(tree, i, ctx, lo + t + 1)]
        k2, k3 = k[slot_of(tree, i, ctx, lo + t + 2)], k[slot_of(tree, i, ctx, lo + t + 3)]
        for g in range(0, pairs, 2):
            a0, a1, a2, a3, b0, b1, b2, b3 = _dot4x2(q[i, h0 + g], q[i, h0 + g + 1], k0, k1, k2, k3)
            scores[g, t], scores[g, t + 1], scores[g, t + 2], scores[g, t + 3] = \
                a0 * scale, a1 * scale, a2 * scale, a3 * scale
            scores[g + 1, t], scores[g + 1, t + 1], scores[g + 1, t + 2], scores[g + 1, t + 3] = \
                b0 * scale, b1 * scale, b2 * scale, b3 * scale
        for g in range(pairs, nh):
            a, b, c, d = _dot4(q[i, h0 + g], k0, k1, k2, k3)
            scores[g, t], scores[g, t + 1], scores[g, t + 2], scores[g, t + 3] = \
                a * scale, b * scale, c * scale, d * scale
    for t in range(whole, length):
        kt = k[slot_of(tree, i, ctx, lo + t)]
        for g in range(nh):
            scores[g, t] = _dot(q[i, h0 + g], kt) * scale
    for g in range(nh):
        m = np.float32(-np.inf)
        for t in range(length):
            m = max(m, scores[g, t])
        total = np.float32(0.0)
        for t in range(length):
            e = exp_f32(scores[g, t] - m)
            scores[g, t] = e
            total += e
        scores[g, length] = total
        out[i, h0 + g, :] = 0.0
    for t in range(0, whole, _KEYS):
        v0, v1 = v[slot_of(tree, i, ctx, lo + t)], v[slot_of(tree, i, ctx, lo + t + 1)]
        v2, v3 = v[slot_of(tree, i, ctx, lo + t + 2)], v[slot_of(tree, i, ctx, lo + t + 3)]
        for g in range(0, pairs, 2):
            w0, w1, w2, w3 = scores[g, t], scores[g, t + 1], scores[g, t + 2], scores[g, t + 3]
            x0, x1, x2, x3 = scores[g + 1, t], scores[g + 1, t + 1], scores[g + 1, t + 2], scores[g + 1, t + 3]
            oa, ob = out[i, h0 + g], out[i, h0 + g + 1]
            for d in range(hd):
                p0, p1, p2, p3 = _kv(v0[d]), _kv(v1[d]), _kv(v2[d]), _kv(v3[d])
                oa[d] += (w0 * p0 + w1 * p1) + (w2 * p2 + w3 * p3)
                ob[d] += (x0 * p0 + x1 * p1) + (x2 * p2 + x3 * p3)
        for g in range(pairs, nh):
            w0, w1, w2, w3 = scores[g, t], scores[g, t + 1], scores[g, t + 2], scores[g, t + 3]
            o = out[i, h0 + g]
            for d in range(hd):
                o[d] += (w0 * _kv(v0[d]) + w1 * _kv(v1[d])) + (w2 * _kv(v2[d]) + w3 * _kv(v3[d]))
    for t in range(whole, length):
        vt = v[slot_of(tree, i, ctx, lo + t)]
        for g in range(nh):
            w = scores[g, t]
            o = out[i, h0 + g]
            for d in range(hd):
                o[d] += w * _kv(vt[d])
    for g in range(nh):
        inv = np.float32(1.0) / scores[g, length]
        o = out[i, h0 + g]
        for d in range(hd):
            o[d] *= inv


@njit(parallel=True)
def attend_pf(q, k, v, seq_ids, positions, scale, window, tree, out, parts, ahead_rows):
    n, n_heads, _ = q.shape
    n_kv = k.shape[1]
    group = n_heads // n_kv
    per = (group + parts - 1) // parts
    per += per % 2
    for job in prange(n * n_kv * parts):
        i = balanced_row(job // (n_kv * parts), n)
        kvh = (job // parts) % n_kv
        h0 = kvh * group + (job % parts) * per
        h1 = min(h0 + per, (kvh + 1) * group)
        if h0 < h1:
            ctx, end = row_span(tree, i, positions[i])
            lo = window_start(end - 1, window)
            s = seq_ids[i]
            _attend_group_pf(q, k[s, kvh], v[s, kvh], tree, i, h0, h1, lo, ctx, scale, out,
                             np.empty((h1 - h0, end - lo + 1), np.float32), ahead_rows)


@njit(parallel=True)
def stream(buf):
    s = 0
    for i in prange(buf.shape[0] // 4096):
        s += buf[i * 4096]
    return s


SHAPES = {"qwen1.5b": (12, 2, 128, 28), "smollm2": (9, 3, 64, 30)}


def main():
    rng = np.random.default_rng(0)
    ctx, res = 500, {"ahead_bytes": AHEAD}
    other = np.ones(24 << 20, np.uint8)
    for name, (H, KV, hd, L) in SHAPES.items():
        q = rng.standard_normal((1, H, hd)).astype(np.float32)
        ks = [rng.standard_normal((1, KV, 2048, hd)).astype(np.float16).view(np.uint16) for _ in range(L)]
        vs = [rng.standard_normal((1, KV, 2048, hd)).astype(np.float16).view(np.uint16) for _ in range(L)]
        out, ref = np.empty((1, H, hd), np.float32), np.empty((1, H, hd), np.float32)
        seq, pos, s = np.zeros(1, np.int32), np.array([ctx - 1], np.int32), np.float32(0.1)
        parts = ca.head_parts(1, KV, H // KV, 2) if hasattr(ca, "head_parts") else 1
        ahead_rows = max(_KEYS, AHEAD // (hd * 2))
        times = {"tree": [], "prefetch": []}
        for rnd in range(12):
            for label in (("tree", "prefetch") if rnd % 2 == 0 else ("prefetch", "tree")):
                tot = 0.0
                for li in range(L):
                    stream(other)
                    t0 = time.perf_counter()
                    if label == "tree":
                        ca._attend_parallel(q, ks[li], vs[li], seq, pos, s, 0, NO_TREE, ref, parts)
                    else:
                        attend_pf(q, ks[li], vs[li], seq, pos, s, 0, NO_TREE, out, parts, ahead_rows)
                    tot += time.perf_counter() - t0
                if rnd:
                    times[label].append(tot / L * 1e6)
        res[name] = {k: round(float(np.median(v)), 2) for k, v in times.items()}
        # separately compiled, fastmath may contract the same expressions differently (note10)
        res[name]["max_abs_diff"] = float(np.abs(out - ref).max())
        res[name]["parts"] = parts
    print(json.dumps(res, indent=1))
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
