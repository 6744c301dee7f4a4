"""Does llama.cpp's extra weight-buffer path actually run on this CPU?  Asked once, in a child process.

ggml's CPU backend can place weights in "extra" buffer types (the AMX tile buffer on Intel Sapphire Rapids,
the repacked interleaved layouts elsewhere) when the CPU reports the feature.  Reporting is not running: in a
Firecracker VM whose Xeon advertises AMX, the first decode through the AMX buffer dies on ``ldtilecfg``
(SIGSEGV), taking the host process with it.  So the choice is measured, not assumed:

1. a child process loads the model with extra buffers off and decodes a few tokens (the baseline: if this
   dies, the model or the build is at fault, and nothing is concluded);
2. the same child loads it with extra buffers on and decodes the same tokens;
3. the parent reads how far the child got.  A signal in step 2 means "off"; a clean step 2 means "on".

The verdict is cached on disk per (llama.cpp build, CPU): the build's library files and the CPU's model
name and flags make the key, so a wheel reused on another machine, or a VM moved to another host CPU, is
probed again.  ``CORERT_LLAMA_EXTRA_BUFFERS=on|off`` skips the probe (A/B, or a machine known to be safe).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import attrs

from .errors import ModelError

#: What the child evaluates: a short real prompt, greedy, a few tokens (the fault comes on the first decode).
PROBE_PROMPT = "The sea is"
PROBE_TOKENS = 4
PROBE_TIMEOUT_S = 180.0
ENV_SETTING = "CORERT_LLAMA_EXTRA_BUFFERS"


@attrs.frozen
class ProbeVerdict:
    """Whether llama.cpp may use its extra weight buffers on this (build, CPU), and how that was decided."""

    extra_buffers: bool
    #: "probe" (measured in a child), "env" (CORERT_LLAMA_EXTRA_BUFFERS), "default" (not probed: safe off).
    source: str
    reason: str
    build: str = ""
    cpu: str = ""
    #: The model file the probe ran (its name, not a path of the machine), and when.
    model: str = ""
    probed_at: float = 0.0
    #: Greedy tokens with extra buffers off / on (equal on a healthy build).
    tokens_plain: tuple[int, ...] = attrs.field(default=(), converter=tuple)
    tokens_extra: tuple[int, ...] = attrs.field(default=(), converter=tuple)

    def to_json(self) -> dict:
        return attrs.asdict(self)


# -- identity of the build and the CPU ----------------------------------------------------------------------
def llama_package_dir() -> Path | None:
    """The installed llama_cpp package folder, found without importing it (importing loads the library)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent


def build_id(package_dir: Path | None = None) -> str:
    """A digest of the llama.cpp build: its shared libraries' names, sizes and modification times."""
    package_dir = package_dir or llama_package_dir()
    h = hashlib.sha256()
    if package_dir is not None:
        for lib in sorted((package_dir / "lib").glob("*.so*")):
            st = lib.stat()
            h.update(f"{lib.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def cpu_id() -> str:
    """The CPU as llama.cpp sees it: architecture, model name and every flag the kernel reports."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "Model", "CPU part") and not model:
                    model = line.split(":", 1)[1].strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                if model and flags:
                    break
    except OSError:
        pass
    digest = hashlib.sha256(f"{platform.machine()}|{model}|{flags}".encode()).hexdigest()[:16]
    return f"{model or platform.machine()} [{digest}]"


def cache_dir() -> Path:
    env = os.environ.get("CORERT_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "llama-probe"
    import platformdirs

    return Path(platformdirs.user_cache_dir("corert")) / "llama-probe"


def _cache_file(build: str, cpu: str) -> Path:
    key = hashlib.sha256(f"{build}|{cpu}".encode()).hexdigest()[:24]
    return cache_dir() / f"{key}.json"


def cached_verdict(build: str | None = None, cpu: str | None = None) -> ProbeVerdict | None:
    build, cpu = build or build_id(), cpu or cpu_id()
    path = _cache_file(build, cpu)
    try:
        data = json.loads(path.read_text())
        verdict = ProbeVerdict(**data)
    except (OSError, ValueError, TypeError):
        return None
    return verdict if (verdict.build, verdict.cpu) == (build, cpu) else None


def _store(verdict: ProbeVerdict) -> None:
    path = _cache_file(verdict.build, verdict.cpu)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(verdict.to_json(), indent=1))
    os.replace(tmp, path)  # atomic: two processes probing at once both leave a whole file


# -- the decision ---------------------------------------------------------------------------------------------
def env_verdict() -> ProbeVerdict | None:
    value = os.environ.get(ENV_SETTING, "").strip().lower()
    if value in ("on", "1", "true", "yes"):
        return ProbeVerdict(True, "env", f"{ENV_SETTING}={value}")
    if value in ("off", "0", "false", "no"):
        return ProbeVerdict(False, "env", f"{ENV_SETTING}={value}")
    return None


def current_verdict() -> ProbeVerdict:
    """The verdict in force without running anything: env, else the cached probe, else off (safe)."""
    return env_verdict() or cached_verdict() or ProbeVerdict(
        False, "default", "not probed yet on this build and CPU (probed on the first llama.cpp model load)")


def decide(model_path: str, command: Sequence[str] | None = None,
           timeout: float = PROBE_TIMEOUT_S) -> ProbeVerdict:
    """The verdict for this process: env, else cached, else probe now with ``model_path`` and cache it.

    ``command`` replaces the child's command line (tests use it to stand in for a CPU that faults).
    """
    found = env_verdict() or cached_verdict()
    if found is not None:
        return found
    verdict = run_probe(model_path, command=command, timeout=timeout)
    if verdict.source == "probe":
        _store(verdict)
    return verdict


def run_probe(model_path: str, command: Sequence[str] | None = None,
              timeout: float = PROBE_TIMEOUT_S) -> ProbeVerdict:
    """Run the two-step child and read its verdict.  Inconclusive outcomes come back with source "default"
    (extra buffers off, not cached): the model itself failing says nothing about the CPU.  A child killed by
    a signal before its plain step raises ModelError: that model would kill this process too."""
    build, cpu = build_id(), cpu_id()
    cmd = list(command) if command else [sys.executable, "-m", "corert.llama_probe", str(model_path)]
    env = {**os.environ, ENV_SETTING: ""}  # the child sets the option itself, per step
    common = {"build": build, "cpu": cpu, "model": Path(model_path).name, "probed_at": time.time()}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ProbeVerdict(False, "default", f"probe timed out after {timeout:.0f} s: extra buffers off", **common)
    steps: dict[str, list[int]] = {}
    for line in proc.stdout.splitlines():
        try:
            record = json.loads(line)
            steps[record["step"]] = [int(t) for t in record["tokens"]]
        except (ValueError, KeyError, TypeError):
            continue
    died = _describe_exit(proc.returncode)
    if "plain" not in steps:
        if died:  # llama.cpp itself faults on this model here: loading it in the host would take it down
            raise ModelError(f"llama.cpp died ({died}) evaluating {Path(model_path).name} in a child process, "
                             f"even without extra buffers; not loading it in this process")
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return ProbeVerdict(False, "default", f"probe inconclusive (the model did not decode even without extra "
                                              f"buffers: {why}): extra buffers off", **common)
    if "extra" in steps and proc.returncode == 0:
        same = steps["extra"] == steps["plain"]
        return ProbeVerdict(True, "probe", "decoded with extra buffers in a child process" +
                            ("" if same else " (greedy tokens differ from the plain buffers)"),
                            tokens_plain=steps["plain"], tokens_extra=steps["extra"], **common)
    why = died or f"exit code {proc.returncode}"
    return ProbeVerdict(False, "probe", f"the child died with extra buffers on ({why}): extra buffers off",
                        tokens_plain=steps["plain"], **common)


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return ""


# -- the child ------------------------------------------------------------------------------------------------
def _decode(model_path: str, extra_buffers: bool) -> list[int]:
    from . import llama_lib

    lib = llama_lib.llama_cpp()
    with llama_lib.extra_buffers(extra_buffers):
        llm = lib.Llama(model_path=model_path, n_ctx=128, n_threads=2, n_threads_batch=2, verbose=False)
    try:
        ids = llm.tokenize(PROBE_PROMPT.encode(), add_bos=True)
        out = []
        for token in llm.generate(ids, temp=0.0):
            out.append(int(token))
            if len(out) >= PROBE_TOKENS:
                break
        return out
    finally:
        llm.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m corert.llama_probe MODEL.gguf", file=sys.stderr)
        return 2
    for step, extra in (("plain", False), ("extra", True)):
        tokens = _decode(args[0], extra)
        print(json.dumps({"step": step, "tokens": tokens}), flush=True)  # flushed: the next step may fault
    return 0


if __name__ == "__main__":
    sys.exit(main())
