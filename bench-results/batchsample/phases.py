"""Greedy 8 streams: the driver's thread CPU per step by phase (plan+draft, building rows, reserve, hop, choose, take)."""
import time, json
from types import SimpleNamespace
import numpy as np
from corert.runtime import Runtime, RuntimeConfig
from corert.interfaces import SamplingParams
import corert.engines.native.batching as B
from corert.tools.bench.batch import PROMPTS
import sys
temp = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
rt = Runtime(RuntimeConfig.from_env(), engine="native", plugins=["kv_cache=paged:q8"], n_ctx=512)
path = str(rt.model_path())
kv = rt.host.create(rt.resolve("kv_cache", "native"), engine="native", model=path, config=rt.config)
eng = rt.host.create(rt.resolve("engine", "native"), config=rt.config)
m = eng.load(path, tokenizer=rt.tokenizer(engine="native"), kv_cache=kv, n_ctx=512,
             threads=rt.scheduler.thread_budget(), config=SimpleNamespace(n_seqs=8))
ids = [m.tokenizer.encode(p) for p in PROMPTS]
acc = {}
def wrap(obj, name, key):
    f = getattr(obj, name)
    def g(*a, **k):
        c = time.thread_time()
        try:
            return f(*a, **k)
        finally:
            acc[key] = acc.get(key, 0.0) + time.thread_time() - c
    setattr(obj, name, g)
wrap(B.BatchRunner, "_plan", "plan")
wrap(B.BatchRunner, "_draft", "draft")
wrap(B, "reserve_rows", "reserve")
wrap(B, "run_parallel", "hop (driver side)")
wrap(B, "choose_rows", "choose_rows")
wrap(B.Stream, "take", "take")
params = SamplingParams(max_tokens=128, temperature=temp, seed=1)
B.BatchRunner(m, share_prefixes=False).run(ids[:1], SamplingParams(max_tokens=4, temperature=temp))
for k in range(3):
    r = B.BatchRunner(m, share_prefixes=False)
    for p in ids: r.add(p, params, is_eog=lambda t: False)
    while any(r.streams[s].done_upto < len(r.streams[s].tokens) - 1 for s in r.streams):
        r.step()
    acc.clear(); n = 0; cpu = 0.0
    while r.active:
        c = time.thread_time(); r.step(); cpu += time.thread_time() - c; n += 1
    out = {k2: round(1e3 * v / n, 3) for k2, v in acc.items()}
    out["step total"] = round(1e3 * cpu / n, 3)
    out["rest of step"] = round(out["step total"] - sum(v for k2, v in out.items() if k2 != "step total"), 3)
    print(json.dumps(out), flush=True)
m.close(); rt.close()
