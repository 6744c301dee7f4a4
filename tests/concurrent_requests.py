"""Helpers for tests that send requests to one Runtime from several threads at once."""
from __future__ import annotations

import threading


def run_concurrently(fn, items) -> tuple[list, list]:
    """``fn(item)`` for every item, each on its own thread: (results, errors), in the items' order."""
    results, errors = [None] * len(items), [None] * len(items)

    def run(i, item):
        try:
            results[i] = fn(item)
        except Exception as exc:  # noqa: BLE001 - collected for the caller's assertions
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i, x)) for i, x in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results, errors


def hold_first_step_until_joined(monkeypatch, service, n: int) -> None:
    """The batch service's first forward waits until ``n`` requests have joined it, so the requests share
    forwards by construction, not by the luck of thread timing."""
    arrived, all_in, lock = [], threading.Event(), threading.Lock()
    join, step = service.generate, service.runner.step

    def counted_join(*args, **kwargs):
        tokens = join(*args, **kwargs)  # the request is queued in the service now
        with lock:
            arrived.append(1)
            if len(arrived) == n:
                all_in.set()
        return tokens

    def gated_step():
        assert all_in.wait(300), f"only {len(arrived)} of {n} requests reached the service"
        return step()

    monkeypatch.setattr(service, "generate", counted_join)
    monkeypatch.setattr(service.runner, "step", gated_step)
