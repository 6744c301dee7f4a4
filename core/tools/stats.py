"""Small statistics shared by the benchmarks."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def median(xs: Sequence[float]) -> float:
    return float(np.median(xs)) if len(xs) else float("nan")


def percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def spread(xs: Sequence[float]) -> tuple[float, float]:
    """(min, max) — shown beside a median so a reader sees how noisy it was."""
    return (float(min(xs)), float(max(xs))) if len(xs) else (float("nan"), float("nan"))


#: Rounds each side of a benchmark runs by default: a ratio from one round cannot show its own noise.
MIN_ROUNDS = 3


def ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Per-round ratios num[i] / den[i] of two sides measured in the same round (rounds skipped where the
    denominator is 0): pairing cancels the machine's drift between rounds, which moves both sides alike."""
    return [n / d for n, d in zip(num, den) if d]


def ratio_summary(rs: Sequence[float]) -> dict[str, Any]:
    """The median of per-round ratios, their spread (min, max) and the ratios themselves: how every
    benchmark reports a ratio, so a reader sees how far one run can be trusted."""
    return {"median": median(rs), "range": spread(rs), "rounds": [float(r) for r in rs]}


def format_ratio(summary: dict[str, Any], digits: int = 3) -> str:
    """``1.003x (0.981-1.020 over 5 rounds)``."""
    lo, hi = summary["range"]
    return (f"{summary['median']:.{digits}f}x ({lo:.{digits}f}-{hi:.{digits}f} over {len(summary['rounds'])} "
            f"rounds)")
