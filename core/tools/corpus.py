"""The text corpus of the tokenizer tests and the benchmarks, shipped inside the package.

Everything is found through :mod:`importlib.resources`, so an installed wheel, an editable install and a
clone in a directory of any name read the same files, whatever the working directory.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

#: In the corpus folder but not corpus text: its sources and licences.
_NOT_TEXT = ("SOURCES.md",)


def corpus_dir() -> Path:
    """The folder of the packaged corpus (see its SOURCES.md for sources and licences)."""
    # Wheels and editable installs keep package data as plain files, so a real path exists; a zip
    # import would need as_file(), which corert (numba caches, mmap'd models) does not support anyway.
    return Path(str(resources.files(__package__).joinpath("text-corpus")))


def corpus_files(folder: str | Path | None = None) -> list[Path]:
    """The corpus texts, sorted by name: the packaged corpus, or the text files of ``folder``."""
    root = Path(folder) if folder is not None else corpus_dir()
    return sorted(p for p in root.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name not in _NOT_TEXT)


def corpus_file(name: str) -> Path:
    """One packaged corpus file by name, e.g. ``corpus_file("license-apache2.txt")``."""
    path = corpus_dir() / name
    if not path.is_file():
        known = ", ".join(p.name for p in corpus_files())
        raise FileNotFoundError(f"no corpus file {name!r}; the corpus has: {known}")
    return path


def corpus_texts(folder: str | Path | None = None) -> list[str]:
    """The text of each corpus file, in :func:`corpus_files` order (undecodable bytes replaced)."""
    return [p.read_text(encoding="utf-8", errors="replace") for p in corpus_files(folder)]
