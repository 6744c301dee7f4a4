"""CPU time a benchmark's processes spent, from /proc (Linux): user + system seconds of every process under
a root, grouped into named roles by their command lines.  A ratio of CPU-seconds per token is blurred much
less by other load on the machine than a tok/s ratio is (a process preempted waits; it does not spend).
Elsewhere (no /proc) every figure is None."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()  # the name may hold spaces and parentheses
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def tree(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and every process descended from it, by pid."""
    if not os.path.isdir("/proc"):
        return {}
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (s := _stat(int(name))) is not None:
            stats[int(name)] = s
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = stats[pid][1]
        todo.extend(children.get(pid, ()))
    return out


class CpuMeter:
    """CPU seconds spent between :meth:`start` and :meth:`stop` by the processes under ``root``, summed per
    role: the first ``(role, text)`` pair whose text is in a process's command line names it; ``root`` itself
    is ``root_role``; any other process is ``other``.  A process that ends between the two readings is not
    counted."""

    def __init__(self, root: int, roles: Sequence[tuple[str, str]], root_role: str = "root"):
        self.root, self.roles, self.root_role = root, tuple(roles), root_role
        self._before: dict[int, float] = {}

    def _role(self, pid: int) -> str:
        if pid == self.root:
            return self.root_role
        line = _cmdline(pid)
        return next((role for role, text in self.roles if text in line), "other")

    def start(self) -> None:
        self._before = tree(self.root)

    def stop(self) -> dict[str, float]:
        spent: dict[str, float] = {}
        for pid, secs in tree(self.root).items():
            if pid in self._before:
                role = self._role(pid)
                spent[role] = spent.get(role, 0.0) + secs - self._before[pid]
        return spent


def per_token_ms(spent: Sequence[Mapping[str, float]], tokens: Sequence[int]) -> dict[str, float] | None:
    """CPU milliseconds per token of each role over several measured rounds."""
    total = sum(tokens)
    if not total or not any(spent):
        return None
    roles = sorted({r for s in spent for r in s})
    return {r: round(1e3 * sum(s.get(r, 0.0) for s in spent) / total, 3) for r in roles}
