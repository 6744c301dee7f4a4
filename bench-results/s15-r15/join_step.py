"""Times the batch steps where a 300-token prompt joins 7 decoding streams (SmolLM2, native engine, paged:q8,
prefill_rows 256: a step of 7 decode rows + 256 prompt rows, then one of 7 + 44), the steps whose row order
item 3 changes; run by each tree's python in turn (`python join_step.py [REPEATS]`), prints JSON."""
import json
import sys
import time
import warnings

warnings.simplefilter("ignore")
from corert.interfaces import SamplingParams  # noqa: E402
from corert.runtime import Runtime  # noqa: E402
from corert.tools.bench import batch  # noqa: E402
from corert.tools.corpus import corpus_file  # noqa: E402

repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
rt = Runtime(model="smollm2-135m-instruct", engine="native", plugins=["kv_cache=paged:q8"], n_ctx=512)
m = batch._native(rt, str(rt.model_path()), 8, 512)
ids = [m.tokenizer.encode(p) for p in batch.PROMPTS]
long = m.tokenizer.encode(corpus_file("license-apache2.txt").read_text(encoding="utf-8"))[:300]
params = SamplingParams(max_tokens=16, temperature=0.0)
ms = []
for k in range(repeats + 1):
    r = batch._native_runner(m)
    for p in ids[:7]:
        r.add(p, params, is_eog=lambda t: False)
    for _ in range(3):
        r.step()
    r.add(long, params, is_eog=lambda t: False)
    t = []
    for _ in range(2):
        t0 = time.perf_counter()
        r.step()
        t.append(1e3 * (time.perf_counter() - t0))
    while r.active:
        r.step()
    if k:  # the first: warm-up
        ms.append(t)
print(json.dumps({"variant": m.transformer.variant, "step_ms": ms}))
m.close()
rt.close()
