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

Speculation inside the batch: a stream added with a ``speculation`` (corert.interfaces.BatchSpeculation,
a speculative decoder's) also gets draft rows after its pending token, chosen each step knowing the rows
already in it; the same forward verifies them, the stream keeps the accepted drafts plus the target's own
token and its sequence is truncated past them.  A row's logits do not depend on the other rows, so each
stream's greedy tokens stay exactly its plain ones, whatever runs beside it.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from ...batch_service import Stream, StreamTable, check_prompt
from ...config import NativeConfig
from ...errors import InputError
from ...interfaces import (BatchSpeculation, PrefixMatchingKVStore, SamplingParams, StreamDrafter,
                           match_cached_prefix, reserve_rows)
from ...numba_setup import PARALLEL_LOCK, run_parallel
from ...sampling import choose_rows

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
        #: speculating streams: their BatchSpeculation and drafter
        self._drafters: dict[int, tuple[BatchSpeculation, StreamDrafter]] = {}
        self.drafted = 0  # draft rows verified so far
        self.accepted = 0  # of which accepted
        self.draft_seconds = 0.0  # spent choosing drafts (lookup and depth choice), all streams
        self.rollback_seconds = 0.0  # spent truncating rejected drafts' K/V
        #: per stream, per position evaluated: whether its K/V took the variant's bulk path (model.forward's
        #: ``bulk``: a prompt's rows but its last), so a recomputed evicted stream gets the same bits; kept (and
        #: a step's mask made) only when the variant has a bulk path
        self._bulk_path = model.transformer.bulk_path
        self._bulk: dict[int, list[bool]] = {}

    # -- joining and leaving ---------------------------------------------------------------------------
    def add(self, prompt_ids: Sequence[int], params: SamplingParams,
            is_eog: Callable[[int], bool] | None = None, speculation: BatchSpeculation | None = None) -> int:
        ids = [int(t) for t in prompt_ids]
        m = self.model
        check_prompt(ids, m.n_vocab, m.n_ctx)
        seq = self.kv.new_sequence()
        st = Stream.start(next(self._ids), seq, ids, params, m.n_ctx, is_eog or m.tokenizer.is_eog)
        if self.share_prefixes:
            st.done_upto = self.kv.match_prefix(seq, ids)
        self.streams[st.id] = st
        if speculation is not None:
            self._drafters[st.id] = (speculation, speculation.stream(ids, st.params, st.sample.rng))
        return st.id

    # -- one step --------------------------------------------------------------------------------------
    def step(self) -> list[tuple[int, int]]:
        """One forward over every live stream's pending rows; returns (stream id, new token) pairs."""
        t0 = time.perf_counter()
        plan = self._draft(self._plan())
        if self._drafters:
            self.draft_seconds += time.perf_counter() - t0
        while plan:
            try:
                return self._run(plan)
            except InputError as exc:
                if "KV cache full" in str(exc) and any(d for _, _, d in plan):
                    plan = [(sid, n, []) for sid, n, _ in plan]  # no room for drafts: decode plainly
                    continue
                if len(plan) == 1 or "KV cache full" not in str(exc):
                    self._finish(self.streams[plan[0][0]], f"error: {exc}")
                    raise
                plan = plan[:-1]  # not all fit: the newest waits a step (its K/V may be evicted)
        return []

    def _draft(self, plan: list[tuple[int, int]]) -> list[tuple[int, int, list[int]]]:
        """(stream id, rows, drafts): each speculating stream's drafts after its pending token, chosen by
        its BatchSpeculation with the rows already in the step."""
        if not self._drafters:
            return [(sid, n, []) for sid, n in plan]
        rows = sum(n for _, n in plan)
        tokens = sum(1 for sid, n in plan if self.streams[sid].done_upto + n == len(self.streams[sid].tokens))
        drafts: dict[int, list[int]] = {}
        groups: dict[int, list[int]] = {}
        for sid, n in plan:
            if sid in self._drafters and n == 1:
                groups.setdefault(id(self._drafters[sid][0]), []).append(sid)
        for sids in groups.values():
            spec = self._drafters[sids[0]][0]
            entries = []
            for sid in sids:
                st = self.streams[sid]
                # room: never past max_tokens (accepted + the target's own token) or the context
                room = min(st.params.max_tokens - len(st.generated) - 1, self.model.n_ctx - len(st.tokens))
                entries.append((self._drafters[sid][1], st.tokens, max(0, room)))
            for sid, d in zip(sids, spec.draft(entries, rows, tokens)):
                drafts[sid] = [int(t) for t in d]
                rows += len(d)
        return [(sid, n, drafts.get(sid, [])) for sid, n in plan]

    def _plan(self) -> list[tuple[int, int]]:
        """(stream id, rows this step): every stream's pending ids, prompt rows capped per step."""
        plan, budget = [], self.prefill_rows
        for sid, st in self.streams.items():
            have = self.kv.length(st.seq)
            if have < st.done_upto:  # evicted while it waited: recompute its K/V from its ids
                if have == 0 and self.share_prefixes:
                    # its own rows' paths: pages of the same ids on other paths hold other bits
                    exact = [not b for b in self._bulk.get(sid, [])] if self._bulk_path else None
                    have = match_cached_prefix(self.kv, st.seq, st.tokens, exact)
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

    def _paths(self, st: Stream, n: int) -> list[bool]:
        """Whether each of the stream's next ``n`` rows takes the bulk path: the path it had when it was
        evaluated before (an evicted stream's recomputed rows), else forward's rule (all but its last row
        when that row ends the pending ids: the one sampled from)."""
        a = st.done_upto
        last = a + n == len(st.tokens)
        # rows a match gave it past its own history are bulk: match_prefix shares them only as bulk rows
        had = self._bulk.setdefault(st.id, [])
        had += [True] * (a - len(had))
        return [had[p] if p < len(had) else not (last and p == a + n - 1) for p in range(a, a + n)]

    @staticmethod
    def _bulk_first(plan: list[tuple[int, int, list[int]]],
                    paths: dict[int, list[bool]]) -> list[tuple[int, int, list[int]]]:
        """The plan's streams in row order: those with bulk rows only, then those whose rows start bulk (a
        prompt's last chunk), then the rest (decode rows, drafts: exact); each stream's rows stay together
        and in order.  With one stream ending its prompt or none, the step's bulk rows come first and each
        product runs as two contiguous halves, no rows copied (model.bind_product)."""
        def rank(entry: tuple[int, int, list[int]]) -> int:
            p = paths[entry[0]]
            return 2 if not p or not p[0] else 0 if all(p) and not entry[2] else 1
        return sorted(plan, key=rank)  # stable: plan order within a rank

    def _run(self, plan: list[tuple[int, int, list[int]]]) -> list[tuple[int, int]]:
        ids, seqs, pos, logit_rows, sampled, bulk = [], [], [], [], [], []
        paths = {sid: self._paths(self.streams[sid], n) for sid, n, _ in plan} if self._bulk_path else {}
        for sid, n, drafts in self._bulk_first(plan, paths) if paths else plan:
            st = self.streams[sid]
            a = st.done_upto
            rows = st.tokens[a:a + n] + drafts
            ids += rows
            seqs += [st.seq] * len(rows)
            pos += range(a, a + len(rows))
            if a + n == len(st.tokens):  # the stream's last pending row (and its drafts'): sample from it
                logit_rows += range(len(ids) - 1 - len(drafts), len(ids))
                sampled.append((st, drafts))
            if paths:
                bulk += paths[sid] + [False] * len(drafts)  # drafts return logits: the exact path
        ids_a = np.asarray(ids, np.int32)
        seq_a = np.asarray(seqs, np.int32)
        pos_a = np.asarray(pos, np.int32)
        m = self.model
        bulk_a = np.asarray(bulk, np.bool_) if paths else None
        with PARALLEL_LOCK:
            # the store keys pages by their rows' paths: a new prompt's match wants bulk rows
            reserve_rows(self.kv, seq_a, pos_a, ids_a, exact=None if bulk_a is None else ~bulk_a)
            t0 = time.perf_counter()
            try:
                # int64 even when empty: a step of prompt chunks only (a prompt longer than prefill_rows)
                # samples nothing, and an empty float array is no index
                logits = run_parallel(m.transformer.forward, ids_a, seq_a, pos_a, self.kv,
                                      np.asarray(logit_rows, np.int64), None, bulk_a, threads=m.threads)
            except BaseException:
                for sid, _, _ in plan:
                    st = self.streams[sid]
                    self.kv.truncate(st.seq, st.done_upto)
                raise
            seconds = time.perf_counter() - t0
        if len(logit_rows) == len(ids):  # no prompt chunk in it (those rows skip the output projection)
            for spec in {id(s): s for s, _ in self._drafters.values()}.values():
                spec.record_step(len(ids), seconds)
        for sid, n, _ in plan:
            st = self.streams[sid]
            if paths:
                had = self._bulk[sid]
                had += paths[sid][len(had) - st.done_upto:]
            st.done_upto += n
        self.steps += 1
        self.rows += len(ids)
        out: list[tuple[int, int]] = []
        # every plain row's token in one call (one argmax over the block when all are greedy)
        starts = np.cumsum([0] + [len(d) + 1 for _, d in sampled])
        plain = [i for i, (_, d) in enumerate(sampled) if not d]
        drawn = dict(zip(plain, choose_rows([sampled[i][0].sample for i in plain], logits, starts[plain])))
        for i, (st, drafts) in enumerate(sampled):
            rows = logits[starts[i]:starts[i + 1]]
            if not drafts:
                chosen = [drawn[i]]
            else:
                n_ok, nxt = self._drafters[st.id][1].settle(rows)
                chosen = drafts[:n_ok] + [nxt]
                st.done_upto += n_ok
                if self._bulk_path:
                    self._bulk[st.id] += [False] * n_ok
                t0 = time.perf_counter()
                self.kv.truncate(st.seq, st.done_upto)  # drop the rejected drafts' K/V
                self.rollback_seconds += time.perf_counter() - t0
                self.drafted += len(drafts)
                self.accepted += n_ok
                st.drafted += len(drafts)
                st.accepted += n_ok
            for tok in chosen:
                tok, finish = st.take(tok)
                out.append((st.id, tok))
                if finish is not None:
                    self._finish(st, finish)
                    break
        return out

    def _release(self, st: Stream) -> None:
        self._bulk.pop(st.id, None)
        spec = self._drafters.pop(st.id, None)
        if spec is not None:
            spec[1].finish()
        self.kv.release(st.seq)

    # -- convenience -----------------------------------------------------------------------------------
    def run(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[int]]:
        """Serve every prompt at once until all finish; the generated ids of each."""
        sids = [self.add(p, params) for p in prompts]
        while self.active:
            self.step()
        return [self.finished[s].generated for s in sids]
