"""The bpe tokenizer's kernels and behaviour: variants, vector code, linear time, batching, loading, errors."""
from __future__ import annotations

import platform
import re

import numpy as np
import pytest

from test_tokenizer_helpers import MODELS, REAL_TEXTS, corpus_texts, model_path, tokenizer

from corert.errors import InputError, ModelError

QWEN = "qwen2.5-coder-0.5b-instruct"


def _corpus_texts() -> list[str]:
    return corpus_texts()


# -- variants --------------------------------------------------------------------------------------------
def _plugin_variants() -> list[str]:
    """The bpe plugin's variants as it registers them, so a new variant is tested without editing this file."""
    from corert.plugins.tokenizer.bpe_plugin import register_tokenizers

    impls = []
    register_tokenizers(impls.append)
    return [v.name for v in impls[0].variants]


VARIANTS = _plugin_variants()
#: the variants compared with the scalar reference
OTHERS = [v for v in VARIANTS if v != "scalar"]


def test_every_variant_has_its_kernels():
    from corert.plugins.tokenizer.kernels_scan import VARIANT_CODES

    assert set(VARIANTS) == set(VARIANT_CODES) and "scalar" in VARIANTS


def _scan(variant: str, kind: int, text: str):
    from corert.plugins.tokenizer import kernels_scan as S
    from corert.plugins.tokenizer.unicode_classes import class_table

    data = np.frombuffer(text.encode(), dtype=np.uint8)
    n = data.shape[0]
    cls = np.zeros(n, dtype=np.uint8)
    boff = np.zeros(n + 1, dtype=np.int32)
    words = np.zeros(max(n, 1), dtype=np.int32)
    code = S.VARIANT_CODES[variant]
    m = S.classify(code, data, 0, n, class_table(), cls, boff)
    nw = S.split(kind, code, data, cls, boff, 0, m, words, 0)
    return cls[:m].copy(), boff[:m + 1].copy(), words[:nw].copy()


@pytest.mark.parametrize("variant", OTHERS)
@pytest.mark.parametrize("kind", [0, 1], ids=["smollm", "qwen2"])
def test_scan_variants_equal_scalar(variant, kind):
    """Every variant's scan (plain numba: any CPU executes each shape) gives the scalar reference's output."""
    rng = np.random.default_rng(7)
    texts = _corpus_texts() + list(REAL_TEXTS.values())
    # random mixes of ASCII runs and multi-byte characters, so blocks start and stop everywhere
    alphabet = list("ab Z9\n\t'.") + ["é", "中", "😀", "\u00a0", "\u0301"]
    texts += ["".join(rng.choice(alphabet, size=int(rng.integers(0, 300)))) for _ in range(200)]
    for text in texts:
        ref = _scan("scalar", kind, text)
        got = _scan(variant, kind, text)
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant", OTHERS)
@pytest.mark.parametrize("model", MODELS)
def test_encode_variants_equal_scalar(model, variant):
    """Whole encodes (scan, split, merges, special tokens; one by one and batched) of every variant."""
    from corert.plugins.tokenizer.bpe import BpeTokenizer

    ref = tokenizer(model, "scalar")
    tok = BpeTokenizer(ref.vocab, variant)
    texts = _corpus_texts() + list(REAL_TEXTS.values()) + ["", " ", "<|im_end|> <bos>\n\n"]
    want = [ref.encode(t, parse_special=True) for t in texts]
    assert [tok.encode(t, parse_special=True) for t in texts] == want
    assert tok.encode_batch(texts, parse_special=True) == want


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 assembly only")
@pytest.mark.parametrize("kernel", ["classify_block32", "run_end_block32"])
def test_avx2_kernels_compile_to_wide_vector_code(kernel):
    """numba hides the assembly of cached code, so compile a fresh copy of the kernel to inspect it."""
    import numba

    from corert.cpu import info
    from corert.plugins.tokenizer import kernels_scan as S
    from corert.plugins.tokenizer.unicode_classes import class_table

    if "avx2" not in info().features:
        pytest.skip("this CPU has no AVX2")
    fresh = numba.njit(getattr(S, kernel).py_func)
    data = np.frombuffer(b"plain ascii text, long enough for two blocks of 32", dtype=np.uint8)
    cls = np.zeros(64, dtype=np.uint8)
    if kernel.startswith("classify"):
        fresh(data, 0, data.shape[0], class_table(), cls, np.zeros(65, dtype=np.int32))
    else:
        fresh(cls, 0, 64, np.int64(2))
    asm = "\n".join(fresh.inspect_asm().values())
    assert re.search(r"%[yz]mm\d+", asm), f"{kernel}: no ymm/zmm register in its assembly"


