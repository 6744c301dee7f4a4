"""huge_pages.settle: mapped weight files whose page cache came in small folios are read again in 2 MiB ones,
their bytes unchanged; a loaded model's weights are resident and reported.  Nothing here is timed."""
from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from corert.engines.native import huge_pages

THP = "/sys/kernel/mm/transparent_hugepage/enabled"
pytestmark = pytest.mark.skipif(
    not huge_pages.supported() or not os.path.exists(THP) or "[never]" in open(THP).read(),
    reason="Linux with transparent huge pages (madvise or always) only")

SIZE = 4 * huge_pages.HUGE + 100 * 1024  # four 2 MiB spans and a tail that cannot be huge


def _small_folio_map(path, data: bytes) -> np.memmap:
    """``data`` written to ``path``, its cached pages dropped and read back one 4 KiB page at a time (no
    readahead: small folios), then mapped as layout_cache.py maps a layout (copy-on-write, huge-page advice)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())  # clean pages: the drop below can drop them
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for off in range(0, len(data), 4096):
            os.pread(fd, 1, off)
    finally:
        os.close(fd)
    mm = np.memmap(path, dtype=np.uint8, mode="c")
    mm._mmap.madvise(mmap.MADV_HUGEPAGE)
    return mm


def test_small_folios_are_read_again_as_huge_pages_with_the_same_bytes(tmp_path):
    data = np.random.default_rng(7).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    mm = _small_folio_map(tmp_path / "w.layout", data)
    part = mm[4096:4096 + (1 << 20)].view(np.uint16)  # a matrix's part: a view of the mapping
    files = huge_pages.mapped_files([part, np.zeros(8, np.uint8)])  # an array in ordinary memory is left out
    assert [f.path for f in files] == [os.path.realpath(tmp_path / "w.layout")]

    huge_pages._populate(files[0].raw)
    rss, huge, _ = huge_pages.mapped_kb([files[0].path])[files[0].path]
    assert rss * 1024 >= SIZE - 4096 and huge == 0  # the precondition: resident, all in small pages

    report = huge_pages.settle(files)
    assert report.repaired_files == 1
    assert report.huge_kb == 4 * huge_pages.HUGE // 1024 and report.resident_kb * 1024 >= SIZE - 4096
    assert bytes(mm) == data
    again = huge_pages.settle(files)  # nothing left to repair
    assert again.repaired_files == 0 and again.huge_kb == report.huge_kb


def test_a_loaded_model_has_its_mapped_weights_resident(smollm2):
    """The default engine path on a real model: after the load every mapped weight is resident (the first
    forward would read them all), and the report says how much of it is in 2 MiB pages."""
    from corert import Runtime

    with Runtime(model=smollm2, engine="native", n_ctx=64) as rt:
        loaded = rt.load_generation_model()[0]
        report = loaded.pages
        assert report is not None and 0 <= report.huge_kb <= report.resident_kb
        assert report.resident_kb * 1024 >= loaded.transformer.weight_bytes
        assert "Paris" in rt.generate("The capital of France is", max_tokens=8, temperature=0).text
