"""Where one continuous-batching step of the native engine spends its wall time, at 1 and N streams: the
products by matrix role, the KV store's writes and attention, the row-wise ops (norms, RoPE, residual adds,
gates), the embedding lookup, the page reservation, sampling and the rest of the step (Python).

With ``--drafts 0,1,3`` every stream also verifies that many draft rows a step (speculation inside the batch,
as `bench batch --speculative`'s steps: drafting, acceptance and the rollback of the rejected rows' K/V
included); the drafts are the stream's own last tokens, so most are rejected and a stream still advances a
token or so a step, as plain decoding does.  ``--grounded``: `bench batch --speculative`'s prompts and model
(their long contexts are what its verify rows attend to).

`corert bench batch`'s set-up (its prompts, greedy, paged:q8, n_ctx 512, the scheduler's numba threads) and
wall time (the step is what the streams wait for; thread CPU time would miss the pool's threads).  Each part
is wrapped, in this process only, by attribute; the wrappers cost ~1 us a call, so the step is also timed
unwrapped (``step_ms_bare``).  The products quantize their activations inside the same kernel call, so
``quantize`` is timed apart, on the same shapes and with the same kernels a product of that many rows uses.

    .venv/bin/python scripts/profile_batch.py --streams 1,8 --steps 96 --json out.json
    .venv/bin/python scripts/profile_batch.py --grounded --streams 8 --drafts 0,1,2,3,4 --steps 24 --json out.json
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np

from corert.engines.native import batching, dequant, matmul_i8, ops
from corert.engines.native import model as native_model
from corert.interfaces import SamplingParams
from corert.tools.bench.batch import PROMPTS, _native
from corert.tools.bench.batch_speculative import DEFAULT_MODEL, grounded_ids


class Clock:
    """Wall seconds per label over the timed steps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.on = False

    def wrap(self, label_of, fn):
        def timed(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                label = label_of(*args)
                self.seconds[label] += time.perf_counter() - t0
                self.calls[label] += 1
        return timed


def install(clock: Clock, kv) -> None:
    T = native_model.Transformer
    T._mm = clock.wrap(lambda self, w, x, role: f"product {role}", T._mm)
    T.forward = clock.wrap(lambda *a: "forward", T.forward)
    kv.write = clock.wrap(lambda *a: "kv write (q8 coding + stores)", kv.write)
    kv.attend = clock.wrap(lambda *a: "attention (q8 pages)", kv.attend)
    for bundle in (ops.SERIAL, ops.PARALLEL):
        for name in ("rmsnorm", "split_qkv", "add_rmsnorm", "gated"):
            object.__setattr__(bundle, name, clock.wrap(lambda *a, n=name: f"ops {n}", getattr(bundle, name)))
    dequant.embed_rows = clock.wrap(lambda *a: "embedding rows", dequant.embed_rows)
    batching.choose_rows = clock.wrap(lambda *a: "sampling (choose_rows)", batching.choose_rows)
    batching.reserve_rows = clock.wrap(lambda *a: "kv reserve (pages, ids)", batching.reserve_rows)


class FixedDrafts:
    """A BatchSpeculation (corert.interfaces) drafting ``depth`` rows for every stream every step: the stream's
    last tokens, a real verify step's shape and work whatever is accepted."""

    def __init__(self, depth: int):
        self.depth = depth

    def stream(self, prompt_ids, params, rng):
        return _Drafter()

    def draft(self, streams, base_rows, base_tokens):
        return [d.take(list(tokens[-self.depth:]) if room >= self.depth else []) for d, tokens, room in streams]

    def record_step(self, rows, seconds):
        pass


class _Drafter:
    def __init__(self):
        self.drafts: list[int] = []

    def take(self, drafts: list[int]) -> list[int]:
        self.drafts = drafts
        return drafts

    def settle(self, rows):
        from corert.plugins.speculative.acceptance import accept_greedy
        return accept_greedy(self.drafts, rows)

    def finish(self) -> None:
        pass


def decode_steps(model, prompts, n: int, steps: int, clock: Clock, timed: bool, drafts: int = 0) -> list[float]:
    """Wall ms of each of ``steps`` decode steps of ``n`` streams (after every stream's prompt), each stream
    verifying ``drafts`` draft rows a step."""
    runner = batching.BatchRunner(model, share_prefixes=False)
    ids = prompts[:n]
    # room for every step whatever is accepted; the streams are cancelled after the timed steps
    params = SamplingParams(max_tokens=model.n_ctx - max(len(p) for p in ids) - 1, temperature=0.0)
    spec = {"speculation": FixedDrafts(drafts)} if drafts else {}
    sids = [runner.add(p, params, is_eog=lambda t: False, **spec) for p in ids]
    while not all(runner.streams[s].generated for s in sids):
        runner.step()
    out = []
    clock.on = timed
    for _ in range(steps):
        t0 = time.perf_counter()
        runner.step()
        out.append(1e3 * (time.perf_counter() - t0))
    clock.on = False
    for sid in sids:
        runner.cancel(sid)
    return out


def quantize_ms(n: int, cols: int, reps: int = 400) -> float:
    """One product's activation quantization (two levels) of n rows of ``cols``: the kernel matmul_i8._levels
    runs for that many rows."""
    x = np.random.default_rng(0).standard_normal((n, cols)).astype(np.float32)
    xq, xd = np.empty((n, 2, cols), np.uint8), np.empty((n, 2, cols // 32), np.float32)
    xi, xs = np.empty((n, 2, cols // 32), np.int32), np.empty((n, cols // 32), np.float32)
    fn = matmul_i8.quantize_rows_parallel if n >= matmul_i8.PARALLEL_ROWS else matmul_i8.quantize_rows
    fn(x, xq, xd, xi, xs)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x, xq, xd, xi, xs)
    return 1e3 * (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--steps", type=int, default=96, help="decode steps timed per stream count")
    ap.add_argument("--drafts", default="0", help="draft rows per stream a step (comma list)")
    ap.add_argument("--grounded", action="store_true",
                    help="bench batch --speculative's prompts and default model (n_ctx 1024)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--engine", default="native", help="native or native:VARIANT")
    ap.add_argument("--json", default=None, help="write the table here too")
    args = ap.parse_args()
    from corert.runtime import Runtime, RuntimeConfig
    from corert.compute import on_compute_thread
    from corert.numba_setup import set_threads

    counts = [int(c) for c in args.streams.split(",")]
    depths = [int(c) for c in args.drafts.split(",")]
    n_ctx = 1024 if args.grounded else 512
    over = {"engine": args.engine, "plugins": ["kv_cache=paged:q8"], "n_ctx": n_ctx}
    if args.model or args.grounded:
        over["model"] = args.model or DEFAULT_MODEL
    rt = Runtime(RuntimeConfig.from_env(None), **over)
    model = _native(rt, str(rt.model_path()), max(counts), n_ctx)
    if args.grounded:
        from corert.tools.prompts import GROUNDED, GROUNDED_MORE

        prompts = grounded_ids(model, str(rt.model_path()), len(GROUNDED + GROUNDED_MORE), n_ctx // 2)
    else:
        prompts = [model.tokenizer.encode(p) for p in PROMPTS]
    threads = model.threads
    clock = Clock()
    install(clock, model.kv)
    cfg = model.transformer.cfg
    result = {"model": str(rt.model_path().name), "threads": threads, "steps": args.steps, "rows": {}}
    try:
        for k in depths:  # warm-up: compiles, caches
            decode_steps(model, prompts, max(counts), 2, clock, False, k)
        for n, k in [(n, k) for n in counts for k in depths]:
            bare = decode_steps(model, prompts, n, args.steps, clock, False, k)
            clock.seconds.clear()
            clock.calls.clear()
            wrapped = decode_steps(model, prompts, n, args.steps, clock, True, k)
            per = {k: 1e3 * s / args.steps for k, s in clock.seconds.items()}
            fwd = per.pop("forward")
            inside = sum(v for k, v in per.items() if k not in ("sampling (choose_rows)", "kv reserve (pages, ids)"))
            per["forward rest (Python, buffers, output norm)"] = fwd - inside
            step = float(np.median(wrapped))
            per["step rest (planning, bookkeeping, Python)"] = float(np.mean(wrapped)) - fwd - \
                per.get("sampling (choose_rows)", 0.0) - per.get("kv reserve (pages, ids)", 0.0)

            def q(cols, rows=n * (k + 1)):
                return on_compute_thread(lambda: (set_threads(threads), quantize_ms(rows, cols))[1])
            layers = cfg.n_layers
            per["  of the products: quantize (est.)"] = layers * (3 * q(cfg.d_model) + q(cfg.d_ff)) + q(cfg.d_model)
            result["rows"][f"{n}x{k + 1}"] = {"streams": n, "drafts": k, "step_ms_bare_median": float(np.median(bare)),
                                             "step_ms_wrapped_median": step,
                                 "step_ms_wrapped_mean": float(np.mean(wrapped)), "forward_ms": fwd,
                                 "parts_ms": per,
                                 "calls_per_step": {k: c / args.steps for k, c in clock.calls.items()}}
    finally:
        model.close()
        rt.close()
    for n, r in result["rows"].items():
        print(f"{r['streams']} streams x {r['drafts'] + 1} rows: step {r['step_ms_bare_median']:.2f} ms bare (median), {r['step_ms_wrapped_mean']:.2f} "
              f"wrapped (mean), forward {r['forward_ms']:.2f}")
        for k, v in sorted(r["parts_ms"].items(), key=lambda kv: -kv[1]):
            print(f"  {k:<48} {v:7.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
