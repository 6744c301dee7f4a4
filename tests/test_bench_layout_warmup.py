"""Benchmarks that time the native engine convert the model's weight layout first, in a process of their own
(corert.tools.bench.layout_warmup): the warm-up converts what the cache lacks and says so, a second one finds
everything there, and the measured side's own load then writes no layout file."""
from __future__ import annotations

import pytest

from corert.tools.bench.layout_warmup import warm
from corert.tools.bench.sides import SideProcess
from tiny_gguf import write_tiny_llama

#: the tiny llama's matrices as the native engine fuses them: qkv, output, gate+up, down, and the tied output
TINY_MATRICES = 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("warm") / "tiny.gguf")


def test_the_warm_up_converts_once_and_says_so(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CORERT_NATIVE_LAYOUT_CACHE", str(tmp_path))
    first = warm(tiny, "native", label="tiny")
    assert first["engine"].startswith("native:") and first["converted"] == TINY_MATRICES
    assert first["synced"] == TINY_MATRICES  # on disk before any side's timing: no write-back inside it
    assert "converted the native layout of tiny before timing" in capsys.readouterr().err
    again = warm(tiny, "auto", label="tiny")  # auto picks native for this file: all there now
    assert again["converted"] == 0 and again["synced"] == 0 and capsys.readouterr().err == ""
    (key_dir,) = tmp_path.glob("tiny-*")  # one key directory: the matrices, no temporary file left
    assert len(list(key_dir.glob("*.layout"))) == TINY_MATRICES and not list(key_dir.glob(".tmp-*"))


def test_nothing_to_warm_without_the_native_engine_or_the_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CORERT_NATIVE_LAYOUT_CACHE", str(tmp_path))
    assert warm(tiny, "llama.cpp") == {"engine": "llama.cpp", "layout_cache": None, "converted": 0, "seconds": 0.0}
    monkeypatch.setenv("CORERT_NATIVE_LAYOUT_CACHE", "off")
    assert warm(tiny, "native")["converted"] == 0
    assert not list(tmp_path.iterdir())


def test_the_measured_side_does_not_convert_after_the_warm_up(smollm2, tmp_path, monkeypatch, capsys):
    """The real path of `corert bench generate`'s corert side, on a cache the warm-up fills (three matrices
    taken away again, so the second warm-up has something to do)."""
    monkeypatch.setenv("CORERT_NATIVE_LAYOUT_CACHE", str(tmp_path))
    assert warm(smollm2, "native")["converted"] > 0
    for f in sorted(tmp_path.glob("SmolLM2*/blk.0.*.layout"))[:3]:
        f.unlink()
    capsys.readouterr()
    assert warm(smollm2, "native", label="smollm2")["converted"] == 3
    assert "converted the native layout of smollm2 before timing (3 matrices" in capsys.readouterr().err
    side = SideProcess("corert", {"side": "corert", "model_path": smollm2, "engine": "native", "plugins": [],
                                  "threads": 1, "n_ctx": 256})
    try:
        assert side.info["engine"] == "native" and side.info["layouts_written"] == 0
    finally:
        side.close()


def test_a_failed_warm_up_says_the_child_error_in_one_line(tiny, tmp_path, monkeypatch):
    """The warm-up's child fails on an unknown variant: the bench's error is that exception's line, not the
    traceback's tail (the CLI prints it as its one line)."""
    from corert.errors import CorertError

    monkeypatch.setenv("CORERT_NATIVE_LAYOUT_CACHE", str(tmp_path))
    with pytest.raises(CorertError) as err:
        warm(tiny, "native:bogus", label="tiny")
    message = str(err.value)
    assert "unknown variant engine=native:bogus" in message and "File " not in message and "\n" not in message
