"""``corert perplexity``: the native engine against llama.cpp on real text, and its error handling."""
from __future__ import annotations

import json

import pytest

from corert.cli import main
from corert.tools.corpus import corpus_file
from corert.errors import InputError

TEXT = str(corpus_file("license-apache2.txt"))


def _perplexity(capsys, *extra: str) -> dict:
    code = main(["perplexity", "--model", "smollm2-135m-instruct", "--file", TEXT, "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_native_against_llama_cpp(capsys):
    r = _perplexity(capsys, "--engine", "native", "--plugin", "tokenizer=llama_cpp", "--ref-engine",
                    "llama.cpp", "--ref-plugin", "kv_cache=llama_cpp:f16", "--ctx", "128", "--max-chunks", "2")
    assert {"ppl", "ref_ppl", "tokens", "kld_mean", "top1_agree"} <= r.keys()
    assert r["tokens"] == 2 * 63  # second half of each 128-token chunk: positions 64..126 predict 65..127
    assert r["plugins"]["engine"] == "native" and r["ref_plugins"]["engine"] == "llama.cpp"
    assert r["model"] == "smollm2-135m-instruct" and r["file"] == "license-apache2.txt"  # names, not paths
    assert 1.0 < r["ppl"] < 100.0
    assert abs(r["ppl"] / r["ref_ppl"] - 1.0) < 0.03
    assert r["kld_mean"] < 0.01
    assert r["top1_agree"] >= 0.9


def test_llama_cpp_reference_is_f32_without_flash_attention_unless_told(capsys, monkeypatch):
    """The reference at llama.cpp's most precise settings; an explicit --ref-plugin kv_cache still wins."""
    from corert.tools import perplexity

    made = []
    real = perplexity._runtime
    monkeypatch.setattr(perplexity, "_runtime", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    common = ("--engine", "native", "--ref-engine", "llama.cpp", "--ctx", "64", "--max-chunks", "1")
    assert _perplexity(capsys, *common)["ref_plugins"]["kv_cache"] == "llama_cpp:f32"
    assert made[1].config.llama.flash_attn is False and made[0].config.engine == "native"
    told = _perplexity(capsys, *common, "--ref-plugin", "kv_cache=llama_cpp:q8_0")
    assert told["ref_plugins"]["kv_cache"] == "llama_cpp:q8_0" and made[3].config.llama.flash_attn is True


def test_same_engine_on_both_sides_agrees_exactly(capsys):
    r = _perplexity(capsys, "--engine", "native", "--ref-engine", "native", "--ctx", "64", "--max-chunks", "1",
                    "--score", "all")
    assert r["tokens"] == 63
    assert r["ppl"] == r["ref_ppl"] and r["kld_mean"] == 0.0 and r["top1_agree"] == 1.0


def test_bad_input(capsys, tmp_path):
    from corert.tools import perplexity

    empty = tmp_path / "short.txt"
    empty.write_text("too short")
    for path in (tmp_path / "missing.txt", empty):
        assert main(["perplexity", "--model", "smollm2-135m-instruct", "--engine", "native", "--file",
                     str(path)]) == 2
        assert "corert: error" in capsys.readouterr().err
    with pytest.raises(InputError):
        import argparse

        perplexity.run(argparse.Namespace(file=TEXT, ctx=8, ref_engine=None, ref_plugin=[], score="all",
                                          max_chunks=0, model="smollm2-135m-instruct", engine="native"))
