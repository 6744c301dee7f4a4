"""Every CPU variant keeps working end to end: corert under forced CPU profiles, each in a child process
(``CORERT_CPU_FEATURES`` and numba's compile target are read once per process).

Profiles (``CORERT_CPU_FEATURES``): this CPU as detected; this CPU without AVX-512 (an AVX2-only machine);
neon only (the neon kernels are plain numba loops, so x86 runs them too); no SIMD at all.  Under each, the
native engine, the bpe tokenizer and the paged KV kernels fall back to the expected variant with no error,
the vnni kernels are never compiled unless vnni was picked, and greedy generation gives the scalar
reference's tokens.  The forced features only steer the choice: numba still compiles for this CPU.  The
slow tests also make numba compile for a CPU without AVX-512 (and for a generic x86-64), where an
instruction this machine has but that CPU lacks cannot slip in: LLVM aborts the process on ``vpdpbusd``.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys

import pytest

from corert.cpu import CpuInfo
from corert.engines.native.plugin import AMX, AMX_BF16, VNNI

PROMPT = "The capital of France is"
#: what a child must not inherit from this process: the profile is the test's choice
PROFILE_ENV = ("CORERT_CPU_FEATURES", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")
CHILD_TIMEOUT = 900  # a cold numba cache compiles every kernel first (minutes on a busy 2-core machine)

#: greedy tokens through corert.Runtime, and what the process chose and compiled, as one JSON line.
#: paged:f32 runs the paged KV kernels without q8's calibration pass (slow through the scalar kernels).
DRIVER = r"""
import json, sys
from corert import Runtime
from corert.engines.native import matmul_i8

model, prompt = sys.argv[1], sys.argv[2]
with Runtime(engine="native", model=model, plugins=["kv_cache=paged:f32"], n_threads=1) as rt:
    info = rt.plugins_info()
    done = rt.generate(prompt, max_tokens=8, temperature=0)
    kv = rt.kv_cache_info()
vnni = (matmul_i8.int8_product, matmul_i8.q4_product, matmul_i8.q4k_product, matmul_i8.q5_packed_product,
        matmul_i8.q6_packed_product)  # what the products call from Python (they call the kernels)
print(json.dumps({"tokens": list(done.token_ids), "plugins": done.plugins,
                  "chosen": {area: (e["chosen"] or {}).get("variant") for area, e in info["areas"].items()},
                  "failures": info["failures"], "kv_kernel": kv["stores"][0]["kernel"],
                  "vnni_signatures": sum(len(f.signatures) for f in vnni)}))
"""

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the profiles are x86 feature sets")


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_ENV}
    env.update(values)
    return env


def _child(args: list[str], env: dict[str, str]) -> str:
    """Run ``python args``; it must exit 0 with nothing on stderr (no error, no warning); returns stdout."""
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    assert proc.stderr.strip() == "", proc.stderr[-3000:]
    return proc.stdout


@functools.lru_cache(maxsize=None)
def _real_features() -> frozenset[str]:
    out = _child(["-c", "from corert import cpu; print(','.join(sorted(cpu.info().features)))"], _env())
    return frozenset(f for f in out.strip().split(",") if f)


def _profile_features(profile: str) -> frozenset[str]:
    real = _real_features()
    return {"detected": real, "no-avx512": frozenset(f for f in real if not f.startswith("avx512")),
            "no-amx": real - (AMX.requires - VNNI.requires), "no-amx-bf16": real - {"amx_bf16"},
            "neon": frozenset({"neon"}), "no-simd": frozenset()}[profile]


def _profile_env(profile: str) -> dict[str, str]:
    """A profile's environment: forced features, or (``numba:...``) numba compiling for another CPU."""
    if profile == "detected":
        return _env()
    if profile == "numba:generic":
        return _env(NUMBA_CPU_NAME="generic")
    if profile == "numba:no-avx512":
        return _env(NUMBA_CPU_FEATURES=_llvm_features_without_avx512())
    return _env(CORERT_CPU_FEATURES=",".join(sorted(_profile_features(profile))))


def _expected(features: frozenset[str]) -> dict[str, str]:
    """The fallback each kernel plugin must pick on a CPU with ``features``."""
    simd = "avx2" if "avx2" in features else "neon" if "neon" in features else "scalar"
    engine = next((v.name for v in (AMX_BF16, AMX, VNNI) if v.supported(CpuInfo("x86_64", features))), simd)
    return {"engine": engine, "tokenizer": simd,
            "kv_kernel": "wide" if simd != "scalar" else "scalar"}


