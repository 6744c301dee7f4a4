"""``corert perplexity``: perplexity of a model over a text file and, with a reference side, position by
position KL divergence KL(reference || tested) and top-1 agreement — the native engine's quality gate,
like llama.cpp's ``perplexity --kl-divergence``.

The text is tokenized once (the tested side's tokenizer) and cut into chunks of ``--ctx`` tokens; each
chunk is evaluated from an empty KV cache, its first token replaced by BOS when the model adds one (as
llama.cpp's perplexity tool does).  By default only the second half of each chunk is scored, so every
scored position has at least ctx/2 tokens of context (llama.cpp's convention); ``--score all`` scores every
position but the last.  Both sides see exactly the same ids; they run one after the other in this process.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from corert.errors import InputError
from corert.models.labels import model_label

DEFAULT_CHUNK = 512
#: Rows of logits asked for at a time (bounds memory: 128 x 152k vocabulary x 4 bytes = 78 MB).
EVAL_BATCH = 128
#: A llama.cpp reference runs at llama.cpp's most precise settings unless --ref-plugin picks a cache: K/V in
#: f32 and flash attention off.  Its f16 cache also rounds Q and the attention weights to f16 in the CPU
#: kernels, and flash attention (the llama.cpp engine's default) casts K/V to f16 whatever the cache type;
#: on gemma3-270m llama.cpp's own settings differ from each other by KL 0.006 (top-1 0.94-0.96), more than
#: the native engine differs from any of them (docs/benchmarks.md).
PRECISE_LLAMA_KV = "kv_cache=llama_cpp:f32"
PRECISE_LLAMA = {"flash_attn": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", "-f", required=True, help="text file to score")
    parser.add_argument("--ref-engine", help="reference engine (e.g. llama.cpp): adds kld_mean and top1_agree")
    parser.add_argument("--ref-plugin", action="append", default=[], metavar="AREA=NAME[:VARIANT]",
                        help="plugin selection of the reference side (repeatable; a llama.cpp reference "
                             "keeps K/V in f32 without flash attention unless a kv_cache is given)")
    parser.add_argument("--score", choices=("second-half", "all"), default="second-half",
                        help="positions of each chunk that are scored (default: second half, like llama.cpp)")
    parser.add_argument("--max-chunks", type=int, default=0, help="stop after this many chunks (0: all)")


def _runtime(args: argparse.Namespace, engine: str | None, plugins: list[str], **sub_configs: Any):
    from corert.runtime import Runtime, RuntimeConfig

    over: dict[str, Any] = {"plugins": plugins, **sub_configs}
    if getattr(args, "model", None):
        over["model"] = args.model
    if engine:
        over["engine"] = engine
    if getattr(args, "threads", None):
        over["n_threads"] = args.threads
    over["n_ctx"] = max(_chunk(args), 64)
    base = RuntimeConfig.from_toml(args.config) if getattr(args, "config", None) else RuntimeConfig()
    return Runtime(RuntimeConfig.from_env(base), **over)


def _ref_runtime(args: argparse.Namespace):
    plugins = list(args.ref_plugin)
    if args.ref_engine != "llama.cpp" or any(p.split("=", 1)[0].strip() == "kv_cache" for p in plugins):
        return _runtime(args, args.ref_engine, plugins)
    return _runtime(args, args.ref_engine, plugins + [PRECISE_LLAMA_KV], llama=PRECISE_LLAMA)


def _chunk(args: argparse.Namespace) -> int:
    return int(getattr(args, "ctx", None) or DEFAULT_CHUNK)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _chunk_logits(session, ids: list[int]) -> np.ndarray:
    session.truncate(0)
    parts = [np.array(session.eval(ids[a:a + EVAL_BATCH], all_logits=True), dtype=np.float32, copy=True)
             for a in range(0, len(ids), EVAL_BATCH)]
    return np.concatenate(parts)


def run(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.file)
    if not path.is_file():
        raise InputError(f"no such text file: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    n_ctx = _chunk(args)
    if n_ctx < 16:
        raise InputError(f"--ctx must be at least 16 tokens, got {n_ctx}")
    rt = _runtime(args, getattr(args, "engine", None), list(getattr(args, "plugin", []) or []))
    # a reference side exists when either --ref-engine or --ref-plugin is given; its engine defaults to
    # the tested one, so `--plugin kv_cache=paged:q8 --ref-plugin kv_cache=contiguous` compares caches
    if args.ref_plugin and not args.ref_engine:
        args.ref_engine = rt.config.engine
    ref_rt = _ref_runtime(args) if args.ref_engine else None
    try:
        loaded, lock = rt.load_generation_model()
        tok = loaded.tokenizer
        ids = tok.encode(text, add_bos=False)
        n_chunks = len(ids) // n_ctx
        if args.max_chunks:
            n_chunks = min(n_chunks, args.max_chunks)
        if n_chunks == 0:
            raise InputError(f"{path} has {len(ids)} tokens, fewer than one chunk of --ctx {n_ctx}")
        ref = ref_rt.load_generation_model() if ref_rt is not None else None
        if ref is not None and ref[0].n_vocab != loaded.n_vocab:
            raise InputError(f"the reference has {ref[0].n_vocab} logits per position, the tested model "
                             f"{loaded.n_vocab}: they are not the same vocabulary")
        first = n_ctx // 2 if args.score == "second-half" else 0
        nll, ref_nll, kld, agree = [], [], [], []
        seconds = {"tested": 0.0, "reference": 0.0}
        for c in range(n_chunks):
            chunk = ids[c * n_ctx:(c + 1) * n_ctx]
            if tok.add_bos and tok.bos_id is not None:
                chunk = [tok.bos_id] + chunk[1:]
            target = np.array(chunk[first + 1:])
            t0 = time.perf_counter()
            with lock:
                lp = _log_softmax(_chunk_logits(loaded.session(), chunk)[first:-1])
            seconds["tested"] += time.perf_counter() - t0
            nll.append(-lp[np.arange(len(target)), target])
            if ref is not None:
                t0 = time.perf_counter()
                with ref[1]:
                    lr = _log_softmax(_chunk_logits(ref[0].session(), chunk)[first:-1])
                seconds["reference"] += time.perf_counter() - t0
                ref_nll.append(-lr[np.arange(len(target)), target])
                kld.append((np.exp(lr) * (lr - lp)).sum(axis=-1))
                agree.append(lr.argmax(axis=-1) == lp.argmax(axis=-1))
    finally:
        rt.close()
        if ref_rt is not None:
            ref_rt.close()
    nll_all = np.concatenate(nll)
    result: dict[str, Any] = {
        # names, not paths: results are committed and compared across machines
        "model": model_label(loaded.path, rt.store), "file": path.name, "engine": rt.generation_engine(),
        "plugins": rt.active_plugins(), "ctx": n_ctx, "chunks": n_chunks, "scored": args.score,
        "tokens": int(nll_all.size), "ppl": float(np.exp(nll_all.mean())),
        "ref_engine": ref_rt.generation_engine() if ref_rt is not None else None,
        "ref_ppl": None, "kld_mean": None, "top1_agree": None,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    if ref is not None:
        k = np.concatenate(kld)
        result.update({
            "ref_plugins": ref_rt.active_plugins(),
            "ref_ppl": float(np.exp(np.concatenate(ref_nll).mean())),
            "kld_mean": float(k.mean()), "kld_p99": float(np.percentile(k, 99)), "kld_max": float(k.max()),
            "top1_agree": float(np.concatenate(agree).mean())})
    return result


def render(result: dict[str, Any]) -> str:
    lines = [f"perplexity of {result['model']} on {result['file']}",
             f"  {result['tokens']} scored tokens ({result['chunks']} chunks of {result['ctx']}, "
             f"{result['scored']})",
             f"  {result['engine']:<12} ppl {result['ppl']:.4f}   ({result['seconds']['tested']:.1f} s)"]
    if result.get("ref_ppl") is not None:
        lines += [f"  {result['ref_engine']:<12} ppl {result['ref_ppl']:.4f}   "
                  f"({result['seconds']['reference']:.1f} s)",
                  f"  KL(ref || tested): mean {result['kld_mean']:.5f}  p99 {result['kld_p99']:.5f}  "
                  f"max {result['kld_max']:.5f}",
                  f"  top-1 agreement {result['top1_agree']:.4f}"]
    return "\n".join(lines)
