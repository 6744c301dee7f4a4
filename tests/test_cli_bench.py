"""`corert bench generate|tokenize|kv|batch|speculative|grammar` through the CLI (a subprocess,
``--json``), with the smallest options that still run every side: the JSON's structure and the invariants a
benchmark must hold whatever the machine's speed (identical greedy outputs, positive ratios that are the
ratios of the reported figures, models named by their registry name).  Speeds themselves are never
asserted."""
from __future__ import annotations

import importlib
import math
import statistics

import pytest

from cli_support import assert_bad_input, cli_json, run_cli

SMOL = "smollm2-135m-instruct"
QWEN = "qwen2.5-coder-0.5b-instruct"


def _machine(result, bench: str):
    """The machine block, popped; first, the text report the command prints without ``--json`` renders from
    the same result (the user's default output)."""
    from corert.tools.cases import bench_cases

    text = importlib.import_module(bench_cases()[bench].module).render(result)
    assert text.count("\n") >= 2, text  # a report of several lines, not an empty string
    m = result.pop("machine")
    assert set(m) == {"cpu", "cores", "isa", "python", "platform"} and m["cores"] >= 1
    return m


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _ratio_summary(med, rng, rounds, n: int) -> None:
    """A ratio as every bench reports it: the median of n per-round ratios, and their min-max."""
    assert len(rounds) == n and all(_positive(x) for x in rounds), rounds
    assert math.isclose(med, statistics.median(rounds)) and list(rng) == [min(rounds), max(rounds)]


def test_bench_generate(smollm2):
    # the model given as the path of its pulled file: results still name it by its registry name
    # one thread: with two, OpenMP's spinning teams of two sides on a shared 2-core machine triple the time
    # a prompt whose greedy tokens go on in every round (with flash attention, the default prompt's third
    # round ends at its first token: no decode speed that round)
    r = cli_json("bench", "generate", "--json", "--model", smollm2, "--rounds", "3", "--max-tokens", "8",
                 "--threads", "1", "--engine", "llama.cpp",
                 "--prompt", "Once upon a time, in a small village at the edge of a great forest,")
    _machine(r, "generate")
    assert r["threads"] == 1
    assert r["bench"] == "generate" and r["model"] == SMOL and r["engine"] == "llama.cpp"
    assert (r["rounds"], r["max_tokens"]) == (3, 8)
    assert r["prompt"] == "caller" and r["prompt_tokens"] == r["raw"]["prompt_tokens"] > 10
    assert r["identical_output_rounds"] == "3/3"  # greedy, same model and prompt: the same tokens
    for side in ("raw", "corert"):
        s = r[side]
        assert all(_positive(s[k]) for k in ("decode_tok_s", "prompt_tok_s", "peak_rss_mb", "memory_ratio")), s
        lo, hi = s["decode_tok_s_range"]
        assert lo <= s["decode_tok_s"] <= hi
        # the peak RSS holds at least the model file (mapped and read), and the ratio is that quotient
        assert math.isclose(s["memory_ratio"], s["peak_rss_mb"] / r["model_file_mb"], rel_tol=1e-9)
        assert s["memory_ratio"] > 1.0
    for k in ("decode", "prompt"):  # a ratio per round (both sides back to back): its median and spread
        _ratio_summary(r[f"{k}_ratio"], r[f"{k}_ratio_range"], r[f"{k}_ratio_rounds"], 3)
    # the per-round ratios are of the same figures the sides' medians come from
    lo, hi = r["raw"]["decode_tok_s_range"]
    assert r["corert"]["decode_tok_s_range"][0] / hi <= r["decode_ratio"] <= r["corert"]["decode_tok_s_range"][1] / lo
    assert r["plugins"]["engine"] == "llama.cpp" and r["plugins"]["tokenizer"].startswith("bpe:")
    assert int(r["gomp_spincount"]) >= 0  # the corert side's OpenMP spin, as numba_setup chose it


def test_bench_generate_default_prompt_is_one_long_batch(smollm2, gemma):
    """The default prompt is corpus text long enough that a prompt timing is hundreds of ms, and short
    enough to be one batch of llama.cpp's default 512 tokens, with every registry tokenizer."""
    from corert import Runtime
    from corert.tools.bench.generate import default_prompt

    text = f"(3) {default_prompt()}"
    assert text.count("  ") == 0 and "Licensor" in text
    for model in (smollm2, gemma):
        with Runtime(model=model, engine="llama.cpp") as rt:
            n = len(rt.tokenize(text, add_bos=True, parse_special=True))
        assert 400 <= n <= 500, (model, n)


