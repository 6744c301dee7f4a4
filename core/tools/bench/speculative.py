"""``corert bench speculative``: plain decoding, llama-cpp-python's own draft paths and corert's speculative
plugin, on the same prompts in one run, greedy.

Sides (each a generator of token ids after a common chat-formatted prompt):
  llama.cpp plain            Llama(target).generate
  llama.cpp prompt lookup    Llama(target, draft_model=LlamaPromptLookupDecoding(...))
  llama.cpp draft model      Llama(target, draft_model=<the 0.5B model through LlamaDraftModel>)
  corert plain / lookup / draft / adaptive / tree   Runtime(plugins={"speculative": ...})
For each prompt every side runs once, in that order, so drift in machine speed hits all sides alike; each
ratio is reported over all tokens and, per prompt (the rounds), as a median and min-max.
Decode tok/s counts tokens after the first over the time after the first (prompt evaluation excluded).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any, Callable, Iterator

import numpy as np

from corert.tools.stats import median, ratio_summary, ratios
from corert.compute import on_compute_thread
from corert.chat import render as render_chat

from corert.tools.prompts import GROUNDED, OPEN_ENDED

TARGET = "qwen2.5-coder-1.5b-instruct"
DRAFT = "qwen2.5-coder-0.5b-instruct"
CORERT_SIDES = {"corert plain": "plain", "corert lookup": "speculative:lookup",
                "corert draft": "speculative:draft", "corert adaptive": "speculative:adaptive",
                "corert tree": "speculative:tree"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draft-model", default=None, help=f"draft model (default {DRAFT} for {TARGET})")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=6, help="prompts per set (default 6)")
    p.add_argument("--sides", default="all", help="comma-separated side names to run (default all)")
    p.add_argument("--no-llama-spec", action="store_true", help="skip llama-cpp-python's own draft paths")


def _timed(gen: Iterator[int], max_tokens: int, is_eog: Callable[[int], bool]) -> dict[str, Any]:
    ids: list[int] = []
    t0 = time.perf_counter()
    t1 = None
    for tok in gen:
        if t1 is None:
            t1 = time.perf_counter()
        if is_eog(int(tok)):
            break
        ids.append(int(tok))
        if len(ids) >= max_tokens:
            break
    t2 = time.perf_counter()
    return {"ids": ids, "first_s": (t1 or t2) - t0, "decode_s": t2 - (t1 or t2)}


def _raw_sides(target_path: str, draft_path: str, threads: int, n_ctx: int, with_spec: bool, flash_attn: bool):
    from llama_cpp.llama_speculative import LlamaDraftModel, LlamaPromptLookupDecoding

    from .raw_llama import eog_test, raw_llama

    class SmallModelDraft(LlamaDraftModel):
        """A draft model for llama-cpp-python's own speculative path: greedy tokens from a smaller Llama."""

        def __init__(self, path: str, num_pred_tokens: int = 8):
            self.llm = raw_llama(path, n_ctx, threads, flash_attn)
            self.k = num_pred_tokens

        def __call__(self, input_ids, /, **kwargs):
            out = []
            for tok in self.llm.generate([int(t) for t in input_ids], temp=0.0):
                out.append(tok)
                if len(out) == self.k:
                    break
            return np.array(out, dtype=np.intc)

    def make(draft=None):
        # llama-cpp-python's draft paths keep logits for every position and overrun a tight context
        # (a broadcast error in Llama.eval), so they get twice the room
        return raw_llama(target_path, n_ctx * (2 if draft else 1), threads, flash_attn, draft_model=draft)

    sides = {"llama.cpp plain": make()}
    if with_spec:
        sides["llama.cpp prompt lookup"] = make(LlamaPromptLookupDecoding(num_pred_tokens=10))
        sides["llama.cpp draft model"] = make(SmallModelDraft(draft_path))
    return sides, eog_test(sides["llama.cpp plain"])


