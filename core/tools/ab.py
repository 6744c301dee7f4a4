"""``corert ab`` / ``corert.tools.ab.compare``: two plugin sets on one workload, interleaved, with quality gates.

A host app promotes an optimization only after seeing, on its own workload, that it is faster and changes
results by no more than a stated bound.  A and B run in one process, alternating A B A B …, so drift in
the machine's speed hits both alike.  Per metric: medians, the B/A ratio and its spread (min-max of the
per-round ratios).  The gates that apply are those of the areas that differ between A and B:

  tokenizer      identical ids on every input
  kv_cache       KL(A ‖ B) mean and top-1 agreement of next-token distributions over real text
  engine         the same, with the engine bounds
  speculative    greedy output identical, and a sampling distribution test (chi-square, two samples)
  scheduler      B's p95 request latency within a bound of A's

``corert ab`` exits 1 when a gate fails (2 on bad input), so it can gate a plugin in a host app's CI.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import numpy as np

from corert.auto_engine import AUTO
from corert.models.labels import model_label
from corert.tools.stats import median, percentile
from corert.tools.corpus import corpus_texts
from corert.errors import ConfigError, InputError
from corert.implementation import AREAS
from corert.plugin_host import parse_selections

WORKLOADS = ("generate", "tokenize", "embed", "classify", "perplexity")

DEFAULT_PROMPTS = (
    "Explain in two sentences why the sky is blue.",
    "Write a Python function that reverses a string.",
    "List three uses of a paperclip.",
)
DEFAULT_SENTENCES = (
    "How do I reset my password?", "What is the weather like tomorrow in Paris?",
    "Book a table for two at an Italian restaurant tonight.", "Transfer 50 dollars to my savings account.",
    "Play some relaxing jazz music.", "What's the exchange rate from euros to yen?",
)


# -- what is compared --------------------------------------------------------------------------------------
@attrs.frozen
class Side:
    label: str
    engine: str
    plugins: dict[str, str]

    @classmethod
    def parse(cls, label: str, spec: str, default_engine: str) -> "Side":
        """``kv_cache=paged:q8,tokenizer=bpe:scalar`` or ``engine=native`` (or both, comma-separated)."""
        engine = default_engine
        terms = []
        for term in (t.strip() for t in (spec or "").split(",")):
            if not term:
                continue
            if term.startswith("engine="):
                engine = term.split("=", 1)[1]
                if not engine:
                    raise ConfigError(f"empty engine in side {label}: {spec!r}")
            else:
                terms.append(term)
        sels = parse_selections(terms)
        return cls(label, engine, {a: str(s).split("=", 1)[1] for a, s in sels.items()})


@attrs.frozen
class Bounds:
    """Gate bounds (defaults follow the issues' quality bars)."""

    engine_kld: float = 0.01
    engine_top1: float = 0.98
    kv_kld: float = 0.002
    kv_top1: float = 0.99
    p95_ratio: float = 1.5
    chi2_z: float = 3.09          # one-sided z of the chi-square test: p = 0.001
    quality_tokens: int = 1024
    sampling_n: int = 200


@attrs.frozen
class Metric:
    name: str
    unit: str
    higher_is_better: bool
    a: tuple[float, ...]
    b: tuple[float, ...]

    @property
    def ratio(self) -> float:
        am, bm = median(self.a), median(self.b)
        return bm / am if am else float("nan")

    @property
    def ratio_spread(self) -> tuple[float, float]:
        rs = [b / a for a, b in zip(self.a, self.b) if a]
        return (min(rs), max(rs)) if rs else (float("nan"), float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "higher_is_better": self.higher_is_better,
                "a_median": median(self.a), "b_median": median(self.b), "ratio_b_over_a": self.ratio,
                "ratio_spread": list(self.ratio_spread), "a": list(self.a), "b": list(self.b)}


@attrs.frozen
class Gate:
    area: str
    name: str
    passed: bool
    value: Any
    bound: Any
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class ABResult:
    workload: str
    model: str
    a: Side
    b: Side
    runs: int
    metrics: tuple[Metric, ...]
    gates: tuple[Gate, ...]
    differing_areas: tuple[str, ...]
    #: where the measured texts came from: {"source": "corpus" | "file <name>" | "caller" | "built-in",
    #: "texts": count, "bytes": UTF-8 size}
    inputs: dict[str, Any] = attrs.field(factory=dict)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        return {"workload": self.workload, "model": self.model, "runs": self.runs,
                "a": attrs.asdict(self.a), "b": attrs.asdict(self.b),
                "differing_areas": list(self.differing_areas),
                "inputs": self.inputs,
                "metrics": [m.to_dict() for m in self.metrics], "gates": [g.to_dict() for g in self.gates],
                "passed": self.passed}


# -- inputs ------------------------------------------------------------------------------------------------
def _read_inputs(workload: str, path: str | None) -> list[str]:
    if path:
        try:
            text = Path(path).read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
        if workload in ("tokenize", "perplexity"):
            return [text]
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise InputError(f"{path} has no non-empty lines")
        return lines
    if workload == "generate":
        return list(DEFAULT_PROMPTS)
    if workload in ("embed", "classify"):
        return list(DEFAULT_SENTENCES)
    texts = corpus_texts()  # the packaged corpus: the same text wherever corert runs from
    return texts if workload == "tokenize" else ["\n\n".join(texts)]


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# -- one round of a workload ---------------------------------------------------------------------------------
def _round(rt, workload: str, inputs: list[str], max_tokens: int, model: str | None,
           score_tokens: int = 1024) -> dict[str, Any]:
    if workload == "generate":
        lat, dec, outs = [], [], []
        for p in inputs:
            t = time.perf_counter()
            c = rt.generate(p, model=model, max_tokens=max_tokens, temperature=0.0, priority="interactive")
            lat.append((time.perf_counter() - t) * 1e3)
            dec.append(c.timings.to_dict()["decode_tokens_per_s"])
            outs.append(list(c.token_ids))
        return {"metrics": {"decode tok/s": median(dec), "latency p50 ms": percentile(lat, 50),
                            "latency p95 ms": percentile(lat, 95)}, "outputs": outs, "latencies": lat}
    if workload == "tokenize":
        t = time.perf_counter()
        ids = [rt.tokenize(x, model=model) for x in inputs]
        dt = time.perf_counter() - t
        size = sum(len(x.encode()) for x in inputs)
        return {"metrics": {"MB/s": size / dt / 1e6, "latency ms": dt * 1e3}, "outputs": ids, "latencies": [dt * 1e3]}
    if workload in ("embed", "classify"):
        lat, outs = [], []
        for x in inputs:
            t = time.perf_counter()
            r = rt.embed([x]) if workload == "embed" else rt.classify([x], top_k=1)
            lat.append((time.perf_counter() - t) * 1e3)
            outs.append(r.to_dict())
        return {"metrics": {"latency p50 ms": percentile(lat, 50), "latency p95 ms": percentile(lat, 95),
                            "requests/s": len(inputs) / (sum(lat) / 1e3)}, "outputs": outs, "latencies": lat}
    if workload == "perplexity":
        from .quality import log_softmax, text_logits

        loaded, lock = rt.load_generation_model(model)
        ids = loaded.tokenizer.encode(inputs[0])[:score_tokens]
        t = time.perf_counter()
        logits = text_logits(loaded, lock, ids, min(512, loaded.n_ctx))
        dt = time.perf_counter() - t
        lp = log_softmax(logits)
        nll = -lp[np.arange(lp.shape[0]), ids[1:lp.shape[0] + 1]].mean()
        return {"metrics": {"tok/s": lp.shape[0] / dt, "ppl": float(np.exp(nll))}, "outputs": [],
                "latencies": [dt * 1e3]}
    raise ConfigError(f"unknown workload {workload!r}; use one of {', '.join(WORKLOADS)}")


_HIGHER_IS_BETTER = {"decode tok/s": True, "MB/s": True, "requests/s": True, "tok/s": True, "ppl": False,
                     "latency p50 ms": False, "latency p95 ms": False, "latency ms": False, "rss MB": False,
                     "kv bytes": False}


# -- gates -------------------------------------------------------------------------------------------------
def _gate_tokenizer(rts, inputs, model) -> Gate:
    for i, text in enumerate(inputs):
        a, b = rts[0].tokenize(text, model=model), rts[1].tokenize(text, model=model)
        if a != b:
            at = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return Gate("tokenizer", "identical ids", False, f"input {i} differs at token {at}",
                        "identical", f"A has {len(a)} ids, B {len(b)}")
    return Gate("tokenizer", "identical ids", True, f"{len(inputs)} inputs identical", "identical")


def _gate_logits(rts, area: str, bounds: Bounds, model, quality_text: str) -> list[Gate]:
    from .quality import compare_logits, text_logits

    la, locka = rts[0].load_generation_model(model)
    lb, lockb = rts[1].load_generation_model(model)
    ids = la.tokenizer.encode(quality_text)[: bounds.quality_tokens]
    ctx = min(512, la.n_ctx, lb.n_ctx)
    agr = compare_logits(text_logits(la, locka, ids, ctx), text_logits(lb, lockb, ids, ctx), ids[1:])
    kld_bound = bounds.engine_kld if area == "engine" else bounds.kv_kld
    top1_bound = bounds.engine_top1 if area == "engine" else bounds.kv_top1
    detail = f"{agr.tokens} positions; ppl A {agr.ref_ppl:.3f}, B {agr.ppl:.3f}"
    return [Gate(area, "kld_mean", agr.kld_mean <= kld_bound, agr.kld_mean, kld_bound, detail),
            Gate(area, "top1_agree", agr.top1_agree >= top1_bound, agr.top1_agree, top1_bound, detail)]


def chi2_homogeneity(a: Sequence[int], b: Sequence[int]) -> tuple[float, int]:
    """Two-sample chi-square statistic over the categories seen (rare ones pooled) and its dof."""
    cats = sorted(set(a) | set(b))
    ca = np.array([list(a).count(c) for c in cats], dtype=float)
    cb = np.array([list(b).count(c) for c in cats], dtype=float)
    tot = ca + cb
    keep = tot >= 10
    ca = np.append(ca[keep], ca[~keep].sum())
    cb = np.append(cb[keep], cb[~keep].sum())
    if ca[-1] + cb[-1] == 0:
        ca, cb = ca[:-1], cb[:-1]
    tot = ca + cb
    na, nb = ca.sum(), cb.sum()
    ea, eb = tot * na / (na + nb), tot * nb / (na + nb)
    stat = float((((ca - ea) ** 2) / ea).sum() + (((cb - eb) ** 2) / eb).sum())
    return stat, max(1, len(tot) - 1)


def chi2_critical(df: int, z: float) -> float:
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _gate_speculative(rts, outputs: list[list[list[list[int]]]], prompts, bounds: Bounds, model) -> list[Gate]:
    same = sum(a == b for a, b in zip(outputs[0][0], outputs[1][0])) if outputs[0] and outputs[1] else 0
    n = len(outputs[0][0]) if outputs[0] else 0
    gates = [Gate("speculative", "greedy identical", same == n and n > 0, f"{same}/{n}", f"{n}/{n}")]
    prompt = prompts[0] if prompts else DEFAULT_PROMPTS[0]
    samples = [[], []]
    for seed in range(bounds.sampling_n):
        for side in (0, 1):
            c = rts[side].generate(prompt, model=model, max_tokens=3, temperature=1.0, top_k=40, top_p=1.0,
                                   seed=seed)
            samples[side].append(c.token_ids[-1] if c.token_ids else -1)
    stat, df = chi2_homogeneity(samples[0], samples[1])
    crit = chi2_critical(df, bounds.chi2_z)
    gates.append(Gate("speculative", "sampling distribution (chi-square)", stat <= crit, stat, crit,
                      f"{bounds.sampling_n} samples per side of the 3rd token, dof {df}"))
    return gates


def _gate_scheduler(latencies: list[list[float]], bounds: Bounds) -> Gate:
    pa, pb = percentile(latencies[0], 95), percentile(latencies[1], 95)
    ratio = pb / pa if pa else float("inf")
    return Gate("scheduler", "p95 latency ratio B/A", ratio <= bounds.p95_ratio, ratio, bounds.p95_ratio,
                f"p95 A {pa:.1f} ms, B {pb:.1f} ms")


# -- the comparison ----------------------------------------------------------------------------------------
def compare(a: str | Side, b: str | Side, *, workload: str = "generate", model: str | None = None,
            engine: str | None = None, inputs: Sequence[str] | None = None, input_file: str | None = None,
            runs: int = 5, max_tokens: int = 64, bounds: Bounds = Bounds(), plot: str | None = None,
            extra_plugins: Sequence[tuple[str, object]] = (), base_plugins: Sequence[str] = (),
            progress: Callable[[str], None] | None = None) -> ABResult:
    from corert.runtime import Runtime, RuntimeConfig

    if workload not in WORKLOADS:
        raise ConfigError(f"unknown workload {workload!r}; use one of {', '.join(WORKLOADS)}")
    if not isinstance(runs, int) or runs < 1:
        raise InputError(f"runs must be a positive integer, got {runs!r}")
    if plot:
        _require_matplotlib()  # before the runs, not after minutes of them
    base = RuntimeConfig.from_env()
    default_engine = engine or base.engine
    sides = [x if isinstance(x, Side) else Side.parse(lbl, x, default_engine) for lbl, x in (("A", a), ("B", b))]
    texts = list(inputs) if inputs else _read_inputs(workload, input_file)
    common = dict(parse_selections(list(base_plugins)))
    rts = []
    for s in sides:
        plugins = {**{k: str(v).split("=", 1)[1] for k, v in common.items()}, **s.plugins}
        rts.append(Runtime(base, engine=s.engine, plugins=plugins, extra_plugins=extra_plugins,
                           **({"model": model} if model else {})))
    model_name = model_label(model or {"embed": base.embed_model, "classify": base.classify_model}
                             .get(workload, base.model))
    source = ("caller" if inputs else f"file {Path(input_file).name}" if input_file
              else "built-in" if workload in ("generate", "embed", "classify") else "corpus")
    inputs_info = {"source": source, "texts": len(texts), "bytes": sum(len(t.encode()) for t in texts)}
    try:
        differing = tuple(a for a in AREAS if _label(rts[0], a, sides[0].engine) != _label(rts[1], a, sides[1].engine))
        if sides[0].engine != sides[1].engine:
            differing += ("engine",)
        for i, rt in enumerate(rts):  # warm up: loads, compiles and page-ins stay off the clock
            _round(rt, workload, texts[:1], min(max_tokens, 8), model, score_tokens=64)
            if progress:
                progress(f"side {sides[i].label} ready")
        values: list[dict[str, list[float]]] = [{}, {}]
        outputs: list[list[Any]] = [[], []]
        latencies: list[list[float]] = [[], []]
        for r in range(runs):
            for i, rt in enumerate(rts):
                res = _round(rt, workload, texts, max_tokens, model, bounds.quality_tokens)
                for k, v in res["metrics"].items():
                    values[i].setdefault(k, []).append(v)
                values[i].setdefault("rss MB", []).append(_rss_mb())
                outputs[i].append(res["outputs"])
                latencies[i].extend(res["latencies"])
            if progress:
                progress(f"round {r + 1}/{runs}")
        metrics = tuple(Metric(k, k.split()[-1], _HIGHER_IS_BETTER.get(k, True), tuple(values[0][k]),
                               tuple(values[1][k])) for k in values[0])
        gates: list[Gate] = []
        if "tokenizer" in differing:
            gates.append(_gate_tokenizer(rts, texts, model))
        if "engine" in differing or "kv_cache" in differing:
            qtext = texts[0] if workload == "perplexity" else _read_inputs("perplexity", None)[0]
            gates += _gate_logits(rts, "engine" if "engine" in differing else "kv_cache", bounds, model, qtext)
        if "speculative" in differing and workload == "generate":
            gates += _gate_speculative(rts, outputs, texts, bounds, model)
        if "scheduler" in differing:
            gates.append(_gate_scheduler(latencies, bounds))
    finally:
        for rt in rts:
            rt.close()
    result = ABResult(workload, model_name, sides[0], sides[1], runs, metrics, tuple(gates), differing,
                      inputs_info)
    if plot:
        draw(result, plot)
    return result


def _label(rt, area: str, engine: str) -> str | None:
    try:
        if engine == AUTO:  # the engine auto picks for the default model (never pulls it for a label)
            engine = rt.engine_choice(pull=False).engine
        return rt.resolve(area, engine).label
    except Exception:  # noqa: BLE001 - no implementation of this area for that engine
        return None


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("a plot needs matplotlib, an optional extra: pip install 'corert[plots]'") from None


def draw(result: ABResult, path: str) -> None:
    """One panel per metric: A and B per round (dots) and medians (bars)."""
    _require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = [m for m in result.metrics if not all(math.isnan(x) for x in m.a + m.b)]
    fig, axes = plt.subplots(1, len(ms), figsize=(3.2 * len(ms), 3.6), squeeze=False)
    for ax, m in zip(axes[0], ms):
        ax.bar([0, 1], [median(m.a), median(m.b)], color=["#8899aa", "#dd8844"], width=0.6)
        for x, vals in ((0, m.a), (1, m.b)):
            ax.scatter([x + (j - len(vals) / 2) * 0.03 for j in range(len(vals))], vals, s=10, color="black", zorder=3)
        ax.set_xticks([0, 1], ["A", "B"])
        better = "higher" if m.higher_is_better else "lower"
        ax.set_title(f"{m.name}\nB/A {m.ratio:.3f} ({better} is better)", fontsize=9)
    a = ",".join(f"{k}={v}" for k, v in result.a.plugins.items()) or "defaults"
    b = ",".join(f"{k}={v}" for k, v in result.b.plugins.items()) or "defaults"
    verdict = "gates passed" if result.passed else "GATE FAILED"
    fig.suptitle(f"corert ab · {result.workload} · {result.model}\nA: engine={result.a.engine} {a}   "
                 f"B: engine={result.b.engine} {b}   ({verdict})", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- CLI -----------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", required=True, metavar="SPEC", help="side A, e.g. tokenizer=llama_cpp or engine=native")
    p.add_argument("--b", required=True, metavar="SPEC", help="side B")
    p.add_argument("--workload", default="generate", choices=WORKLOADS)
    p.add_argument("--input", help="input file (prompts/sentences one per line; text for tokenize/perplexity)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--plot", help="write a PNG here")
    for f in attrs.fields(Bounds):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"gate bound (default {f.default})")


def run(args) -> dict[str, Any]:
    bounds = Bounds(**{f.name: getattr(args, f.name) for f in attrs.fields(Bounds)})
    res = compare(args.a, args.b, workload=args.workload, model=args.model, engine=args.engine,
                  input_file=args.input, runs=args.runs, max_tokens=args.max_tokens, bounds=bounds,
                  plot=args.plot, base_plugins=args.plugin,
                  progress=lambda msg: print(f"corert ab: {msg}", file=__import__("sys").stderr, flush=True))
    d = res.to_dict()
    d["plot"] = args.plot
    d["exit_code"] = 0 if res.passed else 1
    return d


def _inputs_line(d: dict[str, Any]) -> list[str]:
    i = d.get("inputs")
    return [f"inputs: {i['texts']} texts, {i['bytes'] / 1e3:.1f} kB ({i['source']})"] if i else []


def render(d: dict[str, Any]) -> str:
    fmt = lambda side: f"engine={side['engine']} " + (",".join(f"{k}={v}" for k, v in side["plugins"].items()) or "defaults")  # noqa: E731
    lines = [f"corert ab — workload {d['workload']}, model {d['model']}, {d['runs']} interleaved rounds",
             f"A: {fmt(d['a'])}", f"B: {fmt(d['b'])}",
             f"differing areas: {', '.join(d['differing_areas']) or 'none'}", *_inputs_line(d), "",
             f"{'metric':<18}{'A median':>12}{'B median':>12}{'B/A':>8}{'spread':>18}"]
    for m in d["metrics"]:
        lo, hi = m["ratio_spread"]
        lines.append(f"{m['name']:<18}{m['a_median']:>12.2f}{m['b_median']:>12.2f}{m['ratio_b_over_a']:>8.3f}"
                     f"{f'{lo:.3f}-{hi:.3f}':>18}")
    lines.append("")
    for g in d["gates"]:
        v = f"{g['value']:.5f}" if isinstance(g["value"], float) else str(g["value"])
        b = f"{g['bound']:.5f}" if isinstance(g["bound"], float) else str(g["bound"])
        lines.append(f"gate {g['area']}/{g['name']}: {'PASS' if g['passed'] else 'FAIL'}  value {v}  bound {b}  "
                     f"{g['detail']}")
    if not d["gates"]:
        lines.append("no quality gate applies (no area differs)")
    lines.append("")
    lines.append("PASSED" if d["passed"] else "FAILED: a quality gate did not hold")
    if d.get("plot"):
        lines.append(f"plot: {d['plot']}")
    return "\n".join(lines)