def test_bench_tokenize(tmp_path, smollm2):
    from corert.tools.corpus import corpus_file

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = {name: corpus_file(name).read_text(encoding="utf-8") for name in ("korean.txt", "node-url.md")}
    for name, text in texts.items():
        (corpus / name).write_text(text, encoding="utf-8")
    r = cli_json("bench", "tokenize", "--json", "--model", smollm2, "--repeat", "3", "--no-linear",
                 "--corpus", str(corpus))
    _machine(r, "tokenize")
    assert r["bench"] == "tokenize" and r["model"] == SMOL and r["corpus"] == "corpus"
    assert r["corpus_files"] == 2 and r["corpus_bytes"] == sum(len(t.encode()) for t in texts.values())
    names = [row["name"] for row in r["rows"]]
    assert r["default"] in names and r["best"] in names
    assert {"hf tokenizers", "llama.cpp tokenize"} <= set(names)
    for row in r["rows"]:  # every tokenizer, batched or not, gives the reference ids on every file
        assert row.get("same_ids") is True and _positive(row["mb_per_s"]), row
    hf = next(row for row in r["rows"] if row["name"] == "hf tokenizers")
    default = next(row for row in r["rows"] if row["name"] == r["default"])
    # a row shows its best pass; the ratio is the median of the per-pass ratios of those same passes
    assert default["mb_per_s"] == max(default["mb_per_s_passes"]) and len(hf["mb_per_s_passes"]) == 3
    _ratio_summary(r["ratio_vs_hf"], r["ratio_vs_hf_range"], r["ratio_vs_hf_rounds"], 3)
    assert r["ratio_vs_hf_rounds"] == pytest.approx([a / b for a, b in zip(default["mb_per_s_passes"],
                                                                          hf["mb_per_s_passes"])])
    assert r["linear"] == [] and r["linear_spread"] is None  # --no-linear


def test_bench_kv():
    r = cli_json("bench", "kv", "--json", "--budget", "64M", "--seq-tokens", "256", "--shared-prompt", "64",
                 "--requests", "2", "--compaction-tokens", "64")
    _machine(r, "kv")
    d = r["dims"]
    assert d["model"] == SMOL and (d["n_layers"], d["n_kv_heads"], d["head_dim"]) == (30, 3, 64)
    budget = 64 << 20
    assert r["budget_bytes"] == budget
    rows = r["dtypes"]
    f32 = 2 * d["n_layers"] * d["n_kv_heads"] * d["head_dim"] * 4  # K and V, every layer, f32
    assert rows["contiguous"]["bytes_per_token"] == f32 and rows["f32"]["bytes_per_token"] == f32
    assert rows["f16"]["vs_f32"] == 0.5
    assert rows["q8"]["vs_f32"] <= 0.27  # int8 values + one f16 scale per 32
    pages_per_seq = 256 // r["page_tokens"]
    for dt in ("q8", "f16", "f32"):
        row = rows[dt]
        assert math.isclose(row["vs_f32"], row["bytes_per_token"] / f32)
        # the store's own accounting refuses the sequence that does not fit: floor(budget / sequence bytes)
        assert row["seqs_in_budget"] == budget // (pages_per_seq * r["page_tokens"] * row["bytes_per_token"])
    assert rows["q8"]["seqs_in_budget"] > rows["f16"]["seqs_in_budget"] > rows["f32"]["seqs_in_budget"] > 0
    for s in r["shared"]:
        assert s["shared_pages"] > 0 and s["prefix_hit_rate"] > 0
        assert math.isclose(s["ratio"], s["all_bytes"] / s["one_request_bytes"])
        assert 1.0 <= s["ratio"] < 2.0  # 2 requests sharing their prompt hold less than two copies
    assert r["compaction"]["outputs_identical"] is True
    c = r["compaction"]  # both layouts timed turn by turn: attention time scattered / compacted per round
    _ratio_summary(c["speedup"], c["speedup_range"], c["speedup_rounds"], 5)
    assert r["compaction"]["compacted"]["scatter"] == 0.0
    assert r["goals"] == {"q8_bytes_le_0.27x_f32": True, "shared_prompt_le_1.2x": True}
    assert r["exit_code"] == 0


def test_bench_batch():
    r = cli_json("bench", "batch", "--json", "--streams", "1,2", "--max-tokens", "4")
    _machine(r, "batch")
    assert r["model"] == SMOL and r["kv_cache"] == "paged:q8" and r["max_tokens"] == 4 and r["rounds"] == 3
    assert [row["streams"] for row in r["rows"]] == [1, 2]
    for row in r["rows"]:
        for side in ("corert", "llama"):
            assert _positive(row[side]["decode_tok_s"]) and _positive(row[side]["e2e_tok_s"]), row
            lo, hi = row[side]["decode_tok_s_range"]
            assert lo <= row[side]["decode_tok_s"] <= hi
        for k in ("decode", "e2e"):
            _ratio_summary(row[f"{k}_ratio"], row[f"{k}_ratio_range"], row[f"{k}_ratio_rounds"], 3)
        assert row["corert"]["steps"] == 4  # one forward per token for every stream at once
        assert _positive(row["corert"]["driver_cpu_ms_per_step"])
    assert r["streams_identical_whatever_n"] is True
    same, n = r["same_tokens_as_llama_at_max_n"].split("/")
    assert int(n) == 2 and 0 <= int(same) <= 2
    assert r["goal_4x_at_8"] is False  # not measured at 8 streams: never claimed


