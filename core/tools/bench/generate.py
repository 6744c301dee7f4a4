"""``corert bench generate``: raw llama-cpp-python vs corert on the same model, prompt, settings and threads.

Each side runs in its own process (so its peak RSS is its own); rounds are interleaved raw, corert, raw, …
Every round's prompt is new (a round number up front), so no side reuses another round's cached prefix.
The default prompt is ~450 tokens of the packaged corpus: a 42-token prompt took 27-31 ms on corert's side
and 51-91 ms on llama.cpp's, and at that length the VM's noise and each side's fixed cost per call swung the
prompt ratio 1.3x-2.7x between rounds and runs (session 8, bench-results/s8-gemma18).
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from corert.models.store import ModelStore
from corert.tools.corpus import corpus_file
from corert.models.labels import model_label
from .layout_warmup import warm
from .sides import SideProcess
from corert.tools.stats import MIN_ROUNDS, format_ratio, median, ratio_summary, ratios, spread

#: the default prompt: an instruction, then this many words of the corpus' licence text (~450 tokens for the
#: registry models' tokenizers: one batch of llama.cpp's default 512, hundreds of ms on either side)
CORPUS_WORDS = 330
CORPUS_TEXT = "license-apache2.txt"


def default_prompt() -> str:
    """The same text wherever corert runs (the corpus ships inside the package), whitespace runs as one space."""
    words = corpus_file(CORPUS_TEXT).read_text(encoding="utf-8").split()
    return ("Explain in plain words, section by section, what this licence text says:\n\n"
            + " ".join(words[:CORPUS_WORDS]))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=5, help=f"rounds per side, at least {MIN_ROUNDS} (default 5)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens generated per round (default 128)")
    p.add_argument("--prompt", default=None,
                   help=f"the prompt (default: an instruction and the first {CORPUS_WORDS} words of the packaged "
                        f"corpus' {CORPUS_TEXT}, ~450 tokens)")


def run(args) -> dict[str, Any]:
    from corert.runtime import RuntimeConfig

    if args.rounds < MIN_ROUNDS:
        from corert.errors import InputError

        raise InputError(f"--rounds must be at least {MIN_ROUNDS}: the ratio's spread needs several rounds")
    cfg = RuntimeConfig.from_env(RuntimeConfig.from_toml(args.config) if getattr(args, "config", None) else None)
    model = args.model or cfg.model
    path = str(ModelStore(progress=True).resolve(model))
    engine = args.engine or cfg.engine
    n_ctx = args.ctx or cfg.n_ctx
    plugins = [f"{area}={value}" for area, value in cfg.plugins.items()] + list(args.plugin or [])
    text = args.prompt if args.prompt is not None else default_prompt()
    warmup = warm(path, engine, plugins, getattr(args, "config", None), label=model_label(model))
    corert = SideProcess("corert", {"side": "corert", "model_path": path, "engine": engine,
                                    "plugins": plugins, "threads": args.threads or cfg.n_threads, "n_ctx": n_ctx})
    threads = corert.info["threads"]
    raw = SideProcess("raw", {"side": "raw", "model_path": path, "threads": threads, "n_ctx": n_ctx,
                              "flash_attn": corert.info["flash_attn"]})
    rounds: dict[str, list[dict[str, Any]]] = {"raw": [], "corert": []}
    try:
        for i in range(args.rounds + 1):  # round 0 warms both sides up and is not counted
            prompt = f"({i + 1}) {text}"
            for name, side in (("raw", raw), ("corert", corert)):
                r = side.call({"cmd": "run", "prompt": prompt, "max_tokens": args.max_tokens})
                if i > 0:
                    rounds[name].append(r)
        rss = {name: side.call({"cmd": "rss"})["peak_rss_bytes"] for name, side in
               (("raw", raw), ("corert", corert))}
    finally:
        raw.close()
        corert.close()
    size = os.path.getsize(path)
    per_round = {name: {"decode": [r["decode_tokens"] / r["decode_s"] if r["decode_s"] > 0 else 0.0 for r in rs],
                        "prompt": [r["prompt_tokens"] / r["prompt_s"] if r["prompt_s"] > 0 else 0.0 for r in rs]}
                 for name, rs in rounds.items()}
    sides = {}
    for name, rs in rounds.items():
        # a round whose first token ended the generation decoded nothing: it has no decode speed (not 0)
        dec = [r["decode_tokens"] / r["decode_s"] for r in rs if r["decode_s"] > 0 and r["decode_tokens"] > 0]
        pro = [r["prompt_tokens"] / r["prompt_s"] for r in rs if r["prompt_s"] > 0]
        sides[name] = {"decode_tok_s": median(dec), "decode_tok_s_range": spread(dec),
                       "prompt_tok_s": median(pro), "prompt_tok_s_range": spread(pro),
                       # every round's figures, so a ratio's swing shows which side moved
                       "prompt_tokens": rs[0]["prompt_tokens"], "prompt_ms_rounds": [1e3 * r["prompt_s"] for r in rs],
                       "prompt_tok_s_rounds": per_round[name]["prompt"], "decode_tok_s_rounds": per_round[name]["decode"],
                       "peak_rss_mb": rss[name] / 2**20, "memory_ratio": rss[name] / size}
    # the ratio of each round (both sides ran back to back), then their median and spread
    decode = ratio_summary(ratios(per_round["corert"]["decode"], per_round["raw"]["decode"]))
    prompt = ratio_summary(ratios(per_round["corert"]["prompt"], per_round["raw"]["prompt"]))
    same = sum(a["ids"] == b["ids"] for a, b in zip(rounds["raw"], rounds["corert"]))
    return {
        "bench": "generate", "model": model_label(model), "model_file_mb": size / 2**20,
        "engine": corert.info.get("engine") or engine, "engine_requested": engine,
        "plugins": corert.info.get("plugins"), "flash_attn": corert.info["flash_attn"], "threads": threads, "gomp_spincount": corert.info.get("gomp_spincount"),
        "spin_load": corert.info.get("spin_load"),
        # converted before timing (layout_warmup.py); the measured side's own load then writes none
        "layout_warmup": warmup, "layouts_written_by_corert_side": corert.info.get("layouts_written"),
        "rounds": args.rounds, "prompt": "caller" if args.prompt is not None else f"corpus {CORPUS_TEXT}, {CORPUS_WORDS} words",
        "prompt_tokens": sides["corert"]["prompt_tokens"], "max_tokens": args.max_tokens, "raw": sides["raw"], "corert": sides["corert"],
        "decode_ratio": decode["median"], "decode_ratio_range": decode["range"],
        "decode_ratio_rounds": decode["rounds"],
        "prompt_ratio": prompt["median"], "prompt_ratio_range": prompt["range"],
        "prompt_ratio_rounds": prompt["rounds"],
        "identical_output_rounds": f"{same}/{args.rounds}",
    }


def _spin_why(r: dict[str, Any]) -> str:
    load = r.get("spin_load")
    if not load:
        return ""
    return (f" (at start-up other processes used {load['others_cpus']} CPUs, tasks waited for one "
            f"{load['stall_pct']}% of {1e3 * load['window_s']:.0f} ms)")


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"corert bench generate — {r['model']} ({r['model_file_mb']:.0f} MB), engine {r['engine']}, "
             f"{r['threads']} threads, {r['rounds']} rounds x {r['max_tokens']} tokens, greedy, "
             f"prompt {r['prompt_tokens']} tokens ({r['prompt']})",
             f"machine: {m['cpu']} ({m['cores']} cores, {m['isa']})",
             f"corert plugins: {r['plugins']}   GOMP_SPINCOUNT: {r.get('gomp_spincount')}{_spin_why(r)}",
             f"flash attention (llama.cpp, both sides): {'on' if r.get('flash_attn') else 'off'}", "",
             f"{'side':<10}{'decode tok/s':>14}{'(min-max)':>18}{'prompt tok/s':>14}{'peak RSS MB':>13}{'RSS/model':>11}"]
    for name in ("raw", "corert"):
        s = r[name]
        lo, hi = s["decode_tok_s_range"]
        label = "llama-cpp" if name == "raw" else "corert"
        lines.append(f"{label:<10}{s['decode_tok_s']:>14.1f}{f'({lo:.1f}-{hi:.1f})':>18}{s['prompt_tok_s']:>14.1f}"
                     f"{s['peak_rss_mb']:>13.0f}{s['memory_ratio']:>11.2f}")
    decode, prompt = ({"median": r[f"{k}_ratio"], "range": r[f"{k}_ratio_range"], "rounds": r[f"{k}_ratio_rounds"]}
                      for k in ("decode", "prompt"))
    lines += ["", f"decode ratio corert/raw, median of the rounds' ratios: {format_ratio(decode)}",
              f"prompt ratio: {format_ratio(prompt)}   identical greedy output: {r['identical_output_rounds']} rounds"]
    return "\n".join(lines)
