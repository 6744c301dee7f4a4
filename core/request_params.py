"""A generate request's sampling options, validated (OpenAI's ranges) into :class:`SamplingParams`."""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Mapping

from .constraint import Constraint, compile_constraint
from .errors import InputError
from .interfaces import SamplingParams

#: OpenAI's limits
PENALTY_RANGE = (-2.0, 2.0)
BIAS_RANGE = (-100.0, 100.0)
MAX_TOP_LOGPROBS = 20

_EOG_IDS: "weakref.WeakKeyDictionary[Any, tuple[int, ...]]" = weakref.WeakKeyDictionary()


def eog_ids(tok) -> tuple[int, ...]:
    """The tokenizer's end-of-generation ids (scanned once per tokenizer: the protocol only has ``is_eog``)."""
    ids = _EOG_IDS.get(tok)
    if ids is None:
        ids = _EOG_IDS[tok] = tuple(i for i in range(tok.vocab_size) if tok.is_eog(i))
    return ids


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    if not lo <= value <= hi:
        raise InputError(f"{name} must be in [{lo:g}, {hi:g}], got {value}")
    return float(value)


def sampling_params(tokenizer: Callable[[], Any], *, max_tokens: int = 128, temperature: float = 0.8,
                    top_k: int = 40, top_p: float = 0.95, seed: int | None = None,
                    presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                    logit_bias: Mapping[Any, float] | None = None, logprobs: int | None = None,
                    response_format: Mapping[str, Any] | None = None, grammar: str | None = None,
                    constraint: Constraint | None = None, ignore_eos: bool = False) -> SamplingParams:
    """``tokenizer()`` gives the model's tokenizer (called only when token ids or a grammar need it).
    ``logit_bias`` maps token ids (ints or their decimal strings, as JSON sends them) to a bias;
    ``logprobs``: None for none, else how many top alternatives per token (0..20); ``constraint``: one
    already compiled (tool calls), instead of ``response_format`` / ``grammar``; ``ignore_eos``: the
    end-of-generation tokens are never chosen (a bias of -inf, as llama-server's ignore_eos), so the request
    runs to max_tokens or a stop string (benchmarks compare equal work with it)."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise InputError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if temperature < 0:
        raise InputError(f"temperature must be ≥ 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise InputError(f"top_k must be ≥ 0 (0 = whole vocabulary), got {top_k}")
    presence = _number("presence_penalty", presence_penalty, *PENALTY_RANGE)
    frequency = _number("frequency_penalty", frequency_penalty, *PENALTY_RANGE)
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= MAX_TOP_LOGPROBS):
        raise InputError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {logprobs!r}")
    bias: dict[int, float] = {}
    if logit_bias:
        if not isinstance(logit_bias, Mapping):
            raise InputError("logit_bias must map token ids to biases")
        n_vocab = tokenizer().vocab_size
        for key, value in logit_bias.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                raise InputError(f"logit_bias keys must be token ids, got {key!r}") from None
            if isinstance(key, bool) or not 0 <= token < n_vocab:
                raise InputError(f"logit_bias token id {key!r} is not in the vocabulary (0..{n_vocab - 1})")
            bias[token] = _number(f"logit_bias[{key}]", value, *BIAS_RANGE)
    if not isinstance(ignore_eos, bool):
        raise InputError(f"ignore_eos must be true or false, got {ignore_eos!r}")
    if ignore_eos:
        bias.update(dict.fromkeys(eog_ids(tokenizer()), -math.inf))
    if response_format is not None or grammar is not None:
        if constraint is not None:
            raise InputError("response_format and grammar cannot be combined with tools")
        constraint = compile_constraint(tokenizer(), response_format=response_format, grammar=grammar)
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                          presence_penalty=presence, frequency_penalty=frequency, logit_bias=bias,
                          logprobs=logprobs, constraint=constraint)
