"""``corert bench kv``: memory of the paged KV cache (q8 / f16 / f32 pages) against the contiguous f32
reference, on a real model's dimensions (read from its GGUF header), plus what compaction buys.

Rows:
  bytes per cached token       K and V, every layer, per page dtype (q8 must be <= 0.27x f32)
  4k-token sequences in budget sequences of 4,096 tokens reserved in one store under --budget until the
                               store refuses (the real bookkeeping; contiguous: its fixed slots)
  shared 1,000-token prompt    pages held by 8 requests whose prompts share 1,000 tokens (prefix pages
                               stored once) vs one request, after the prompt and after 32 generated tokens
  compaction                   attention time over 8 decode rows whose pages were interleaved by decoding
                               side by side (scattered) vs after compact(), and what compact() costs
The memory rows are exact accounting of the store the native engine uses; only the timing row is noisy.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from corert.errors import InputError
from corert.tools.stats import MIN_ROUNDS, format_ratio, median, ratio_summary, ratios

DTYPES = ("q8", "f16", "f32")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", default="1G", help="KV byte budget for the capacity row (default 1G)")
    p.add_argument("--seq-tokens", type=int, default=4096, help="tokens per sequence, capacity row")
    p.add_argument("--shared-prompt", type=int, default=1000, help="shared prompt tokens (default 1000)")
    p.add_argument("--requests", type=int, default=8, help="requests sharing the prompt (default 8)")
    p.add_argument("--page-tokens", type=int, default=16)
    p.add_argument("--compaction-tokens", type=int, default=1024,
                   help="tokens per sequence in the compaction timing (default 1024)")


def _dims(model: str | None, config: str | None = None) -> dict[str, Any]:
    from corert.models.labels import model_label
    from corert.engines.native.model import ModelConfig
    from corert.models.gguf_header import read_header
    from corert.models.store import ModelStore
    from corert.runtime import RuntimeConfig

    name = model or RuntimeConfig.from_env(RuntimeConfig.from_toml(config) if config else None).model
    path = ModelStore(progress=True).resolve(name)
    cfg = ModelConfig.from_header(read_header(path, want_arrays=False))
    return {"model": model_label(name), "n_layers": cfg.n_layers, "n_kv_heads": cfg.n_kv_heads,
            "n_heads": cfg.n_heads, "head_dim": cfg.head_dim}


def _capacity(cfg, d, budget: int, seq_tokens: int) -> int:
    from corert.plugins.kv_cache.paged.store import PagedKVStore, page_bytes

    per_seq = -(-seq_tokens // cfg.page_tokens) * page_bytes(cfg, d["n_layers"], d["n_kv_heads"], d["head_dim"])
    store = PagedKVStore(cfg, d["n_layers"], d["n_kv_heads"], d["head_dim"], seq_tokens,
                         n_seqs=budget // per_seq + 2)
    n = 0
    while n < store.n_seqs:  # reserve whole sequences until the pool is full (the store's own accounting:
        s = store.new_sequence()  # the next one evicts an idle sequence or is refused)
        try:
            store.reserve(np.full(seq_tokens, s, np.int32), np.arange(seq_tokens, dtype=np.int32))
        except InputError:
            return n
        if store.counters["evictions"]:
            return n
        n += 1
    return n


def _shared(cfg, d, prompt: int, requests: int, generated: int) -> dict[str, Any]:
    from corert.plugins.kv_cache.paged.store import PagedKVStore

    total = prompt + generated + 1
    store = PagedKVStore(cfg, d["n_layers"], d["n_kv_heads"], d["head_dim"], total + 1, n_seqs=requests)
    rng = np.random.default_rng(0)
    common = rng.integers(0, 30000, prompt).tolist()
    one = None
    for r in range(requests):
        s = store.new_sequence()
        ids = common + [30000 + r]  # each request's own question after the shared prompt
        have = store.match_prefix(s, ids)
        rest = ids[have:] + rng.integers(0, 30000, generated).tolist()
        store.reserve(np.full(len(rest), s, np.int32), np.arange(have, have + len(rest), dtype=np.int32),
                      token_ids=np.asarray(rest))
        if r == 0:
            one = store.stats()["bytes_used"]
    st = store.stats()
    return {"generated": generated, "one_request_bytes": one, "all_bytes": st["bytes_used"],
            "ratio": st["bytes_used"] / one, "shared_pages": st["shared_pages"],
            "prefix_hit_rate": st["prefix_hit_rate"]}


def _compaction(d, tokens: int, page_tokens: int, rounds: int = 2 * MIN_ROUNDS - 1) -> dict[str, Any]:
    from corert.plugins.kv_cache.paged.config import PagedConfig
    from corert.plugins.kv_cache.paged.store import PagedKVStore

    L, KV, H, hd = d["n_layers"], d["n_kv_heads"], d["n_heads"], d["head_dim"]
    n = 8

    def decoded_side_by_side() -> PagedKVStore:
        store = PagedKVStore(PagedConfig("q8", page_tokens=page_tokens), L, KV, hd, tokens, n_seqs=n)
        for _ in range(n):
            store.new_sequence()
        step = 4  # decoding side by side: every sequence grows a little per step, pages interleave
        for t0 in range(0, tokens, step):
            sid = np.repeat(np.arange(n, dtype=np.int32), step)
            pos = np.tile(np.arange(t0, t0 + step, dtype=np.int32), n)
            store.reserve(sid, pos)
        kv = (np.random.default_rng(0).standard_normal((store.n_pages, KV, page_tokens, hd)) * 30).astype(np.int8)
        store.k[:], store.v[:] = kv, kv  # synthetic values: only the memory access pattern matters here
        store.ks[:] = store.vs[:] = np.float16(0.01).view(np.uint16)
        return store

    # two identical stores, one compacted, so both layouts are timed turn by turn
    store, compacted = decoded_side_by_side(), decoded_side_by_side()
    rng = np.random.default_rng(1)
    q = rng.standard_normal((n, H, hd)).astype(np.float32)
    out = np.empty_like(q)
    sid, pos = np.arange(n, dtype=np.int32), np.full(n, tokens - 1, np.int32)

    def timed(kv) -> float:
        t = time.perf_counter()
        for layer in range(L):
            kv.attend(layer, sid, pos, q, 0.125, out)
        return time.perf_counter() - t

    timed(store)  # compile / warm the caches
    scattered = store.fragmentation()
    t = time.perf_counter()
    compacted.compact()
    cost = time.perf_counter() - t
    timed(store)
    scattered_out = out.copy()
    timed(compacted)
    identical = bool(np.array_equal(scattered_out, out))  # compaction moves pages, never changes a result
    times: dict[str, list[float]] = {"scattered": [], "compacted": []}
    for k in range(rounds):
        for name in (("scattered", "compacted") if k % 2 == 0 else ("compacted", "scattered")):
            times[name].append(timed(store if name == "scattered" else compacted))
    speedup = ratio_summary(ratios(times["scattered"], times["compacted"]))
    return {"tokens_per_seq": tokens, "sequences": n, "scattered": scattered,
            "compacted": compacted.fragmentation(), "attend_ms_scattered": median(times["scattered"]) * 1e3,
            "attend_ms_compacted": median(times["compacted"]) * 1e3, "speedup": speedup["median"],
            "speedup_range": speedup["range"], "speedup_rounds": speedup["rounds"],
            "compact_ms": cost * 1e3, "outputs_identical": identical}


def run(args) -> dict[str, Any]:
    from corert.plugins.kv_cache.paged.config import PagedConfig, parse_bytes
    from corert.plugins.kv_cache.paged.store import page_bytes

    d = _dims(getattr(args, "model", None), getattr(args, "config", None))
    budget = parse_bytes(args.budget)
    contiguous_tok = 2 * d["n_layers"] * d["n_kv_heads"] * d["head_dim"] * 4
    rows = {"contiguous": {"bytes_per_token": contiguous_tok, "vs_f32": 1.0,
                           "seqs_in_budget": budget // (args.seq_tokens * contiguous_tok)}}
    for dt in DTYPES:
        cfg = PagedConfig(dtype=dt, page_tokens=args.page_tokens, budget_bytes=budget)
        per_tok = page_bytes(cfg, d["n_layers"], d["n_kv_heads"], d["head_dim"]) / cfg.page_tokens
        rows[dt] = {"bytes_per_token": per_tok, "vs_f32": per_tok / contiguous_tok,
                    "seqs_in_budget": _capacity(cfg, d, budget, args.seq_tokens)}
    cfg = PagedConfig(dtype="q8", page_tokens=args.page_tokens)
    shared = [_shared(cfg, d, args.shared_prompt, args.requests, g) for g in (0, 32)]
    comp = _compaction(d, args.compaction_tokens, args.page_tokens)
    q8_ok = rows["q8"]["vs_f32"] <= 0.27
    share_ok = shared[0]["ratio"] <= 1.2
    return {"dims": d, "budget_bytes": budget, "seq_tokens": args.seq_tokens, "page_tokens": args.page_tokens,
            "dtypes": rows, "shared_prompt": args.shared_prompt, "requests": args.requests, "shared": shared,
            "compaction": comp,
            "goals": {"q8_bytes_le_0.27x_f32": q8_ok, "shared_prompt_le_1.2x": share_ok},
            "exit_code": 0 if q8_ok and share_ok else 1}


def render(r: dict[str, Any]) -> str:
    d = r["dims"]
    lines = [f"KV cache memory on {d['model']} ({d['n_layers']} layers x {d['n_kv_heads']} KV heads x "
             f"{d['head_dim']}), pages of {r['page_tokens']} tokens; machine: {r['machine']['cpu']} "
             f"({r['machine']['cores']} cores)",
             f"  {'layout':<12} {'bytes/token':>12} {'vs f32':>8} {r['seq_tokens']}-token seqs in "
             f"{r['budget_bytes'] / 2**30:.2f} GiB"]
    for name, row in r["dtypes"].items():
        label = name if name == "contiguous" else f"paged:{name}"
        lines.append(f"  {label:<12} {row['bytes_per_token']:>12,.0f} {row['vs_f32']:>7.3f}x "
                     f"{row['seqs_in_budget']:>6}")
    for s in r["shared"]:
        lines.append(f"  {r['requests']} requests sharing a {r['shared_prompt']}-token prompt, +{s['generated']} "
                     f"generated each: {s['all_bytes'] / 2**20:.1f} MiB vs one request "
                     f"{s['one_request_bytes'] / 2**20:.1f} MiB = {s['ratio']:.2f}x "
                     f"(shared pages {s['shared_pages']}, prefix hit rate {s['prefix_hit_rate']:.2f})")
    c = r["compaction"]
    lines.append(f"  compaction ({c['sequences']} seqs x {c['tokens_per_seq']} tokens decoded side by side): "
                 f"scatter {c['scattered']['scatter']:.2f} -> {c['compacted']['scatter']:.2f}; attention over all "
                 f"layers {c['attend_ms_scattered']:.2f} ms -> {c['attend_ms_compacted']:.2f} ms (medians; "
                 f"{format_ratio({'median': c['speedup'], 'range': c['speedup_range'], 'rounds': c['speedup_rounds']}, 2)}"
                 f", layouts timed in turn), compact() took {c['compact_ms']:.1f} ms, outputs identical: "
                 f"{c['outputs_identical']}")
    lines.append("  goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in r["goals"].items()))
    lines.append("  (timings on a shared 2-core machine are noisy; memory rows are exact accounting)")
    return "\n".join(lines)
