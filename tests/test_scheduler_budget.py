"""Thread budgets: for every preset and core count, the pools that can run at once never exceed the cores."""
from __future__ import annotations

import pytest

from corert.errors import ConfigError
from corert.interfaces import ThreadBudget
from corert.plugin_host import PluginHost
from corert.plugins.scheduler.plan import PRESETS, Lane, ThreadPlan, make_plan
from corert.plugins.scheduler.pools import llama_kwargs, ort_session_options


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("cores", [1, 2, 3, 4, 5, 6, 8, 12, 16, 64])
def test_no_oversubscription(preset, cores):
    plan = make_plan(preset, range(cores))
    busy_at_once = 0
    for lane in plan.lanes:
        b = plan.lane_budget(lane)
        pools = (b.llama_threads, b.llama_batch_threads, b.numba_threads, b.ort_intra_op * b.ort_inter_op)
        assert min(pools) >= 1 and max(pools) <= lane.threads
        busy_at_once += max(pools)
    assert busy_at_once == plan.concurrent_threads() <= cores
    used = [c for lane in plan.lanes for c in lane.cpus]
    assert len(used) == len(set(used)) and set(used) <= set(range(cores))  # lanes never share a core
    b = plan.budget
    assert not b.ort_spinning and b.ort_inter_op == 1
    assert max(b.llama_threads, b.llama_batch_threads, b.numba_threads, b.ort_intra_op) <= cores
    assert any("interactive" in lane.priorities for lane in plan.lanes)
    assert any("batch" in lane.priorities for lane in plan.lanes)


def test_inference_preset_reserves_a_core_for_interactive_work():
    plan = make_plan("inference", range(8))
    lane = next(lane for lane in plan.lanes if lane.priorities == ("interactive",))
    assert lane.threads == 1
    # generation on the general lane and an embed on the reserved lane together fill the machine exactly
    assert plan.budget.llama_threads + plan.budget.ort_intra_op == 8


def test_batch_preset_gives_one_single_threaded_lane_per_core_and_balanced_keeps_one_lane_free():
    assert [lane.cpus for lane in make_plan("batch", range(4)).lanes] == [(0,), (1,), (2,), (3,)]
    bal = make_plan("balanced", range(16))
    assert len(bal.lanes) == 4 and bal.batch_cap == 3 and bal.budget.llama_threads == 4
    assert len(make_plan("balanced", range(2)).lanes) == 1  # small machines: one full-speed lane


def test_the_check_catches_an_oversubscribed_plan():
    budget = ThreadBudget(cores=2, llama_threads=1, llama_batch_threads=1, ort_intra_op=1, ort_inter_op=1,
                          ort_spinning=False, numba_threads=1)
    shared = ThreadPlan("x", (0, 1), (Lane("a", (0, 1)), Lane("b", (1,))), 1, budget)
    with pytest.raises(ConfigError, match="shares cpus"):
        shared.check()
    too_wide = ThreadPlan("x", (0, 1), (Lane("a", (0,)),), 1, ThreadBudget(
        cores=2, llama_threads=2, llama_batch_threads=2, ort_intra_op=1, ort_inter_op=1, ort_spinning=False,
        numba_threads=2))
    with pytest.raises(ConfigError, match="does not fit"):
        too_wide.check()
    with pytest.raises(ConfigError, match="unknown scheduler preset"):
        make_plan("fastest", range(2))


def test_pools_are_configured_from_the_budget():
    import onnxruntime as ort
    b = make_plan("inference", range(4)).budget
    assert llama_kwargs(b) == {"n_threads": 3, "n_threads_batch": 3}
    so = ort_session_options(b)
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_plugin_registers_presets_and_is_the_default():
    host = PluginHost.build()
    chosen = host.resolve("scheduler")
    assert (chosen.impl.name, chosen.variant.name) == ("work_stealing", "balanced")
    assert {v.name for v in chosen.impl.variants} == set(PRESETS)
    sched = host.create(host.resolve("scheduler", "work_stealing:inference"), config=None)
    try:
        assert sched.stats()["preset"] == "inference"
        assert sched.submit(sum, [1, 2, 3], priority="interactive").result(10) == 6
    finally:
        sched.shutdown()
