"""GET /metrics: Prometheus text from one registry per app (two apps in one process do not collide).

Counted as requests happen: requests by endpoint and status, prompt and generated tokens, time to first
token and inter-token latency, speculative drafted/accepted tokens.  Read at scrape time: queue depth,
active sequences, live request threads and the process's threads, and per loaded model the KV store's
pages (used, free, cached), live sequences, evictions and prefix hit rate.  After the last request ends,
``corert_kv_sequences``, ``corert_active_sequences`` and ``corert_request_threads`` are 0 unless something
leaked.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .admission import Admission
from .streams import LiveThreads

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (.005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10, 30)
_TOKEN_GAP_BUCKETS = (.001, .0025, .005, .01, .02, .04, .08, .16, .32, .64, 1.28)


class Metrics:
    def __init__(self, runtime: Any, admission: Admission, threads: LiveThreads):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("corert_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("corert_prompt_tokens", "prompt tokens of finished generations", registry=r)
        self.generated_tokens = Counter("corert_generated_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("corert_time_to_first_token_seconds", "request arrival to its first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("corert_inter_token_latency_seconds", "gap between two tokens of one stream",
                             buckets=_TOKEN_GAP_BUCKETS, registry=r)
        self.drafted = Counter("corert_speculative_drafted_tokens", "draft tokens offered (speculative)", registry=r)
        self.accepted = Counter("corert_speculative_accepted_tokens", "draft tokens accepted (speculative)",
                                registry=r)
        r.register(_LiveState(runtime, admission, threads))

    def finished(self, completion: Any) -> None:
        """Count a finished generation (a Completion)."""
        self.prompt_tokens.inc(completion.usage.prompt_tokens)
        self.generated_tokens.inc(completion.usage.completion_tokens)
        stats = completion.decoder_stats or {}
        if stats.get("drafted"):
            self.drafted.inc(stats["drafted"])
            self.accepted.inc(stats.get("accepted", 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveState(Collector):
    def __init__(self, runtime: Any, admission: Admission, threads: LiveThreads):
        self.runtime, self.admission, self.threads = runtime, admission, threads

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily("corert_queue_depth", "requests waiting for a sequence slot",
                                value=self.admission.waiting)
        yield GaugeMetricFamily("corert_active_sequences", "sequences generating now", value=self.admission.active)
        yield GaugeMetricFamily("corert_slots", "sequence slots (--n-seqs)", value=self.admission.slots)
        yield GaugeMetricFamily("corert_request_threads", "live threads driving request streams",
                                value=self.threads.count)
        yield GaugeMetricFamily("corert_process_threads", "threads of the server process",
                                value=threading.active_count())
        yield from _kv_metrics(_kv_stores(self.runtime))


def _kv_stores(runtime: Any) -> list[dict[str, Any]]:
    """The live stats of the loaded models' KV stores (paged cache); the driver thread may be mid-step, so a
    read that races it is retried once and otherwise skipped for this scrape."""
    for _ in range(2):
        try:
            info = runtime.kv_cache_info() or {}
            return list(info.get("stores", []))
        except RuntimeError:  # a dict changed size under the stats walk
            continue
    return []


_KV_GAUGES = (("pages_used", "corert_kv_pages_used", "KV pages held by live sequences"),
              ("pages_free", "corert_kv_pages_free", "KV pages free (cached prefixes included)"),
              ("pages_cached_free", "corert_kv_pages_cached_free", "free KV pages still holding a cached prefix"),
              ("pages_total", "corert_kv_pages_total", "KV pages in the pool"),
              ("sequences", "corert_kv_sequences", "live KV sequences"),
              ("prefix_hit_rate", "corert_kv_prefix_hit_rate", "prompt tokens found in cached pages / looked up"))

_KV_COUNTERS = (("evictions", "corert_kv_pages_evicted", "cached KV pages evicted"),
                ("prefix_hits", "corert_kv_prefix_hit_tokens", "prompt tokens whose K/V came from cached pages"),
                ("prefix_queried", "corert_kv_prefix_lookup_tokens", "prompt tokens looked up in the cache"))


def _kv_metrics(stores: list[dict[str, Any]]) -> Iterator[Any]:
    gauges = {key: GaugeMetricFamily(name, doc, labels=["model"]) for key, name, doc in _KV_GAUGES}
    counters = {key: CounterMetricFamily(name, doc, labels=["model"]) for key, name, doc in _KV_COUNTERS}
    for st in stores:
        model = Path(str(st.get("model", ""))).name
        for key, family in gauges.items():
            if key in st:
                family.add_metric([model], float(st[key]))
        for key, family in counters.items():
            if key in st:
                family.add_metric([model], float(st[key]))
    yield from gauges.values()
    yield from counters.values()
