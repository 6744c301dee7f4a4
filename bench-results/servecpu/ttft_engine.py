"""Ad-hoc: engine-level time to first token, 1 prompt alone vs 8 prompts together (in-process, native paged:q8)."""
import os, time, threading, json, statistics
from corert.runtime import Runtime, RuntimeConfig
from corert.tools.bench.serve import PROMPTS
cfg = RuntimeConfig.from_env(None).evolve(engine="native", n_seqs=8, n_threads=2, isolation="none", plugins={"kv_cache": "paged:q8"})
rt = Runtime(cfg)
tok = rt.tokenizer()
print("prompt tokens", [len(tok.encode(p, parse_special=True)) for p in PROMPTS[:8]])
def first(i, out, t0):
    for c in rt.stream(PROMPTS[i], max_tokens=2, temperature=0.0, ignore_eos=True):
        if c.token_ids:
            out.append(time.perf_counter() - t0); break
def round_(n):
    out = []; t0 = time.perf_counter()
    ts = [threading.Thread(target=first, args=(i, out, t0)) for i in range(n)]
    [t.start() for t in ts]; [t.join() for t in ts]
    return max(out)
round_(1); round_(8)
one, eight = [], []
for r in range(5):
    one.append(round_(1)); eight.append(round_(8))
print(json.dumps({"ttft1_ms": [round(x*1e3, 1) for x in one], "ttft8_max_ms": [round(x*1e3, 1) for x in eight],
                  "ratio_median": round(statistics.median(eight) / statistics.median(one), 2), "load": os.getloadavg()[0]}))
