"""bench/trace_gaps.py on real H200 torch-profiler traces (one GBS-4 step pair of the Qwen3-30B-A3B
proxy each, 2026-12-01, kept in tests/fixtures/planning/: before and after the FAST_OPTIMIZER kernels
and the sync-free grad path): it reproduces the summaries recorded in bench/results/, reads the trace
and names its kernels the way benchlib/metrics/profile.py does, and its splits add up."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bench.trace_gaps import load_trace, main, step_summary
from benchlib.metrics.profile import CATEGORY_NAMES, trace_profile

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests/fixtures/planning"
CASES = {  # trace fixture -> the record that summarises it
    "before": (FIXTURES / "h200x1_qwen3-30b-a3b-proxy_gbs4_trace.json.gz",
               ROOT / "bench/results/h200x1_host_gaps_profile.json"),
    "fast_optimizer": (FIXTURES / "h200x1_qwen3-30b-a3b-proxy_gbs4_fast_optimizer_trace.json.gz",
                       ROOT / "bench/results/h200x1_host_gaps_profile_fast_optimizer.json"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    trace, record = CASES[request.param]
    return request.param, load_trace(trace), json.loads(record.read_text())


@pytest.mark.parametrize("step", [6, 7])
def test_summary_reproduces_the_record(case, step):
    _name, events, record = case
    got = step_summary(events, step)
    recorded = next(s for s in record["traces"]["qwen3-30b-a3b-proxy_mbs4_gbs4"]["steps"] if s["step"] == step)
    assert got["span_ms"] == pytest.approx(recorded["span_ms"], abs=1e-3)
    assert got["idle_ms"] == pytest.approx(recorded["idle_ms"], abs=1e-3)
    assert got["forward"]["between_syncs"] == pytest.approx(recorded["forward"]["between_syncs"], abs=1e-3)
    for thread, split in recorded["by_thread"].items():
        assert got["by_thread"][thread] == pytest.approx(split, abs=1e-3)
    for phase, split in recorded.get("by_phase", {}).items():
        assert got["by_phase"][phase] == pytest.approx(split, abs=1e-3)


def test_splits_add_up(case):
    _name, events, _record = case
    s = step_summary(events)
    assert s["step"] == 7  # the last profiled step by default
    assert s["span_ms"] == pytest.approx(s["busy_ms"] + s["idle_ms"])
    for split in ("by_thread", "by_phase"):
        assert sum(t["busy_ms"] for t in s[split].values()) == pytest.approx(s["busy_ms"])
        # gaps are charged to the thread (phase) that launched the kernel after them: all of the idle
        assert sum(t["idle_ms"] for t in s[split].values()) == pytest.approx(s["idle_ms"])
    # the phases split the main thread's share in two: the forward and what it does after the backward
    main_thread = s["by_thread"]["main (forward)"]
    assert s["by_phase"]["forward"]["busy_ms"] + s["by_phase"]["after_backward"]["busy_ms"] == pytest.approx(
        main_thread["busy_ms"])
    assert s["by_phase"]["backward"] == s["by_thread"]["autograd (backward)"]
    # kernel time by category is the sum of event durations: at least the union of them
    assert sum(s["kernel_ms"].values()) >= s["busy_ms"] - 1e-6
    # one micro-batch: one forward pass; four MoE layers, a sync each: five segments, three between two syncs
    assert [len(p) for p in s["forward"]["passes"]] == [5]
    assert s["forward"]["between_syncs"]["count"] == 3


def test_kernel_categories_are_the_result_profiles(case):
    """The same categories as PROFILE=torch's summary (benchlib/metrics/profile.py), over about the
    same time: that summary clips to the step's CPU window, this one runs to the next step's start."""
    name, events, _record = case
    s = step_summary(events, 6)
    profiled = next(p for p in trace_profile(CASES[name][0])["steps"] if p["step"] == 6)
    assert set(s["kernel_ms"]) <= set(CATEGORY_NAMES)
    assert set(s["kernel_ms"]) == set(profiled["gpu_ms_by_category"])
    for cat, ms in profiled["gpu_ms_by_category"].items():
        assert s["kernel_ms"][cat] == pytest.approx(ms, rel=0.02, abs=0.05), cat


def test_the_fast_optimizer_trace_is_quieter_than_the_one_before():
    """What the FAST_OPTIMIZER kernels and the sync-free grad path changed, as the two records say: less
    idle per step, a nearly gap-free backward, a faster Adam kernel; the idle left is after the backward."""
    before, after = (json.loads(CASES[k][1].read_text())["traces"]["qwen3-30b-a3b-proxy_mbs4_gbs4"]["steps"]
                     for k in ("before", "fast_optimizer"))
    assert max(s["idle_ms"] for s in after) < 0.6 * min(s["idle_ms"] for s in before)
    for s in after:
        phases = s["by_phase"]
        assert phases["backward"]["idle_ms"] < 1.0
        assert phases["after_backward"]["idle_ms"] + phases["optimizer_and_after"]["idle_ms"] > 0.5 * s["idle_ms"]
    assert max(s["by_thread"]["optimizer_and_after"]["busy_ms"] for s in after) < \
        0.8 * min(s["by_thread"]["optimizer_and_after"]["busy_ms"] for s in before)


def test_a_plain_json_trace_is_read(tmp_path):
    """The reader is benchlib.metrics.profile's: `.json.gz` as the profiler writes it, or plain `.json`."""
    with gzip.open(CASES["fast_optimizer"][0], "rt") as fh:
        data = fh.read()
    plain = tmp_path / "trace.json"
    plain.write_text(data)
    assert step_summary(load_trace(plain), 7) == step_summary(load_trace(CASES["fast_optimizer"][0]), 7)


def test_a_trace_without_gpu_events_is_refused(tmp_path):
    path = tmp_path / "cpu_only.json"
    path.write_text(json.dumps({"traceEvents": [{"cat": "cpu_op", "name": "aten::mm", "ph": "X", "ts": 0, "dur": 1}]}))
    with pytest.raises(SystemExit, match="no GPU events"):
        load_trace(path)


def test_a_broken_trace_or_a_missing_step_says_so(tmp_path, capsys):
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(SystemExit, match="cannot read the trace"):
        load_trace(broken)
    with pytest.raises(SystemExit, match="no profiled step 3: the trace has steps 6, 7"):
        main([str(CASES["fast_optimizer"][0]), "--step", "3"])
    assert main([str(CASES["fast_optimizer"][0]), "--step", "6"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 6
