"""Where a profiled training step's GPU time goes, and where the GPU waits for the host.

    python bench/trace_gaps.py TRACE.json[.gz] [--step N]

Reads a torch-profiler Chrome trace (`traceEvents` with `kernel` / `gpu_memcpy` / `gpu_memset`
events, `ProfilerStep#N` user annotations bounding the steps, `cuda_runtime` launch events with
their `correlation`) and prints JSON for one profiled step (the last one by default):

- `span_ms`, `busy_ms`, `idle_ms`: the step's GPU time from its first to its last GPU event, the
  union of GPU events, and the rest (the GPU waiting);
- `kernel_ms`: GPU time by category (benchlib/metrics/profile.py's `kernel_category`, the one
  PROFILE=torch's result summary uses; copies and fills by the GPU are `memcpy` / `memset`);
- `by_thread`: busy and idle GPU time split by the host thread that launched the kernel after
  each gap: the main thread issues the forward passes, autograd's engine thread the backward
  passes; everything launched after the optimizer's annotation is `optimizer_and_after`;
- `by_phase`: the same split with the main thread's launches after the backward's last kernel
  (the grad sync's end, the NaN check, the grad norm) as `after_backward` instead of forward;
- `forward`: every forward pass (main-thread kernels that a backward follows) cut at each
  device-to-host copy (the dispatcher's token-count sync): per segment the kernels, GPU span and
  busy time, and the host's launch span (first to last launch call);
  `between_syncs` summarises the segments with a sync on both sides (one layer's worth of ops):
  their GPU span is the host's time to issue them wherever the GPU waited inside.

A bench tool (the planner's host-bound constants in benchlib/planning/cost.py come from it);
nothing in the suite's launch path uses it. The trace is read, and its steps and kernels named,
by benchlib/metrics/profile.py; what is added here is the split by launching thread and the
forward passes cut at the syncs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib.metrics.profile import (  # noqa: E402
    GPU_EVENT_CATEGORIES, TraceError, gpu_event_category, profiled_steps, read_trace_events, step_number)

# A segment between two syncs shorter than this is a copy between two back-to-back syncs, not a layer.
MIN_LAYER_KERNELS = 20


def load_trace(path: Path) -> list[dict[str, Any]]:
    """The trace's events; SystemExit with the reason for one this tool cannot summarise."""
    try:
        events = read_trace_events(path)
    except TraceError as err:
        raise SystemExit(f"{path}: cannot read the trace ({err})") from None
    if not any(e.get("cat") in GPU_EVENT_CATEGORIES for e in events):
        raise SystemExit(f"{path}: no GPU events (kernel / gpu_memcpy / gpu_memset); profile with CUDA activities on")
    return events


