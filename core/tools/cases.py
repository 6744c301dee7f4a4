"""Benchmark cases: what ``corert bench NAME`` runs, collected through the ``register_bench_cases`` hook.

The built-in cases are registered by this module, an entry point of the ``corert`` group like every other
built-in plugin; a third-party plugin registered after it replaces a case of the same name.
"""
from __future__ import annotations

import warnings

import attrs

from corert.plugin_host import PluginHost, hookimpl


@attrs.frozen
class BenchCase:
    """One benchmark.  ``module`` defines ``add_arguments(parser)``, ``run(args) -> dict`` (JSON-ready; the
    CLI adds the machine block) and ``render(result) -> str``; it is imported only when the case runs."""

    name: str
    module: str
    help: str = ""


_BUILTIN = (
    BenchCase("generate", "corert.tools.bench.generate", "raw llama-cpp-python vs corert, one model, greedy"),
    BenchCase("tokenize", "corert.tools.bench.tokenizer", "bpe tokenizer vs Hugging Face and llama.cpp"),
    BenchCase("embed", "corert.tools.bench.encoders", "onnx embeddings vs the raw onnxruntime pipeline"),
    BenchCase("classify", "corert.tools.bench.encoders", "onnx classification vs the raw pipeline"),
    BenchCase("scheduler", "corert.tools.bench.scheduler", "interactive latency under batch load, per scheduler"),
    BenchCase("kv", "corert.tools.bench.kv_cache", "paged KV cache memory and compaction"),
    BenchCase("batch", "corert.tools.bench.batch", "continuous batching vs llama-cpp-python one by one"),
    BenchCase("speculative", "corert.tools.bench.speculative", "speculative decoding vs llama.cpp's draft paths"),
    BenchCase("grammar", "corert.tools.bench.grammar", "structured output: the grammar mask's cost per token"),
    BenchCase("isolation", "corert.tools.bench.isolation", "process isolation vs in-process: per-token cost, "
              "TTFT, embed p95, restart"),
    BenchCase("serve", "corert.tools.bench.serve", "corert serve vs llama-server and llama-cpp-python's server"),
    BenchCase("routing", "corert.tools.bench.routing", "the prefix router at 10/100/1000 replicas, simulated "
              "(no Ray): hit rate, imbalance, table size, routing time vs random and least-loaded"),
    BenchCase("soak", "corert.tools.bench.soak", "1,000 mixed requests against corert serve; leaks from /metrics"),
)


@hookimpl
def register_bench_cases(register):
    for case in _BUILTIN:
        register(case)


def bench_cases(host: PluginHost | None = None) -> dict[str, BenchCase]:
    """Every registered case by name, in registration order (later registrations replace earlier names).

    A plugin whose hook fails is warned about and skipped, like a plugin that fails to import."""
    host = host or PluginHost.build()
    # seeded with the built-ins, which the hook registers again: an install whose entry points predate
    # this module (an editable install not yet reinstalled) still runs them
    cases: dict[str, BenchCase] = {case.name: case for case in _BUILTIN}
    # pluggy lists implementations in registration order (and calls them in reverse): walk them in order
    # so that a later plugin's case of the same name wins
    for impl in host.pm.hook.register_bench_cases.get_hookimpls():
        found: list[object] = []
        try:
            impl.function(register=found.append)
            bad = [c for c in found if not isinstance(c, BenchCase)]
            if bad:
                raise TypeError(f"registered {bad[0]!r}, not a BenchCase")
        except Exception as exc:  # noqa: BLE001 - one bad plugin must not take `corert bench` down
            warnings.warn(f"corert plugin {impl.plugin_name!r}: bench cases skipped "
                          f"({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)
            continue
        for case in found:
            cases[case.name] = case
    return cases
