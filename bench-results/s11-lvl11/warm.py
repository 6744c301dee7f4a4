"""Loads each model on the native engine and runs the bench prompt once: numba compiles (or loads from its cache)
every kernel the timed runs will take, before a quiet slot."""
import sys, warnings
warnings.simplefilter("ignore")
from corert import Runtime
from corert.tools.bench.generate import default_prompt
for model in sys.argv[1:]:
    with Runtime(model=model, engine="native", n_ctx=2048) as rt:
        rt.generate("(0) " + default_prompt(), max_tokens=4, temperature=0.0)
    print(model, "warm", flush=True)
