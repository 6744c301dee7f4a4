"""Continuous batching on the llama.cpp engine: several sequences of one llama.cpp context advance together.

    runner = LlamaBatchRunner(BatchContext.create(loaded, n_seqs=4))
    a = runner.add(prompt_ids, SamplingParams(...))  # takes a free slot, reusing its cached prefix
    while runner.active:
        for stream_id, token in runner.step():       # ONE llama_decode: decode rows + prompt chunks
            ...

The context holds ``n_seqs`` KV sequences (slots), each of the model's full ``n_ctx``, in separate KV
streams (``kv_unified`` off): a sequence's cells then sit at the same places, in the same order, as in a
context of its own, so attention reads its K/V in the same order as alone.  (A unified buffer interleaves
the sequences' cells and changes that order.)  llama.cpp splits one decode into micro-batches of
consecutive sequence ids, so rows go in ascending slot order and a new stream fills a hole when it can.
The context copies the model context's parameters, so both hold the kv_cache plugin's cache type and
flash-attention setting: with attention computed two ways a stream's greedy tokens would part from its
solo ones after a near tie.

Exactness: ggml multiplies a weight matrix by a micro-batch of rows with a kernel chosen by the row count
(one to three rows: per-row dot products; from four, with the repacked extra buffers, 4-row gemm tiles;
without them llamafile's tinyBLAS tiles change at eight).  Q4_1 weights (SmolLM2) have one kernel for every
count: each stream's greedy tokens equal its tokens alone, whatever the batch.  Q5_0/Q8_0/Q4_K weights
(Qwen 0.5B) round differently in a batch of four or more, so a stream's greedy tokens may part from its
solo ones after a near tie.  A fixed row count per step (pad rows in idle slots) would make them
batch-invariant, at several times the cost of a lone stream's step: not done.

Slot prefix reuse: a finished or cancelled stream leaves its tokens in its slot; a new request takes the
free slot whose cached tokens share the longest prefix with its prompt (when that prefix is at least
:data:`MIN_REUSE_FRACTION` of the prompt), removes the rest of that slot's K/V and evaluates only the
remainder.  Without such a slot it takes the one that keeps the live slots in the fewest runs of
consecutive ids, then an empty one, then the least recently used.
"""
from __future__ import annotations

import ctypes
from typing import Callable, Sequence

import attrs
import numpy as np

from ..batch_service import Stream, StreamTable, check_prompt
from ..compute import on_compute_thread
from ..errors import InputError, ModelError
from ..interfaces import SamplingParams

#: Prompt rows evaluated per step across all joining streams (as the native engine's default), so decoding
#: streams are not stalled long by a long prompt
DEFAULT_PREFILL_ROWS = 256
#: A free slot's cached prefix is reused when it covers at least this share of the prompt (llama-server's
#: slot-similarity default); a shorter one (a shared BOS or chat header) is not worth the slot's cache
MIN_REUSE_FRACTION = 0.1


@attrs.define
class Slot:
    """One KV sequence of the batching context."""

    seq: int
    tokens: list[int] = attrs.Factory(list)  # the ids whose K/V the sequence holds, in order
    stream: int | None = None  # the live stream decoding in it
    used: int = 0  # when a stream last took it (the runner's count of adds): least recently used goes first


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _runs(seqs: set[int]) -> int:
    """How many runs of consecutive ids ``seqs`` makes (llama.cpp's micro-batches of one decode step)."""
    return sum(1 for q in seqs if q - 1 not in seqs)


class BatchContext:
    """A llama.cpp context with ``n_seqs`` KV sequences beside a loaded model's own, and a llama_batch big
    enough for one step (``rows``: every slot's decode row plus the prompt rows of a step)."""

    def __init__(self, lib, ctx, batch, n_seqs: int, n_ctx: int, n_vocab: int, rows: int, tokenizer):
        self.lib, self.ctx, self.batch = lib, ctx, batch
        self.n_seqs, self.n_ctx, self.n_vocab, self.rows = n_seqs, n_ctx, n_vocab, rows
        self.tokenizer = tokenizer

    @classmethod
    def create(cls, loaded, n_seqs: int, prefill_rows: int = DEFAULT_PREFILL_ROWS) -> "BatchContext":
        lib = loaded.lib
        from llama_cpp import _internals

        llm = loaded.llama
        # type_k/v, flash_attn and threads as the model's own context (see the module docstring)
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        rows = n_seqs + prefill_rows
        params.n_seq_max = n_seqs
        params.kv_unified = False  # one KV stream per sequence (see the module docstring)
        params.n_ctx = loaded.n_ctx * n_seqs  # split evenly: every sequence gets the model's n_ctx
        params.n_batch = params.n_ubatch = rows
        try:
            ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
            batch = _internals.LlamaBatch(n_tokens=rows, embd=0, n_seq_max=1, verbose=False)
        except Exception as exc:  # noqa: BLE001 - llama.cpp reports allocation failures as ValueError/RuntimeError
            raise ModelError(f"llama.cpp could not create a context of {n_seqs} sequences x {loaded.n_ctx} "
                             f"tokens: {type(exc).__name__}: {exc}") from exc
        return cls(lib, ctx, batch, n_seqs, loaded.n_ctx, loaded.n_vocab, rows, loaded.tokenizer)

    def set_threads(self, n_threads: int, n_threads_batch: int) -> None:
        self.ctx.set_n_threads(n_threads, n_threads_batch)

    def seq_rm(self, seq: int, start: int) -> None:
        """Drop ``seq``'s K/V from position ``start`` on."""
        self.lib.llama_memory_seq_rm(self.ctx.memory, seq, start, -1)

    def decode(self, tokens: list[int], seqs: list[int], pos: list[int], want: list[bool]) -> None:
        """One llama_decode of these rows (on the compute thread, like every forward of the process)."""
        b = self.batch.batch
        n = len(tokens)
        for i in range(n):
            b.token[i] = tokens[i]
            b.pos[i] = pos[i]
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seqs[i]
            b.logits[i] = want[i]
        b.n_tokens = n
        rc = on_compute_thread(self.lib.llama_decode, self.ctx.ctx, b)
        if rc != 0:
            raise ModelError(f"llama.cpp failed to evaluate the batch (llama_decode returned {rc})")

    def logits(self, row: int) -> np.ndarray:
        """The logits of batch row ``row`` of the last decode (a view, valid until the next decode)."""
        ptr = self.lib.llama_get_logits_ith(self.ctx.ctx, row)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()


