"""The prefix router's decision without Ray (``corert.server.prefix_route``, what Serve's router calls), and
``corert bench routing``, which simulates it over many replicas.  The simulation's figures come out of the
router's own code: the test that prefix routing beats random also breaks the router's table and sees the
advantage go."""
from __future__ import annotations

import attrs

from cli_support import assert_bad_input, cli_json, run_cli
from corert.server.prefix_route import PrefixChooser, PrefixTable, prefix_keys
from corert.tools.bench.routing_sim import SimConfig, simulate

AT_100 = SimConfig(replicas=100, requests=1000, documents=200)


def test_a_new_prefix_goes_to_the_least_loaded_and_its_burst_follows():
    load = {"a": 3, "b": 0, "c": 1}
    chooser = PrefixChooser("prefix")
    keys = prefix_keys("x" * 1000)
    first, hit, rest = chooser.choose(keys, list(load), load.get, lambda r: False)
    assert (first, hit, rest) == ("b", False, ["c", "a"])
    load["b"] = 5  # busier now, but it holds the prefix: the burst follows
    assert chooser.choose(keys + (7,), list(load), load.get, lambda r: False)[:2] == ("b", True)
    # the owner full: spilled to the least loaded, which owns the prefix from then on
    assert chooser.choose(keys, list(load), load.get, lambda r: r == "b")[:2] == ("c", False)
    assert chooser.choose(keys, list(load), load.get, lambda r: False)[:2] == ("c", True)
    chooser.forget("c")  # died: nobody holds the prefix
    assert chooser.choose(keys, ["a", "b"], load.get, lambda r: False)[:2] == ("a", False)


def test_prefix_routing_beats_random_at_100_replicas(monkeypatch):
    prefix = simulate(AT_100)
    rand = simulate(attrs.evolve(AT_100, policy="random"))
    least = simulate(attrs.evolve(AT_100, policy="least_loaded"))
    for r in (prefix, rand, least):
        assert r["requests"] == 1000 and r["failed"] == 0 and r["counted"] >= 700
    # the pages really found cached in the replicas' pools, not only the router's opinion
    assert prefix["kv_hit_rate"] > 2 * max(rand["kv_hit_rate"], least["kv_hit_rate"]), (prefix, rand, least)
    assert prefix["router_hit_rate"] > 2 * rand["router_hit_rate"]
    assert prefix["ttft_p95_s"] < rand["ttft_p95_s"] / 2
    assert 0 < prefix["table_keys"] <= 65536 and prefix["route_us_mean"] > 0

    # the same traffic with a router whose table never finds an owner: the advantage is the router's
    monkeypatch.setattr(PrefixTable, "match", lambda self, keys, live: (None, 0))
    blind = simulate(AT_100)
    assert blind["kv_hit_rate"] < prefix["kv_hit_rate"] / 2 and blind["router_hit_rate"] == 0


def test_bench_routing_cli_json():
    r = cli_json("bench", "routing", "--json", "--replicas", "4,12", "--requests", "240", "--documents", "40",
                 "--at", "8", "--parts", "scale,failure")
    assert r["machine"]["cores"] >= 1 and r["calibration"]["prefill_tps"] == 30.0
    scale = r["scale"]
    assert [(x["replicas"], x["policy"]) for x in scale] == [
        (n, p) for n in (4, 12) for p in ("prefix", "random", "least_loaded")]
    assert all(x["requests"] == 240 and 0 <= x["kv_hit_rate"] <= 1 and x["imbalance_max_over_mean"] >= 1
               for x in scale)
    assert [x["policy"] for x in r["failure"]] == ["prefix", "random"]
    assert all(x["retried"] + x["failed"] > 0 for x in r["failure"])  # the dead replica held requests


def test_bench_routing_bad_option_is_one_line_exit_2():
    assert_bad_input(run_cli("bench", "routing", "--replicas", "100,1"), "--replicas")
