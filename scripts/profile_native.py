"""Where the native engine's forward spends its time: each matrix product by kind and shape, attention, and
the rest, for one prefill and a few decode steps of a model.

Thread CPU time at one numba thread, not wall time: on a machine shared with other work the figures stay
comparable between two runs (two trees, before and after a change), where wall-clock benches do not.  The
products, attention and forward are wrapped in this process only, by attribute; nothing is changed on disk.

    .venv/bin/python scripts/profile_native.py qwen2.5-coder-0.5b-instruct --prompt-words 400 --decode 32
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import corert
from corert.engines.native import model as native_model


class Clock:
    """Seconds per label (thread CPU time unless ``timer`` says otherwise: verify_curve.py takes wall time),
    and the rows the forwards evaluated."""

    def __init__(self, timer=time.thread_time) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.rows = 0
        self.timer = timer

    def wrap(self, label_of, fn):
        def timed(*args, **kwargs):
            t0 = self.timer()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label_of(*args)] += self.timer() - t0
        return timed

    def report(self, what: str) -> None:
        forward = self.seconds.pop("forward", 0.0)
        print(f"{what}: {self.rows} rows, forward {forward * 1e3:.1f} ms "
              f"({forward / max(self.rows, 1) * 1e3:.2f} ms/row)")
        for label, s in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            print(f"  {label:<28} {s * 1e3:9.1f} ms  {s / forward:6.1%}")
        print(f"  {'rest (norms, rope, ...)':<28} {(forward - sum(self.seconds.values())) * 1e3:9.1f} ms")
        self.seconds.clear()
        self.rows = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--prompt-words", type=int, default=300, help="the prefill's prompt, in words")
    ap.add_argument("--decode", type=int, default=32, help="decode steps timed after the prefill")
    args = ap.parse_args()
    clock = Clock()
    T = native_model.Transformer
    T._mm = clock.wrap(lambda self, w, x, *role: f"{w.kind} {w.rows}x{w.cols}", T._mm)
    forward = T.forward

    def counted_forward(self, ids, *rest, **kwargs):
        clock.rows += len(ids)
        return clock.wrap(lambda *a: "forward", forward)(self, ids, *rest, **kwargs)
    T.forward = counted_forward
    words = " ".join(f"item{i} follows item{i - 1} in the list;" for i in range(args.prompt_words // 5 + 1))
    with corert.Runtime(engine="native", model=args.model, n_threads=1) as rt:
        rt.generate("warm up", max_tokens=2, temperature=0)  # numba's compiles, out of the figures
        kv = rt.load_generation_model()[0].kv
        kv.attend = clock.wrap(lambda *a: "attention", kv.attend)
        clock.seconds.clear()
        clock.rows = 0
        rt.generate(words, max_tokens=1, temperature=0)
        clock.report("prefill")
        # a short prompt (its few rows are in the figures) and then one row per step
        rt.generate("Write a long story about a lighthouse keeper.", max_tokens=args.decode, temperature=0)
        clock.report("decode")


if __name__ == "__main__":
    main()
