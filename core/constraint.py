"""Structured output: a grammar every generated token must keep the text inside (llguidance).

    constraint = compile_constraint(tokenizer, response_format={"type": "json_schema", ...})  # or grammar=GBNF
    params = SamplingParams(..., constraint=constraint)  # the Sampler enforces it every step

A :class:`Constraint` is the grammar compiled for one vocabulary; each stream's Sampler starts its own
:class:`Guide` (an llguidance matcher and a preallocated token bitmask).  Each step the guide fills the
bitmask of the tokens the grammar allows next and sets every other logit to -inf in place
(corert.kernels.bitmask: no vocabulary-sized temporaries); the sampled token advances the matcher.  Once
the grammar is complete it allows only the end-of-generation tokens, so generation ends there on every path
(plain decoding on either engine, the engines' batchers).  Speculative decoding is refused, not composed:
its accepted drafts do not pass through the Sampler (the Runtime raises InputError for the combination).
"""
from __future__ import annotations

import json
import threading
import weakref
from typing import Any, Mapping

import attrs
import numpy as np

from .errors import InputError

_TOKENIZERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


class _Vocabulary:
    """What llguidance's TokenizerWrapper reads: every token's bytes, EOS/BOS, and an encoder."""

    def __init__(self, tok):
        self.eos_token_id = tok.eos_id
        self.bos_token_id = tok.bos_id
        self.tokens = [tok.token_bytes(i) for i in range(tok.vocab_size)]
        # control tokens have no text (their bytes are empty): special, never produced by a grammar's text
        self.special_token_ids = [i for i, b in enumerate(self.tokens) if not b]
        self._tok = tok

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tok.encode(text, add_bos=False)


def ll_tokenizer(tok):
    """The llguidance tokenizer of our tokenizer (built once per tokenizer object: ~1.5 s for 150k tokens);
    every end-of-generation id counts as EOS."""
    with _TOKENIZERS_LOCK:
        lt = _TOKENIZERS.get(tok)
        if lt is None:
            import llguidance

            eog = [i for i in range(tok.vocab_size) if tok.is_eog(i)] or [tok.eos_id]
            lt = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocabulary(tok)), eos_token=eog)
            _TOKENIZERS[tok] = lt
        return lt


@attrs.frozen(eq=False)
class Constraint:
    """A grammar compiled for one vocabulary (shared by every stream that uses it; matchers are per stream)."""

    kind: str  # "json_object", "json_schema", "grammar"
    grammar: str = attrs.field(repr=False)  # llguidance's grammar text
    tokenizer: Any = attrs.field(repr=False)  # llguidance.LLTokenizer

    def start(self) -> "Guide":
        return Guide(self)


class Guide:
    """One stream's position in a grammar: the matcher and its preallocated bitmask (int32 words)."""

    def __init__(self, constraint: Constraint):
        import llguidance

        self.matcher = llguidance.LLMatcher(constraint.tokenizer, constraint.grammar, log_level=0)
        if self.matcher.is_error():
            raise InputError(f"the {constraint.kind} cannot be used: {self.matcher.get_error()}")
        self.bitmask = np.full((1, (constraint.tokenizer.vocab_size + 31) // 32), -1, np.int32)
        from .kernels.bitmask import apply_bitmask  # numba: imported by the first constrained request only

        self._apply = apply_bitmask

    def mask(self, logits: np.ndarray) -> None:
        """Disallowed tokens' logits become -inf, in place."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self.bitmask)
        self._apply(logits, self.bitmask[0])

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")


def compile_constraint(tok, *, response_format: Mapping[str, Any] | None = None,
                       grammar: str | None = None) -> Constraint | None:
    """The constraint of a request: OpenAI's ``response_format`` ({"type": "text" | "json_object" |
    "json_schema", "json_schema": {"schema": {...}}}) or a GBNF ``grammar`` (llama.cpp's extension); None
    when there is none.  Bad input raises InputError."""
    import llguidance

    if response_format is not None and grammar is not None:
        raise InputError("give response_format or grammar, not both")
    if grammar is not None:
        if not isinstance(grammar, str) or not grammar.strip():
            raise InputError("grammar must be a non-empty GBNF string")
        try:
            text = llguidance.grammar_from("gbnf", grammar)
        except ValueError as exc:
            raise InputError(f"grammar is not valid GBNF: {exc}") from None
        return _checked("grammar", text, tok)
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping) or "type" not in response_format:
        raise InputError('response_format must be an object with a "type" (text, json_object, json_schema)')
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return _checked(kind, json_schema_grammar({"type": "object"}), tok)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema", {}), (Mapping, bool)):
            raise InputError('response_format json_schema must be {"name": ..., "schema": {...}}')
        return _checked(kind, json_schema_grammar(spec.get("schema", {})), tok)
    raise InputError(f"response_format type must be text, json_object or json_schema, not {kind!r}")


def lark_constraint(tok, kind: str, lark: str) -> Constraint:
    """A constraint from llguidance's Lark dialect (``%json {...}`` embeds a JSON schema): tool calls."""
    import llguidance

    return _checked(kind, llguidance.LLMatcher.grammar_from_lark(lark), tok)


def json_schema_grammar(schema: Any) -> str:
    """llguidance's grammar for a JSON schema; unknown keywords are an error, not ignored."""
    import llguidance

    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
    except (TypeError, ValueError) as exc:
        raise InputError(f"the JSON schema cannot be used: {exc}") from None


def _checked(kind: str, text: str, tok) -> Constraint:
    import llguidance

    lt = ll_tokenizer(tok)
    error = llguidance.LLMatcher.validate_grammar(text, lt)
    if error and not error.startswith("WARNING"):
        raise InputError(f"the {kind} cannot be used: {error}")
    return Constraint(kind, text, lt)
