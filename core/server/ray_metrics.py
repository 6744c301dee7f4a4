"""The ingress's ``GET /metrics``: its routing counters, then each replica's own metrics (scraped live) with a
``replica`` label, in one Prometheus text."""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .metrics import CONTENT_TYPE


class _Fixed(Collector):
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _routing(stats: dict[str, Any] | None, replicas: int, failures: int, retries: int,
             channels: tuple[int, int]) -> list[Metric]:
    stats = stats or {"by_replica": {}, "hits": 0, "misses": 0, "no_prefix": 0, "hit_rate": 0.0}
    routed = CounterMetricFamily("corert_route_requests", "requests routed, by replica", labels=["replica"])
    for replica, n in sorted(stats["by_replica"].items()):
        routed.add_metric([replica], n)
    return [
        routed,
        CounterMetricFamily("corert_route_prefix_hits", "requests sent to the replica already holding their "
                                                        "prompt's prefix", value=stats["hits"]),
        CounterMetricFamily("corert_route_prefix_misses", "requests with a prefix no live replica held (or "
                                                          "whose holder was full)", value=stats["misses"]),
        CounterMetricFamily("corert_route_unkeyed", "requests without a whole prefix block (routed on load "
                                                    "alone)", value=stats["no_prefix"]),
        GaugeMetricFamily("corert_route_prefix_hit_rate", "prefix hits / requests with a prefix",
                          value=stats["hit_rate"]),
        GaugeMetricFamily("corert_route_replicas", "replicas the router sees", value=replicas),
        CounterMetricFamily("corert_route_replica_failures", "requests whose replica died under them",
                            value=failures),
        CounterMetricFamily("corert_route_retries", "requests retried on another replica (nothing was sent "
                                                    "yet)", value=retries),
        CounterMetricFamily("corert_route_channel_items", "items received on the replicas' channels (each "
                                                          "carries what a replica's streams had ready at once)",
                            value=channels[0]),
        CounterMetricFamily("corert_route_channel_bursts", "stream bursts those items carried", value=channels[1]),
    ]


def labelled(texts: dict[str, str], label: str) -> list[Metric]:
    """Prometheus texts of several sources as one set of families, each sample labelled with its source."""
    families: dict[str, Metric] = {}
    for source, text in sorted(texts.items()):
        for fam in text_string_to_metric_families(text):
            out = families.get(fam.name)
            if out is None:
                out = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            for sample in fam.samples:
                out.add_sample(sample.name, {**sample.labels, label: source}, sample.value)
    return list(families.values())


def render(families: list[Metric]) -> bytes:
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    return generate_latest(registry)


def merged(per_replica: dict[str, str], stats: dict[str, Any] | None, replicas: int, failures: int,
           retries: int, channels: tuple[int, int] = (0, 0)) -> tuple[bytes, str]:
    return (render(_routing(stats, replicas, failures, retries, channels) + labelled(per_replica, "replica")),
            CONTENT_TYPE)