@pytest.mark.slow
def test_bench_batch_on_the_llama_cpp_engine():
    r = cli_json("bench", "batch", "--engine", "llama.cpp", "--json", "--streams", "1,2", "--max-tokens", "4")
    assert r["engine"] == "llama.cpp" and r["kv_cache"].startswith("llama_cpp")
    assert [row["corert"]["steps"] for row in r["rows"]] == [4, 4]  # one llama_decode per token for both streams
    assert r["streams_identical_whatever_n"] is True and r["same_tokens_as_llama_at_max_n"] == "2/2"
    assert "goal_4x_at_8" not in r  # the native engine's goal
    assert_bad_input(run_cli("bench", "batch", "--engine", "onnx"), "--engine must be native or llama.cpp")


def test_bench_batch_bad_streams_is_bad_input():
    assert_bad_input(run_cli("bench", "batch", "--streams", "9"), "--streams must be between 1 and 8")


@pytest.mark.slow
def test_bench_speculative():
    r = cli_json("bench", "speculative", "--json", "--model", SMOL, "--prompts", "3", "--max-tokens", "6",
                 "--sides", "corert plain,corert lookup", "--no-llama-spec", "--threads", "1")
    _machine(r, "speculative")
    assert r["threads"] == 1
    assert r["bench"] == "speculative" and r["target"] == SMOL and r["draft"] == QWEN
    assert (r["engine"], r["max_tokens"]) == ("llama.cpp", 6)
    assert set(r["sides"]) == {"llama.cpp plain", "corert plain", "corert lookup"}
    for name, side in r["sides"].items():
        assert set(side) == {"grounded", "open-ended"}
        for entry in side.values():
            assert entry["errors"] == 0 and entry["tokens"] > 0
            assert _positive(entry["decode_tok_s"]) and _positive(entry["vs_llama_plain"])
            # per prompt, every side back to back: the ratios' median and spread over the 3 prompts
            _ratio_summary(entry["vs_llama_plain_median"], entry["vs_llama_plain_range"],
                           entry["vs_llama_plain_rounds"], 3)
            if name == "corert lookup":
                assert 0 <= entry["accepted"] <= entry["drafted"]
                assert 0.0 <= entry["acceptance_rate"] <= 1.0
    for set_name in ("grounded", "open-ended"):
        # the same greedy decoding on the same llama.cpp model: corert plain is llama.cpp plain, token for token
        assert r["sides"]["corert plain"][set_name]["identical_to_llama_plain"] == "3/3"
        # the same-engine reference column: each corert side against corert plain (not for llama.cpp's side)
        assert r["sides"]["corert plain"][set_name]["identical_to_corert_plain"] == "3/3"
        assert r["sides"]["corert lookup"][set_name]["identical_to_corert_plain"].endswith("/3")
        assert "identical_to_corert_plain" not in r["sides"]["llama.cpp plain"][set_name]
        assert r["sides"]["llama.cpp plain"][set_name]["vs_llama_plain"] == 1.0


def test_bench_rounds_below_three_is_bad_input():
    # one or two rounds give a ratio without a spread worth the name
    assert_bad_input(run_cli("bench", "generate", "--rounds", "2"), "--rounds must be at least 3")
    assert_bad_input(run_cli("bench", "batch", "--rounds", "1"), "--rounds must be at least 3")


@pytest.mark.slow
def test_bench_grammar():
    r = cli_json("bench", "grammar", "--json", "--model", SMOL, "--engine", "llama.cpp", "--rounds", "3",
                 "--max-tokens", "12", "--threads", "1")
    _machine(r, "grammar")
    assert r["bench"] == "grammar" and r["model"] == SMOL and r["tokens"] == 12 and r["vocab"] == 49152
    assert _positive(r["mask_ms_per_token"]) and _positive(r["plain_sampler_ms_per_token"])
    lo, hi = r["mask_ms_range"]
    assert lo <= r["mask_ms_per_token"] <= hi
    assert all(_positive(v) for v in r["decode_ms_per_token"].values())
    _ratio_summary(r["decode_ratio"], r["decode_ratio_range"], r["decode_ratio_rounds"], 3)


