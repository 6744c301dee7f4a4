"""`corert bench scheduler` runs end to end through the CLI on the real models (tiny settings; figures are not
asserted)."""
from __future__ import annotations

import json

import pytest

from corert.cli import main as cli_main
from corert.tools.bench import scheduler as bench


@pytest.mark.slow
def test_scheduler_bench_runs_every_side_and_renders(smollm2, store, capsys):
    store.resolve("minilm-l6")  # pulled when missing, like every model a test needs
    assert cli_main(["bench", "scheduler", "--json", "--requests", "6", "--min-window", "2", "--batch-tokens", "8",
                     "--sides", "work_stealing:inference,threadpool", "--passes", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["machine"]["cores"] >= 1  # the CLI adds the machine
    assert [r["side"] for r in result["sides"]] == ["work_stealing:inference", "threadpool"]
    for r in result["sides"]:
        assert r["idle"]["n"] == 6 and r["loaded"]["n"] >= 6, r  # three passes of 2
        # loaded p95 / idle p95 per pass: their median and min-max beside the pooled ratio
        assert len(r["p95_ratio_rounds"]) == 3 and all(x > 0 for x in r["p95_ratio_rounds"]), r
        assert r["p95_ratio_range"] == [min(r["p95_ratio_rounds"]), max(r["p95_ratio_rounds"])]
        assert r["batch_tok_s"] > 0, r  # batch tokens arrived while the interactive requests ran
    ws = result["sides"][0]
    assert ws["stats"]["completed"] >= 4  # every embed and generation went through the scheduler
    assert ws["budget"]["ort_spinning"] is False and result["sides"][1]["budget"]["ort_spinning"] is True
    text = bench.render(result)
    assert "work_stealing:inference" in text and "goal" in text
