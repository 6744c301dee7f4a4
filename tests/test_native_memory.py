"""The native engine's memory: converted weight layouts are written once to an on-disk cache and mapped by
every later load (no process holds a weight in private memory), a stale or damaged cache file is rebuilt,
and large KV buffers become resident only where written.  Nothing here is timed."""
from __future__ import annotations

import os

import numpy as np
import pytest

from corert.engines.native.layout_cache import MAGIC, LayoutCache
from corert.engines.native.model import Transformer
from corert.engines.native.products import PRODUCTS
from corert.memory import lazy_zeros
from corert.models.gguf_header import read_header
from native_support import prompt_logits
from tiny_gguf import write_tiny_llama

IDS = np.array([1, 5, 9, 2, 33, 7], np.int32)


def _mapped_from(a: np.ndarray, directory) -> bool:
    """``a`` is a view of an np.memmap of a file under ``directory`` (owns no memory of its own)."""
    base = a
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    return not a.flags.owndata and base is not None and str(base.filename).startswith(str(directory))


def _logits(t: Transformer) -> np.ndarray:
    return prompt_logits(t, IDS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("layout") / "tiny.gguf")


def _load(path, cache):
    return Transformer.load(read_header(path, want_arrays=False), "scalar", str(cache))


def test_second_load_maps_the_cache_with_identical_logits(tiny, tmp_path):
    header = read_header(tiny, want_arrays=False)
    want = _logits(Transformer.load(header, "scalar", "off"))
    first = _load(tiny, tmp_path)  # converts and writes, then maps what it wrote
    files = sorted(p.name for p in LayoutCache(tmp_path, header, "F32Products").dir.glob("*.layout"))
    assert files == ["blk.0.attn_output.weight.x1.layout", "blk.0.attn_q.weight.x3.layout",
                     "blk.0.ffn_down.weight.x1.layout", "blk.0.ffn_gate.weight.x2.layout",
                     "token_embd.weight.x1.layout"]
    second = _load(tiny, tmp_path)
    for t in (first, second):
        assert all(_mapped_from(p, tmp_path) for m in t.matrices() for p in m.parts)
        np.testing.assert_array_equal(_logits(t), want)
    assert {m.kind for m in second.matrices()} == {"q4", "q8"}


def test_a_damaged_or_stale_cache_file_is_rebuilt(tiny, tmp_path):
    header = read_header(tiny, want_arrays=False)
    want = _logits(Transformer.load(header, "scalar", "off"))
    _load(tiny, tmp_path)
    d = LayoutCache(tmp_path, header, "F32Products").dir
    truncated, garbled = d / "blk.0.attn_q.weight.x3.layout", d / "blk.0.ffn_down.weight.x1.layout"
    sizes = {p: p.stat().st_size for p in (truncated, garbled)}
    os.truncate(truncated, sizes[truncated] // 2)
    garbled.write_bytes(b"not a layout" + garbled.read_bytes()[12:])
    again = _load(tiny, tmp_path)
    assert {p: p.stat().st_size for p in sizes} == sizes and garbled.read_bytes()[:len(MAGIC)] == MAGIC
    np.testing.assert_array_equal(_logits(again), want)
    # the GGUF changes (here: its mtime): a new key, and the old key's directory is removed
    st = os.stat(tiny)
    os.utime(tiny, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = _load(tiny, tmp_path)
    new_dir = LayoutCache(tmp_path, read_header(tiny, want_arrays=False), "F32Products").dir
    assert new_dir != d and new_dir.is_dir() and not d.exists()
    assert all(_mapped_from(p, new_dir) for m in fresh.matrices() for p in m.parts)


def test_registry_model_weights_are_mapped_not_copied(smollm2):
    """The default engine path on a real model: every weight matrix maps the layout cache, the embedding
    rows are read from the GGUF file as looked up."""
    from corert import Runtime

    with Runtime(model=smollm2, engine="native", n_ctx=64) as rt:
        t = rt.load_generation_model()[0].transformer
        cache = LayoutCache.open("auto", read_header(smollm2, want_arrays=False),
                                 type(PRODUCTS[t.variant]).__name__)  # vnni and amx share I8Products' layouts
        assert all(_mapped_from(p, cache.dir) for m in t.matrices() for p in m.parts)
        assert t.embed.path == str(smollm2) and t.embed.n_rows == t.cfg.n_vocab


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
def test_a_prompt_maps_no_page_of_the_gguf(smollm2):
    """After the load let the file's pages go, a prompt's embedding lookups read their rows into the
    request's buffer: none of the GGUF's pages is resident in the process (mapped lookups made 6.8 MB of
    SmolLM2's file resident on a 467-token prompt, next to the output matrix that holds the same table),
    and the logits are those of the rows decoded from the file."""
    from corert import Runtime

    with Runtime(model=smollm2, engine="native", n_ctx=512) as rt:
        loaded = rt.load_generation_model()[0]
        ids = np.arange(0, loaded.n_vocab, loaded.n_vocab // 300)[:300]  # rows spread over the whole table
        s = loaded.new_session()
        try:
            s.eval(ids)
        finally:
            s.close()
        t = loaded.transformer
        # this model's own mapping of the file: other tests in the same process (a llama.cpp engine, an
        # earlier load) may still map the same GGUF, and their pages are not this request's
        assert _resident_kib(t.source._mm) == 0
        raw = t.source.raw_rows(t.source.info("token_embd.weight"))
        np.testing.assert_array_equal(t.embed.rows(ids), raw[ids])  # the same bytes as the mapped file


def _vm_flags(a: np.ndarray) -> set[str]:
    """The VmFlags (/proc/self/smaps) of the mapping holding ``a``'s first byte."""
    flags, inside = set(), False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                inside = lo <= a.ctypes.data < hi
            elif inside and head[0] == "VmFlags:":
                flags |= set(head[1:])
    return flags


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
def test_mapped_layouts_ask_for_huge_pages(tiny, tmp_path):
    """Every mapped layout carries MADV_HUGEPAGE ("hg"), so pages read back after eviction come as 2 MiB
    folios (see layout_cache.py)."""
    t = _load(tiny, tmp_path)
    assert all("hg" in _vm_flags(p) for m in t.matrices() for p in m.parts)


def _resident_kib(a: np.ndarray) -> int:
    """Rss of the mappings overlapping ``a``'s memory (from /proc/self/smaps; the kernel may split one
    allocation into several)."""
    start, end = a.ctypes.data, a.ctypes.data + a.nbytes
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                inside = lo < end and start < hi
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
def test_lazy_buffers_become_resident_only_where_written():
    """A KV-shaped buffer written at a few positions of each of 64 heads (what a short prompt does) stays
    at a few pages, where transparent huge pages would make 2 MiB per head resident."""
    a = lazy_zeros((64, 1024, 256), np.float32)  # 64 MiB: (head, position, head_dim)
    assert a.flags.writeable and a.flags.c_contiguous
    a[:, :4, :] = 1.0
    assert _resident_kib(a) <= 64 * 4 * 2  # 64 heads x 4 KiB written (and some slack)
    assert a.sum() == 64 * 4 * 256 and not a[:, 4:].any()
    small = lazy_zeros((4, 4), np.int8)  # small buffers stay ordinary arrays
    assert small.flags.owndata and not small.any()