@pytest.mark.slow
def test_bench_batch_speculative():
    # one stream: its grounded prompt (~600 tokens) is evaluated 11 times (solo, 3 rounds of 3 sides); SmolLM2,
    # not the bench's default Qwen coder, to keep the test short; a native variant as --engine runs every side
    # of corert's on it (vnni-q8 where the CPU has it: the plain batch, the speculative one and the solo runs)
    from corert.cpu import info
    from corert.engines.native.plugin import VNNI_Q8

    engine = "native:vnni-q8" if VNNI_Q8.supported(info()) else "native:avx2"
    r = cli_json("bench", "batch", "--speculative", "--json", "--streams", "1", "--max-tokens", "6",
                 "--model", SMOL, "--engine", engine, timeout=600)
    _machine(r, "batch")
    assert (r["bench"], r["model"], r["kv_cache"], r["speculative"], r["engine"]) == (
        "batch --speculative", SMOL, "paged:q8", "speculative:adaptive", engine)
    row = r["row"]
    assert row["streams"] == 1 and r["rounds"] == 3 and r["max_tokens"] == 6
    for side in ("spec", "plain", "llama"):
        assert _positive(row[side]["decode_tok_s"]) and _positive(row[side]["e2e_tok_s"]), row
    for other in ("plain", "llama"):
        for k in ("decode", "e2e"):
            _ratio_summary(row[f"{k}_vs_{other}"], row[f"{k}_vs_{other}_range"], row[f"{k}_vs_{other}_rounds"], 3)
    assert 0 <= row["spec"]["accepted"] <= row["spec"]["drafted"]
    assert [(p["drafted"], p["accepted"]) for p in row["spec"]["per_stream"]] == [
        (row["spec"]["drafted"], row["spec"]["accepted"])]  # one stream: its counts are the batch's
    assert row["spec"]["draft_ms_per_step"] >= 0 and row["spec"]["rollback_ms_per_step"] >= 0
    cost = row["spec"]["step_cost"]
    assert _positive(cost["per_row_s"]) and cost["knee_rows"] >= 0 and cost["per_row_above_knee_s"] >= 0
    assert cost["measured"] and all(_positive(m["seconds"]) and _positive(m["fitted"]) for m in cost["measured"])
    assert _positive(cost["ceiling_vs_plain"])
    bound = row["spec"]["lookup_bound"]  # one stream of 6 tokens: 5 decode steps plainly, at most as many drafting
    assert bound["plain_steps"] == 5 and bound["stream_steps"] == [bound["steps"]] and 1 <= bound["steps"] <= 5
    assert _positive(bound["vs_plain"])
    assert [p["rows"] for p in bound["step_curve"]] == [1, 2, 4]  # one stream x 1, 2, 4 rows, timed
    assert all(_positive(p["seconds"]) for p in bound["step_curve"])
    assert r["streams_identical_to_solo_plain"] is True
    assert isinstance(r["goal_1.3x_vs_plain_batch"], bool)
    assert_bad_input(run_cli("bench", "batch", "--speculative", "--engine", "llama.cpp"),
                     "--speculative runs on the native engine")


@pytest.mark.slow
def test_bench_isolation():
    """In-process against a worker process, llama.cpp only, the fewest runs: the same greedy ids on both sides,
    a kill -9 of the worker survived (a request reaches its first token after each), ratios that are the
    ratios of the reported figures.  Which goal is met depends on the machine: only their names are asserted."""
    r = cli_json("bench", "isolation", "--json", "--engines", "llama.cpp", "--rounds", "3", "--max-tokens", "4",
                 "--embed-runs", "2")
    _machine(r, "isolation")
    assert r["bench"] == "isolation" and r["model"] == SMOL and (r["rounds"], r["max_tokens"]) == (3, 4)
    (g,) = r["generation"]
    assert g["engine"] == "llama.cpp" and g["identical_output_rounds"] == "3/3"
    _ratio_summary(g["decode_ratio"], g["decode_ratio_range"], g["decode_ratio_rounds"], 3)
    for side in ("in_process", "process"):
        assert _positive(g["decode_tok_s"][side]) and _positive(g["ttft_ms"][side])
        assert _positive(g["cpu_ms_per_token"][side]) and _positive(r["embed"]["p95_ms"][side])
    assert len(g["restart_to_first_token_s_rounds"]) == 3
    assert all(_positive(s) for s in g["restart_to_first_token_s_rounds"])
    assert r["embed"]["runs"] == 2 and len(r["embed"]["p95_extra_ms_rounds"]) == 3
    assert r["embed"]["standby_at_first_round"] == "ready"  # its start-up CPU is not in the timed rounds
    assert set(r["goals_met"]) == {"decode_ratio[llama.cpp]", "restart_to_first_token[llama.cpp]", "embed_p95_extra"}
    assert_bad_input(run_cli("bench", "isolation", "--rounds", "2"), "--rounds must be at least 3")