@functools.lru_cache(maxsize=None)
def _run_profile(model: str, profile: str) -> dict:
    """The driver's report under ``profile`` (run once per test session)."""
    return json.loads(_child(["-c", DRIVER, model, PROMPT], _profile_env(profile)).strip().splitlines()[-1])


def _cli_plugins(env: dict[str, str]) -> dict:
    out = _child(["-m", "corert.cli", "plugins", "--engine", "native", "-p", "kv_cache=paged:f32", "--json"], env)
    info = json.loads(out)
    assert info["failures"] == []
    return {area: (e["chosen"] or {}).get("variant") for area, e in info["areas"].items()}


def _check_run(run: dict, expected: dict[str, str]) -> None:
    assert run["failures"] == []
    assert run["chosen"]["engine"] == expected["engine"]
    assert run["plugins"]["tokenizer"] == f"bpe:{expected['tokenizer']}"
    assert run["kv_kernel"] == expected["kv_kernel"]
    # the vnni kernels are compiled at their first call: never, unless vnni (or amx, whose decode runs them)
    # is the engine's variant
    assert (run["vnni_signatures"] > 0) == (expected["engine"] in (VNNI.name, AMX.name, AMX_BF16.name))


PROFILES = ["detected", "no-amx", "no-avx512", "neon", "no-simd"]


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_picks_its_fallback_silently(profile, smollm2):
    """``corert plugins --json`` and a generation in the same environment: the expected variant of each
    kernel plugin, no error, no warning."""
    expected = _expected(_profile_features(profile))
    env = _profile_env(profile)
    chosen = _cli_plugins(env)
    assert (chosen["engine"], chosen["tokenizer"], chosen["kv_cache"]) == \
        (expected["engine"], expected["tokenizer"], "f32")
    _check_run(_run_profile(smollm2, profile), expected)


def test_this_cpu_defaults_to_vnni_and_falls_back_without_avx512(smollm2):
    """Here (AVX-512 VNNI) the default engine variant is vnni, amx where the CPU has AMX (and Linux grants it),
    amx-bf16 where it also has AMX-BF16; without AMX-BF16 it is amx, without AMX vnni, without AVX-512 avx2,
    silently."""
    real = CpuInfo("x86_64", _real_features())
    if not VNNI.supported(real):
        pytest.skip("this CPU has no AVX-512 VNNI: the default is already a fallback")
    best = next(v for v in (AMX_BF16, AMX, VNNI) if v.supported(real))
    assert _run_profile(smollm2, "detected")["chosen"]["engine"] == best.name
    if AMX_BF16.supported(real):
        assert _run_profile(smollm2, "no-amx-bf16")["chosen"]["engine"] == AMX.name
    assert _run_profile(smollm2, "no-amx")["chosen"]["engine"] == VNNI.name
    assert _run_profile(smollm2, "no-avx512")["chosen"]["engine"] == "avx2"


@pytest.mark.parametrize("profile", [p for p in PROFILES if p != "no-simd"])
def test_profile_greedy_tokens_equal_the_scalar_reference(profile, smollm2):
    """The f32 variants (avx2, neon) differ from the scalar kernels in sum order only; vnni keeps
    activations to ~16 bits (test_vnni_variant_matches_f64_reference expects f64's greedy tokens of it)."""
    reference = _run_profile(smollm2, "no-simd")["tokens"]
    assert len(reference) == 8
    assert _run_profile(smollm2, profile)["tokens"] == reference


def test_cli_generate_on_an_avx2_only_profile(smollm2):
    """The README's command, on the native engine, as a machine without AVX-512 runs it."""
    env = _profile_env("no-avx512")
    out = _child(["-m", "corert.cli", "generate", "--model", smollm2, "--engine", "native", "-p",
                  "kv_cache=paged:f32", "--temperature", "0", "--max-tokens", "8", "--json", PROMPT], env)
    done = json.loads(out)
    assert done["plugins"]["tokenizer"] == f"bpe:{_expected(_profile_features('no-avx512'))['tokenizer']}"
    assert done["token_ids"] == _run_profile(smollm2, "no-simd")["tokens"]


