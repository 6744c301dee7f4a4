"""Helpers for tests that run the ``corert`` command as users do: a subprocess of the installed console
script, hand-made wheels for the model store, and a third-party plugin distribution made on disk."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

#: the console script pip installed next to this interpreter (what `corert` runs)
CORERT = str(Path(sys.executable).with_name("corert"))


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | bytes | None = None,
            timeout: float = 300, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """``corert ARGS…`` in a child process; ``env`` entries are added to (or, when None, removed from) this
    process's environment."""
    full = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    text = not isinstance(input, bytes)
    return subprocess.run([CORERT, *args], env=full, input=input, capture_output=True, text=text,
                          timeout=timeout, cwd=cwd)


def cli_json(*args: str, **kw: Any) -> Any:
    """Run a command that prints JSON; fail with its stderr when it does not exit 0."""
    proc = run_cli(*args, **kw)
    assert proc.returncode == 0, f"corert {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def assert_bad_input(proc: subprocess.CompletedProcess, *fragments: str, progress: bool = False) -> str:
    """The CLI's contract for bad input: exit code 2, one line on stderr (``corert: error: …``), no
    traceback, nothing on stdout.  Returns the line.  With ``progress`` (a pull), progress lines may come
    before it; the error is still one line, the last."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("corert: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert progress or len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == "", proc.stdout
    for frag in fragments:
        assert frag in errors[0], errors[0]
    return errors[0]


# -- hand-made wheels ------------------------------------------------------------------------------------
def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(folder: Path, dist: str, version: str, members: dict[str, bytes], requires: tuple[str, ...] = ()) -> Path:
    """A minimal valid wheel ``{dist}-{version}-py3-none-any.whl`` holding ``members`` (path -> bytes), the
    shape of the wheels the model registry points at; ``requires``: its Requires-Dist lines."""
    folder.mkdir(parents=True, exist_ok=True)
    norm = dist.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = dict(members)
    files[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: corert-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = "".join(f"{p},{_record_hash(b)},{len(b)}\n" for p, b in files.items()) + f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    path = folder / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p, b in files.items():
            zf.writestr(p, b)
    return path


def corrupt_member(wheel: Path, member: str) -> None:
    """Flip bytes inside ``member``'s compressed data, leaving the zip's directory (and so the wheel's
    name, version and metadata, all pip reads) intact: the damage shows only when the member is read."""
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(member)
    raw = bytearray(wheel.read_bytes())
    # local header: 30 bytes + name + extra, then the compressed data
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    mid = start + info.compress_size // 2
    for i in range(mid, min(mid + 16, start + info.compress_size)):
        raw[i] ^= 0xFF
    wheel.write_bytes(bytes(raw))


# -- a third-party plugin distribution -------------------------------------------------------------------
def make_plugin_dist(folder: Path, module: str, source: str, entry_point: str | None = None,
                     dist: str | None = None) -> Path:
    """A distribution installed by hand into ``folder`` (put it on PYTHONPATH): module ``module`` with
    ``source``, and a ``corert`` entry point ``entry_point`` (default: the module name) naming it.
    ``importlib.metadata`` finds it exactly as it finds a pip-installed plugin."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = dist or module.replace("_", "-")
    (folder / f"{module}.py").write_text(source)
    info = folder / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[corert]\n{entry_point or module} = {module}\n")
    return folder


def pythonpath_with(folder: Path) -> str:
    rest = os.environ.get("PYTHONPATH")
    return str(folder) + (os.pathsep + rest if rest else "")