def step_summary(events: list[dict[str, Any]], step: int | None = None) -> dict[str, Any]:
    """The summary above for profiled step `step` (its ProfilerStep number; default the last)."""
    try:
        steps = profiled_steps(events)
    except TraceError as err:
        raise SystemExit(f"{err}; profile with torch.profiler's schedule and prof.step()") from None
    numbers = [step_number(e) for e in steps]
    if step is not None and step not in numbers:
        raise SystemExit(f"no profiled step {step}: the trace has steps {', '.join(map(str, numbers))}")
    index = len(steps) - 1 if step is None else numbers.index(step)
    start = steps[index]["ts"]
    end = steps[index + 1]["ts"] if index + 1 < len(steps) else float("inf")
    gpu = sorted((e for e in events if e.get("cat") in GPU_EVENT_CATEGORIES and e.get("ph") == "X"
                  and start <= e["ts"] < end), key=lambda e: e["ts"])
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    optimizer = [e["ts"] for e in events if e.get("cat") == "user_annotation"
                 and str(e.get("name", "")).startswith("Optimizer.step") and start <= e["ts"] < end]
    opt_ts = min(optimizer) if optimizer else float("inf")
    main_tid = launches[gpu[0]["args"]["correlation"]]["tid"]

    # the last kernel autograd's engine launched before the optimizer: the backward's end
    last_backward = max((launches[e["args"]["correlation"]]["ts"] for e in gpu
                         if e["args"].get("correlation") in launches
                         and launches[e["args"]["correlation"]]["tid"] != main_tid
                         and launches[e["args"]["correlation"]]["ts"] < opt_ts), default=float("-inf"))

    def thread(e: dict[str, Any]) -> str:
        launch = launches.get(e["args"].get("correlation"))
        if launch is None:
            return "unknown"
        if launch["ts"] >= opt_ts:
            return "optimizer_and_after"
        return "main (forward)" if launch["tid"] == main_tid else "autograd (backward)"

    def phase(e: dict[str, Any]) -> str:
        t = thread(e)
        if t == "main (forward)" and launches[e["args"]["correlation"]]["ts"] > last_backward:
            return "after_backward"  # the grad sync's end, NaN check, grad norm: the main thread before the step
        return {"main (forward)": "forward", "autograd (backward)": "backward"}.get(t, t)

    busy: dict[str, float] = {}
    idle: dict[str, float] = {}
    phase_busy: dict[str, float] = {}
    phase_idle: dict[str, float] = {}
    kernels: dict[str, float] = {}
    cur_end = gpu[0]["ts"]
    for e in gpu:
        t, ph = thread(e), phase(e)
        gap = e["ts"] - cur_end
        if gap > 0:
            idle[t] = idle.get(t, 0.0) + gap
            phase_idle[ph] = phase_idle.get(ph, 0.0) + gap
        stop = e["ts"] + e["dur"]
        covered = max(0.0, stop - max(cur_end, e["ts"]))
        busy[t] = busy.get(t, 0.0) + covered
        phase_busy[ph] = phase_busy.get(ph, 0.0) + covered
        cur_end = max(cur_end, stop)
        cat = gpu_event_category(e)
        kernels[cat] = kernels.get(cat, 0.0) + e["dur"]
    span = cur_end - gpu[0]["ts"]
    total_busy = sum(busy.values())
    return {
        "step": numbers[index],
        "span_ms": span / 1e3,
        "busy_ms": total_busy / 1e3,
        "idle_ms": (span - total_busy) / 1e3,
        "kernel_ms": {k: v / 1e3 for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])},
        "by_thread": {t: {"busy_ms": busy.get(t, 0.0) / 1e3, "idle_ms": idle.get(t, 0.0) / 1e3}
                      for t in sorted(set(busy) | set(idle))},
        "by_phase": {ph: {"busy_ms": phase_busy.get(ph, 0.0) / 1e3, "idle_ms": phase_idle.get(ph, 0.0) / 1e3}
                     for ph in sorted(set(phase_busy) | set(phase_idle))},
        "forward": _forward_segments(gpu, launches, main_tid, opt_ts),
    }


def _forward_segments(gpu: list[dict[str, Any]], launches: dict[Any, dict[str, Any]], main_tid: Any,
                      opt_ts: float) -> dict[str, Any]:
    """Every forward pass (a run of kernels launched from the main thread that a backward run
    follows, before the optimizer), cut after each device-to-host copy; and the segments between
    two such syncs."""
    runs: list[tuple[bool, list[tuple[dict, dict]]]] = []
    for e in gpu:
        launch = launches.get(e["args"].get("correlation"))
        if launch is None or launch["ts"] >= opt_ts:
            continue
        is_main = launch["tid"] == main_tid
        if not runs or runs[-1][0] != is_main:
            runs.append((is_main, []))
        runs[-1][1].append((e, launch))
    passes = [run for (is_main, run), nxt in zip(runs, runs[1:]) if is_main and not nxt[0]]
    out, between = [], []
    for fwd in passes:
        segments: list[list[tuple[dict, dict]]] = [[]]
        for e, launch in fwd:
            if "DtoH" in e["name"]:
                segments.append([])
            else:
                segments[-1].append((e, launch))
        rows = []
        for i, seg in enumerate(segments):
            if not seg:
                continue
            first = min(e["ts"] for e, _ in seg)
            last = max(e["ts"] + e["dur"] for e, _ in seg)
            row = {"kernels": len(seg), "gpu_span_ms": (last - first) / 1e3,
                   "gpu_busy_ms": sum(e["dur"] for e, _ in seg) / 1e3,
                   "host_launch_span_ms": (seg[-1][1]["ts"] + seg[-1][1]["dur"] - seg[0][1]["ts"]) / 1e3}
            rows.append(row)
            if 0 < i < len(segments) - 1 and len(seg) >= MIN_LAYER_KERNELS:
                between.append(row)
        out.append(rows)
    spans = sorted(r["gpu_span_ms"] for r in between)
    busy = sorted(r["gpu_busy_ms"] for r in between)
    summary: dict[str, Any] = {"count": len(between)}
    if between:
        summary.update({"gpu_span_ms_min": spans[0], "gpu_span_ms_median": spans[len(spans) // 2],
                        "gpu_span_ms_max": spans[-1], "gpu_busy_ms_median": busy[len(busy) // 2],
                        "kernels_median": sorted(r["kernels"] for r in between)[len(between) // 2]})
    return {"passes": out, "between_syncs": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--step", type=int, default=None, help="ProfilerStep number (default: the last profiled)")
    args = ap.parse_args(argv)
    print(json.dumps(step_summary(load_trace(args.trace), args.step), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
