"""The ``neon`` variants on aarch64: CPU detection, the three kernel families against their scalar references,
their aarch64 assembly, and greedy generation on SmolLM2.

scripts/aarch64-test.sh runs this file on an emulated aarch64 CPU (qemu-user; scripts/aarch64-env.sh sets it
up), and ``test_emulated_aarch64_run`` below launches that run from the x86 suite and compares its tokens with
this machine's.  On x86 the same tests run with the CPU forced to ``{"neon"}``: the neon kernels are plain
numba loops that compile for any CPU; only the assembly check needs the real instruction set.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from corert import cpu

AARCH64 = platform.machine().lower() in ("aarch64", "arm64")
REPO = Path(__file__).resolve().parents[2]
PROMPT = "The capital of France is"
N_TOKENS = 8


def _neon():
    """The CPU as the kernels' choice sees it: the real one on aarch64, forced to neon elsewhere."""
    return contextlib.nullcontext(cpu.info()) if AARCH64 else cpu.override({"neon"})


# -- CPU detection -----------------------------------------------------------------------------------------
def test_neon_is_detected_and_chosen():
    from corert.engines.native.plugin import VNNI
    from corert.plugins.kv_cache.paged.config import PagedConfig

    if AARCH64:
        real = cpu.info()
        assert real.machine == "aarch64" and "neon" in real.features and real.isa == "neon"
        assert not any(f.startswith("avx") for f in real.features)
    with _neon() as info:
        assert cpu.choose_variant(cpu.simd_variants(), None, "tokenizer bpe")[0].name == "neon"
        assert cpu.choose_variant(cpu.simd_variants() + (VNNI,), None, "engine native")[0].name == "neon"
        assert PagedConfig.from_env("q8", environ={}).kernel == "wide"
        with pytest.raises(Exception, match="avx2"):
            cpu.choose_variant(cpu.simd_variants(), "avx2", "tokenizer bpe", cpu=info)


# -- tokenizer: pre-tokenization scan ----------------------------------------------------------------------
TEXTS = [
    "The quick brown fox doesn't jump; it's lazy. We'll see—won't we?",
    "def f(x: int) -> int:\n    return x * f(x - 1)  # 3.14159\r\n\tconst s = `${y}`;\n",
    "Größenwahn über Äpfel: „Straße“ — Съешь же ещё этих мягких булок 中文 😀 ٣",
    "a" * 100 + " " * 40 + "1234567890" * 5 + "\n\n\n",
]


def _scan(variant: str, kind: int, text: str):
    from corert.plugins.tokenizer import kernels_scan as S
    from corert.plugins.tokenizer.unicode_classes import class_table

    data = np.frombuffer(text.encode(), dtype=np.uint8)
    n = data.shape[0]
    cls, boff = np.zeros(n, dtype=np.uint8), np.zeros(n + 1, dtype=np.int32)
    words = np.zeros(max(n, 1), dtype=np.int32)
    code = S.VARIANT_CODES[variant]
    m = S.classify(code, data, 0, n, class_table(), cls, boff)
    nw = S.split(kind, code, data, cls, boff, 0, m, words, 0)
    return cls[:m].copy(), boff[:m + 1].copy(), words[:nw].copy()


@pytest.mark.parametrize("kind", [0, 1], ids=["smollm", "qwen2"])
def test_tokenizer_scan_neon_equals_scalar(kind):
    rng = np.random.default_rng(7)
    # random mixes of ASCII runs and multi-byte characters: 16-byte blocks start and stop everywhere
    alphabet = list("ab Z9\n\t'.") + ["é", "中", "😀", "\u00a0", "\u0301"]
    texts = TEXTS + ["".join(rng.choice(alphabet, size=int(rng.integers(0, 120)))) for _ in range(40)]
    for text in texts:
        for want, got in zip(_scan("scalar", kind, text), _scan("neon", kind, text)):
            np.testing.assert_array_equal(got, want)


