"""Benchmarks: ``corert bench NAME``.  Each runs the competitor and corert on the same input in one process
run and reports the ratio.  A bench module exposes:

    add_arguments(parser)   # its own flags (the CLI adds --json, --model, --engine, --plugin)
    run(args) -> dict       # the measured result, JSON-ready (machine info is added by the CLI)
    render(result) -> str   # the human-readable table
"""
BENCHES = {
    "generate": "corert.bench.generate",
    "tokenize": "corert.plugins.tokenizer.bench",
    "embed": "corert.engines.onnx.bench",
    "classify": "corert.engines.onnx.bench",
    "scheduler": "corert.plugins.scheduler.bench",
    "kv": "corert.plugins.kv_cache.bench",
    "batch": "corert.bench.batch",
    "speculative": "corert.plugins.speculative.bench",
}
