"""Property tests of the bpe tokenizer on random Unicode text: round trip, and parity with llama.cpp."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
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


def _covered(tok, text: str) -> bool:
    """Every byte of text has a token of its own (SmolLM lacks a few; llama.cpp drops those bytes too)."""
    if not tok.vocab.is_spm:
        return all(tok.vocab.byte_ids[b] >= 0 for b in text.encode())
    return True


@pytest.mark.parametrize("model", MODELS)
@SETTINGS
@given(text=TEXT)
def test_round_trip(model, text):
    tok = tokenizer(model)
    if _covered(tok, text):
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("model", MODELS)
@SETTINGS
@given(text=TEXT)
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
