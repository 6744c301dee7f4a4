"""corert's inputs ship with it: the packaged corpus, read by `corert bench tokenize` and `corert ab` run from
any directory, and present in a wheel built from the tracked files."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from corert.tools.corpus import corpus_dir, corpus_files, corpus_texts

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CORERT_CORPUS"}  # the packaged corpus, not an override
    env.pop("PYTHONPATH", None)  # what an installed corert finds, not the test's search path
    return env


def _corert(cwd: Path, *args: str, timeout: float = 600) -> dict:
    exe = Path(sys.executable).with_name("corert")
    assert exe.is_file(), f"no corert command beside {sys.executable}: install the package (pip install -e .)"
    proc = subprocess.run([str(exe), *args, "--json"], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_corpus_is_real_text_with_sources_and_licences():
    files = corpus_files()
    assert len(files) == 10 and sum(len(t.encode()) for t in corpus_texts()) > 150_000
    assert not [p.name for p in files if p.suffix == ".py"], "a .py name would be byte-compiled and linted"
    sources = (corpus_dir() / "SOURCES.md").read_text(encoding="utf-8")
    row = re.compile(r"^\| (\S+\.\w+) \|[^|]*\|[^|]*\| (\S[^|]*?) \|$", re.M)  # file | source | licence | its text
    rows = dict(m.groups() for m in row.finditer(sources))
    assert sorted(rows) == [p.name for p in files], "every corpus file has a row in SOURCES.md, and only those"
    for name, licence_text in rows.items():
        if licence_text.startswith("LICENSES/"):
            assert (corpus_dir() / licence_text).is_file(), f"{name}: {licence_text} is missing"


def test_bench_tokenize_from_any_directory(tmp_path):
    r = _corert(tmp_path, "bench", "tokenize", "--model", MODEL, "--repeat", "3", "--no-linear", "--threads", "1")
    assert r["corpus"] == "corert text-corpus"
    assert r["corpus_files"] == len(corpus_files()) and r["corpus_bytes"] > 150_000
    assert r["model"] == MODEL  # the registry name, not the path of this machine's model cache
    assert all(row["same_ids"] for row in r["rows"] if "same_ids" in row)


def test_ab_from_any_directory(tmp_path):
    r = _corert(tmp_path, "ab", "--workload", "tokenize", "--a", "tokenizer=bpe:scalar", "--b", "tokenizer=bpe:avx2",
                "--engine", "native", "--model", MODEL, "--runs", "1")
    assert r["inputs"]["source"] == "corpus" and r["inputs"]["texts"] == len(corpus_files())
    assert r["model"] == MODEL
    assert [g["area"] for g in r["gates"]] == ["tokenizer"] and r["passed"]


@pytest.mark.slow
def test_wheel_ships_the_corpus(tmp_path):
    """A wheel built from the tracked files, installed elsewhere, reads its own corpus from any directory."""
    try:
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    src = tmp_path / "src"
    for rel in filter(None, tracked.decode().split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # build isolation: the project's declared build requirements, not whatever setuptools this venv has
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(src)], check=True,
                   capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("corert-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    probe = ("import json, corert, corert.tools.ab as ab, corert.tools.corpus as corpus, "
             "corert.tools.bench.tokenizer as tb; "
             "print(json.dumps({'module': corert.__file__, 'files': [p.name for p in corpus.corpus_files()], "
             "'ab_texts': len(ab._read_inputs('tokenize', None)), 'bench_files': len(tb._corpus(None)[1])}))")
    run = tmp_path / "elsewhere"
    run.mkdir()
    out = subprocess.run([sys.executable, "-c", probe], cwd=run, env={**_env(), "PYTHONPATH": str(site)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    out = out.stdout
    r = json.loads(out)
    assert Path(r["module"]).is_relative_to(site), r["module"]  # the wheel's copy, not the checkout
    assert r["files"] == [p.name for p in corpus_files()]
    assert r["ab_texts"] == r["bench_files"] == len(corpus_files())