# -- numba's compile target ----------------------------------------------------------------------------------
def _llvm_features_without_avx512() -> str:
    """This CPU's LLVM features with AVX-512 (and what needs it) switched off: numba then compiles for an
    AVX2-only machine of this kind."""
    import llvmlite.binding as llvm

    drop = ("avx512", "amx", "avx10", "evex512")
    return ",".join("-" + f[1:] if f[0] == "+" and f[1:].startswith(drop) else f
                    for f in llvm.get_host_cpu_features().flatten().split(","))


def test_generic_numba_target_never_picks_vnni():
    """NUMBA_CPU_NAME=generic (numba's advice for a cache shared between machines) compiles for a plain
    x86-64: vnni there aborted the process in LLVM; now every kernel plugin takes its scalar variant."""
    chosen = _cli_plugins(_profile_env("numba:generic"))
    assert (chosen["engine"], chosen["tokenizer"]) == ("scalar", "scalar")
    chosen = _cli_plugins(_profile_env("numba:no-avx512"))
    assert chosen["engine"] == ("avx2" if "avx2" in _real_features() else "scalar")


PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import probe_kernel
probe_kernel.twice(3)
stats = probe_kernel.twice.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
"""


def test_numba_cache_is_keyed_by_the_compile_target(tmp_path):
    """``cache=True`` code compiled for one CPU is never loaded for another: numba's cache index keys on
    the target's CPU name and features (numba.core.caching / codegen.magic_tuple)."""
    (tmp_path / "probe_kernel.py").write_text("from numba import njit\n\n\n@njit(cache=True)\n"
                                              "def twice(x):\n    return 2 * x\n")

    def run(**target: str) -> dict:
        env = _env(NUMBA_CACHE_DIR=str(tmp_path / "cache"), **target)
        return json.loads(_child(["-c", PROBE, str(tmp_path)], env))

    assert run() == {"hits": 0, "misses": 1}
    assert run() == {"hits": 1, "misses": 0}
    assert run(NUMBA_CPU_FEATURES=_llvm_features_without_avx512()) == {"hits": 0, "misses": 1}
    assert run(NUMBA_CPU_NAME="generic") == {"hits": 0, "misses": 1}


@pytest.mark.slow
@pytest.mark.parametrize("target", ["no-avx512", "generic"])
def test_generation_when_numba_compiles_for_another_cpu(target, smollm2):
    """No CORERT_CPU_FEATURES: corert detects the features itself and must see that numba compiles for a CPU
    without AVX-512 (or a generic x86-64).  Kernels are compiled for that target (cold: ~3 minutes the first
    time, then from numba's cache), and compiling vnni's vpdpbusd there would abort the process."""
    real = _real_features()
    features = frozenset() if target == "generic" else frozenset(f for f in real if not f.startswith("avx512"))
    run = _run_profile(smollm2, f"numba:{target}")
    _check_run(run, _expected(features))
    assert run["tokens"] == _run_profile(smollm2, "no-simd")["tokens"]


ATTEND = r"""
import numpy as np
from corert.kernels.simd import compiles_with
from corert.plugins.kv_cache.contiguous_attention import attend_contiguous

rng = np.random.default_rng(3)
T, hd = 40, 32
k = rng.standard_normal((1, 1, T, hd)).astype(np.float16)
v = rng.standard_normal((1, 1, T, hd)).astype(np.float16)
q = rng.standard_normal((T, 2, hd)).astype(np.float32)
out = np.empty_like(q)
attend_contiguous(q, k.view(np.uint16), v.view(np.uint16), np.zeros(T, np.int32), np.arange(T, dtype=np.int32),
                  np.float32(0.2), out)
kf, vf = k[0, 0].astype(np.float64), v[0, 0].astype(np.float64)
err = 0.0
for i in range(T):
    for h in range(2):
        s = kf[:i + 1] @ q[i, h] * 0.2
        p = np.exp(s - s.max())
        err = max(err, float(np.abs(out[i, h] - (p / p.sum()) @ vf[:i + 1]).max()))
print(compiles_with("f16c"), err)
"""


@pytest.mark.slow
def test_f16_attention_without_f16c(tmp_path):
    """On a target without F16C (a generic x86-64) the contiguous f16 cache's tile kernel widens its halves
    with integer lanes (simd.load_f32), not a library call per half, and attends like numpy."""
    out = _child(["-c", ATTEND], _env(NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path)))
    f16c, err = out.split()
    assert f16c == "False" and float(err) < 1e-5
