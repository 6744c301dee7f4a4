"""A decoding plugin that faults on request, for the isolation tests: registered as an extra plugin
(``extra_plugins=[("isolation_faults", isolation_faults)]``), it reaches the worker process by its import
name, since the worker starts with the host's ``sys.path``.

It decodes plainly, except that a request's ``seed`` (ignored by greedy decoding) asks for a fault: SEGFAULT
reads address 0 through ctypes (SIGSEGV in the worker) after the first token, HANG sleeps without looking at
its cancel token before it (at once: a deadline that passed during a slow first token would have been seen
at that token, and the worker would never hang)."""
from __future__ import annotations

import ctypes
import time

from corert import Implementation, hookimpl
from corert.plugins.speculative.plain import PlainDecoder

SEGFAULT, HANG = 11, 99
HANG_S = 30  # bounded: a worker nobody kills still ends


class FaultyDecoder(PlainDecoder):
    name = "faulty"
    runs_in_batcher = False  # requests must run through this decoder, not the batcher

    def generate(self, session, prompt_ids, params, is_eog):
        if params.seed == HANG:
            time.sleep(HANG_S)
        for n, token in enumerate(super().generate(session, prompt_ids, params, is_eog)):
            yield token
            if n == 0 and params.seed == SEGFAULT:
                ctypes.string_at(0)


@hookimpl
def register_decoders(register):
    register(Implementation(area="speculative", name="faulty", factory=lambda variant, **ctx: FaultyDecoder(),
                            description="plain decoding that faults on request (isolation tests)"))
