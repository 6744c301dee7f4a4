"""Malformed model files never crash anything: seeded mutants of the real SmolLM2 GGUF, each loaded in a
child process through both generation engines and both tokenizer plugins, must end in a typed corert
error or a successful load (two forward passes) -- never a signal, an uncaught exception or a hang.  The
same for the onnx engine's model folders (embeddings, classification) on both variants, and the intent
head's joblib files must be refused by their sha256 before anything unpickles them.

    .venv/bin/python -m pytest -q tests/test_fuzz_models.py -s     # prints the counts by outcome
    CORERT_FUZZ_SEED=3 .venv/bin/python -m pytest -q tests/test_fuzz_models.py -s   # other mutants

The mutations (tests/fuzz/gguf_mutations.py, onnx_mutations.py) target the header, metadata and tensor
infos, and the graph, tokenizer and config files; the children are tests/fuzz/load_driver.py, many files
each, a dead child's job rerun alone (tests/fuzz/runner.py).
"""
from __future__ import annotations

import collections
import concurrent.futures
import importlib.util
import os
import shutil
import subprocess
import sys
import time

import pytest

from fuzz.gguf_mutations import mutants, representative
from fuzz.runner import child_env, run_jobs

SEED = int(os.environ.get("CORERT_FUZZ_SEED", "14"))  # another seed: another 320 mutants
MIN_FILES = 300
FILES_PER_BATCH = 40  # mutants on disk at a time (sparse, ~2 MB each)
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
TARGETS = ("tokenizer:bpe", "engine:native") + (("tokenizer:llama_cpp", "engine:llama.cpp") if HAS_LLAMA_CPP else ())


def _clean(outcome: str) -> bool:
    return outcome == "ok" or outcome.startswith("error:")


def _table(counter: collections.Counter, rows: list[str], title: str) -> str:
    cols = sorted({c for _, c in counter}, key=lambda c: (not c.startswith("ok"), not c.startswith("error"), c))
    width = max(len(r) for r in rows) + 2
    col = max(len(c) for c in cols) + 2
    lines = [title, " " * width + "".join(f"{c:>{col}}" for c in cols)]
    for r in rows:
        lines.append(f"{r:<{width}}" + "".join(f"{counter.get((r, c), 0):>{col}}" for c in cols))
    return "\n".join(lines)


def _mutant_layouts() -> set[str]:
    from corert.engines.native.layout_cache import default_root

    root = default_root()
    return {p.name for p in root.glob("mutant-*")} if root.is_dir() else set()


