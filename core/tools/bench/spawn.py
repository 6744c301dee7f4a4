"""The one place a benchmark starts a process (a side, a server, a layout warm-up): every such process gets
:func:`corert.spin.child_env`, so a competitor (the raw llama-cpp-python side, llama-server,
llama-cpp-python's server) runs with libgomp's own spin or the user's, never the one corert chose for itself,
and a corert child chooses again from the machine as it finds it.  tests/test_spin_count.py fails when a
bench module calls ``subprocess`` itself."""
from __future__ import annotations

import os
import subprocess
from typing import Mapping, Sequence

from corert.spin import child_env


def popen(argv: Sequence[str], env: Mapping[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(argv, **kwargs)`` with this process's environment plus ``env``, minus our spin."""
    return subprocess.Popen(list(argv), env=child_env({**os.environ, **(env or {})}), **kwargs)
