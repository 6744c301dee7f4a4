"""Small statistics shared by the benchmarks."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def median(xs: Sequence[float]) -> float:
    return float(np.median(xs)) if len(xs) else float("nan")


def percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def spread(xs: Sequence[float]) -> tuple[float, float]:
    """(min, max) — shown beside a median so a reader sees how noisy it was."""
    return (float(min(xs)), float(max(xs))) if len(xs) else (float("nan"), float("nan"))
