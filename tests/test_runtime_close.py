"""Runtime.close() while a request is generating: the request stops, the model is freed only after it
stopped, and the process lives on (before, a model freed under a running forward crashed the interpreter with SIGSEGV)."""
from __future__ import annotations

import threading
import time

import pytest

from corert import Runtime
from corert.errors import CorertError

MODEL = "smollm2-135m-instruct"
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # greedy SmolLM2 counts on far past max_tokens


@pytest.mark.parametrize("scheduler,n_seqs", [("fifo", 1), ("work_stealing", 1), ("work_stealing", 2)],
                         ids=["fifo", "work_stealing", "batched"])
def test_close_stops_a_running_stream_before_freeing_its_model(scheduler, n_seqs):
    rt = Runtime(engine="llama.cpp", model=MODEL, n_seqs=n_seqs,
                 plugins={"scheduler": scheduler, "speculative": "plain"})
    stream = rt.stream(PROMPT, max_tokens=2000, temperature=0.0)
    got: list = []
    failed: list[BaseException] = []
    started = threading.Event()

    def consume():
        try:
            for chunk in stream:
                got.append(chunk)
                started.set()
        except CorertError as exc:  # cancelled or closed: an error the caller can read, not a crash
            failed.append(exc)
        finally:
            started.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    assert started.wait(300)
    rt.close()
    reader.join(60)
    assert not reader.is_alive()
    n_before = len(got)
    time.sleep(0.5)
    assert len(got) == n_before  # nothing arrives after close returned
    # it ended early with an error the caller can read (cancelled, or the batching service closed)
    assert len(failed) == 1 and len(got) < 2000
    # the same process goes on serving
    with Runtime(engine="llama.cpp", model=MODEL) as again:
        assert again.generate("Hello", max_tokens=4, temperature=0.0).usage.completion_tokens == 4
