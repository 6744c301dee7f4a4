"""Child process of the model fuzz test: loads files through one corert reader each and reports how it ended.

    python load_driver.py PRISTINE_GGUF < jobs.jsonl

Each job line is ``{"i": 0, "path": "...", "target": "engine:native"}``; targets are ``tokenizer:bpe``,
``tokenizer:llama_cpp``, ``engine:native`` and ``engine:llama.cpp`` for a GGUF file, ``onnx:VARIANT:TASK``
(e.g. ``onnx:q8:embed``) for a model folder of the onnx engine.  Before a job the driver prints
``S <i>``, after it ``R <i> <json>`` with ``outcome`` "ok", "error:<Class>" (a corert error) or
"traceback:<Class>" (anything else), so the parent can tell which job a signal killed.

An engine job loads the file with the pristine model's tokenizer (the engine is what is judged, not a
tokenizer that would reject the file first), evaluates the prompt and one greedy token: a load that
succeeds has run two forward passes.  An onnx job loads the folder and embeds or classifies one text.
"""
from __future__ import annotations

import json
import sys
import traceback

import numpy as np

PROMPT = "hi"


class Driver:
    def __init__(self, pristine: str):
        from corert import Runtime

        self.pristine = pristine
        self._runtimes: dict[str, Runtime] = {}
        self._tokenizers: dict[str, object] = {}

    def runtime(self, engine: str):
        from corert import Runtime

        if engine not in self._runtimes:
            self._runtimes[engine] = Runtime(engine=engine, n_ctx=64)
        return self._runtimes[engine]

    def tokenizer(self, name: str, path: str):
        rt = self.runtime("native")
        res = rt.host.resolve("tokenizer", name, engine="native")
        return rt.host.create(res, model_path=path, config=rt.config)

    def pristine_tokenizer(self, engine: str):
        name = "llama_cpp" if engine == "llama.cpp" else "bpe"
        if name not in self._tokenizers:
            self._tokenizers[name] = self.tokenizer(name, self.pristine)
        return self._tokenizers[name]

    def run(self, target: str, path: str) -> None:
        area, name = target.split(":", 1)
        if area == "onnx":
            from corert.engines.onnx.plugin import make_engine

            variant, task = name.split(":")
            model = make_engine(variant).load(path, task)
            (model.embed if task == "embed" else model.classify)([PROMPT])
            return
        if area == "tokenizer":
            tok = self.tokenizer(name, path)
            ids = tok.encode(PROMPT)
            tok.decode(ids)
            return
        rt = self.runtime(name)
        tok = self.pristine_tokenizer(name)
        kv = rt.host.create(rt.resolve("kv_cache"), engine=name, model=path, config=rt.config)
        eng = rt.host.create(rt.resolve("engine"), config=rt.config)
        loaded = eng.load(path, tokenizer=tok, kv_cache=kv, n_ctx=rt.config.n_ctx,
                          threads=rt.scheduler.thread_budget(), config=rt.config)
        try:
            sess = loaded.session()
            logits = sess.eval(tok.encode(PROMPT))
            sess.eval([int(np.argmax(logits))])
        finally:
            loaded.close()


def main() -> int:
    from corert.errors import CorertError

    driver = Driver(sys.argv[1])
    out = sys.stdout
    for line in sys.stdin:
        job = json.loads(line)
        out.write(f"S {job['i']}\n")
        out.flush()
        try:
            driver.run(job["target"], job["path"])
            result = {"outcome": "ok"}
        except CorertError as exc:
            result = {"outcome": f"error:{type(exc).__name__}", "message": str(exc)}
        except BaseException as exc:  # noqa: BLE001 - exactly what the fuzz test looks for (pyo3 panics too)
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            result = {"outcome": f"traceback:{type(exc).__name__}", "message": str(exc)[:300],
                      "where": f"{tb.filename}:{tb.lineno} {tb.name}"}
        out.write(f"R {job['i']} {json.dumps(result)}\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
