"""Token-tree verification on the native engine with a real model (SmolLM2): every node's logits equal a
sequential forward of its path, and keeping a path leaves the KV store exactly as if only that path had
been evaluated — on the contiguous store (f16 and f32) and on f32 and q8 pages."""
from __future__ import annotations

import numpy as np
import pytest

from corert import Runtime
from corert.errors import InputError
from corert.interfaces import TreeSession
from corert.plugins.kv_cache.paged.store import PagedKVStore

PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown fox"
#: node -> parent (-1: continues the prompt); two roots, branches at depth 1 and 2, a path of depth 5
PARENTS = [-1, 0, 0, 1, 1, 2, 3, 6, 7, -1, 9]
STORES = ["contiguous", "contiguous:f32", "paged:f32", "paged:q8"]


def _path(node: int) -> list[int]:
    path = [node]
    while PARENTS[path[-1]] >= 0:
        path.append(PARENTS[path[-1]])
    return path[::-1]


@pytest.fixture(scope="module", params=STORES)
def model(request, smollm2):
    rt = Runtime(engine="native", model=smollm2, plugins={"kv_cache": request.param})
    loaded, lock = rt.load_generation_model()
    with lock:
        yield loaded
    rt.close()


def _snapshot(loaded, session, n: int) -> list[np.ndarray]:
    """The stored K/V (every array the store keeps) of positions 0..n-1 of the session's sequence."""
    kv = loaded.kv
    if isinstance(kv, PagedKVStore):
        pages = kv.seqs[session.seq].pages
        P = kv.page_tokens
        return [np.stack([a[:, pages[t // P], :, t % P] for t in range(n)]) for a in kv._arrays()]
    return [kv.k[:, session.seq, :, :n].copy(), kv.v[:, session.seq, :, :n].copy()]


def test_every_node_equals_a_sequential_forward_and_keep_path_rolls_back_exactly(model):
    tok = model.tokenizer
    s = model.session()
    assert isinstance(s, TreeSession)
    s.truncate(0)
    prompt = tok.encode(PROMPT)
    s.eval(prompt)
    # candidate tokens: the text's own continuation on one branch, other words elsewhere
    words = tok.encode(" jumps over the lazy cat and a dog ran")
    ids = [words[i % len(words)] for i in range(len(PARENTS))]
    tree_logits = s.eval_tree(ids, PARENTS).copy()
    assert tree_logits.shape == (len(PARENTS), model.n_vocab)
    assert len(s.tokens) == len(prompt)  # provisional until a path is kept
    # the sequential forward a decoder makes: every row returns logits, so each takes the exact kernels (on
    # amx-bf16 a prompt's rows but its last take the bf16 tiles: model.forward's bulk), as every tree node does
    for node in range(len(PARENTS)):
        path = _path(node)
        s.truncate(len(prompt))
        want = s.eval([ids[j] for j in path], all_logits=True)[-1]
        np.testing.assert_array_equal(tree_logits[node], want, err_msg=f"node {node}, path {path}")

    keep = _path(8)  # depth 5: 0 -> 1 -> 3 -> 6 -> 7 -> 8 ... slots move down to consecutive positions
    s.truncate(len(prompt))
    s.eval_tree(ids, PARENTS)
    s.keep_path(keep)
    n = len(prompt) + len(keep)
    assert s.tokens == prompt + [ids[j] for j in keep] and model.kv.length(s.seq) == n
    after_tree = _snapshot(model, s, n)
    next_after_tree = s.eval(tok.encode(" and"))
    paged = isinstance(model.kv, PagedKVStore)
    if paged:
        model.kv.check()
        hashes = list(model.kv.seqs[s.seq].hashes)
        used = model.kv.pool.used
    s.truncate(len(prompt))
    s.eval([ids[j] for j in keep], all_logits=True)
    for a, b in zip(after_tree, _snapshot(model, s, n)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(next_after_tree, s.eval(tok.encode(" and")))
    if paged:
        assert model.kv.seqs[s.seq].hashes == hashes and model.kv.pool.used == used
        assert model.kv.tokens(s.seq) == s.tokens


def test_a_tree_left_unkept_is_dropped_and_bad_paths_are_refused(model):
    s = model.session()
    s.truncate(0)
    prompt = model.tokenizer.encode(PROMPT)
    s.eval(prompt)
    s.eval_tree([1, 2, 3], [-1, 0, 0])
    with pytest.raises(InputError, match="path"):
        s.keep_path([0, 2, 1])
    s.eval([5])  # the next eval drops the unkept tree
    assert model.kv.length(s.seq) == len(prompt) + 1 and s.tokens == prompt + [5]
    with pytest.raises(InputError, match="eval_tree"):
        s.keep_path([0])
