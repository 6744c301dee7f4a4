"""What one batched forward costs by its number of rows, learned from the batch's own steps.

The int8 kernels read every weight once per step and then spend a near-constant time per row: a few rows
ride on the weight reads almost for free (memory-bound: 8 rows of Qwen2.5 0.5B cost ~1.8x one), and past a
knee each further row costs a full row's compute.  A straight line through both regions prices rows
beyond the batch too cheaply (36 rows: 412 ms measured, 282 ms fitted) and rows beside a lone stream too
dearly.  So the fit is convex, one line with a knee:

    step(R) = fixed + per_row * R + per_row_above * max(0, R - knee)

least squares over the last STEP_WINDOW steps, the knee chosen among the row counts seen.
"""
from __future__ import annotations

import collections

import attrs
import numpy as np

#: steps the cost is fitted over (the batch's make-up drifts as streams join and leave)
STEP_WINDOW = 128
#: before two row counts are measured, a row beyond the batch is priced at this share of an average row:
#: optimistic enough to try a draft (which measures the slope), dear enough to try only a likely one
PRIOR_ROW_SHARE = 0.5
#: a row never costs less than this share of an average measured row (noise never makes rows free)
MIN_ROW_SHARE = 1e-3


@attrs.frozen
class StepFit:
    """step(R) = fixed + per_row * R + per_row_above * max(0, R - knee) (seconds); no knee: knee = 0 and
    per_row_above = 0."""

    fixed: float
    per_row: float
    knee: int = 0
    per_row_above: float = 0.0

    def __call__(self, rows: int) -> float:
        return max(self.fixed + self.per_row * rows + self.per_row_above * max(0, rows - self.knee), 1e-9)

    def ceiling(self, rows: int) -> float:
        """The most drafting can lift a step of ``rows`` decode rows, every draft accepted: each further row
        yields one token for the slope past the knee, against step(rows) / rows per token of the plain step.
        The cheap rows before the knee are not counted: they are the fit's least certain part (a quiet
        8-stream run fitted rows 9-11 at 4.5 ms against 5.3 ms per row of its own plain steps)."""
        return self(rows) / (max(rows, 1) * (self.per_row + self.per_row_above))


@attrs.define
class StepCost:
    """Seconds of one batched step by its rows (see the module docstring).  Only steps whose every row is a
    decode or verify row belong here: a prompt chunk's rows skip the output projection (~27% of a row on
    Qwen2.5 0.5B) and would make draft rows look cheap."""

    steps: collections.deque = attrs.field(factory=lambda: collections.deque(maxlen=STEP_WINDOW))
    _fit: StepFit | None = None

    def record(self, rows: int, seconds: float) -> None:
        self.steps.append((rows, seconds))
        self._fit = None

    def fit(self) -> StepFit:
        if self._fit is None:
            self._fit = _fit(self.steps)
        return self._fit

    def __call__(self, rows: int) -> float:
        return self.fit()(rows)

    def table(self) -> list[dict[str, float]]:
        """Measured mean seconds per row count beside the fitted cost (reports)."""
        by: dict[int, list[float]] = {}
        for r, t in self.steps:
            by.setdefault(r, []).append(t)
        return [{"rows": r, "steps": len(ts), "seconds": float(np.mean(ts)), "fitted": self(r)}
                for r, ts in sorted(by.items())]


def _fit(steps) -> StepFit:
    if not steps:
        return StepFit(0.0, 1.0)
    x = np.array([r for r, _ in steps], np.float64)
    y = np.array([t for _, t in steps], np.float64)
    floor = MIN_ROW_SHARE * float(y.mean()) / float(x.mean())
    sizes = np.unique(x)
    if len(sizes) == 1:  # one size so far: the prior slope through its mean time
        per_row = PRIOR_ROW_SHARE * y.mean() / x[0]
        return StepFit(float(y.mean() - per_row * x[0]), float(per_row))
    best = _line(x, y, floor)
    best_sse = float(np.sum((best.fixed + best.per_row * x - y) ** 2))
    knees = sizes[1:-1]  # a knee needs sizes on both sides
    if not len(knees):
        return best
    # every knee's least squares at once, from the sums of its normal equations (a step pays for this fit)
    h = np.maximum(0.0, x[None, :] - knees[:, None])  # (knees, steps)
    n, sx, sy = float(len(x)), float(x.sum()), float(y.sum())
    sh, sxh, shh, shy = h.sum(axis=1), h @ x, np.einsum("ks,ks->k", h, h), h @ y
    gram = np.empty((len(knees), 3, 3))
    gram[:, 0] = np.stack([np.full_like(sh, n), np.full_like(sh, sx), sh], axis=1)
    gram[:, 1] = np.stack([np.full_like(sh, sx), np.full_like(sh, float(x @ x)), sxh], axis=1)
    gram[:, 2] = np.stack([sh, sxh, shh], axis=1)
    rhs = np.stack([np.full_like(sh, sy), np.full_like(sh, float(x @ y)), shy], axis=1)
    coef = np.linalg.solve(gram, rhs[..., None])[..., 0]  # (knees, 3): fixed, per row, above the knee
    sse = float(y @ y) - 2 * np.einsum("kc,kc->k", coef, rhs) + np.einsum("kc,kcd,kd->k", coef, gram, coef)
    sse[(coef[:, 1] < 0) | (coef[:, 2] <= 0)] = np.inf  # not convex: a line does as well
    i = int(np.argmin(sse))
    if sse[i] < best_sse:
        fixed, per_row, above = coef[i]
        best = StepFit(float(fixed), max(float(per_row), floor), int(knees[i]), float(above))
    return best


def _line(x: np.ndarray, y: np.ndarray, floor: float) -> StepFit:
    per_row = max(float(np.polyfit(x, y, 1)[0]), floor)
    return StepFit(float(y.mean() - per_row * x.mean()), per_row)
