"""The paged KV store: one pre-allocated pool of fixed-size pages, per-sequence page tables, prefix sharing,
copy-on-write, LRU eviction of idle sequences and compaction.  Implements corert.interfaces.KVStore.

Storage (all layers of a page together, so a page id means the same tokens in every layer):
  k, v     (n_layers, n_pages, n_kv_heads, page_tokens, head_dim)   f32 | uint16 (f16 bits) | int8
  ks, vs   (n_layers, n_pages, n_kv_heads, page_tokens, head_dim // 32)   uint16 f16 scales, q8 only
  table    (n_seqs, max_pages) int32: page of each sequence's j-th block of page_tokens positions
The integers (ref counts, free list, prefix hashes) live in :class:`PagePool`.

q8 pages hold keys and values in a basis where int8 blocks lose little (q8.py: per-channel centring and
weighting of keys, a Walsh-Hadamard rotation of keys and values, position 0 against a reference key); the
attention result is exact up to that rounding.  The basis is calibrated per layer on CALIBRATION_TEXT: at
load the engine asks ``calibration()`` and evaluates that text in a scratch sequence inside
``calibrating()`` (corert.interfaces.CalibratedKVStore), so every store of a model gets the same basis and
no sequence's output depends on what ran before it.

Beyond the KVStore protocol (callers that know token ids get sharing and recompute;
corert.interfaces.PrefixMatchingKVStore):
  reserve(..., token_ids=ids)   full pages of known tokens become shareable prefix-cache entries
  reserve(..., exact=mask)      rows an engine put on its exact path (amx-bf16): keyed apart from bulk rows
  match_prefix(seq, ids) -> n   an empty sequence takes the cached pages of ids' longest cached prefix
  evicted(seq) -> bool          the store dropped this idle sequence's K/V to make room: re-evaluate it
  compact(), fragmentation(), stats()
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import attrs
import numpy as np

from corert.kernels.f16 import F16_TO_F32
from corert.errors import InputError
from corert.memory import lazy_zeros
from corert.interfaces import CalibrationRequest
from corert.tree import NO_TREE, TreeMask

from .blocks import PagePool, chain_hash
from .config import DEFAULT_BUDGET_CAP, PagedConfig
from .kernels import ATTEND
from .q8 import CAL_ROWS, Calibration, Q8Coding
from .writes import QB, write_f16, write_f32, write_q8

_STORAGE = {"f32": np.float32, "f16": np.uint16, "q8": np.int8}
#: What the engine evaluates to calibrate q8 pages (prose, code, markup, lists, a table: the kinds of keys
#: and queries a runtime sees).  Its first CAL_ROWS + 1 tokens are used.
CALIBRATION_TEXT = (
    "The quick brown fox jumps over the lazy dog. In 1905, Albert Einstein published four papers that "
    "changed physics: on the photoelectric effect, Brownian motion, special relativity and mass-energy "
    "equivalence.\n\ndef mean(values):\n    \"\"\"Return the arithmetic mean of a list of numbers.\"\"\"\n"
    "    if not values:\n        raise ValueError('empty list')\n    return sum(values) / len(values)\n\n"
    "Q: What is the capital of Japan?\nA: Tokyo, which is also the largest city in the country.\n\n"
    "## Installation\n\nRun `pip install requests` and then import it:\n\n```js\nconst url = new URL('https://"
    "example.com/path?query=1#top');\nconsole.log(url.hostname, url.searchParams.get('query'));\n```\n\n"
    "Rivers carry sediment from the mountains to the sea, and over thousands of years their deltas grow into "
    "fertile plains where farmers plant rice, wheat and cotton. Heavy rains in spring often flood the lowlands.\n\n"
    "1. Open the settings menu.\n2. Select *Privacy* and turn off location history.\n3. Restart the device.\n\n"
    "SELECT name, COUNT(*) AS n FROM orders WHERE created_at >= '2024-01-01' GROUP BY name ORDER BY n DESC;\n\n"
    "She said, \"I'll be there by seven,\" but the train was late, so we waited on the platform, drinking "
    "coffee and watching the snow fall over the empty tracks.\n\n"
    "| Name | Age | City |\n|------|-----|------|\n| Anna | 34 | Berlin |\n| Luis | 28 | Madrid |\n\n"
    "for (let i = 0; i < items.length; i++) {\n  if (items[i].done) continue;\n  total += items[i].price * 1.2;\n}\n")


def _page_key(ids: Sequence[int], j: int, page_tokens: int, exact: set[int]) -> tuple[int, ...]:
    """Page j's prefix-cache key: its ids, those of rows on an engine's exact path as ~id, so a page is
    shared only with a sequence that wants each of its rows on the path it took (their bits differ)."""
    lo = j * page_tokens
    if not exact or exact.isdisjoint(range(lo, lo + page_tokens)):
        return tuple(ids[lo:lo + page_tokens])
    return tuple(~t if lo + i in exact else t for i, t in enumerate(ids[lo:lo + page_tokens]))


def page_bytes(cfg: PagedConfig, n_layers: int, n_kv_heads: int, head_dim: int) -> int:
    """Bytes of one page, K and V, all layers."""
    per_value = np.dtype(_STORAGE[cfg.dtype]).itemsize
    per_vec = head_dim * per_value + (head_dim // QB) * 2 * (cfg.dtype == "q8")
    return 2 * n_layers * n_kv_heads * cfg.page_tokens * per_vec


@attrs.define
class SeqState:
    pages: list[int] = attrs.Factory(list)
    length: int = 0
    tokens: list[int] | None = attrs.Factory(list)  # None: some positions were written without ids
    hashes: list[int] = attrs.Factory(list)  # chain hash of each full page of known tokens
    exact: set[int] = attrs.Factory(set)  # positions an engine with two paths computed on its exact one
    last_used: int = 0
    evicted: bool = False


class PagedKVStore:
    """A :class:`corert.interfaces.KVStore` over a page pool (see the module docstring)."""

    def __init__(self, cfg: PagedConfig, n_layers: int, n_kv_heads: int, head_dim: int, max_tokens: int,
                 n_seqs: int = 1):
        if cfg.dtype == "q8" and head_dim % QB:
            raise InputError(f"q8 KV pages need head_dim divisible by {QB}, got {head_dim}; use f16")
        self.cfg = cfg
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.max_tokens, self.n_seqs = max_tokens, n_seqs
        P = self.page_tokens = cfg.page_tokens
        self.max_pages = -(-max_tokens // P)
        self.page_bytes = page_bytes(cfg, n_layers, n_kv_heads, head_dim)
        budget = cfg.budget_bytes
        if budget is None:
            budget = min(DEFAULT_BUDGET_CAP, n_seqs * self.max_pages * self.page_bytes)
            budget = max(budget, self.max_pages * self.page_bytes)  # one full sequence always fits
        n_pages = min(budget // self.page_bytes, n_seqs * self.max_pages)
        if n_pages < 1:
            raise InputError(f"KV budget of {budget} bytes holds no page ({self.page_bytes} bytes each)")
        self.budget_bytes = budget
        shape = (n_layers, n_pages, n_kv_heads, P, head_dim)
        # resident only where written (corert.memory): pages in use, not the whole budget
        self.k = lazy_zeros(shape, _STORAGE[cfg.dtype])
        self.v = lazy_zeros(shape, _STORAGE[cfg.dtype])
        if cfg.dtype == "q8":
            sshape = (n_layers, n_pages, n_kv_heads, P, head_dim // QB)
            self.ks, self.vs = lazy_zeros(sshape, np.uint16), lazy_zeros(sshape, np.uint16)
            self.coding: Q8Coding | None = Q8Coding(n_layers, n_kv_heads, head_dim)
        else:  # the kernels' signature is the same; these are never read
            self.ks = self.vs = self.coding = None
        self._calibration: Calibration | None = None
        self.table = np.zeros((n_seqs, self.max_pages), np.int32)
        self._attend = ATTEND[cfg.kernel][cfg.dtype]
        # Per layer, what the write and attention kernels take besides the rows: views made once (a decode
        # step calls each 30-odd times; calibration and compaction write into these arrays in place).
        layers = range(n_layers)
        if cfg.dtype == "q8":
            c = self.coding
            self._write_args = [(self.k[i], self.ks[i], self.v[i], self.vs[i], c.mu[i], c.w[i], c.sink_key[i],
                                 c.block, F16_TO_F32, self.table, P) for i in layers]
            self._attend_args = [(self.k[i], self.ks[i], self.v[i], self.vs[i], c.w[i], c.sink[i], c.block,
                                  F16_TO_F32, self.table, P) for i in layers]
        else:
            self._write_args = [(self.k[i], self.v[i], self.table, P) for i in layers]
            self._attend_args = [(self.k[i], self.v[i], F16_TO_F32, self.table, P) for i in layers]
        self.pool = PagePool(n_pages)
        self.seqs: dict[int, SeqState] = {}
        self._free_ids = list(range(n_seqs - 1, -1, -1))
        self._tick = 0
        self._high = 0  # pages [0, _high) have been handed out at least once
        self.counters = {"evictions": 0, "prefix_queried": 0, "prefix_hits": 0, "cow_copies": 0,
                         "compactions": 0}

    @property
    def n_pages(self) -> int:
        return self.pool.n_pages

    # -- sequences -------------------------------------------------------------------------------------
    def new_sequence(self) -> int:
        if not self._free_ids:
            raise InputError(f"all {self.n_seqs} KV sequences are in use")
        seq = self._free_ids.pop()
        self.seqs[seq] = SeqState(last_used=self._tick)
        return seq

    def release(self, seq: int) -> None:
        st = self.seqs.pop(self._check(seq), None)
        if st is None:
            return
        for p in st.pages:
            self.pool.decref(p)
        self._free_ids.append(seq)

    def length(self, seq: int) -> int:
        st = self.seqs.get(self._check(seq))
        return st.length if st else 0

    def evicted(self, seq: int) -> bool:
        st = self.seqs.get(self._check(seq))
        return bool(st and st.evicted)

    def tokens(self, seq: int) -> list[int] | None:
        st = self.seqs.get(self._check(seq))
        return None if st is None or st.tokens is None else list(st.tokens)

    # -- prefix sharing --------------------------------------------------------------------------------
    def match_prefix(self, seq: int, ids: Sequence[int], exact: Sequence[bool] | None = None) -> int:
        """Give the empty sequence ``seq`` the cached pages of the longest cached prefix of ``ids`` (whole
        pages only, and at least the last id left to evaluate).  Returns how many positions it now holds.
        ``exact``: which of the ids' rows it wants on an engine's exact path (None: none, a new prompt's)."""
        st = self._state(seq)
        if st.length:
            raise InputError(f"KV sequence {seq} is not empty ({st.length} positions): truncate it first")
        ids = [int(t) for t in ids]
        want = set() if exact is None else {p for p, e in enumerate(exact) if e}
        P, prev = self.page_tokens, -1
        self.counters["prefix_queried"] += len(ids)
        for j in range((len(ids) - 1) // P):
            toks = _page_key(ids, j, P, want)
            h = chain_hash(prev, toks)
            page = self.pool.lookup(h, prev, toks)
            if page is None:
                break
            self.pool.incref(page)
            self.table[seq, j] = page
            st.pages.append(page)
            st.hashes.append(h)
            prev = h
        st.length = len(st.pages) * P
        st.tokens = ids[:st.length]
        st.exact = {p for p in want if p < st.length}
        st.evicted = False
        self.counters["prefix_hits"] += st.length
        return st.length

    # -- a forward pass --------------------------------------------------------------------------------
    def reserve(self, seq_ids: np.ndarray, positions: np.ndarray, token_ids: np.ndarray | None = None,
                provisional: bool = False, exact: np.ndarray | None = None) -> None:
        """``provisional``: the rows are a token tree; their ids become the sequence's (and full pages
        shareable) only when ``keep_path`` names the rows that stay.  ``exact``: rows on the engine's exact
        path; a page holding one is shared only by a match that wants them there (match_prefix)."""
        P = self.page_tokens
        new_len: dict[int, int] = {}
        rows: dict[int, list[int]] = {}
        for i, (s, p) in enumerate(zip(np.asarray(seq_ids).tolist(), np.asarray(positions).tolist())):
            st = self._state(s)
            want = new_len.get(s, st.length)
            if p != want:
                raise InputError(f"KV sequence {s}: position {p} does not continue it (next is {want})")
            if p >= self.max_tokens:
                raise InputError(f"KV sequence {s} is full: {self.max_tokens} tokens")
            new_len[s] = p + 1
            rows.setdefault(s, []).append(i)
            if exact is not None and exact[i]:
                st.exact.add(p)
        need = 0
        for s, n in new_len.items():
            st = self.seqs[s]
            need += -(-n // P) - len(st.pages)
            if st.length % P and self.pool.ref[st.pages[-1]] > 1:
                need += 1  # copy-on-write of the shared page we are about to write into
        if not self.pool.can_allocate(need):
            self._evict(need, busy=set(new_len))
        self._tick += 1
        ids = None if token_ids is None else np.asarray(token_ids).tolist()
        for s, n in new_len.items():
            st = self.seqs[s]
            if st.length % P:
                self._make_writable(s, st)
            while len(st.pages) * P < n:
                page = self.pool.allocate()
                self._high = max(self._high, page + 1)
                self.table[s, len(st.pages)] = page
                st.pages.append(page)
            if provisional:
                pass  # keep_path or truncate settles the ids
            elif ids is None or st.tokens is None or len(st.tokens) != st.length:
                st.tokens = None
            else:
                st.tokens.extend(ids[i] for i in rows[s])
                self._register_full(st, n)
            st.length, st.last_used, st.evicted = n, self._tick, False

    def write(self, layer: int, seq_ids: np.ndarray, positions: np.ndarray, k: np.ndarray,
              v: np.ndarray) -> None:
        # one kernel per layer: page lookup, q8 coding, quantization and stores (writes.py)
        seq_ids = np.asarray(seq_ids, np.int32)
        positions = np.asarray(positions, np.int32)
        dt = self.cfg.dtype
        if dt == "q8":
            if self._calibration is not None:
                self._calibration.add_keys(layer, positions, k)
            write_q8(np.asarray(k, np.float32), np.asarray(v, np.float32), *self._write_args[layer], seq_ids,
                     positions)
        elif dt == "f16":  # the kernel rounds f32 bit patterns (numba has no float16)
            write_f16(np.ascontiguousarray(k, np.float32).view(np.uint32),
                      np.ascontiguousarray(v, np.float32).view(np.uint32), *self._write_args[layer], seq_ids,
                      positions)
        else:
            write_f32(np.asarray(k, np.float32), np.asarray(v, np.float32), *self._write_args[layer], seq_ids,
                      positions)

    def attend(self, layer: int, seq_ids: np.ndarray, positions: np.ndarray, q: np.ndarray, scale: float,
               out: np.ndarray, window: int = 0, tree: TreeMask | None = None) -> None:
        seq_ids = np.asarray(seq_ids, np.int32)
        positions = np.asarray(positions, np.int32)
        if self._calibration is not None:
            self._calibration.add_queries(layer, positions, q)
        # q8: the kernel codes the queries into the pages' basis and decodes the outputs (q8.py)
        # window > 0 (a sliding-window layer): the kernels skip the pages before it.  They are not freed: the
        # page table is shared by all layers, and a model's global layers still read them.
        self._attend(np.asarray(q, np.float32), *self._attend_args[layer], seq_ids, positions, np.float32(scale),
                     int(window), NO_TREE if tree is None else tree.visible, out)

    def truncate(self, seq: int, n_tokens: int) -> None:
        st = self._state(seq)
        if not 0 <= n_tokens <= st.length:
            raise InputError(f"cannot roll KV sequence {seq} back to {n_tokens} tokens (it holds {st.length})")
        P = self.page_tokens
        keep = -(-n_tokens // P)
        for p in st.pages[keep:]:
            self.pool.decref(p)
        del st.pages[keep:]
        del st.hashes[n_tokens // P:]
        if st.tokens is not None:
            del st.tokens[n_tokens:]  # (a tree's provisional rows have no ids yet)
        elif n_tokens == 0:
            st.tokens = []
        if st.exact:
            st.exact = {p for p in st.exact if p < n_tokens}
        st.length = n_tokens

    def keep_path(self, seq: int, start: int, slots: Sequence[int], token_ids: Sequence[int] | None = None) -> None:
        """After a token tree's forward: the K/V of tree slots ``slots`` (increasing, from ``start``) move to
        positions start, start+1, ... and every other tree slot is dropped; ``token_ids`` are the kept rows'
        ids.  The pages then hold what a forward of the kept rows alone would have left (full pages of
        known ids become shareable)."""
        st = self._state(seq)
        slots = [int(x) for x in slots]
        if any(b <= a for a, b in zip(slots, slots[1:])) or (slots and (slots[0] < start or slots[-1] >= st.length)):
            raise InputError(f"KV sequence {seq}: tree slots {slots} must increase within {start}..{st.length - 1}")
        P = self.page_tokens
        for j, src in enumerate(slots):  # destinations never pass their sources: in place, in order
            dst = start + j
            if dst != src:
                for a in self._arrays():
                    a[:, st.pages[dst // P], :, dst % P] = a[:, st.pages[src // P], :, src % P]
        tokens = st.tokens
        # the kept slots' paths move with them
        exact = {p for p in st.exact if p < start} | {start + j for j, src in enumerate(slots) if src in st.exact}
        self.truncate(seq, start + len(slots))
        st.exact = exact
        if tokens is None or len(tokens) < start or token_ids is None:
            st.tokens = None
        else:
            st.tokens = tokens[:start] + [int(t) for t in token_ids]
            self._register_full(st, st.length)

    def nbytes(self) -> int:
        arrays = [self.k, self.v] + ([self.ks, self.vs] if self.ks is not None else [])
        return int(sum(a.nbytes for a in arrays))

    def calibration(self) -> CalibrationRequest | None:
        """What the engine should evaluate inside :meth:`calibrating` (q8 pages not yet calibrated), else
        None.  The engine tokenizes and evaluates it: the store only sees the K/V written meanwhile."""
        if self.coding is None or self.coding.calibrated or not self._free_ids:
            return None
        return CalibrationRequest(CALIBRATION_TEXT, min(CAL_ROWS + 1, self.max_tokens,
                                                        self.n_pages * self.page_tokens))

    @contextlib.contextmanager
    def calibrating(self) -> Iterator[None]:
        """Whatever runs inside calibrates the q8 basis (once; its sequences must be released by the end).
        Pages written before hold the old basis, so they leave the prefix cache."""
        if self.coding is None or self.coding.calibrated:
            yield
            return
        if any(st.pages for st in self.seqs.values()):
            raise InputError("calibrate q8 KV pages before any sequence holds K/V")
        self._calibration = Calibration(self.coding)
        try:
            yield
        finally:
            cal, self._calibration = self._calibration, None
        if any(st.pages for st in self.seqs.values()):
            raise InputError("a sequence still holds K/V written during calibration: release it first")
        cal.finish()
        for p in range(self.n_pages):
            self.pool.forget(p)
        for name in ("prefix_queried", "prefix_hits"):  # calibration is not traffic
            self.counters[name] = 0

    # -- memory management -----------------------------------------------------------------------------
    def compact(self) -> dict:
        """Renumber pages so each sequence's pages are consecutive and every used page sits before every
        free one (cached prefixes next, then empty pages); data moves with them.  Outputs do not change."""
        before = self.fragmentation()
        order: list[int] = []
        seen: set[int] = set()
        for s in sorted(self.seqs):
            for p in self.seqs[s].pages:
                if p not in seen:
                    seen.add(p)
                    order.append(p)
        cached = [p for p in self.pool.free if self.pool.key[p] is not None]
        rest = [p for p in self.pool.free if self.pool.key[p] is None]
        order += cached + rest
        perm = [0] * self.n_pages  # old -> new
        for new, old in enumerate(order):
            perm[old] = new
        moved = self._permute(order)
        self.pool.renumber(perm)
        for s, st in self.seqs.items():
            st.pages = [perm[p] for p in st.pages]
            self.table[s, :len(st.pages)] = st.pages
        self.counters["compactions"] += 1
        return {"before": before, "after": self.fragmentation(), "pages_moved": moved}

    def fragmentation(self) -> dict:
        """How scattered the used pages are: ``scatter`` = share of a sequence's page-to-next-page steps
        that are not to the adjacent page; ``span`` = (highest used page + 1) / pages used (1.0: packed)."""
        steps = jumps = 0
        top = -1
        for st in self.seqs.values():
            for a, b in zip(st.pages, st.pages[1:]):
                steps += 1
                jumps += b != a + 1
            if st.pages:
                top = max(top, max(st.pages))
        used = self.pool.used
        return {"scatter": jumps / steps if steps else 0.0, "span": (top + 1) / used if used else 1.0}

    def stats(self) -> dict:
        P, pool = self.page_tokens, self.pool
        fill: dict[int, int] = {}
        for st in self.seqs.values():
            for j, p in enumerate(st.pages):
                fill[p] = max(fill.get(p, 0), min(P, st.length - j * P))
        tokens = sum(st.length for st in self.seqs.values())
        q, hits = self.counters["prefix_queried"], self.counters["prefix_hits"]
        return {
            "dtype": self.cfg.dtype, "kernel": self.cfg.kernel, "page_tokens": P,
            "pages_total": pool.n_pages, "pages_used": pool.used, "pages_free": len(pool.free),
            "pages_cached_free": pool.cached_free, "shared_pages": pool.shared,
            "page_bytes": self.page_bytes, "bytes_total": self.nbytes(), "bytes_used": pool.used * self.page_bytes,
            "bytes_per_token": self.page_bytes / P, "sequences": len(self.seqs), "tokens": tokens,
            "waste_slots": len(fill) * P - sum(fill.values()),
            "waste": 1.0 - sum(fill.values()) / (len(fill) * P) if fill else 0.0,
            "prefix_hit_rate": hits / q if q else 0.0, **self.counters, **self.fragmentation()}

    def check(self) -> None:
        """Bookkeeping consistency (tests): ref counts match the page tables, tables match the array."""
        self.pool.check([st.pages for st in self.seqs.values()])
        for s, st in self.seqs.items():
            if list(self.table[s, :len(st.pages)]) != st.pages:
                raise AssertionError(f"page table array of sequence {s} is stale")
            if len(st.pages) != -(-st.length // self.page_tokens):
                raise AssertionError(f"sequence {s} holds {len(st.pages)} pages for {st.length} positions")

    # -- internals -------------------------------------------------------------------------------------
    def _check(self, seq: int) -> int:
        if not 0 <= seq < self.n_seqs:
            raise InputError(f"no KV sequence {seq} (the store has {self.n_seqs})")
        return seq

    def _state(self, seq: int) -> SeqState:
        st = self.seqs.get(self._check(seq))
        if st is None:
            raise InputError(f"KV sequence {seq} is not in use (new_sequence() first)")
        return st

    def _make_writable(self, seq: int, st: SeqState) -> None:
        """The next write lands in the sequence's last, partly filled page: copy it if shared."""
        page = st.pages[-1]
        if self.pool.ref[page] > 1:
            new = self.pool.allocate()
            self._high = max(self._high, new + 1)
            self._copy_page(page, new)
            self.pool.decref(page)
            st.pages[-1] = new
            self.table[seq, len(st.pages) - 1] = new
            self.counters["cow_copies"] += 1
        else:
            self.pool.forget(page)  # its contents change: no longer a cached prefix

    def _register_full(self, st: SeqState, n: int) -> None:
        P = self.page_tokens
        while len(st.hashes) < n // P:
            j = len(st.hashes)
            prev = st.hashes[-1] if st.hashes else -1
            toks = _page_key(st.tokens, j, P, st.exact)
            h = chain_hash(prev, toks)
            self.pool.register(st.pages[j], h, prev, toks)
            st.hashes.append(h)

    def _evict(self, need: int, busy: set[int]) -> None:
        """Drop idle sequences' K/V, least recently used first, until ``need`` pages are free."""
        idle = sorted((st.last_used, s) for s, st in self.seqs.items() if s not in busy and st.pages)
        for _, s in idle:
            if self.pool.can_allocate(need):
                break
            st = self.seqs[s]
            for p in st.pages:
                self.pool.decref(p)  # hashed pages stay findable until reused: recompute may hit them
            st.pages, st.hashes, st.length, st.tokens, st.evicted = [], [], 0, [], True
            st.exact = set()
            self.counters["evictions"] += 1
        if not self.pool.can_allocate(need):
            raise InputError(
                f"KV cache full: this step needs {need} more pages of {self.page_tokens} tokens but only "
                f"{len(self.pool.free)} of {self.n_pages} are free after evicting every idle sequence "
                f"(budget {self.budget_bytes >> 20} MiB); raise CORERT_KV_BUDGET or shorten the request")

    def _arrays(self) -> list[np.ndarray]:
        return [self.k, self.v] + ([self.ks, self.vs] if self.ks is not None else [])

    def _copy_page(self, src: int, dst: int) -> None:
        for a in self._arrays():
            a[:, dst] = a[:, src]

    def _permute(self, order: list[int]) -> int:
        """Move page ``order[new]`` to ``new`` for every new, in place, one page of scratch per array."""
        moved = 0
        done = [False] * len(order)
        arrays = self._arrays()
        for start in range(len(order)):
            if done[start] or order[start] == start:
                done[start] = True
                continue
            tmp = [a[:, start].copy() for a in arrays]
            j = start
            while True:
                done[j] = True
                src = order[j]
                if src == start:
                    for a, t in zip(arrays, tmp):
                        a[:, j] = t
                    moved += 1
                    break
                for a in arrays:
                    a[:, j] = a[:, src]
                moved += 1
                j = src
        return moved