@pytest.mark.slow
def test_mutated_gguf_files_end_in_a_typed_error_or_a_load(smollm2, tmp_path):
    start = time.monotonic()
    layouts = _mutant_layouts()
    all_mutants = list(mutants(smollm2, seed=SEED))
    assert len(all_mutants) >= MIN_FILES
    env = child_env(str(tmp_path / "tokenizer-cache"))
    workers = 2 if (os.cpu_count() or 1) >= 2 else 1
    if workers > 1:
        env["CORERT_THREADS"] = "1"  # one core per worker

    def run_batch(first: int) -> list[tuple[int, str, dict]]:
        batch = all_mutants[first:first + FILES_PER_BATCH]
        jobs, files = [], []
        for k, m in enumerate(batch, first):
            path = tmp_path / f"mutant-{k:03d}.gguf"
            m.write(path)
            files.append(path)
            for t in TARGETS:
                jobs.append({"i": len(jobs), "k": k, "path": str(path), "target": t})
        try:
            results = run_jobs(jobs, smollm2, env)
        finally:
            for f in files:
                f.unlink(missing_ok=True)
        return [(j["k"], j["target"], results[j["i"]]) for j in jobs]

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        outcomes = [r for rs in pool.map(run_batch, range(0, len(all_mutants), FILES_PER_BATCH)) for r in rs]

    by_target = collections.Counter((t, r["outcome"]) for _, t, r in outcomes)
    by_kind = collections.Counter((all_mutants[k].kind, r["outcome"].split(":")[0] if _clean(r["outcome"])
                                   else r["outcome"]) for k, _, r in outcomes)
    kinds = list(dict.fromkeys(m.kind for m in all_mutants))
    print(f"\n{len(all_mutants)} mutants of {os.path.basename(smollm2)} (seed {SEED}; "
          + ", ".join(f"{k} {sum(m.kind == k for m in all_mutants)}" for k in kinds)
          + f"), {len(outcomes)} loads in {time.monotonic() - start:.0f} s")
    print(_table(by_target, list(TARGETS), "outcome by target:"))
    print(_table(by_kind, kinds, "outcome by mutation kind (all targets):"))
    if not HAS_LLAMA_CPP:
        print("llama-cpp-python is not installed: the llama.cpp engine and tokenizer were not run")

    bad = [f"{t} on {all_mutants[k].kind} [{all_mutants[k].label}]: {r['outcome']} {r.get('message', '')} "
           f"{r.get('where', '')}{r.get('stderr', '')[-300:]}" for k, t, r in outcomes if not _clean(r["outcome"])]
    assert not bad, "\n".join(bad)
    assert len(outcomes) == len(all_mutants) * len(TARGETS)
    assert _mutant_layouts() == layouts, "the mutants' converted weights were written to the user's layout cache"
    # a typed error is one clear line: the CLI prints it as is
    long = [r["message"] for _, _, r in outcomes if r["outcome"].startswith("error:")
            and ("\n" in r["message"] or len(r["message"]) > 1000)]
    assert not long, long[:5]


# -- the CLI on a few representative mutants: one line on stderr, exit code 2 -------------------------------
@pytest.fixture(scope="module")
def representative_files(smollm2, tmp_path_factory):
    d = tmp_path_factory.mktemp("mutants")
    files = {}
    for name, m in representative(smollm2).items():
        files[name] = d / f"{name}.gguf"
        m.write(files[name])
    return files


# CI's set-up installs llama-cpp-python, so there its absence is a failure, not a skip
ENGINES = ["native", pytest.param("llama.cpp", marks=pytest.mark.skipif(
    not HAS_LLAMA_CPP and not os.environ.get("CI"), reason="llama-cpp-python is not installed"))]


@pytest.mark.parametrize("engine", ENGINES)
def test_cli_generate_on_a_mutated_file_prints_one_line_and_exits_2(representative_files, engine):
    failures = []
    for name, path in representative_files.items():
        proc = subprocess.run([sys.executable, "-m", "corert.cli", "generate", "-m", str(path), "--engine", engine,
                               "--max-tokens", "2", "--temperature", "0", "hi"],
                              capture_output=True, text=True, env={**os.environ, "CORERT_DISABLE": ""})
        lines = proc.stderr.splitlines()
        if proc.returncode != 2 or len(lines) != 1 or not lines[0].startswith("corert: error:"):
            failures.append(f"{name}: exit {proc.returncode}, stderr {proc.stderr[-500:]!r}")
    assert not failures, "\n".join(failures)


# -- the onnx engine's model folders ------------------------------------------------------------------------
ONNX_TARGETS = ("onnx:q8", "onnx:stock")


