"""The bpe tokenizer gives exactly llama.cpp's ids on real text, for the three real GGUF vocabularies."""
from __future__ import annotations

import os

import numpy as np
import pytest

from test_tokenizer_helpers import CORPUS, MODELS, REAL_TEXTS, llama_vocab, model_path, tokenizer


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _first_diff(a, b) -> str:
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    return f"first difference at {i}: llama.cpp {a[max(0, i - 3):i + 5]} vs ours {b[max(0, i - 3):i + 5]}"


def test_corpus_exists():
    assert len(CORPUS) >= 10, "the shared corpus is missing"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("path", CORPUS, ids=os.path.basename)
def test_corpus_file_parity(model, path):
    text = _read(path)
    tok = tokenizer(model)
    ref = llama_vocab(model).tokenize(text.encode(), add_bos=tok.add_bos, special=False)
    got = tok.encode(text)
    assert got == ref, _first_diff(ref, got)


@pytest.mark.parametrize("model", MODELS)
def test_real_text_parity(model):
    tok = tokenizer(model)
    llama = llama_vocab(model)
    for name, text in REAL_TEXTS.items():
        ref = llama.tokenize(text.encode(), add_bos=tok.add_bos, special=False)
        got = tok.encode(text)
        assert got == ref, f"{name}: {_first_diff(ref, got)}"


@pytest.mark.parametrize("model", MODELS)
def test_add_bos_and_empty(model):
    tok = tokenizer(model)
    llama = llama_vocab(model)
    for text in ("", "Hi there"):
        # default: the model's own add_bos, which is what llama.cpp's add_special does
        assert tok.encode(text) == llama.tokenize(text.encode(), add_bos=True, special=False)
        # explicit: BOS or not, whatever the model says (as the llama_cpp reference plugin does)
        plain = llama.tokenize(text.encode(), add_bos=False, special=False)
        assert tok.encode(text, add_bos=False) == plain
        assert tok.encode(text, add_bos=True) == [tok.bos_id] + plain


SPECIAL_TEXTS = {
    "smollm2-135m-instruct": "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<reponame>x",
    "qwen2.5-coder-0.5b-instruct": "<|im_start|>system\nYou are<|im_end|><tool_call>{}</tool_call>"
                                   "<|fim_prefix|>def<|fim_suffix|><|fim_middle|><|endoftext|>",
    "gemma3-270m": "<bos><start_of_turn>user\nHi <b>there</b>\n\n\n<end_of_turn>\n<start_of_turn>model"
                   "\t\t<unused17>  <table><tr><td>1</td></tr></table>",
}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("parse_special", [True, False])
def test_special_token_parity(model, parse_special):
    tok = tokenizer(model)
    text = SPECIAL_TEXTS[model]
    ref = llama_vocab(model).tokenize(text.encode(), add_bos=False, special=parse_special)
    got = tok.encode(text, add_bos=False, parse_special=parse_special)
    assert got == ref, _first_diff(ref, got)
    if parse_special:
        assert len(got) < len(tok.encode(text, add_bos=False))  # specials became single ids


@pytest.mark.parametrize("model", MODELS)
def test_decode_matches_llama(model):
    tok = tokenizer(model)
    llama = llama_vocab(model)
    for text in REAL_TEXTS.values():
        ids = tok.encode(text)
        # piece by piece: llama-cpp-python's detokenize() drops a space after BOS on its own account
        pieces = [llama.detokenize([i]) for i in ids]
        assert [tok.token_bytes(i) for i in ids] == pieces
        assert tok.decode(ids) == b"".join(pieces).decode("utf-8", errors="replace")


@pytest.mark.parametrize("model", MODELS)
def test_is_eog_matches_llama(model):
    import llama_cpp

    tok = tokenizer(model)
    llama = llama_vocab(model)
    vocab = llama_cpp.llama_model_get_vocab(llama._model.model)
    ref = {t for t in range(tok.vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    ours = {t for t in range(tok.vocab_size) if tok.is_eog(t)}
    assert ours == ref
    assert tok.eos_id in ours


@pytest.mark.parametrize("model", MODELS)
def test_metadata_from_gguf(model):
    from corert.models.gguf_header import read_header

    tok = tokenizer(model)
    md = read_header(model_path(model), want_arrays=False).metadata
    assert tok.vocab_size == llama_vocab(model).n_vocab()
    assert tok.bos_id == md["tokenizer.ggml.bos_token_id"]
    assert tok.eos_id == md["tokenizer.ggml.eos_token_id"]
    assert tok.add_bos == bool(md.get("tokenizer.ggml.add_bos_token", False))
    assert tok.vocab.pre == md.get("tokenizer.ggml.pre", "default")


@pytest.mark.parametrize("model", MODELS)
def test_invalid_utf8_bytes_match_llama(model):
    """encode_bytes reads invalid UTF-8 the way llama.cpp does; encode(str) of the errors="replace" text
    matches llama.cpp on that replaced text."""
    tok = tokenizer(model)
    llama = llama_vocab(model)
    for raw in (b"ok \xff\xfe bad", b"cut \xe2\x82 mid", b"\xc0\x80 overlong", b"tail \xf0\x9f\x98",
                b"caf\xe9 latin-1", "fine ✓".encode() + b"\x80\x80"):
        assert tok.encode_bytes(raw) == llama.tokenize(raw, add_bos=tok.add_bos, special=False), raw
        replaced = raw.decode("utf-8", errors="replace")
        assert tok.encode(replaced) == llama.tokenize(replaced.encode(), add_bos=tok.add_bos, special=False)


def test_every_variant_gives_the_same_ids_on_the_corpus():
    from corert.plugins.tokenizer.bpe import BpeTokenizer

    model = "qwen2.5-coder-0.5b-instruct"
    texts = [_read(p) for p in CORPUS] + list(REAL_TEXTS.values())
    base = tokenizer(model)
    ref = [BpeTokenizer(base.vocab, "scalar").encode(t) for t in texts]
    for variant in ("avx2", "neon"):
        tok = BpeTokenizer(base.vocab, variant)
        assert [tok.encode(t) for t in texts] == ref, variant
    assert np.sum([len(r) for r in ref]) > 10000


@pytest.mark.parametrize("model", MODELS)
def test_special_tokens_in_long_text(model):
    """Long text takes the prefix-window filter for special tokens; ids must not change."""
    tok = tokenizer(model)
    text = SPECIAL_TEXTS[model].join(_read(p) for p in CORPUS[:4])
    for parse_special in (True, False):
        ref = llama_vocab(model).tokenize(text.encode(), add_bos=False, special=parse_special)
        assert tok.encode(text, add_bos=False, parse_special=parse_special) == ref
