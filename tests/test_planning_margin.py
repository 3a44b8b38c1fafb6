"""The memory fit check's margin (benchlib/planning/memory.py) against recorded H200 runs.

- The fragmentation figures are the largest `max reserved - max allocated` that Megatron printed
  in the real logs of tests/fixtures/logs/ (names: `h200x<GPUs>_<model>_<kind>_...`), per kind and
  GPU count, rounded up to 1/8 GiB: recomputed here from the logs.
- The check accepts the 8-layer proxy runs that ran on one H200 and refuses the one that went out
  of memory (tests/fixtures/planning/h200_fit_records.json, copied from the GPU notes).
- `benchlib plan` on one H200 ranks first a layout at least as fast as the measured best.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from benchlib.config.resolve import resolve_run
from benchlib.planning import memory
from benchlib.planning.gpus import GIB, MIB

LOGS = Path(__file__).resolve().parent / "fixtures" / "logs"
FIT_RECORDS = Path(__file__).resolve().parent / "fixtures" / "planning" / "h200_fit_records.json"
H200_ENV = {"CLUSTER": "local", "GPU_TYPE": "H200", "GPUS_PER_NODE": "1", "NNODES": "1", "BACKEND": "native"}


def _kind(name: str) -> str:
    if "_local_" in name:
        return "local"
    return "native_a2a_overlap" if "_a2a_" in name else "native"


def measured_fragmentation() -> dict[str, dict[int, float]]:
    """kind -> GPU count -> largest (max reserved - max allocated) in GiB over the logs."""
    out: dict[str, dict[int, float]] = {}
    for log in sorted(LOGS.glob("h200x*_*.log")):
        text = log.read_text(errors="replace")
        allocated = [float(x) for x in re.findall(r"max allocated: ([\d.]+)", text)]
        reserved = [float(x) for x in re.findall(r"max reserved: ([\d.]+)", text)]
        if not allocated:
            continue
        gpus = int(re.match(r"h200x(\d+)_", log.name).group(1))
        gap = (max(reserved) - max(allocated)) * MIB / GIB
        by_gpus = out.setdefault(_kind(log.name), {})
        by_gpus[gpus] = max(by_gpus.get(gpus, 0.0), gap)
    return out


def test_fragmentation_margin_is_the_measured_one_per_kind_and_gpu_count():
    measured = measured_fragmentation()
    assert set(measured) == set(memory.FRAGMENTATION_GIB)
    for kind, by_gpus in measured.items():
        assert set(by_gpus) == set(memory.FRAGMENTATION_GIB[kind]), kind
        for gpus, gap in by_gpus.items():
            assert memory.FRAGMENTATION_GIB[kind][gpus] == math.ceil(gap * 8) / 8, (kind, gpus, gap)


def test_margin_follows_the_gpu_count_and_the_kind():
    one = memory.fit_margin(1, "sdpa", False)
    four = memory.fit_margin(4, "sdpa", False)
    eight = memory.fit_margin(8, "sdpa", False)
    assert one[0] == memory.CUDA_CONTEXT_BYTES and four[0] == memory.CUDA_CONTEXT_BYTES + memory.NCCL_BYTES
    assert one[1] == int(memory.FRAGMENTATION_GIB["native"][1] * GIB) and one[2] is None
    assert eight[1] == four[1] and "recorded on 4 GPU(s)" in eight[2]  # nearest recorded count below
    overlap = memory.fit_margin(4, "sdpa", True)
    assert overlap[1] == int(memory.FRAGMENTATION_GIB["native_a2a_overlap"][4] * GIB) > four[1]
    assert "no recorded Transformer Engine run" in memory.fit_margin(1, "flash", False)[2]


def _records() -> list[dict]:
    return json.loads(FIT_RECORDS.read_text())["runs"]


@pytest.mark.parametrize("record", _records(), ids=lambda r: f"mbs{r['knobs']['MBS']}-{'ran' if r['ran'] else 'oom'}")
def test_the_check_accepts_what_ran_and_refuses_what_went_out_of_memory(record):
    run = resolve_run([f"{k}={v}" for k, v in record["knobs"].items()], H200_ENV)
    est = memory.estimate_memory(run)
    assert est.gpu_type == "H200"
    assert est.fits() is record["ran"], est.table()
    if "max_allocated_mib" in record:  # the estimate itself stays close to the measured peak
        assert abs(est.peak_allocated / (record["max_allocated_mib"] * MIB) - 1) < 0.05
        # and the margin is below what the GPU had left beside that peak
        assert est.overhead < est.capacity - record["max_allocated_mib"] * MIB


def test_plan_for_one_h200_ranks_a_layout_at_least_as_fast_as_the_measured_best_first():
    """The measured best (MBS 8 at 8 layers) fits; the planner's first layout has no smaller MBS
    (its cost model gets faster with larger micro-batches) and no recompute it does not need."""
    from benchlib.planning.planner import plan

    ran = [r for r in _records() if r["ran"]]
    best = max(ran, key=lambda r: r["tflops_per_gpu"])
    layers = int(best["knobs"]["NUM_LAYERS"])
    result = plan(best["knobs"]["MODEL"], nodes=1, gpu="H200", gpus_per_node=1, num_layers=layers, backend="native")
    first = result.ranked[0]
    assert first.knobs["MBS"] >= int(best["knobs"]["MBS"]), [c.knobs for c in result.ranked[:5]]
    assert first.knobs["RECOMPUTE"] == "none"
    ranked_mbs = {c.knobs["MBS"] for c in result.ranked if c.knobs["RECOMPUTE"] == "none"}
    assert int(best["knobs"]["MBS"]) in ranked_mbs  # the measured best is planned, not refused
