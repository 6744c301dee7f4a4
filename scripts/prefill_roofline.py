"""The prefill's roofline on this machine: the int8 dot-product peak, the achieved clock, where a prompt's
forward spends its wall time (per product kind and shape, attention, the rest), and each product alone on the
model's real weights at the prompt's row count, in GOPS against the peak.

Wall time at the engine's own thread count (what ``corert bench generate`` measures), so run it alone on the
cores.  GOPS count 2 ops per weight and row (a multiply and an add), as usual; the ``vnni`` products run
two int8 levels per activation (matmul_i8.py), so the instructions executed are twice that.

    .venv/bin/python scripts/prefill_roofline.py qwen2.5-coder-1.5b-instruct --json out.json
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import attrs
import numpy as np
from numba import get_num_threads, njit, prange

import corert
from corert.engines.native import dequant, matmul_i8, ops
from corert.engines.native import model as native_model
from corert.kernels.simd import (add_i32, broadcast_word, dot_u8s8, fma_f32, load_bytes, load_f32, store_f32, to_f32,
                                 zeros_i32)
from corert.tools.bench.generate import default_prompt

#: independent accumulator chains in the peak loop: more than vpdpbusd's latency times its issue rate
CHAINS = 12


@njit(cache=True, boundscheck=False)
def _dots_loop(w, x, f, steps, with_f32):
    """``steps`` x 2 x CHAINS ``vpdpbusd`` on one weight register and broadcast activation words from L1, as
    the kernels issue them; ``with_f32`` adds the f32 work a product does beside its 16 ``vpdpbusd`` per row
    and block (3 FMA, 2 multiplies, 2 conversions: see matmul_i8.q4_matmul), here 8 FMA and 3 conversions a
    step, independent of the dots, so only the execution ports they share can slow them.  Returns a lane
    value so nothing is dead."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = zeros_i32()
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = e0 = e1 = e2 = load_f32(f, 0)
    k = load_f32(f, 16)
    wv = load_bytes(w, 0)
    for s in range(steps):
        o = (s & 7) * 4
        for r in range(2):
            a0 = dot_u8s8(a0, wv, broadcast_word(x, o))
            a1 = dot_u8s8(a1, wv, broadcast_word(x, o + 32))
            a2 = dot_u8s8(a2, wv, broadcast_word(x, o + 64))
            a3 = dot_u8s8(a3, wv, broadcast_word(x, o + 96))
            a4 = dot_u8s8(a4, wv, broadcast_word(x, o + 128))
            a5 = dot_u8s8(a5, wv, broadcast_word(x, o + 160))
            a6 = dot_u8s8(a6, wv, broadcast_word(x, o + 192))
            a7 = dot_u8s8(a7, wv, broadcast_word(x, o + 224))
            a8 = dot_u8s8(a8, wv, broadcast_word(x, o + 256))
            a9 = dot_u8s8(a9, wv, broadcast_word(x, o + 288))
            a10 = dot_u8s8(a10, wv, broadcast_word(x, o + 320))
            a11 = dot_u8s8(a11, wv, broadcast_word(x, o + 352))
        if with_f32:
            c0, c1, c2, c3 = fma_f32(c0, k, k), fma_f32(c1, k, k), fma_f32(c2, k, k), fma_f32(c3, k, k)
            c4, c5, c6, c7 = fma_f32(c4, k, k), fma_f32(c5, k, k), fma_f32(c6, k, k), fma_f32(c7, k, k)
            e0, e1, e2 = to_f32(a0), to_f32(a4), to_f32(a8)
    t = add_i32(add_i32(add_i32(a0, a1), add_i32(a2, a3)), add_i32(add_i32(a4, a5), add_i32(a6, a7)))
    t = add_i32(t, add_i32(add_i32(a8, a9), add_i32(a10, a11)))
    c = fma_f32(fma_f32(c0, c1, c2), fma_f32(c3, c4, c5), fma_f32(c6, c7, fma_f32(e0, e1, e2)))
    out = np.empty(16, np.float32)
    store_f32(out, 0, fma_f32(to_f32(t), c, c))  # a sink: the chains are not dead code
    return out[0]


@njit(cache=True)
def _one_thread(w, x, f, steps, with_f32):
    return _dots_loop(w, x, f, steps, with_f32)


@njit(parallel=True, cache=True)
def _all_threads(w, x, f, steps, n):
    done = np.zeros(n, np.float32)
    for i in prange(n):
        done[i] = _dots_loop(w, x, f, steps, False)
    return done.sum()


