"""How benchmark and A/B results name a model."""
from __future__ import annotations

import os
from pathlib import Path

from ..models.store import ModelStore


def model_label(name_or_path: str | os.PathLike, store: ModelStore | None = None) -> str:
    """The registry name of a model (also when given as the path of its pulled file), else the file's name.

    Results are committed and compared across machines: an absolute path would record where one machine
    keeps its model cache (and its user's name), not which model ran.
    """
    text = os.fspath(name_or_path)
    store = store or ModelStore(progress=False)
    if text in store.specs:
        return text
    given = Path(text).expanduser().resolve()
    for name in store.specs:
        if given in (store.path(name).resolve(), store.model_dir(name).resolve()):
            return name
    return given.name or text