class LlamaBatchRunner(StreamTable):
    """Continuous batching over one :class:`BatchContext` (see the module docstring); a
    :class:`corert.interfaces.BatchingRunner`."""

    def __init__(self, context: BatchContext, prefill_rows: int = DEFAULT_PREFILL_ROWS):
        super().__init__()
        self.context = context
        self.prefill_rows = max(1, min(int(prefill_rows), context.rows - context.n_seqs))
        self.slots = [Slot(i) for i in range(context.n_seqs)]
        self._adds = 0

    # -- joining and leaving ---------------------------------------------------------------------------
    def add(self, prompt_ids: Sequence[int], params: SamplingParams,
            is_eog: Callable[[int], bool] | None = None) -> int:
        ids = [int(t) for t in prompt_ids]
        c = self.context
        check_prompt(ids, c.n_vocab, c.n_ctx)
        slot, reuse = self._pick_slot(ids)
        c.seq_rm(slot.seq, reuse)
        del slot.tokens[reuse:]
        st = Stream.start(next(self._ids), slot.seq, ids, params, c.n_ctx, is_eog or c.tokenizer.is_eog)
        st.done_upto = reuse
        self._adds += 1
        slot.stream, slot.used = st.id, self._adds
        self.streams[st.id] = st
        return st.id

    def _pick_slot(self, ids: list[int]) -> tuple[Slot, int]:
        """The free slot to take and how many of its cached tokens the prompt keeps (at least one prompt id
        is evaluated: its logits give the first token)."""
        free = [s for s in self.slots if s.stream is None]
        if not free:
            raise InputError(f"all {len(self.slots)} sequence slots are taken")
        shared = [min(common_prefix(s.tokens, ids), len(ids) - 1) for s in free]
        best = max(range(len(free)), key=lambda i: (shared[i], -free[i].seq))
        if shared[best] > 0 and shared[best] >= MIN_REUSE_FRACTION * len(ids):
            return free[best], shared[best]
        live = {s.seq for s in self.slots if s.stream is not None}
        # fewest runs of consecutive live ids first (each run is a micro-batch: a hole costs a whole pass
        # over the weights every step), then an empty slot, then the least recently used cache
        return min(free, key=lambda s: (_runs(live | {s.seq}), bool(s.tokens), s.used, s.seq)), 0

    def forget(self) -> None:
        """Empty every free slot (its cached prefix is not reused any more)."""
        for slot in self.slots:
            if slot.stream is None:
                self.context.seq_rm(slot.seq, 0)
                slot.tokens.clear()

    # -- one step --------------------------------------------------------------------------------------
    def step(self) -> list[tuple[int, int]]:
        """One llama_decode over every live stream's pending rows; returns (stream id, new token) pairs."""
        plan, budget = [], self.prefill_rows
        for st in sorted(self.streams.values(), key=lambda s: s.seq):  # ascending ids: fewest micro-batches
            pending = len(st.tokens) - st.done_upto  # >= 1: a stream always has a row to evaluate
            if pending == 1:
                plan.append((st, 1))
            elif budget > 0:
                n = min(pending, budget)
                budget -= n
                plan.append((st, n))
        if not plan:
            return []
        tokens, seqs, pos, want, sampled = [], [], [], [], []
        for st, n in plan:
            a = st.done_upto
            tokens += st.tokens[a:a + n]
            seqs += [st.seq] * n
            pos += range(a, a + n)
            last = a + n == len(st.tokens)  # the stream's last pending row: sample from it
            want += [False] * (n - 1) + [last]
            if last:
                sampled.append((st, len(tokens) - 1))
        try:
            self.context.decode(tokens, seqs, pos, want)
        except BaseException:
            for st, _ in plan:  # whatever the failed decode left behind goes: each K/V as before the step
                self.context.seq_rm(st.seq, st.done_upto)
            raise
        for st, n in plan:
            st.done_upto += n
        self.steps += 1
        self.rows += len(tokens)
        out = []
        for st, row in sampled:
            tok, finish = st.accept(self.context.logits(row))
            out.append((st.id, tok))
            if finish is not None:
                self._finish(st, finish)
        return out

    def _release(self, st: Stream) -> None:
        slot = self.slots[st.seq]
        slot.tokens = st.tokens[:st.done_upto]  # its K/V stay: a later prompt may reuse them
        slot.stream = None