# -- native engine: f32 matrix products --------------------------------------------------------------------
def _matrices():
    rng = np.random.default_rng(2)
    rows, cols = 200, 576  # 200 rows: the last 64-row group is padded
    from corert.kernels.f16 import F16_TO_F32

    qs = rng.integers(-127, 128, (rows, cols)).astype(np.int8)
    sc = rng.uniform(1e-3, 5e-2, (rows, cols // 32)).astype(np.float16).view(np.uint16)
    w8 = (qs.reshape(rows, -1, 32) * F16_TO_F32[sc][..., None]).reshape(rows, cols)
    packed = rng.integers(0, 256, (rows, cols // 2)).astype(np.uint8)
    d = rng.uniform(1e-3, 5e-2, (rows, cols // 32)).astype(np.float32)
    m = rng.uniform(-0.2, 0.2, (rows, cols // 32)).astype(np.float32)
    p = packed.reshape(rows, -1, 16)
    q = np.concatenate([p & 15, p >> 4], axis=-1).astype(np.float64)
    w4 = (q * d[..., None] + m[..., None]).reshape(rows, cols)
    x = rng.standard_normal((3, cols)).astype(np.float32)
    return {"q8": ((qs, sc), w8), "q4": ((packed, d, m), w4)}, x


def _product(variant: str, kind: str, mat, x: np.ndarray, rows: int) -> np.ndarray:
    """Row-major test matrices go through the variant's load-time layout, as a model's do."""
    from corert.engines.native import products

    p = products.PRODUCTS[variant]
    out = np.empty((x.shape[0], rows), np.float32)
    if kind == "q8":
        p.q8(p.layout_q8(*mat), x, out)
    else:
        p.q4(p.layout_q4(*mat), x, out)
    return out


@pytest.mark.parametrize("kind", ["q8", "q4"])
def test_native_matmul_neon_matches_scalar_and_f64(kind):
    mats, x = _matrices()
    mat, w = mats[kind]
    rows = w.shape[0]
    got, scalar = _product("neon", kind, mat, x, rows), _product("scalar", kind, mat, x, rows)
    ref = x.astype(np.float64) @ w.T
    scale = np.abs(ref).max()
    assert np.abs(got - scalar).max() <= 1e-5 * scale  # the same sums in another order
    assert np.abs(got - ref).max() <= 1e-5 * scale
    one_by_one = np.concatenate([_product("neon", kind, mat, x[i:i + 1], rows) for i in range(x.shape[0])])
    assert np.array_equal(got, one_by_one)  # a token's outputs do not depend on the batch


# -- paged KV: attention over pages ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8"])
def test_paged_attention_wide_matches_scalar(dtype):
    """The wide kernels (the ones a neon CPU gets) against the scalar ones and the contiguous f32 store."""
    from corert.plugins.kv_cache.contiguous import ContiguousKVStore
    from corert.plugins.kv_cache.paged.config import PagedConfig
    from corert.plugins.kv_cache.paged.store import PagedKVStore

    layers, n_kv, n_heads, hd = 1, 2, 6, 64
    tol = {"f32": 1e-5, "f16": 3e-3, "q8": 4e-2}[dtype]  # f16 / q8 rounding of K and V
    with _neon():
        wide_cfg = PagedConfig.from_env(dtype, environ={})
    assert wide_cfg.kernel == "wide"
    stores = [PagedKVStore(wide_cfg, layers, n_kv, hd, 64, 2),
              PagedKVStore(PagedConfig(dtype=dtype, kernel="scalar"), layers, n_kv, hd, 64, 2),
              ContiguousKVStore(layers, n_kv, hd, 64, 2, "f32")]
    for st in stores:
        st.new_sequence(), st.new_sequence()
    rng = np.random.default_rng(1)
    start = [0, 0]
    for lens in ([20, 7], [1, 1], [16, 3]):  # ragged prefill, decode, crossing page borders
        sid = np.concatenate([np.full(n, s, np.int32) for s, n in enumerate(lens)])
        pos = np.concatenate([np.arange(start[s], start[s] + n) for s, n in enumerate(lens)]).astype(np.int32)
        start = [a + n for a, n in zip(start, lens)]
        k, v = (rng.standard_normal((len(sid), n_kv, hd)).astype(np.float32) for _ in range(2))
        q = rng.standard_normal((len(sid), n_heads, hd)).astype(np.float32)
        outs = []
        for st in stores:
            if isinstance(st, PagedKVStore):
                st.reserve(sid, pos, token_ids=(sid * 1000 + pos).astype(np.int64))
            else:
                st.reserve(sid, pos)
            st.write(0, sid, pos, k, v)
            outs.append(np.empty_like(q))
            st.attend(0, sid, pos, q, 0.125, outs[-1])
        wide, scalar, ref = outs
        np.testing.assert_allclose(wide, scalar, atol=2e-5, rtol=1e-4)  # the same sums in another order
        assert np.abs(wide - ref).max() < tol
    stores[0].check()


# -- aarch64 assembly --------------------------------------------------------------------------------------
def _asm_of(dispatcher, *args) -> str:
    """numba hides the assembly of cached code: compile an uncached copy with the same options."""
    import numba

    opts = {k: v for k, v in dispatcher.targetoptions.items() if k in ("fastmath", "boundscheck")}
    fresh = numba.njit(**opts)(dispatcher.py_func)
    fresh(*args)
    return "\n".join(fresh.inspect_asm().values())


@pytest.mark.skipif(not AARCH64, reason="aarch64 assembly: runs under scripts/aarch64-test.sh")
def test_neon_kernels_compile_to_neon_vector_code():
    """Vector multiply-adds on 4 x f32 q registers (``fmla vN.4s``) in the engine's and the paged KV cache's
    wide kernels, none in the scalar reference (no contraction without fastmath); the tokenizer's all-ASCII
    16-byte blocks classified as byte vectors (``vN.16b``).

    Not vector code on aarch64, measured: the tokenizer's ``run_end_block16`` (LLVM unrolls it into 16 byte
    loads, shifts and ORs: numba widens the class test to 64-bit lanes, two per q register, which LLVM's cost
    model declines) and the paged f16 kernels (the f16 table lookup is a gather; NEON has none)."""
    from corert.engines.native import matmul
    from corert.kernels.f16 import F16_TO_F32
    from corert.plugins.kv_cache.paged import kernels as paged
    from corert.plugins.tokenizer import kernels_scan as scan
    from corert.plugins.tokenizer.unicode_classes import class_table

    g = matmul.GROUP
    q8, s8, x = np.ones(32 * g, np.int8), np.zeros(g, np.uint16), np.ones(32, np.float32)
    q4, d, xs = np.ones(16 * g, np.uint8), np.ones(g, np.float32), np.ones(1, np.float32)
    acc, tmp = np.empty(g, np.float32), np.empty(g, np.float32)
    row = np.ones(64, np.float32)
    fmla = re.compile(r"\bfmla\s+v\d+\.4s")
    wide = {
        "int8_group_wide (q8)": _asm_of(matmul.int8_group_wide, q8, s8, F16_TO_F32, matmul.QK, x, acc, tmp, g),
        "q4_group_wide": _asm_of(matmul.q4_group_wide, q4, d, d, x, xs, acc, tmp, g),
        "paged _dot_f32_w": _asm_of(paged._dot_f32_w, row, row, 64),
        "paged _axpy_f32_w": _asm_of(paged._axpy_f32_w, row, np.float32(0.5), row, 64),
    }
    for name, asm in wide.items():
        assert fmla.search(asm), f"{name}: no fmla on .4s vectors"
    scalar = _asm_of(matmul.int8_group_scalar, q8, s8, F16_TO_F32, matmul.QK, x, acc, tmp, g)
    assert not re.search(r"\bf(n)?m(la|ls|add|sub)\b", scalar), "int8_group_scalar contracts to FMA"

    data = np.frombuffer(b"plain ascii text, long enough for two blocks of 32", dtype=np.uint8)
    cls = np.zeros(64, dtype=np.uint8)
    asm = _asm_of(scan.classify_block16, data, 0, data.shape[0], class_table(), cls, np.zeros(65, np.int32))
    assert re.search(r"\bcm(hi|eq)\s+v\d+\.16b", asm), "classify_block16: no 16-byte vector compare"


# -- greedy generation -------------------------------------------------------------------------------------
def greedy_neon(model: str) -> dict:
    """SmolLM2 greedy: the native engine, bpe tokenizer and KV cache as this CPU (or a forced neon) picks them."""
    from corert import Runtime

    with _neon():
        rt = Runtime(engine="native", model=model, plugins={"tokenizer": "bpe"})
        try:
            chosen = {area: rt.resolve(area).label for area in ("engine", "tokenizer", "kv_cache")}
            r = rt.generate(PROMPT, max_tokens=N_TOKENS, temperature=0)
        finally:
            rt.close()
    return {"machine": platform.machine(), "chosen": chosen, "token_ids": list(r.token_ids), "text": r.text}


@pytest.fixture(scope="session")
def neon_run(smollm2) -> dict:
    return greedy_neon(smollm2)


def test_greedy_generation_with_the_neon_variants(neon_run):
    assert neon_run["chosen"]["engine"] == "native:neon"
    assert neon_run["chosen"]["tokenizer"] == "bpe:neon"
    assert len(neon_run["token_ids"]) == N_TOKENS
    out = os.environ.get("CORERT_AARCH64_RESULTS")
    if out:  # read by test_emulated_aarch64_run on the x86 side
        Path(out).write_text(json.dumps(neon_run))


# -- the x86 side: launch the emulated run -----------------------------------------------------------------
def _emulation_missing() -> str | None:
    proc = subprocess.run([str(REPO / "scripts" / "aarch64-test.sh"), "--check"], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    return proc.stderr.strip() or "scripts/aarch64-test.sh --check failed"


#: The emulated run in two processes, one per core: under qemu nearly all of its time is numba compiling, on
#: one thread.  Generation goes with the tokenizer tests (it compiles their neon kernels too), the kernel tests
#: with the assembly checks; together they are every test of this file.
GROUPS = ("detected or scan or greedy", "not (detected or scan or greedy)")
EMULATED = "test_emulated_aarch64_run"


@pytest.fixture(scope="session")
def emulated_aarch64(neon_run, store, tmp_path_factory):
    """The emulated run, started in the background at nice 19 as soon as the x86 side has its reference: it
    takes the CPU the rest of the suite leaves idle, and ``test_emulated_aarch64_run`` (ordered last in the
    session by conftest.py) collects it.  Yields (the processes, their results file) or (None, why there is no
    emulated environment)."""
    missing = _emulation_missing()
    if missing:
        yield None, missing
        return
    work = tmp_path_factory.mktemp("aarch64")
    env = {**os.environ, "CORERT_AARCH64_RESULTS": str(work / "aarch64.json"),
           "CORERT_MODELS_DIR": str(store.root)}
    env.pop("CORERT_CPU_FEATURES", None)  # the emulated side detects its CPU
    # started after neon_run: the x86 side has written the neon weight layouts the emulated load then maps
    runs = []
    try:
        for i, group in enumerate(GROUPS):
            out, err = (open(work / f"{i}.{name}", "w+") for name in ("out", "err"))
            proc = subprocess.Popen(["nice", "-n", "19", str(REPO / "scripts" / "aarch64-test.sh"), "-q", "-rs",
                                     "-k", group], env=env, stdout=out, stderr=err, text=True,
                                    start_new_session=True)
            runs.append((proc, out, err))
            # reaped as soon as it exits: a finished run left unwaited would be a zombie child of this process
            # until the session's end, and tests/test_isolation.py asserts this process has none
            threading.Thread(target=proc.wait, daemon=True).start()
        yield (runs, work / "aarch64.json"), None
    finally:
        for proc, out, err in runs:
            if proc.poll() is None:  # the script and its qemu child: one process group each
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            out.close(), err.close()


@pytest.fixture(scope="module", autouse=True)
def _emulation_starts_early(request):
    """A session that will run the emulated test starts it with this file's first test."""
    if not AARCH64 and any(item.name == EMULATED for item in request.session.items):
        request.getfixturevalue("emulated_aarch64")


@pytest.mark.slow  # ~10 min of one core when numba compiles under emulation (a new source state), split in two
@pytest.mark.skipif(AARCH64, reason="this is the emulated side")
def test_emulated_aarch64_run(neon_run, emulated_aarch64):
    """This file on an emulated aarch64 CPU: every test passes (none skipped), and greedy generation gives the
    tokens this machine gives with the neon variants forced."""
    started, missing = emulated_aarch64
    if missing:
        if os.environ.get("CI"):  # CI's command sets the environment up, so a missing one is a broken set-up
            pytest.fail(f"no emulated aarch64 environment under CI ({missing})")
        pytest.skip(f"no emulated aarch64 environment ({missing}): run scripts/aarch64-env.sh")
    runs, results = started
    logs, skipped = [], []
    for proc, out, err in runs:
        proc.wait(timeout=3600)
        out.seek(0), err.seek(0)
        text = out.read()
        logs.append(text[-6000:] + err.read()[-3000:])
        assert proc.returncode == 0, logs[-1]
        summary = text.strip().splitlines()[-1]
        assert re.search(r"\b\d+ passed", summary) and "failed" not in summary, logs[-1]
        skipped.append(int(m.group(1)) if (m := re.search(r"\b(\d+) skipped\b", summary)) else 0)
    assert skipped == [0, 1], logs  # only this test, which skips itself there
    arm = json.loads(results.read_text())
    assert arm["machine"] == "aarch64"
    assert arm["chosen"] == neon_run["chosen"]
    assert arm["token_ids"] == neon_run["token_ids"], (arm["text"], neon_run["text"])
