"""``corert bench grammar``: what structured output costs per generated token.

Two figures, in one process on one loaded model:
- the mask itself: the constrained output's tokens are replayed on a session, and at each step the same
  logits go through a Sampler with the grammar (fill llguidance's bitmask, apply it, advance the matcher)
  and through a plain greedy Sampler; the difference is the grammar's ms per token;
- end to end: decode ms/token of the constrained request against an unconstrained one of the same length
  (rounds interleaved; their per-round ratio, median and spread).
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from corert.models.labels import model_label
from corert.tools.stats import MIN_ROUNDS, format_ratio, median, ratio_summary, ratios, spread

PROMPT = "<|im_start|>user\nDescribe three pets as a JSON object.<|im_end|>\n<|im_start|>assistant\n"
SCHEMA = {"type": "object", "properties": {
    "pets": {"type": "array", "maxItems": 3, "items": {
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                         "age": {"type": "integer", "minimum": 0, "maximum": 40},
                                         "kind": {"enum": ["cat", "dog", "fish", "bird"]}},
        "required": ["name", "age", "kind"], "additionalProperties": False}}},
    "required": ["pets"], "additionalProperties": False}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=5, help=f"rounds, at least {MIN_ROUNDS} (default 5)")
    p.add_argument("--max-tokens", type=int, default=96, help="tokens per request at most (default 96)")


def run(args) -> dict[str, Any]:
    from corert.errors import InputError
    from corert.interfaces import SamplingParams
    from corert.prefill import prefill
    from corert.request_params import sampling_params
    from corert.runtime import Runtime, RuntimeConfig
    from corert.sampling import Sampler

    if args.rounds < MIN_ROUNDS:
        raise InputError(f"--rounds must be at least {MIN_ROUNDS}: the ratio's spread needs several rounds")
    cfg = RuntimeConfig.from_env(RuntimeConfig.from_toml(args.config) if getattr(args, "config", None) else None)
    overrides = {k: v for k, v in {"model": args.model, "engine": args.engine, "n_threads": args.threads,
                                   "n_ctx": args.ctx}.items() if v}
    rt = Runtime(cfg, plugins=list(args.plugin or []), **overrides)
    fmt = {"type": "json_schema", "json_schema": {"name": "pets", "schema": SCHEMA}}
    try:
        tok = rt.tokenizer()
        t0 = time.perf_counter()
        params = sampling_params(lambda: tok, max_tokens=args.max_tokens, temperature=0, response_format=fmt)
        compile_ms = (time.perf_counter() - t0) * 1e3  # the first one also builds the vocabulary's trie
        constrained = rt.generate(PROMPT, max_tokens=args.max_tokens, temperature=0, response_format=fmt)
        n = len(constrained.token_ids)
        loaded, lock = rt.load_generation_model()
        guided_ms, plain_ms = [], []
        with lock:  # replay: the same logits through both samplers, step by step
            session = loaded.session()
            logits = prefill(session, tok.encode(PROMPT, parse_special=True))
            guided, plain = Sampler(params), Sampler(SamplingParams(temperature=0))
            for _ in range(n + 1):  # + the end-of-generation token the grammar forces
                a = time.perf_counter()
                token = guided(logits)
                b = time.perf_counter()
                plain(logits)
                c = time.perf_counter()
                guided_ms.append((b - a) * 1e3)
                plain_ms.append((c - b) * 1e3)
                if tok.is_eog(token):
                    break
                logits = session.eval((token,))
        per_token = {"constrained": [], "free": []}
        for _ in range(args.rounds):
            for name, options in (("constrained", {"response_format": fmt}), ("free", {})):
                out = rt.generate(PROMPT, max_tokens=n, temperature=0, **options)
                t = out.timings
                per_token[name].append(t.decode_ms / t.decode_tokens if t.decode_tokens else 0.0)
    finally:
        rt.close()
    mask = [g - p for g, p in zip(guided_ms, plain_ms)]
    ratio = ratio_summary(ratios(per_token["constrained"], per_token["free"]))
    return {"bench": "grammar", "model": model_label(rt.config.model), "engine": rt.config.engine,
            "vocab": tok.vocab_size, "rounds": args.rounds, "tokens": n, "valid_json_stop":
            constrained.finish_reason == "stop", "compile_ms": compile_ms,
            "mask_ms_per_token": median(mask), "mask_ms_range": spread(mask),
            "plain_sampler_ms_per_token": median(plain_ms),
            "decode_ms_per_token": {k: median(v) for k, v in per_token.items()},
            "decode_ratio": ratio["median"], "decode_ratio_range": ratio["range"],
            "decode_ratio_rounds": ratio["rounds"]}


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    d = r["decode_ms_per_token"]
    lo, hi = r["mask_ms_range"]
    return "\n".join([
        f"corert bench grammar — {r['model']} ({r['vocab']} tokens), engine {r['engine']}, {r['rounds']} rounds "
        f"x {r['tokens']} tokens, greedy, a JSON schema",
        f"machine: {m['cpu']} ({m['cores']} cores, {m['isa']})", "",
        f"schema compile (first: + vocabulary trie): {r['compile_ms']:.0f} ms",
        f"grammar mask + advance per token: {r['mask_ms_per_token']:.3f} ms (min-max {lo:.3f}-{hi:.3f}); "
        f"plain greedy sampler {r['plain_sampler_ms_per_token']:.3f} ms",
        f"decode ms/token: constrained {d['constrained']:.2f}, free {d['free']:.2f}",
        f"decode time ratio constrained/free: {format_ratio({'median': r['decode_ratio'], 'range': r['decode_ratio_range'], 'rounds': r['decode_ratio_rounds']})}",
    ])
