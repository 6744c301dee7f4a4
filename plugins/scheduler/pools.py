"""Applying a ThreadBudget to the three pools that would otherwise fight over the cores.

The engines call these when they create a model or session; a worker calls :func:`apply_numba` for its
lane.  Nothing here creates threads of its own.
"""
from __future__ import annotations

import sys
from typing import Any

from corert.interfaces import ThreadBudget


def llama_kwargs(budget: ThreadBudget) -> dict[str, int]:
    """Keyword arguments for ``llama_cpp.Llama(...)``."""
    return {"n_threads": budget.llama_threads, "n_threads_batch": budget.llama_batch_threads}


def ort_session_options(budget: ThreadBudget) -> Any:
    """An ``onnxruntime.SessionOptions`` sized by the budget, spinning as the budget says (off by default:
    a spinning idle pool burns the core a generation lane is using)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = budget.ort_intra_op
    so.inter_op_num_threads = budget.ort_inter_op
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    spin = "1" if budget.ort_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return so


def apply_numba(threads: int) -> bool:
    """Set numba's thread count for the calling thread (numba keeps it per thread), if numba's parallel
    backend is already running.  This covers numba code a task runs on its lane thread; the engines' and
    the tokenizer's parallel calls run on the compute thread with their own budget (corert.numba_setup).  Starting the backend here would fix its threading layer before the engine
    chose one (``workqueue`` aborts when two threads enter it at once), so an engine that has not started
    it yet applies the budget itself.  Returns whether it was applied."""
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is None or not getattr(parallel, "_is_initialized", False):
        return False
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    return True
