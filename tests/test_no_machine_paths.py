"""No tracked file names a path of a development machine: a clone anywhere else must find everything it reads
inside the repository, and results must not record where one machine keeps its files."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# An absolute path starts a token: a slash after a letter, dot or slash is inside a URL or a relative path
# (https://x.org/home/..., docs/work/...), which is not a machine path.
_START = r"(?<![\w.~/$-])"
PATTERNS = {
    "an absolute path under a development root": re.compile(_START + r"/(?:work|root|mnt|srv|workspace)/"),
    "a user's home folder": re.compile(_START + r"(?:/home|/Users)/[^/\s]+/|[A-Za-z]:\\Users\\"),
    "a temporary file named by path (use tmp_path or tempfile)": re.compile(_START + r"/(?:tmp|var/tmp)/"),
    "the shared folder beside a checkout (use the packaged corpus)": re.compile(r"\.\./shared\b|\bshared/corpus\b"),
}

# (path, pattern name) -> why that tracked file may match anyway.  None needs to today.
ALLOWED: dict[tuple[str, str], str] = {}


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [p for p in out.decode().split("\0") if p]


def _text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:  # listed by git but deleted in the work tree
        return None
    if b"\0" in data[:8192]:
        return None  # binary (plots)
    return data.decode("utf-8", errors="replace")


def _machine_paths() -> list[str]:
    """This checkout's own location and the user's home: any clone, on any machine, checks its own."""
    paths = [str(ROOT)]
    home = Path.home()
    if len(home.parts) > 1:
        paths.append(str(home))
    return paths


def test_no_machine_path_in_tracked_files():
    found = []
    machine = _machine_paths()
    for rel in _tracked_files():
        text = _text(ROOT / rel)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            hits = [name for name, pat in PATTERNS.items() if pat.search(line) and (rel, name) not in ALLOWED]
            hits += [f"this machine's path {p}" for p in machine if p + os.sep in line]
            if hits:
                found.append(f"{rel}:{lineno}: {'; '.join(hits)}: {line.strip()[:120]}")
    assert not found, "machine paths in tracked files (keep data in the repository, record names):\n" + \
        "\n".join(found)


# The bad examples are cut in two so that this file passes its own scan.
@pytest.mark.parametrize("line, bad", [
    ('TEXT = open("' + "/wo" + 'rk/sha' + 'red/corpus/a.txt")', True),
    ('"model": "' + "/ro" + 'ot/.cache/corert/models/x.gguf"', True),
    ("see " + "/ho" + "me/alice/src/corert", True),
    ("pip wheel -w " + "/t" + "mp/wheels .", True),
    ("_CORPUS = ROOT / '..' / 'shared'" + ' or "..' + '/sha' + 'red/corpus"', True),
    ("https://example.org" + "/ho" + "me/alice/page", False),
    ("docs/work/notes.md and ./tmp/out", False),
    ("the cache is ~/.cache/corert/models", False),
    ("writes to /tmp by default", False),
])
def test_patterns(line, bad):
    """The patterns catch machine paths and leave URLs, relative paths and prose alone."""
    assert any(p.search(line) for p in PATTERNS.values()) == bad


# what Python and numba write beside the sources: compiled for one machine, with its paths inside
_BUILD_ARTEFACT = re.compile(r"(?:^|/)__pycache__/|\.(?:pyc|nbi|nbc)$|\.egg-info/")


def test_no_cache_or_build_artefact_is_tracked():
    tracked = [rel for rel in _tracked_files() if _BUILD_ARTEFACT.search(rel)]
    assert not tracked, f"tracked cache/build files (ignored by .gitignore; `git rm --cached` them): {tracked[:10]}"
