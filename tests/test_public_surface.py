"""Small public functions no other test ran in-process (issue 21's coverage map): each checked for what it is
for, on real stores, schedulers and tokenizers rather than on hand-made values where the real part runs here."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from corert.cancel import current_token
from corert.config import RuntimeConfig
from corert.errors import ConfigError
from corert.results import TokenLogprob
from corert.tools.stats import format_ratio, ratio_summary, ratios

WAIT = 10.0  # bound on an event that must happen; never reached when things work


# -- benchmark statistics ----------------------------------------------------------------------------------
def test_ratios_pair_rounds_and_skip_a_zero_denominator():
    assert ratios([2.0, 3.0, 9.0, 5.0], [1.0, 0.0, 3.0, 2.0]) == [2.0, 3.0, 2.5]
    assert ratios([1.0, 2.0, 3.0], [2.0]) == [0.5]  # only rounds both sides measured


def test_format_ratio_shows_median_spread_and_rounds():
    s = ratio_summary(ratios([1.0, 3.0, 0.98], [1.0, 2.0, 1.0]))
    assert format_ratio(s) == "1.000x (0.980-1.500 over 3 rounds)"
    assert format_ratio(s, digits=1) == "1.0x (1.0-1.5 over 3 rounds)"


# -- results -----------------------------------------------------------------------------------------------
def test_token_logprob_to_dict_is_openais_chat_shape():
    alt = TokenLogprob(token=7, piece=b" Par", logprob=-2.5)
    half = TokenLogprob(token=9, piece=b"\xe4\xb8", logprob=-0.25, top=(alt,))  # half of a UTF-8 character
    d = half.to_dict()
    assert d == {"token": "\ufffd", "logprob": -0.25, "bytes": [0xE4, 0xB8],
                 "top_logprobs": [{"token": " Par", "logprob": -2.5, "bytes": list(b" Par")}]}
    json.dumps(d)  # what the server sends


# -- configuration -----------------------------------------------------------------------------------------
def test_set_option_changes_one_key_from_text():
    base = RuntimeConfig(kv={"page_tokens": 32})
    cfg = base.set_option("kv.budget = 256M")
    assert cfg.kv.budget == 256 * 2 ** 20 and cfg.kv.page_tokens == 32  # the other keys are kept
    assert base.kv.budget is None  # a new config: the old one is unchanged
    assert cfg.set_option("scheduler.pin_threads=false").scheduler.pin_threads is False
    assert cfg.set_option("scheduler.cpus=0,1").scheduler.cpus == (0, 1)
    assert cfg.set_option("native.prefill_rows=64").native.prefill_rows == 64


@pytest.mark.parametrize("bad, says", [("kv.budget", "TABLE.KEY=VALUE"), ("budget=1M", "TABLE.KEY=VALUE"),
                                       ("nope.budget=1M", "TABLE.KEY=VALUE"), ("kv.pages=3", "unknown kv"),
                                       ("kv.page_tokens=many", "not a valid int"),
                                       ("scheduler.pin_threads=maybe", "not a valid bool"),
                                       ("kv.budget=lots", "kv.budget")])
def test_set_option_rejects_bad_assignments(bad, says):
    with pytest.raises(ConfigError, match=says):
        RuntimeConfig().set_option(bad)


# -- KV stores ---------------------------------------------------------------------------------------------
def test_contiguous_store_nbytes_is_its_k_and_v_at_full_length():
    from corert.plugins.kv_cache.contiguous import ContiguousKVStore

    layers, n_kv, hd, max_tokens, n_seqs = 3, 2, 64, 40, 2
    # K and V, every sequence at full length: the address space it holds (resident only where written)
    for dtype, size in (("f16", 2), ("f32", 4)):
        st = ContiguousKVStore(layers, n_kv, hd, max_tokens, n_seqs, dtype)
        assert st.nbytes() == 2 * layers * n_seqs * n_kv * max_tokens * hd * size


def test_paged_store_tokens_follow_reserve_truncate_and_release():
    from corert.errors import InputError
    from corert.plugins.kv_cache.paged.config import PagedConfig
    from corert.plugins.kv_cache.paged.store import PagedKVStore

    st = PagedKVStore(PagedConfig(dtype="f32", kernel="scalar", page_tokens=4), 1, 1, 32, 32, 2)
    a, b = st.new_sequence(), st.new_sequence()
    assert st.tokens(a) == []
    ids = [11, 12, 13, 14, 15, 16]
    st.reserve(np.full(6, a, np.int32), np.arange(6, dtype=np.int32), token_ids=np.array(ids, np.int64))
    assert st.tokens(a) == ids
    got = st.tokens(a)
    got.append(99)  # a copy: the caller cannot change the store's record
    assert st.tokens(a) == ids
    st.truncate(a, 3)
    assert st.tokens(a) == ids[:3]
    st.reserve(np.full(2, b, np.int32), np.arange(2, dtype=np.int32))  # written without ids
    assert st.tokens(b) is None
    st.truncate(b, 0)
    assert st.tokens(b) == []  # empty again: ids can be recorded anew
    st.release(a)
    assert st.tokens(a) is None  # no such sequence any more
    with pytest.raises(InputError):
        st.tokens(5)


# -- schedulers --------------------------------------------------------------------------------------------
def _blocker(release: threading.Event, started: threading.Event):
    def hold():
        started.set()
        assert release.wait(WAIT)
        return "held"
    return hold


def test_fifo_stats_count_every_outcome():
    from corert.plugins.scheduler.fifo import FifoScheduler

    sched = FifoScheduler(cores=2)
    try:
        started, release = threading.Event(), threading.Event()
        futs = [sched.submit(_blocker(release, started))]
        assert started.wait(WAIT)
        futs.append(sched.submit(lambda: 1))
        futs.append(sched.submit(lambda: 1 / 0))
        doomed = sched.submit(lambda: 2)
        last = sched.submit(lambda: 3)
        assert doomed.cancel()
        s = sched.stats()
        assert s == {"scheduler": "fifo", "workers": 1, "queued": 4, "submitted": 5, "completed": 0,
                     "failed": 0, "cancelled": 0}
        release.set()
        assert last.result(WAIT) == 3  # it ran after the cancelled one was dropped
        assert futs[0].result() == "held" and futs[1].result() == 1
        with pytest.raises(ZeroDivisionError):
            futs[2].result()
        assert sched.stats() == {"scheduler": "fifo", "workers": 1, "queued": 0, "submitted": 5,
                                 "completed": 3, "failed": 1, "cancelled": 1}
    finally:
        sched.shutdown(wait=True, cancel_pending=True)


def _work_stealing():
    from corert.plugins.scheduler.work_stealing import WorkStealingConfig, WorkStealingScheduler

    return WorkStealingScheduler(WorkStealingConfig(preset="balanced", n_threads=1))  # one worker


def _threads_of(sched) -> list[threading.Thread]:
    return [w.thread for w in sched._workers] + [sched._watchdog]


def test_work_stealing_with_block_runs_queued_tasks_then_stops_its_threads():
    sched = _work_stealing()
    started, release = threading.Event(), threading.Event()
    with sched as entered:
        assert entered is sched
        held = sched.submit(_blocker(release, started))
        assert started.wait(WAIT)
        queued = sched.submit(lambda: "ran")  # waits behind the held task
        release.set()
    assert held.result(0) == "held" and queued.result(0) == "ran"  # done by the time the block is left
    assert not any(t.is_alive() for t in _threads_of(sched))


def test_work_stealing_with_block_left_by_an_exception_cancels_its_work():
    sched = _work_stealing()
    started = threading.Event()

    def until_cancelled():
        started.set()
        return current_token().wait(WAIT)  # True once the scheduler cancels it

    with pytest.raises(RuntimeError, match="caller failed"):
        with sched:
            running = sched.submit(until_cancelled)
            assert started.wait(WAIT)
            queued = sched.submit(lambda: "ran")
            raise RuntimeError("caller failed")
    assert running.result(0) is True  # the running task was asked to stop
    assert queued.cancelled()  # the queued one never ran
    assert not any(t.is_alive() for t in _threads_of(sched))


# -- tokenizer ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bpe(smollm2):
    from corert.plugins.tokenizer.bpe import BpeTokenizer

    return BpeTokenizer.from_gguf(smollm2)


def test_vocab_pieces_of_an_encoding_are_the_text_bytes(bpe):
    text = "Größe: 12 × 3 — naïve café 😀\n\tdef f(): return 'ok'"
    ids = bpe.encode(text, add_bos=False)
    assert len(ids) > 10
    assert b"".join(bpe.vocab.piece(t) for t in ids) == text.encode()
    assert bpe.vocab.piece(ids[0]) == bpe.decode([ids[0]]).encode()


WARM_UP_CHECK = """
import json, sys
import numba
from corert.plugins.tokenizer import kernels_encode, kernels_scan
from corert.plugins.tokenizer.bpe import BpeTokenizer

def compiled():
    return {f"{m.__name__}.{k}": len(d.signatures) for m in (kernels_encode, kernels_scan)
            for k, d in vars(m).items() if isinstance(d, numba.core.registry.CPUDispatcher)}

tok = BpeTokenizer.from_gguf(sys.argv[1])
before = compiled()
tok.warm_up()
warm = compiled()
ids = tok.encode("A longer text, with punctuation; digits 1234 and unicode: naïve 😀.", add_bos=True)
print(json.dumps({"before": before, "warm": warm, "after": compiled(), "n": len(ids)}))
"""


def test_bpe_warm_up_loads_every_kernel_an_encode_needs(smollm2):
    """In a fresh process (compiled kernels are per process): after warm_up, an encode loads nothing more."""
    proc = subprocess.run([sys.executable, "-c", WARM_UP_CHECK, smollm2], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sum(r["before"].values()) == 0
    assert sum(r["warm"].values()) > 0
    assert r["after"] == r["warm"] and r["n"] > 10