@pytest.mark.slow
def test_mutated_onnx_model_folders_end_in_a_typed_error_or_a_load(store, tmp_path):
    from fuzz.onnx_mutations import mutants as folder_mutants

    start = time.monotonic()
    sources = {"embed": store.resolve("minilm-l6").parent, "classify": store.resolve("intent-minilm").parent}
    before = {f: (f.stat().st_size, f.stat().st_mtime_ns) for d in sources.values() for f in d.iterdir()}
    env = child_env(str(tmp_path / "tokenizer-cache"))
    env["CORERT_THREADS"] = "1"

    def run_batch(batch: list[tuple[int, object, object]]) -> list[tuple[object, str, dict]]:
        jobs = []
        for k, m, d in batch:
            for t in ONNX_TARGETS:
                jobs.append({"i": len(jobs), "path": str(d), "target": f"{t}:{m.task}", "k": k})
        try:
            results = run_jobs(jobs, "", env)
        finally:
            for _, _, d in batch:
                shutil.rmtree(d, ignore_errors=True)
        by_k = {k: m for k, m, _ in batch}
        return [(by_k[j["k"]], j["target"], results[j["i"]]) for j in jobs]

    outcomes, futures, batch, n = [], [], [], 0
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for k, m in enumerate(folder_mutants(sources["embed"], sources["classify"], seed=SEED)):
            d = tmp_path / f"folder-{k:03d}"
            m.materialize(sources[m.task], d)  # one at a time: a mutated graph is 23 MB
            batch.append((k, m, d))
            n += 1
            if len(batch) == 12:
                futures.append(pool.submit(run_batch, batch))
                batch = []
        if batch:
            futures.append(pool.submit(run_batch, batch))
        for f in futures:
            outcomes += f.result()

    targets = [f"{t}:{task}" for task in ("embed", "classify") for t in ONNX_TARGETS]
    by_target = collections.Counter((t, r["outcome"]) for _, t, r in outcomes)
    kinds = list(dict.fromkeys(m.kind for m, _, _ in outcomes))
    by_kind = collections.Counter((m.kind, r["outcome"].split(":")[0] if _clean(r["outcome"]) else r["outcome"])
                                  for m, _, r in outcomes)
    print(f"\n{n} mutated onnx model folders (seed {SEED}), {len(outcomes)} loads in "
          f"{time.monotonic() - start:.0f} s")
    print(_table(by_target, targets, "outcome by target:"))
    print(_table(by_kind, kinds, "outcome by mutation kind (all targets):"))
    after = {f: (f.stat().st_size, f.stat().st_mtime_ns) for d in sources.values() for f in d.iterdir()}
    assert after == before, "a mutant wrote through a hard link into the pulled model"
    bad = [f"{t} on {m.kind} [{m.label}]: {r['outcome']} {r.get('message', '')} {r.get('where', '')}"
           f"{r.get('stderr', '')[-300:]}" for m, t, r in outcomes if not _clean(r["outcome"])]
    assert not bad, "\n".join(bad)


# -- the intent head's joblib files: pickles, so verified before they are unpickled -------------------------
class _RunsCode:
    """Unpickling this creates a directory: proof that the pickle was loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _joblib_mutations(real: bytes, marker: str) -> dict[str, bytes | None]:
    import io

    import joblib

    evil = io.BytesIO()
    joblib.dump(_RunsCode(marker), evil)
    flipped = bytearray(real)
    flipped[len(real) // 2] ^= 0x20
    return {"a byte flipped": bytes(flipped), "truncated": real[:len(real) // 3], "empty": b"",
            "a pickle that runs code": evil.getvalue(), "deleted": None}


@pytest.mark.parametrize("target", ["LogisticRegression.joblib", "label_map.joblib"])
def test_damaged_joblib_is_refused_before_it_is_unpickled(store, tmp_path, target):
    from corert.engines.onnx import convert
    from corert.errors import ModelError

    src = store.resolve("intent-minilm").parent
    marker = tmp_path / "pickle-was-loaded"

    class Encoder:
        def path(self, name):
            return store.resolve(name)

    for what, content in _joblib_mutations((src / target).read_bytes(), str(marker)).items():
        d = tmp_path / what.replace(" ", "-")
        d.mkdir()
        for f in (convert.HEAD_FILE, convert.LABEL_MAP_FILE):
            shutil.copy(src / f, d / f)
        if content is None:
            (d / target).unlink()
        else:
            (d / target).write_bytes(content)
        with pytest.raises(ModelError, match="sha256|missing") as err:
            convert.convert_intent_head(d, Encoder())
        assert len(str(err.value).splitlines()) == 1
        assert not marker.exists(), f"{target} ({what}) was unpickled"
        assert not (d / convert.OUTPUT).exists()
