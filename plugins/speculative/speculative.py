"""The speculative decoding plugin: ``speculative=speculative:VARIANT``.

Modes: ``adaptive`` (default: prompt lookup with the depth chosen every step, 0 = off), ``tree`` (several
lookup candidates as one token tree, its size chosen every step: tree_decoder.py), ``lookup`` (prompt
lookup, fixed depth) and ``draft`` (draft model, fixed depth).  ``adaptive`` leaves the draft model
out: measured here on 2 cores, a 0.5B draft costs ~0.6 of a 1.5B target step and must first prefill the
whole prompt itself, so it lost in every run (`corert bench speculative`); the controller can still weigh
it (``DraftModelSource``) where a draft is much cheaper than its target.  The draft model is ``RuntimeConfig.draft_model`` or the known pairing below.

With sampling, every variant draws from exactly the target's distribution; but ``adaptive`` picks depths
from measured timings, so its sampled tokens are not reproducible from a seed (greedy output is).
"""
from __future__ import annotations

from corert import Implementation, Mode, hookimpl
from corert.errors import PluginError
from corert.interfaces import DecoderContext

from .decoder import SpeculativeDecoder
from .sources import DraftModelSource, LookupSource, check_same_vocabulary
from .tree_decoder import TreeDecoder

#: target model -> draft model of the same family (same tokenizer)
DRAFT_PAIRS = {"qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-0.5b-instruct"}


def draft_model_for(config, context: DecoderContext) -> str | None:
    """The configured draft model, else the known pairing for the target (by name or by its store path)."""
    if getattr(config, "draft_model", None):
        return config.draft_model
    if context.model in DRAFT_PAIRS:
        return DRAFT_PAIRS[context.model]
    for target, draft in DRAFT_PAIRS.items():  # a path to a pulled model counts as its name
        try:
            if str(context.store_path(target)) == str(context.model):
                return draft
        except Exception:  # noqa: BLE001
            continue
    return None


def make(variant: str, config=None, context: DecoderContext | None = None, **_):
    if variant == "tree":
        return TreeDecoder(max_depth=int(getattr(config, "draft_depth", 0) or 31))
    # prompt lookup drafts for free and copies long spans: let it go deep (the controller decides how deep);
    # a draft model pays per token
    max_depth = int(getattr(config, "draft_depth", 0) or (31 if variant == "adaptive" else 8))
    sources = []
    if variant in ("lookup", "adaptive"):
        sources.append(LookupSource())
    if variant == "draft":
        draft = draft_model_for(config, context) if context is not None else None
        if draft is None:
            raise PluginError("speculative:draft needs a draft model: set draft_model (CORERT_DRAFT_MODEL, "
                              "--draft-model) to a model with the target's vocabulary")
        sources.append(DraftModelSource(lambda: _load_draft(context, draft), max_depth))
    return SpeculativeDecoder(sources, adaptive=variant == "adaptive", max_depth=max_depth)


def _load_draft(context: DecoderContext, draft: str):
    """The draft model and its lock, checked against the target (loaded when the first request drafts)."""
    target_loaded, _ = context.load_model(context.model)
    draft_loaded, draft_lock = context.load_model(draft)
    if draft_loaded is target_loaded:  # one session and one lock: drafting would wait on itself forever
        raise PluginError(f"the draft model {draft!r} is the target model itself; pick a smaller model of "
                          f"the same family (draft_model, CORERT_DRAFT_MODEL, --draft-model)")
    check_same_vocabulary(target_loaded.tokenizer, draft_loaded.tokenizer)
    return draft_loaded, draft_lock


@hookimpl
def register_decoders(register):
    register(Implementation(
        area="speculative", name="speculative", factory=make, priority=-1,
        variants=(Mode("adaptive", priority=10, description="lookup + draft model, depth chosen per step"),
                  Mode("tree", priority=7, description="a token tree of lookup candidates (prompt and output, "
                                                      "several matches) verified in one forward, size chosen per step"),
                  Mode("lookup", priority=5, description="prompt lookup, fixed depth"),
                  Mode("draft", priority=0, description="draft model, fixed depth")),
        description="lossless speculative decoding: draft, verify in one batched forward, roll back"))
