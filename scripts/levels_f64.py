"""KL divergence of the native engine's variants from an independent float64 forward (the tests' reference,
tests/test_native_engine.py: gguf-py's dequantized weights, numpy f64), on the first N tokens of the packaged
apache licence: what one int8 activation level (vnni-q8, vnni-q8ffn) costs against two (vnni), and what the
f16 KV cache costs against f32 (``--kv f16``; the default is the exact f32 cache).  ``--bulk``: every row on
the variant's bulk path (amx-bf16's bf16 tiles; a prompt's rows but its last take it), logits included: the
bound of what that path costs.

    .venv/bin/python scripts/levels_f64.py qwen2.5-coder-1.5b-instruct 64 vnni vnni-q8 vnni-q8ffn --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tokens", type=int)
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--kv", default="f32", choices=("f16", "f32"), help="the contiguous KV cache's dtype")
    ap.add_argument("--bulk", action="store_true", help="every row on the variant's bulk path (model.forward's bulk)")
    ap.add_argument("--json")
    args = ap.parse_args()
    from corert.models.store import ModelStore
    from test_native_engine import _kld, _load, reference_logits, TEXT

    path = str(ModelStore().resolve(args.model))
    out = {"model": args.model, "tokens": args.tokens, "text": "license-apache2.txt", "kv": args.kv,
           "bulk": args.bulk, "variants": {}}
    ref = None
    for v in args.variants:
        m = _load(path, variant=v, n_ctx=max(64, args.tokens), kv=args.kv)
        try:
            ids = m.tokenizer.encode(TEXT)[:args.tokens]
            got = _bulk_logits(m, ids) if args.bulk else m.session().eval(ids, all_logits=True)
        finally:
            m.close()
        if ref is None:
            ref = reference_logits(path, ids)
        k = _kld(ref, got)
        out["variants"][v] = {"kl_mean": float(k.mean()), "kl_max": float(k.max()),
                              "top1_vs_f64": float((got.argmax(-1) == ref.argmax(-1)).mean())}
        print(args.model, v, out["variants"][v], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


def _bulk_logits(m, ids) -> np.ndarray:
    """Every row's logits of ``ids`` in one forward with every row on the bulk path."""
    from corert.interfaces import reserve_rows
    from corert.numba_setup import PARALLEL_LOCK, run_parallel

    arr = np.asarray(ids, np.int32)
    seq = m.kv.new_sequence()
    seq_ids = np.full(arr.size, seq, np.int32)
    positions = np.arange(arr.size, dtype=np.int32)
    with PARALLEL_LOCK:
        reserve_rows(m.kv, seq_ids, positions, arr)
        return run_parallel(m.transformer.forward, arr, seq_ids, positions, m.kv, np.arange(arr.size), None,
                            np.ones(arr.size, np.bool_), threads=m.threads)


if __name__ == "__main__":
    main()
