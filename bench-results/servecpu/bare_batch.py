"""Ad-hoc: CPU ms per token of an in-process Runtime, 8 concurrent streams (threads), as the server's worker runs it."""
import os, sys, time, threading, json
from corert.runtime import Runtime, RuntimeConfig
from corert.tools.bench.serve import PROMPTS
cfg = RuntimeConfig.from_env(None).evolve(engine=os.environ.get("ENG", "native"), n_seqs=8, n_threads=2, isolation="none", **({"plugins": {"kv_cache": "paged:q8"}} if os.environ.get("ENG", "native") == "native" else {}))
rt = Runtime(cfg)
def one(i, n, out):
    k = 0
    for c in rt.stream(PROMPTS[i], max_tokens=n, temperature=0.0, ignore_eos=True):
        k += len(c.token_ids)
    out.append(k)
def round_(n):
    out = []; ts = [threading.Thread(target=one, args=(i, n, out)) for i in range(8)]
    t0 = time.perf_counter(); c0 = sum(os.times()[:2])
    [t.start() for t in ts]; [t.join() for t in ts]
    return sum(out), time.perf_counter() - t0, sum(os.times()[:2]) - c0
round_(8)
for r in range(3):
    toks, wall, c = round_(128)
    print(json.dumps({"tok_s": round(toks / wall, 1), "ms_tok": round(c * 1e3 / toks, 3), "tokens": toks, "load": os.getloadavg()[0]}))
