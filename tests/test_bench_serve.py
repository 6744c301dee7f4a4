"""`corert bench serve` and `corert bench soak` through the CLI (subprocesses, ``--json``) with the smallest
settings that still run corert serve for real: the JSON's shape, tokens actually streamed, every server
stopped.  Speeds are never asserted; the competitors' sides run in the full benchmark, not here."""
from __future__ import annotations

import json
import math

import pytest

from cli_support import assert_bad_input, cli_json, run_cli
from corert.tools.bench.prometheus_text import samples
from corert.tools.bench.soak import BAD_INPUTS, MIX, plan

SMOL = "smollm2-135m-instruct"


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_bench_serve_corert_sides(smollm2):
    r = cli_json("bench", "serve", "--json", "--model", smollm2, "--sides", "corert-native,corert-llama",
                 "--clients", "1,2", "--max-tokens", "16", "--rounds", "1", timeout=600)
    assert r.pop("machine")["cores"] >= 1
    assert r["bench"] == "serve" and r["model"] == SMOL and r["clients"] == [1, 2] and r["max_tokens"] == 16
    assert set(r["sides"]) == {"corert-native", "corert-llama"}
    for side in r["sides"].values():  # recorded without this machine's paths
        assert "MODEL" in side["argv"] and smollm2 not in side["argv"] and side["argv"][0] == "python"
        assert side["extra_body"] == {"ignore_eos": True}
    assert [row["clients"] for row in r["rows"]] == [1, 2]
    for row in r["rows"]:
        assert row["ratios"] == {}  # no competitor ran
        for name, s in row["sides"].items():
            assert s["failed"] == 0 and s["rounds"] == 1, (name, s)
            assert s["tokens_asked"] == 16 * row["clients"]
            assert s["tokens_received"] == s["tokens_asked"], (name, s)  # ignore_eos: equal work on every side
            assert _positive(s["tok_s"]) and s["tok_s_range"] == [s["tok_s"], s["tok_s"]]
            assert 0 < s["ttft_p50_ms"] <= s["ttft_p95_ms"] and _positive(s["itl_p95_ms"])
    assert all(v is None for v in r["goals"].values())  # never claimed without 8 clients and the peers
    assert r["exit_code"] == 0


@pytest.mark.parametrize("argv, fragment", [
    (["--sides", "vllm"], "unknown side 'vllm'"),
    (["--sides", "llama-server"], "needs --llama-server PATH"),
    (["--ray", "--documents", "1"], "--documents at least 2"),
    (["--ray", "--documents", "13"], "--documents: at most 12"),
])
def test_bench_serve_bad_options_are_bad_input(argv, fragment):
    assert_bad_input(run_cli("bench", "serve", *argv), fragment)


def test_soak_plan_has_the_mix_and_every_bad_input():
    jobs = plan(40, seed=3)
    assert [j.index for j in jobs] == list(range(40))
    kinds = [j.kind for j in jobs]
    assert set(kinds) == set(MIX) and kinds.count("bad_input") == int(40 * MIX["bad_input"])
    assert {j.item for j in jobs if j.kind == "bad_input"} == set(range(len(BAD_INPUTS)))
    assert plan(40, seed=3) == jobs and plan(40, seed=4) != jobs


def test_prometheus_samples_sum_over_labels():
    text = ('# HELP corert_kv_sequences live\n# TYPE corert_kv_sequences gauge\n'
            'corert_kv_sequences{model="a.gguf"} 2.0\ncorert_kv_sequences{model="b.gguf"} 1.0\n'
            'corert_request_threads 0.0\ncorert_requests_total{endpoint="/v1/completions",status="200"} 5.0\n')
    assert samples(text) == {"corert_kv_sequences": 3.0, "corert_request_threads": 0.0,
                             "corert_requests_total": 5.0}


@pytest.mark.slow
def test_soak_mixed_requests(smollm2):
    proc = run_cli("bench", "soak", "--json", "--model", smollm2, "--requests", "30", "--concurrency", "4",
                   "--max-tokens", "8", "--leak-wait", "20", timeout=600)
    r = json.loads(proc.stdout)  # printed whatever the verdict, so a failure shows which check failed
    r.pop("machine")
    assert r["requests"] == 30 and r["failed"] == 0, r["failures"]
    assert all(r["checks"].values()), (r["checks"], r["metrics_before"], r["metrics_after"])
    assert proc.returncode == 0
    assert sum(int(v.split("/")[1]) for v in r["by_kind"].values()) == 30
    assert r["metrics_after"]["corert_kv_sequences"] == 0 and r["metrics_after"]["corert_active_sequences"] == 0
    assert r["exit_code"] == 0
