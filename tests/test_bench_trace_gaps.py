"""bench/trace_gaps.py on a real H200 torch-profiler trace (one GBS-4 step pair of the Qwen3-30B-A3B
proxy, 2026-12-01, kept in tests/fixtures/planning/): it reproduces the summary recorded in
bench/results/h200x1_host_gaps_profile.json, and its splits add up."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.trace_gaps import load_trace, step_summary

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "tests/fixtures/planning/h200x1_qwen3-30b-a3b-proxy_gbs4_trace.json.gz"
RECORD = ROOT / "bench/results/h200x1_host_gaps_profile.json"


@pytest.fixture(scope="module")
def events():
    return load_trace(TRACE)


@pytest.mark.parametrize("step", [6, 7])
def test_summary_reproduces_the_record(events, step):
    got = step_summary(events, step)
    recorded = next(s for s in json.loads(RECORD.read_text())["traces"]["qwen3-30b-a3b-proxy_mbs4_gbs4"]["steps"]
                    if s["step"] == step)
    assert got["span_ms"] == pytest.approx(recorded["span_ms"], abs=1e-3)
    assert got["idle_ms"] == pytest.approx(recorded["idle_ms"], abs=1e-3)
    assert got["forward"]["between_syncs"] == pytest.approx(recorded["forward"]["between_syncs"], abs=1e-3)
    for thread, split in recorded["by_thread"].items():
        assert got["by_thread"][thread] == pytest.approx(split, abs=1e-3)


def test_splits_add_up(events):
    s = step_summary(events)
    assert s["step"] == 7  # the last profiled step by default
    assert s["span_ms"] == pytest.approx(s["busy_ms"] + s["idle_ms"])
    assert sum(t["busy_ms"] for t in s["by_thread"].values()) == pytest.approx(s["busy_ms"])
    # gaps are charged to the thread that launched the kernel after them: all but none of the idle
    assert sum(t["idle_ms"] for t in s["by_thread"].values()) == pytest.approx(s["idle_ms"])
    # kernel time by category is the sum of event durations: at least the union of them
    assert sum(s["kernel_ms"].values()) >= s["busy_ms"] - 1e-6
    # one micro-batch: one forward pass; four MoE layers, a sync each: five segments, three between two syncs
    assert [len(p) for p in s["forward"]["passes"]] == [5]
    assert s["forward"]["between_syncs"]["count"] == 3


def test_a_trace_without_gpu_events_is_refused(tmp_path):
    path = tmp_path / "cpu_only.json"
    path.write_text(json.dumps({"traceEvents": [{"cat": "cpu_op", "name": "aten::mm", "ph": "X", "ts": 0, "dur": 1}]}))
    with pytest.raises(SystemExit, match="no GPU events"):
        load_trace(path)