@njit(cache=True)
def _clock_chain(n):
    """A dependent chain of 3 one-cycle integer operations per step (shift, xor, add)."""
    v = np.uint64(12345)
    for i in range(n):
        v = (v ^ (v >> np.uint64(1))) + np.uint64(i)
    return v


@njit(parallel=True, cache=True)
def _empty_parallel(n):
    out = np.zeros(n, np.int64)
    for i in prange(n):
        out[i] = i
    return out[0]


def best(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(min(ts))


def peak(threads: int) -> dict:
    w = np.random.default_rng(0).integers(0, 16, 64, dtype=np.uint8)
    x = np.random.default_rng(1).integers(0, 256, 512, dtype=np.uint8)
    f = np.full(32, 0.5, np.float32)
    steps = 10_000_000
    _one_thread(w, x, f, 1000, False)
    _one_thread(w, x, f, 1000, True)
    _all_threads(w, x, f, 1000, threads)
    _clock_chain(1000)
    _empty_parallel(threads)
    one, _ = best(lambda: _one_thread(w, x, f, steps, False), 3)
    allt, _ = best(lambda: _all_threads(w, x, f, steps, threads), 3)
    mix, _ = best(lambda: _one_thread(w, x, f, steps, True), 3)
    n = 200_000_000
    chain, _ = best(lambda: _clock_chain(n), 3)
    launch, launch_min = best(lambda: _empty_parallel(threads), 200)
    per = steps * 2 * CHAINS
    ghz = 3 * n / chain / 1e9
    return {"vpdpbusd_per_s_1thread": per / one, "vpdpbusd_per_s_all": per * threads / allt,
            "clock_ghz_from_chain": ghz, "vpdpbusd_per_cycle_core": per / one / (ghz * 1e9),
            "peak_gops_1thread": per * 128 / one / 1e9,
            "mix_vpdpbusd_per_s_1thread": per / mix, "mix_share_of_peak": one / mix, "peak_gops_all": per * threads * 128 / allt / 1e9,
            "parallel_launch_us": launch * 1e6, "parallel_launch_min_us": launch_min * 1e6}


def profile_forward(rt, prompts: list[str]) -> dict:
    """Wall time per label over the prompts' prefills (each a fresh prompt: no prefix reuse): each product
    by role, kind and shape, attention, the K/V write, each row-wise op, the embedding and the RoPE tables;
    ``rest_s`` is the forward's own Python between them."""
    secs: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    T = native_model.Transformer
    orig_mm, orig_fwd = T._mm, T.forward

    def wrap(label, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                secs[label] += time.perf_counter() - t0
                calls[label] += 1
        return timed

    def mm(self, w, x, role, bulk=None):  # bulk: the rows on the variant's bulk path (amx-bf16's bf16 tiles)
        path = "" if bulk is None else " bulk" if bulk.all() else " mixed" if bulk.any() else ""
        return wrap(f"{role} {w.kind} {w.rows}x{w.cols}{path}", orig_mm)(self, w, x, role, bulk)
    T._mm = mm
    T.forward = wrap("forward", orig_fwd)
    row_ops = {name: getattr(ops, name) for name in ("PARALLEL", "SERIAL")}
    for name, bundle in row_ops.items():  # forward picks its bundle by ops.for_rows at every call
        setattr(ops, name, ops.RowOps(**{f: wrap(f, getattr(bundle, f)) for f in attrs.fields_dict(ops.RowOps)}))
    saved = {(mod, name): getattr(mod, name) for mod, name in ((ops, "rope_tables"), (dequant, "embed_rows"))}
    for (mod, name), fn in saved.items():
        setattr(mod, name, wrap(name, fn))
    kv = rt.load_generation_model()[0].kv
    attend, write = kv.attend, kv.write
    kv.attend, kv.write = wrap("attention", attend), wrap("kv write", write)
    rows, prompt_s = 0, 0.0
    try:
        for p in prompts:
            c = rt.generate(p, max_tokens=1, temperature=0.0)
            rows += c.usage.prompt_tokens
            prompt_s += c.timings.prompt_ms / 1e3
    finally:
        T._mm, T.forward = orig_mm, orig_fwd
        for name, bundle in row_ops.items():
            setattr(ops, name, bundle)
        for (mod, name), fn in saved.items():
            setattr(mod, name, fn)
        kv.attend, kv.write = attend, write
    fwd = secs.pop("forward")
    forwards = calls.pop("forward")
    out = {"rows": rows, "prompt_s": prompt_s, "forward_s": fwd, "forwards": forwards,
           "by_label_s": dict(secs), "calls": dict(calls)}
    out["rest_s"] = fwd - sum(secs.values())
    return out


def products_alone(tf, n: int, reps: int) -> list[dict]:
    """Each distinct product of layer 0 and the output, alone, at n rows of x (normal values)."""
    rng = np.random.default_rng(2)
    res = []
    layer = tf.layers[0]
    for name, w in (("wqkv", layer.wqkv), ("wo", layer.wo), ("wgate_up", layer.wgate_up), ("wdown", layer.wdown)):
        x = rng.standard_normal((n, w.cols)).astype(np.float32)
        native_model.product(tf._products, w, x)  # a SplitMatrix runs its pieces one after the other
        med, lo = best(lambda: native_model.product(tf._products, w, x), reps)
        xq, xd = np.empty((n, 2, w.cols), np.uint8), np.empty((n, 2, w.cols // 32), np.float32)
        xi, xs = np.empty((n, 2, w.cols // 32), np.int32), np.empty((n, w.cols // 32), np.float32)
        qfn = matmul_i8.quantize_rows_parallel if n >= matmul_i8.PARALLEL_ROWS else matmul_i8.quantize_rows
        qfn(x, xq, xd, xi, xs)
        qmed, _ = best(lambda: qfn(x, xq, xd, xi, xs), reps)
        ops_ = 2.0 * n * w.rows * w.cols
        res.append({"matrix": name, "kind": w.kind, "rows": w.rows, "cols": w.cols, "n": n,
                    "median_ms": med * 1e3, "min_ms": lo * 1e3, "quantize_ms": qmed * 1e3,
                    "gops": ops_ / med / 1e9, "gops_executed_two_levels": 2 * ops_ / med / 1e9})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json")
    ap.add_argument("--engine", default="native", help="the engine and variant, e.g. native:amx-bf16")
    ap.add_argument("--no-peak", dest="peak", action="store_false", help="skip the int8 peak and clock loops")
    args = ap.parse_args()
    with corert.Runtime(engine=args.engine, model=args.model, n_ctx=2048) as rt:
        PROMPT = default_prompt()
        rt.generate("(0) " + PROMPT, max_tokens=2, temperature=0.0)  # compiles, out of the figures
        tf = rt.load_generation_model()[0].transformer
        threads = get_num_threads()
        result = {"model": args.model, "threads": threads, "variant": tf.variant,
                  "weights_non_embedding": sum(m.rows * m.cols for m in tf.matrices()[1:])}
        result["peak"] = peak(threads) if args.peak else {}
        prof = profile_forward(rt, [f"({i + 1}) {PROMPT}" for i in range(args.rounds)])
        result["prefill"] = prof
        n = prof["rows"] // args.rounds
        step = rt.load_generation_model()[0].prefill_rows  # the session's blocks: the products' row counts
        blocks = [step] * (n // step) + ([n % step] if n % step else [])
        result["blocks"] = blocks
        result["products_alone"] = [r for b in sorted(set(blocks)) for r in products_alone(tf, b, args.reps)]
    per_prompt = {k: v / args.rounds * 1e3 for k, v in prof["by_label_s"].items()}
    print(json.dumps(result["peak"], indent=1))
    print(f"prefill: {prof['rows'] / args.rounds:.0f} rows in blocks {result['blocks']}, prompt "
          f"{prof['prompt_s'] / args.rounds * 1e3:.1f} ms ({prof['rows'] / prof['prompt_s']:.1f} tok/s), forward "
          f"{prof['forward_s'] / args.rounds * 1e3:.1f} ms")
    for k, v in sorted(per_prompt.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<36} {v:8.2f} ms  {prof['calls'][k] // args.rounds:5d} calls")
    print(f"  {'rest':<24} {prof['rest_s'] / args.rounds * 1e3:8.2f} ms")
    for r in result["products_alone"]:
        print(f"  alone {r['matrix']:<9} {r['kind']} {r['rows']}x{r['cols']} n={r['n']}: {r['median_ms']:.3f} ms "
              f"(quantize {r['quantize_ms']:.3f}) {r['gops']:.0f} GOPS ({r['gops_executed_two_levels']:.0f} executed)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
