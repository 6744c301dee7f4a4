"""The bpe tokenizer's memory: a warm load maps the cached vocabulary tables instead of reading them, and
decoding slices one blob instead of holding a bytes object per token, so Qwen's 151k-token tokenizer costs
a few MB of private memory, not ~26 MB.  A fresh process (import-time state)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_tokenizer_helpers import model_path

PROBE = r"""
import json, sys
import corert.numba_setup
from corert.plugins.tokenizer.bpe import BpeTokenizer
from corert.plugins.tokenizer.vocab import load_vocab

def anon():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:")) / 1024

text = "Write a Python function that returns the n-th Fibonacci number."
warm = BpeTokenizer(load_vocab(sys.argv[1]), "scalar")  # loads the kernels (their code is not the vocabulary's)
warm.decode(warm.encode(text))
del warm
before = anon()
tok = BpeTokenizer(load_vocab(sys.argv[1]), "scalar")
out = tok.decode(tok.encode(text, add_bos=False))
print(json.dumps({"anon_mb": anon() - before, "roundtrip": out == text}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc only")
def test_qwen_tokenizer_costs_little_private_memory():
    from corert.plugins.tokenizer.vocab import load_vocab

    path = model_path("qwen2.5-coder-0.5b-instruct")
    load_vocab(path)  # the cache exists before the probe
    out = subprocess.run([sys.executable, "-c", PROBE, path], capture_output=True, text=True, timeout=300,
                         check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["roundtrip"]
    assert r["anon_mb"] < 6  # tables read into memory and a bytes object per token: ~20 MB
