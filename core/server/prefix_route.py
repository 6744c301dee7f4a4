"""The prefix-aware routing decision, on replica ids alone: no Ray here, so the Ray Serve router
(:mod:`corert.server.ray_route`) and the routing simulation (``corert bench routing``) run the same code.

A prompt is cut into blocks of ``block_chars`` bytes; key k is a hash of its first k blocks
(:func:`prefix_keys`, computed by the ingress).  :class:`PrefixTable` keeps, per key, the replica it last
sent that prefix to (an LRU table): that replica's paged KV cache holds the prefix's pages, so it prefills
only the rest.  :class:`PrefixChooser` sends a request to the replica owning its longest known prefix; a
prompt nobody holds goes to the least loaded replica (among equals, the one given the fewest new prefixes so
far), which then owns it at once, so a burst of requests sharing a new prefix follows the first.  Load
decides ties and spills over: the owner is ranked first, the others after it by load.
"""
from __future__ import annotations

import collections
import hashlib
import random
import sys
import threading
from typing import Any, Callable, Sequence

BLOCK_CHARS = 256  # ~64 tokens of English: 4 KV pages of 16 tokens
MAX_BLOCKS = 64
TABLE_SIZE = 65536  # prefix keys remembered (LRU); ~100 bytes each
#: ``prefix`` is the router; ``random`` (what ``corert serve --ray --route random`` runs) and
#: ``least_loaded`` (load alone, prefixes ignored: the simulation's second baseline) are what it is compared with
POLICIES = ("prefix", "random", "least_loaded")


def prefix_keys(text: str, block_chars: int = BLOCK_CHARS, max_blocks: int = MAX_BLOCKS) -> tuple[int, ...]:
    """Hashes of the text's first 1, 2, … whole blocks (a prompt shorter than a block has none)."""
    h = hashlib.blake2b(digest_size=8)
    keys = []
    data = text.encode("utf-8", "surrogatepass")
    step = block_chars  # bytes, not characters: cheap, and equal texts still give equal keys
    for k in range(min(len(data) // step, max_blocks)):
        h.update(data[k * step:(k + 1) * step])
        keys.append(int.from_bytes(h.copy().digest(), "little"))
    return tuple(keys)


class PrefixTable:
    """Prefix key -> the replica id that holds it, least recently used first out."""

    def __init__(self, capacity: int = TABLE_SIZE):
        self.capacity = capacity
        self._owner: collections.OrderedDict[int, str] = collections.OrderedDict()

    def match(self, keys: Sequence[int], live: set[str]) -> tuple[str | None, int]:
        """The live replica holding the longest of these prefixes, and how many blocks long it is."""
        for depth in range(len(keys), 0, -1):
            owner = self._owner.get(keys[depth - 1])
            if owner is not None and owner in live:
                self._owner.move_to_end(keys[depth - 1])
                return owner, depth
        return None, 0

    def record(self, keys: Sequence[int], replica: str) -> None:
        for key in keys:
            self._owner[key] = replica
            self._owner.move_to_end(key)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)

    def drop(self, replica: str) -> None:
        for key in [k for k, r in self._owner.items() if r == replica]:
            del self._owner[key]

    def __len__(self) -> int:
        return len(self._owner)

    def nbytes(self) -> int:
        """The table's own memory: its ordered dict and its int keys (the values are the replicas' id
        strings, shared with the rest of the router)."""
        return sys.getsizeof(self._owner) + sum(sys.getsizeof(k) for k in self._owner)


class RouteStats:
    """What the router decided: requests per replica, and of the requests with a prefix, how many went to
    the replica that already held it (hits) or to another (misses: a new prefix, or the owner was full)."""

    def __init__(self):
        self.lock = threading.Lock()  # Serve's router runs on its own event loop thread
        self.by_replica: collections.Counter[str] = collections.Counter()
        self.hits = self.misses = self.no_prefix = 0

    def count(self, replica: str, keyed: bool, hit: bool) -> None:
        with self.lock:
            self.by_replica[replica] += 1
            if not keyed:
                self.no_prefix += 1
            elif hit:
                self.hits += 1
            else:
                self.misses += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            keyed = self.hits + self.misses
            return {"by_replica": dict(self.by_replica), "hits": self.hits, "misses": self.misses,
                    "no_prefix": self.no_prefix, "hit_rate": self.hits / keyed if keyed else 0.0}


class PrefixChooser:
    """One router's state (its table, the new prefixes it gave each replica) and its decision.

    ``load(replica)`` is the router's view of a replica's queue (Serve's cached queue lengths, which lag
    behind), ``full(replica)`` whether that view says it takes no more.  Random and least-loaded routing
    record where prefixes went too, so their hit rate counts the requests that landed by chance where their
    prefix was."""

    def __init__(self, policy: str = "prefix", table_size: int = TABLE_SIZE, rng: random.Random | None = None):
        if policy not in POLICIES:
            raise ValueError(f"routing policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.policy = policy
        self.table = PrefixTable(table_size)
        #: new prefixes given to each replica: the tie-break among equally loaded ones, so a burst of new
        #: prefixes (queue lengths lag behind) is spread evenly instead of at random
        self.claimed: collections.Counter[str] = collections.Counter()
        self.rng = rng if rng is not None else random

    def choose(self, keys: Sequence[int], candidates: Sequence[str], load: Callable[[str], int],
               full: Callable[[str], bool]) -> tuple[str, bool, list[str]]:
        """(the replica to try first, whether it holds the prompt's prefix, the others by load)."""
        owner, _ = self.table.match(keys, set(candidates)) if keys else (None, 0)
        if self.policy == "random":
            chosen = self.rng.choice(candidates)
            hit = owner == chosen
        elif self.policy == "least_loaded":
            low = min(load(r) for r in candidates)
            chosen = self.rng.choice([r for r in candidates if load(r) == low])
            hit = owner == chosen
        else:
            hit = owner is not None and not full(owner)
            chosen = owner if hit else self._least_loaded(candidates, load)
            if keys and owner is None:
                self.claimed[chosen] += 1
        if keys:  # claimed now: a burst of requests sharing a new prefix follows the first
            self.table.record(keys, chosen)
        rest = sorted((r for r in candidates if r != chosen), key=load)
        return chosen, hit, rest

    def _least_loaded(self, candidates: Sequence[str], load: Callable[[str], int]) -> str:
        low = min(load(r) for r in candidates)
        tied = [r for r in candidates if load(r) == low]
        fewest = min(self.claimed[r] for r in tied)
        return self.rng.choice([r for r in tied if self.claimed[r] == fewest])

    def forget(self, replica: str) -> None:
        """The replica died: its cache is gone, its prefixes are nobody's."""
        self.table.drop(replica)