def run(args) -> dict[str, Any]:
    from corert import Runtime
    from corert.config import RuntimeConfig
    from corert.models.gguf_header import read_header
    from corert.models.labels import model_label
    from corert.models.store import ModelStore

    from .layout_warmup import warm as warm_layout

    store = ModelStore(progress=True)
    target = args.model or TARGET
    draft = args.draft_model or DRAFT
    target_path, draft_path = str(store.resolve(target)), str(store.resolve(draft))
    threads = args.threads or 2
    n_ctx = args.ctx or 2048
    wanted = None if args.sides == "all" else {s.strip() for s in args.sides.split(",")}
    template = read_header(target_path, want_arrays=False).metadata.get("tokenizer.chat_template")
    sets = {"grounded": GROUNDED[:args.prompts], "open-ended": OPEN_ENDED[:args.prompts]}
    prompts = {name: [render_chat(template, [{"role": "user", "content": p}]) for p in ps] for name, ps in sets.items()}

    for path in (target_path, draft_path):  # native layouts converted before anything is timed (layout_warmup.py)
        warm_layout(path, args.engine or "llama.cpp", list(args.plugin), label=model_label(path))
    # the raw sides' attention as corert's llama.cpp contexts have it (the runtimes below read the same config)
    flash_attn = RuntimeConfig.from_env().llama.flash_attn
    raw, is_eog = _raw_sides(target_path, draft_path, threads, n_ctx, not args.no_llama_spec, flash_attn)
    runtimes = {name: Runtime(model=target_path, engine=args.engine or "llama.cpp", draft_model=draft_path,
                              n_threads=threads, n_ctx=n_ctx, plugins=[*args.plugin, f"speculative={spec}"])
                for name, spec in CORERT_SIDES.items() if wanted is None or name in wanted}
    warm = render_chat(template, [{"role": "user", "content": "Say hello."}])
    for llm in raw.values():  # page the weights in and compile nothing on the clock
        llm.reset()
        on_compute_thread(_timed, llm.generate(llm.tokenize(warm.encode(), special=True), temp=0.0), 8, is_eog)
    for rt in runtimes.values():
        rt.generate(warm, max_tokens=8, temperature=0.0)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for set_name, ps in prompts.items():
        for i, prompt in enumerate(ps):
            reference = None
            for name, llm in raw.items():
                if wanted is not None and name not in wanted and name != "llama.cpp plain":
                    continue
                ids = llm.tokenize(prompt.encode(), special=True)
                llm.reset()
                try:
                    # on the compute thread, where corert's forwards run too: one OpenMP team
                    r = on_compute_thread(_timed, llm.generate(ids, temp=0.0), args.max_tokens, is_eog)
                except Exception as exc:  # noqa: BLE001 - the competitor's failure is a result, not our crash
                    r = {"ids": [], "first_s": 0.0, "decode_s": 0.0, "error": f"{type(exc).__name__}: {exc}"}
                reference = r["ids"] if name == "llama.cpp plain" else reference
                results.setdefault(name, {}).setdefault(set_name, []).append(r)
            for name, rt in runtimes.items():
                c = rt.generate(prompt, max_tokens=args.max_tokens, temperature=0.0)
                r = {"ids": list(c.token_ids), "first_s": (c.timings.tokenize_ms + c.timings.prompt_ms) / 1e3,
                     "decode_s": c.timings.decode_ms / 1e3, "stats": c.decoder_stats}
                results.setdefault(name, {}).setdefault(set_name, []).append(r)
            # greedy speculation is lossless against plain decoding on the *same* engine; two engines may
            # part at a near tie (documented), so each side is compared with both references
            same_engine = results.get("corert plain", {}).get(set_name, [{}])[-1].get("ids")
            for name in results:
                r = results[name][set_name][-1]
                r["identical_to_plain"] = r["ids"] == reference
                if same_engine is not None and name.startswith("corert"):
                    r["identical_to_corert_plain"] = r["ids"] == same_engine
            print(f"corert bench speculative: {set_name} prompt {i + 1}/{len(ps)} done", file=sys.stderr, flush=True)
        gc.collect()
    for rt in runtimes.values():
        rt.close()
    return _summarize(results, target, draft, threads, args)


