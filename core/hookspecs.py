"""Every hook corert's host calls, in one module, grouped by area.

A plugin is a module (or object) with functions named like the specs below and marked with
``corert.hookimpl``.  It reaches the host through the ``corert`` entry-point group: built-in plugins are
registered that way too, first, so a third-party plugin registered later can override them.

The four optimization areas — memory, decoding, tokenization, scheduling — plus engines work the same
way: a ``register_*`` hook receives a ``register`` callback and calls it once per implementation it
provides (an :class:`corert.implementation.Implementation`: area, name, CPU variants or modes,
factory).  The host keeps the registrations, resolves the selection contract ``AREA=NAME[:VARIANT]``
against them, and calls the factory of the chosen implementation.  The objects a factory returns are then called directly on the hot
path (a pluggy dispatch per token and layer would cost more than the work it routes); their interfaces are
in :mod:`corert.interfaces`.

Task hooks observe every request the Runtime serves (generate, chat, embed, classify, tokenize), so a
plugin can trace or meter them without touching the data path.

Registration hooks are called once per :class:`corert.Runtime`; they are never ``firstresult``: every
plugin gets to register.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("corert")


# ---------------------------------------------------------------------------------------------------------
# memory (KV cache)
# ---------------------------------------------------------------------------------------------------------
@hookspec
def register_kv_caches(register):
    """Register KV-cache implementations (area ``kv_cache``).

    :param register: call ``register(Implementation(area="kv_cache", ...))`` once per cache.

    The factory is called as ``factory(variant, engine=..., model=..., config=...)`` and returns an object
    the engine uses to store and read K/V: for the llama.cpp engine a :class:`corert.interfaces.LlamaKV`
    (cache type and flash-attention setting, sequence truncation), for the native engine a
    :class:`corert.interfaces.KVStore` its attention reads directly.  An implementation that does not
    support an engine raises :class:`corert.errors.PluginError` from its factory.
    """


# ---------------------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------------------
@hookspec
def register_decoders(register):
    """Register decoding strategies (area ``speculative``).

    :param register: call ``register(Implementation(area="speculative", ...))`` once per strategy.

    The factory is called as ``factory(variant, config=..., context=...)`` with a
    :class:`corert.interfaces.DecoderContext` (the target model's name, a loader for other generation models
    such as a draft, the model store's paths; never the Runtime) and returns a
    :class:`corert.interfaces.Decoder`: it drives an engine session from the prompt ids to the generated
    ids, choosing each next token (plain greedy/sampling, or draft-then-verify speculative decoding).  The
    Runtime builds one decoder per loaded model and keeps it as long as the model, so what a decoder learns
    (measured costs) carries over from one request to the next.
    """


# ---------------------------------------------------------------------------------------------------------
# tokenization
# ---------------------------------------------------------------------------------------------------------
@hookspec
def register_tokenizers(register):
    """Register tokenizers for GGUF models (area ``tokenizer``).

    :param register: call ``register(Implementation(area="tokenizer", ...))`` once per tokenizer.

    The factory is called as ``factory(variant, model_path=..., config=...)`` and returns a
    :class:`corert.interfaces.Tokenizer` for that model's vocabulary.
    """


# ---------------------------------------------------------------------------------------------------------
# scheduling
# ---------------------------------------------------------------------------------------------------------
@hookspec
def register_schedulers(register):
    """Register schedulers (area ``scheduler``).

    :param register: call ``register(Implementation(area="scheduler", ...))`` once per scheduler.

    The factory is called as ``factory(variant, config=...)`` and returns a
    :class:`corert.interfaces.Scheduler`: every Runtime task is submitted to it, and it owns the thread
    budget handed to llama.cpp, onnxruntime and numba.
    """


# ---------------------------------------------------------------------------------------------------------
# engines and models
# ---------------------------------------------------------------------------------------------------------
@hookspec
def register_engines(register):
    """Register inference engines (chosen with ``--engine`` / ``Runtime(engine=...)``).

    :param register: call ``register(Implementation(area="engine", ...))`` once per engine.

    The factory is called as ``factory(variant, config=...)`` and returns a
    :class:`corert.interfaces.Engine`, which loads models into sessions and declares what it can do
    (:class:`corert.interfaces.EngineCapabilities`: tasks, continuous batching, prefix reuse, KV
    calibration).
    """


@hookspec
def register_models(register):
    """Register models in the model store, so ``corert models pull NAME`` and ``model=NAME`` find them.

    :param register: call ``register(ModelSpec(...))`` (:class:`corert.models.registry.ModelSpec`) once per
        model.  A name registered later (a third-party plugin) replaces an earlier one.
    """


# ---------------------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------------------
@hookspec
def on_request_start(task, request):
    """Called before the Runtime serves a request.

    :param str task: ``"generate"``, ``"chat"``, ``"embed"``, ``"classify"``, ``"tokenize"`` or
        ``"detokenize"``.
    :param request: the request's parameters (an attrs object); treat as read-only.

    Every implementation is called; return values are ignored.
    """


@hookspec
def on_request_end(task, request, result, error):
    """Called after the Runtime served a request, whether it succeeded or not.

    :param str task: as for :func:`on_request_start`.
    :param request: the request's parameters.
    :param result: the result object, or ``None`` when the request failed.
    :param error: the exception that ended the request, or ``None``.

    Every implementation is called; return values are ignored.
    """


# ---------------------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------------------
@hookspec
def register_bench_cases(register):
    """Register benchmarks, run as ``corert bench NAME``.

    :param register: call ``register(BenchCase(name=..., module=..., help=...))``
        (:class:`corert.tools.cases.BenchCase`) once per benchmark.  ``module`` names a module that defines
        ``add_arguments(parser)``, ``run(args) -> dict`` and ``render(result) -> str``; it is imported only
        when its benchmark runs.  A name registered later (a third-party plugin) replaces an earlier one.

    Only ``corert bench`` calls this hook; the Runtime never does.
    """
