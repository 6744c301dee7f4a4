"""``corert bench embed`` / ``corert bench classify``: corert against the raw pipeline, in one run.

Sides (same model, same texts, same onnxruntime threads, no spinning, interleaved call by call so the
machine's noise falls on all of them alike):
  raw-stock   onnxruntime + tokenizers written directly on the model file as shipped (pooling in numpy)
  raw-same    the same, on the exact graph corert runs (its q8 preparation): corert's overhead baseline
  corert      the onnx engine's loaded model: ``model.embed(texts)`` / ``model.classify(texts)``
  runtime     the public API, ``Runtime.embed`` / ``Runtime.classify`` (through the scheduler)
Measured: p50/p95 of single-text requests at 16 and 64 tokens ([CLS] and [SEP] included), and
texts/s for batches of 32.  ``--explore`` adds a grid of session options on the raw graph.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

import numpy as np

from corert.interfaces import ThreadBudget
from corert.models.store import ModelStore
from corert.tools.stats import MIN_ROUNDS, ratio_summary
from corert.engines.onnx.config import OnnxConfig, new_session, session_options

DEFAULT_MODEL = {"embed": "minilm-l6", "classify": "intent-minilm"}
GOAL_P95_MS = {"embed": 3.0, "classify": 5.0}
GOAL_RATIO = 1.05

# Real prose: texts of exactly N tokens are word prefixes of these; batch texts are its sentences.
PROSE = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of salt wind. "
    "Every evening the keeper climbed the spiral staircase to light the lamp, even though ships now relied on "
    "satellite navigation. Villagers said the light was a promise rather than a warning. Tourists came in "
    "summer to photograph the tower against the sunset, and in winter the storms kept everyone away. "
    "When the council proposed closing it, the whole village signed a petition within two days. "
    "Can you tell me how to transfer money from my checking account to my savings account? "
    "I need to book a flight from Madrid to Chicago for the second week of March. "
    "What's the weather forecast for the weekend in the mountains? "
    "Please set a reminder to pick up the dry cleaning at five o'clock. "
    "My credit card was declined at the grocery store this morning and I don't know why. "
    "How many calories are in a large slice of pepperoni pizza? "
    "Play the latest album by my favourite band in the kitchen. "
    "The committee will publish its final report on renewable energy subsidies next month. "
    "Researchers found that the new battery chemistry retains ninety percent of its capacity after "
    "three thousand charge cycles, far beyond current lithium-ion cells. "
    "She learned to sail as a child and later crossed the Atlantic alone in a small wooden boat. "
    "Translate 'where is the train station' into Italian for me. "
    "What is the exchange rate between the Japanese yen and the British pound today? "
    "The recipe needs three eggs, a cup of sugar, and a teaspoon of vanilla extract. "
    "Our team shipped the new search feature after fixing a tricky race condition in the indexer. "
    "I lost my phone somewhere in the park; can you help me find it? "
    "The documentary follows a family of elephants across the dry season in northern Kenya. "
    "Is there heavy traffic on the bridge into the city right now? "
    "Cancel my dinner reservation for tonight at the Thai place downtown. "
    "How long should I boil an egg if I want the yolk to stay soft? "
    "The library extended its opening hours during the exam period to help students. "
    "Remind me what meetings I have on my calendar tomorrow afternoon. "
    "What's the minimum payment due on my credit card this month? "
    "The striker scored twice in the second half to secure the championship for her club. "
    "Schedule a maintenance appointment for my car next Tuesday morning. "
    "Tell me a fun fact about octopuses. "
    "Water boils at a lower temperature at high altitude because the air pressure is lower. "
    "Roll a twenty-sided die for my board game. "
    "Find me a good Italian restaurant within walking distance that is open late. "
    "The bakery on the corner sells out of croissants before eight every Saturday. "
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=300, help="single-text requests per side and length (default 300)")
    p.add_argument("--batch-runs", type=int, default=40, help="batch-32 requests per side (default 40)")
    p.add_argument("--warmup", type=int, default=30, help="untimed requests per side first (default 30)")
    p.add_argument("--lengths", default="16,64", help="token lengths of the single-text inputs (default 16,64)")
    p.add_argument("--explore", action="store_true",
                   help="also time session-option combinations on the raw graph (16 tokens)")


# -- inputs --------------------------------------------------------------------------------------------------
def text_of_tokens(tokenizer, n: int) -> str:
    """A real-prose text the tokenizer turns into exactly ``n`` tokens ([CLS] and [SEP] included)."""
    words = PROSE.split()
    for start in range(0, len(words)):
        for end in range(start + 1, len(words) + 1):
            c = tokenizer.count(" ".join(words[start:end]))
            if c == n:
                return " ".join(words[start:end])
            if c > n:
                break
    raise ValueError(f"no prefix of the bench prose has exactly {n} tokens")


def batch_texts(n: int = 32) -> list[str]:
    sents = [s.strip() + "." for s in PROSE.replace("?", ".").split(". ") if s.strip()]
    return [sents[i % len(sents)] for i in range(n)]


# -- sides ---------------------------------------------------------------------------------------------------
def _raw_side(graph_path: str, tokenizer_path: str, max_length: int, threads: ThreadBudget, kind: str,
              pooled: bool, cfg: OnnxConfig | None = None) -> Callable[[list[str]], np.ndarray]:
    """onnxruntime + tokenizers, written directly, as a user would without corert.  ``cfg``: corert's
    session settings (raw-same); None: onnxruntime's defaults, with the same threads and no spinning."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)
    tok.no_padding()
    tok.enable_truncation(max_length)
    if cfg is None:
        sess = ort.InferenceSession(graph_path, session_options(OnnxConfig(), threads),
                                    providers=["CPUExecutionProvider"])
    else:
        sess = new_session(graph_path, cfg, threads)
    out = [sess.get_outputs()[0].name]

    def run(texts: list[str]) -> np.ndarray:
        encs = tok.encode_batch(texts) if len(texts) > 1 else [tok.encode(texts[0])]
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), np.int64)
        mask = np.zeros((len(encs), width), np.int64)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1
        y = sess.run(out, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        if kind == "embed" and not pooled:
            m = mask[:, :, None].astype(np.float32)
            y = (y * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            y = y / np.linalg.norm(y, axis=1, keepdims=True)
        if kind == "classify":  # what a caller needs: the 5 best classes and their probabilities
            top = np.argsort(-y, axis=1)[:, :5]
            return top, np.take_along_axis(y, top, axis=1)
        return y

    return run


def _timed(fn: Callable, texts: list[str]) -> tuple[float, float]:
    """(wall ms, CPU ms of the whole process).  On a shared machine the wall time carries the other
    tenants' noise; the CPU time is what the request cost, i.e. its latency on an idle core."""
    c0, t0 = time.process_time_ns(), time.perf_counter_ns()
    fn(texts)
    return (time.perf_counter_ns() - t0) / 1e6, (time.process_time_ns() - c0) / 1e6


def _interleaved(sides: dict[str, Callable], texts: list[str], runs: int, warmup: int
                 ) -> dict[str, list[tuple[float, float]]]:
    for _ in range(warmup):
        for fn in sides.values():
            fn(texts)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    names = list(sides)
    for i in range(runs):
        for k in names[i % len(names):] + names[:i % len(names)]:  # rotate who goes first
            times[k].append(_timed(sides[k], texts))
    return times


def _stats(samples: list[tuple[float, float]]) -> dict[str, float]:
    wall = np.asarray([w for w, _ in samples])
    cpu = np.asarray([c for _, c in samples])
    return {"p50_ms": float(np.percentile(wall, 50)), "p95_ms": float(np.percentile(wall, 95)),
            "mean_ms": float(wall.mean()), "cpu_p50_ms": float(np.percentile(cpu, 50)), "n": len(samples)}


def _paired(times: dict[str, list[tuple[float, float]]], a: str, b: str) -> dict[str, float]:
    """Median of the per-round ratios a/b: both calls of a round ran within milliseconds of each other,
    under the same outside load, so the ratio cancels the load drift that moves whole medians."""
    wall = [x[0] / y[0] for x, y in zip(times[a], times[b])]
    cpu = [x[1] / y[1] for x, y in zip(times[a], times[b]) if y[1] > 0]
    # the calls cut into MIN_ROUNDS consecutive rounds, a median ratio each: how far the figure moves
    # within one run (single calls' ratios are too noisy to show a min-max of their own)
    rounds = ratio_summary([float(np.median(c)) for c in np.array_split(np.asarray(wall), MIN_ROUNDS) if len(c)])
    return {"wall": float(np.median(wall)), "cpu": float(np.median(cpu)), "wall_range": rounds["range"],
            "wall_rounds": rounds["rounds"]}


def run(args) -> dict[str, Any]:
    from corert.errors import ConfigError
    from corert.engines.onnx.config import default_budget
    from corert.engines.onnx.plugin import make_engine

    kind = args.bench if args.bench in DEFAULT_MODEL else "embed"
    model = getattr(args, "model", None) or DEFAULT_MODEL[kind]
    engine_sel = getattr(args, "engine", None) or "onnx"
    if not engine_sel.startswith("onnx"):
        raise ConfigError(f"bench {kind} runs the onnx engine, not {engine_sel!r}")
    variant = engine_sel.partition(":")[2] or "q8"
    cores = getattr(args, "threads", None) or default_budget().cores
    budget = ThreadBudget(cores=cores, llama_threads=cores, llama_batch_threads=cores, ort_intra_op=cores,
                          ort_inter_op=1, ort_spinning=False, numba_threads=cores)
    path = ModelStore().resolve(model)
    engine = make_engine(variant)
    loaded = engine.load(path, kind, budget)
    call = (lambda t: loaded.embed(t)) if kind == "embed" else (lambda t: loaded.classify(t, top_k=5))
    tok_path = str(path.parent / "tokenizer.json")
    sides: dict[str, Callable] = {
        "raw-stock": _raw_side(str(path), tok_path, loaded.max_length, budget, kind,
                               pooled=kind != "embed"),
        "raw-same": _raw_side(loaded.graph_path, tok_path, loaded.max_length, budget, kind,
                              pooled=getattr(loaded, "pooled", True), cfg=engine.config),
        "corert": call,
    }
    runtime_note, rt = None, None
    try:
        from corert.runtime import Runtime, RuntimeConfig

        rt = Runtime(RuntimeConfig(n_threads=cores, engine="onnx", plugins=getattr(args, "plugin", None) or {}))
        sides["runtime"] = ((lambda t: rt.embed(t, model=model)) if kind == "embed"
                            else (lambda t: rt.classify(t, top_k=5, model=model)))
        sides["runtime"](["warm up"])
        budget_rt = rt.scheduler.thread_budget()
        runtime_note = f"scheduler budget: ort intra {budget_rt.ort_intra_op}, spinning {budget_rt.ort_spinning}"
    except Exception as exc:  # noqa: BLE001 - the Runtime side is extra; report why it is missing
        sides.pop("runtime", None)
        runtime_note = f"Runtime side skipped: {type(exc).__name__}: {exc}"
    load_before = os.getloadavg()[0]
    try:
        result = _measure(args, kind, model, variant, cores, engine, loaded, sides, tok_path)
    finally:
        if rt is not None:
            rt.close()
    result["runtime_note"] = runtime_note
    # other tenants' load explains noisy wall times (the CPU-time column is immune to it)
    result["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def _measure(args, kind, model, variant, cores, engine, loaded, sides, tok_path) -> dict[str, Any]:
    import onnxruntime as ort

    from corert.models.labels import model_label

    lengths = [int(x) for x in str(args.lengths).split(",") if x.strip()]
    single: dict[str, dict[str, Any]] = {}
    for n in lengths:
        text = text_of_tokens(loaded.tokenizer, n)
        times = _interleaved(sides, [text], args.runs, args.warmup)
        single[str(n)] = {"text": text, **{k: _stats(v) for k, v in times.items()},
                          "paired": _paired(times, "corert", "raw-same")}
    texts = batch_texts(32)
    times = _interleaved(sides, texts, args.batch_runs, 3)
    batch = {k: {"texts_per_s": 32 / (st["p50_ms"] / 1e3), **st} for k, st in
             ((k, _stats(v)) for k, v in times.items())}

    first = str(lengths[0])
    result: dict[str, Any] = {
        "bench": kind, "model": model_label(model), "graph": os.path.basename(loaded.graph_path), "variant": variant,
        "onnxruntime": ort.__version__, "threads": {"ort_intra_op": cores, "ort_inter_op": 1, "spinning": False},
        "max_length": loaded.max_length, "runs": args.runs, "single": single, "batch32": batch,
        "ratios": {},
    }
    ratio = lambda a, b, key, n: single[str(n)][a][key] / single[str(n)][b][key]  # noqa: E731
    for n in lengths:
        result["ratios"][f"corert/raw-same p50 @{n}"] = ratio("corert", "raw-same", "p50_ms", n)
        result["ratios"][f"corert/raw-same cpu @{n}"] = ratio("corert", "raw-same", "cpu_p50_ms", n)
        result["ratios"][f"corert/raw-same paired wall @{n}"] = single[str(n)]["paired"]["wall"]
    for n in lengths:
        result["ratios"][f"corert/raw-stock p50 @{n}"] = ratio("corert", "raw-stock", "p50_ms", n)
    result["ratios"]["corert/raw-same batch32 texts/s (higher is better)"] = \
        batch["corert"]["texts_per_s"] / batch["raw-same"]["texts_per_s"]
    result["ratios"]["corert/raw-same batch32 cpu"] = batch["corert"]["cpu_p50_ms"] / batch["raw-same"]["cpu_p50_ms"]
    # The overhead goal is judged on the paired ratio (median over rounds of corert/raw-same, each round's
    # two calls back to back): on a shared machine a ratio of two medians of ~2 ms calls swings by +-10%.
    result["goals"] = {
        f"p95 @{first} tokens <= {GOAL_P95_MS[kind]} ms (wall)":
            single[first]["corert"]["p95_ms"] <= GOAL_P95_MS[kind],
        f"p50 CPU time @{first} tokens <= {GOAL_P95_MS[kind]} ms (~ latency on an idle machine)":
            single[first]["corert"]["cpu_p50_ms"] <= GOAL_P95_MS[kind],
        f"corert/raw-same (paired wall) <= {GOAL_RATIO}": all(
            single[str(n)]["paired"]["wall"] <= GOAL_RATIO for n in lengths),
    }
    if "runtime" in sides:
        for n in lengths:
            result["ratios"][f"runtime/raw-same p50 @{n}"] = ratio("runtime", "raw-same", "p50_ms", n)
            result["ratios"][f"runtime/raw-same cpu @{n}"] = ratio("runtime", "raw-same", "cpu_p50_ms", n)
    if args.explore:
        result["explore"] = explore(loaded.graph_path, tok_path, loaded.max_length, kind,
                                    text_of_tokens(loaded.tokenizer, lengths[0]), cores,
                                    runs=args.runs)
    return result


def explore(graph_path: str, tok_path: str, max_length: int, kind: str, text: str, cores: int,
            runs: int) -> list[dict[str, Any]]:
    """Session options vs single-text latency, all combinations interleaved (same noise for each).  The
    first row is corert's default; each other row changes one or two things from it."""
    default = {"graph_optimization": "all", "intra_op": 1, "mem_pattern": True, "parallel": False,
               "spinning": False, "skip_ln_fusion": False}
    changes = [{}, {"intra_op": cores}, {"skip_ln_fusion": True}, {"skip_ln_fusion": True, "intra_op": cores},
               {"graph_optimization": "extended"}, {"graph_optimization": "basic"},
               {"mem_pattern": False}, {"intra_op": cores, "spinning": True},
               {"intra_op": cores, "parallel": True}]
    combos = [{**default, **c} for c in changes]
    sides = {}
    for i, c in enumerate(combos):
        b = ThreadBudget(cores=cores, llama_threads=1, llama_batch_threads=1, ort_intra_op=c["intra_op"],
                         ort_inter_op=2 if c["parallel"] else 1, ort_spinning=c["spinning"], numba_threads=1)
        cfg = OnnxConfig(graph_optimization=c["graph_optimization"], mem_pattern=c["mem_pattern"],
                         parallel_execution=c["parallel"],
                         disabled_optimizers=() if c["skip_ln_fusion"] else ("SkipLayerNormFusion",))
        sides[str(i)] = _raw_side(graph_path, tok_path, max_length, b, kind, pooled=True, cfg=cfg)
    times = _interleaved(sides, [text], runs, 20)
    return [{**c, **_stats(times[str(i)])} for i, c in enumerate(combos)]


def render(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    lengths = list(r["single"])
    lines = [f"corert bench {r['bench']} — {r['model']} (engine onnx:{r['variant']}, "
             f"onnxruntime {r['onnxruntime']}), "
             f"{r['threads']['ort_intra_op']} intra-op threads, no spinning, max_length {r['max_length']}",
             f"machine: {m.get('cpu', '?')} ({m.get('cores', '?')} cores, {m.get('isa', '?')}), load average "
             f"{' -> '.join(str(x) for x in r.get('load_average_1m', []))} (before -> after)",
             f"single-text requests: {r['runs']} per side and length, interleaved; batch: 32 texts", ""]
    head = f"{'side':<11}" + "".join(f"{f'p50 @{n}':>9}{f'p95 @{n}':>9}{f'cpu @{n}':>9}" for n in lengths) \
        + f"{'batch32 texts/s':>17}"
    lines.append(head)
    for side in r["batch32"]:
        row = f"{side:<11}" + "".join(f"{r['single'][n][side]['p50_ms']:>9.3f}{r['single'][n][side]['p95_ms']:>9.3f}"
                                      f"{r['single'][n][side]['cpu_p50_ms']:>9.3f}" for n in lengths)
        lines.append(row + f"{r['batch32'][side]['texts_per_s']:>17.0f}")
    lines.append("(ms; p50/p95: wall time per request; cpu: median CPU time per request over all threads — with "
                 "one intra-op thread, the latency on an idle core)")
    lines.append("")
    for k, v in r["ratios"].items():
        lines.append(f"{k:<52}{v:>8.3f}")
    for n in lengths:
        p = r["single"][n]["paired"]
        lines.append(f"corert/raw-same paired wall @{n}, per round ({len(p['wall_rounds'])} rounds): "
                     f"min {p['wall_range'][0]:.3f}, max {p['wall_range'][1]:.3f}")
    lines.append("")
    for k, ok in r["goals"].items():
        lines.append(f"goal {k}: {'met' if ok else 'NOT met'}")
    if r.get("runtime_note"):
        lines.append(r["runtime_note"])
    if r.get("explore"):
        lines += ["", f"session options on the graph corert runs ({lengths[0]} tokens, raw pipeline):",
                  f"{'optimization':<13}{'intra':>6}{'mem_pattern':>12}{'parallel':>9}{'spin':>6}"
                  f"{'SkipLN fusion':>14}{'p50':>8}{'p95':>8}"]
        for e in r["explore"]:
            lines.append(f"{e['graph_optimization']:<13}{e['intra_op']:>6}{str(e['mem_pattern']):>12}"
                         f"{str(e['parallel']):>9}{str(e['spinning']):>6}{str(e['skip_ln_fusion']):>14}"
                         f"{e['p50_ms']:>8.3f}{e['p95_ms']:>8.3f}")
    return "\n".join(lines)