def _summarize(results, target, draft, threads, args) -> dict[str, Any]:
    from corert.models.labels import model_label

    out: dict[str, Any] = {"bench": "speculative", "target": model_label(target), "draft": model_label(draft),
                           "threads": threads,
                           "max_tokens": args.max_tokens, "engine": args.engine or "llama.cpp", "sides": {}}
    base = {}
    for name, sets in results.items():
        side: dict[str, Any] = {}
        for set_name, rs in sets.items():
            toks = sum(max(0, len(r["ids"]) - 1) for r in rs)
            secs = sum(r["decode_s"] for r in rs)
            errors = [r["error"] for r in rs if "error" in r]
            entry = {"decode_tok_s": toks / secs if secs > 0 else 0.0, "errors": len(errors),
                     "first_error": errors[0] if errors else None,
                     "median_prompt_decode_tok_s": median([(len(r["ids"]) - 1) / r["decode_s"]
                                                           for r in rs if r["decode_s"] > 0]),
                     "identical_to_llama_plain": f"{sum(r['identical_to_plain'] for r in rs)}/{len(rs)}",
                     "tokens": sum(len(r["ids"]) for r in rs)}
            if all("identical_to_corert_plain" in r for r in rs):
                entry["identical_to_corert_plain"] = f"{sum(r['identical_to_corert_plain'] for r in rs)}/{len(rs)}"
            stats = [r["stats"] for r in rs if "stats" in r and r["stats"].get("drafted") is not None]
            if stats:
                drafted = sum(s["drafted"] for s in stats)
                entry.update(drafted=drafted, accepted=sum(s["accepted"] for s in stats),
                             acceptance_rate=sum(s["accepted"] for s in stats) / drafted if drafted else 0.0,
                             spec_steps=sum(s["spec_steps"] for s in stats), steps=sum(s["steps"] for s in stats),
                             draft_ms=sum(s["draft_ms"] for s in stats), verify_ms=sum(s["verify_ms"] for s in stats))
            side[set_name] = entry
            if name == "llama.cpp plain":
                base[set_name] = entry["decode_tok_s"]
        out["sides"][name] = side
    for name, side in out["sides"].items():
        for set_name, entry in side.items():
            entry["vs_llama_plain"] = entry["decode_tok_s"] / base[set_name] if base.get(set_name) else None
            cp = out["sides"].get("corert plain", {}).get(set_name)
            entry["vs_corert_plain"] = entry["decode_tok_s"] / cp["decode_tok_s"] if cp else None
            # per prompt (every side ran it back to back): the ratios' median and spread
            for key, ref in (("vs_llama_plain", "llama.cpp plain"), ("vs_corert_plain", "corert plain")):
                if ref in results:
                    summary = ratio_summary(ratios(_per_prompt(results[name][set_name]),
                                                   _per_prompt(results[ref][set_name])))
                    entry.update({f"{key}_median": summary["median"], f"{key}_range": summary["range"],
                                  f"{key}_rounds": summary["rounds"]})
    return out


def _per_prompt(rs: list[dict[str, Any]]) -> list[float]:
    """Decode tok/s of each prompt (0 where a side failed or produced one token)."""
    return [(len(r["ids"]) - 1) / r["decode_s"] if r["decode_s"] > 0 else 0.0 for r in rs]


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"corert bench speculative — target {r['target']}, draft {r['draft']}, {r['threads']} threads, "
             f"greedy, {r['max_tokens']} tokens per prompt, corert engine {r['engine']}",
             f"machine: {m['cpu']} ({m['cores']} cores)", ""]
    for set_name in ("grounded", "open-ended"):
        lines.append(f"[{set_name}]")
        lines.append(f"  {'side':<26}{'decode tok/s':>13}{'x llama plain':>15}{'per prompt (min-max)':>23}"
                     f"{'x corert plain':>16}{'accept':>8}{'= llama':>9}{'= corert':>10}")
        for name, side in r["sides"].items():
            e = side.get(set_name)
            if not e:
                continue
            acc = f"{e['acceptance_rate']:.2f}" if "acceptance_rate" in e else "-"
            vl = f"{e['vs_llama_plain']:.2f}" if e["vs_llama_plain"] else "-"
            vc = f"{e['vs_corert_plain']:.2f}" if e["vs_corert_plain"] else "-"
            pp = (f"{e['vs_llama_plain_median']:.2f} ({e['vs_llama_plain_range'][0]:.2f}-"
                  f"{e['vs_llama_plain_range'][1]:.2f})" if e.get("vs_llama_plain_rounds") else "-")
            lines.append(f"  {name:<26}{e['decode_tok_s']:>13.1f}{vl:>15}{pp:>23}{vc:>16}{acc:>8}"
                         f"{e['identical_to_llama_plain']:>9}{e.get('identical_to_corert_plain', '-'):>10}"
                         + (f"  ({e['errors']} failed: {e['first_error'][:60]})" if e.get("errors") else ""))
        lines.append("")
    return "\n".join(lines)
