"""Continuous batching on the native engine: several sequences advance in one forward pass.

    runner = BatchRunner(loaded)                     # a NativeModel whose KV store has n_seqs slots
    a = runner.add(prompt_ids, SamplingParams(...))  # joins before the next step
    while runner.active:
        for stream_id, token in runner.step():       # one forward: decode rows + prompt chunks
            ...
    runner.result(a)                                 # the generated ids, finish reason

One step gathers, per live stream, the ids it has not evaluated yet (a prompt chunk, or the last sampled
token) as rows of one forward; the KV store (kv_cache=paged) finds each row's pages through its sequence's
page table.  Requests join and leave between steps.  Every kernel computes a row from that row and its
own sequence's K/V only, so each stream's tokens are exactly those it produces alone.

With a store that knows token ids (kv_cache=paged) a new stream first takes the cached pages of its
prompt's longest cached prefix, and a stream whose K/V the store evicted (budget exhausted while it waited)
is recomputed from its ids, transparently.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ...batch_service import Stream, StreamTable, check_prompt
from ...config import NativeConfig
from ...errors import InputError
from ...interfaces import PrefixMatchingKVStore, SamplingParams
from ...numba_setup import PARALLEL_LOCK, run_parallel

#: Prompt rows evaluated per step across all joining streams, so decoding streams are not stalled long
#: (one default, the native settings table's).
DEFAULT_PREFILL_ROWS = NativeConfig().prefill_rows


class BatchRunner(StreamTable):
    """Continuous batching over one loaded native model (see the module docstring)."""

    def __init__(self, model, prefill_rows: int = DEFAULT_PREFILL_ROWS, share_prefixes: bool = True):
        super().__init__()
        self.model = model
        self.kv = model.kv
        self.prefill_rows = max(1, int(prefill_rows))
        self._tracks = isinstance(self.kv, PrefixMatchingKVStore)  # a paged store: ids, prefix sharing, eviction
        self.share_prefixes = share_prefixes and self._tracks

    # -- joining and leaving ---------------------------------------------------------------------------
    def add(self, prompt_ids: Sequence[int], params: SamplingParams,
            is_eog: Callable[[int], bool] | None = None) -> int:
        ids = [int(t) for t in prompt_ids]
        m = self.model
        check_prompt(ids, m.n_vocab, m.n_ctx)
        seq = self.kv.new_sequence()
        st = Stream.start(next(self._ids), seq, ids, params, m.n_ctx, is_eog or m.tokenizer.is_eog)
        if self.share_prefixes:
            st.done_upto = self.kv.match_prefix(seq, ids)
        self.streams[st.id] = st
        return st.id

    # -- one step --------------------------------------------------------------------------------------
    def step(self) -> list[tuple[int, int]]:
        """One forward over every live stream's pending rows; returns (stream id, new token) pairs."""
        plan = self._plan()
        while plan:
            try:
                return self._run(plan)
            except InputError as exc:
                if len(plan) == 1 or "KV cache full" not in str(exc):
                    self._finish(self.streams[plan[0][0]], f"error: {exc}")
                    raise
                plan = plan[:-1]  # not all fit: the newest waits a step (its K/V may be evicted)
        return []

    def _plan(self) -> list[tuple[int, int]]:
        """(stream id, rows this step): every stream's pending ids, prompt rows capped per step."""
        plan, budget = [], self.prefill_rows
        for sid, st in self.streams.items():
            have = self.kv.length(st.seq)
            if have < st.done_upto:  # evicted while it waited: recompute its K/V from its ids
                if have == 0 and self.share_prefixes:
                    have = self.kv.match_prefix(st.seq, st.tokens)
                st.recomputed += st.done_upto - have
                st.done_upto = have
            pending = len(st.tokens) - st.done_upto
            if pending <= 1:
                plan.append((sid, pending))
            elif budget > 0:
                n = min(pending, budget)
                budget -= n
                plan.append((sid, n))
        return plan

    def _run(self, plan: list[tuple[int, int]]) -> list[tuple[int, int]]:
        ids, seqs, pos, logit_rows, sampled = [], [], [], [], []
        for sid, n in plan:
            st = self.streams[sid]
            a = st.done_upto
            ids += st.tokens[a:a + n]
            seqs += [st.seq] * n
            pos += range(a, a + n)
            if a + n == len(st.tokens):  # the stream's last pending row: sample from it
                logit_rows.append(len(ids) - 1)
                sampled.append(st)
        ids_a = np.asarray(ids, np.int32)
        seq_a = np.asarray(seqs, np.int32)
        pos_a = np.asarray(pos, np.int32)
        m = self.model
        with PARALLEL_LOCK:
            if self._tracks:
                self.kv.reserve(seq_a, pos_a, token_ids=ids_a)
            else:
                self.kv.reserve(seq_a, pos_a)
            try:
                # int64 even when empty: a step of prompt chunks only (a prompt longer than prefill_rows)
                # samples nothing, and an empty float array is no index
                logits = run_parallel(m.transformer.forward, ids_a, seq_a, pos_a, self.kv,
                                      np.asarray(logit_rows, np.int64), threads=m.threads)
            except BaseException:
                for sid, _ in plan:
                    st = self.streams[sid]
                    self.kv.truncate(st.seq, st.done_upto)
                raise
        for sid, n in plan:
            self.streams[sid].done_upto += n
        self.steps += 1
        self.rows += len(ids)
        out = []
        for st, row in zip(sampled, logits):
            tok, finish = st.accept(row)
            out.append((st.id, tok))
            if finish is not None:
                self._finish(st, finish)
        return out

    def _release(self, st: Stream) -> None:
        self.kv.release(st.seq)

    # -- convenience -----------------------------------------------------------------------------------
    def run(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[int]]:
        """Serve every prompt at once until all finish; the generated ids of each."""
        sids = [self.add(p, params) for p in prompts]
        while self.active:
            self.step()
        return [self.finished[s].generated for s in sids]
