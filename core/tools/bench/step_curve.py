"""What one batched forward of the native engine costs by its rows, measured directly for the lookup bound of
``bench batch --speculative``: the bench's streams at their prompts' ends, 1 / 2 / 4 streams x 1 row, then
every stream x 1, 2 and 4 rows (the median of a few forwards each, the shapes taking turns).  The step-cost
line the controller fits from its own steps has no support beyond the rows it drafted: a run that drafts
little extrapolates from a step or two (session 10: a knee fitted on one 15-row step priced a row beyond it
at 9.5 ms)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import numpy as np

#: forwards timed per shape (after one untimed: numba's first call at a shape); session 10's three, timed
#: back to back per shape, let one slow stretch put the 8-row point at 40 ms against ~26 in other runs
REPEATS = 5


def measure(model, prompts: Sequence[Sequence[int]], repeats: int = REPEATS) -> list[tuple[int, float]]:
    """(rows, seconds) of one forward, for the shapes above; ``model`` a loaded native model with a KV slot
    free per prompt."""
    sessions = [model.new_session() for _ in prompts]
    try:
        for s, ids in zip(sessions, prompts):
            s.eval(ids)
        n = len(sessions)
        shapes = [(k, 1) for k in (1, 2, 4) if k < n] + [(n, r) for r in (1, 2, 4)]
        times: dict[tuple[int, int], list[float]] = {shape: [] for shape in shapes}
        # the shapes take turns, round after round (the first round untimed: numba's first call at a shape),
        # so a slow stretch of a shared machine spreads over every point instead of moving one of them
        for _ in range(repeats + 1):
            for k, r in shapes:
                times[k, r].append(_forward(model, sessions[:k], r))
        return [(k * r, statistics.median(times[k, r][1:])) for k, r in shapes]
    finally:
        for s in sessions:
            s.close()


def _forward(model, group, r: int) -> float:
    """Seconds of one forward of the last ``r`` tokens of every session in ``group``, logits for every row
    (as a verify step has); the K/V it writes is truncated away after."""
    from corert.interfaces import reserve_rows
    from corert.numba_setup import PARALLEL_LOCK, run_parallel

    ids = np.concatenate([np.asarray(s.tokens[-r:], np.int32) for s in group])  # real tokens
    seqs = np.repeat(np.asarray([s.seq for s in group], np.int32), r)
    pos = np.concatenate([np.arange(len(s.tokens), len(s.tokens) + r, dtype=np.int32) for s in group])
    rows = np.arange(len(ids), dtype=np.int64)
    with PARALLEL_LOCK:
        reserve_rows(model.kv, seqs, pos, ids)
        t0 = time.perf_counter()
        try:
            run_parallel(model.transformer.forward, ids, seqs, pos, model.kv, rows, threads=model.threads)
            return time.perf_counter() - t0
        finally:
            for s in group:
                model.kv.truncate(s.seq, len(s.tokens))


def interpolate(points: Sequence[tuple[int, float]]) -> Callable[[int], float]:
    """Seconds of a step of any rows: linear between the measured sizes, the line through the two largest
    beyond them (the compute-bound part), proportional below the smallest."""
    pts = sorted(points)
    xs = np.array([p[0] for p in pts], np.float64)
    ys = np.array([p[1] for p in pts], np.float64)

    def seconds(rows: int) -> float:
        if rows <= xs[0]:
            return float(ys[0] * rows / xs[0])
        if rows <= xs[-1] or len(xs) < 2:
            return float(np.interp(rows, xs, ys))
        slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0)
        return float(ys[-1] + slope * (rows - xs[-1]))

    return seconds
