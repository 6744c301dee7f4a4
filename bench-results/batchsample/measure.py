"""Driver time per step of 8 greedy (or sampled) streams on the bench's model and store."""
import sys, time, json
from types import SimpleNamespace
import numpy as np
from corert.runtime import Runtime, RuntimeConfig
from corert.interfaces import SamplingParams
from corert.engines.native.batching import BatchRunner
from corert.tools.bench.batch import PROMPTS

temp = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
rt = Runtime(RuntimeConfig.from_env(), engine="native", plugins=["kv_cache=paged:q8"], n_ctx=512)
path = str(rt.model_path())
kv = rt.host.create(rt.resolve("kv_cache", "native"), engine="native", model=path, config=rt.config)
eng = rt.host.create(rt.resolve("engine", "native"), config=rt.config)
m = eng.load(path, tokenizer=rt.tokenizer(engine="native"), kv_cache=kv, n_ctx=512,
             threads=rt.scheduler.thread_budget(), config=SimpleNamespace(n_seqs=8))
ids = [m.tokenizer.encode(p) for p in PROMPTS]
import corert.engines.native.batching as B
rp = B.run_parallel
acc = {"f": 0.0}
def timed(fn, *a, **k):
    def inner(*a2):
        t = time.perf_counter()
        try:
            return fn(*a2)
        finally:
            acc["f"] += time.perf_counter() - t
    return rp(inner, *a, **k)
B.run_parallel = timed
params = SamplingParams(max_tokens=128, temperature=temp, seed=1)
BatchRunner(m, share_prefixes=False).run(ids[:1], SamplingParams(max_tokens=4, temperature=temp, seed=1))
def _old_candidates(logits, params):
    k = params.top_k if 0 < params.top_k < logits.shape[0] else logits.shape[0]
    ids = np.argpartition(logits, -k)[-k:] if k < logits.shape[0] else np.arange(logits.shape[0])
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    z = logits[ids].astype(np.float64) / max(params.temperature, 1e-6)
    p = np.exp(z - z[0]); p /= p.sum()
    if 0.0 < params.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), params.top_p) + 1)
        ids, p = ids[:keep], p[:keep] / p[:keep].sum()
    return ids, p
def old_choose(samplers, logits, rows):  # the per-stream numpy path before this change
    out = []
    for s, r in zip(samplers, rows):
        if s.greedy:
            out.append(int(np.argmax(logits[r])))
        else:
            ids, p = _old_candidates(logits[r], s.params)
            out.append(int(ids[s.rng.choice(p.shape[0], p=p)]))
    return out
new_choose = B.choose_rows
res = []
for k in range(rounds):
    mode = "old" if k % 2 == 0 else "new"
    B.choose_rows = old_choose if mode == "old" else new_choose
    r = BatchRunner(m, share_prefixes=False)
    for p in ids: r.add(p, params, is_eog=lambda t: False)
    while r.streams and any(r.streams[s].done_upto < len(r.streams[s].tokens) - 1 for s in r.streams):
        r.step()  # prompts
    import cProfile, pstats
    prof = cProfile.Profile() if len(sys.argv) > 3 else None
    if prof: prof.enable()
    acc["f"] = 0.0; wall = cpu = 0.0; n = 0
    while r.active:
        t, c = time.perf_counter(), time.thread_time()
        r.step()
        wall += time.perf_counter() - t; cpu += time.thread_time() - c; n += 1
    if prof:
        prof.disable(); pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    res.append({"mode": mode, "steps": n, "step_ms": 1e3 * wall / n, "forward_ms": 1e3 * acc["f"] / n,
                "driver_wall_ms": 1e3 * (wall - acc["f"]) / n, "driver_cpu_ms": 1e3 * cpu / n,
                "tok_s": 8 * n / wall})
    print(json.dumps({k2: (round(v, 3) if isinstance(v, float) else v) for k2, v in res[-1].items()}), flush=True)
for mode in ("old", "new"):
    rs = [r for r in res if r["mode"] == mode]
    print(mode, "median driver_cpu_ms", float(np.median([r["driver_cpu_ms"] for r in rs])),
          "median driver_wall_ms", float(np.median([r["driver_wall_ms"] for r in rs])))
m.close(); rt.close()
