"""The speculative decoding plugin: ``speculative=speculative:VARIANT``.

Modes: ``adaptive`` (default: prompt lookup with the depth chosen every step, 0 = off), ``lookup``
(prompt lookup, fixed depth) and ``draft`` (draft model, fixed depth).  ``adaptive`` leaves the draft model
out: measured here on 2 cores, a 0.5B draft costs ~0.6 of a 1.5B target step and must first prefill the
whole prompt itself, so it lost in every run (`corert bench speculative`); the controller can still weigh
it (``DraftModelSource``) where a draft is much cheaper than its target.  The draft model is ``RuntimeConfig.draft_model`` or the known pairing below.

With sampling, every variant draws from exactly the target's distribution; but ``adaptive`` picks depths
from measured timings, so its sampled tokens are not reproducible from a seed (greedy output is).
"""
from __future__ import annotations

from corert import Implementation, Mode, hookimpl
from corert.errors import PluginError

from .decoder import SpeculativeDecoder
from .sources import DraftModelSource, LookupSource, check_same_vocabulary

#: target model -> draft model of the same family (same tokenizer)
DRAFT_PAIRS = {"qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-0.5b-instruct"}


def draft_model_for(runtime, model: str | None) -> str | None:
    cfg = runtime.config
    if getattr(cfg, "draft_model", None):
        return cfg.draft_model
    name = model or cfg.model
    if name in DRAFT_PAIRS:
        return DRAFT_PAIRS[name]
    for target, draft in DRAFT_PAIRS.items():  # a path to a pulled model counts as its name
        try:
            if str(runtime.store.path(target)) == str(name):
                return draft
        except Exception:  # noqa: BLE001
            continue
    return None


def make(variant: str, config=None, runtime=None, model=None, **_):
    # prompt lookup drafts for free and copies long spans: let it go deep (the controller decides how deep);
    # a draft model pays per token
    max_depth = int(getattr(config, "draft_depth", 0) or (31 if variant == "adaptive" else 8))
    sources = []
    if variant in ("lookup", "adaptive"):
        sources.append(LookupSource())
    if variant == "draft":
        draft = draft_model_for(runtime, model) if runtime is not None else None
        if draft is None:
            raise PluginError("speculative:draft needs a draft model: set draft_model (CORERT_DRAFT_MODEL, "
                              "--draft-model) to a model with the target's vocabulary")
        target_loaded, _ = runtime.load_generation_model(model)
        draft_loaded, draft_lock = runtime.load_generation_model(draft)
        if draft_loaded is target_loaded:  # one session and one lock: drafting would wait on itself forever
            raise PluginError(f"the draft model {draft!r} is the target model itself; pick a smaller model of "
                              f"the same family (draft_model, CORERT_DRAFT_MODEL, --draft-model)")
        check_same_vocabulary(target_loaded.tokenizer, draft_loaded.tokenizer)
        sources.append(DraftModelSource(draft_loaded, draft_lock, max_depth))
    return SpeculativeDecoder(sources, adaptive=variant == "adaptive", max_depth=max_depth)


@hookimpl
def register_decoders(register):
    register(Implementation(
        area="speculative", name="speculative", factory=make, priority=-1,
        variants=(Mode("adaptive", priority=10, description="lookup + draft model, depth chosen per step"),
                  Mode("lookup", priority=5, description="prompt lookup, fixed depth"),
                  Mode("draft", priority=0, description="draft model, fixed depth")),
        description="lossless speculative decoding: draft, verify in one batched forward, roll back"))
