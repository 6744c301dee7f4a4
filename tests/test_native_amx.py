"""The amx variant (matmul_amx.py) against vnni (matmul_i8.py): the same integers through the same epilogue, so
bit-identical outputs for every layout, row count (whole tiles and tails) and level count, on random and real
matrices, and a whole forward's logits on a real prompt."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from corert.cpu import info
from corert.engines.native import matmul_amx, matmul_i8, products
from corert.engines.native.plugin import AMX
from native_support import prompt_logits, random_blocks

pytestmark = pytest.mark.skipif(not AMX.supported(info()), reason="this CPU lacks AMX")

ROWS = [1, 2, 15, 16, 17, 33, 64, 130]
L2 = 1 << 20


def _both(kind, parts, x, levels, rows, l2=L2, threads=2):
    """(vnni's, amx's) outputs (n, rows) of the matrix (layout ``kind``, ``parts``) . x, the kernels and
    arguments products.I8Products.bind takes."""
    k = products.LAYOUT_KERNELS[kind]
    pre, post, _ = k.arguments(parts)
    outs = []
    for fn in (k.vnni, k.amx):
        out = np.full((x.shape[0], rows), np.nan, np.float32)
        fn(*pre, x, out, *post, l2, threads, levels)
        outs.append(out)
    return outs


@pytest.fixture(scope="module")
def layouts():
    """Random matrices of 40 rows (the last group padded) x 512 columns in every layout."""
    rng = np.random.default_rng(12)
    rows, cols = 40, 512
    r = random_blocks(rng, rows, cols)
    q, bits, sub, sup, nib = r["q"], r["bits"], r["sub"], r["sup"], r["nib"]
    out = {"q8": matmul_i8.layout_q8(q, bits, pack=False), "q5": matmul_i8.layout_q8(q // 8, bits),
           "q6": matmul_i8.layout_q6(q, sub, sup), "q6p": matmul_i8.layout_q6(q // 4, sub, sup),
           "q4": matmul_i8.layout_q4(nib, r["scale"], r["offset"]),
           "q4k": matmul_i8.layout_q4k(nib, r["sc"], r["mn"], r["dd"], r["dmin"])}
    # each the layout its name says, as bind tells them apart (q5 is a q8 matrix packed in 5 bits)
    assert {k: products.layout_of("q8" if k == "q5" else k[:2], v, cols) for k, v in out.items()} == {k: k for k in out}
    return out, rng, cols


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("kind", list(products.LAYOUT_KERNELS))
def test_amx_equals_vnni_bit_for_bit(kind, levels, layouts):
    mats, rng, cols = layouts
    for n in ROWS:
        x = rng.standard_normal((n, cols)).astype(np.float32)
        vnni, amx = _both(kind, mats[kind], x, levels, 40)
        assert np.isfinite(vnni).all()
        np.testing.assert_array_equal(amx.view(np.uint32), vnni.view(np.uint32), err_msg=f"{kind} {n} rows")


def test_amx_tiled_loop_equals_vnni(layouts):
    """A small L2 cuts 130 rows into row tiles (row_tiles): the amx tiles are rounded to whole A tiles, the
    sums stay the same."""
    mats, rng, cols = layouts
    x = rng.standard_normal((130, cols)).astype(np.float32)
    for kind in products.LAYOUT_KERNELS:
        vnni, amx = _both(kind, mats[kind], x, 2, 40, l2=16 << 10)
        np.testing.assert_array_equal(amx.view(np.uint32), vnni.view(np.uint32), err_msg=kind)


@pytest.fixture(scope="module")
def qwen_model(qwen05):
    from corert.engines.native.model import Transformer
    from corert.models.gguf_header import read_header

    return Transformer.load(read_header(qwen05, want_arrays=False), "vnni", "auto")


def test_real_matrices_of_every_layout(qwen_model):
    """Qwen 0.5B's matrices (Q4_K, packed Q5_0, packed Q6_K, Q8_0): one of each layout, 33 rows."""
    rng = np.random.default_rng(5)
    seen = {}
    for m in qwen_model.matrices():
        seen.setdefault(products.layout_of(m.kind, m.parts, m.cols), m)
    assert {"q8", "q5", "q6p", "q4k"} <= set(seen)
    for kind, m in seen.items():
        x = rng.standard_normal((33, m.cols)).astype(np.float32)
        vnni, amx = _both(kind, m.parts, x, 2, m.rows)
        np.testing.assert_array_equal(amx.view(np.uint32), vnni.view(np.uint32), err_msg=kind)


def test_forward_logits_equal_vnni(qwen05):
    """A whole prompt (40 tokens: the products run on tiles) through Qwen 0.5B on amx and on vnni."""
    from corert.engines.native.model import Transformer
    from corert.models.gguf_header import read_header
    from corert.plugins.tokenizer.bpe import BpeTokenizer

    header = read_header(qwen05, want_arrays=False)
    ids = np.array(BpeTokenizer.from_gguf(qwen05).encode(
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number, iteratively.\"\"\"\n    a, b = 0, 1\n"
        "    for _ in range(n):\n        a, b = b, a + b\n    return a\n"), np.int32)
    assert ids.size >= matmul_amx.AMX_MIN_ROWS
    logits = {v: prompt_logits(Transformer.load(header, v, "auto"), ids, threads=2) for v in ("vnni", "amx")}
    assert np.isfinite(logits["vnni"]).all()
    np.testing.assert_array_equal(logits["amx"].view(np.uint32), logits["vnni"].view(np.uint32))


def test_amx_products_pick_tiles_from_min_rows():
    """The amx variant's products: vnni's layout family (one layout cache), the tiles from AMX_MIN_ROWS rows."""
    p = products.PRODUCTS["amx"]
    assert p.amx and p.levels == 2 and type(p) is type(products.PRODUCTS["vnni"])
    assert p.for_matrix("gate_up") is p


#: a tile kernel called with no variant chosen, so cpu.py's detection never runs in the process
UNDETECTED = r"""
import numpy as np
from corert import cpu
from corert.engines.native import matmul_amx, matmul_i8

rng = np.random.default_rng(0)
parts = matmul_i8.layout_q8(rng.integers(-128, 128, (16, 64)).astype(np.int8),
                            np.full((16, 2), 0x2c00, np.uint16), pack=False)
x = rng.standard_normal((matmul_amx.AMX_MIN_ROWS, 64)).astype(np.float32)
out = np.full((x.shape[0], 16), np.nan, np.float32)
matmul_amx.q8_product(*parts, x, out, None, 1 << 20, 1, 2)
assert np.isfinite(out).all()
assert cpu._detect.cache_info().currsize == 0, "detection ran: the test proves nothing"
"""


def test_tile_kernel_runs_without_detection():
    """Importing a tile kernel's module asks for the tile state (kernels/amx.py): a kernel called before
    any detection (a script, Transformer.load(header, "amx")) runs; without the request it was SIGILL."""
    proc = subprocess.run([sys.executable, "-c", UNDETECTED], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
