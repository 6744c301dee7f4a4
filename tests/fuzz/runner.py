"""Runs load jobs in child processes (load_driver.py), many per child, and attributes any signal to its job.

A child reads its jobs from a file and announces each before starting it, so when the child dies the job
in flight is known; that job is rerun alone in a fresh child (a death that does not repeat alone is
still reported, as "signal-in-batch"), and the jobs after it continue in another child.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

DRIVER = Path(__file__).with_name("load_driver.py")


def run_jobs(jobs: list[dict], pristine: str, env: dict[str, str], stall: float = 120.0) -> dict[int, dict]:
    """``{job["i"]: result}`` for every job (``{"i", "path", "target"}``); a result has ``outcome``:
    "ok", "error:<Class>", "traceback:<Class>", "signal:<NAME>", "exit:<code>" or "hang"."""
    results: dict[int, dict] = {}
    pending = list(jobs)
    while pending:
        done, died = _child(pending, pristine, env, stall)
        results.update(done)
        if died is None:
            break
        i, result = died
        if len(pending) > 1:  # attribute it: the same job alone, in a fresh child
            alone, again = _child([j for j in pending if j["i"] == i], pristine, env, stall)
            if i in alone:
                result = {**alone[i], "outcome": f"{result['outcome']}-in-batch", "alone": alone[i]["outcome"]}
            elif again is not None:
                result = again[1]
        results[i] = result
        pending = [j for j in pending if j["i"] not in results]
    return results


def _child(jobs: list[dict], pristine: str, env: dict[str, str], stall: float
           ) -> tuple[dict[int, dict], tuple[int, dict] | None]:
    """Run ``jobs`` in one child: the finished ones, and (job, result) of the one it died in, if it did."""
    with tempfile.TemporaryFile("w+") as jobfile, tempfile.TemporaryFile("w+b") as errfile:
        jobfile.write("".join(json.dumps(j) + "\n" for j in jobs))
        jobfile.seek(0)
        proc = subprocess.Popen([sys.executable, str(DRIVER), pristine], stdin=jobfile, stdout=subprocess.PIPE,
                                stderr=errfile, env=env, text=True)
        done: dict[int, dict] = {}
        current: int | None = None
        hung = False
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                if not sel.select(timeout=stall):
                    hung = True
                    proc.kill()
                    break
                line = proc.stdout.readline()
                if not line:
                    break
                tag, rest = line.rstrip("\n").split(" ", 1)
                if tag == "S":
                    current = int(rest)
                elif tag == "R":
                    i, payload = rest.split(" ", 1)
                    done[int(i)] = json.loads(payload)
                    current = None
        finally:
            sel.close()
            rc = proc.wait()
            proc.stdout.close()
        if current is None and not hung and rc == 0:
            return done, None
        errfile.seek(0)
        tail = errfile.read()[-1500:].decode("utf-8", "replace")
        if current is None:  # died between jobs (start-up): blame the next job
            current = next(j["i"] for j in jobs if j["i"] not in done)
        if hung:
            outcome = "hang"
        elif rc < 0:
            outcome = f"signal:{signal.Signals(-rc).name}"
        else:
            outcome = f"exit:{rc}"
        return done, (current, {"outcome": outcome, "stderr": tail})


def child_env(cache_dir: str) -> dict[str, str]:
    """The environment of the children: a private tokenizer cache (every mutant would add a vocabulary
    to the user's), no native layout cache (every mutant would add its converted weights to the user's cache:
    ~95 MB each, ~14 GB had piled up), every plugin enabled."""
    env = dict(os.environ)
    env["CORERT_TOKENIZER_CACHE"] = cache_dir
    env["CORERT_NATIVE_LAYOUT_CACHE"] = "off"
    env["GGML_NO_BACKTRACE"] = "1"  # an abort would otherwise attach gdb to print a backtrace (seconds)
    env.pop("CORERT_DISABLE", None)
    return env
