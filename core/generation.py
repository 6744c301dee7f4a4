"""The generation loop of one request: encode -> decoder or batcher -> incremental detokenize -> stop
strings -> Completion.

It runs on whatever thread the Runtime gives it (a scheduler worker, or a waiter thread of the batching
path) and knows nothing of plugins or engines by name: it gets a loaded model, the model's lock, the
model's decoder and, when the request joins continuous batching, the model's batch service.
"""
from __future__ import annotations

import collections
import contextlib
import threading
import time
import uuid
from typing import Callable

import attrs

from .cancel import current_token
from .errors import ContextLengthError, InputError
from .interfaces import BatchService, BatchSpeculation, Decoder, LoadedModel
from .results import Completion, GenerateRequest, StreamChunk, Timings, TokenLogprob, Usage
from .stops import StopMatcher


@attrs.frozen
class Target:
    """What one request generates with."""

    loaded: LoadedModel
    #: held for the whole request unless it joins ``batching``: one sequence per loaded model, and the
    #: model's decoder serves one request at a time
    lock: threading.Lock
    decoder: Decoder
    batching: BatchService | None = None
    #: the decoder's drafts, verified inside ``batching``'s steps (None: the batch decodes this stream plainly)
    speculation: BatchSpeculation | None = None


@attrs.frozen
class Clock:
    """When the request was submitted and when a worker started it (perf_counter seconds)."""

    submitted: float
    started: float


def generate(req: GenerateRequest, target: Target, clock: Clock, plugins: dict[str, str],
             emit: Callable[[StreamChunk], None] | None = None,
             cancel: threading.Event | None = None) -> Completion:
    """Serve ``req``; ``emit`` receives each piece of text as it is final (and a last chunk carrying the
    Completion), ``cancel`` ends the loop early with finish_reason "cancelled"."""
    loaded, batching = target.loaded, target.batching
    tok = loaded.tokenizer
    with contextlib.nullcontext() if batching is not None else target.lock:
        t0 = time.perf_counter()
        ids = tok.encode(req.prompt, parse_special=True)
        t1 = time.perf_counter()
        if not ids:
            raise InputError("the prompt is empty after tokenization")
        if len(ids) >= loaded.n_ctx:
            raise ContextLengthError(f"the prompt has {len(ids)} tokens; the context holds {loaded.n_ctx} "
                             f"(prompt + at least one generated token): shorten it or raise n_ctx")
        params = attrs.evolve(req.params, max_tokens=min(req.params.max_tokens, loaded.n_ctx - len(ids)))
        # the Sampler (inside the decoder or the batcher) reports each chosen token's logprobs here, before
        # the token reaches this loop
        sampled = collections.deque() if params.logprobs is not None else None
        if sampled is not None:
            params = attrs.evolve(params, report=sampled.append)
        tokens = (batching.generate(ids, params, tok.is_eog, speculation=target.speculation)
                  if batching is not None
                  else target.decoder.generate(loaded.session(), ids, params, tok.is_eog))
        run = _Run(tok, StopMatcher(req.stop), emit, sampled)
        try:
            run.consume(tokens, current_token(), cancel)
        finally:
            # end the decoder too, whatever ended the loop.  A request stopped by its token or a raised
            # error would otherwise leave it suspended, and the error's traceback keeps it alive: a
            # batched stream then goes on decoding in the batch until its max_tokens
            close = getattr(tokens, "close", None)
            if close is not None:
                close()
        end = time.perf_counter()
        run.flush()
        # the decoder's stats are the last request's: read them while this request still holds the lock
        decoder_stats = ({"continuous_batching": True, "peak_streams": batching.peak_streams}
                         if batching is not None else target.decoder.stats())
    first_at = run.first_at or end
    completion = Completion(
        id=f"cmpl-{uuid.uuid4().hex[:24]}", model=req.model, text="".join(run.text), token_ids=tuple(run.out),
        finish_reason=run.finish, usage=Usage(len(ids), len(run.out)),
        timings=Timings(queue_ms=(clock.started - clock.submitted) * 1e3, tokenize_ms=(t1 - t0) * 1e3,
                        prompt_ms=(first_at - t1) * 1e3, decode_ms=(end - first_at) * 1e3,
                        prompt_tokens=len(ids), decode_tokens=max(0, run.n_yielded - 1)),
        plugins=plugins, decoder_stats=decoder_stats, chat=req.chat,
        logprobs=tuple(run.logprobs) if sampled is not None else None)
    if emit is not None:
        emit(StreamChunk("", (), run.finish, completion))
    return completion


@attrs.define
class _Run:
    """The per-request state of the loop: ids kept, text so far, why it ended."""

    tok: object
    stops: StopMatcher
    emit: Callable[[StreamChunk], None] | None
    sampled: collections.deque | None = None  # corert.sampling.SampledToken, one per yielded token
    detok: object = attrs.field(init=False)
    out: list[int] = attrs.field(factory=list)
    text: list[str] = attrs.field(factory=list)
    finish: str = "length"
    cut: bool = False  # a stop string ended the text (an end-of-generation token also finishes with "stop")
    first_at: float | None = None
    n_yielded: int = 0
    logprobs: list[TokenLogprob] = attrs.field(factory=list)
    unsent: list[TokenLogprob] = attrs.field(factory=list)  # logprobs of tokens whose text is held back

    def __attrs_post_init__(self) -> None:
        self.detok = self.tok.incremental_decoder()

    def consume(self, tokens, stop_check, cancel: threading.Event | None) -> None:
        """Detokenize and match stops until the decoder ends, a stop matches, or the request is cancelled
        (``stop_check``: the scheduler's cancel token, so timeouts and cancels end the loop)."""
        for token in tokens:
            stop_check.check()
            self.n_yielded += 1
            if self.first_at is None:
                self.first_at = time.perf_counter()
            chosen = self.sampled.popleft() if self.sampled else None
            if self.tok.is_eog(token):
                self.finish = "stop"
                return
            self.out.append(token)
            if chosen is not None:
                lp = self._logprob(chosen)
                self.logprobs.append(lp)
                self.unsent.append(lp)
            piece, hit = self.stops.push(self.detok.feed(token))
            self._piece(piece, (token,))
            if hit:
                self.finish, self.cut = "stop", True
                return
            if cancel is not None and cancel.is_set():
                self.finish = "cancelled"
                return

    def flush(self) -> None:
        """After the loop: text the detokenizer and the stop matcher still hold.  After a stop string none of
        it is kept (it follows the cut); after an end-of-generation token it is the text's end."""
        if not self.cut:
            tail, _ = self.stops.push(self.detok.flush())
            self._piece(tail + self.stops.flush(), ())

    def _logprob(self, chosen) -> TokenLogprob:
        piece = self.tok.token_bytes
        return TokenLogprob(chosen.token, piece(chosen.token), chosen.logprob,
                            tuple(TokenLogprob(t, piece(t), lp) for t, lp in chosen.top))

    def _piece(self, piece: str, ids: tuple[int, ...]) -> None:
        if piece:
            self.text.append(piece)
            if self.emit is not None:
                self.emit(StreamChunk(piece, ids, logprobs=tuple(self.unsent)))
            self.unsent.clear()
