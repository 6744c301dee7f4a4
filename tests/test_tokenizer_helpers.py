"""Shared fixtures of the tokenizer tests (no tests here): real models, llama.cpp's vocab-only oracle, real texts."""
from __future__ import annotations

import functools

from corert.tools.corpus import corpus_files, corpus_texts  # noqa: F401 - corpus_texts is imported by the kernel tests

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m")

# The corpus shipped in the package (corert/data/text-corpus; sources and licences in its SOURCES.md).
CORPUS = [str(p) for p in corpus_files()]


@functools.lru_cache(maxsize=None)
def model_path(name: str) -> str:
    from corert.models.store import ModelStore

    return str(ModelStore(progress=False).resolve(name))  # pulled on first use, never skipped


@functools.lru_cache(maxsize=None)
def tokenizer(name: str, variant: str = "avx2"):
    from corert.cpu import info
    from corert.plugins.tokenizer.bpe import BpeTokenizer
    from corert.plugins.tokenizer.vocab import load_vocab

    if variant == "avx2" and "avx2" not in info().features:
        variant = "scalar"
    return BpeTokenizer(load_vocab(model_path(name)), variant)


@functools.lru_cache(maxsize=None)
def llama_vocab(name: str):
    import llama_cpp
    return llama_cpp.Llama(model_path(name), vocab_only=True, verbose=False)


REAL_TEXTS = {
    "prose": "The quick brown fox doesn't jump; it's lazy. We'll see—won't we? \"Quotes\" and 'apostrophes'.",
    "code": "def f(x: int) -> int:\n    if x <= 1:\n        return 1\n    return x * f(x - 1)  # 3.14159\n\n"
            "for (int i = 0; i < 10; ++i) { a[i] += b[i] >> 2; }\r\n\tconst s = `${y}`;\n",
    "numbers": "Call 555-0123 or +44 (20) 7946 0958; 1,234,567.89 EUR; 2024-05-06T12:34:56Z; 0xDEADBEEF ½ ² ٣",
    "german": "Größenwahn über Äpfel: „Straße“ und Maß — ß, ẞ.",
    "french": "Où est l’hôtel ? C’était déjà « très » cher…",
    "russian": "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "greek": "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "arabic": "نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر ومغلف بجلد أزرق",
    "hebrew": "דג סקרן שט בים מאוכזב ולפתע מצא חברה",
    "hindi": "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले",
    "thai": "เป็นมนุษย์สุดประเสริฐเลิศคุณค่า",
    "chinese": "我能吞下玻璃而不伤身体。天地玄黄，宇宙洪荒。",
    "japanese": "いろはにほへと ちりぬるを　カタカナ、漢字混じり文。",
    "korean": "다람쥐 헌 쳇바퀴에 타고파",
    "emoji": "Hi 👋🏽! Family: 👨‍👩‍👧‍👦, flags 🇯🇵🇺🇸, keycap 1️⃣, ❤️‍🔥 done ✅",
    "combining": "e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353algo",
    "whitespace": "  two\t\ttabs \u00a0nbsp\u3000ideo\u2003em   \n\n\n  \r\n\r\n    end  ",
    "markup": "<div class=\"a\">Hello <b>world</b></div>\n<table><tr><td>1</td></tr></table> **bold** _it_ <p> </p>x> </y",
    "long_word": "Pneumonoultramicroscopicsilicovolcanoconiosis" * 20,
}
