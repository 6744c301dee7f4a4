"""Property tests of the bpe tokenizer on random Unicode text: round trip, and parity with llama.cpp."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from test_tokenizer_helpers import MODELS, llama_vocab, tokenizer

# Text biased toward what pre-tokenizers care about: letters, digits, spaces, newlines, apostrophes,
# punctuation, and codepoints from every plane (assigned or not).
_pieces = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.text(alphabet=" \t\n\r\u00a0\u3000'sStTdDlLvVeEmM0123456789.,;!?()[]{}<>/\\\"", max_size=12),
    st.sampled_from(["'s", "'LL", " 123", "  \n", "\r\n", "😀👍🏽", "é", "中文", "ab\u0301c", "<b>", "  x"]),
)
TEXT = st.lists(_pieces, max_size=6).map("".join)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


#: bytes with no token of their own in SmolLM2's vocabulary (0xF1 leads U+40000..U+7FFFF, 0x04 is a control
#: character): examples every run tries, so the dropped-byte branch below is certainly taken
UNREPRESENTABLE = "a\U00040000b\x04c"


def _kept_bytes(tok, text: str) -> bytes:
    """The bytes of ``text`` the tokenizer keeps.  A byte-level vocabulary without a token for some byte value
    drops that byte, as llama.cpp does (SmolLM2 lacks 21: six control characters, 0xC0, 0xC1, 0xF1, 0xF2 and
    0xF5-0xFF); SentencePiece vocabularies fall back to byte tokens and keep every byte."""
    data = text.encode()
    if tok.vocab.is_spm:
        return data
    return bytes(b for b in data if tok.vocab.byte_ids[b] >= 0)


def test_smollm2_drops_the_bytes_it_has_no_token_for_as_llama_cpp_does():
    tok = tokenizer("smollm2-135m-instruct")
    assert sum(tok.vocab.byte_ids < 0) == 21 and tok.vocab.byte_ids[0x04] < 0 and tok.vocab.byte_ids[0xF1] < 0
    ids = tok.encode(UNREPRESENTABLE)
    assert b"".join(tok.token_bytes(i) for i in ids) == b"a\x80\x80\x80bc"  # 0xF1 and 0x04 gone, nothing else
    assert ids == llama_vocab("smollm2-135m-instruct").tokenize(UNREPRESENTABLE.encode(), add_bos=tok.add_bos,
                                                                special=False)


@pytest.mark.parametrize("model", MODELS)
@SETTINGS
@given(text=TEXT)
@example(text=UNREPRESENTABLE)
def test_round_trip(model, text):
    """Decoding gives the text back, less the bytes the vocabulary cannot represent."""
    tok = tokenizer(model)
    ids = tok.encode(text)
    kept = _kept_bytes(tok, text)
    assert b"".join(tok.token_bytes(i) for i in ids) == kept
    assert tok.decode(ids) == kept.decode("utf-8", errors="replace")


@pytest.mark.parametrize("model", MODELS)
@SETTINGS
@given(text=TEXT)
@example(text=UNREPRESENTABLE)
def test_parity_with_llama_cpp(model, text):
    tok = tokenizer(model)
    assert tok.encode(text) == llama_vocab(model).tokenize(text.encode(), add_bos=tok.add_bos, special=False)


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=40, deadline=None)
@given(texts=st.lists(TEXT, max_size=8))
def test_incremental_decoder_equals_decode(model, texts):
    tok = tokenizer(model)
    ids = [i for t in texts for i in tok.encode(t, add_bos=False)]
    dec = tok.incremental_decoder()
    streamed = "".join(dec.feed(i) for i in ids) + dec.flush()
    assert streamed == tok.decode(ids)
