"""What prompt lookup can give a batch at best: every stream's recorded greedy output replayed against its own
lookup offers, each step drafting exactly the part of the offer that holds (no depth rule can know more), the
batch's steps priced by a step-cost function.

A batch of streams of fixed lengths runs as many steps as its slowest stream needs, and a step costs a
fixed part (the weight reads) plus a part per row.  The fitted ceiling (every row a drafted and accepted
token) counts only the rows; this bound also counts the steps: a stream whose answer has nothing to copy
(prose) keeps the whole batch stepping, so however well the others copy, the fixed part is paid that many
times.  On the bench's eight grounded edits the docstring stream needs ~75 of 128 steps even so.
"""
from __future__ import annotations

from typing import Callable, Sequence

import attrs

from .sources import LookupSource


@attrs.frozen
class LookupBound:
    """The oracle's batch against the same batch decoded plainly, at the same step costs (seconds)."""

    steps: int
    rows: int
    seconds: float
    plain_steps: int
    plain_seconds: float
    stream_steps: tuple[int, ...]  # decode steps each stream needs on its own

    @property
    def vs_plain(self) -> float:
        return self.plain_seconds / self.seconds if self.seconds else 1.0


def stream_steps(prompt_ids: Sequence[int], output: Sequence[int], max_depth: int,
                 max_ngram: int = 3, min_ngram: int = 2) -> list[int]:
    """Tokens each decode step of one stream yields when it drafts exactly the held part of its lookup offer
    (the first output token comes from the prompt's forward, so the steps yield len(output) - 1 in all)."""
    source = LookupSource(max_ngram, min_ngram)
    source.start(prompt_ids)
    source.extend(output[:1])
    made, steps = 1, []
    while made < len(output):
        room = len(output) - made - 1  # as the runner: never drafts past the stream's last token
        n = source.available(min(room, max_depth)) if room > 0 else 0
        offer = source.free_offer()[:n]
        held = 0
        while held < len(offer) and offer[held] == output[made + held]:
            held += 1
        source.extend(output[made:made + held + 1])
        made += held + 1
        steps.append(held + 1)
    return steps


def batch_bound(prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]],
                step_seconds: Callable[[int], float], max_depth: int = 31, max_ngram: int = 3,
                min_ngram: int = 2) -> LookupBound:
    """The oracle's batch: all streams start together, a stream leaves once its output is produced."""
    per_stream = [stream_steps(p, o, max_depth, max_ngram, min_ngram) for p, o in zip(prompts, outputs)]
    steps = max((len(s) for s in per_stream), default=0)
    rows_by_step = [sum(s[j] for s in per_stream if j < len(s)) for j in range(steps)]
    plain_rows = [sum(1 for o in outputs if j < len(o) - 1) for j in range(max((len(o) - 1 for o in outputs), default=0))]
    return LookupBound(steps=steps, rows=sum(rows_by_step),
                       seconds=float(sum(step_seconds(r) for r in rows_by_step)), plain_steps=len(plain_rows),
                       plain_seconds=float(sum(step_seconds(r) for r in plain_rows)),
                       stream_steps=tuple(len(s) for s in per_stream))
