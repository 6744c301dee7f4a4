"""Everything that measures corert: ``corert bench …`` (bench/), ``corert ab``, ``corert perplexity``, the
quality measures, the speculative prompt sets and the packaged text corpus.

This package may import anything in corert; nothing outside it (runtime, engines, plugins) imports it.
Benchmarks reach the CLI through the ``register_bench_cases`` hook (:mod:`corert.tools.cases`), so a
third-party plugin adds one the same way the built-in ones are added.
"""
