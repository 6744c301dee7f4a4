"""Token-tree attention in every KV store and kernel variant: each tree node's output equals the same store's
output for a sequential forward of its path (bit for bit), wide kernels agree with the scalar reference,
and ``keep_path`` leaves the store as if only the kept path had been written.  Synthetic K/V: the
real-model part is tests/test_spec_tree_native.py."""
from __future__ import annotations

import numpy as np
import pytest

from corert.errors import InputError
from corert.plugins.kv_cache.contiguous import ContiguousKVStore
from corert.plugins.kv_cache.paged.config import PagedConfig
from corert.plugins.kv_cache.paged.kernels import ATTEND
from corert.plugins.kv_cache.paged.store import PagedKVStore
from corert.tree import TreeMask

L, KV, H, HD = 2, 2, 6, 64
CTX = 21  # context positions: the tree starts inside the second 16-token page and crosses into the third
#: node -> parent (-1: the context); paths of depth 1..5
PARENTS = [-1, 0, 0, 1, 1, 2, 3, 5, 7, 8]
STORES = ["contiguous", "contiguous:f32"] + [f"{d}:{k}" for d in ("f32", "f16", "q8") for k in ATTEND]
TOL = {"f32": 1e-5, "f16": 3e-3, "q8": 4e-2}


def _make(name: str):
    if name.startswith("contiguous"):  # f16 by default
        return ContiguousKVStore(L, KV, HD, 128, 2, *name.split(":")[1:])
    dtype, kernel = name.split(":")
    return PagedKVStore(PagedConfig(dtype=dtype, kernel=kernel, page_tokens=16), L, KV, HD, 128, 2)


def _reserve(st, sid, pos, ids, provisional=False):
    if isinstance(st, PagedKVStore):
        st.reserve(sid, pos, token_ids=ids, provisional=provisional)
    else:
        st.reserve(sid, pos)


def _path(node: int) -> list[int]:
    path = [node]
    while PARENTS[path[-1]] >= 0:
        path.append(PARENTS[path[-1]])
    return path[::-1]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    n = len(PARENTS)

    def rows(m, heads):
        return rng.standard_normal((L, m, heads, HD)).astype(np.float32)

    return {"ck": rows(CTX, KV), "cv": rows(CTX, KV), "tk": rows(n, KV), "tv": rows(n, KV), "tq": rows(n, H),
            "ids": np.arange(100, 100 + n)}


def _context(st, seq, d):
    sid, pos = np.full(CTX, seq, np.int32), np.arange(CTX, dtype=np.int32)
    _reserve(st, sid, pos, np.arange(CTX))
    for layer in range(L):
        st.write(layer, sid, pos, d["ck"][layer], d["cv"][layer])


def _tree(st, d, window=0):
    """The context and the whole tree in sequence 0; each layer's tree outputs."""
    seq = st.new_sequence()
    _context(st, seq, d)
    n = len(PARENTS)
    sid, slots = np.full(n, seq, np.int32), np.arange(CTX, CTX + n, dtype=np.int32)
    tree = TreeMask.from_parents(sid, slots, PARENTS)
    _reserve(st, sid, slots, d["ids"], provisional=True)
    outs = []
    for layer in range(L):
        st.write(layer, sid, slots, d["tk"][layer], d["tv"][layer])
        out = np.empty((n, H, HD), np.float32)
        st.attend(layer, sid, slots, d["tq"][layer], 0.125, out, window=window, tree=tree)
        outs.append(out)
    return seq, outs


def _sequential(st, seq, d, path, window=0):
    """The path's rows written after the context of ``seq``; each layer's output for the path's last row."""
    st.truncate(seq, CTX)
    m = len(path)
    sid, pos = np.full(m, seq, np.int32), np.arange(CTX, CTX + m, dtype=np.int32)
    _reserve(st, sid, pos, d["ids"][path])
    outs = []
    for layer in range(L):
        st.write(layer, sid, pos, d["tk"][layer][path], d["tv"][layer][path])
        out = np.empty((m, H, HD), np.float32)
        st.attend(layer, sid, pos, d["tq"][layer][path], 0.125, out, window=window)
        outs.append(out[-1])
    return outs


@pytest.mark.parametrize("window", [0, 3, 24])
@pytest.mark.parametrize("name", STORES)
def test_every_tree_node_equals_a_sequential_forward_of_its_path(name, window, data):
    st = _make(name)
    _, tree_outs = _tree(st, data, window)
    ref_seq = st.new_sequence()
    _context(st, ref_seq, data)
    for node in range(len(PARENTS)):
        seq_outs = _sequential(st, ref_seq, data, _path(node), window)
        for layer in range(L):
            np.testing.assert_array_equal(tree_outs[layer][node], seq_outs[layer], err_msg=f"node {node}")


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8"])
def test_wide_tree_kernels_agree_with_the_scalar_reference(dtype, data):
    want = _tree(_make(f"{dtype}:scalar"), data)[1]
    for kernel in ATTEND:
        got = _tree(_make(f"{dtype}:{kernel}"), data)[1]
        for layer in range(L):
            assert np.abs(got[layer] - want[layer]).max() < TOL[dtype], kernel


@pytest.mark.parametrize("name", STORES)
def test_keep_path_leaves_the_store_as_if_only_the_path_was_written(name, data):
    path = _path(8)  # 0 -> 2 -> 5 -> 7 -> 8: slots CTX, CTX+2, CTX+5, ... move down
    st = _make(name)
    seq, _ = _tree(st, data)
    st.keep_path(seq, CTX, [CTX + j for j in path], token_ids=data["ids"][path])
    ref = _make(name)
    ref_seq = ref.new_sequence()
    _context(ref, ref_seq, data)
    _sequential(ref, ref_seq, data, path)
    assert st.length(seq) == ref.length(ref_seq) == CTX + len(path)
    if isinstance(st, PagedKVStore):
        st.check()
        assert st.tokens(seq) == ref.tokens(ref_seq) == list(range(CTX)) + data["ids"][path].tolist()
        assert st.seqs[seq].hashes == ref.seqs[ref_seq].hashes
        assert st.pool.used == ref.pool.used
        for a, b in zip(st._arrays(), ref._arrays()):
            for t in range(CTX + len(path)):
                P = st.page_tokens
                np.testing.assert_array_equal(a[:, st.seqs[seq].pages[t // P], :, t % P],
                                              b[:, ref.seqs[ref_seq].pages[t // P], :, t % P])
    else:
        n = CTX + len(path)
        np.testing.assert_array_equal(st.k[:, seq, :, :n], ref.k[:, ref_seq, :, :n])
        np.testing.assert_array_equal(st.v[:, seq, :, :n], ref.v[:, ref_seq, :, :n])
    with pytest.raises(InputError, match="increase"):
        st.keep_path(seq, CTX, [CTX + 1, CTX])


def test_a_tree_parent_must_come_first_in_its_sequence():
    with pytest.raises(InputError, match="earlier row"):
        TreeMask.from_parents(np.zeros(2, np.int32), np.arange(2), [1, -1])
    mask = TreeMask.from_parents(np.zeros(4, np.int32), np.arange(7, 11), [-1, 0, 0, 2])
    assert mask.depth.tolist() == [1, 2, 2, 3]
    assert mask.path_positions.tolist() == [7, 8, 8, 9]
    assert mask.visible[3].tolist() == [7, 7, 9, 10]