# -- linear time -------------------------------------------------------------------------------------------
# Work is counted, not timed (speed is `corert bench tokenize`'s business): with NUMBA_DISABLE_JIT the same
# kernels run as plain Python in a child process, which counts the kernel statements one encode executes.
# The scalar variant: the avx2/neon scans are numba intrinsics with no Python form, and equal scalar above.
_COUNT_KERNEL_STATEMENTS = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from test_tokenizer_helpers import tokenizer
tok = tokenizer(sys.argv[2], "scalar")
count = 0

def local(frame, event, arg):
    global count
    if event == "line":
        count += 1
    return local

def calls(frame, event, arg):
    return local if os.path.basename(frame.f_code.co_filename).startswith("kernels_") else None

out = []
for text in json.load(sys.stdin):
    count = 0
    sys.settrace(calls)
    ids = tok.encode(text)
    sys.settrace(None)
    out.append({"statements": count, "ids": ids})
json.dump(out, sys.stdout)
"""
LINEAR_SHAPES = ("a", "spaces", "digits", "one_word", "newlines")
SMALL, LARGE = 1000, 4000


def _shaped(shape: str, n: int) -> str:
    if shape == "a":
        return "a" * n
    if shape == "spaces":
        return " " * n + "x"
    if shape == "digits":
        return "7" * n
    if shape == "newlines":
        return "\n" * n
    rng = np.random.default_rng(n)
    return "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=n))


@pytest.mark.parametrize("model", MODELS)
def test_no_quadratic_blowup(model):
    """The kernel statements an encode runs grow linearly with the text: 4x the bytes, at most 8x the work
    (n log n merges give ~4.8x; quadratic would be 16x), for every text shape that stresses a different loop
    (one long word, long runs of spaces, digits, newlines)."""
    import json
    import os
    import subprocess
    import sys

    texts = [_shaped(shape, n) for shape in LINEAR_SHAPES for n in (SMALL, LARGE)]
    proc = subprocess.run([sys.executable, "-c", _COUNT_KERNEL_STATEMENTS, os.path.dirname(__file__), model],
                          input=json.dumps(texts), capture_output=True, text=True,
                          env={**os.environ, "NUMBA_DISABLE_JIT": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads(proc.stdout)
    compiled = tokenizer(model, "scalar")
    for i, shape in enumerate(LINEAR_SHAPES):
        small, large = runs[2 * i], runs[2 * i + 1]
        # the Python run is the same algorithm as the compiled one: same ids
        assert small["ids"] == compiled.encode(texts[2 * i]) and large["ids"] == compiled.encode(texts[2 * i + 1])
        ratio = large["statements"] / small["statements"]
        assert ratio < 2 * LARGE / SMALL, (f"{shape}: {small['statements']} kernel statements for {SMALL} bytes, "
                                           f"{large['statements']} for {LARGE} ({ratio:.1f}x)")


# -- batch -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_encode_batch_equals_one_by_one(model):
    tok = tokenizer(model)
    texts = _corpus_texts() + list(REAL_TEXTS.values()) + ["", " ", "<|im_end|> <bos>\n\n"]
    for parse_special in (False, True):
        one = [tok.encode(t, parse_special=parse_special) for t in texts]
        assert tok.encode_batch(texts, parse_special=parse_special) == one
    assert tok.encode_batch([]) == []
    assert tok.encode_batch(texts[:3], add_bos=False) == [tok.encode(t, add_bos=False) for t in texts[:3]]


# -- errors ------------------------------------------------------------------------------------------------
def test_bad_input_is_a_typed_error():
    tok = tokenizer(QWEN)
    with pytest.raises(InputError, match="out of range"):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(InputError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(InputError, match="out of range"):
        tok.token_bytes(10**9)
    with pytest.raises(InputError, match="takes str"):
        tok.encode(b"bytes")
    with pytest.raises(InputError, match="surrogate"):
        tok.encode("broken \ud800 text")
    with pytest.raises(InputError):
        tok.encode_batch("one string")
    with pytest.raises(InputError):
        tok.encode_bytes("not bytes")
    assert tok.encode("", add_bos=False) == []
    # bytes that decode past U+10FFFF make llama.cpp abort the process; we read them as U+FFFD
    assert tok.encode_bytes(b"x\xf7\xbf\xbf\xbfy", add_bos=False) == tok.encode("x\ufffdy", add_bos=False)
    assert tok.decode([]) == ""


def _vocab_gguf(path, model: str, tokens, types, *, pre=None, merges=None, scores=None,
                llama_loadable: bool = False, **keys) -> None:
    """A tiny real GGUF file holding a tokenizer only (no such model ships here, so tests write one).
    ``llama_loadable`` adds the hyperparameters llama.cpp reads even for a vocab_only load; ``keys`` are
    further GGUFWriter.add_<key>(value) calls (bos_token_id=1, add_space_prefix=False, ...)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    if llama_loadable:
        for add in (w.add_block_count, w.add_context_length, w.add_embedding_length, w.add_feed_forward_length,
                    w.add_head_count):
            add(8)
        w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges is not None:
        w.add_token_merges(merges)
    if scores is not None:
        w.add_token_scores(scores)
    for key, value in keys.items():
        getattr(w, f"add_{key}")(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_gguf(path, model: str, pre: str) -> None:
    _vocab_gguf(path, model, ["a", "b", "ab", "Ġ"], [1, 1, 1, 1], pre=pre, merges=["a b"])


def test_unknown_pre_tokenizer_is_a_clear_error(tmp_path):
    from corert.plugins.tokenizer.vocab import load_vocab

    path = tmp_path / "klingon.gguf"
    _write_gguf(path, "gpt2", "klingon")
    with pytest.raises(ModelError, match="unknown pre-tokenizer 'klingon'"):
        load_vocab(path, use_cache=False)
    path2 = tmp_path / "bert.gguf"
    _write_gguf(path2, "bert", "default")
    with pytest.raises(ModelError, match="tokenizer model 'bert' is not supported"):
        load_vocab(path2, use_cache=False)
    with pytest.raises(ModelError, match="not found"):
        load_vocab(tmp_path / "missing.gguf")


def test_tiny_written_vocab_encodes(tmp_path):
    """The same writer with a known pre-tokenizer gives a working tokenizer (merges applied)."""
    from corert.plugins.tokenizer.bpe import BpeTokenizer
    from corert.plugins.tokenizer.vocab import load_vocab

    path = tmp_path / "tiny.gguf"
    _write_gguf(path, "gpt2", "qwen2")
    tok = BpeTokenizer(load_vocab(path, use_cache=False), "scalar")
    assert tok.encode("abab", add_bos=False) == [2, 2]
    assert tok.encode("ba", add_bos=False) == [1, 0]
    assert tok.decode([2, 3, 0]) == "ab a"


# -- loading -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_cached_vocab_equals_fresh_build(model, tmp_path, monkeypatch):
    from corert.plugins.tokenizer.vocab import Vocab, build_vocab, load_vocab

    monkeypatch.setenv("CORERT_TOKENIZER_CACHE", str(tmp_path))
    path = model_path(model)
    cold = load_vocab(path)  # builds and writes the cache
    written = [d for d in tmp_path.glob("vocab-*") if d.is_dir()]
    assert written, "no cache written"
    warm = load_vocab(path)
    fresh = build_vocab(__import__("pathlib").Path(path))
    for bad in written[0].glob("*.npy"):  # a damaged cache is rebuilt, not trusted
        # replaced, as corert writes it: truncating a file in place would fault ``warm``, which maps it
        damaged = bad.with_suffix(".tmp")
        damaged.write_bytes(bad.read_bytes()[:100])
        damaged.replace(bad)
    assert load_vocab(path).n_vocab == cold.n_vocab
    for v in (warm, fresh):
        for name in Vocab._ARRAYS:
            np.testing.assert_array_equal(getattr(cold, name), getattr(v, name), err_msg=name)
        for name in Vocab._SCALARS:
            assert getattr(cold, name) == getattr(v, name), name


# -- plugin ------------------------------------------------------------------------------------------------
def test_plugin_registers_bpe_as_default_tokenizer():
    from corert.plugin_host import PluginHost

    host = PluginHost.build()
    reg = host.implementations("tokenizer")["bpe"]
    assert reg.impl.priority == 10
    assert {v.name for v in reg.impl.variants} == {"avx2", "neon", "scalar"}
    assert reg.impl.supports_engine("llama.cpp") and reg.impl.supports_engine("native")
    resolved = host.resolve("tokenizer", "bpe:scalar", engine="llama.cpp")
    tok = host.create(resolved, model_path=model_path(QWEN), config=None)
    assert tok.name == "bpe:scalar"
    assert tok.encode("Hello world") == [9707, 1879]
    assert host.resolve("tokenizer", None, engine="llama.cpp").impl.name == "bpe"
    with pytest.raises(InputError):
        reg.impl.factory("scalar", model_path=None, config=None)


# -- merge loops -------------------------------------------------------------------------------------------
def test_long_word_buckets_equal_heap_merges():
    """The rank-bucket merge of long words gives exactly the heap merge's ids, on real and random bytes."""
    from corert.plugins.tokenizer import kernels_merge as M

    v = tokenizer(QWEN).vocab
    rng = np.random.default_rng(3)
    samples = [t.encode() for t in _corpus_texts()] + [bytes(rng.integers(0, 256, size=int(n), dtype=np.uint8))
                                                        for n in rng.integers(2, 3000, size=30)]
    samples += [b"a" * 5000, b" " * 777, b"ab" * 999]
    head = np.full(v.m_left.shape[0], -1, dtype=np.int32)
    bits = np.zeros((v.m_left.shape[0] + 63) // 64, dtype=np.uint64)
    for data in samples:
        arr = np.frombuffer(data, dtype=np.uint8)
        n = arr.shape[0]
        i32 = lambda k: np.empty(k, dtype=np.int32)  # noqa: E731
        i64 = lambda k: np.empty(k, dtype=np.int64)  # noqa: E731
        out_a, out_b = i32(n), i32(n)
        na = M.bpe_word(arr, 0, n, v.byte_ids, v.pair_keys, v.pair_vals, v.m_left, v.m_right, v.m_result,
                        i32(n), i32(n), i32(n), i64(3 * n), i64(3 * n), out_a, 0)
        nb = M.bpe_word_long(arr, 0, n, v.byte_ids, v.pair_keys, v.pair_vals, v.m_left, v.m_right,
                             v.m_result, i32(n), i32(n), i32(n), head, bits, i64(3 * n), i32(3 * n),
                             i32(3 * n), out_b, 0)
        assert nb == na and (out_a[:na] == out_b[:nb]).all()
        assert (head == -1).all() and (bits == 0).all()


def test_merge_order_falls_back_when_ranks_are_not_monotone(tmp_path):
    """A vocabulary whose merge creates a lower-ranked pair ('c ab' before 'a b') is merged in heap order."""
    from corert.plugins.tokenizer.bpe import BpeTokenizer
    from corert.plugins.tokenizer.vocab import load_vocab

    path = tmp_path / "odd.gguf"
    _vocab_gguf(path, "gpt2", ["a", "b", "c", "ab", "cab"], [1] * 5, pre="qwen2", merges=["c ab", "a b"])
    tok = BpeTokenizer(load_vocab(path, use_cache=False), "scalar")
    assert tok.encode("cab" * 100, add_bos=False) == [4] * 100  # long word: buckets bail out to the heap
    assert tok.encode("cab", add_bos=False) == [4]


def test_long_sentencepiece_buckets_equal_heap_merges():
    """Score buckets for long SentencePiece text give exactly the heap's ids (or bail out to it)."""
    from corert.plugins.tokenizer import kernels_merge as M

    v = tokenizer("gemma3-270m").vocab
    rng = np.random.default_rng(5)
    texts = [t.replace(" ", "\u2581") for t in _corpus_texts()]
    texts += ["a" * 3000, "".join(rng.choice(list("abcdefghij\u2581é中"), size=2000))]
    head = np.full(v.srank.shape[0], -1, dtype=np.int32)
    bits = np.zeros((v.srank.shape[0] + 63) // 64, dtype=np.uint64)
    buckets_used = 0
    for text in texts:
        data = np.frombuffer(text.encode(), dtype=np.uint8)
        n = data.shape[0]
        i64 = lambda k: np.empty(k, dtype=np.int64)  # noqa: E731
        out_a, out_b = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
        common = (data, 0, n, v.text_table, v.text_blob, v.text_offs, v.srank, v.byte_tok)
        nb = M.spm_fragment_long(*common, i64(n), i64(n), i64(n), i64(n), i64(n), head, bits, i64(3 * n),
                                 i64(3 * n), i64(3 * n), i64(3 * n), i64(3 * n), out_b, 0)
        na = M.spm_fragment(*common, i64(n), i64(n), i64(n), i64(n), i64(n), i64(3 * n), i64(3 * n), out_a, 0)
        assert (head == -1).all() and (bits == 0).all()
        if nb >= 0:
            buckets_used += 1
            assert nb == na and (out_a[:na] == out_b[:nb]).all()
    assert buckets_used >= len(texts) // 2


def test_threads_share_one_tokenizer_safely():
    """encode and encode_batch from several threads at once give the ids of one thread alone."""
    from concurrent.futures import ThreadPoolExecutor

    tok = tokenizer(QWEN)
    texts = _corpus_texts() + list(REAL_TEXTS.values())
    ref = [tok.encode(t) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        singles = list(pool.map(tok.encode, texts * 3))
        batches = list(pool.map(lambda _: tok.encode_batch(texts), range(3)))
    assert singles == ref * 3
    assert all(b == ref for b in batches)


@pytest.mark.parametrize("space_prefix", [True, False])
def test_sentencepiece_space_prefix_matches_llama(tmp_path, space_prefix):
    """add_space_prefix (Gemma has it off; Llama-2-style vocabularies on): no shipped model has it, so a
    small SentencePiece vocabulary is written and both tokenizers read the same file."""
    from corert.plugins.tokenizer.bpe import BpeTokenizer
    from corert.plugins.tokenizer.vocab import load_vocab

    import llama_cpp
    path = tmp_path / "spm.gguf"
    pieces = ["\u2581", "a", "b", "c", "\u2581a", "ab", "\u2581ab", "bc", "abc", "\u2581abc", "\u2581\u2581", "<x>"]
    _vocab_gguf(path, "llama", ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces,
                [2, 3, 3] + [6] * 256 + [1] * (len(pieces) - 1) + [4],
                scores=[0.0] * 259 + [-float(i) for i in range(len(pieces))], llama_loadable=True,
                bos_token_id=1, eos_token_id=2, unk_token_id=0, add_bos_token=True, add_space_prefix=space_prefix)
    llama = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    tok = BpeTokenizer(load_vocab(path, use_cache=False), "scalar")
    assert tok.vocab.add_space_prefix is space_prefix
    for text in ["abc", " abc", "abc abc  ab", "a<x>abc", "<x> a", "xyz é", "", "  ", "<s>ab</s>"]:
        for parse_special in (False, True):
            ref = llama.tokenize(text.encode(), add_bos=True, special=parse_special)
            assert tok.encode(text, parse_special=parse_special) == ref, (text, parse_special)


@pytest.fixture(scope="module")
def smollm_vocab_parts():
    from corert.models.gguf_header import read_header, string_array_bytes

    src = model_path("smollm2-135m-instruct")
    return ([t.decode("utf-8") for t in string_array_bytes(src, "tokenizer.ggml.tokens")],
            [m.decode("utf-8") for m in string_array_bytes(src, "tokenizer.ggml.merges")],
            [int(t) for t in read_header(src, want_arrays={"tokenizer.ggml.token_type"})
             .metadata["tokenizer.ggml.token_type"]])


@pytest.mark.slow
@pytest.mark.parametrize("pre", ["starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b",
                                 "stablelm2", "megrez", "hunyuan", "deepseek-r1-qwen", "gpt-2", "phi-2",
                                 "olmo", "mpt", "llama-bpe", "llama3", "falcon3", "dbrx", "smaug-bpe"])
def test_other_pre_tokenizer_names_match_llama(pre, smollm_vocab_parts, tmp_path):
    """Names llama.cpp maps to the patterns implemented here (digits+GPT-2, qwen2, GPT-2, llama3):
    SmolLM2's real vocabulary written under each name, read by both tokenizers."""
    from corert.plugins.tokenizer.bpe import BpeTokenizer
    from corert.plugins.tokenizer.vocab import load_vocab

    import llama_cpp
    tokens, merges, types = smollm_vocab_parts
    path = tmp_path / f"{pre}.gguf"
    _vocab_gguf(path, "gpt2", tokens, types, pre=pre, merges=merges, llama_loadable=True,
                bos_token_id=1, eos_token_id=2, add_bos_token=False)
    llama = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    tok = BpeTokenizer(load_vocab(path, use_cache=False), "scalar")
    for text in list(REAL_TEXTS.values()) + _corpus_texts()[:3]:
        assert tok.encode(text) == llama.tokenize(text.encode(), add_bos=False, special=False), pre


@pytest.mark.parametrize("pre", ["llama-bpe", "dbrx", "qwen2"])
def test_ignore_merges_as_llama_cpp(tmp_path, pre):
    """llama3-type vocabularies take a pre-token that is a token as it is ('abc' below), where merges alone
    would give 'a' + 'bc'; dbrx and qwen2 merge.  Written vocabulary, both tokenizers read it."""
    from corert.plugins.tokenizer.bpe import BpeTokenizer
    from corert.plugins.tokenizer.vocab import load_vocab

    import llama_cpp
    path = tmp_path / "im.gguf"
    _vocab_gguf(path, "gpt2", ["a", "b", "c", "bc", "abc", "Ġ", "1", "Ġa", "<|bos|>"], [1] * 8 + [3], pre=pre,
                merges=["b c", "Ġ a"], llama_loadable=True, bos_token_id=8, eos_token_id=8)
    llama = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    tok = BpeTokenizer(load_vocab(path, use_cache=False), "scalar")
    assert tok.vocab.ignore_merges is (pre == "llama-bpe")
    assert tok.add_bos is (pre == "llama-bpe")  # llama.cpp's default when the file does not say
    for text in ["abc", "abc abc", " a1111abcc", "bcabc", "a"]:
        assert tok.encode(text) == llama.tokenize(text.encode(), add_bos=True, special=False), text
    assert (tok.encode("abc", add_bos=False) == [4]) is (pre == "llama-bpe")
