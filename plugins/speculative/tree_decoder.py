"""Token-tree speculative decoding for one request: several lookup candidates verified in one forward.

One step: the source offers candidates (prompt and output lookup, several matches); the controller picks how
many and how deep (tree.py); ``[pending] + their prefix tree`` is evaluated in one forward with a tree mask
(corert.interfaces.TreeSession.eval_tree); the acceptance rule walks the tree (tree_accept.py) and the
session keeps only the accepted path's K/V.  With no plan the step is a plain one.  On a session without
tree verification (llama.cpp) only the best candidate is verified, as a chain.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

import numpy as np

from corert.interfaces import SamplingParams, Session, TreeSession
from corert.prefill import prefill
from corert.sampling import Sampler

from .controller import SHADOW_SPAN, FollowedOffers, ShadowOffer
from .decoder import summarize, until_stop
from .tree import MAX_NODES, TreeController, TreeLookupSource, merge
from .tree_accept import accept_tree_greedy, accept_tree_sampled


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


class TreeDecoder:
    """Built once per loaded model (what the controller learns persists); one request at a time."""

    name = "speculative"
    runs_in_batcher = False
    samples_every_token = False  # accepted drafts bypass the Sampler (see SpeculativeDecoder)
    batch_speculation = None  # solo requests: trees are not verified inside continuous batching (yet)

    def __init__(self, max_depth: int = 31):
        self.max_depth = max_depth
        self.source = TreeLookupSource()
        self.ctrl = TreeController()
        self.verify = self.ctrl.verify
        self._stats: dict = {}

    def generate(self, session: Session, prompt_ids: Sequence[int], params: SamplingParams,
                 is_eog: Callable[[int], bool]) -> Iterator[int]:
        greedy = params.temperature <= 0.0
        sampler = Sampler(params)
        tree_ok = isinstance(session, TreeSession)
        ctrl, src = self.ctrl, self.source
        branches = ctrl.max_branches if tree_ok else 1
        st = {"drafted": 0, "accepted": 0, "steps": 0, "spec_steps": 0, "tree_nodes": 0, "branches": 0,
              "draft_ms": 0.0, "verify_ms": 0.0, "accepted_from": {"prompt": 0, "output": 0}}
        self._stats = st
        t0 = time.perf_counter()
        logits = prefill(session, prompt_ids)
        st["prompt_ms"] = (time.perf_counter() - t0) * 1e3
        src.start(prompt_ids)
        pending = sampler(logits)
        produced = 0
        shadows: dict[int, ShadowOffer] = {}  # match class -> a declined offer being checked
        # match class -> a fully accepted candidate's rest
        with FollowedOffers() as self._tails:
            while True:
                yield pending
                produced += 1
                if is_eog(pending) or produced >= params.max_tokens:
                    break
                src.extend((pending,))
                shadows = {c: sh for c, sh in shadows.items() if not sh.observe(pending)}
                self._tails.feed((pending,))
                room = min(params.max_tokens - produced - 1, session.n_ctx - len(session.tokens) - 1, self.max_depth)
                td = time.perf_counter()
                # whole free offers (past the room: a declined or fully accepted one is followed that far)
                cands = src.candidates(max(room, SHADOW_SPAN)) if room > 0 else []
                plan = ctrl.plan(cands, room, branches, min(MAX_NODES, session.n_ctx - len(session.tokens)))
                st["draft_ms"] += (time.perf_counter() - td) * 1e3  # finding and planning the drafts
                st["steps"] += 1
                tv = time.perf_counter()
                if not plan:
                    for c in cands:  # free offers declined: learn from them anyway, one per class
                        if c.cls not in shadows:
                            shadows[c.cls] = ShadowOffer(list(c.tokens), ctrl, c.cls)
                    logits = session.eval((pending,))
                    self._timed(1, tv)
                    pending = sampler(logits)
                    continue
                shadows.clear()  # a real verify gives better evidence
                tokens, parents = merge([d for _, d in plan])
                tokens[0] = pending
                if tree_ok:
                    rows = session.eval_tree(tokens, parents)
                else:
                    rows = session.eval(tokens, all_logits=True)
                self._timed(len(tokens), tv)
                if greedy:
                    path, nxt = accept_tree_greedy(tokens, parents, rows)
                else:
                    qs = [{t: 1.0} for t in tokens]  # lookup drafts are point masses
                    path, nxt = accept_tree_sampled(tokens, parents, qs, rows, params, sampler.rng)
                if tree_ok:
                    session.keep_path(path)
                else:
                    session.truncate(len(session.tokens) - (len(tokens) - len(path)))
                out = [tokens[j] for j in path[1:]]
                self._tails.feed(out)
                self._record(plan, out + [nxt], st, len(tokens) - 1)
                st["accepted"] += len(out)
                emit, stop = until_stop(out, produced, params.max_tokens, is_eog)
                yield from emit
                produced += len(emit)
                if stop:
                    break
                src.extend(out)
                pending = nxt

    def _timed(self, rows: int, since: float) -> None:
        dt = time.perf_counter() - since
        self.ctrl.record_verify(rows, dt)
        self._stats["verify_ms"] += dt * 1e3

    def _record(self, plan, produced: list[int], st: dict, nodes: int) -> None:
        """Each verified candidate's accepted run goes to its match class."""
        st["spec_steps"] += 1
        st["drafted"] += nodes
        st["tree_nodes"] += nodes
        st["branches"] += len(plan)
        runs = [(_common_prefix(d, produced), c) for c, d in plan]
        for (run, c), (_, d) in zip(runs, plan):
            if run == len(d) < len(c.tokens):  # censored at the depth drafted: follow the rest (decoder.py)
                self._tails.setdefault(c.cls, ShadowOffer.tail(list(c.tokens), run, self.ctrl, c.cls))
            else:
                self.ctrl.record_acceptance(len(d), run, c.cls)
        run, c = max(runs, key=lambda x: x[0])
        st["accepted_from"][c.origin] += min(run, len(produced) - 1)

    def stats(self) -> dict:
        return summarize(self._stats, "mean_nodes", "tree_nodes")
