"""`corert ab`: every gate fails on a deliberately wrong plugin registered here, and passes on real ones."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import attrs
import pytest

from corert import Implementation, hookimpl
from corert.tools import ab
from corert.plugins.kv_cache.llama_cpp import LlamaCppKV
from corert.plugins.speculative.plain import PlainDecoder
from corert.plugins.tokenizer.llama_cpp import LlamaCppTokenizer


class DroppingTokenizer(LlamaCppTokenizer):
    """Wrong on purpose: loses the last token of every text."""

    name = "dropping"

    def encode(self, text, add_bos=None, parse_special=False):
        return super().encode(text, add_bos=add_bos, parse_special=parse_special)[:-1]


@attrs.frozen
class LossyKV(LlamaCppKV):
    """Wrong on purpose: 4-bit K and V (perturbs every cached value)."""

    def context_params(self):
        return {"type_k": 2, "type_v": 2, "flash_attn": True}  # GGML_TYPE_Q4_0


class SwappingDecoder(PlainDecoder):
    """Wrong on purpose: every 4th greedy token becomes the next id."""

    def generate(self, session, prompt_ids, params, is_eog):
        for i, tok in enumerate(super().generate(session, prompt_ids, params, is_eog)):
            yield tok + 1 if i % 4 == 3 and not is_eog(tok) else tok


class GreedyAlwaysDecoder(PlainDecoder):
    """Wrong on purpose: ignores the temperature (a biased sampler)."""

    def generate(self, session, prompt_ids, params, is_eog):
        return super().generate(session, prompt_ids, attrs.evolve(params, temperature=0.0), is_eog)


#: the slow scheduler's wait before every task, ms: several times an 8-token SmolLM2 request's latency
SLOW_MS = 500.0


class SlowScheduler:
    """Wrong on purpose: every task waits SLOW_MS before it runs."""

    def __init__(self, inner):
        self.inner = inner
        self.name = "slow"

    def submit(self, fn, *args, **kwargs):
        import time

        def late(*a, **k):
            time.sleep(SLOW_MS / 1e3)
            return fn(*a, **k)

        return self.inner.submit(late, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class WrongPlugins:
    @hookimpl
    def register_tokenizers(self, register):
        register(Implementation(area="tokenizer", name="dropping", engines=("llama.cpp",),
                                factory=lambda v, model_path, config=None: DroppingTokenizer(model_path)))

    @hookimpl
    def register_kv_caches(self, register):
        register(Implementation(area="kv_cache", name="lossy", engines=("llama.cpp",),
                                factory=lambda v, **k: LossyKV("q4_0")))

    @hookimpl
    def register_decoders(self, register):
        register(Implementation(area="speculative", name="swapping", factory=lambda v, **k: SwappingDecoder()))
        register(Implementation(area="speculative", name="greedy_always",
                                factory=lambda v, **k: GreedyAlwaysDecoder()))

    @hookimpl
    def register_schedulers(self, register):
        from corert.plugins.scheduler.fifo import FifoScheduler

        register(Implementation(area="scheduler", name="slow", factory=lambda v, **k: SlowScheduler(FifoScheduler())))


WRONG = [("wrong_plugins", WrongPlugins())]
BASE = ["tokenizer=llama_cpp"]


def _gates(result, area):
    gates = [g for g in result.gates if g.area == area]
    assert gates, f"no {area} gate ran"
    return gates


def test_tokenizer_gate(smollm2):
    texts = ["Hello world, this is a test.", "def f(x):\n    return x * 2\n", "日本語のテキスト 🎉"]
    good = ab.compare("tokenizer=llama_cpp", "tokenizer=bpe", workload="tokenize", model=smollm2, engine="llama.cpp", inputs=texts,
                      runs=1, extra_plugins=WRONG)
    assert all(g.passed for g in _gates(good, "tokenizer")) and good.passed
    bad = ab.compare("tokenizer=llama_cpp", "tokenizer=dropping", workload="tokenize", model=smollm2, engine="llama.cpp",
                     inputs=texts, runs=1, extra_plugins=WRONG)
    assert not bad.passed and not _gates(bad, "tokenizer")[0].passed


#: the kv_cache and engine gates score the corpus whatever the workload (compare's quality text): a tokenize
#: workload of one short text leaves their values as they are without a perplexity round and warm-up on each
#: side (256 + 64 more tokens evaluated per side); test_engine_gate's good pair runs the perplexity workload
GATE_ONLY = dict(workload="tokenize", inputs=["Hello."])


def test_kv_cache_gate(smollm2):
    # llama.cpp's own noise floor on this Q4_1 model (f16 vs f32 cache, batched vs one-by-one) is about
    # 0.004-0.006 KLD and 94% top-1, so the llama.cpp-engine bounds here are wider than the native engine's.
    bounds = ab.Bounds(kv_kld=0.02, kv_top1=0.9, quality_tokens=256)
    good = ab.compare("kv_cache=llama_cpp:f16", "kv_cache=llama_cpp:q8_0", **GATE_ONLY, model=smollm2, engine="llama.cpp",
                      runs=1, bounds=bounds, extra_plugins=WRONG, base_plugins=BASE)
    assert good.passed, [attrs.asdict(g) for g in good.gates]
    assert [g.name for g in good.gates if g.area == "kv_cache"] == ["kld_mean", "top1_agree"]
    bad = ab.compare("kv_cache=llama_cpp:f16", "kv_cache=lossy", **GATE_ONLY, model=smollm2, engine="llama.cpp", runs=1,
                     bounds=bounds, extra_plugins=WRONG, base_plugins=BASE)
    assert not bad.passed
    assert not next(g for g in bad.gates if g.name == "kld_mean").passed


def test_speculative_gates(smollm2):
    # seeds 0..n-1: the samples are fixed.  The biased decoder's chi-square against plain, with a critical
    # value of 11.2 (dof 1): 40 at 20 samples, 62 at 40, 206 at 120; lookup's is 0 (the same tokens).  20
    # still fails the biased decoder at 3.6x the critical value, at half the generations of 40
    bounds = ab.Bounds(sampling_n=20)
    prompts = ["Repeat after me: the cat sat on the mat, the cat sat on the mat."]
    good = ab.compare("speculative=plain", "speculative=speculative:lookup", model=smollm2, engine="llama.cpp", inputs=prompts,
                      runs=1, max_tokens=24, bounds=bounds, extra_plugins=WRONG, base_plugins=BASE)
    assert good.passed, [attrs.asdict(g) for g in good.gates]
    # only the greedy gate is asserted here: the sampling gate runs on a token sample of one per side
    bad = ab.compare("speculative=plain", "speculative=swapping", model=smollm2, engine="llama.cpp", inputs=prompts, runs=1,
                     max_tokens=24, bounds=attrs.evolve(bounds, sampling_n=1), extra_plugins=WRONG,
                     base_plugins=BASE)
    greedy_gate = next(g for g in bad.gates if g.name == "greedy identical")
    assert not greedy_gate.passed and not bad.passed
    biased = ab.compare("speculative=plain", "speculative=greedy_always", model=smollm2, engine="llama.cpp", inputs=prompts, runs=1,
                        max_tokens=24, bounds=bounds, extra_plugins=WRONG, base_plugins=BASE)
    dist_gate = next(g for g in biased.gates if g.name.startswith("sampling distribution"))
    assert not dist_gate.passed


def test_scheduler_gate_verdict():
    """The scheduler gate compares p95 latencies (numpy's interpolated percentile): B within ``p95_ratio`` of A
    passes, beyond it fails.  Latencies are given here: on real requests they are `corert ab`'s measurement,
    not a test's."""
    a = [10.0 * i for i in range(1, 21)]  # 20 requests, p95 190.5 ms
    gate = ab._gate_scheduler([a, [1.5 * x for x in a]], ab.Bounds(p95_ratio=1.5))
    assert gate.passed and gate.value == pytest.approx(1.5) and gate.detail == "p95 A 190.5 ms, B 285.8 ms"
    assert not ab._gate_scheduler([a, [1.6 * x for x in a]], ab.Bounds(p95_ratio=1.5)).passed
    assert ab._gate_scheduler([a, [0.5 * x for x in a]], ab.Bounds(p95_ratio=1.0)).passed  # faster B
    slow_tail = a[:-1] + [10_000.0]  # the slowest request of B: the p95 reaches into it
    assert not ab._gate_scheduler([a, slow_tail], ab.Bounds(p95_ratio=1.5)).passed
    assert not ab._gate_scheduler([[0.0], [1.0]], ab.Bounds()).passed  # no A latency: no ratio to trust


def test_scheduler_gate_reads_every_measured_request(smollm2):
    """Only the scheduler differs: compare() runs the scheduler gate alone, on the latencies it measured, and
    those include the time a request spends in the scheduler (no verdict on real timings is asserted)."""
    prompts = ["Name a colour.", "Name a fruit."]
    result = ab.compare("scheduler=fifo", "scheduler=slow", model=smollm2, engine="llama.cpp", inputs=prompts, runs=2, max_tokens=8,
                        extra_plugins=WRONG, base_plugins=BASE)
    assert result.differing_areas == ("scheduler",)
    (gate,) = result.gates
    assert gate.area == "scheduler" and gate.name == "p95 latency ratio B/A"
    p95 = next(m for m in result.metrics if m.name == "latency p95 ms")
    assert len(p95.a) == len(p95.b) == 2  # one p95 per round
    assert min(p95.b) >= SLOW_MS  # the slow scheduler's wait before every task was measured
    pa, pb = (float(x) for x in re.fullmatch(r"p95 A ([\d.]+) ms, B ([\d.]+) ms", gate.detail).groups())
    assert pb >= SLOW_MS and gate.value == pytest.approx(pb / pa, rel=1e-2)


def test_cli_exit_code_json_and_plot(tmp_path):
    plot = tmp_path / "ab.png"
    proc = subprocess.run([sys.executable, "-m", "corert.cli", "ab", "--a", "tokenizer=llama_cpp", "--b",
                           "tokenizer=bpe", "--workload", "tokenize", "--runs", "2", "--json", "--plot", str(plot)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["passed"] and d["differing_areas"] == ["tokenizer"]
    assert {m["name"] for m in d["metrics"]} >= {"MB/s"}
    assert plot.stat().st_size > 10_000
    bad = subprocess.run([sys.executable, "-m", "corert.cli", "ab", "--a", "tokenizer=llama_cpp", "--b",
                          "tokenizer=nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown tokenizer plugin" in bad.stderr


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """matplotlib is the optional extra corert[plots]: without it --plot fails before any run, saying so."""
    from corert.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is absent
    plot = tmp_path / "ab.png"
    code = main(["ab", "--a", "tokenizer=llama_cpp", "--b", "tokenizer=bpe", "--workload", "tokenize",
                 "--plot", str(plot)])
    assert code == 2 and "pip install 'corert[plots]'" in capsys.readouterr().err
    assert not plot.exists()


class NoisyLlamaEngine:
    """Wrong on purpose: the llama.cpp engine with noise added to every logit."""

    def __init__(self):
        from corert.engines.llama_cpp import LlamaCppEngine

        self.inner = LlamaCppEngine()
        self.name = "noisy"
        self.capabilities = self.inner.capabilities  # what it wraps can do

    def load(self, *args, **kwargs):
        import numpy as np

        loaded = self.inner.load(*args, **kwargs)
        session = loaded.session()
        real_eval = session.eval
        rng = np.random.default_rng(0)

        def noisy_eval(ids, all_logits=False):
            out = np.array(real_eval(ids, all_logits=all_logits), copy=True)
            return out + rng.normal(0.0, 1.0, size=out.shape).astype(out.dtype)

        session.eval = noisy_eval
        return loaded


class WrongEngine:
    @hookimpl
    def register_engines(self, register):
        register(Implementation(area="engine", name="noisy", factory=lambda v, **k: NoisyLlamaEngine()))

    @hookimpl
    def register_kv_caches(self, register):
        register(Implementation(area="kv_cache", name="llama_cpp", engines=("llama.cpp", "noisy"),
                                factory=lambda v, **k: LlamaCppKV("f16")))

    @hookimpl
    def register_tokenizers(self, register):
        register(Implementation(area="tokenizer", name="llama_cpp", engines=("llama.cpp", "noisy"),
                                factory=lambda v, model_path, config=None: LlamaCppTokenizer(model_path)))


def test_engine_gate(smollm2):
    # llama.cpp's own batch-vs-sequential noise floor on this model is ~0.004 KLD / 0.94 top-1 (see the
    # kv_cache test), so the engine bounds are widened the same way; native vs llama.cpp passes them and a
    # noisy engine does not
    bounds = ab.Bounds(engine_kld=0.02, engine_top1=0.9, quality_tokens=256)
    good = ab.compare("engine=llama.cpp", "engine=native", workload="perplexity", model=smollm2, runs=1,
                      bounds=bounds, base_plugins=BASE)
    assert [g.passed for g in good.gates if g.area == "engine"] == [True, True], [attrs.asdict(g) for g in good.gates]
    # the perplexity workload scores the text the gate scores (the corpus, the first 256 tokens): the same ppl
    ppl = next(m for m in good.metrics if m.name == "ppl")
    gate = next(g for g in good.gates if g.name == "kld_mean")
    pa, pb = (float(x) for x in re.search(r"ppl A ([\d.]+), B ([\d.]+)", gate.detail).groups())
    assert ppl.a == pytest.approx((pa,), rel=1e-3) and ppl.b == pytest.approx((pb,), rel=1e-3), (ppl, gate.detail)
    bad = ab.compare("engine=llama.cpp", "engine=noisy", **GATE_ONLY, model=smollm2, runs=1,
                     bounds=bounds, extra_plugins=[("wrong_engine", WrongEngine())], base_plugins=BASE)
    assert not bad.passed and not next(g for g in bad.gates if g.name == "kld_mean").passed
